"""The SQL surface of revision 0002 on real servers: PostgreSQL 15 with PL/Python (NumPy path)
and the embedded PostgreSQL 18 without it (pure-SQL path). Every result is checked against a
float64 NumPy reference of the fp16 values stored."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest
from pgmaxsim.db.adapters import Tokens, register_tokens
from pgmaxsim.kernels.reference import maxsim_reference

DIM = 16


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def ref_maxsim(doc: np.ndarray, query: np.ndarray) -> float:
    """The float64 reference on the fp16 values the database stores."""
    return maxsim_reference(np.asarray(query, dtype=np.float16), np.asarray(doc, dtype=np.float16))


def ref_top(docs: dict[Any, np.ndarray], query: np.ndarray, k: int) -> list[tuple[Any, float]]:
    scored = sorted(((ref_maxsim(d, query), key) for key, d in docs.items()), key=lambda t: -t[0])
    return [(key, s) for s, key in scored[:k]]


def clustered_docs(n: int, rng: np.random.Generator, dim: int = DIM) -> list[np.ndarray]:
    """Rows whose tokens come from a few topics each (so the ANN prefilter has structure)."""
    topics = unit(rng.standard_normal((max(4, n // 3), dim)))
    docs = []
    for _ in range(n):
        picks = rng.choice(len(topics), size=3, replace=False)
        m = int(rng.integers(8, 40))
        docs.append(unit(topics[picks[rng.integers(0, 3, m)]] + 0.15 * rng.standard_normal((m, dim))))
    return docs


@pytest.fixture(params=["plpython", "sql"])
def db(request: pytest.FixtureRequest) -> Iterator[psycopg.Connection[Any]]:
    """A migrated database on PG15 + PL/Python, or on the embedded PG18 (pure-SQL scoring)."""
    dsn = request.getfixturevalue("dsn" if request.param == "plpython" else "embedded_dsn")
    with psycopg.connect(dsn, autocommit=True) as c:
        register_tokens(c)
        has_py = c.execute("SELECT maxsim.has_plpython()").fetchone()[0]
        assert has_py == (request.param == "plpython")
        yield c


def make_index(conn: psycopg.Connection[Any], n: int, *, key: str = "bigint", pooling: str = "centroids",
               seed: int = 0, name: str = "docs_idx") -> tuple[dict[Any, np.ndarray], list[Any]]:
    rng = np.random.default_rng(seed)
    if key == "uuid":
        keys: list[Any] = [uuid.UUID(int=int(rng.integers(1, 2**62))) for _ in range(n)]
    elif key == "text":
        keys = [f"doc '{i}\" x" for i in range(n)]  # quotes and spaces in keys
    else:
        keys = list(range(1, n + 1))
    conn.execute(f"CREATE TABLE docs (id {key} PRIMARY KEY, body text)")
    conn.execute(f"INSERT INTO docs (id) SELECT unnest(%s::{key}[])", ([str(k) for k in keys],))
    conn.execute("SELECT maxsim.create_index(%s, 'docs', 'id', dim => %s, options => %s::jsonb)",
                 (name, DIM, f'{{"pooling": "{pooling}"}}'))
    docs = dict(zip(keys, clustered_docs(n, rng)))
    for k_, d in docs.items():
        conn.execute(f"SELECT maxsim.upsert(%s, %s::{key}, %s)", (name, str(k_), Tokens(d)))
    return docs, keys


def search(conn: psycopg.Connection[Any], q: np.ndarray, k: int = 10, candidates: int | None = None,
           name: str = "docs_idx") -> list[tuple[str, float]]:
    return conn.execute("SELECT id, score FROM maxsim.search(%s, %s, %s, %s)",
                        (name, Tokens(q), k, candidates)).fetchall()


def test_scalar_maxsim_equals_reference(db: psycopg.Connection[Any]) -> None:
    rng = np.random.default_rng(1)
    for n_doc, n_q in [(1, 1), (7, 3), (50, 24)]:
        doc = unit(rng.standard_normal((n_doc, DIM)))
        q = unit(rng.standard_normal((n_q, DIM)))
        got = db.execute("SELECT maxsim.maxsim(%s, %s)", (Tokens(doc), Tokens(q))).fetchone()[0]
        assert got == pytest.approx(ref_maxsim(doc, q), rel=1e-5, abs=1e-4)
    # negative similarities: the max is not clipped at 0 (no padding artefacts)
    doc = -np.eye(DIM, dtype=np.float32)[:2]
    q = np.eye(DIM, dtype=np.float32)[:1]
    assert db.execute("SELECT maxsim.maxsim(%s, %s)", (Tokens(doc), Tokens(q))).fetchone()[0] == pytest.approx(0.0)
    q2 = np.eye(DIM, dtype=np.float32)[:1]
    doc2 = np.stack([-q2[0], -q2[0] * 0.5])
    assert db.execute("SELECT maxsim.maxsim(%s, %s)", (Tokens(doc2), Tokens(q2))).fetchone()[0] == pytest.approx(-0.5)


@pytest.mark.parametrize("pooling", ["centroids", "mean"])
def test_exact_search_is_the_reference_top_k(db: psycopg.Connection[Any], pooling: str) -> None:
    docs, _keys = make_index(db, 40, pooling=pooling)
    rng = np.random.default_rng(7)
    for _ in range(3):
        q = unit(rng.standard_normal((5, DIM)))
        ref = ref_top(docs, q, 10)
        got = search(db, q, 10, candidates=40)
        assert [int(i) for i, _ in got] == [key for key, _ in ref]
        assert [s for _, s in got] == pytest.approx([s for _, s in ref], rel=1e-5, abs=1e-4)
    # k larger than the index: every row, still ordered
    got = search(db, q, 100, candidates=1000)
    assert len(got) == 40 and [s for _, s in got] == sorted((s for _, s in got), reverse=True)


@pytest.mark.parametrize("pooling", ["centroids", "mean"])
def test_ann_search_scores_are_exact_and_find_the_target(db: psycopg.Connection[Any], pooling: str) -> None:
    docs, keys = make_index(db, 60, pooling=pooling)
    rng = np.random.default_rng(3)
    hits = 0
    for target in keys[:10]:
        d = docs[target]
        q = unit(d[rng.choice(len(d), size=4, replace=False)] + 0.05 * rng.standard_normal((4, DIM)))
        got = search(db, q, 5, candidates=8)
        assert len(got) == 5
        for i, s in got:  # whatever the prefilter picked is scored exactly
            assert s == pytest.approx(ref_maxsim(docs[int(i)], q), rel=1e-5, abs=1e-4)
        hits += int(got[0][0]) == ref_top(docs, q, 1)[0][0]
    assert hits >= 9


@pytest.mark.parametrize("key", ["integer", "bigint", "uuid", "text"])
def test_every_key_type_round_trips_and_joins(db: psycopg.Connection[Any], key: str) -> None:
    docs, keys = make_index(db, 12, key=key)
    q = docs[keys[4]][:3]
    got = search(db, q, 3, candidates=100)
    assert got[0][0] == str(keys[4])
    # the documented join: cast the text id to the key's type
    joined = db.execute(
        f"SELECT d.id, s.score FROM maxsim.search('docs_idx', %s, 3, 100) s JOIN docs d ON d.id = s.id::{key}"
        " ORDER BY s.score DESC", (Tokens(q),)).fetchall()
    assert joined[0][0] == keys[4]
    # rerank returns the caller's type
    rows = db.execute(f"SELECT id, score FROM maxsim.rerank('docs_idx', %s, %s::{key}[])",
                      (Tokens(q), [str(k) for k in keys[:5]])).fetchall()
    assert rows[0][0] == keys[4] and {r[0] for r in rows} == set(keys[:5])
    for k_, s in rows:
        assert s == pytest.approx(ref_maxsim(docs[k_], q), rel=1e-5, abs=1e-4)


def test_rerank_a_filtered_id_set(db: psycopg.Connection[Any]) -> None:
    docs, _keys = make_index(db, 30)
    db.execute("UPDATE docs SET body = CASE WHEN id % 3 = 0 THEN 'finance report' ELSE 'other' END")
    q = docs[7][:4]  # id 7 is not in the filtered set
    rows = db.execute(
        "SELECT r.id, r.score FROM maxsim.rerank('docs_idx', %s,"
        " (SELECT array_agg(id) FROM docs WHERE body LIKE 'finance%%'), 4) r", (Tokens(q),)).fetchall()
    filtered = {k: d for k, d in docs.items() if k % 3 == 0}
    ref = ref_top(filtered, q, 4)
    assert [r[0] for r in rows] == [k for k, _ in ref]
    assert [r[1] for r in rows] == pytest.approx([s for _, s in ref], rel=1e-5, abs=1e-4)
    # ids not in the index, NULLs and duplicates are ignored
    rows = db.execute("SELECT id FROM maxsim.rerank('docs_idx', %s, ARRAY[3, 3, NULL, 99999]::bigint[])",
                      (Tokens(q),)).fetchall()
    assert rows == [(3,)]
    assert db.execute("SELECT count(*) FROM maxsim.rerank('docs_idx', %s, '{}'::bigint[])",
                      (Tokens(q),)).fetchone()[0] == 0


def test_deletes_updates_and_truncate_are_reflected(db: psycopg.Connection[Any]) -> None:
    docs, _keys = make_index(db, 20)
    q = docs[5][:3]
    assert search(db, q, 1, 100)[0][0] == "5"
    db.execute("DELETE FROM docs WHERE id = 5")
    got = search(db, q, 20, 100)
    assert "5" not in {i for i, _ in got} and len(got) == 19
    # an update of the embeddings is seen by the next search
    db.execute("SELECT maxsim.upsert('docs_idx', 6::bigint, %s)", (Tokens(q),))
    top = search(db, q, 1, 100)[0]
    assert top[0] == "6" and top[1] == pytest.approx(ref_maxsim(q, q), rel=1e-5, abs=1e-4)
    # a primary-key change removes the old key's embeddings (the application re-upserts)
    db.execute("UPDATE docs SET id = 1006 WHERE id = 6")
    assert "6" not in {i for i, _ in search(db, q, 20, 100)}
    # maxsim.delete, then TRUNCATE of the source empties the index
    assert db.execute("SELECT maxsim.delete('docs_idx', ARRAY[1, 2, 424242]::bigint[])").fetchone()[0] == 2
    db.execute("TRUNCATE docs")
    assert search(db, q, 10, 100) == []
    assert db.execute("SELECT rows FROM maxsim.index_info('docs_idx')").fetchone()[0] == 0


def test_change_log_and_versions(db: psycopg.Connection[Any]) -> None:
    docs, _keys = make_index(db, 3)
    tok = db.execute("SELECT token_table FROM maxsim.indexes WHERE name = 'docs_idx'").fetchone()[0]
    v1 = dict(db.execute(f"SELECT id, version FROM maxsim.{tok}").fetchall())
    listener = psycopg.connect(db.info.dsn, autocommit=True)
    try:
        listener.execute("LISTEN maxsim_changes")
        db.execute("SELECT maxsim.upsert('docs_idx', 2::bigint, %s)", (Tokens(docs[1]),))
        v2 = dict(db.execute(f"SELECT id, version FROM maxsim.{tok}").fetchall())
        assert v2[2] > max(v1.values()) and v2[1] == v1[1]
        db.execute("DELETE FROM docs WHERE id = 3")
        db.execute(f"TRUNCATE maxsim.{tok} CASCADE")
        notes = list(listener.notifies(timeout=2, stop_after=1))
        assert notes and notes[0].channel == "maxsim_changes"
    finally:
        listener.close()
    log = db.execute("SELECT row_id, version, deleted FROM maxsim.changes ORDER BY seq").fetchall()
    assert log[:3] == [(str(k), v1[k], False) for k in (1, 2, 3)]
    assert ("2", v2[2], False) in log and ("3", v1[3], True) in log and log[-1] == (None, None, True)
    n = db.execute("SELECT max(seq) FROM maxsim.changes").fetchone()[0]
    assert db.execute("SELECT maxsim.prune_changes(%s)", (n - 1,)).fetchone()[0] == len(log) - 1
    assert db.execute("SELECT count(*) FROM maxsim.changes").fetchone()[0] == 1


def test_model_index_queues_changes_and_backfills(db: psycopg.Connection[Any]) -> None:
    db.execute("CREATE TABLE notes (nid integer PRIMARY KEY, body text, tag text)")
    db.execute("INSERT INTO notes SELECT g, 'text ' || g, 't' FROM generate_series(1, 5) g")
    db.execute("SELECT maxsim.create_index('notes_idx', 'notes', 'nid', text_column => 'body',"
               " model => 'sentence-transformers/all-MiniLM-L6-v2')")
    info = db.execute("SELECT id, dim, model, pooling FROM maxsim.indexes WHERE name = 'notes_idx'").fetchone()
    assert info[1:] == (384, "sentence-transformers/all-MiniLM-L6-v2", "codebook")

    def queued() -> list[str]:
        return [r[0] for r in db.execute("SELECT row_id FROM maxsim.queue WHERE index_id = %s ORDER BY qid",
                                         (info[0],))]

    assert queued() == ["1", "2", "3", "4", "5"]  # backfill
    db.execute("DELETE FROM maxsim.queue")
    db.execute("INSERT INTO notes VALUES (6, 'new', 't')")
    db.execute("UPDATE notes SET tag = 'x' WHERE nid = 1")  # not an indexed column
    db.execute("UPDATE notes SET body = 'changed' WHERE nid = 2")
    db.execute("UPDATE notes SET body = body WHERE nid = 3")  # unchanged value
    db.execute("UPDATE notes SET nid = 70 WHERE nid = 4")  # key change: old removed, new queued
    assert queued() == ["6", "2", "70"]
    db.execute("SELECT maxsim.drop_index('notes_idx')")
    db.execute("INSERT INTO notes VALUES (8, 'after drop', 't')")  # triggers are gone
    assert db.execute("SELECT count(*) FROM maxsim.queue").fetchone()[0] == 0


def test_drop_index_removes_everything(db: psycopg.Connection[Any]) -> None:
    make_index(db, 3)
    before = db.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'docs'::regclass AND NOT tgisinternal"
                        ).fetchone()[0]
    assert before == 3  # update, delete, truncate (no model: nothing to queue on insert)
    db.execute("SELECT maxsim.drop_index('docs_idx')")
    assert db.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'docs'::regclass AND NOT tgisinternal"
                      ).fetchone()[0] == 0
    left = db.execute("SELECT relname FROM pg_class WHERE relnamespace = 'maxsim'::regnamespace"
                      " AND relname ~ '^(tok|cen)_'").fetchall()
    assert left == []
    assert db.execute("SELECT count(*) FROM pg_proc WHERE pronamespace = 'maxsim'::regnamespace"
                      " AND proname ~ '^src_'").fetchone()[0] == 0
    db.execute("DELETE FROM docs")  # the source table still works


def test_downgrade_with_live_indexes_leaves_what_0001_left(dsn: str) -> None:
    from pgmaxsim.db import migrate

    with psycopg.connect(dsn, autocommit=True) as c:
        register_tokens(c)
        make_index(c, 3)
    migrate.downgrade(dsn, "0001")
    with psycopg.connect(dsn, autocommit=True) as c:
        rels = {r[0] for r in c.execute("SELECT relname FROM pg_class WHERE relnamespace = 'maxsim'::regnamespace"
                                        " AND relkind IN ('r', 'p')")}
        assert rels == {"meta", "indexes", "queue", "failed", "workers", "alembic_version"}
        fns = {r[0] for r in c.execute("SELECT proname FROM pg_proc WHERE pronamespace = 'maxsim'::regnamespace")}
        assert fns == {"has_plpython", "version"}
        assert c.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'docs'::regclass AND NOT tgisinternal"
                         ).fetchone()[0] == 0
        c.execute("INSERT INTO docs VALUES (100, 'still a plain table')")
    migrate.upgrade(dsn)


def test_large_dims_beyond_hnsw_limit(db: psycopg.Connection[Any]) -> None:
    """dims up to 16000 work; above pgvector's 4000-dim HNSW limit the prefilter is a flat scan."""
    db.execute("CREATE TABLE big (id int PRIMARY KEY)")
    db.execute("INSERT INTO big SELECT generate_series(1, 4)")
    rng = np.random.default_rng(0)
    for dim, pooling in ((3072, "centroids"), (4096, "mean")):
        name = f"big_{dim}"
        db.execute("SELECT maxsim.create_index(%s, 'big', 'id', dim => %s, options => %s::jsonb)",
                   (name, dim, f'{{"pooling": "{pooling}"}}'))
        docs = {i: unit(rng.standard_normal((3, dim))) for i in range(1, 5)}
        for i, d in docs.items():
            db.execute("SELECT maxsim.upsert(%s, %s, %s)", (name, i, Tokens(d)))
        q = docs[3][:1]
        got = search(db, q, 2, candidates=2, name=name)
        assert got[0][0] == "3"
        assert got[0][1] == pytest.approx(ref_maxsim(docs[3], q), rel=1e-4, abs=1e-3)
        hnsw = db.execute("SELECT count(*) FROM pg_indexes WHERE schemaname = 'maxsim' AND indexdef ~ 'hnsw'"
                          " AND tablename IN (SELECT token_table FROM maxsim.indexes WHERE name = %s"
                          " UNION SELECT 'cen_' || id FROM maxsim.indexes WHERE name = %s)", (name, name)).fetchone()[0]
        assert hnsw == (1 if dim <= 4000 else 0)
