"""Who may talk to the scorer, and which scorer a client trusts (stdlib only: runs inside PostgreSQL).

The scorer holds every index's tokens and answers exact scores, so a peer that
reaches it reads past PostgreSQL's privileges, and a forged scorer feeds
backends false results. The rules, server side first:

Unix socket (the default, :func:`default_socket`)
    The socket lives in a directory no other user can write (created mode 0750
    when missing); the socket file is mode 0660, its group the PostgreSQL
    server user's group so that backends may connect. Every accepted
    connection's ``SO_PEERCRED`` uid must be root, the scorer's own uid or an
    allowed user (``--allow-user``; default ``postgres`` when that OS user
    exists); others get one error frame and the connection is closed. A socket
    path or directory that another user owns was squatted: the scorer refuses
    to start on it, with one line saying so.

    The client refuses a socket whose directory is world-writable, or whose
    directory, socket file or listening process belongs to a uid it does not
    trust (root, itself, the users it was told about): it never sends a query
    to a path someone else could have bound.

TCP (``HOST:PORT``, loopback unless told otherwise)
    A shared secret read from a file that is not world-readable, proven by an
    HMAC-SHA256 challenge-response in both directions, so that the secret
    never crosses the wire and a client also knows the scorer is genuine::

        S -> C  hello  {auth: "hmac", nonce: Ns}
        C -> S  {op: "auth", nonce: Nc, proof: HMAC(secret, "client" Ns Nc)}
        S -> C  {ok: true, proof: HMAC(secret, "server" Nc Ns)}

Either way the server speaks first (the hello, or the refusal), so a refused
client reads a clear error instead of a broken pipe.
"""

from __future__ import annotations

import grp
import hashlib
import hmac
import os
import pwd
import secrets
import socket
import stat
import struct
import tempfile
from collections.abc import Iterable

from pgmaxsim.errors import ConfigurationError
from pgmaxsim.scorer.protocol import ScorerError, recv_frame, send_frame

SOCKET_MODE = 0o660
DIR_MODE = 0o750
#: The OS user PostgreSQL runs as on most installations: allowed by default.
POSTGRES_USER = "postgres"
#: Frames before authentication are tiny; a peer may not make us buffer more.
HANDSHAKE_FRAME_LIMIT = 64 << 10
HANDSHAKE_TIMEOUT_S = 10.0
_UCRED = struct.Struct("3i")   # struct ucred: pid, uid, gid


def default_socket(uid: int | None = None) -> str:
    """The scorer's socket when none is given: ``/run/pgmaxsim/scorer.sock`` for root,
    else ``<tmp>/pgmaxsim-scorer-<uid>/scorer.sock`` (a private directory: a user's runtime
    directory is mode 0700, which the PostgreSQL server user could not enter).

    >>> default_socket(0)
    '/run/pgmaxsim/scorer.sock'
    """
    uid = os.geteuid() if uid is None else uid
    if uid == 0:
        return "/run/pgmaxsim/scorer.sock"
    return os.path.join(tempfile.gettempdir(), f"pgmaxsim-scorer-{uid}", "scorer.sock")


def user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a Unix stream socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return int(_UCRED.unpack(raw)[1])


def uids_of(users: Iterable[str]) -> frozenset[int]:
    """OS user names (or numeric uids) -> uids; an unknown name is a configuration error."""
    out = set()
    for name in users:
        if name.isdigit():
            out.add(int(name))
            continue
        try:
            out.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            raise ConfigurationError(f"no OS user named {name!r} (--allow-user)") from None
    return frozenset(out)


def default_allowed_users() -> list[str]:
    try:
        pwd.getpwnam(POSTGRES_USER)
    except KeyError:
        return []
    return [POSTGRES_USER]


