"""MaxSim on the GPU: CuPy + the tensor-core kernels in ``maxsim_kernels.cu``.

Requires ``pip install 'pgmaxsim[gpu]'`` (CuPy); imported lazily, so importing
this module without CuPy is fine and the functions raise MissingExtraError.

Device layout: :class:`DeviceTokens` holds the packed tokens of many documents
on the GPU as fp16 ``(T, Dp)`` or int8 ``(T, Dp)`` + float32 scales ``(T,)``,
with the dim zero-padded to a multiple of 32 (fp16) or 64 (int8): zero dims add
nothing to a dot product. Work items are ``(start, length)`` token ranges,
so one kernel serves "whole index", "these documents" and tombstoned stores.

Kernels (see the .cu file for the fragment layouts):

- ``maxsim_single``: one query (<= 64 tokens) x n items; one block per item,
  8 warps streaming 16-byte loads of the item's tokens into mma.sync.
- ``maxsim_batch``: many queries stacked (up to the shared-memory budget) x
  n items; each token tile is read once and swept against every query.

:mod:`pgmaxsim.kernels._emulate` replays both kernels lane by lane in NumPy
(same index arithmetic, same int8 conversion), which is how they are checked
on machines without a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pgmaxsim.errors import MissingExtraError, PgmaxsimError
from pgmaxsim.kernels.quantize import quantize_int8

KERNEL_SOURCE_PATH = Path(__file__).with_name("maxsim_kernels.cu")
WARPS = 8
SINGLE_MAX_QUERY_TOKENS = 64
SMEM_BUDGET = 200 * 1024      # dynamic shared memory we allow one block (H100: 227 KB max)
DEFAULT_SMEM = 48 * 1024      # above this a kernel needs the opt-in attribute


def cupy() -> Any:
    """The cupy module, or MissingExtraError naming the extra."""
    try:
        import cupy as cp
    except ImportError as exc:
        raise MissingExtraError("cupy", "gpu") from exc
    return cp


def available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        cp = cupy()
        return int(cp.cuda.runtime.getDeviceCount()) > 0
    except Exception:
        return False


def chunk_width(int8: bool) -> int:
    return 64 if int8 else 32


def padded_dim(dim: int, int8: bool) -> int:
    w = chunk_width(int8)
    return (dim + w - 1) // w * w


def single_tiling(nq: int, int8: bool) -> tuple[int, int]:
    """(NQT, MT) for the single-query kernel: query n-tiles, doc m-tiles per warp step."""
    nqt = (nq + 7) // 8
    return nqt, (2 if nqt <= 4 else 1)


def batch_tile_m(dp: int) -> int | None:
    """Doc m-tiles per warp step of the batch kernel (its A tile lives in registers)."""
    return 2 if dp <= 128 else (1 if dp <= 256 else None)


def single_smem(dp: int, nqt: int) -> int:
    return nqt * (dp // 32) * 32 * 16 + WARPS * nqt * 8 * 4


def batch_smem(dp: int, nqt: int) -> int:
    return single_smem(dp, nqt)


@dataclass
class DeviceTokens:
    """Packed tokens on the GPU: ``tokens`` (T, Dp) fp16 or int8, ``scales`` (T,) for int8."""

    tokens: Any
    scales: Any | None
    dim: int

    @property
    def int8(self) -> bool:
        return self.scales is not None

    @property
    def padded_dim(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def nbytes(self) -> int:
        return int(self.tokens.nbytes) + (int(self.scales.nbytes) if self.scales is not None else 0)


def pad_tokens(tokens: np.ndarray, int8: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Host-side: (T, d) float -> padded fp16 (T, Dp), or int8 (T, Dp) + scales (T,)."""
    t = np.asarray(tokens)
    dp = padded_dim(t.shape[1], int8)
    if int8:
        q, sc = quantize_int8(t) if t.dtype != np.int8 else (t, None)
        if sc is None:
            raise ValueError("int8 tokens must come with their scales; pass float tokens to quantize")
        out = np.zeros((t.shape[0], dp), dtype=np.int8)
        out[:, : t.shape[1]] = q
        return out, sc
    out16 = np.zeros((t.shape[0], dp), dtype=np.float16)
    out16[:, : t.shape[1]] = t
    return out16, None


