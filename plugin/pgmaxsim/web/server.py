"""Run the web app: resolve the database, check what can be checked, start uvicorn."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from pgmaxsim.errors import MissingExtraError, PgmaxsimError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
_LOCAL = {"127.0.0.1", "localhost", "::1"}


def require_extra() -> None:
    """MissingExtraError naming the ``web`` extra when its packages are not installed."""
    for module in ("starlette", "uvicorn", "jinja2"):
        try:
            __import__(module)
        except ImportError:
            raise MissingExtraError(module, "web") from None


def create_app(dsn: str | None = None, *, index: str | None = None, k: int = 10,
               hosts: list[str] | None = None) -> Any:
    """The Starlette app on ``dsn`` (default: $DATABASE_URL, else the embedded server)."""
    require_extra()
    from pgmaxsim.db.connect import redact, resolve_dsn
    from pgmaxsim.web.app import create_app as build
    from pgmaxsim.web.db import Database

    target = resolve_dsn(dsn)
    return build(Database(target, shown_as=redact(target)), default_index=index, k=k, hosts=hosts)


def allowed_hosts(host: str) -> list[str]:
    """Host header values answered: the loopback names, plus ``host`` itself (any: ``0.0.0.0``/``::``).

    >>> allowed_hosts("127.0.0.1")
    ['127.0.0.1', 'localhost', '[::1]']
    >>> allowed_hosts("0.0.0.0")
    ['*']
    """
    if host in ("0.0.0.0", "::", ""):
        return ["*"]
    names = ["127.0.0.1", "localhost", "[::1]"]
    extra = f"[{host}]" if ":" in host else host
    return names if extra in names or host in _LOCAL else names + [extra]


def serve(dsn: str | None = None, *, index: str | None = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          k: int = 10, out: Callable[[str], None] = print) -> None:
    """Serve the page until interrupted (SIGINT/SIGTERM stop uvicorn gracefully)."""
    app = create_app(dsn, index=index, k=k, hosts=allowed_hosts(host))
    db = app.state.settings.database
    role, index = _check(db, index, out)
    app.state.settings.default_index = index
    import uvicorn

    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{port}/" + (f"?index={index}" if index else "")
    out(f"pgmaxsim serve: {url}  (role {role or '?'} on {db.shown_as}, read-only; Ctrl-C stops)")
    if host not in _LOCAL:
        out(f"pgmaxsim serve: listening on {host}: anyone who reaches this port searches as role {role or '?'}")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, server_header=False)


def _check(db: Any, index: str | None, out: Callable[[str], None]) -> tuple[str | None, str | None]:
    """The role and the default index; an unknown ``index`` is an error now, a database that does
    not answer yet is not (the page says so until it does)."""
    from pgmaxsim.web import data
    from pgmaxsim.web.db import Unavailable

    try:
        with db.transaction() as conn:
            role = str(conn.execute("SELECT current_user").fetchone()[0])
            if not data.schema_installed(conn):
                raise PgmaxsimError(f"the maxsim schema is not installed in {db.shown_as}: run pgmaxsim migrate")
            names = data.index_names(conn)
            if index is not None and index not in names:
                raise PgmaxsimError(f"index {index!r} does not exist (indexes: {', '.join(names) or 'none yet'})")
            index = index or (names[0] if names else None)
            info = data.index_spec(conn, index) if index else None
    except Unavailable as e:
        out(f"pgmaxsim serve: {e} (serving anyway: the page says so until the database answers)")
        return None, index
    if info is not None and info.model:
        _warm(info)
    return role, index


def _warm(info: Any) -> None:
    """Load the default index's model in the background, so the first search does not wait for it."""
    from pgmaxsim.web import data

    def load() -> None:
        try:
            data.encoder(info)
        except Exception:  # noqa: BLE001, S110 - the first search reports it, as one line
            pass

    threading.Thread(target=load, name="pgmaxsim-serve-warm", daemon=True).start()
