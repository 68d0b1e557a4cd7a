"""The one exception type users see.

A :class:`PgmaxsimError` carries a single line naming what is wrong; the CLI
prints it as ``pgmaxsim: <message>`` and exits non-zero, never a traceback.
"""

from __future__ import annotations

#: What the SQL functions put before their messages; users see it once, from the CLI.
SERVER_PREFIX = "pgmaxsim: "


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


def one_line(exc: BaseException) -> str:
    """``exc`` as one line for a message: the server's primary message for a
    psycopg error from PostgreSQL, else the first line of ``str(exc)`` (the
    exception's type name when empty), without our SQL functions' ``pgmaxsim: ``
    prefix (the CLI adds its own).

    >>> one_line(ValueError("bad value\\nTraceback ..."))
    'bad value'
    >>> one_line(RuntimeError("pgmaxsim: index \\"x\\" does not exist"))
    'index "x" does not exist'
    >>> one_line(KeyError())
    'KeyError'
    """
    # psycopg's server errors carry the primary message apart from DETAIL/CONTEXT
    # (no import of psycopg here: encoders use this module too).
    primary = getattr(getattr(exc, "diag", None), "message_primary", None)
    text = (primary or str(exc)).strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    return line.removeprefix(SERVER_PREFIX) or type(exc).__name__
