"""pgmaxsim: late-interaction (ColBERT / ColPali-style) MaxSim retrieval inside PostgreSQL.

Importing the package is cheap (PL/Python imports submodules of it inside
database backends): the public names are loaded on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Index", "PgmaxsimError", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Index":
        from pgmaxsim.index import Index

        return Index
    if name == "PgmaxsimError":
        from pgmaxsim.errors import PgmaxsimError

        return PgmaxsimError
    raise AttributeError(f"module 'pgmaxsim' has no attribute {name!r}")
