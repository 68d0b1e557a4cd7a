"""A real PostgreSQL server for the test suite, as root or as a normal user.

``initdb``/``pg_ctl`` refuse to run as root, and a server running as
``postgres`` cannot read a virtualenv under /root (mode 0700). So when the suite
runs as root the server runs as the ``postgres`` OS user, its files live in a
world-readable temporary directory, and PL/Python imports ``numpy`` and
``pgmaxsim`` from a copy made there (``PYTHONPATH`` in the server's environment).
As a normal user the same layout is used, owned by that user.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy

import pgmaxsim

PG_BIN = Path(os.environ.get("PGMAXSIM_PG_BIN", "/usr/lib/postgresql/15/bin"))
RUN_AS = "postgres" if os.geteuid() == 0 else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", RUN_AS, "--", *cmd] if RUN_AS else cmd


def _chown_tree(path: Path) -> None:
    if RUN_AS:
        shutil.chown(path, RUN_AS, RUN_AS)
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                shutil.chown(os.path.join(root, name), RUN_AS, RUN_AS)


def make_readable_pylib(dest: Path) -> Path:
    """Copy numpy and pgmaxsim where the server's OS user can import them."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "tests", "*.pyc")
    np_dir = Path(numpy.__file__).parent
    shutil.copytree(np_dir, dest / "numpy", ignore=ignore)
    libs = np_dir.parent / "numpy.libs"
    if libs.is_dir():
        shutil.copytree(libs, dest / "numpy.libs")
    pkg = Path(pgmaxsim.__file__).parent
    shutil.copytree(pkg, dest / "pgmaxsim", ignore=shutil.ignore_patterns("__pycache__", "_migrations", "_sql"))
    for root, dirs, files in os.walk(dest):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644 if not f.endswith(".so") else 0o755)
    return dest


