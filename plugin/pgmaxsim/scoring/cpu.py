"""Fast MaxSim in NumPy over packed variable-length documents.

All functions take the packed layout of :mod:`pgmaxsim.scoring` (``tokens``
(T, d) float16/float32, or int8 with per-token ``scales`` (T,); ``offsets``
(n_docs + 1,)). Similarities are computed in float32 with BLAS, a chunk of
documents at a time, and reduced per document with ``np.maximum.reduceat``
over the document's own tokens: there is no padding to mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Similarity matrix budget per chunk (float32 elements): 16M = 64 MB.
SIM_BUDGET = 1 << 24


def pack(docs: Sequence[np.ndarray], dtype: np.dtype | type = np.float16) -> tuple[np.ndarray, np.ndarray]:
    """Pack documents ``[(n_i, d)]`` into ``(tokens (sum n_i, d), offsets (n_docs + 1,) int64)``.

    >>> t, o = pack([np.ones((2, 4)), np.zeros((0, 4)), np.ones((3, 4))])
    >>> t.shape, o.tolist()
    ((5, 4), [0, 2, 2, 5])
    """
    lengths = np.array([np.shape(d)[0] for d in docs], dtype=np.int64)
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    dims = {np.shape(d)[1] for d in docs if np.ndim(d) == 2 and np.shape(d)[0]}
    if len(dims) > 1:
        raise ValueError(f"documents have different dims: {sorted(dims)}")
    dim = dims.pop() if dims else (np.shape(docs[0])[1] if docs and np.ndim(docs[0]) == 2 else 0)
    tokens = np.empty((int(offsets[-1]), dim), dtype=dtype)
    for d, a, b in zip(docs, offsets[:-1], offsets[1:]):
        if b > a:
            tokens[a:b] = d
    return tokens, offsets


def gather_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Token positions of segments ``[starts[i], starts[i] + lengths[i])``, concatenated."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    seg_begin = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=seg_begin[1:])
    return np.repeat(np.asarray(starts, dtype=np.int64) - seg_begin, lengths) + np.arange(total, dtype=np.int64)


def _chunks(lengths: np.ndarray, max_tokens: int) -> list[tuple[int, int]]:
    """Split documents into consecutive runs of at most ``max_tokens`` tokens (>= 1 doc each)."""
    bounds = []
    cum = np.concatenate([[0], np.cumsum(lengths)])
    i, n = 0, len(lengths)
    while i < n:
        j = int(np.searchsorted(cum, cum[i] + max_tokens, side="right")) - 1
        j = max(j, i + 1)
        bounds.append((i, min(j, n)))
        i = min(j, n)
    return bounds


def _as_f32(tok: np.ndarray, scales: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    if tok.dtype == np.int8:
        if scales is None:
            raise ValueError("int8 tokens need their per-token scales")
        return tok.astype(np.float32), scales
    return tok.astype(np.float32, copy=False), None


def _segment_max_sum(sims: np.ndarray, lengths: np.ndarray, q_offsets: np.ndarray | None) -> np.ndarray:
    """sims (nq_total, T) -> per-document sum over query tokens of the max over doc tokens.

    Returns (n_docs,) for one query, (n_queries, n_docs) when q_offsets is given.
    Empty documents get -inf.
    """
    n = len(lengths)
    nonempty = lengths > 0
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    rows = sims.shape[0]
    maxes = np.full((rows, n), -np.inf, dtype=np.float32)
    if nonempty.any():
        maxes[:, nonempty] = np.maximum.reduceat(sims, starts[nonempty], axis=1)
    if q_offsets is None:
        return maxes.sum(axis=0)
    return np.add.reduceat(maxes, q_offsets[:-1], axis=0)


def _score_packed(qmat: np.ndarray, q_offsets: np.ndarray | None, tokens: np.ndarray, offsets: np.ndarray,
                  doc_idx: np.ndarray | None, scales: np.ndarray | None) -> np.ndarray:
    offsets = np.asarray(offsets, dtype=np.int64)
    if doc_idx is None:
        return _score_ranges(qmat, q_offsets, tokens, offsets[:-1], np.diff(offsets), scales, True)
    idx = np.asarray(doc_idx, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= len(offsets) - 1):
        raise IndexError("document index out of range")
    starts = offsets[idx]
    return _score_ranges(qmat, q_offsets, tokens, starts, offsets[idx + 1] - starts, scales, False)


def _score_ranges(qmat: np.ndarray, q_offsets: np.ndarray | None, tokens: np.ndarray, starts: np.ndarray,
                  lengths: np.ndarray, scales: np.ndarray | None, contiguous: bool) -> np.ndarray:
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    nrows = qmat.shape[0]
    out_shape = (n,) if q_offsets is None else (len(q_offsets) - 1, n)
    out = np.empty(out_shape, dtype=np.float32)
    max_tokens = max(SIM_BUDGET // max(nrows, 1), 4096)
    for a, b in _chunks(lengths, max_tokens):
        if contiguous:
            sl = slice(int(starts[a]), int(starts[a]) + int(lengths[a:b].sum()))
            tok, sc = tokens[sl], (scales[sl] if scales is not None else None)
        else:
            pos = gather_positions(starts[a:b], lengths[a:b])
            tok, sc = tokens[pos], (scales[pos] if scales is not None else None)
        t32, sc = _as_f32(tok, sc)
        sims = qmat @ t32.T
        if sc is not None:
            sims *= sc.astype(np.float32)[None, :]
        out[..., a:b] = _segment_max_sum(sims, lengths[a:b], q_offsets)
    return out


def maxsim_packed(query: np.ndarray, tokens: np.ndarray, offsets: np.ndarray,
                  doc_idx: np.ndarray | None = None, scales: np.ndarray | None = None) -> np.ndarray:
    """Scores ``(n,)`` float32 of one query ``(nq, d)`` against packed documents.

    ``doc_idx`` (n,) selects documents (any order, repeats allowed); None = all.
    ``scales`` (T,) is required for int8 tokens (value = int8 * scale).
    """
    q = np.asarray(query, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != tokens.shape[1]:
        raise ValueError(f"query shape {q.shape} does not match token dim {tokens.shape[1]}")
    return _score_packed(q, None, tokens, offsets, doc_idx, scales)


def maxsim_batch(queries: Sequence[np.ndarray], tokens: np.ndarray, offsets: np.ndarray,
                 doc_idx: np.ndarray | None = None, scales: np.ndarray | None = None) -> np.ndarray:
    """Scores ``(n_queries, n)`` of several queries (each (nq_i, d), nq_i >= 1) at once."""
    qs = [np.asarray(q, dtype=np.float32) for q in queries]
    if any(q.ndim != 2 or q.shape[0] == 0 or q.shape[1] != tokens.shape[1] for q in qs):
        raise ValueError("every query must be a non-empty (nq, d) array with the tokens' d")
    q_offsets = np.zeros(len(qs) + 1, dtype=np.int64)
    np.cumsum([q.shape[0] for q in qs], out=q_offsets[1:])
    return _score_packed(np.concatenate(qs), q_offsets, tokens, offsets, doc_idx, scales)


def maxsim_ranges(query: np.ndarray, tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                  scales: np.ndarray | None = None) -> np.ndarray:
    """Scores ``(n,)`` of one query against token ranges ``[starts[i], starts[i] + lengths[i])``."""
    q = np.asarray(query, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != tokens.shape[1]:
        raise ValueError(f"query shape {q.shape} does not match token dim {tokens.shape[1]}")
    return _score_ranges(q, None, tokens, starts, lengths, scales, False)


def maxsim_batch_ranges(queries: Sequence[np.ndarray], tokens: np.ndarray, starts: np.ndarray,
                        lengths: np.ndarray, scales: np.ndarray | None = None) -> np.ndarray:
    """Scores ``(n_queries, n)`` of several queries against token ranges."""
    qs = [np.asarray(q, dtype=np.float32) for q in queries]
    q_offsets = np.zeros(len(qs) + 1, dtype=np.int64)
    np.cumsum([q.shape[0] for q in qs], out=q_offsets[1:])
    return _score_ranges(np.concatenate(qs), q_offsets, tokens, starts, lengths, scales, False)


def maxsim(query: np.ndarray, doc: np.ndarray) -> float:
    """Scalar MaxSim of one query against one document (float32 arithmetic)."""
    d = np.asarray(doc)
    if d.shape[0] == 0:
        return float("-inf")
    return float(maxsim_packed(query, d.reshape(d.shape[0], -1), np.array([0, d.shape[0]]))[0])


def maxsim_padded(query: np.ndarray, docs: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Scores ``(n,)`` for padded documents ``docs`` (n, L, d) with true ``lengths`` (n,).

    Padding is masked with ``-inf`` *before* the max (multiplying by a zero
    mask would let padding's 0 beat negative similarities).
    """
    q = np.asarray(query, dtype=np.float32)
    sims = np.einsum("qd,nld->nql", q, np.asarray(docs, dtype=np.float32))
    mask = np.arange(docs.shape[1])[None, None, :] < np.asarray(lengths)[:, None, None]
    sims = np.where(mask, sims, -np.inf)
    return sims.max(axis=2).sum(axis=1)


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``k`` best scores, best first; ties by lower index.

    >>> topk(np.array([0.5, 2.0, 0.5, 1.0]), 3)[0].tolist()
    [1, 3, 0]
    """
    s = np.asarray(scores)
    n = s.shape[0]
    k = min(int(k), n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64), s[:0]
    if k < n:
        kth = np.partition(s, n - k)[n - k]
        cand = np.flatnonzero(s >= kth)
    else:
        cand = np.arange(n)
    order = np.lexsort((cand, -s[cand].astype(np.float64)))[:k]
    idx = cand[order]
    return idx.astype(np.int64), s[idx]
