"""Pooled vectors of a row's token embeddings, for the ANN prefilter (pure NumPy).

Two strategies, chosen per index (``maxsim.indexes.pooling``):

- ``mean``: one L2-normalised mean vector per row. Cheap, but a page that
  mixes several topics averages them away, so it tracks MaxSim poorly.
- ``centroids`` (default): a few spherical k-means centroids per row, each
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
    if pooling == "mean":
        return pooled, None
    if pooling != "centroids":
        raise ValueError(f"unknown pooling {pooling!r} (expected 'mean' or 'centroids')")
    c = n_centroids(len(tokens), int(opts.get("tokens_per_centroid", DEFAULT_TOKENS_PER_CENTROID)),
                    int(opts.get("max_centroids", DEFAULT_MAX_CENTROIDS)))
    return pooled, centroids(tokens, c)
