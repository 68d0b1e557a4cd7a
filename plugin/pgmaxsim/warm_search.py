"""The thin client of a warm ``pgmaxsim search`` (standard library only).

Once the first search has started the per-user query service
(:mod:`pgmaxsim.query_encoder_service`), a search is a request to it: this process
imports neither NumPy nor psycopg nor the model libraries (a few tens of ms of
interpreter start-up instead of ~300 ms of imports), and the service, which holds
the model and a connection, encodes, searches and formats. The service prints what
the command would print (:func:`pgmaxsim.commands.search_cmd.render` runs in both),
so the output is the same with or without it.

The service acts for exactly the caller, never more:

- it searches with the caller's DSN (``--dsn`` / ``DATABASE_URL``, or the embedded
  server's data directory) and the caller's ``PG*`` environment (user, password file,
  service file …), on a connection kept for that combination only: the role, its
  privileges and row-level security are the caller's;
- the socket lives in a per-user directory that must be a real directory owned by
  this user with no access for others (mode 0700), the socket file must be ours, and
  the listening process must run as us (``SO_PEERCRED``); the service in turn answers
  only its own user. Anything else is ignored with one line and the search runs here.

:func:`search` returns the service's answer, or None when the search must run in this
process (no service, a stale or foreign socket, an older service, an unexpected failure).
The wire format is the scorer's frame (:mod:`pgmaxsim.scorer.protocol`) with a JSON
header and no arrays.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

MAGIC = b"PGMS"
_PREFIX = struct.Struct("<4sIQ")
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
#: A reply is a search's printed output: far below this, but bounded.
MAX_REPLY = 64 << 20
#: Seconds to wait for a reply: the first search of a model loads it in the service.
REPLY_TIMEOUT_S = 300.0
#: Seconds to wait for the service's greeting: it answers one search at a time (a busy one is still
#: sooner than loading the model here).
HELLO_TIMEOUT_S = 30.0
#: Request fields the service reads (the search's options, as the CLI parsed them).
OPTIONS = ("query", "index", "k", "candidates", "exact", "filter", "json", "cache")


class Untrusted(Exception):
    """The service's directory, socket or process is not this user's alone: do not send it anything."""


def enabled() -> bool:
    return os.environ.get("PGMAXSIM_QUERY_ENCODER", "auto").lower() not in ("off", "0", "no", "false")


def encoding_threads() -> str:
    """Threads a query is encoded on, by the service or by a search in the command (the same count, so
    that both give the same floats): 1 unless PGMAXSIM_QUERY_ENCODER_THREADS says otherwise. A query
    is a few dozen tokens; on a busy machine a second thread costs far more in waits than it saves
    (MiniLM on 2 cores at load 10: p50 11-24 ms on one thread, 126-479 ms on two)."""
    return os.environ.get("PGMAXSIM_QUERY_ENCODER_THREADS", "1")


def private_dir(create: bool = True) -> Path:
    """This user's directory for the service's socket (``$XDG_RUNTIME_DIR`` or the temporary
    directory, ``pgmaxsim-<uid>``), created 0700 when missing. Raises Untrusted when it is not
    a directory that this user alone may enter (someone else made it first, or opened it)."""
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    d = base / f"pgmaxsim-{os.geteuid()}"
    if create:
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode):
        raise Untrusted(f"{d} is not a directory")
    if st.st_uid != os.geteuid():
        raise Untrusted(f"{d} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise Untrusted(f"other users may enter {d} (mode {stat.S_IMODE(st.st_mode):04o}; it must be 0700)")
    return d


def socket_path() -> Path:
    """The service's socket (raises Untrusted, see :func:`private_dir`)."""
    return private_dir() / "query-encoder.sock"


def target() -> dict[str, str]:
    """Where the search goes: ``{"dsn": ...}`` or ``{"embedded": data directory}`` (the CLI's rule)."""
    dsn = os.environ.get("DATABASE_URL")
    if dsn:
        return {"dsn": dsn}
    from pgmaxsim.db.embedded import data_dir

    return {"embedded": str(data_dir())}


def pg_environment() -> dict[str, str]:
    """The caller's libpq environment (PGUSER, PGPASSWORD, PGPASSFILE, PGSERVICE, PGSSLMODE …)."""
    return {k: v for k, v in os.environ.items() if k.startswith("PG") and not k.startswith("PGMAXSIM")}


