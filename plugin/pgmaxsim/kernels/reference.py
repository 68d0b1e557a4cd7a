"""Float64 MaxSim reference: slow, obvious, the ground truth for every backend."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def maxsim_reference(query: np.ndarray, doc: np.ndarray) -> float:
    """MaxSim of one query against one document, in float64.

    query: (nq, d); doc: (nd, d). Returns ``sum_i max_j <q_i, doc_j>``;
    ``-inf`` when the document has no tokens.

    >>> q = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> d = np.array([[-0.5, -0.2], [-0.1, -0.9]])
    >>> round(maxsim_reference(q, d), 6)   # -0.1 + -0.2: negative maxima stay negative
    -0.3
    """
    q = np.asarray(query, dtype=np.float64)
    d = np.asarray(doc, dtype=np.float64)
    if d.shape[0] == 0:
        return float("-inf")
    if q.ndim != 2 or d.ndim != 2 or q.shape[1] != d.shape[1]:
        raise ValueError(f"query {q.shape} and doc {d.shape} must be (n, d) with the same d")
    return float((q @ d.T).max(axis=1).sum())


def maxsim_reference_many(query: np.ndarray, docs: Sequence[np.ndarray]) -> np.ndarray:
    """float64 scores ``(n_docs,)`` of one query against each document."""
    return np.array([maxsim_reference(query, d) for d in docs], dtype=np.float64)
