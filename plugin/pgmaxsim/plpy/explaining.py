"""Behind ``maxsim._best_tokens`` (sql/idempotent/065_explain_best.plpython.sql): each query token's
best document token of one row, from the row's stored bytes, scored as stored (fp16, or int8 codes
with their scales) like PL/Python's search, so the terms sum to the row's MaxSim there."""

from __future__ import annotations

from typing import Any

import numpy as np

from pgmaxsim.db.codec import CodecError
from pgmaxsim.kernels import quantize
from pgmaxsim.plpy.api import row_storage
from pgmaxsim.plpy.tokens import decode_query


def best_tokens(plpy: Any, blob: bytes, dim: int, storage: str, n_tokens: int,
                query: bytes) -> list[tuple[int, int, float]]:
    """``(query_token, doc_token, score)`` per query token, 0-based; the first best on ties."""
    try:
        q = decode_query(query)
        tier = row_storage(len(blob), n_tokens, dim, storage)
        doc = quantize.dequantize(*quantize.decode_tokens(bytes(blob), dim, tier))
    except (CodecError, quantize.StoredTokensError) as e:
        plpy.error(f"pgmaxsim: explain: {e}")
    return best_of(q, doc)


def best_of(query: np.ndarray, doc: np.ndarray) -> list[tuple[int, int, float]]:
    """For ``query`` (nq, d) against ``doc`` (n, d): each query token's argmax and max similarity.

    >>> best_of(np.eye(2, dtype=np.float32), np.array([[0, 1], [1, 0], [1, 0]], dtype=np.float32))
    [(0, 1, 1.0), (1, 0, 1.0)]
    """
    sim = np.asarray(query, dtype=np.float32) @ np.asarray(doc, dtype=np.float32).T
    best = sim.argmax(axis=1)
    return [(i, int(j), float(sim[i, j])) for i, j in enumerate(best)]
