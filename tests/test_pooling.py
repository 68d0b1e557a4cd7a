"""Pooling strategies (pgmaxsim.pooling) and their SQL twin (maxsim._pool) on both servers."""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg
import pytest
from pgmaxsim import pooling
from pgmaxsim.db.adapters import Tokens, register_tokens


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(rng: np.random.Generator, n_clusters: int, per: int, dim: int, noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    centers = unit(rng.standard_normal((n_clusters, dim)))
    tokens = unit(np.repeat(centers, per, axis=0) + noise * rng.standard_normal((n_clusters * per, dim)))
    return centers, tokens[rng.permutation(len(tokens))]


def test_mean_pool_is_the_normalised_mean() -> None:
    rng = np.random.default_rng(0)
    t = rng.standard_normal((30, 12)).astype(np.float32)
    m = pooling.mean_pool(t)
    assert m.dtype == np.float32 and m.shape == (12,)
    assert np.linalg.norm(m) == pytest.approx(1.0, abs=1e-6)
    assert np.allclose(m, t.mean(0) / np.linalg.norm(t.mean(0)), atol=1e-6)


@pytest.mark.parametrize(("n", "expected"), [(1, 1), (10, 1), (64, 1), (65, 2), (640, 10), (1000, 16), (5000, 16)])
def test_number_of_centroids(n: int, expected: int) -> None:
    assert pooling.n_centroids(n) == expected
    assert pooling.n_centroids(n, tokens_per_centroid=10, max_centroids=4) == min(4, max(1, -(-n // 10)))


def test_centroids_find_the_clusters_deterministically() -> None:
    rng = np.random.default_rng(1)
    centers, tokens = clustered(rng, 5, 40, 32)
    c1 = pooling.centroids(tokens, 5)
    c2 = pooling.centroids(tokens, 5)
    assert np.array_equal(c1, c2)
    assert c1.shape == (5, 32) and np.allclose(np.linalg.norm(c1, axis=1), 1.0, atol=1e-5)
    # every true cluster has a centroid on it
    assert (centers @ c1.T).max(axis=1).min() > 0.99
    # more centroids than tokens: one per token at most
    assert pooling.centroids(tokens[:3], 10).shape == (3, 32)


def test_pool_dispatch() -> None:
    t = unit(np.random.default_rng(2).standard_normal((100, 8)))
    pooled, cents = pooling.pool(t, "mean")
    assert cents is None and pooled.shape == (8,)
    pooled, cents = pooling.pool(t, "centroids", {"tokens_per_centroid": 25, "max_centroids": 16})
    assert cents is not None and cents.shape == (4, 8)
    with pytest.raises(ValueError, match="unknown pooling"):
        pooling.pool(t, "max")


def test_centroids_track_maxsim_better_than_the_mean() -> None:
    """A query about one topic of a multi-topic page: centroid interaction ranks the page by
    that topic; the mean vector dilutes it. Measured as recall of the exact top-1 in a
    3-row candidate list, over many queries."""
    rng = np.random.default_rng(3)
    dim, n_docs, n_topics = 32, 200, 60
    topics = unit(rng.standard_normal((n_topics, dim)))
    docs = []
    for _ in range(n_docs):
        picks = rng.choice(n_topics, size=6, replace=False)
        docs.append(unit(topics[picks[rng.integers(0, 6, 120)]] + 0.08 * rng.standard_normal((120, dim))))
    means = np.stack([pooling.mean_pool(d) for d in docs])
    cents = [pooling.centroids(d, pooling.n_centroids(len(d), 16)) for d in docs]
    hit_mean = hit_cent = 0
    for qi in range(60):
        target = docs[qi]
        q = unit(target[rng.integers(0, len(target), 4)] + 0.05 * rng.standard_normal((4, dim)))
        exact = np.array([(d @ q.T).max(0).sum() for d in docs])
        best = int(np.argmax(exact))
        by_mean = np.argsort(-(means @ pooling.mean_pool(q)))[:3]
        by_cent = np.argsort(-np.array([(c @ q.T).max(0).sum() for c in cents]))[:3]
        hit_mean += best in by_mean
        hit_cent += best in by_cent
    assert hit_cent >= 58 and hit_cent >= hit_mean + 8


@pytest.fixture(params=["plpython", "sql"])
def db(request: pytest.FixtureRequest) -> Any:
    dsn = request.getfixturevalue("dsn" if request.param == "plpython" else "embedded_dsn")
    with psycopg.connect(dsn, autocommit=True) as c:
        register_tokens(c)
        yield c


def test_sql_pool_matches_python(db: psycopg.Connection[Any]) -> None:
    rng = np.random.default_rng(4)
    _, tokens = clustered(rng, 4, 25, 16)
    tokens = tokens.astype(np.float16).astype(np.float32)
    got = db.execute("SELECT maxsim._pool(%s, 4)::text[]", (Tokens(tokens),)).fetchone()[0]
    vecs = np.array([[float(x) for x in v.strip("[]").split(",")] for v in got], dtype=np.float32)
    assert vecs.shape == (5, 16)
    assert np.allclose(vecs[0], pooling.mean_pool(tokens), atol=2e-3)
    ref = pooling.centroids(tokens, 4)
    assert np.allclose(vecs[1:], ref, atol=2e-3)
    only_mean = db.execute("SELECT cardinality(maxsim._pool(%s, 0))", (Tokens(tokens),)).fetchone()[0]
    assert only_mean == 1


def test_writer_stores_the_pooled_vectors(conn: psycopg.Connection[Any]) -> None:
    from pgmaxsim import Index

    register_tokens(conn)
    conn.execute("CREATE TABLE d (id int PRIMARY KEY)")
    conn.execute("INSERT INTO d VALUES (1)")
    idx = Index.create(conn, "d_idx", "d", "id", dim=16, tokens_per_centroid=10)
    _, tokens = clustered(np.random.default_rng(5), 3, 10, 16)
    idx.upsert([1], [tokens])
    stored = conn.execute(f"SELECT vec::text FROM maxsim.cen_{idx.info.id} ORDER BY c").fetchall()
    vecs = np.array([[float(x) for x in r[0].strip("[]").split(",")] for r in stored])
    ref = pooling.centroids(tokens.astype(np.float16).astype(np.float32), 3)
    assert np.allclose(vecs, ref, atol=2e-3)
    pooled = conn.execute(f"SELECT pooled::text FROM maxsim.{idx.info.token_table}").fetchone()[0]
    assert np.allclose([float(x) for x in pooled.strip("[]").split(",")],
                       pooling.mean_pool(tokens.astype(np.float16).astype(np.float32)), atol=2e-3)
