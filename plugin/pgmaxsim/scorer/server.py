"""``pgmaxsim scorer``: the long-lived scoring process (one per GPU; CPU backend without one).

    python -m pgmaxsim.scorer.server --dsn postgresql://... [--socket PATH | --tcp HOST:PORT --secret-file F]

A sync thread LISTENs on ``maxsim_changes`` (on a hot standby, which refuses LISTEN,
it polls the replay position instead), loads every index of
``maxsim.indexes`` (or only ``--index`` names) into the backend, and keeps each
one equal to its token table at a recent snapshot (:mod:`.sync`). An index that
does not fit (GPU out of memory, or over ``--max-memory``) is marked failed
with a clear error and the others keep being served. Request threads (one per
connection) answer the protocol of :mod:`.protocol` under request limits; more
than ``--max-inflight`` concurrent requests waiting longer than
``--queue-timeout`` get ``overloaded`` (callers then score on the CPU).

Who may connect (:mod:`.auth`): on the Unix socket (default
:func:`.auth.default_socket`, in a directory only this user can write, mode
0660) root, this process's user and the ``--allow-user`` users (default
``postgres``), checked with SO_PEERCRED on every connection; over TCP only
peers that prove the ``--secret-file`` secret. A request is read as it arrives
and may not exceed ``--max-request-mib``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pgmaxsim.errors import ConfigurationError, one_line
from pgmaxsim.scorer import auth
from pgmaxsim.scorer.client import parse_address
from pgmaxsim.scorer.protocol import (
    ProtocolError,
    ScorerError,
    Snapshot,
    check_query,
    pack_ids,
    recv_frame,
    send_frame,
    unpack_ids,
)
from pgmaxsim.scorer.store import CpuBackend, IndexStore, OutOfMemory, make_backend

log = logging.getLogger("pgmaxsim.scorer")


@dataclass
class Limits:
    max_ids: int = 1_000_000
    max_query_tokens: int = 512
    max_k: int = 10_000
    #: bytes one request may hold (read as it arrives, so only what a peer sends costs memory)
    max_payload: int = 256 << 20
    max_inflight: int = 32
    queue_timeout: float = 0.2

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Scorer:
    """Indexes held in memory + the request handler (no sockets here)."""

    def __init__(self, dsn: str, backend: CpuBackend, limits: Limits | None = None,
                 index_names: Sequence[str] | None = None, poll_interval: float = 1.0,
                 journal_seconds: float = 600.0, report_dsn: str | None = None) -> None:
        self.dsn = dsn
        #: on a standby: the primary (e.g. host=a,b target_session_attrs=read-write), where this
        #: scorer reports its sync position so that the change log is not pruned under it
        self.report_dsn = report_dsn
        self._report_conn: Any = None
        self.backend = backend
        self.limits = limits or Limits()
        self.index_names = list(index_names) if index_names else None
        self.scorer_id = f"{socket.gethostname()}:{os.getpid()}"
        self._prune_warned = False
        #: the server is a hot standby (set by the sync thread): poll, and report nothing
        self.standby = False
        self.poll_interval = poll_interval
        self.journal_seconds = journal_seconds
        self.stores: dict[int, IndexStore] = {}
        self.failed: dict[int, IndexStore] = {}
        #: on a Citus node: the token shards placed on it, by shard name (:mod:`.citus_node`)
        self.shards: dict[str, IndexStore] = {}
        self._shard_marks: dict[str, tuple[str, float]] = {}
        self._reload: set[int] = set()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._slots = threading.BoundedSemaphore(self.limits.max_inflight)
        self._thread: threading.Thread | None = None
        self.sync_count = 0
        self.served: dict[str, int] = {"score": 0, "search": 0}
        self._encoders: dict[tuple[int, str, str | None], Any] = {}
        self._enc_lock = threading.Lock()
        #: cleared = the sync thread waits (tests use it to hold the scorer behind)
        self.sync_enabled = threading.Event()
        self.sync_enabled.set()

    # ---------------------------------------------------------------- sync
    def start_sync(self) -> None:
        self._thread = threading.Thread(target=self._sync_loop, name="pgmaxsim-scorer-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for store in self.shards.values():
            store.release()
        if self._report_conn is not None:
            self._report_conn.close()

    def wait_synced(self, timeout: float = 30.0) -> bool:
        """Block until the first full pass over the registry has finished."""
        return self._synced.wait(timeout)

    def _sync_loop(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True) as listen, \
                        psycopg.connect(self.dsn, autocommit=True) as conn:
                    self.standby = bool(conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()[0])
                    if self.standby:
                        log.info("scorer sync: the server is a standby: polling its replay position every %s s",
                                 self.poll_interval)
                        self._poll(conn)
                    else:
                        self._listen(listen, conn)
            except psycopg.Error as exc:
                log.warning("scorer sync: %s; retrying in 1 s", one_line(exc))
                self._stop.wait(1.0)

    def _paused(self) -> bool:
        if self.sync_enabled.is_set():
            return False
        self._stop.wait(0.05)
        return True

    def _listen(self, listen: Any, conn: Any) -> None:
        """On a primary: sync on every NOTIFY maxsim_changes, and at least every poll_interval."""
        listen.execute("LISTEN maxsim_changes")
        while not self._stop.is_set():
            if self._paused():
                continue
            self.sync_once(conn)
            self._synced.set()
            for _ in listen.notifies(timeout=self.poll_interval, stop_after=1):
                pass
            # let a burst of commits settle into one sync
            for _ in listen.notifies(timeout=0.005):
                pass

    def _poll(self, conn: Any) -> None:
        """On a hot standby (no LISTEN in recovery): sync whenever replay moved, checked every
        poll_interval. Returns when the standby was promoted, so that the caller LISTENs instead."""
        replayed = None
        while not self._stop.is_set():
            if self._paused():
                continue
            row = conn.execute("SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.pg_last_wal_replay_lsn()::text"
                               ).fetchone()
            if not row[0]:
                log.info("scorer sync: the server was promoted: listening for changes")
                return
            if row[1] != replayed or not self._synced.is_set():
                self.sync_once(conn)      # reads from a snapshot taken after replay reached row[1]
                replayed = row[1]
            else:
                self.sync_count += 1      # nothing replayed: the stores still equal the tables
            self._synced.set()
            self._stop.wait(self.poll_interval)

    def sync_once(self, conn: Any) -> None:
        from pgmaxsim.scorer import citus_node, sync

        citus, registry = citus_node.probe(conn)
        if citus:
            try:
                citus_node.sync_shards(self.shards, conn, self.backend, self.journal_seconds, self._shard_marks)
            except OutOfMemory as exc:
                log.error("scorer: out of memory while loading this node's shards: %s", exc)
            if not registry:     # a Citus worker: no registry, only shards
                self.sync_count += 1
                return
        reg = sync.registry(conn, self.index_names)
        if citus:                # distributed indexes live in the shards (above, on their nodes)
            for iid in citus_node.distributed_index_ids(conn):
                reg.pop(iid, None)
        for iid in list(self.stores):
            if iid not in reg:
                self.stores.pop(iid).release()
        for iid in list(self.failed):
            if iid not in reg:
                self.failed.pop(iid)
        for iid, meta in reg.items():
            store = self.stores.get(iid)
            reload = iid in self._reload
            if store is not None and not reload:
                try:
                    if sync.catch_up(conn, store) == "ok":
                        continue
                except OutOfMemory as exc:
                    self._fail(iid, store, exc)
                    continue
            if store is None and iid in self.failed and not reload:
                continue   # failed to load: retried on an explicit reload only
            self._reload.discard(iid)
            fresh = IndexStore(meta, self.backend, journal_seconds=self.journal_seconds)
            try:
                sync.load(conn, fresh)
            except OutOfMemory as exc:
                fresh.release()
                self._fail(iid, fresh, exc)
                continue
            old = self.stores.get(iid)
            self.stores[iid] = fresh
            self.failed.pop(iid, None)
            if old is not None:
                old.release()
            log.info("scorer: index %s loaded (%d rows, %d tokens)", meta.name, fresh.rows, fresh.tokens)
        self.sync_count += 1
        self._report_synced(conn)

    def _report_synced(self, conn: Any) -> None:
        """Tell the database how far every held index has synced (maxsim.scorer_synced), which
        prunes change-log entries that no scorer needs any more; the lowest watermark counts.
        A standby is read-only: there the position goes to ``report_dsn`` (the primary; its
        xids are the standby's), or nowhere, and then the primary may prune entries this
        scorer still needs while it is behind (its catch-up would miss those changes)."""
        import psycopg

        marks = [s.watermark for s in self.stores.values() if s.watermark is not None]
        if not marks:
            return
        if self.standby and not self.report_dsn:
            if not self._prune_warned:
                log.warning("scorer sync: on a standby without --report-dsn the primary does not know this"
                            " scorer's position and may prune changes it still needs; give it the primary's DSN")
                self._prune_warned = True
            return
        low = min(marks, key=lambda w: w.xmin)
        try:
            if self.standby:
                if self._report_conn is None or self._report_conn.closed:
                    self._report_conn = psycopg.connect(self.report_dsn, autocommit=True, connect_timeout=5)
                conn = self._report_conn
            conn.execute("SELECT maxsim.scorer_synced(%s, %s::pg_snapshot)", (self.scorer_id, low.text()))
        except psycopg.Error as exc:
            if self._report_conn is not None and self._report_conn.broken:
                self._report_conn = None
            if not self._prune_warned:
                log.warning("scorer sync: cannot report its position, so the change log is pruned only by"
                            " age (%s); run the scorer as the schema owner", one_line(exc))
                self._prune_warned = True

    def _fail(self, iid: int, store: IndexStore, exc: Exception) -> None:
        store.state = "failed"
        store.error = (f"out of memory while loading index {store.meta.name!r} on the {self.backend.name} "
                       f"backend: {exc}")
        log.error("scorer: %s", store.error)
        old = self.stores.pop(iid, None)
        if old is not None and old is not store:
            old.release()
        self.failed[iid] = store

    # ---------------------------------------------------------------- requests
    def _store(self, index: Any) -> IndexStore:
        try:
            iid = int(index)
        except (TypeError, ValueError):
            raise ScorerError("bad_request", f"index must be an index id, got {index!r}") from None
        store = self.stores.get(iid)
        if store is None:
            failed = self.failed.get(iid)
            if failed is not None:
                raise ScorerError("not_ready", failed.error or "index failed to load")
            raise ScorerError("unknown_index", f"the scorer does not hold index {iid}")
        return store

    def _shard(self, name: Any, op: str) -> IndexStore:
        """A Citus token shard held on this node (``score`` only: shards keep no change journal)."""
        if op != "score":
            raise ScorerError("bad_request", "a Citus shard answers score requests only")
        store = self.shards.get(str(name))
        if store is None:
            raise ScorerError("unknown_index", f"the scorer does not hold shard {name!r} (not on this node, or"
                              " not loaded yet)")
        return store

    def _query(self, arrays: dict[str, np.ndarray], store: IndexStore) -> np.ndarray:
        if "query" not in arrays:
            raise ScorerError("bad_request", "request has no query")
        q = arrays["query"]
        if q.ndim == 2 and q.shape[0] > self.limits.max_query_tokens:
            raise ScorerError("limit", f"query has {q.shape[0]} tokens, the limit is {self.limits.max_query_tokens}")
        return check_query(q, store.meta.dim)

    def handle(self, head: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        op = head.get("op")
        if op == "ping":
            return {"ok": True, "backend": self.backend.name, "pid": os.getpid()}, {}
        if op == "status":
            return {"ok": True, "backend": self.backend.name, "limits": self.limits.as_dict(),
                    "syncs": self.sync_count, "served": dict(self.served), "indexes": self.status(),
                    "shards": [{"shard": n, "rows": st.rows, "tokens": st.tokens, "storage": st.meta.storage}
                               for n, st in sorted(self.shards.items())]}, {}
        if op == "reload":
            idx = head.get("index")
            self._reload.update(list(self.stores) + list(self.failed) if idx is None else [int(idx)])
            return {"ok": True}, {}
        if op == "encode_query":
            return self._encode_query(head)
        if op not in ("score", "search"):
            raise ScorerError("bad_request", f"unknown op {op!r}")
        if "shard" in head:
            store = self._shard(head.get("shard"), op)
        else:
            store = self._store(head.get("index"))
        q = self._query(arrays, store)
        if not self._slots.acquire(timeout=self.limits.queue_timeout):
            raise ScorerError("overloaded", f"more than {self.limits.max_inflight} requests in flight")
        try:
            self.served[op] += 1
            if op == "score":
                return self._score(store, q, arrays)
            return self._search(store, q, head, arrays)
        finally:
            self._slots.release()

    def _score(self, store: IndexStore, q: np.ndarray, arrays: dict[str, np.ndarray]):
        ids = unpack_ids(arrays.get("ids"))
        versions = np.asarray(arrays.get("versions", np.zeros(0)), dtype=np.int64)
        if len(ids) > self.limits.max_ids:
            raise ScorerError("limit", f"{len(ids)} ids in one request, the limit is {self.limits.max_ids}")
        if versions.shape != (len(ids),):
            raise ScorerError("bad_request", f"{len(ids)} ids but {versions.shape[0]} versions")
        scores, found = store.score(q, ids, versions)
        return {"ok": True}, {"scores": scores, "found": found.astype(np.uint8)}

    def _search(self, store: IndexStore, q: np.ndarray, head: dict[str, Any], arrays: dict[str, np.ndarray]):
        k = head.get("k")
        if not isinstance(k, int) or k <= 0:
            raise ScorerError("bad_request", f"k must be a positive integer, got {k!r}")
        if k > self.limits.max_k:
            raise ScorerError("limit", f"k = {k} exceeds the limit of {self.limits.max_k}")
        snap = Snapshot.parse(str(head.get("snapshot", "")))
        exclude = unpack_ids(arrays.get("exclude"))
        if len(exclude) > self.limits.max_ids:
            raise ScorerError("limit", f"{len(exclude)} excluded ids, the limit is {self.limits.max_ids}")
        r = store.search(q, k, snap, exclude)
        return ({"ok": True, "watermark": r["watermark"], "exhausted": r["exhausted"], "rows": r["rows"]},
                {"ids": pack_ids(r["ids"]), "versions": np.asarray(r["versions"], dtype=np.int64),
                 "scores": r["scores"], "dirty": pack_ids(r["dirty"])})

    def _encode_query(self, head: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``encode_query``: the index's model encodes ``text`` -> arrays ``tokens`` (n, d) float32.

        The encoder of an index is loaded on its first query (once per process).
        """
        try:
            iid = int(head.get("index"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ScorerError("bad_request", f"index must be an index id, got {head.get('index')!r}") from None
        holder = self.stores.get(iid) or self.failed.get(iid)
        if holder is None:
            raise ScorerError("unknown_index", f"the scorer does not hold index {iid}")
        meta = holder.meta
        text = head.get("text")
        if not meta.model:
            raise ScorerError("bad_request", f"index {meta.name!r} has no model")
        if not isinstance(text, str) or not text.strip():
            raise ScorerError("bad_request", "query text is empty")
        if len(text) > 100_000:
            raise ScorerError("limit", f"query text of {len(text)} characters exceeds the limit of 100000")
        key = (iid, meta.model, meta.model_revision)
        with self._enc_lock:
            enc = self._encoders.get(key)
            if enc is None:
                try:
                    from pgmaxsim.encoders.registry import load_encoder

                    enc = load_encoder(meta.model, revision=meta.model_revision,
                                       device="cuda" if self.backend.name == "gpu" else "cpu")
                except Exception as exc:
                    raise ScorerError("not_ready", f"could not load the query encoder {meta.model!r}: "
                                      f"{one_line(exc)}") from None
                self._encoders[key] = enc
        if not self._slots.acquire(timeout=self.limits.queue_timeout):
            raise ScorerError("overloaded", f"more than {self.limits.max_inflight} requests in flight")
        try:
            with self._enc_lock:   # one forward pass at a time per process
                tokens = np.asarray(enc.encode_query(text), dtype=np.float32)
        finally:
            self._slots.release()
        return {"ok": True}, {"tokens": np.ascontiguousarray(tokens)}

    def status(self) -> list[dict[str, Any]]:
        now = time.time()
        out = []
        for s in [*self.stores.values(), *self.failed.values()]:
            out.append({"index": s.meta.id, "name": s.meta.name, "state": s.state, "rows": s.rows,
                        "tokens": s.tokens, "watermark": s.watermark.text() if s.watermark else None,
                        "lag_s": round(now - s.synced_at, 3) if s.synced_at else None, "error": s.error})
        return out


# -------------------------------------------------------------------- sockets

class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        scorer: Scorer = self.server.scorer  # type: ignore[attr-defined]
        sock: socket.socket = self.request
        if not self.server.admit(sock):  # type: ignore[attr-defined]
            return
        while True:
            try:
                head, arrays = recv_frame(sock, scorer.limits.max_payload)
            except ScorerError as exc:   # payload over the limit: answer, then drop the connection
                _reply_error(sock, exc.code, exc.message)
                return
            except (ProtocolError, OSError, ValueError):
                return
            try:
                rhead, rarr = scorer.handle(head, arrays)
            except ScorerError as exc:
                rhead, rarr = {"ok": False, "code": exc.code, "error": exc.message}, {}
            except Exception as exc:  # a bug must not kill the service
                log.exception("scorer: request failed")
                rhead, rarr = {"ok": False, "code": "internal", "error": f"{type(exc).__name__}: {exc}"}, {}
            try:
                send_frame(sock, rhead, rarr)
            except OSError:
                return


def _reply_error(sock: socket.socket, code: str, message: str) -> None:
    try:
        send_frame(sock, {"ok": False, "code": code, "error": message})
    except OSError:
        pass


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Admits peers whose SO_PEERCRED uid is allowed; each refused uid is logged once."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, path: str, allowed: frozenset[int]) -> None:
        super().__init__(path, _Handler)
        self.allowed = allowed
        self.refused: set[int] = set()

    def admit(self, sock: socket.socket) -> bool:
        uid = auth.peer_uid(sock)
        if uid in self.allowed:
            try:
                auth.server_hello(sock, None)
            except OSError:
                return False
            return True
        if uid not in self.refused:
            self.refused.add(uid)
            log.warning("scorer: refused connections from %s: not an allowed user (--allow-user)",
                        auth.user_name(uid))
        _reply_error(sock, "unauthorized", f"the scorer does not serve {auth.user_name(uid)}: only root, its own "
                     "user and the users of --allow-user may connect")
        return False


class _TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """Admits peers that prove the shared secret (HMAC challenge-response, :mod:`.auth`)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    secret = b""

    def admit(self, sock: socket.socket) -> bool:
        try:
            auth.server_hello(sock, self.secret)
        except ScorerError as exc:
            _reply_error(sock, exc.code, exc.message)
            return False
        except (ProtocolError, OSError, ValueError):
            return False
        return True


class ScorerService:
    """A Scorer plus its listening socket, runnable in a thread (tests) or as the process.

    ``address``: a socket path (default :func:`.auth.default_socket`) or ``tcp:HOST:PORT``;
    ``allow_users``: OS users that may connect besides root and this process's user
    (default ``postgres`` when it exists); ``socket_group``: the socket's group (default:
    the first allowed user's primary group); ``secret_file``: required for TCP.
    Raises ConfigurationError (one line) for a path or secret it will not use.
    """

    def __init__(self, scorer: Scorer, address: str | None = None, *, allow_users: Sequence[str] | None = None,
                 socket_group: str | None = None, secret_file: str | None = None) -> None:
        self.scorer = scorer
        self.address = address or auth.default_socket()
        family, sockaddr = parse_address(self.address)
        if family == socket.AF_UNIX:
            users = auth.default_allowed_users() if allow_users is None else allow_users
            allowed = auth.uids_of(users) | {0, os.geteuid()}
            gid = auth.socket_group(socket_group, allowed)
            created = auth.prepare_socket_path(sockaddr)
            server = _UnixServer(sockaddr, allowed)
            os.chmod(sockaddr, auth.SOCKET_MODE)
            for path in ([os.path.dirname(os.path.abspath(sockaddr))] if created else []) + [sockaddr]:
                warning = auth.give_group(path, gid)
                if warning:
                    log.warning("scorer: %s", warning)
            self.server: socketserver.BaseServer = server
        else:
            if not secret_file:
                raise ConfigurationError("a TCP scorer needs --secret-file: a file (not world-readable) holding "
                                         "the secret its clients share")
            tcp = _TcpServer(sockaddr, _Handler)
            tcp.secret = auth.read_secret(secret_file)
            self.server = tcp
            if sockaddr[1] == 0:
                self.address = "%s:%d" % self.server.server_address[:2]
        self.server.scorer = scorer  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    def start(self, sync: bool = True) -> "ScorerService":
        """Accept connections in a thread; ``sync=False`` leaves the registry unread (tests of the socket)."""
        if sync:
            self.scorer.start_sync()
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="pgmaxsim-scorer-accept", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:    # shutdown() waits for a serve_forever that must be running
            self.server.shutdown()
        self.server.server_close()
        self.scorer.stop()
        family, sockaddr = parse_address(self.address)
        if family == socket.AF_UNIX and os.path.exists(sockaddr) and os.lstat(sockaddr).st_uid == os.geteuid():
            os.unlink(sockaddr)


def serve(dsn: str, address: str | None = None, *, backend: str = "auto", int8: bool = False,
          max_memory: int | None = None, index_names: Sequence[str] | None = None, limits: Limits | None = None,
          poll_interval: float = 1.0, journal_seconds: float = 600.0, allow_users: Sequence[str] | None = None,
          socket_group: str | None = None, secret_file: str | None = None,
          stop: threading.Event | None = None, report_dsn: str | None = None) -> None:
    """Run the scorer until ``stop`` is set (or SIGTERM/SIGINT in the main thread)."""
    scorer = Scorer(dsn, make_backend(backend, max_memory, int8), limits, index_names, poll_interval, journal_seconds,
                    report_dsn)
    service = ScorerService(scorer, address, allow_users=allow_users, socket_group=socket_group,
                            secret_file=secret_file).start()
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    log.info("scorer: %s backend listening on %s", scorer.backend.name, service.address)
    print(f"pgmaxsim scorer: {scorer.backend.name} backend listening on {service.address}", flush=True)
    try:
        stop.wait()
    finally:
        service.stop()


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="pgmaxsim scorer", description=__doc__.splitlines()[0])
    p.add_argument("--socket", default=None,
                   help=f"Unix socket path, in a directory only this user can write (default {auth.default_socket()})")
    p.add_argument("--allow-user", action="append", dest="allow_users", metavar="NAME",
                   help="OS user allowed to connect besides root and this user (repeatable; default: postgres)")
    p.add_argument("--socket-group", default=None, metavar="GROUP",
                   help="group of the socket (mode 0660; default: the first allowed user's group)")
    p.add_argument("--tcp", default=None, metavar="HOST:PORT",
                   help="listen on TCP instead (HOST defaults to 127.0.0.1); needs --secret-file")
    p.add_argument("--secret-file", default=None, metavar="PATH",
                   help="file holding the secret TCP clients must prove (not world-readable)")
    p.add_argument("--backend", choices=["auto", "cpu", "gpu"], default="auto")
    p.add_argument("--int8", action="store_true", help="hold GPU tokens as int8 with per-token scales")
    p.add_argument("--index", action="append", dest="indexes", help="serve only this index (repeatable)")
    p.add_argument("--max-memory", type=float, default=None, help="MiB the backend may hold (GPU: 90%% of free)")
    p.add_argument("--poll-interval", type=float, default=1.0, help="seconds between syncs without NOTIFY (on a standby: between checks of its replay position)")
    p.add_argument("--journal-seconds", type=float, default=600.0)
    p.add_argument("--report-dsn", default=None, metavar="DSN",
                   help="on a hot standby: the primary, where this scorer reports how far it has synced (so the"
                        " change log is kept for it); e.g. 'host=a,b target_session_attrs=read-write'")
    p.add_argument("--max-ids", type=int, default=Limits.max_ids)
    p.add_argument("--max-query-tokens", type=int, default=Limits.max_query_tokens)
    p.add_argument("--max-k", type=int, default=Limits.max_k)
    p.add_argument("--max-inflight", type=int, default=Limits.max_inflight)
    p.add_argument("--queue-timeout", type=float, default=Limits.queue_timeout)
    p.add_argument("--max-request-mib", type=float, default=Limits.max_payload / 2**20,
                   help="largest request one connection may send (MiB)")
    return p


def run_args(args: argparse.Namespace, dsn: str) -> int:
    limits = Limits(max_ids=args.max_ids, max_query_tokens=args.max_query_tokens, max_k=args.max_k,
                    max_inflight=args.max_inflight, queue_timeout=args.queue_timeout,
                    max_payload=int(args.max_request_mib * 2**20))
    address = f"tcp:{args.tcp}" if args.tcp else args.socket
    serve(dsn, address, backend=args.backend, int8=args.int8,
          max_memory=int(args.max_memory * 2**20) if args.max_memory else None,
          index_names=args.indexes, limits=limits, poll_interval=args.poll_interval,
          journal_seconds=args.journal_seconds, allow_users=args.allow_users,
          socket_group=args.socket_group, secret_file=args.secret_file, report_dsn=args.report_dsn)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    p.add_argument("--dsn", default=os.environ.get("DATABASE_URL"), help="PostgreSQL DSN (default $DATABASE_URL)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not args.dsn:
        p.error("--dsn or DATABASE_URL is required")
    try:
        return run_args(args, args.dsn)
    except ConfigurationError as exc:
        print(f"pgmaxsim scorer: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
