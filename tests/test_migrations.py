"""Migrations on a real server: up/down/up, snapshot equality, clean removal, frozen SQL, clear errors."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgmaxsim.db import migrate
from pgmaxsim.db.sqlfiles import read_frozen
from pgmaxsim.errors import ConfigurationError, PgmaxsimError

ROOT = Path(__file__).resolve().parent.parent

SNAPSHOT_SQL = """
SELECT 'rel' AS kind, c.relname || ':' || c.relkind::text AS name,
       coalesce((SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                                   || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                                   || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), ''), ', '
                                   ORDER BY a.attnum)
                 FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '') AS def
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'maxsim'
UNION ALL
SELECT 'index', c.relname, pg_get_indexdef(c.oid)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'maxsim' AND c.relkind = 'i'
UNION ALL
SELECT 'constraint', con.conname, pg_get_constraintdef(con.oid)
  FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace WHERE n.nspname = 'maxsim'
UNION ALL
SELECT 'function', p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
       md5(p.prosrc) || ' ' || pg_get_function_result(p.oid) || ' ' || coalesce(array_to_string(p.proconfig, ','), '')
       || ' ' || l.lanname
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
  WHERE n.nspname = 'maxsim'
UNION ALL
SELECT 'trigger', t.tgname, pg_get_triggerdef(t.oid)
  FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace n ON n.oid = p.pronamespace
  WHERE n.nspname = 'maxsim' AND NOT t.tgisinternal