def search(options: dict[str, Any], dsn: str | None) -> dict[str, Any] | None:
    """Ask the service to run this search; its reply ``{code, stdout, stderr}``, or None to search here."""
    if not enabled():
        return None
    try:
        path = socket_path()
    except (Untrusted, OSError) as e:
        _say(f"ignoring the warm search service: {e}")
        return None
    try:
        st_ino = os.lstat(path).st_ino
    except FileNotFoundError:
        return None  # no service yet: the search here starts it
    try:
        reply = ask(path, _request(options, dsn))
    except Untrusted as e:
        _say(f"ignoring the warm search service: {e}")
        return None
    except ConnectionRefusedError:
        _remove_stale(path, st_ino)
        return None
    except (OSError, ValueError):
        return None  # it stopped or failed mid-request: search here
    if not reply.get("ok"):
        return None  # not served (another data directory, an older service …): search here
    return reply


def prime(options: dict[str, Any], dsn: str | None) -> None:
    """Send the search this process just ran to the service without waiting for its answer, so that
    the next search finds the connection open and the server's caches warm (a new PostgreSQL backend
    first imports PL/Python's modules: a few hundred ms that the second search would otherwise pay)."""
    if not enabled():
        return
    try:
        path = socket_path()
        ask(path, _request(options, dsn), timeout=0.0, wait=2.0)
    except (Untrusted, OSError, ValueError):
        pass  # only a head start


def _request(options: dict[str, Any], dsn: str | None) -> dict[str, Any]:
    from pgmaxsim import __version__

    where = {"dsn": dsn} if dsn else target()
    return {"op": "search", "version": __version__, **where, "pgenv": pg_environment(),
            **{k: options.get(k) for k in OPTIONS}}


def ask(path: Path, request: dict[str, Any], timeout: float = REPLY_TIMEOUT_S,
        wait: float = HELLO_TIMEOUT_S) -> dict[str, Any]:
    """One request to the service at ``path`` after checking that it is ours; its reply header
    (``timeout`` 0: none wanted). ``wait``: for its greeting, while it answers someone else.

    Raises Untrusted, OSError (ConnectionRefusedError: nobody listens) or ValueError (not our protocol).
    """
    st = os.lstat(path)
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
        raise Untrusted(f"{path} is not a socket of this user")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        s.connect(str(path))
        uid = _UCRED.unpack(s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))[1]
        if uid != os.geteuid():
            raise Untrusted(f"the process listening on {path} runs as uid {uid}, not as this user")
        s.settimeout(wait)
        hello = _recv(s)
        if not hello.get("ok") or hello.get("hello") != "pgmaxsim-scorer":
            raise ValueError(f"{path} did not greet as a pgmaxsim service: {hello.get('error', hello)}")
        body = json.dumps({**request, "arrays": []}, separators=(",", ":")).encode()
        s.sendall(_PREFIX.pack(MAGIC, len(body), 0) + body)
        if not timeout:
            return {}  # sent; the answer is not wanted (prime)
        s.settimeout(timeout)
        return _recv(s)


def _recv(s: socket.socket) -> dict[str, Any]:
    magic, hlen, plen = _PREFIX.unpack(_exactly(s, _PREFIX.size))
    if magic != MAGIC or hlen + plen > MAX_REPLY:
        raise ValueError("not a pgmaxsim frame, or one too large")
    head = json.loads(_exactly(s, hlen))
    if plen:
        _exactly(s, plen)  # arrays: none in the replies this client asks for
    if not isinstance(head, dict):
        raise ValueError("frame header is not a JSON object")  # noqa: TRY004 - callers catch ValueError
    return head


def _exactly(s: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = s.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ConnectionError("the service closed the connection")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _remove_stale(path: Path, inode: int) -> None:
    """Nobody listens on our socket (the service was killed): remove it (unless a new service has
    just replaced it); this search starts a new one."""
    try:
        if os.lstat(path).st_ino == inode:
            path.unlink()
    except OSError:
        pass
    _say(f"the warm search service had stopped (removed its stale socket {path}); searching here")


def _say(line: str) -> None:
    print(f"pgmaxsim: {line}", file=sys.stderr)
