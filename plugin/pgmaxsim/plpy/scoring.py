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

from pgmaxsim.kernels import numpy_maxsim as scoring_cpu
from pgmaxsim.kernels.quantize import decode_tokens
from pgmaxsim.plpy.tokens import _LE_HALF_TO_F32, convert


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

    Little-endian words (``tokens_packed``) are scored as fp16 where they lie
    (:func:`pgmaxsim.kernels.numpy_maxsim.maxsim_docs`); ``array_send`` words are converted
    through their table first.
    """
    scores = np.empty(len(rows), dtype=np.float32)
    if not rows:
        return scores
    le = [i for i, (_, table) in enumerate(rows) if table is _LE_HALF_TO_F32]
    be = [i for i, (_, table) in enumerate(rows) if table is not _LE_HALF_TO_F32]
    if le:
        scores[le] = scoring_cpu.maxsim_docs(query, [rows[i][0].view(np.float16) for i in le])
    if be:
        docs = [convert(w, t, np.empty(w.shape, dtype=np.float32)) for w, t in (rows[i] for i in be)]
        scores[be] = scoring_cpu.maxsim_docs(query, docs)
    return scores


def maxsim_stored(query: np.ndarray, blobs: Sequence[bytes], dim: int, storage: str) -> np.ndarray:
    """MaxSim of ``query`` (nq, d) against rows' stored token bytes (tier ``storage``) → (m,) float32.

    Decoding makes views only; each row is scored as stored (fp16 or int8 with its
    scales, :mod:`pgmaxsim.kernels.quantize` layouts). Raises ``StoredTokensError``
    for bytes that do not fit the layout; a row with no tokens scores ``-inf``.
    """
    if not blobs:
        return np.zeros(0, dtype=np.float32)
    decoded = [decode_tokens(b, dim, storage) for b in blobs]
    scales = None if storage == "fp16" else [s for _, s in decoded]  # type: ignore[misc]
    return scoring_cpu.maxsim_docs(query, [t for t, _ in decoded], scales)  # type: ignore[arg-type]
