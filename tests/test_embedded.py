"""The embedded default: no --dsn and no DATABASE_URL → a local PostgreSQL 18 + pgvector."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

pytestmark = pytest.mark.slow  # starts the embedded PostgreSQL

@pytest.fixture
def data_dir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="pgmaxsim-embedded-cli-"))
    return d / "pgdata"


def run_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["PGMAXSIM_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "pgmaxsim.cli", *args], capture_output=True, text=True,
                          timeout=180, env=env)


def test_embedded_default_starts_migrates_answers_and_stops(data_dir: Path) -> None:
    first = run_cli(data_dir, "migrate")
    assert first.returncode == 0, first.stderr
    assert "none ->" in first.stdout
    assert "plpython3u is not available" in first.stdout  # feature-detected fallback
    assert (data_dir / "PG_VERSION").read_text().strip() == "18"
    # stopped cleanly when the command exited
    assert not (data_dir / "postmaster.pid").exists()

    # reused across runs: the schema is already there
    second = run_cli(data_dir, "migrate")
    assert second.returncode == 0, second.stderr
    from pgmaxsim.db.migrate import head_revision

    assert f"{head_revision()} -> {head_revision()}" in second.stdout

    # and it answers a query through the library's own resolution of the default
    os.environ.pop("DATABASE_URL", None)
    os.environ["PGMAXSIM_DATA_DIR"] = str(data_dir)
    try:
        from pgmaxsim.db.connect import connect
        from pgmaxsim.db.embedded import stop_embedded

        with connect() as c:
            row = c.execute(
                "SELECT maxsim.version(), (SELECT extversion FROM pg_extension WHERE extname = 'vector'),"
                " '[1,2,3]'::halfvec <#> '[1,1,1]'::halfvec"
            ).fetchone()
        assert row is not None
        assert row[0] == head_revision()
        assert tuple(int(x) for x in row[1].split(".")[:2]) >= (0, 7)
        assert row[2] == pytest.approx(-6.0)
        stop_embedded()
    finally:
        del os.environ["PGMAXSIM_DATA_DIR"]
    assert not (data_dir / "postmaster.pid").exists()


def test_embedded_dsn_fixture_has_no_plpython(embedded_dsn: str) -> None:
    with psycopg.connect(embedded_dsn) as c:
        assert c.execute("SELECT maxsim.has_plpython()").fetchone() == (False,)