def socket_group(group: str | None, allowed: Iterable[int]) -> int | None:
    """gid the socket and its new directory get: ``group`` by name, else the primary
    group of the first allowed user other than us (the PostgreSQL server's)."""
    if group:
        try:
            return grp.getgrnam(group).gr_gid if not group.isdigit() else int(group)
        except KeyError:
            raise ConfigurationError(f"no OS group named {group!r} (--socket-group)") from None
    for uid in sorted(allowed):
        if uid not in (0, os.geteuid()):
            try:
                return pwd.getpwuid(uid).pw_gid
            except KeyError:
                continue
    return None


# ------------------------------------------------------------------ server side: the path

def prepare_socket_path(path: str) -> bool:
    """Make ``path``'s directory (mode 0750) when missing and check that nobody else
    owns or may write it, nor the socket path itself. Returns True when the directory
    was created here. Raises ConfigurationError (one line) otherwise."""
    me = os.geteuid()
    d = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    created = False
    try:
        os.mkdir(d, DIR_MODE)
        os.chmod(d, DIR_MODE)   # mkdir's mode is masked by the umask
        created = True
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigurationError(f"cannot create the scorer's socket directory {d}: {exc.strerror}") from None
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigurationError(f"the scorer's socket directory {d} is not a directory")
    if st.st_uid not in (me, 0):
        raise ConfigurationError(
            f"refusing socket directory {d}: it belongs to {user_name(st.st_uid)}, not to this scorer's user "
            f"{user_name(me)} (created by someone else first?); remove it or choose another --socket")
    if st.st_mode & 0o022:
        raise ConfigurationError(
            f"refusing socket directory {d}: other users may write it (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"use a directory only {user_name(st.st_uid)} can write")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return created
    if st.st_uid != me:
        raise ConfigurationError(
            f"refusing socket path {path}: it belongs to {user_name(st.st_uid)}, not to this scorer's user "
            f"{user_name(me)} (created by someone else first?); remove it or choose another --socket")
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigurationError(f"refusing socket path {path}: it exists and is not a socket")
    _remove_stale_socket(path)
    return created


def _remove_stale_socket(path: str) -> None:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(path)
    except OSError:
        os.unlink(path)      # nobody listens: a leftover of a killed scorer
        return
    finally:
        probe.close()
    raise ConfigurationError(f"another scorer is already listening on {path}")


def give_group(path: str, gid: int | None) -> str | None:
    """chgrp ``path`` to ``gid``; returns a warning line when not permitted."""
    if gid is None or os.lstat(path).st_gid == gid:
        return None
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        try:
            name = grp.getgrgid(gid).gr_name
        except KeyError:
            name = str(gid)
        return (f"could not give {path} to group {name}: the PostgreSQL server's user may be unable to "
                f"connect (run the scorer as a member of {name}, or pass --socket-group)")
    return None


# ------------------------------------------------------------------ client side: the path

def trusted_uids(users: Iterable[int | str] = ()) -> frozenset[int]:
    """Whom a client trusts to run the scorer: root, itself, and ``users`` (names or uids);
    unknown names are ignored (they cannot own anything)."""
    out = {0, os.geteuid()}
    for u in users:
        if isinstance(u, int) or str(u).isdigit():
            out.add(int(u))
        else:
            try:
                out.add(pwd.getpwnam(str(u)).pw_uid)
            except KeyError:
                pass
    return frozenset(out)


def check_server_path(path: str, trusted: frozenset[int]) -> None:
    """Raise ScorerError("untrusted") unless the socket at ``path`` can only have
    been bound by a trusted user. A missing path is left to connect() to report."""
    d = os.path.dirname(os.path.abspath(path)) or "/"
    try:
        dst = os.stat(d)
        sst = os.lstat(path)
    except FileNotFoundError:
        return
    if dst.st_mode & stat.S_IWOTH:
        raise ScorerError("untrusted", f"refusing the scorer socket {path}: its directory {d} is world-writable "
                          "(anyone could have put a socket there); run the scorer with a socket in a private "
                          "directory")
    for what, st in (("directory " + d, dst), ("socket " + path, sst)):
        if st.st_uid not in trusted:
            raise ScorerError("untrusted", f"refusing the scorer {what}: it belongs to {user_name(st.st_uid)}, "
                              "who is not trusted to run the scorer (root, this user or the configured "
                              "scorer user)")


def check_server_process(sock: socket.socket, path: str, trusted: frozenset[int]) -> None:
    uid = peer_uid(sock)
    if uid not in trusted:
        raise ScorerError("untrusted", f"refusing the scorer at {path}: the process listening there runs as "
                          f"{user_name(uid)}, who is not trusted to run the scorer")


# ------------------------------------------------------------------ TCP: shared secret

def read_secret(path: str) -> bytes:
    """The shared secret in file ``path`` (surrounding whitespace stripped). The file
    must not be world-readable and not empty. Raises ConfigurationError."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read(1 << 16).strip()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the scorer secret file {path}: {exc.strerror}") from None
    if st.st_mode & stat.S_IROTH:
        raise ConfigurationError(f"refusing the scorer secret file {path}: it is world-readable "
                                 f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod o-r it")
    if len(data) < 16:
        raise ConfigurationError(f"the scorer secret file {path} holds fewer than 16 bytes: use a long random "
                                 "secret (e.g. openssl rand -hex 32)")
    return data


def _proof(secret: bytes, role: str, first: str, second: str) -> str:
    return hmac.new(secret, f"{role}:{first}:{second}".encode(), hashlib.sha256).hexdigest()


def server_hello(sock: socket.socket, secret: bytes | None) -> None:
    """Greet a peer; with ``secret`` run the server half of the challenge-response.
    Raises ScorerError("unauthorized") when the peer fails it (after telling it)."""
    if secret is None:
        send_frame(sock, {"ok": True, "hello": "pgmaxsim-scorer", "auth": "peercred"})
        return
    nonce = secrets.token_hex(16)
    send_frame(sock, {"ok": True, "hello": "pgmaxsim-scorer", "auth": "hmac", "nonce": nonce})
    sock.settimeout(HANDSHAKE_TIMEOUT_S)
    head, _ = recv_frame(sock, HANDSHAKE_FRAME_LIMIT)
    cnonce, proof = head.get("nonce"), head.get("proof")
    if head.get("op") != "auth" or not isinstance(cnonce, str) or not isinstance(proof, str) \
            or not hmac.compare_digest(proof, _proof(secret, "client", nonce, cnonce)):
        raise ScorerError("unauthorized", "authentication failed: this scorer needs the shared secret of its "
                          "--secret-file")
    send_frame(sock, {"ok": True, "proof": _proof(secret, "server", cnonce, nonce)})
    sock.settimeout(None)


def client_hello(sock: socket.socket, address: str, secret: bytes | None) -> None:
    """Read the scorer's greeting (or its refusal) and answer its challenge if any."""
    head, _ = recv_frame(sock, HANDSHAKE_FRAME_LIMIT)
    if not head.get("ok"):
        raise ScorerError(str(head.get("code", "unauthorized")), str(head.get("error", "refused")))
    if head.get("hello") != "pgmaxsim-scorer":
        raise ScorerError("untrusted", f"{address} did not greet as a pgmaxsim scorer")
    if head.get("auth") != "hmac":
        return
    if secret is None:
        raise ScorerError("unauthorized", f"the scorer at {address} needs a shared secret and none is configured")
    cnonce = secrets.token_hex(16)
    snonce = str(head.get("nonce", ""))
    send_frame(sock, {"op": "auth", "nonce": cnonce, "proof": _proof(secret, "client", snonce, cnonce)})
    reply, _ = recv_frame(sock, HANDSHAKE_FRAME_LIMIT)
    if not reply.get("ok"):
        raise ScorerError(str(reply.get("code", "unauthorized")), str(reply.get("error", "refused")))
    if not hmac.compare_digest(str(reply.get("proof", "")), _proof(secret, "server", cnonce, snonce)):
        raise ScorerError("untrusted", f"the server at {address} does not know the shared secret: not our scorer")
