"""The PostgreSQL a benchmark runs against: the one given (--dsn), or a throwaway one.

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _server import bench_server

    with bench_server(args.dsn, settings={"shared_buffers": "1GB"}) as dsn:
        ...

A given dsn is used as it is (no migration: it may hold an earlier run's indexes). Otherwise a
PostgreSQL 15 is started like the test suite's (tests/pgserver.py: PL/Python loads a world-readable
copy of pgmaxsim, the server user cannot read this checkout), `database` created in it when named,
migrated unless ``migrate=False`` (a bench that makes its own databases migrates those), and at the
end stopped, its data folder and the copy of pgmaxsim removed, also when starting or migrating failed.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def bench_server(dsn: str | None = None, settings: dict[str, str] | None = None, database: str | None = None,
                 migrate: bool = True) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from pgserver import LocalPostgres, make_readable_pylib

    pylib_root = Path(tempfile.mkdtemp(prefix="pgmaxsim-bench-pylib-"))
    server = LocalPostgres()
    try:
        os.chmod(pylib_root, 0o755)
        server.start(pylib=make_readable_pylib(pylib_root / "site"), settings=settings)
        server.wait_ready()
        if database is not None:
            import psycopg
            from psycopg import sql

            with psycopg.connect(server.dsn(), autocommit=True) as c:
                c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        dsn = server.dsn(database or "postgres")
        if migrate:
            from pgmaxsim.db import migrate as migrations

            migrations.upgrade(dsn)
        yield dsn
    finally:
        server.stop()
        shutil.rmtree(pylib_root, ignore_errors=True)
