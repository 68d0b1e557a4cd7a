"""Wire protocol of the scorer service (stdlib + NumPy only: also runs inside Postgres).

One request or reply is one *frame* on a stream socket (Unix or TCP)::

    b"PGMS"  uint32 header_len  uint64 payload_len   (little-endian)
    header   JSON object, utf-8
    payload  the raw bytes of the arrays listed in header["arrays"], back to back

``header["arrays"]`` is a list of ``[name, dtype_str, shape]``; the arrays are
C-contiguous and little-endian. Lists of row ids travel as one ``uint8`` array
of utf-8 text joined by NUL (PostgreSQL text cannot contain NUL), which keeps
100K ids out of JSON.

Requests (``header["op"]``):

- ``ping`` -> ``{"ok": true, "backend": "cpu"|"gpu", "pid": int}``
- ``status`` -> ``{"ok": true, "indexes": [{index, name, state, rows, tokens,
  watermark, synced_at, lag_s, error}], "limits": {...}}``
- ``score``: ``index`` (int id), arrays ``query`` f4 (nq, d), ``ids`` (blob),
  ``versions`` i8 (n,) -> arrays ``scores`` f4 (n,), ``found`` u1 (n,): a row is
  scored only when the scorer holds exactly that version; the others have
  found = 0 and must be scored by the caller.
- ``search``: ``index``, ``k``, ``snapshot`` (text of the caller's
  ``pg_current_snapshot()``), arrays ``query`` and optional ``exclude`` (blob)
  -> header ``watermark`` (the scorer's sync snapshot), ``exhausted`` (true
  when fewer than k rows were eligible) and arrays ``ids`` (blob), ``versions``
  i8, ``scores`` f4 (best first), ``dirty`` (blob: rows the scorer holds in a
  state the caller's snapshot does not see yet; the caller scores those itself).

Errors: ``{"ok": false, "code": CODE, "error": "one line"}`` with CODE one of
:data:`ERROR_CODES`.

On every new connection the server speaks first: a hello frame (and, over TCP,
a challenge), or the error frame that refuses the peer (see :mod:`.auth`).

Frames are read as they arrive: the buffer grows with the bytes received
(never to a length the peer merely declared), up to the reader's limit.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MAGIC = b"PGMS"
_PREFIX = struct.Struct("<4sIQ")
MAX_HEADER = 1 << 20
ERROR_CODES = (
    "bad_request",      # malformed request, wrong dim, bad k …
    "limit",            # a request limit was exceeded (ids, query tokens, k, bytes)
    "unknown_index",    # the scorer does not serve this index
    "not_ready",        # the index is still loading, or failed to load (e.g. GPU out of memory)
    "overloaded",       # too many requests in flight: fall back to the CPU path
    "snapshot_too_old", # the caller's snapshot is older than the scorer's change journal
    "unauthorized",     # the scorer refused this peer (OS user not allowed, wrong or missing secret)
    "untrusted",        # (client side) the socket or server is not one this client trusts
    "internal",
)
#: First read of a payload; each further read at most doubles what was received.
_FIRST_CHUNK = 1 << 16


class ProtocolError(Exception):
    """Malformed frame or lost connection."""


class ScorerError(Exception):
    """An error reply from the scorer: ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------- frames

