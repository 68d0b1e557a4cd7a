"""pgmaxsim.Index and pgmaxsim.writes on a real PostgreSQL 15 (PL/Python path) and the
embedded PostgreSQL 18 (pure-SQL path): bulk binary-COPY upserts, idempotence, search,
rerank, deletes, key types, and concurrency."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest
from pgmaxsim import Index, PgmaxsimError, registry, writes
from pgmaxsim.kernels.reference import maxsim_reference

DIM = 24


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def ref_maxsim(doc: np.ndarray, query: np.ndarray) -> float:
    """The float64 reference on the fp16 values the database stores."""
    return maxsim_reference(np.asarray(query, dtype=np.float16), np.asarray(doc, dtype=np.float16))


def ref_top(docs: dict[Any, np.ndarray], q: np.ndarray, k: int) -> list[Any]:
    return [key for key, _ in sorted(docs.items(), key=lambda kv: -ref_maxsim(kv[1], q))[:k]]


def corpus(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    topics = unit(rng.standard_normal((max(4, n // 4), DIM)))
    out = []
    for _ in range(n):
        m = int(rng.integers(10, 60))
        picks = rng.choice(len(topics), size=3, replace=False)
        out.append(unit(topics[picks[rng.integers(0, 3, m)]] + 0.2 * rng.standard_normal((m, DIM))))
    return out


@pytest.fixture(params=["plpython", "sql"])
def any_dsn(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("dsn" if request.param == "plpython" else "embedded_dsn")


@pytest.fixture
def conn_any(any_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(any_dsn, autocommit=True) as c:
        yield c


def new_index(conn: psycopg.Connection[Any], key: str = "bigint", pooling: str = "centroids",
              keys: list[Any] | None = None, name: str = "pages") -> Index:
    conn.execute(f"CREATE TABLE src (id {key} PRIMARY KEY)")
    if keys:
        conn.execute(f"INSERT INTO src SELECT unnest(%s::{key}[])", ([str(k) for k in keys],))
    return Index.create(conn, name, "src", "id", dim=DIM, pooling=pooling)


@pytest.mark.parametrize("pooling", ["centroids", "mean"])
def test_bulk_upsert_search_rerank_delete(conn_any: psycopg.Connection[Any], pooling: str) -> None:
    ids = list(range(1, 121))
    docs = dict(zip(ids, corpus(120)))
    idx = new_index(conn_any, pooling=pooling, keys=ids)
    assert idx.upsert(ids, list(docs.values())) == 120
    assert len(idx) == 120
    rng = np.random.default_rng(5)
    for target in (3, 50, 117):
        d = docs[target]
        q = unit(d[rng.choice(len(d), size=6, replace=False)] + 0.05 * rng.standard_normal((6, DIM)))
        exact = idx.search(q, k=5, candidates=1000)
        assert [i for i, _ in exact] == ref_top(docs, q, 5)
        for i, s in exact:
            assert s == pytest.approx(ref_maxsim(docs[i], q), rel=1e-5, abs=1e-4)
        approx = idx.search(q, k=3)  # default candidates (64 of 120 rows)
        assert approx[0][0] == exact[0][0]
        rr = idx.rerank(q, [1, 2, target, 9999], k=2)
        assert rr[0][0] == target and len(rr) == 2
    assert idx.delete([1, 2, 3, 424242]) == 3
    assert len(idx) == 117
    assert 3 not in {i for i, _ in idx.search(docs[3][:4], k=120, candidates=1000)}


def test_upsert_is_idempotent_and_replaces(conn_any: psycopg.Connection[Any]) -> None:
    docs = corpus(20, seed=2)
    idx = new_index(conn_any, keys=list(range(20)))
    idx.upsert(list(range(20)), docs)
    tok = idx.info.token_table
    v1 = dict(conn_any.execute(f"SELECT id, version FROM maxsim.{tok}").fetchall())
    cen1 = conn_any.execute(f"SELECT count(*) FROM maxsim.cen_{idx.info.id}").fetchone()[0]
    idx.upsert(list(range(20)), docs)  # same rows again: one copy of each, new versions
    v2 = dict(conn_any.execute(f"SELECT id, version FROM maxsim.{tok}").fetchall())
    assert set(v2) == set(range(20)) and all(v2[i] > v1[i] for i in v2)
    assert conn_any.execute(f"SELECT count(*) FROM maxsim.cen_{idx.info.id}").fetchone()[0] == cen1
    # replace one row with different embeddings (and a key given twice keeps the last)
    new = unit(np.random.default_rng(9).standard_normal((7, DIM)))
    idx.upsert([4, 4], [docs[0], new], model="m", model_revision="r1", content_hashes=[b"a", b"b"])
    row = conn_any.execute(f"SELECT n_tokens, model, model_revision, content_hash FROM maxsim.{tok} WHERE id = 4"
                           ).fetchone()
    assert row == (7, "m", "r1", b"b")
    assert idx.rerank(new, [4])[0][1] == pytest.approx(ref_maxsim(new, new), rel=1e-5, abs=1e-4)


@pytest.mark.parametrize("key", ["integer", "bigint", "uuid", "text", "character varying(40)"])
def test_key_types_through_the_python_api(conn: psycopg.Connection[Any], key: str) -> None:
    rng = np.random.default_rng(3)
    if key == "uuid":
        keys: list[Any] = [uuid.UUID(int=int(rng.integers(1, 2**62))) for _ in range(15)]
    elif key in ("integer", "bigint"):
        keys = [int(x) for x in rng.choice(2**30, size=15, replace=False)]
    else:
        keys = [f"page {i} 'q' \"dq\" ;--" for i in range(15)]
    docs = dict(zip(keys, corpus(15, seed=4)))
    idx = new_index(conn, key=key, keys=keys)
    idx.upsert(list(docs), list(docs.values()))
    q = docs[keys[7]][:5]
    got = idx.search(q, k=3, candidates=100)
    assert got[0][0] == keys[7] and type(got[0][0]) is type(keys[7])
    assert idx.rerank(q, keys[5:9])[0][0] == keys[7]


def test_storage_writer_directly(conn: psycopg.Connection[Any]) -> None:
    """The worker's entry point: get_index + write_rows inside the caller's transaction."""
    idx = new_index(conn, keys=list(range(10)))
    info = registry.get_index(conn, "pages")
    assert (info.dim, info.pooling, info.id_type, info.centroid_table) == (DIM, "centroids", "bigint", f"cen_{info.id}")
    docs = corpus(10, seed=6)
    with conn.transaction():
        assert writes.write_rows(conn, info, list(range(5)), docs[:5], model="x") == 5
        conn.execute("INSERT INTO maxsim.queue (index_id, row_id) VALUES (%s, 'marker')", (info.id,))
    try:
        with conn.transaction():
            writes.write_rows(conn, info, list(range(5, 10)), docs[5:])
            raise RuntimeError("rolled back")
    except RuntimeError:
        pass
    assert len(idx) == 5
    with pytest.raises(PgmaxsimError, match='index "nope" does not exist'):
        registry.get_index(conn, "nope")


def test_concurrent_searches_from_8_connections(dsn: str) -> None:
    ids = list(range(1, 81))
    docs = dict(zip(ids, corpus(80, seed=8)))
    with psycopg.connect(dsn, autocommit=True) as c:
        new_index(c, keys=ids).upsert(ids, list(docs.values()))
    rng = np.random.default_rng(1)
    queries = [unit(docs[t][:5] + 0.05 * rng.standard_normal((5, DIM))) for t in (4, 20, 33, 61, 79)]
    expected = [ref_top(docs, q, 5) for q in queries]
    errors: list[BaseException] = []
    results: list[bool] = []

    def worker(seed: int) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                idx = Index(c, "pages")
                for j in range(6):
                    qi = (seed + j) % len(queries)
                    got = [i for i, _ in idx.search(queries[qi], k=5, candidates=100)]
                    results.append(got == expected[qi])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 48 and all(results)


def test_concurrent_writers_of_the_same_rows(dsn: str) -> None:
    """Writers racing on overlapping new rows queue on the per-row lock: no duplicate-key error."""
    with psycopg.connect(dsn, autocommit=True) as c:
        new_index(c, keys=list(range(40)))
    docs = corpus(40, seed=10)
    errors: list[BaseException] = []

    def writer(order: list[int]) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                idx = Index(c, "pages")
                for _ in range(3):
                    idx.upsert(order, [docs[i] for i in order])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    orders = [list(range(40)), list(reversed(range(40))), list(range(0, 40, 2)) + list(range(1, 40, 2)),
              list(range(20, 40)) + list(range(20))]
    threads = [threading.Thread(target=writer, args=(o,)) for o in orders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with psycopg.connect(dsn, autocommit=True) as c:
        idx = Index(c, "pages")
        assert len(idx) == 40
        n_cen = c.execute(f"SELECT count(DISTINCT row_id) FROM maxsim.cen_{idx.info.id}").fetchone()[0]
        assert n_cen == 40


def test_row_lock_key_is_the_sql_expression(conn: psycopg.Connection[Any]) -> None:
    """writes.row_lock_key equals the SQL expression in its docstring (what maxsim._upsert locks)."""
    rows = [(1, "42"), (7, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), (123456, "ünïcode key"), (2, "")]
    got = conn.execute(
        "SELECT ('x' || pg_catalog.left(pg_catalog.md5('pgmaxsim/' || i::text || '/' || r), 16))::bit(64)::bigint"
        " FROM unnest(%s::int[], %s::text[]) WITH ORDINALITY AS u(i, r, o) ORDER BY o",
        ([i for i, _ in rows], [r for _, r in rows])).fetchall()
    assert [g[0] for g in got] == [writes.row_lock_key(i, r) for i, r in rows]
