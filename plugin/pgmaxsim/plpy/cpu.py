"""Exact MaxSim on the CPU (NumPy), over documents packed end to end.

score[i] = Σ_q max_{t in doc i} ⟨q, t⟩  (dot-product form; float32 accumulation of
fp16 inputs, within fp16 rounding of a float64 reference).

>>> import numpy as np
>>> q = np.array([[1, 0], [0, 1]], dtype=np.float32)
>>> docs = np.array([[1, 0], [0.5, 0.5], [-1, 0]], dtype=np.float32)
>>> maxsim_packed(q, docs, np.array([0, 2, 3])).tolist()
[1.5, -1.0]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pgmaxsim.plpy.tokens import convert


def maxsim_packed(query: np.ndarray, tokens: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """query (nq, d), tokens (N, d), offsets (m + 1,) with non-empty rows → scores (m,) float32."""
    if len(offsets) <= 1:
        return np.zeros(0, dtype=np.float32)
    sims = tokens @ np.ascontiguousarray(query.T, dtype=np.float32)  # (N, nq)
    best = np.maximum.reduceat(sims, offsets[:-1], axis=0)  # (m, nq)
    return best.sum(axis=1, dtype=np.float64).astype(np.float32)


def maxsim_one(doc: np.ndarray, query: np.ndarray) -> float:
    """MaxSim of one document (n, d) and one query (nq, d)."""
    return float((np.asarray(doc, np.float32) @ np.asarray(query, np.float32).T).max(axis=0).sum(dtype=np.float64))


def maxsim_rows(query: np.ndarray, rows: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """MaxSim of ``query`` (nq, d) against rows given as ``(fp16 words (n_i, d), table)``
    (see :func:`pgmaxsim.plpy.tokens.row_words`) → scores (m,) float32.

    Each row is converted into one reused float32 buffer and scored at once, so its
    tokens are read from memory once and stay in cache for the product (about twice as
    fast as converting every row first and multiplying one large matrix).
    """
    scores = np.empty(len(rows), dtype=np.float32)
    if not rows:
        return scores
    q_t = np.ascontiguousarray(np.asarray(query, dtype=np.float32).T)
    buf = np.empty((max(w.shape[0] for w, _ in rows), q_t.shape[0]), dtype=np.float32)
    for i, (words, table) in enumerate(rows):
        tokens = convert(words, table, buf[: words.shape[0]])
        scores[i] = (tokens @ q_t).max(axis=0).sum(dtype=np.float64)
    return scores
