"""``pgmaxsim serve`` without a browser: its doctests, its argument checks, its read-only connections."""

from __future__ import annotations

import doctest
from typing import Any

import psycopg
import pytest

from pgmaxsim.cli import main


@pytest.mark.parametrize("module", ["pgmaxsim.web.overlay", "pgmaxsim.web.server"])
def test_doctests(module: str) -> None:
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


def test_bad_port_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "70000"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "pgmaxsim: --port must be from 1 to 65535, got 70000"


def test_unknown_index_is_one_line_before_serving(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dsn", dsn, "serve", "--index", "nope", "--port", "1"]) == 1
    err = capsys.readouterr().err
    assert "index 'nope' does not exist (indexes: none yet)" in err and "Traceback" not in err


def test_demo_serve_and_psql_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--serve", "--psql"]) == 1
    assert "choose one" in capsys.readouterr().err


def test_the_page_cannot_write_even_as_the_owner(dsn: str) -> None:
    from pgmaxsim.web.db import Database

    db = Database(dsn)
    try:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction), db.transaction() as conn:
            conn.execute("CREATE TABLE written_by_the_page (x int)")
        with db.transaction() as conn:  # the connection is still usable, and still read-only
            row: Any = conn.execute("SELECT current_setting('transaction_read_only')").fetchone()
            assert row[0] == "on"
            conn.execute("SET LOCAL default_transaction_read_only = off")  # a role cannot switch it off here
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("CREATE TABLE written_by_the_page (x int)")
    finally:
        db.close()
    with psycopg.connect(dsn) as c:
        assert c.execute("SELECT to_regclass('written_by_the_page')").fetchone() == (None,)


def test_stage_timings_read_maxsim_search_s_own_notices(conn: psycopg.Connection[Any]) -> None:
    """The page's ANN and rescoring figures are parsed from maxsim.search's timing NOTICEs: a search
    that prefilters (more rows than candidates, centroid pooling) reports both, as the page reads them."""
    import numpy as np

    from pgmaxsim import Index
    from pgmaxsim.web.data import Timings, _stage_timings

    rng = np.random.default_rng(5)
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    conn.execute("INSERT INTO t SELECT generate_series(1, 300)")
    idx = Index.create(conn, "t", "t", "id", dim=16, pooling="centroids")  # the first stage that rescores
    idx.upsert(list(range(1, 301)), [rng.standard_normal((8, 16)) for _ in range(300)])
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append((d.message_primary or "").removeprefix("pgmaxsim: ")))
    with conn.transaction():
        conn.execute("SELECT set_config('pgmaxsim.timing', 'on', true)")
        assert len(idx.search(rng.standard_normal((4, 16)), k=5, candidates=16)) == 5
    timings = Timings()
    _stage_timings(timings, notices, 100.0)
    stages = {s.name: s for s in timings.stages}
    assert stages["ANN prefilter"].ms is not None and "candidates" in stages["ANN prefilter"].note, notices
    assert stages["rescoring"].ms is not None and "centroid interaction" in stages["rescoring"].note, notices
    assert 0 <= stages["scoring"].ms <= 100.0
    assert "rows in PostgreSQL (token fetch" in stages["scoring"].note, notices  # PL/Python's figures
    assert timings.server_timing().startswith("ann;dur=")


@pytest.mark.slow  # starts its own PostgreSQL, to restart it
def test_a_kept_connection_that_a_restart_closed_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from pgserver import LocalPostgres

    from pgmaxsim.web import db as webdb

    server = LocalPostgres().start()
    database = webdb.Database(server.dsn())
    try:
        server.wait_ready()
        with database.transaction() as conn:
            before = conn.info.backend_pid
        server.restart()
        monkeypatch.setattr(webdb, "CHECK_AFTER_IDLE_S", 0.0)  # as if it had been idle a while
        with database.transaction() as conn:  # no 503: the dead one was checked and replaced
            assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] != before
    finally:
        database.close()
        server.stop()