def upload(tokens: np.ndarray, *, int8: bool = False, scales: np.ndarray | None = None) -> DeviceTokens:
    """Copy packed tokens (T, d) to the GPU (quantizing to int8 when asked)."""
    cp = cupy()
    t = np.asarray(tokens)
    if int8 and t.dtype == np.int8:
        if scales is None:
            raise ValueError("int8 tokens need scales")
        dp = padded_dim(t.shape[1], True)
        host = np.zeros((t.shape[0], dp), dtype=np.int8)
        host[:, : t.shape[1]] = t
        sc = np.asarray(scales, dtype=np.float32)
    else:
        host, sc = pad_tokens(t, int8)
    return DeviceTokens(cp.asarray(host), None if sc is None else cp.asarray(sc, dtype=cp.float32), int(t.shape[1]))


def _query16(query: np.ndarray, dim: int, dp: int) -> np.ndarray:
    q = np.asarray(query, dtype=np.float32)
    if q.ndim != 2 or q.shape[0] == 0 or q.shape[1] != dim:
        raise PgmaxsimError(f"query must be a non-empty (n, {dim}) array, got shape {q.shape}")
    out = np.zeros((q.shape[0], dp), dtype=np.float16)
    out[:, :dim] = q
    return out


_functions: dict[str, Any] = {}


def _function(name: str, smem: int) -> Any:
    cp = cupy()
    fn = _functions.get(name)
    if fn is None:
        module = cp.RawModule(code=KERNEL_SOURCE_PATH.read_text(), options=("-std=c++17",),
                              name_expressions=[name])
        fn = module.get_function(name)
        _functions[name] = fn
    if smem > DEFAULT_SMEM and fn.max_dynamic_shared_size_bytes < smem:
        fn.max_dynamic_shared_size_bytes = smem
    return fn


def _items(starts: Any, lengths: Any) -> tuple[Any, Any]:
    cp = cupy()
    return (cp.ascontiguousarray(cp.asarray(starts, dtype=cp.int64)),
            cp.ascontiguousarray(cp.asarray(lengths, dtype=cp.int32)))


def items_from_offsets(offsets: Any, doc_idx: Any | None = None) -> tuple[Any, Any]:
    """Device (starts int64, lengths int32) of documents ``doc_idx`` (None = all)."""
    cp = cupy()
    off = cp.asarray(offsets, dtype=cp.int64)
    if doc_idx is None:
        return off[:-1].copy(), (off[1:] - off[:-1]).astype(cp.int32)
    idx = cp.asarray(doc_idx, dtype=cp.int64)
    s = off[idx]
    return s, (off[idx + 1] - s).astype(cp.int32)


def maxsim_items(query: np.ndarray, dev: DeviceTokens, starts: Any, lengths: Any) -> Any:
    """Scores (n,) float32 (on the device) of one query against n token ranges."""
    cp = cupy()
    starts, lengths = _items(starts, lengths)
    n = int(starts.shape[0])
    nq = int(np.shape(query)[0])
    if nq > SINGLE_MAX_QUERY_TOKENS:
        return maxsim_batch_items([query], dev, starts, lengths)[0]
    dp = dev.padded_dim
    q = cp.asarray(_query16(query, dev.dim, dp))
    out = cp.empty(n, dtype=cp.float32)
    if n == 0:
        return out
    nqt, mt = single_tiling(nq, dev.int8)
    smem = single_smem(dp, nqt)
    if smem > SMEM_BUDGET:
        raise PgmaxsimError(f"query of {nq} tokens x dim {dev.dim} is too large for the GPU kernel")
    name = f"maxsim_single<{dp},{nqt},{'true' if dev.int8 else 'false'},{mt},{WARPS}>"
    fn = _function(name, smem)
    scales = dev.scales if dev.scales is not None else _dummy_scales()
    fn((n,), (WARPS * 32,), (q, np.int32(nq), dev.tokens, scales, starts, lengths, np.int32(n), out),
       shared_mem=smem)
    return out


