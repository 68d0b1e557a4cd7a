"""The one exception type users see.

A :class:`PgmaxsimError` carries a single line naming what is wrong; the CLI
prints it as ``pgmaxsim: <message>`` and exits non-zero, never a traceback.
"""

from __future__ import annotations


class PgmaxsimError(Exception):
    """A user-facing error: one clear line, no traceback needed."""


class ConfigurationError(PgmaxsimError):
    """The environment (server, extensions, rights, extras) is not as needed."""


class MissingExtraError(PgmaxsimError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"{module} is not installed: pip install 'pgmaxsim[{extra}]'"
        )
        self.module = module
        self.extra = extra