def encode_frame(header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> list[bytes | memoryview]:
    """Frame ``header`` + ``arrays`` as a list of buffers (for ``sendmsg``/``sendall``)."""
    specs = []
    bufs: list[bytes | memoryview] = []
    total = 0
    for name, arr in (arrays or {}).items():
        a = np.ascontiguousarray(arr)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        specs.append([name, a.dtype.str, list(a.shape)])
        bufs.append(memoryview(a).cast("B") if a.size else b"")
        total += a.nbytes
    head = dict(header)
    head["arrays"] = specs
    hbytes = json.dumps(head, separators=(",", ":")).encode()
    return [_PREFIX.pack(MAGIC, len(hbytes), total), hbytes, *bufs]


def send_frame(sock: socket.socket, header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
    for buf in encode_frame(header, arrays):
        if len(buf):
            sock.sendall(buf)


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    """Read exactly ``n`` bytes. ``n`` is what the peer *declared*: the buffer grows
    geometrically with what actually arrives (at most 2x received + 64 KiB), so a
    peer declaring 1 GiB and sending nothing costs nothing."""
    buf = bytearray()
    got = 0
    while got < n:
        if got == len(buf):
            buf.extend(bytes(min(n, max(2 * got, _FIRST_CHUNK)) - got))
        with memoryview(buf) as view, view[got:] as free:
            r = sock.recv_into(free)
        if r == 0:
            raise ProtocolError("connection closed by peer")
        got += r
    return buf


def recv_frame(sock: socket.socket, max_payload: int = 1 << 34) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read one frame; returns ``(header, arrays)``. Raises ProtocolError, or
    ScorerError("limit") when the frame declares more than ``max_payload`` bytes."""
    magic, hlen, plen = _PREFIX.unpack(bytes(_recv_exact(sock, _PREFIX.size)))
    if magic != MAGIC:
        raise ProtocolError("not a pgmaxsim scorer frame")
    if hlen > MAX_HEADER:
        raise ProtocolError(f"frame header too large ({hlen} bytes)")
    if hlen + plen > max_payload:
        raise ScorerError("limit", f"frame of {hlen + plen} bytes exceeds the limit of {max_payload} bytes")
    try:
        header = json.loads(bytes(_recv_exact(sock, hlen)))
    except ValueError as exc:
        raise ProtocolError(f"frame header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not a JSON object")
    payload = _recv_exact(sock, plen) if plen else bytearray()
    arrays: dict[str, np.ndarray] = {}
    off = 0
    for name, dt, shape in header.pop("arrays", []):
        dtype = np.dtype(dt)
        count = int(np.prod(shape)) if shape else 1
        nbytes = count * dtype.itemsize
        if off + nbytes > plen:
            raise ProtocolError("frame payload shorter than its arrays")
        arrays[name] = np.frombuffer(payload, dtype=dtype, count=count, offset=off).reshape(shape)
        off += nbytes
    return header, arrays


# ---------------------------------------------------------------- id lists

def pack_ids(ids: Iterable[str]) -> np.ndarray:
    """Text ids -> one uint8 array (utf-8 joined by NUL)."""
    ids = list(ids)
    if not ids:
        return np.zeros(0, dtype=np.uint8)
    blob = "\0".join(ids).encode()
    # A trailing NUL lets an empty single id ("") round-trip.
    return np.frombuffer(blob + b"\0", dtype=np.uint8)


def unpack_ids(arr: np.ndarray | None) -> list[str]:
    if arr is None or arr.size == 0:
        return []
    return arr.tobytes()[:-1].decode().split("\0")


# ---------------------------------------------------------------- snapshots

#: The statement's snapshot as ``pg_snapshot`` text (column ``s``), exact on a hot standby too.
#: On a server in recovery ``pg_current_snapshot()`` lists no in-progress transactions (PostgreSQL
#: keeps them in the snapshot's subxip array there, which it does not return), so it would call
#: a transaction still running on the primary visible. There the xids in [xmin, xmax) are listed
#: as in progress except those whose change-log rows (written by the transaction itself) this
#: snapshot sees: those committed before it. Only change-log xids are ever tested against these
#: snapshots, so calling an unrelated or pruned xid in progress costs at most a re-read, never a
#: wrong answer. Needs to read maxsim.changes (the scorer, and the privileged PL/Python layer).
SNAPSHOT_SQL = """
WITH b AS (SELECT s.snap, pg_catalog.pg_snapshot_xmin(s.snap) AS xmin, pg_catalog.pg_snapshot_xmax(s.snap) AS xmax
             FROM (SELECT pg_catalog.pg_current_snapshot() AS snap) s)
SELECT CASE WHEN NOT pg_catalog.pg_is_in_recovery() THEN b.snap::text
       ELSE b.xmin::text || ':' || b.xmax::text || ':' || coalesce((
           SELECT pg_catalog.string_agg(u.x::text, ',' ORDER BY u.x) FROM (
               SELECT g.x FROM pg_catalog.generate_series(b.xmin::text::bigint, b.xmax::text::bigint - 1) AS g(x)
                WHERE NOT EXISTS (SELECT FROM maxsim.changes c WHERE c.xid = g.x::text::xid8)
               UNION
               SELECT x::text::bigint FROM pg_catalog.pg_snapshot_xip(b.snap) AS x) u), '')
       END AS s
  FROM b
"""


@dataclass(frozen=True)
class Snapshot:
    """A PostgreSQL ``pg_snapshot`` (text form ``xmin:xmax:xip1,xip2,...``)."""

    xmin: int
    xmax: int
    xip: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> "Snapshot":
        try:
            xmin_s, xmax_s, xip_s = text.strip().split(":")
            xip = frozenset(int(x) for x in xip_s.split(",") if x)
            return cls(int(xmin_s), int(xmax_s), xip)
        except ValueError as exc:
            raise ScorerError("bad_request", f"not a pg_snapshot: {text!r}") from exc

    def sees(self, xid: int) -> bool:
        """True when a *committed* transaction ``xid`` is visible in this snapshot."""
        if xid < self.xmin:
            return True
        if xid >= self.xmax:
            return False
        return xid not in self.xip

    def text(self) -> str:
        return f"{self.xmin}:{self.xmax}:{','.join(str(x) for x in sorted(self.xip))}"


def check_query(query: Any, dim: int | None = None) -> np.ndarray:
    """Validate a query token matrix; returns it as C-contiguous float32 ``(nq, d)``."""
    q = np.asarray(query, dtype=np.float32)
    if q.ndim != 2 or q.shape[0] == 0 or q.shape[1] == 0:
        raise ScorerError("bad_request", f"query must be a non-empty (n_tokens, dim) array, got shape {q.shape}")
    if dim is not None and q.shape[1] != dim:
        raise ScorerError("bad_request", f"query dim {q.shape[1]} does not match the index dim {dim}")
    if not np.isfinite(q).all():
        raise ScorerError("bad_request", "query contains NaN or infinite values")
    return np.ascontiguousarray(q)


def as_i8(values: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(values, dtype=np.int64))