def maxsim_batch_items(queries: Sequence[np.ndarray], dev: DeviceTokens, starts: Any, lengths: Any) -> Any:
    """Scores (n_queries, n) float32 (on the device) of several queries against n token ranges."""
    cp = cupy()
    starts, lengths = _items(starts, lengths)
    n = int(starts.shape[0])
    out = cp.empty((len(queries), n), dtype=cp.float32)
    if n == 0 or not queries:
        return out
    dp = dev.padded_dim
    mt = batch_tile_m(dp)
    if mt is None:   # A tile too large for registers: one query at a time
        for b, q in enumerate(queries):
            out[b] = maxsim_items(q, dev, starts, lengths)
        return out
    per_row = (dp // 32) * 32 * 16 // 8 + WARPS * 4
    max_rows = (SMEM_BUDGET // per_row) // 8 * 8
    groups: list[list[int]] = [[]]
    rows = 0
    for b, q in enumerate(queries):
        nq = int(np.shape(q)[0])
        if nq > max_rows:
            raise PgmaxsimError(f"query of {nq} tokens x dim {dev.dim} is too large for the GPU kernel")
        if rows + nq > max_rows:
            groups.append([])
            rows = 0
        groups[-1].append(b)
        rows += nq
    name = f"maxsim_batch<{dp},{'true' if dev.int8 else 'false'},{mt},{WARPS}>"
    scales = dev.scales if dev.scales is not None else _dummy_scales()
    for grp in groups:
        qs = [_query16(queries[b], dev.dim, dp) for b in grp]
        qoff = np.zeros(len(qs) + 1, dtype=np.int32)
        np.cumsum([q.shape[0] for q in qs], out=qoff[1:])
        nrows = int(qoff[-1])
        smem = batch_smem(dp, (nrows + 7) // 8)
        fn = _function(name, smem)
        part = cp.empty((len(grp), n), dtype=cp.float32)
        fn((n,), (WARPS * 32,),
           (cp.asarray(np.concatenate(qs)), np.int32(nrows), cp.asarray(qoff), np.int32(len(grp)),
            dev.tokens, scales, starts, lengths, np.int32(n), part),
           shared_mem=smem)
        out[grp[0]: grp[-1] + 1] = part
    return out


_dummy: dict[int, Any] = {}


def _dummy_scales() -> Any:
    cp = cupy()
    dev = int(cp.cuda.runtime.getDevice())
    if dev not in _dummy:
        _dummy[dev] = cp.ones(1, dtype=cp.float32)
    return _dummy[dev]


def maxsim_gpu(query: np.ndarray, dev: DeviceTokens, offsets: Any, doc_idx: Any | None = None) -> Any:
    """Packed-layout convenience: scores (n,) of one query vs documents ``doc_idx`` (None = all)."""
    return maxsim_items(query, dev, *items_from_offsets(offsets, doc_idx))


def maxsim_batch_gpu(queries: Sequence[np.ndarray], dev: DeviceTokens, offsets: Any,
                     doc_idx: Any | None = None) -> Any:
    """Packed-layout convenience: scores (n_queries, n)."""
    return maxsim_batch_items(queries, dev, *items_from_offsets(offsets, doc_idx))


def topk_gpu(scores: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of device scores -> host (indices, values), best first, ties by lower index."""
    from pgmaxsim.kernels.numpy_maxsim import topk

    cp = cupy()
    s = cp.asarray(scores)
    n = int(s.shape[0])
    k = min(int(k), n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    if n > 4 * k + 1024:
        # Shortlist on the device (argpartition is a selection), finish on the host.
        part = cp.argpartition(-s, k)[: k + 1]
        kth = float(s[part].min())
        cand = cp.flatnonzero(s >= kth)
        cs = cp.asnumpy(s[cand])
        ci = cp.asnumpy(cand)
        order, vals = topk(cs, k)
        # tie order by original index: cand is ascending, so topk's index order holds
        return ci[order].astype(np.int64), vals
    return topk(cp.asnumpy(s), k)
