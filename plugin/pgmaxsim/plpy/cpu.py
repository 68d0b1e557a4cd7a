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

import numpy as np


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
