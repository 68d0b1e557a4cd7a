"""Pooled vectors of a row's token embeddings, for the ANN prefilter (pure NumPy).

Two strategies, chosen per index (``maxsim.indexes.pooling``):

- ``mean``: one L2-normalised mean vector per row. Cheap, but a page that
  mixes several topics averages them away, so it tracks MaxSim poorly.
- ``centroids`` (the default before the token-level ``codebook`` first stage of
  pgmaxsim.codebook): a few spherical k-means centroids per row, each
  searched once per query token. A query token that matches one region of a
  page finds that region's centroid, which is the MaxSim structure itself.

Both functions here are mirrored by ``maxsim._pool`` in sql/0002_scoring_sql.sql
(same start, same rule for the number of centroids, same fixed rounds), and run
inside PostgreSQL through pgmaxsim.plpy, so this module imports only NumPy.

>>> import numpy as np
>>> t = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
>>> [round(float(v), 3) for v in mean_pool(t)]
[0.894, 0.447]
>>> centroids(t, 2).round(3).tolist()
[[1.0, 0.0], [0.0, 1.0]]
"""

from __future__ import annotations

import numpy as np

DEFAULT_TOKENS_PER_CENTROID = 64
DEFAULT_MAX_CENTROIDS = 16
ROUNDS = 8


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def mean_pool(tokens: np.ndarray) -> np.ndarray:
    """``(n, d)`` tokens → ``(d,)`` float32: the L2-normalised mean."""
    t = np.asarray(tokens, dtype=np.float32)
    return _normalise(t.mean(axis=0)).astype(np.float32)


