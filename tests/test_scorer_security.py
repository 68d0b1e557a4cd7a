"""Who may talk to the scorer, and which scorer backends believe: real server
processes, real OS users (a throwaway one is created when the suite runs as
root, as CI does), the SQL functions going through the admin's settings."""

from __future__ import annotations

import json
import os
import pwd
import select
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pgmaxsim.errors import ConfigurationError
from pgmaxsim.scorer import auth
from pgmaxsim.scorer.client import ScorerClient
from pgmaxsim.scorer.protocol import MAGIC, ScorerError, recv_frame, send_frame
from pgmaxsim.scorer.server import Limits, Scorer, ScorerService
from pgmaxsim.scorer.store import CpuBackend
from test_scorer import (
    _exact,
    _make_index,
    _search_sql,
    _sock,
    _vec,
    _wait_sync,
    use_scorer,
)

INTRUDER = "pgms_intruder"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create and become other OS users")


@pytest.fixture(scope="session")
def intruder() -> pwd.struct_passwd:
    """A local OS user with no business talking to the scorer."""
    try:
        return pwd.getpwnam(INTRUDER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", INTRUDER],
                       check=True, capture_output=True)
        return pwd.getpwnam(INTRUDER)


def as_user(user: pwd.struct_passwd, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a forked child that has become ``user``; returns what it returned
    (JSON), or re-raises what it raised as ``(type name, code, message)``."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # child: never return into pytest
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            try:
                out: Any = {"ok": fn()}
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                out = {"error": [type(exc).__name__, getattr(exc, "code", None), str(exc)]}
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def _ping(path: str) -> Callable[[], Any]:
    def go() -> Any:
        with ScorerClient(path, timeout=5) as c:
            return c.ping()["ok"]
    return go


@pytest.fixture
def service(dsn: str) -> Iterator[ScorerService]:
    svc = ScorerService(Scorer(dsn, CpuBackend(), poll_interval=0.2), _sock()).start()
    yield svc
    svc.stop()


def test_socket_is_private_and_other_os_users_are_refused(service: ScorerService, intruder: pwd.struct_passwd,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    path = service.address
    st = os.stat(path)
    postgres = pwd.getpwnam("postgres")
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == postgres.pw_gid
    # the PostgreSQL server's OS user is allowed by default, root (this process) too
    assert as_user(postgres, _ping(path)) == {"ok": True}
    assert _ping(path)() is True
    # the file mode alone keeps others out ...
    err = as_user(intruder, _ping(path))["error"]
    assert err[0] == "PermissionError"
    # ... and with a careless mode, peer credentials still do, logged once per user
    os.chmod(path, 0o666)
    for _ in range(3):
        err = as_user(intruder, _ping(path))["error"]
        assert err[:2] == ["ScorerError", "unauthorized"] and f"does not serve {INTRUDER}" in err[2]
    refusals = [r for r in caplog.records if "refused connections from" in r.getMessage()]
    assert len(refusals) == 1 and INTRUDER in refusals[0].getMessage()
    assert _ping(path)() is True   # the scorer keeps serving the others


def test_allow_user_replaces_the_default(dsn: str, intruder: pwd.struct_passwd) -> None:
    svc = ScorerService(Scorer(dsn, CpuBackend()), _sock(), allow_users=[INTRUDER]).start(sync=False)
    try:
        assert as_user(intruder, _ping(svc.address)) == {"ok": True}
        err = as_user(pwd.getpwnam("postgres"), _ping(svc.address))["error"]
        assert err[0] in ("PermissionError", "ScorerError")   # not in the socket's group, nor allowed
    finally:
        svc.stop()
    with pytest.raises(ConfigurationError, match="no OS user named 'nobody-here'"):
        ScorerService(Scorer(dsn, CpuBackend()), _sock(), allow_users=["nobody-here"])


class Squatter:
    """``user`` binds and listens on ``path`` first (a forked child), counting connections."""

    def __init__(self, user: pwd.struct_passwd, path: str) -> None:
        ready_r, ready_w = os.pipe()
        self._stop_r, self._stop_w = os.pipe()
        self._count_r, count_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.setgroups([])
                os.setgid(user.pw_gid)
                os.setuid(user.pw_uid)
                srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                srv.bind(path)
                os.chmod(path, 0o777)
                srv.listen(8)
                os.write(ready_w, b"1")
                accepted = 0
                while True:
                    ready, _, _ = select.select([srv, self._stop_r], [], [])
                    if self._stop_r in ready:
                        break
                    c, _ = srv.accept()
                    accepted += 1
                    send_frame(c, {"ok": True, "hello": "pgmaxsim-scorer", "auth": "peercred"})
                os.write(count_w, str(accepted).encode())
            finally:
                os._exit(0)
        os.close(ready_w)
        os.close(count_w)
        assert os.read(ready_r, 1) == b"1"
        os.close(ready_r)

    def stop(self) -> int:
        """Stop it; returns how many connections it accepted."""
        os.write(self._stop_w, b"x")
        count = int(os.read(self._count_r, 32) or b"-1")
        os.waitpid(self.pid, 0)
        return count


def test_squatted_socket_path_is_refused_by_server_and_clients(conn: psycopg.Connection[Any], dsn: str,
                                                              intruder: pwd.struct_passwd) -> None:
    _make_index(conn, "docs", 10)
    path = _sock()
    d = os.path.dirname(path)
    os.chmod(d, 0o777)           # a moment of carelessness is enough to squat
    squatter = Squatter(intruder, path)
    os.chmod(d, 0o755)
    try:
        with pytest.raises(ConfigurationError, match=f"refusing socket path {path}: it belongs to {INTRUDER}"):
            ScorerService(Scorer(dsn, CpuBackend()), path)
        # the real process: one clear line, exit status 1
        proc = subprocess.run([sys.executable, "-m", "pgmaxsim.scorer.server", "--dsn", dsn, "--socket", path,
                               "--backend", "cpu"], capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 1
        line = (f"pgmaxsim scorer: refusing socket path {path}: it belongs to {INTRUDER} (uid {intruder.pw_uid}), "
                "not to this scorer's user root (uid 0) (created by someone else first?); remove it or choose "
                "another --socket")
        assert proc.stderr.strip().splitlines() == [line]
        # clients: never connect to it
        with pytest.raises(ScorerError, match=f"refusing the scorer socket {path}: it belongs to {INTRUDER}") as e:
            ScorerClient(path).ping()
        assert e.value.code == "untrusted"
        err = as_user(pwd.getpwnam("postgres"), _ping(path))["error"]
        assert err[:2] == ["ScorerError", "untrusted"]
        # nor do the SQL functions: they say why and score in the backend
        notices: list[str] = []
        conn.add_notice_handler(lambda n: notices.append(n.message_primary or ""))
        use_scorer(conn, path)
        q = _vec(3)
        assert len(_search_sql(conn, "docs", q, 3)) == 3
        assert any("scorer service not used" in n and "belongs to " + INTRUDER in n for n in notices)
    finally:
        assert squatter.stop() == 0   # nobody ever connected to it


def test_squatted_or_shared_directory_is_refused(dsn: str, intruder: pwd.struct_passwd, tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    squat = tmp_path / "pgmaxsim"
    squat.mkdir(mode=0o755)
    os.chown(squat, intruder.pw_uid, intruder.pw_gid)
    with pytest.raises(ConfigurationError, match=f"refusing socket directory {squat}: it belongs to {INTRUDER}"):
        ScorerService(Scorer(dsn, CpuBackend()), str(squat / "scorer.sock"))
    with pytest.raises(ConfigurationError, match="other users may write it"):
        ScorerService(Scorer(dsn, CpuBackend()), os.path.join("/tmp", f"pgms-{os.getpid()}.sock"))
    # the client side: a socket in a world-writable directory is never used
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(shared / "scorer.sock"))
    s.listen(1)
    try:
        with pytest.raises(ScorerError, match="is world-writable"):
            ScorerClient(str(shared / "scorer.sock")).ping()
    finally:
        s.close()
    # a directory the scorer creates is private, and given to the PostgreSQL server's group
    fresh = tmp_path / "run"
    svc = ScorerService(Scorer(dsn, CpuBackend()), str(fresh / "scorer.sock"))
    try:
        st = os.stat(fresh)
        assert stat.S_IMODE(st.st_mode) == 0o750 and st.st_gid == pwd.getpwnam("postgres").pw_gid
    finally:
        svc.stop()
    assert auth.default_socket(0) == "/run/pgmaxsim/scorer.sock"
    assert auth.default_socket(1234).endswith("/pgmaxsim-scorer-1234/scorer.sock")


def _vmrss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _closed(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:   # closed with our unread bytes in its buffer
        return True


def _declare(path: str, payload: int, send: bytes = b"") -> socket.socket:
    """Connect, read the hello, declare a frame of ``payload`` bytes and send only ``send`` of it."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    assert recv_frame(s)[0]["ok"]
    header = b'{"op":"ping","arrays":[]}'
    s.sendall(struct.pack("<4sIQ", MAGIC, len(header), payload) + header + send)
    return s


def test_declared_gigabyte_costs_no_memory(dsn: str) -> None:
    path = _sock()
    proc = subprocess.Popen([sys.executable, "-m", "pgmaxsim.scorer.server", "--dsn", dsn, "--socket", path,
                             "--backend", "cpu", "--max-request-mib", "4096"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    held: list[socket.socket] = []
    try:
        end = time.monotonic() + 30
        while not os.path.exists(path):
            assert proc.poll() is None and time.monotonic() < end, "scorer did not start"
            time.sleep(0.05)
        assert _ping(path)()
        base = _vmrss_kib(proc.pid)
        # four peers each declare 1 GiB; they send 1 MiB of it and then nothing
        held = [_declare(path, 1 << 30, b"\0" * (1 << 20)) for _ in range(4)]
        peak = base
        for _ in range(20):
            assert _ping(path)()                  # still answering the others
            peak = max(peak, _vmrss_kib(proc.pid))
            time.sleep(0.05)
        assert peak - base < 50 * 1024, f"RSS grew by {(peak - base) // 1024} MiB"
    finally:
        for s in held:
            s.close()
        proc.terminate()
        proc.wait(timeout=20)


def test_request_over_the_limit_is_answered_and_dropped(dsn: str) -> None:
    svc = ScorerService(Scorer(dsn, CpuBackend()), _sock()).start(sync=False)
    try:
        assert Limits().max_payload == 256 << 20
        s = _declare(svc.address, 1 << 30)
        head, _ = recv_frame(s)
        assert head["code"] == "limit" and "exceeds the limit of 268435456 bytes" in head["error"]
        assert _closed(s)
        s.close()
    finally:
        svc.stop()


@pytest.fixture
def secret_file() -> Iterator[str]:
    d = Path(tempfile.mkdtemp(prefix="pgms-secret-"))   # pytest's tmp_path is private to root
    os.chmod(d, 0o755)
    path = d / "scorer.secret"
    path.write_text("0123456789abcdef0123456789abcdef\n")
    os.chown(path, 0, pwd.getpwnam("postgres").pw_gid)   # the PostgreSQL server's user reads it too
    os.chmod(path, 0o640)
    yield str(path)
    shutil.rmtree(d)


def test_tcp_needs_the_shared_secret(conn: psycopg.Connection[Any], dsn: str, secret_file: str,
                                     tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="a TCP scorer needs --secret-file"):
        ScorerService(Scorer(dsn, CpuBackend()), "tcp:127.0.0.1:0")
    loose = tmp_path / "loose.secret"
    shutil.copy(secret_file, loose)
    os.chmod(loose, 0o644)
    with pytest.raises(ConfigurationError, match="it is world-readable"):
        ScorerService(Scorer(dsn, CpuBackend()), "tcp:127.0.0.1:0", secret_file=str(loose))
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("not the scorer's secret at all")
    os.chmod(wrong, 0o600)

    _idx, docs = _make_index(conn, "docs", 20)
    svc = ScorerService(Scorer(dsn, CpuBackend(), poll_interval=0.2), "tcp:127.0.0.1:0",
                        secret_file=secret_file).start()
    try:
        assert svc.address.startswith("127.0.0.1:")
        with pytest.raises(ScorerError, match="needs its shared secret file and none is configured"):
            ScorerClient(svc.address).ping()
        with pytest.raises(ScorerError, match="authentication failed") as e:
            ScorerClient(svc.address, secret_file=str(wrong)).ping()
        assert e.value.code == "unauthorized"
        # a peer that skips the handshake gets an error frame and a closed connection
        host, port = svc.address.rsplit(":", 1)
        with socket.create_connection((host, int(port))) as s:
            assert recv_frame(s)[0]["auth"] == "hmac"
            send_frame(s, {"op": "status"})
            assert recv_frame(s)[0]["code"] == "unauthorized"
            assert _closed(s)
        with ScorerClient(svc.address, secret_file=secret_file) as c:
            assert c.ping()["ok"]
        # backends: the admin stores the address and the secret file's path
        _wait_sync(svc.scorer)
        use_scorer(conn, svc.address, scorer_secret_file=secret_file)
        q = _vec(4)
        before = svc.scorer.served["search"]
        got = _search_sql(conn, "docs", q, 5)
        assert [i for i, _ in got] == [i for i, _ in _exact(q, docs, 5)]
        assert svc.scorer.served["search"] > before
    finally:
        svc.stop()


def test_a_forged_tcp_scorer_is_not_believed(secret_file: str) -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def forge() -> None:
        c, _ = srv.accept()
        send_frame(c, {"ok": True, "hello": "pgmaxsim-scorer", "auth": "hmac", "nonce": "00"})
        recv_frame(c)
        send_frame(c, {"ok": True, "proof": "f" * 64})
        c.close()

    import threading

    t = threading.Thread(target=forge, daemon=True)
    t.start()
    with pytest.raises(ScorerError, match="does not know the shared secret: not our scorer") as e:
        ScorerClient(f"127.0.0.1:{port}", secret_file=secret_file).ping()
    assert e.value.code == "untrusted"
    t.join(5)
    srv.close()


def test_session_setting_is_ignored_and_says_so(conn: psycopg.Connection[Any], service: ScorerService) -> None:
    _make_index(conn, "docs", 20)
    _wait_sync(service.scorer)
    use_scorer(conn, None)
    notices: list[str] = []
    conn.add_notice_handler(lambda n: notices.append(n.message_primary or ""))
    conn.execute("SELECT set_config('pgmaxsim.scorer', %s, false)", (service.address,))
    q = _vec(3)
    for _ in range(2):
        assert len(_search_sql(conn, "docs", q, 3)) == 3
    ignored = [n for n in notices if "pgmaxsim.scorer is ignored" in n]
    assert len(ignored) == 1 and "maxsim.set_scorer(" in ignored[0]
    assert service.scorer.served["search"] == 0
    use_scorer(conn, service.address)      # what an admin does
    assert len(_search_sql(conn, "docs", q, 3)) == 3
    assert service.scorer.served["search"] >= 1


def test_encode_query_without_a_scorer_connects_nowhere(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    conn.execute("SELECT maxsim.create_index('notes', 'notes', 'id', text_column => 'body', model => 'default', "
                 "dim => 384)")
    use_scorer(conn, None)
    # something listens where a session points the old setting: it must not be asked
    path = _sock()
    lure = socket.socket(socket.AF_UNIX)
    lure.bind(path)
    os.chmod(path, 0o777)
    lure.listen(4)
    lure.setblocking(False)
    conn.execute("SELECT set_config('pgmaxsim.scorer', %s, false)", (path,))
    try:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
            conn.execute("SELECT maxsim.encode_query('notes', 'opening rules of chess')")
        assert e.value.diag.message_primary == ("pgmaxsim: maxsim.encode_query needs the scorer service, and no "
                                                "scorer is configured for this database")
        assert "maxsim.set_scorer(" in (e.value.diag.message_hint or "")
        with pytest.raises(BlockingIOError):
            lure.accept()
    finally:
        lure.close()
