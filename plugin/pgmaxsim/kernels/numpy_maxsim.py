"""Fast MaxSim in NumPy over packed variable-length documents.

All functions take the packed layout of :mod:`pgmaxsim.kernels` (``tokens``
(T, d) float16/float32, or int8 with per-token ``scales`` (T,); ``offsets``
(n_docs + 1,)), or documents as a list of arrays (:func:`maxsim_docs`). Every
path goes through :func:`doc_maxes`: similarities computed in float32 with BLAS
a block of tokens at a time, reduced per document with ``np.maximum.reduceat``
over the document's own tokens: there is no padding to mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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


# Documents are scored a block of tokens at a time: each block is converted to float32
# into one reused buffer and multiplied while it is still in cache (2048 x 128 x 4 B = 1 MB,
# this machine's L2 per core), so stored fp16/int8 tokens are read from memory once, at their
# own width. Converting a whole chunk first (the old way) wrote and re-read a float32 copy
# 2-4x the stored bytes. Measured flat from 1024 to 8192 tokens; 128-256 pay per-block overhead.
BLOCK_TOKENS = 2048

# fp16 -> float32 by bit placement, with no per-element cast: the half's 16 bits,
# sign-extended to 32 and shifted left by 13, land sign | exponent | mantissa where a
# float32 keeps them, exponent still in fp16 bias; clearing the 3 bits the sign extension
# spilled into the exponent leaves exactly ``value * 2**-112`` (zeros and subnormals
# included; fp16 inf/NaN become large finite numbers). The query is scaled by 2**112
# instead, so the products are the true ones. Two integer passes, SIMD in NumPy, about
# 2x faster than NumPy's float16 cast or a 65,536-entry lookup table.
_F16_MASK = np.int32(-0x70000001)  # 0x8FFFFFFF
_F16_QUERY_SCALE = np.float32(2.0**112)


def _kind(docs: Sequence[np.ndarray], scales: Sequence[np.ndarray] | None) -> str:
    kinds = {np.dtype(d.dtype) for d in docs}
    if len(kinds) > 1:
        raise ValueError(f"documents mix token dtypes: {sorted(str(k) for k in kinds)}")
    kind = kinds.pop() if kinds else np.dtype(np.float32)
    if kind == np.int8:
        if scales is None or len(scales) != len(docs):
            raise ValueError("int8 tokens need their per-token scales")
        return "i8"
    return "f16" if kind == np.float16 else "f32"


def doc_maxes(qt: np.ndarray, docs: Sequence[np.ndarray], scales: Sequence[np.ndarray] | None = None,
              block: int | None = None) -> np.ndarray:
    """Best similarity of each query token in each document: ``(n_docs, nq)`` float32.

    ``qt`` (d, nq) float32 is the query transposed; ``docs`` are ``(n_i, d)`` arrays of
    one dtype: float16, float32/64, or int8 with ``scales[i]`` (n_i,) (value = code *
    scale of its token). The scale varies per document token, so it is applied to each
    similarity column before the max (``max_t s_t <q, x_t>``, not ``max_t <q, x_t>``).
    Empty documents keep ``-inf``.

    >>> qt = np.array([[1, 0], [0, 1]], dtype=np.float32)
    >>> doc_maxes(qt, [np.array([[1, 0], [0.5, 0.5]], np.float16), np.zeros((0, 2), np.float16)]).tolist()
    [[1.0, 0.5], [-inf, -inf]]
    >>> doc_maxes(qt, [np.array([[127, -127]], np.int8)], [np.array([0.5], np.float32)]).tolist()
    [[63.5, -63.5]]
    """
    kind = _kind(docs, scales)
    d, nq = qt.shape
    best = np.full((len(docs), nq), -np.inf, dtype=np.float32)
    block = int(block or BLOCK_TOKENS)
    q = np.ascontiguousarray(qt * _F16_QUERY_SCALE if kind == "f16" else qt, dtype=np.float32)
    buf = np.empty((block, d), dtype=np.float32)
    bufi = buf.view(np.int32)
    sims = np.empty((block, nq), dtype=np.float32)
    sbuf = np.empty(block, dtype=np.float32) if kind == "i8" else None
    seg_docs: list[int] = []
    seg_starts: list[int] = []
    fill = 0

    def flush() -> None:
        if kind == "f16":
            np.bitwise_and(bufi[:fill], _F16_MASK, out=bufi[:fill])
        s = np.matmul(buf[:fill], q, out=sims[:fill])
        if sbuf is not None:
            s *= sbuf[:fill, None]
        m = np.maximum.reduceat(s, seg_starts, axis=0)
        idx = np.array(seg_docs, dtype=np.int64)  # a document appears once per block
        best[idx] = np.maximum(best[idx], m)
        seg_docs.clear()
        seg_starts.clear()

    for i, doc in enumerate(docs):
        if doc.ndim != 2 or doc.shape[1] != d:
            raise ValueError(f"document {i} has shape {doc.shape}, expected (n, {d})")
        pos, n = 0, doc.shape[0]
        while pos < n:
            take = min(n - pos, block - fill)
            seg_docs.append(i)
            seg_starts.append(fill)
            dst = slice(fill, fill + take)
            if kind == "f16":
                np.left_shift(doc[pos:pos + take].view(np.int16), 13, out=bufi[dst], dtype=np.int32)
            else:
                np.copyto(buf[dst], doc[pos:pos + take], casting="unsafe")
            if sbuf is not None:
                sbuf[dst] = scales[i][pos:pos + take]  # type: ignore[index]
            fill += take
            pos += take
            if fill == block:
                flush()
                fill = 0
    if fill:
        flush()
    return best


def _sum_per_query(best: np.ndarray, q_offsets: np.ndarray | None) -> np.ndarray:
    """(n, nq_total) maxima -> (n,) scores, or (n_queries, n) with ``q_offsets``; float64 sums."""
    if q_offsets is None:
        return best.sum(axis=1, dtype=np.float64).astype(np.float32)
    if best.shape[0] == 0:
        return np.zeros((len(q_offsets) - 1, 0), dtype=np.float32)
    return np.add.reduceat(best.astype(np.float64), q_offsets[:-1], axis=1).T.astype(np.float32)


def _views(tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
           scales: np.ndarray | None) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    ends = (np.asarray(starts, dtype=np.int64) + np.asarray(lengths, dtype=np.int64)).tolist()
    spans = list(zip(np.asarray(starts, dtype=np.int64).tolist(), ends))
    docs = [tokens[a:b] for a, b in spans]
    return docs, (None if scales is None else [scales[a:b] for a, b in spans])


def _score_packed(qmat: np.ndarray, q_offsets: np.ndarray | None, tokens: np.ndarray, offsets: np.ndarray,
                  doc_idx: np.ndarray | None, scales: np.ndarray | None) -> np.ndarray:
    offsets = np.asarray(offsets, dtype=np.int64)
    if doc_idx is None:
        return _score_ranges(qmat, q_offsets, tokens, offsets[:-1], np.diff(offsets), scales)
    idx = np.asarray(doc_idx, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= len(offsets) - 1):
        raise IndexError("document index out of range")
    starts = offsets[idx]
    return _score_ranges(qmat, q_offsets, tokens, starts, offsets[idx + 1] - starts, scales)


def _score_ranges(qmat: np.ndarray, q_offsets: np.ndarray | None, tokens: np.ndarray, starts: np.ndarray,
                  lengths: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    docs, sc = _views(tokens, starts, lengths, scales)
    if tokens.dtype == np.int8 and scales is None:
        raise ValueError("int8 tokens need their per-token scales")
    best = doc_maxes(np.ascontiguousarray(qmat.T), docs, sc) if docs else \
        np.zeros((0, qmat.shape[0]), dtype=np.float32)
    return _sum_per_query(best, q_offsets)


def maxsim_docs(query: np.ndarray, docs: Sequence[np.ndarray], scales: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Scores ``(n,)`` float32 of one query ``(nq, d)`` against documents as stored.

    ``docs``: ``(n_i, d)`` arrays of one dtype (float16, float32, or int8 with
    ``scales[i]`` (n_i,) float32), e.g. from :func:`pgmaxsim.kernels.quantize.decode_tokens`:
    views of the stored bytes, scored without a float32 copy of them. Empty ones score ``-inf``.

    >>> q = np.array([[1, 0], [0, 1]], dtype=np.float32)
    >>> maxsim_docs(q, [np.array([[1, 0], [0.5, 0.5]], np.float16), np.array([[-1, 0]], np.float16)]).tolist()
    [1.5, -1.0]
    """
    q = np.asarray(query, dtype=np.float32)
    if q.ndim != 2 or (docs and q.shape[1] != docs[0].shape[1]):
        raise ValueError(f"query shape {q.shape} does not match the documents' dim")
    if not docs:
        return np.zeros(0, dtype=np.float32)
    return _sum_per_query(doc_maxes(np.ascontiguousarray(q.T), docs, scales), None)


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
    return _score_ranges(q, None, tokens, starts, lengths, scales)


def maxsim_batch_ranges(queries: Sequence[np.ndarray], tokens: np.ndarray, starts: np.ndarray,
                        lengths: np.ndarray, scales: np.ndarray | None = None) -> np.ndarray:
    """Scores ``(n_queries, n)`` of several queries against token ranges."""
    qs = [np.asarray(q, dtype=np.float32) for q in queries]
    q_offsets = np.zeros(len(qs) + 1, dtype=np.int64)
    np.cumsum([q.shape[0] for q in qs], out=q_offsets[1:])
    return _score_ranges(np.concatenate(qs), q_offsets, tokens, starts, lengths, scales)


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
