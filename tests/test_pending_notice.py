"""Rows still queued for the worker are not searched: maxsim.search says how many and what to run,
Index.search turns that into a warning; encode_query without plpython3u says what to run."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pgmaxsim
import psycopg
import pytest
from pgmaxsim.db.adapters import Tokens
from pgmaxsim.search import PendingRowsWarning

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_search_says_how_many_rows_are_queued(db: psycopg.Connection[Any]) -> None:
    c = db
    c.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
    c.execute("INSERT INTO docs SELECT g, 'text ' || g FROM generate_series(1, 5) g")
    c.execute("SELECT maxsim.create_index('docs', 'docs', 'id', text_column => 'body', model => %s)", (MODEL,))
    rng = np.random.default_rng(0)
    idx = pgmaxsim.Index(c, "docs")
    idx.upsert([1, 2], [unit(rng.standard_normal((4, 384))), unit(rng.standard_normal((3, 384)))])
    notices: list[str] = []
    c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    q = unit(rng.standard_normal((2, 384)))
    rows = c.execute("SELECT id FROM maxsim.search('docs', %s, 10)", (Tokens(q),)).fetchall()
    assert sorted(r[0] for r in rows) == ["1", "2"]
    said = [n for n in notices if "queued" in n]
    assert len(said) == 1 and 'index "docs" has 3 queued rows not embedded yet' in said[0], notices
    assert "pgmaxsim worker --once" in said[0]

    with pytest.warns(PendingRowsWarning, match="3 queued rows not embedded yet"):
        hits = idx.search(q, k=10)
    assert len(hits) == 2

    # embedded rows that are queued again (an update) are searched: only missing ones count
    idx.upsert([3, 4, 5], [unit(rng.standard_normal((2, 384))) for _ in range(3)])
    c.execute("UPDATE docs SET body = body || '!' WHERE id = 1")
    notices.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", PendingRowsWarning)
        assert len(idx.search(q, k=10)) == 5
    assert not [n for n in notices if "queued" in n], notices


def test_encode_query_without_plpython_names_the_command(embedded_dsn: str) -> None:
    with psycopg.connect(embedded_dsn, autocommit=True) as c:
        c.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        c.execute("SELECT maxsim.create_index('notes', 'notes', 'id', text_column => 'body')")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as info:
            c.execute("SELECT maxsim.encode_query('notes', 'tides and the moon')")
        hint = info.value.diag.message_hint or ""
        assert "pgmaxsim search 'tides and the moon' --index notes --cache" in hint, hint
        assert "cache_query" in hint, hint