def n_centroids(n_tokens: int, tokens_per_centroid: int = DEFAULT_TOKENS_PER_CENTROID,
                max_centroids: int = DEFAULT_MAX_CENTROIDS) -> int:
    """How many centroids a row of ``n_tokens`` keeps: ceil(n / tokens_per_centroid), in [1, max]."""
    return int(min(max(1, -(-n_tokens // tokens_per_centroid)), max_centroids, n_tokens))


def centroids(tokens: np.ndarray, c: int, rounds: int = ROUNDS) -> np.ndarray:
    """``(n, d)`` tokens → ``(c, d)`` float32 spherical k-means centroids (unit norm).

    Deterministic: starts from evenly strided tokens, assigns each token to its
    most similar centroid (ties to the lower index), moves each centroid to its
    members' normalised mean (a centroid without members stays), ``rounds`` times
    or until nothing moves.
    """
    x = _normalise(np.asarray(tokens, dtype=np.float32))
    n = x.shape[0]
    c = max(1, min(int(c), n))
    start = ((2 * np.arange(c) + 1) * n) // (2 * c)
    cent = x[start].copy()
    members = np.zeros((c, n), dtype=np.float32)
    cols = np.arange(n)
    for _ in range(rounds):
        assign = np.argmax(x @ cent.T, axis=1)
        members[:] = 0
        members[assign, cols] = 1
        sums = members @ x  # (c, d): one matrix product instead of a scatter-add
        counts = members.sum(axis=1)
        moved = np.where(counts[:, None] > 0, _normalise(sums), cent)
        if np.array_equal(moved, cent):
            break
        cent = moved
    return cent.astype(np.float32)


def pool(tokens: np.ndarray, pooling: str, options: dict | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The pooled vector and, for ``centroids`` pooling, the ``(c, d)`` centroids of one row."""
    opts = options or {}
    pooled = mean_pool(tokens)
    if pooling in ("mean", "codebook"):   # codebook: the first stage is per token (pgmaxsim.codebook)
        return pooled, None
    if pooling != "centroids":
        raise ValueError(f"unknown pooling {pooling!r} (expected 'mean' or 'centroids')")
    c = n_centroids(len(tokens), int(opts.get("tokens_per_centroid", DEFAULT_TOKENS_PER_CENTROID)),
                    int(opts.get("max_centroids", DEFAULT_MAX_CENTROIDS)))
    return pooled, centroids(tokens, c)


# --- token pooling at ingest (pool_factor) -------------------------------------------------
#
# Each row's tokens are clustered and every cluster replaced by its L2-normalised mean,
# ~n / pool_factor vectors instead of n, as in the token-pooling work on ColPali (Answer.AI;
# colpali-engine's HierarchicalTokenPooler), whose clustering this reproduces: Ward
# linkage where token i is described by its row of cosine distances ``1 - <x_i, x_j>`` to
# every token of the row, cut into ``max(n // pool_factor, 1)`` clusters. Written in NumPy
# (nearest-neighbour chain, O(n^2)) so it runs wherever this module does, PL/Python
# included, without SciPy; tests check it against scipy.cluster.hierarchy and colpali-engine.
#
# Cost: the distances between those n-dimensional rows are not an O(n^3) product. With
# S = X X^T, row i of S is X x_i, so ||S_i - S_j||^2 = (x_i - x_j)^T G (x_i - x_j) with the
# (d, d) Gram matrix G = X^T X: O(n^2 d). A 1,000-token page (d = 128) pools in ~30 ms on
# one core instead of ~0.1-1 s for S @ S (same distances to ~1e-12).


def pooled_count(n_tokens: int, pool_factor: int) -> int:
    """How many vectors a row of ``n_tokens`` keeps: ``max(n // pool_factor, 1)`` (``n`` when off).

    A row with fewer tokens than the pool factor keeps one vector, the normalised mean of
    its tokens; an empty row stays empty.

    >>> [pooled_count(n, 4) for n in (0, 1, 3, 4, 1000, 1003)], pooled_count(7, 1)
    ([0, 1, 1, 1, 250, 250], 7)
    """
    if pool_factor < 1:
        raise ValueError(f"pool_factor must be >= 1, got {pool_factor}")
    if n_tokens <= 0 or pool_factor == 1:
        return max(n_tokens, 0)
    return max(n_tokens // pool_factor, 1)


def _ward_merges(d2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ward merges of ``n`` points given their squared Euclidean distances ``(n, n)`` float64.

    Returns ``(height, keep, drop)`` arrays of the ``n - 1`` merges, in an order where
    every merge follows the merges that formed its two clusters; cluster slots are point
    indices (a merged cluster keeps the lower slot). Nearest-neighbour chain with the
    Lance-Williams update on squared distances (exact Ward, as SciPy's ``ward``).
    """
    n = d2.shape[0]
    d2 = d2.copy()
    np.fill_diagonal(d2, np.inf)
    size = np.ones(n)
    heights, keeps, drops = [], [], []
    chain: list[int] = []
    active = n
    next_start = 0
    while active > 1:
        if not chain:
            while not np.isfinite(d2[next_start]).any():
                next_start += 1
            chain.append(next_start)
        while True:
            a = chain[-1]
            row = d2[a]
            b = int(np.argmin(row))
            if len(chain) > 1 and row[chain[-2]] <= row[b]:
                b = chain[-2]
                break
            chain.append(b)
        chain.pop()
        chain.pop()
        h = d2[a, b]
        ni, nj = size[a], size[b]
        new = ((size + ni) * d2[a] + (size + nj) * d2[b] - size * h) / (size + ni + nj)
        keep, drop = min(a, b), max(a, b)
        d2[keep, :] = new
        d2[:, keep] = new
        d2[drop, :] = np.inf
        d2[:, drop] = np.inf
        d2[keep, keep] = np.inf
        size[keep] = ni + nj
        heights.append(h)
        keeps.append(keep)
        drops.append(drop)
        active -= 1
    return np.array(heights), np.array(keeps, dtype=np.int64), np.array(drops, dtype=np.int64)


def _row_distances(x: np.ndarray) -> np.ndarray:
    """``(n, d)`` unit rows -> ``(n, n)`` squared Euclidean distances between the rows of ``1 - X X^T``.

    ``||(1 - s_i) - (1 - s_j)||^2 = ||s_i - s_j||^2 = q_i + q_j - 2 (X G X^T)_ij`` with
    ``G = X^T X`` and ``q_i = (X G X^T)_ii``: O(n^2 d), not the O(n^3) of ``S @ S``.

    >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    >>> s = x @ x.T
    >>> bool(np.allclose(_row_distances(x), ((s[:, None, :] - s[None, :, :]) ** 2).sum(-1)))
    True
    """
    y = x @ (x.T @ x)                       # (n, d): X G
    q = np.einsum("ij,ij->i", y, x)
    d2 = y @ x.T                            # in place from here: an (n, n) float64 is 8 MB at n = 1,000
    d2 *= -2.0
    d2 += q[:, None]
    d2 += q[None, :]
    return np.maximum(d2, 0.0, out=d2)


def _jump(parent: np.ndarray) -> np.ndarray:
    """Roots of a forest given each node's parent (a root is its own), by pointer jumping."""
    while True:
        up = parent[parent]
        if np.array_equal(up, parent):
            return parent
        parent = up


def _roots_numpy(d2: np.ndarray, k: int) -> np.ndarray:
    """Root slot ``(n,)`` of each point once the ``n - k`` lowest Ward merges are applied."""
    n = d2.shape[0]
    height, keep, drop = _ward_merges(d2)
    merges = np.lexsort((np.arange(len(height)), height))[: n - k]   # children before parents
    parent = np.arange(n)
    parent[drop[merges]] = keep[merges]   # a dropped slot points to the slot its cluster kept
    return _jump(parent)


def _roots_scipy(d2: np.ndarray, k: int) -> np.ndarray | None:
    """As :func:`_roots_numpy` with SciPy's C nearest-neighbour chain (~2x faster); None without SciPy."""
    try:
        from scipy.cluster.hierarchy import linkage
        from scipy.spatial.distance import squareform
    except ImportError:
        return None
    n = d2.shape[0]
    condensed = squareform(d2, checks=False)   # the upper triangle (the diagonal is not read)
    z = linkage(np.sqrt(condensed, out=condensed), method="ward")   # rows sorted by height
    parent = np.arange(2 * n - 1)
    cut = z[: n - k, :2].astype(np.int64)
    new = n + np.arange(n - k)
    parent[cut[:, 0]] = new
    parent[cut[:, 1]] = new
    return _jump(parent)[:n]


def token_clusters(tokens: np.ndarray, k: int, use_scipy: bool = True) -> np.ndarray:
    """Cluster label ``(n,)`` int64 in ``[0, k)`` of each token (Ward on cosine-distance rows).

    Labels are numbered by each cluster's first token, so the result is deterministic and
    the same with or without SciPy (its linkage only runs faster where it is installed).
    """
    x = _normalise(np.asarray(tokens, dtype=np.float64))
    n = x.shape[0]
    k = max(1, min(int(k), n))
    if k == n:
        return np.arange(n, dtype=np.int64)
    d2 = _row_distances(x)
    roots = _roots_scipy(d2, k) if use_scipy else None
    if roots is None:
        roots = _roots_numpy(d2, k)
    _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return rank[inverse].astype(np.int64)


def pool_tokens(tokens: np.ndarray, pool_factor: int) -> np.ndarray:
    """A row's tokens ``(n, d)`` -> ``(pooled_count(n, pool_factor), d)`` float32 pooled tokens.

    ``pool_factor`` 1 returns the tokens unchanged (float32). Otherwise each cluster of
    :func:`token_clusters` becomes the L2-normalised mean of its tokens, clusters in the
    order of their first token. Deterministic; pure NumPy.

    >>> t = np.array([[1, 0], [0, 1], [0.9, 0.1], [0.1, 0.9]], dtype=np.float32)
    >>> pool_tokens(t, 2).astype(np.float64).round(3).tolist()
    [[0.999, 0.053], [0.053, 0.999]]
    """
    x = np.asarray(tokens, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"tokens must be (n, d), got shape {x.shape}")
    k = pooled_count(x.shape[0], pool_factor)
    if pool_factor == 1 or x.shape[0] == 0:
        return x.copy()
    labels = token_clusters(x, k)
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, x.astype(np.float64))
    return _normalise(sums).astype(np.float32)
