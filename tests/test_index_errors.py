"""Bad input gives one clear error and never crashes the backend, on both scoring paths;
identifiers with quotes, spaces and SQL in them are quoted everywhere (injection test)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest
from pgmaxsim import Index, PgmaxsimError
from pgmaxsim.db.adapters import Tokens, register_tokens

DIM = 8


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(params=["plpython", "sql"])
def db(request: pytest.FixtureRequest) -> Iterator[psycopg.Connection[Any]]:
    dsn = request.getfixturevalue("dsn" if request.param == "plpython" else "embedded_dsn")
    with psycopg.connect(dsn, autocommit=True) as c:
        register_tokens(c)
        started = c.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
        yield c
        # the backend survived everything and the server never restarted
        assert c.execute("SELECT pg_postmaster_start_time()").fetchone()[0] == started


@pytest.fixture
def indexed(db: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    db.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
    db.execute("INSERT INTO docs SELECT g, 'b' FROM generate_series(1, 6) g")
    db.execute("SELECT maxsim.create_index('idx', 'docs', 'id', dim => %s)", (DIM,))
    rng = np.random.default_rng(0)
    for i in range(1, 7):
        db.execute("SELECT maxsim.upsert('idx', %s::bigint, %s)", (i, Tokens(unit(rng.standard_normal((5, DIM))))))
    return db


def fails(conn: psycopg.Connection[Any], sql: str, params: Any, *needles: str) -> str:
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    msg = str(info.value).splitlines()[0]
    assert not isinstance(info.value, psycopg.OperationalError), msg  # not a lost connection
    for needle in needles:
        assert needle in msg, msg
    return msg


Q = unit(np.random.default_rng(1).standard_normal((3, DIM)))


def test_unknown_index(indexed: psycopg.Connection[Any]) -> None:
    for sql in ("SELECT * FROM maxsim.search('nope', %s)", "SELECT * FROM maxsim.rerank('nope', %s, ARRAY[1])",
                "SELECT maxsim.upsert('nope', 1, %s)"):
        fails(indexed, sql, (Tokens(Q),), 'index "nope" does not exist')
    fails(indexed, "SELECT maxsim.drop_index('nope')", None, 'index "nope" does not exist')
    fails(indexed, "SELECT * FROM maxsim.index_info('nope')", None, 'index "nope" does not exist')


def test_bad_queries(indexed: psycopg.Connection[Any]) -> None:
    c = indexed
    wrong = unit(np.ones((2, DIM + 1)))
    fails(c, "SELECT * FROM maxsim.search('idx', %s)", (Tokens(wrong),), "query vectors have 9 dimensions", "has 8")
    fails(c, "SELECT * FROM maxsim.rerank('idx', %s, ARRAY[1])", (Tokens(wrong),), "9 dimensions")
    fails(c, "SELECT * FROM maxsim.search('idx', '{}'::halfvec[])", None, "query is empty")
    fails(c, "SELECT * FROM maxsim.search('idx', NULL::halfvec[])", None, "query is NULL")
    fails(c, "SELECT * FROM maxsim.search('idx', ARRAY[NULL, %s::halfvec])", ("[" + ",".join(["0.1"] * DIM) + "]",),
          "NULL token vectors")
    fails(c, "SELECT * FROM maxsim.search('idx', ARRAY[%s::halfvec])", ("[" + ",".join(["NaN"] * DIM) + "]",),
          "NaN not allowed")
    fails(c, "SELECT * FROM maxsim.search('idx', ARRAY[ARRAY[%s::halfvec]])",
          ("[" + ",".join(["0.1"] * DIM) + "]",), "one-dimensional")
    for k in (0, -3):
        fails(c, "SELECT * FROM maxsim.search('idx', %s, %s)", (Tokens(Q), k), "k must be positive")
        fails(c, "SELECT * FROM maxsim.rerank('idx', %s, ARRAY[1], %s)", (Tokens(Q), k), "k must be positive")
    fails(c, "SELECT * FROM maxsim.search('idx', %s, NULL)", (Tokens(Q),), "k is NULL")
    fails(c, "SELECT * FROM maxsim.search('idx', %s, 5, 0)", (Tokens(Q),), "candidates must be positive")
    fails(c, "SELECT maxsim.maxsim(%s, %s)", (Tokens(Q), Tokens(wrong)), "dimensions")
    fails(c, "SELECT maxsim.maxsim(%s, '{}'::halfvec[])", (Tokens(Q),), "query is empty")
    # ids of the wrong type for the key are a clear cast error, ids not in the index are ignored
    fails(c, "SELECT * FROM maxsim.rerank('idx', %s, ARRAY['x1'])", (Tokens(Q),), "invalid input syntax for type bigint")
    assert c.execute("SELECT count(*) FROM maxsim.rerank('idx', %s, ARRAY[77, 78]::bigint[])",
                     (Tokens(Q),)).fetchone()[0] == 0


def test_bad_upserts(indexed: psycopg.Connection[Any]) -> None:
    c = indexed
    fails(c, "SELECT maxsim.upsert('idx', 1::bigint, %s)", (Tokens(unit(np.ones((2, 4)))),), "token vectors have 4")
    fails(c, "SELECT maxsim.upsert('idx', 1::bigint, '{}'::halfvec[])", None, "tokens are empty (it needs")
    fails(c, "SELECT maxsim.upsert('idx', 1::bigint, NULL::halfvec[])", None, "tokens are NULL")
    fails(c, "SELECT maxsim.upsert('idx', NULL::bigint, %s)", (Tokens(Q),), "id is NULL")
    fails(c, "SELECT maxsim.upsert('idx', 'abc'::text, %s)", (Tokens(Q),), "invalid input syntax for type bigint")
    tok = c.execute("SELECT token_table FROM maxsim.indexes WHERE name = 'idx'").fetchone()[0]
    # stored bytes that do not hold n_tokens vectors of the tier are refused by the table
    fails(c, f"INSERT INTO maxsim.{tok} (id, tokens, n_tokens, n_raw_tokens) VALUES (99, '\\x0000', 1, 1)", None,
          "tokens_valid")
    fails(c, f"INSERT INTO maxsim.{tok} (id, tokens, n_tokens, n_raw_tokens) VALUES (99, '', 0, 0)", None,
          "n_tokens_valid")


def test_bad_create_index(db: psycopg.Connection[Any]) -> None:
    c = db
    c.execute("CREATE TABLE t (id bigint PRIMARY KEY, n numeric UNIQUE, plain int, body text)")
    ci = "SELECT maxsim.create_index(%s, %s, %s, dim => %s, options => %s::jsonb)"
    fails(c, ci, ("a", "t", "plain", 8, "{}"), "must be its primary key")
    fails(c, ci, ("a", "t", "n", 8, "{}"), "supported key types")
    fails(c, ci, ("a", "t", "missing", 8, "{}"), 'column "missing" does not exist')
    fails(c, ci, ("a", "nosuchtable", "id", 8, "{}"), "does not exist")
    fails(c, ci, ("a", "t", "id", None, "{}"), "dim is required")
    fails(c, ci, ("a", "t", "id", 0, "{}"), "dim must be between 1 and 16000")
    fails(c, ci, ("a", "t", "id", 20000, "{}"), "dim must be between 1 and 16000")
    fails(c, ci, ("a", "t", "id", 8, '{"pooling": "max"}'), "pooling must be")
    fails(c, ci, ("a", "t", "id", 8, '{"candidates": -1}'), "candidates must be an integer")
    fails(c, ci, ("a", "t", "id", 8, '{"candidates": "many"}'), "candidates must be an integer")
    fails(c, ci, ("a", "t", "id", 8, '{"bogus": 1}'), 'unknown option "bogus"')
    fails(c, ci, ("a", "t", "id", 8, "[1]"), "options must be a JSON object")
    fails(c, ci, ("", "t", "id", 8, "{}"), "index name must be 1 to 200 characters")
    fails(c, "SELECT maxsim.create_index('a', 't', 'id', model => 'some/model', dim => 8)", None,
          "needs text_column or image_column")
    fails(c, "SELECT maxsim.create_index('a', 't', 'id', text_column => 'body', model => 'unknown/model')", None,
          "dim is required", "unknown/model")
    c.execute(ci, ("a", "t", "id", 8, "{}"))
    fails(c, ci, ("a", "t", "id", 8, "{}"), 'index "a" already exists')
    assert c.execute("SELECT count(*) FROM maxsim.indexes").fetchone()[0] == 1


def test_create_index_default_model(db: psycopg.Connection[Any]) -> None:
    """A text index without model or dim gets the bundled MiniLM and says so; an image index
    without a model is refused with the model families that can embed images."""
    c = db
    c.execute("CREATE TABLE pages (id bigint PRIMARY KEY, body text, image bytea)")
    notices: list[str] = []
    c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    c.execute("SELECT maxsim.create_index('t', 'pages', 'id', text_column => 'body')")
    assert c.execute("SELECT model, dim FROM maxsim.index_info('t')").fetchone() == (
        "sentence-transformers/all-MiniLM-L6-v2", 384)
    assert any("default text model sentence-transformers/all-MiniLM-L6-v2" in n for n in notices), notices
    msg = fails(c, "SELECT maxsim.create_index('i', 'pages', 'id', image_column => 'image')", None,
                "needs a model", "ColQwen2.5", "ColPali", "vidore/colqwen2.5-v0.2")
    assert "dim is required" not in msg

def test_injection_through_identifiers(db: psycopg.Connection[Any]) -> None:
    c = db
    table = 'we"ird tab; DROP TABLE victim; --'
    idcol = 'key "col"; DROP TABLE victim'
    body = "body$b$ ); DROP TABLE victim; --"
    name = "idx'; DROP TABLE victim; --\""
    c.execute("CREATE TABLE victim (x int)")
    c.execute(f'CREATE TABLE "{table.replace(chr(34), chr(34) * 2)}" ("{idcol.replace(chr(34), chr(34) * 2)}"'
              f' text PRIMARY KEY, "{body}" text)')
    quoted = '"' + table.replace('"', '""') + '"'
    c.execute("SELECT maxsim.create_index(%s, %s::regclass, %s, text_column => %s, model => 'minilm',"
              " dim => 8)",
              (name, quoted, idcol, body))
    c.execute(f'INSERT INTO {quoted} VALUES (%s, %s)', ("k'1\"; --", "hello"))
    c.execute(f'UPDATE {quoted} SET "{body}" = %s', ("changed",))
    queued = [r[0] for r in c.execute("SELECT row_id FROM maxsim.queue ORDER BY qid")]
    assert queued == ["k'1\"; --", "k'1\"; --"]
    # the application-side path with the same hostile names
    c.execute("SELECT maxsim.upsert(%s, %s::text, %s)", (name, "k'1\"; --", Tokens(Q)))
    got = c.execute("SELECT id, score FROM maxsim.search(%s, %s, 5, 100)", (name, Tokens(Q))).fetchall()
    assert got[0][0] == "k'1\"; --"
    idx = Index(c, name)
    assert idx.search(Q, k=1)[0][0] == "k'1\"; --"
    c.execute(f"DELETE FROM {quoted}")
    assert len(idx) == 0
    c.execute("SELECT maxsim.drop_index(%s)", (name,))
    # nothing was executed from the names: the victim table is still there
    assert c.execute("SELECT to_regclass('victim') IS NOT NULL").fetchone()[0]
    fails(c, "SELECT * FROM maxsim.search(%s, %s)", ("x' OR '1'='1", Tokens(Q)), "does not exist")
    fails(c, "SELECT maxsim.create_index('z', %s, 'id', dim => 8)", ("victim; DROP TABLE victim",), "")
    assert c.execute("SELECT to_regclass('victim') IS NOT NULL").fetchone()[0]


def test_python_api_errors(indexed: psycopg.Connection[Any]) -> None:
    idx = Index(indexed, "idx")
    with pytest.raises(PgmaxsimError, match="9 dimensions"):
        idx.search(np.ones((2, 9)))
    with pytest.raises(PgmaxsimError, match="non-empty"):
        idx.search(np.ones((0, DIM)))
    with pytest.raises(PgmaxsimError, match="non-empty"):
        idx.search(np.ones(DIM))
    with pytest.raises(PgmaxsimError, match="NaN"):
        idx.search(np.full((2, DIM), np.nan))
    with pytest.raises(PgmaxsimError, match="array of token embeddings"):
        idx.search("a text query")
    with pytest.raises(PgmaxsimError, match="k must be positive"):
        idx.search(Q, k=0)
    with pytest.raises(PgmaxsimError, match="3 ids but 2 embeddings"):
        idx.upsert([1, 2, 3], [Q, Q])
    with pytest.raises(PgmaxsimError, match="has bigint keys"):
        idx.upsert(["abc"], [Q])
    with pytest.raises(PgmaxsimError, match="row 1: embeddings have 4 dimensions"):
        idx.upsert([1], [np.ones((2, 4))])
    with pytest.raises(PgmaxsimError, match="NaN"):
        idx.upsert([1], [np.full((2, DIM), np.inf)])
    with pytest.raises(PgmaxsimError, match="empty"):
        idx.upsert([1], [np.ones((0, DIM))])
    with pytest.raises(PgmaxsimError, match='index "nope" does not exist'):
        Index(indexed, "nope").search(Q)
    with pytest.raises(PgmaxsimError, match="already exists"):
        Index.create(indexed, "idx", "docs", "id", dim=DIM)
    assert idx.rerank(Q, [424242]) == []


def test_huge_candidate_budget_means_exact(indexed: psycopg.Connection[Any]) -> None:
    rows = indexed.execute("SELECT id FROM maxsim.search('idx', %s, 3, 2147483647)", (Tokens(Q),)).fetchall()
    assert len(rows) == 3
