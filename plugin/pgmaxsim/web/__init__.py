"""``pgmaxsim serve``: a web page to search the indexes of one database, read-only, as one role.

:func:`create_app` builds the Starlette app (routes and contract: :mod:`pgmaxsim.web.app`);
:func:`serve` runs it with uvicorn. Needs the ``web`` extra (``pip install 'pgmaxsim[web]'``).
"""

from __future__ import annotations

from pgmaxsim.web.server import create_app, serve

__all__ = ["create_app", "serve"]