@dataclass
class LocalPostgres:
    """One PostgreSQL cluster in a temporary directory."""

    bindir: Path = PG_BIN
    base: Path | None = None
    port: int = 0
    user: str = "postgres"
    host: str = "127.0.0.1"
    pylib: Path | None = None

    def start(self, pylib: Path | None = None, settings: dict[str, str] | None = None) -> "LocalPostgres":
        if not (self.bindir / "initdb").exists():
            raise RuntimeError(f"PostgreSQL binaries not found in {self.bindir}: run scripts/install-postgres.sh")
        self.base = Path(tempfile.mkdtemp(prefix="pgmaxsim-pg-"))
        os.chmod(self.base, 0o755)
        data = self.base / "data"
        sock = self.base / "sock"
        sock.mkdir()
        _chown_tree(self.base)
        env = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8")
        subprocess.run(
            _as_server_user([str(self.bindir / "initdb"), "-D", str(data), "-U", self.user, "--auth=trust",
                             "-E", "UTF8", "--no-sync"]),
            check=True, capture_output=True, env=env,
        )
        self.port = free_port()
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{sock}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "120",
            "shared_buffers": "256MB",
            "work_mem": "64MB",
            "maintenance_work_mem": "256MB",
            # replicas can be made from any test server (pg_basebackup, PostgreSQL's defaults stated)
            "wal_level": "replica",
            "max_wal_senders": "10",
            "wal_keep_size": "'256MB'",
        }
        conf.update(settings or {})
        with open(data / "postgresql.conf", "a") as f:
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")
        self.pylib = pylib
        if pylib is not None:
            env["PYTHONPATH"] = str(pylib)
        subprocess.run(
            _as_server_user([str(self.bindir / "pg_ctl"), "-D", str(data), "-l", str(self.base / "log"),
                             "-w", "-t", "60", "start"]),
            check=True, capture_output=True, env=env,
        )
        return self

    def standby(self) -> "LocalPostgres":
        """A hot standby of this server on a free port: ``pg_basebackup -R`` (streaming replication,
        standby.signal), started like this one. The primary needs wal_level replica (PostgreSQL's
        default) and initdb's trust rule for replication from 127.0.0.1 (LocalPostgres has both)."""
        assert self.base is not None
        replica = LocalPostgres(bindir=self.bindir, user=self.user, host=self.host, pylib=self.pylib)
        replica.base = Path(tempfile.mkdtemp(prefix="pgmaxsim-standby-"))
        os.chmod(replica.base, 0o755)
        (replica.base / "sock").mkdir()
        _chown_tree(replica.base)
        data = replica.base / "data"
        subprocess.run(
            _as_server_user([str(self.bindir / "pg_basebackup"), "-D", str(data), "-R", "-X", "stream",
                             "-c", "fast", "--no-sync", "-h", self.host, "-p", str(self.port), "-U", self.user]),
            check=True, capture_output=True, timeout=300,
        )
        replica.port = free_port()
        with open(data / "postgresql.conf", "a") as f:  # later lines win over the primary's
            f.write(f"port = {replica.port}\nunix_socket_directories = '{replica.base / 'sock'}'\n"
                    "hot_standby = on\n")
        replica._pg_ctl("start", "-w", "-t", "60")
        return replica

    def promote(self) -> None:
        """End recovery on a standby (``pg_ctl promote``, waits until it accepts writes)."""
        self._pg_ctl("promote", "-w", "-t", "60")

    def _pg_ctl(self, *args: str) -> None:
        assert self.base is not None
        subprocess.run(
            _as_server_user([str(self.bindir / "pg_ctl"), "-D", str(self.base / "data"), "-l",
                             str(self.base / "log"), *args]),
            check=True, capture_output=True, timeout=120,
            env=dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8", PYTHONPATH=str(self.pylib or "")),
        )

    def restart(self) -> None:
        assert self.base is not None
        subprocess.run(
            # -l: without a log file the new postmaster inherits (and holds open) our output pipe.
            _as_server_user([str(self.bindir / "pg_ctl"), "-D", str(self.base / "data"), "-l",
                             str(self.base / "log"), "-m", "fast", "-w", "-t", "60", "restart"]),
            check=True, capture_output=True, timeout=120,
            env=dict(os.environ, PYTHONPATH=str(self.pylib or "")),
        )

    def stop(self) -> None:
        if self.base is None:
            return
        subprocess.run(
            _as_server_user([str(self.bindir / "pg_ctl"), "-D", str(self.base / "data"), "-m", "immediate",
                             "-w", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(self.base, ignore_errors=True)
        self.base = None

    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        return f"postgresql://{user or self.user}@{self.host}:{self.port}/{dbname}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.dsn(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def postmaster_pid(pgdata: Path) -> int | None:
    """The pid of the postmaster running on data directory `pgdata` (its postmaster.pid), or None."""
    import psutil

    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if psutil.pid_exists(pid) else None


def copy_install_without(bindir: Path, dest: Path, drop: tuple[str, ...]) -> Path:
    """A relocated copy of a PostgreSQL install lacking some extensions (e.g. pgvector).

    PostgreSQL finds its share and lib directories relative to its binaries, so a
    copy that keeps the relative layout is a complete server without those files.
    Returns the copy's bin directory.
    """
    prefix = bindir.parent  # /usr/lib/postgresql/15
    major = prefix.name
    share = Path(subprocess.run([str(bindir / "pg_config"), "--sharedir"], capture_output=True, text=True,
                                check=True).stdout.strip()) if (bindir / "pg_config").exists() else \
        Path(f"/usr/share/postgresql/{major}")
    new_prefix = dest / prefix.relative_to("/")
    new_share = dest / share.relative_to("/")

    def ignore(dirpath: str, names: list[str]) -> set[str]:
        return {n for n in names if any(n.startswith(d) for d in drop)}

    shutil.copytree(prefix, new_prefix, ignore=ignore, symlinks=True)
    shutil.copytree(share, new_share, ignore=ignore, symlinks=True)
    for root, dirs, files in os.walk(dest):
        os.chmod(root, 0o755)
    return new_prefix / "bin"
