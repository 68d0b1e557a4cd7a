"""Pooling strategies (pgmaxsim.pooling) and their SQL twin (maxsim._pool) on both servers."""

from __future__ import annotations

import contextlib
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
    idx = Index.create(conn, "d_idx", "d", "id", dim=16, first_stage="centroids", tokens_per_centroid=10)
    _, tokens = clustered(np.random.default_rng(5), 3, 10, 16)
    idx.upsert([1], [tokens])
    stored = conn.execute(f"SELECT vec::text FROM maxsim.cen_{idx.info.id} ORDER BY c").fetchall()
    vecs = np.array([[float(x) for x in r[0].strip("[]").split(",")] for r in stored])
    ref = pooling.centroids(tokens.astype(np.float16).astype(np.float32), 3)
    assert np.allclose(vecs, ref, atol=2e-3)
    pooled = conn.execute(f"SELECT pooled::text FROM maxsim.{idx.info.token_table}").fetchone()[0]
    assert np.allclose([float(x) for x in pooled.strip("[]").split(",")],
                       pooling.mean_pool(tokens.astype(np.float16).astype(np.float32)), atol=2e-3)


# --- token pooling at ingest (pool_factor) -------------------------------------------------

def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = set(zip(np.asarray(a).tolist(), np.asarray(b).tolist()))
    return len(pairs) == len(set(np.asarray(a).tolist())) == len(set(np.asarray(b).tolist()))


@pytest.mark.parametrize("use_scipy", [True, False])
@pytest.mark.parametrize(("n", "d", "factor"), [(2, 3, 2), (10, 4, 2), (57, 8, 3), (300, 16, 4), (1100, 128, 3)])
def test_token_clusters_equal_scipy_ward_on_cosine_distance_rows(n: int, d: int, factor: int,
                                                                 use_scipy: bool) -> None:
    hierarchy = pytest.importorskip("scipy.cluster.hierarchy")
    rng = np.random.default_rng(n)
    x = unit(rng.standard_normal((n, d)))
    k = pooling.pooled_count(n, factor)
    # colpali-engine's HierarchicalTokenPooler: linkage(1 - x x^T, metric="euclidean", method="ward")
    with pytest.warns() if n == 2 else contextlib.nullcontext():   # SciPy suspects a distance matrix; it is not
        z = hierarchy.linkage(1 - x @ x.T, metric="euclidean", method="ward")
    ref = hierarchy.fcluster(z, t=k,
                             criterion="maxclust")
    got = pooling.token_clusters(x, k, use_scipy=use_scipy)   # SciPy's C chain, or ours in NumPy
    assert len(set(got.tolist())) == k
    assert _same_partition(ref, got)
    assert got[0] == 0 and (np.diff(np.maximum.accumulate(got)) <= 1).all()   # numbered by first token


def test_pool_tokens_equals_colpali_engine_hierarchical_pooler() -> None:
    torch = pytest.importorskip("torch")
    hp = pytest.importorskip("colpali_engine.compression.token_pooling")
    rng = np.random.default_rng(7)
    _, x = clustered(rng, 12, 10, 32, noise=0.3)
    ours = pooling.pool_tokens(x, 3)
    pooled, _ = hp.HierarchicalTokenPooler()._pool_embeddings_impl([torch.from_numpy(x)], pool_factor=3)
    theirs = pooled[0].numpy()
    assert ours.shape == theirs.shape == (40, 32)
    key = lambda a: a[np.lexsort(np.round(a, 4).T[::-1])]  # same rows, any order
    np.testing.assert_allclose(key(ours), key(theirs), atol=1e-5)


def test_pool_tokens_keeps_the_clusters_and_unit_norms() -> None:
    rng = np.random.default_rng(3)
    centers, x = clustered(rng, 8, 16, 24)
    out = pooling.pool_tokens(x, 16)
    assert out.shape == (8, 24) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    assert (np.sort((out @ centers.T).max(axis=0)) > 0.99).all()   # each center found by one pooled vector


def test_pool_factor_edge_cases() -> None:
    x = unit(np.random.default_rng(5).standard_normal((3, 6)))
    assert np.array_equal(pooling.pool_tokens(x, 1), x)                  # 1 = off: unchanged
    mean = pooling.pool_tokens(x, 4)                                       # fewer tokens than the factor
    np.testing.assert_allclose(mean, pooling.mean_pool(x)[None, :], atol=1e-6)
    assert pooling.pool_tokens(np.zeros((0, 6)), 4).shape == (0, 6)
    np.testing.assert_allclose(pooling.pool_tokens(x[:1] * 3, 2), x[:1], atol=1e-6)  # one token: normalised
    assert pooling.pooled_count(1000, 4) == 250 and pooling.pooled_count(3, 4) == 1
    with pytest.raises(ValueError, match="pool_factor must be >= 1, got 0"):
        pooling.pool_tokens(x, 0)
    with pytest.raises(ValueError, match=r"must be \(n, d\)"):
        pooling.pool_tokens(x[0], 2)


@pytest.mark.parametrize("module", ["pgmaxsim.pooling", "pgmaxsim.writes", "pgmaxsim.kernels.quantize"])
def test_doctests(module: str) -> None:
    """The examples in the docstrings of the pooling, the writer (binary int4[] codes, lock keys)
    and the tiers' byte layouts hold."""
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
