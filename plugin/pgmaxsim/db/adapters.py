"""psycopg 3 adapters for token matrices (``halfvec[]``) over the one codec.

``register_tokens(conn)`` teaches a connection to
- dump :class:`Tokens` (a thin wrapper around an ``(n, d)`` array) as ``halfvec[]``,
- load ``halfvec[]`` as an ``(n, d)`` float16 NumPy array, in binary and text.

Registration fails loudly when pgvector is missing from the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg.adapt import Buffer, Dumper, Loader
from psycopg.pq import Format

from pgmaxsim.db.codec import CodecError, decode_halfvec_array, encode_halfvec_array
from pgmaxsim.errors import ConfigurationError, PgmaxsimError


@dataclass(frozen=True)
class Tokens:
    """An ``(n_tokens, dim)`` array to be sent as ``halfvec[]``."""

    array: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "array", np.asarray(self.array))


def _type_oids(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    row = conn.execute(
        "SELECT t.oid, t.typarray FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
        " WHERE t.typname = 'halfvec' ORDER BY n.nspname = 'public' DESC LIMIT 1"
    ).fetchone()
    if row is None:
        raise ConfigurationError(
            "halfvec type not found in the database: pgvector >= 0.7 is not installed (run pgmaxsim migrate)"
        )
    return int(row[0]), int(row[1])


def register_tokens(conn: psycopg.Connection[Any]) -> None:
    """Register the ``halfvec[]`` adapters on ``conn`` (or raise ConfigurationError)."""
    elem_oid, array_oid = _type_oids(conn)

    class TokensBinaryDumper(Dumper):
        format = Format.BINARY
        oid = array_oid

        def dump(self, obj: Tokens) -> bytes:
            return encode_halfvec_array(obj.array, elem_oid)

    class TokensTextDumper(Dumper):
        oid = array_oid

        def dump(self, obj: Tokens) -> bytes:
            return tokens_to_text(obj.array).encode()

    class TokensBinaryLoader(Loader):
        format = Format.BINARY

        def load(self, data: Buffer) -> np.ndarray:
            return decode_halfvec_array(data)

    class TokensTextLoader(Loader):
        def load(self, data: Buffer) -> np.ndarray:
            return tokens_from_text(bytes(data).decode())

    conn.adapters.register_dumper(Tokens, TokensTextDumper)
    conn.adapters.register_dumper(Tokens, TokensBinaryDumper)
    conn.adapters.register_loader(array_oid, TokensTextLoader)
    conn.adapters.register_loader(array_oid, TokensBinaryLoader)


def tokens_cursor(conn: psycopg.Connection[Any], elem_oid: int, array_oid: int | None = None, *,
                  what: str = "tokens") -> psycopg.Cursor[Any]:
    """A cursor that sends :class:`Tokens` as binary ``halfvec[]``, leaving the connection's
    own adapters alone; a value the codec refuses is a PgmaxsimError naming ``what``.

    ``array_oid`` (the oid of ``halfvec[]``) is looked up when not given; callers that
    make many cursors cache it.
    """
    if array_oid is None:
        row = conn.execute("SELECT typarray FROM pg_catalog.pg_type WHERE oid = %s", (elem_oid,)).fetchone()
        array_oid = int(row[0]) if row else 0
    oid_of_array = array_oid

    class TokensDumper(Dumper):
        format = Format.BINARY
        oid = oid_of_array

        def dump(self, obj: Tokens) -> bytes:
            try:
                return encode_halfvec_array(obj.array, elem_oid)
            except CodecError as e:
                raise PgmaxsimError(f"{what}: {e}") from None

    cur = conn.cursor()
    cur.adapters.register_dumper(Tokens, TokensDumper)
    return cur


def tokens_to_text(tokens: np.ndarray) -> str:
    """Text literal of ``halfvec[]`` for an ``(n, d)`` array (used where binary is not possible)."""
    arr = np.asarray(tokens, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"token embeddings must be a 2-D (n_tokens, dim) array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("token embeddings contain NaN or infinite values")
    rows = ('"[' + ",".join(repr(float(x)) for x in row) + ']"' for row in arr)
    return "{" + ",".join(rows) + "}"


def tokens_from_text(text: str) -> np.ndarray:
    """Parse the text form ``{"[..]","[..]"}`` of ``halfvec[]``."""
    body = text.strip()[1:-1]
    if not body:
        return np.zeros((0, 0), dtype=np.float16)
    rows = [r.strip('"[] ') for r in body.split('","')]
    return np.array([np.array(r.split(","), dtype=np.float32) for r in rows], dtype=np.float16)
