"""Resolve where to connect (``--dsn``, ``DATABASE_URL``, embedded) and connect with clear errors."""

from __future__ import annotations

import os
import re
from typing import Any

import psycopg

from pgmaxsim.errors import ConfigurationError, one_line


def resolve_dsn(dsn: str | None = None) -> str:
    """The DSN to use: the argument, else ``DATABASE_URL``, else the embedded server."""
    if dsn:
        return dsn
    env = os.environ.get("DATABASE_URL")
    if env:
        return env
    from pgmaxsim.db.embedded import embedded_uri

    return embedded_uri()


def redact(dsn: str) -> str:
    """The DSN with any password removed, for error messages."""
    dsn = re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", dsn)


def connect(dsn: str | None = None, *, autocommit: bool = True, **kwargs: Any) -> psycopg.Connection[Any]:
    """Connect to the resolved DSN; an unreachable server is one clear ConfigurationError."""
    target = resolve_dsn(dsn)
    kwargs.setdefault("connect_timeout", 10)
    try:
        return psycopg.connect(target, autocommit=autocommit, **kwargs)
    except psycopg.Error as e:
        raise ConfigurationError(f"cannot connect to {redact(target)}: {one_line(e)}") from e