UNION ALL
SELECT 'type', t.typname, t.typtype::text
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = 'maxsim'
UNION ALL
SELECT 'extension', extname, '' FROM pg_extension
UNION ALL
SELECT 'schema', nspname, '' FROM pg_namespace WHERE nspname = 'maxsim'
ORDER BY 1, 2, 3
"""


def snapshot(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as c:
        return c.execute(SNAPSHOT_SQL).fetchall()


def maxsim_objects(dsn: str) -> list[tuple[Any, ...]]:
    return [row for row in snapshot(dsn) if row[0] != "extension"]


def revisions() -> list[str]:
    from alembic.script import ScriptDirectory

    cfg = migrate._alembic_config()
    script = ScriptDirectory.from_config(cfg)
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def test_up_down_up_on_a_real_server(raw_dsn: str) -> None:
    report = migrate.upgrade(raw_dsn)
    assert report.revision_before is None
    assert report.revision_after == migrate.head_revision()
    first = snapshot(raw_dsn)
    down = migrate.downgrade(raw_dsn, "base")
    assert down.revision_after is None
    assert maxsim_objects(raw_dsn) == []
    migrate.upgrade(raw_dsn)
    assert snapshot(raw_dsn) == first


def test_stepwise_upgrade_equals_fresh_install(raw_dsn: str, dsn: str) -> None:
    # `dsn` is a fresh install (upgrade head in one go); raw_dsn goes revision by
    # revision, with a full down/up of each step on the way.
    for rev in revisions():
        migrate.upgrade(raw_dsn, rev)
        before = snapshot(raw_dsn)
        migrate.downgrade(raw_dsn, "-1")
        migrate.upgrade(raw_dsn, rev)
        assert snapshot(raw_dsn) == before, f"down/up of {rev} changed the schema"
    assert snapshot(raw_dsn) == snapshot(dsn)


def test_downgrade_to_base_leaves_no_maxsim_objects(dsn: str) -> None:
    with psycopg.connect(dsn) as c:
        assert c.execute("SELECT maxsim.has_plpython()").fetchone() == (True,)
    migrate.downgrade(dsn, "base")
    assert maxsim_objects(dsn) == []
    with psycopg.connect(dsn) as c:
        # extensions pgmaxsim itself created are gone too
        exts = {r[0] for r in c.execute("SELECT extname FROM pg_extension")}
    assert "vector" not in exts and "plpython3u" not in exts


def test_downgrade_keeps_extensions_it_did_not_create(raw_dsn: str) -> None:
    with psycopg.connect(raw_dsn, autocommit=True) as c:
        c.execute("CREATE EXTENSION vector")
    migrate.upgrade(raw_dsn)
    migrate.downgrade(raw_dsn, "base")
    with psycopg.connect(raw_dsn) as c:
        exts = {r[0] for r in c.execute("SELECT extname FROM pg_extension")}
    assert "vector" in exts and "plpython3u" not in exts


def test_every_revision_pins_the_sql_it_installs() -> None:
    pinned: dict[str, str] = {}
    for path in sorted((ROOT / "migrations" / "versions").glob("*.py")):
        for name, digest in re.findall(r'"([\w.\-]+\.sql)"\s*,\s*"([0-9a-f]{64})"', path.read_text()):
            pinned[name] = digest
    assert pinned, "no revision pins any SQL file"
    for name, digest in pinned.items():
        actual = hashlib.sha256((ROOT / "sql" / name).read_bytes()).hexdigest()
        assert actual == digest, f"sql/{name} changed after its revision pinned it"
    unpinned = {p.name for p in (ROOT / "sql").glob("*.sql")} - set(pinned)
    assert not unpinned, f"SQL files no revision installs: {sorted(unpinned)}"


def test_an_edited_released_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pgmaxsim.db.sqlfiles as sqlfiles

    (tmp_path / "0001_foundation.up.sql").write_text("SELECT 1; -- edited\n")
    monkeypatch.setattr(sqlfiles, "SQL_DIR", tmp_path)
    original = hashlib.sha256((ROOT / "sql" / "0001_foundation.up.sql").read_bytes()).hexdigest()
    with pytest.raises(PgmaxsimError, match="changed after its revision was released"):
        read_frozen("0001_foundation.up.sql", original)


def test_functions_pin_search_path(dsn: str) -> None:
    with psycopg.connect(dsn) as c:
        rows = c.execute(
            "SELECT p.proname, p.proconfig FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'maxsim' AND p.prokind = 'f'"
        ).fetchall()
    assert rows
    unpinned = [name for name, cfg in rows if not cfg or not any(s.startswith("search_path=") for s in cfg)]
    assert unpinned == []


def test_server_without_plpython_uses_the_sql_fallback(embedded_server: Any) -> None:
    name = "nopy_fallback"
    admin = embedded_server.get_uri()
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f'CREATE DATABASE "{name}"')
    dsn = embedded_server.get_uri(name)
    report = migrate.upgrade(dsn)
    assert report.revision_after == migrate.head_revision()
    assert any("plpython3u is not available" in n for n in report.notes)
    with psycopg.connect(dsn) as c:
        assert c.execute("SELECT maxsim.has_plpython()").fetchone() == (False,)
        langs = {r[0] for r in c.execute(
            "SELECT DISTINCT l.lanname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " JOIN pg_language l ON l.oid = p.prolang WHERE n.nspname = 'maxsim'")}
    assert "plpython3u" not in langs
    # and the CLI says so
    out = subprocess.run([sys.executable, "-m", "pgmaxsim.cli", "--dsn", dsn, "migrate"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "plpython3u is not available" in out.stdout


# --- bad input: one clear line, non-zero exit, no traceback -------------------------------

def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "pgmaxsim.cli", *args], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, **(env or {})))


def assert_one_clear_line(out: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("pgmaxsim: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unreachable_dsn_is_one_clear_line() -> None:
    from pgserver import free_port

    out = run_cli("--dsn", f"postgresql://nobody:secret@127.0.0.1:{free_port()}/x", "migrate")
    assert_one_clear_line(out, "cannot connect to", "127.0.0.1")
    assert "secret" not in out.stderr


def test_user_without_rights_to_create_extensions(pg_server: Any) -> None:
    dbname = "norights_db"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS norights_db")
        c.execute("DROP ROLE IF EXISTS appuser")
        c.execute("CREATE ROLE appuser LOGIN NOSUPERUSER")
        c.execute("CREATE DATABASE norights_db OWNER appuser")
    dsn = pg_server.dsn(dbname, user="appuser")
    with pytest.raises(ConfigurationError, match="permission denied to create extension"):
        migrate.upgrade(dsn)
    out = run_cli("--dsn", dsn, "migrate")
    assert_one_clear_line(out, "permission denied to create extension", "CREATE EXTENSION vector")
    # once a DBA installs pgvector, the same user migrates fine (plpython3u falls back)
    with psycopg.connect(pg_server.dsn(dbname), autocommit=True) as c:
        c.execute("CREATE EXTENSION vector")
    report = migrate.upgrade(dsn)
    assert report.revision_after == migrate.head_revision()
    assert any("plpython3u is not available" in n for n in report.notes)


@pytest.mark.slow  # starts its own PostgreSQL
def test_server_without_pgvector() -> None:
    import os
    import shutil
    import tempfile

    from pgserver import PG_BIN, LocalPostgres, copy_install_without

    # Not under pytest's tmp_path: that is mode 0700, and as root the server runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="pgmaxsim-novector-"))
    os.chmod(base, 0o755)
    bindir = copy_install_without(PG_BIN, base, drop=("vector",))
    assert not list(base.rglob("vector.so"))
    server = LocalPostgres(bindir=bindir).start()
    try:
        server.wait_ready()
        out = run_cli("--dsn", server.dsn(), "migrate")
        assert_one_clear_line(out, "pgvector is not installed")
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
