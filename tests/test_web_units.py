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
