"""Client of the scorer service (stdlib + NumPy only: PL/Python uses it too).

>>> c = ScorerClient("/run/pgmaxsim/scorer.sock")      # doctest: +SKIP
>>> c.score(7, query, ["1", "2"], [41, 42])            # doctest: +SKIP
Scored(ids=['1', '2'], scores=array([...]), found=array([ True, False]))

Addresses: ``unix:/path``, a plain path (``/...`` or ``./...``), ``tcp:HOST:PORT``
or ``HOST:PORT``. One client holds one connection and is not thread-safe
(one per thread, or per backend in PL/Python).

Trust (:mod:`.auth`): a Unix socket is used only when its directory is not
world-writable and the directory, the socket and the listening process belong
to root, this user or one of ``trusted_users``; a TCP scorer only with the
shared secret of ``secret_file``, and only when it proves it knows it too.
Refusals raise ScorerError with code ``untrusted`` (this side) or
``unauthorized`` (the scorer's side).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pgmaxsim.errors import ConfigurationError
from pgmaxsim.scorer import auth
from pgmaxsim.scorer.protocol import (
    ProtocolError,
    ScorerError,
    as_i8,
    check_query,
    pack_ids,
    recv_frame,
    send_frame,
    unpack_ids,
)


def parse_address(address: str) -> tuple[int, Any]:
    """``address`` -> ``(socket family, sockaddr)``."""
    a = address.strip()
    if a.startswith("unix:"):
        return socket.AF_UNIX, a[5:]
    if a.startswith("tcp:"):
        a = a[4:]
    elif a.startswith(("/", ".", "~")):
        return socket.AF_UNIX, a
    host, sep, port = a.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"scorer address must be a socket path, unix:PATH or HOST:PORT, got {address!r}")
    return socket.AF_INET, (host or "127.0.0.1", int(port))


@dataclass
class Scored:
    """Reply to ``score``: ``found[i]`` says whether ``scores[i]`` is valid."""

    ids: list[str]
    scores: np.ndarray
    found: np.ndarray

    @property
    def missing(self) -> list[str]:
        return [i for i, f in zip(self.ids, self.found) if not f]


@dataclass
class SearchReply:
    """Reply to ``search`` (see protocol docstring)."""

    ids: list[str]
    versions: np.ndarray
    scores: np.ndarray
    watermark: str
    exhausted: bool
    dirty: list[str] = field(default_factory=list)
    rows: int = 0


class ScorerClient:
    """One connection to a scorer. Raises ScorerError (an error reply),
    ProtocolError / OSError (connection problems)."""

    def __init__(self, address: str, timeout: float = 5.0, connect_timeout: float = 0.5, *,
                 secret_file: str | None = None, trusted_users: Sequence[int | str] = ()) -> None:
        self.address = address
        self.family, self.sockaddr = parse_address(address)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.secret_file = secret_file
        self.trusted = auth.trusted_uids(trusted_users)
        self._sock: socket.socket | None = None

    def _secret(self) -> bytes | None:
        if self.family != socket.AF_INET:
            return None
        if not self.secret_file:
            raise ScorerError("unauthorized", f"the scorer at {self.address} is reached over TCP, which needs its "
                              "shared secret file and none is configured")
        try:
            return auth.read_secret(self.secret_file)
        except ConfigurationError as exc:
            raise ScorerError("unauthorized", str(exc)) from None

    # -- connection
    def connect(self) -> None:
        if self._sock is not None:
            return
        secret = self._secret()     # no secret, no connection
        if self.family == socket.AF_UNIX:
            auth.check_server_path(self.sockaddr, self.trusted)
        s = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            s.settimeout(self.connect_timeout)
            for attempt in range(20):
                try:
                    s.connect(self.sockaddr)
                    break
                except BlockingIOError:   # a Unix socket's backlog is full: brief retry
                    if attempt == 19:
                        raise
                    time.sleep(0.005 * (attempt + 1))
            if self.family == socket.AF_INET:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            else:
                auth.check_server_process(s, self.sockaddr, self.trusted)
            s.settimeout(self.timeout)
            auth.client_hello(s, self.address, secret)
        except BaseException:
            s.close()
            raise
        self._sock = s

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def __enter__(self) -> "ScorerClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None,
                retry: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Send one request, return ``(header, arrays)`` of the reply.

        A broken pooled connection (the scorer restarted) is retried once on a
        fresh connection. Error replies raise :class:`ScorerError`.
        """
        for attempt in (0, 1):
            fresh = self._sock is None
            try:
                self.connect()
                assert self._sock is not None
                send_frame(self._sock, header, arrays)
                rhead, rarr = recv_frame(self._sock)
                break
            except (ProtocolError, OSError) as exc:
                self.close()
                if isinstance(exc, TimeoutError) or fresh or not retry or attempt:
                    raise
        if not rhead.get("ok"):
            raise ScorerError(str(rhead.get("code", "internal")), str(rhead.get("error", "scorer error")))
        return rhead, rarr

    # -- operations
    def ping(self) -> dict[str, Any]:
        return self.request({"op": "ping"})[0]

    def status(self) -> dict[str, Any]:
        return self.request({"op": "status"})[0]

    def score(self, index: int, query: np.ndarray, ids: Sequence[str], versions: Sequence[int]) -> Scored:
        """MaxSim of ``query`` (nq, d) against rows ``ids`` at ``versions``."""
        ids = [str(i) for i in ids]
        v = as_i8(versions)
        if v.shape != (len(ids),):
            raise ValueError("ids and versions must have the same length")
        head, arr = self.request(
            {"op": "score", "index": int(index)},
            {"query": check_query(query), "ids": pack_ids(ids), "versions": v},
        )
        return Scored(ids, arr["scores"].astype(np.float32), arr["found"].astype(bool))

    def score_shard(self, shard: str, query: np.ndarray, ids: Sequence[str], versions: Sequence[int]) -> Scored:
        """``score`` against a Citus token shard a node's scorer holds (``shard``: its name,
        e.g. ``maxsim.tok_3_102012``; see :mod:`.citus_node`)."""
        ids = [str(i) for i in ids]
        v = as_i8(versions)
        if v.shape != (len(ids),):
            raise ValueError("ids and versions must have the same length")
        head, arr = self.request(
            {"op": "score", "shard": str(shard)},
            {"query": check_query(query), "ids": pack_ids(ids), "versions": v},
        )
        return Scored(ids, arr["scores"].astype(np.float32), arr["found"].astype(bool))

    def search(self, index: int, query: np.ndarray, k: int, snapshot: str,
               exclude: Sequence[str] = ()) -> SearchReply:
        """Exhaustive top-``k`` over the scorer's copy of the index."""
        arrays = {"query": check_query(query)}
        if exclude:
            arrays["exclude"] = pack_ids([str(i) for i in exclude])
        head, arr = self.request({"op": "search", "index": int(index), "k": int(k), "snapshot": snapshot}, arrays)
        return SearchReply(
            ids=unpack_ids(arr.get("ids")),
            versions=arr["versions"].astype(np.int64),
            scores=arr["scores"].astype(np.float32),
            watermark=str(head["watermark"]),
            exhausted=bool(head["exhausted"]),
            dirty=unpack_ids(arr.get("dirty")),
            rows=int(head.get("rows", 0)),
        )

    def reload(self, index: int | None = None) -> dict[str, Any]:
        """Ask the scorer to reload one index (or all) from the database."""
        return self.request({"op": "reload", "index": index})[0]
