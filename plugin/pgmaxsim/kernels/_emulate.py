"""Lane-by-lane NumPy replay of the CUDA kernels in ``maxsim_kernels.cu``.

For machines without a GPU: every index expression of the kernels (query
staging into B-fragment order, 16-byte A loads per lane, the permuted-k map,
row clamping at a document's end, the int8 -> fp16 ``prmt``/``sub.f16x2``
trick, the mma.sync m16n8k16 register layout, the shuffle reductions) is
written here the same way, with the 32 lanes of a warp as a NumPy axis. The
tests compare this replay with :mod:`reference`; the GPU tests compare the real
kernels with the same reference. Slow: for small inputs only.
"""

from __future__ import annotations

import numpy as np

LANES = np.arange(32)
G = LANES >> 2
T = LANES & 3


def _u32_to_h2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """u32 registers -> (low half, high half) as float32 values."""
    x = np.asarray(x, dtype=np.uint32)
    lo = (x & 0xFFFF).astype(np.uint16).view(np.float16).astype(np.float32)
    hi = (x >> 16).astype(np.uint16).view(np.float16).astype(np.float32)
    return lo, hi


def _h2_to_u32(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    lo16 = np.asarray(lo, dtype=np.float16).view(np.uint16).astype(np.uint32)
    hi16 = np.asarray(hi, dtype=np.float16).view(np.uint16).astype(np.uint32)
    return lo16 | (hi16 << 16)


def prmt(a: np.ndarray, b: np.ndarray | int, sel: int) -> np.ndarray:
    """PTX ``prmt.b32`` (default mode): byte i of the result = byte sel[4i+3:4i] of {b, a}."""
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    both = a | (b << 32)
    out = np.zeros(np.broadcast(a, b).shape, dtype=np.uint64)
    for i in range(4):
        k = (sel >> (4 * i)) & 0x7
        out |= ((both >> (8 * k)) & 0xFF) << (8 * i)
    return out.astype(np.uint32)


def i8pair_to_h2(x: np.ndarray, sel: int) -> np.ndarray:
    """Replay of the kernel's int8 pair -> fp16x2 conversion."""
    r = prmt(np.asarray(x, dtype=np.uint32) ^ np.uint32(0x80808080), 0x64646464, sel)
    lo, hi = _u32_to_h2(r)
    c = np.float16(1152.0)
    return _h2_to_u32((lo.astype(np.float16) - c), (hi.astype(np.float16) - c))


SEL_LO, SEL_HI = 0x4140, 0x4342


def mma16816(c: np.ndarray, a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    """Replay of ``mma.sync.m16n8k16.row.col.f32.f16.f16.f32``.

    c (32, 4) float32 per lane; a: 4 arrays (32,) u32; b: 2 arrays (32,) u32.
    """
    A = np.zeros((16, 16), dtype=np.float64)
    B = np.zeros((16, 8), dtype=np.float64)
    for reg, (row_off, k_off) in enumerate([(0, 0), (8, 0), (0, 8), (8, 8)]):
        lo, hi = _u32_to_h2(a[reg])
        A[G + row_off, 2 * T + k_off] = lo
        A[G + row_off, 2 * T + k_off + 1] = hi
    for reg, k_off in enumerate([0, 8]):
        lo, hi = _u32_to_h2(b[reg])
        B[2 * T + k_off, G] = lo
        B[2 * T + k_off + 1, G] = hi
    C = A @ B
    out = c.astype(np.float32).copy()
    out[:, 0] += C[G, 2 * T]
    out[:, 1] += C[G, 2 * T + 1]
    out[:, 2] += C[G + 8, 2 * T]
    out[:, 3] += C[G + 8, 2 * T + 1]
    return out.astype(np.float32)


def _load16(buf: np.ndarray, byte_off: np.ndarray) -> np.ndarray:
    """16-byte loads at byte offsets (32,) of a uint8 buffer -> (32, 4) u32."""
    idx = byte_off[:, None] + np.arange(16)[None, :]
    return buf[idx].copy().view(np.uint32).reshape(len(byte_off), 4)


def stage_query(q16: np.ndarray, nrows: int, nqt: int, D: int, W: int) -> np.ndarray:
    """qf[i] (uint4 as (4,) u32) exactly as ``stage_query`` in the .cu file."""
    CW, NCH, WQ = 4 * W, D // (4 * W), W // 8
    total = nqt * NCH * WQ * 32
    qbytes = np.ascontiguousarray(q16, dtype=np.float16).view(np.uint8).reshape(-1)
    qf = np.zeros((total, 4), dtype=np.uint32)
    for i in range(total):
        lane = i & 31
        rest = i >> 5
        w = rest % WQ
        rest //= WQ
        c = rest % NCH
        nt = rest // NCH
        row = nt * 8 + (lane >> 2)
        dim0 = c * CW + (lane & 3) * W + w * 8
        if row < nrows:
            off = (row * D + dim0) * 2
            qf[i] = qbytes[off: off + 16].copy().view(np.uint32)
    return qf


def _a_regs(int8: bool, lo_row: np.ndarray, hi_row: np.ndarray, s: int) -> list[np.ndarray]:
    if int8:
        x, y = lo_row[:, s], hi_row[:, s]
        return [i8pair_to_h2(x, SEL_LO), i8pair_to_h2(y, SEL_LO), i8pair_to_h2(x, SEL_HI), i8pair_to_h2(y, SEL_HI)]
    return [lo_row[:, 2 * s], hi_row[:, 2 * s], lo_row[:, 2 * s + 1], hi_row[:, 2 * s + 1]]


def _shfl_max_groups(v: np.ndarray) -> np.ndarray:
    """max over xor 4, 8, 16 (all g) for each t: (32,) -> (32,) (lanes with g == 0 valid)."""
    for o in (4, 8, 16):
        v = np.maximum(v, v[LANES ^ o])
    return v


def emulate_single(query: np.ndarray, tokens: np.ndarray, scales: np.ndarray | None,
                   starts: np.ndarray, lengths: np.ndarray, *, nqt: int, mt: int, warps: int = 8) -> np.ndarray:
    """Replay ``maxsim_single<D, NQT, INT8, MT, WARPS>``.

    query (nq, D) fp16 (D already padded); tokens (T, D) fp16 or int8 (+ scales (T,)).
    """
    int8 = tokens.dtype == np.int8
    D = tokens.shape[1]
    W = 16 if int8 else 8
    CW, NCH, WQ, ESZ, STEPS = 4 * W, D // (4 * W), W // 8, (1 if int8 else 2), W // 4
    CG = max(c for c in range(1, (2 if int8 else 4) + 1) if NCH % c == 0 and c <= NCH)
    nq = query.shape[0]
    qf = stage_query(query, nq, nqt, D, W)
    buf = np.ascontiguousarray(tokens).view(np.uint8).reshape(-1)
    out = np.empty(len(starts), dtype=np.float32)
    for item, (start, length) in enumerate(zip(starts, lengths)):
        wmax = np.full((warps, nqt * 8), -np.inf, dtype=np.float32)
        ntiles = (length + 16 * mt - 1) // (16 * mt)
        for warp in range(warps):
            rmax = np.full((nqt, 2, 32), -np.inf, dtype=np.float32)
            for tile in range(warp, ntiles, warps):
                rowp = {}
                sc = {}
                for m in range(mt):
                    for h in range(2):
                        r = tile * 16 * mt + m * 16 + G + 8 * h
                        r = np.where(r < length, r, length - 1)
                        rowp[m, h] = (start + r) * (D * ESZ) + T * W * ESZ
                        sc[m, h] = scales[start + r].astype(np.float32) if int8 else np.ones(32, np.float32)
                acc = np.zeros((mt, nqt, 32, 4), dtype=np.float32)
                for c0 in range(0, NCH, CG):
                    a = {(m, h, cc): _load16(buf, rowp[m, h] + (c0 + cc) * CW * ESZ)
                         for m in range(mt) for h in range(2) for cc in range(CG)}
                    for cc in range(CG):
                        for s in range(STEPS):
                            av = [_a_regs(int8, a[m, 0, cc], a[m, 1, cc], s) for m in range(mt)]
                            for j in range(nqt):
                                base = ((j * NCH + c0 + cc) * WQ + (s >> 1)) * 32
                                qv = qf[base + LANES]
                                b = [qv[:, (s & 1) * 2], qv[:, (s & 1) * 2 + 1]]
                                for m in range(mt):
                                    acc[m, j] = mma16816(acc[m, j], av[m], b)
                for m in range(mt):
                    for j in range(nqt):
                        for e in range(2):
                            rmax[j, e] = np.maximum(rmax[j, e], np.maximum(acc[m, j, :, e] * sc[m, 0],
                                                                           acc[m, j, :, e + 2] * sc[m, 1]))
            for j in range(nqt):
                for e in range(2):
                    v = _shfl_max_groups(rmax[j, e])
                    for t in range(4):   # lanes with g == 0 are lanes 0..3
                        wmax[warp, j * 8 + 2 * t + e] = v[t]
        colmax = wmax.max(axis=0)[:nq]
        out[item] = np.float32(colmax.sum(dtype=np.float32)) if length > 0 else -np.inf
    return out


def emulate_batch(queries: list[np.ndarray], tokens: np.ndarray, scales: np.ndarray | None,
                  starts: np.ndarray, lengths: np.ndarray, *, mt: int, warps: int = 8) -> np.ndarray:
    """Replay ``maxsim_batch<D, INT8, MT, WARPS>`` for one launch (all queries fit)."""
    int8 = tokens.dtype == np.int8
    D = tokens.shape[1]
    W = 16 if int8 else 8
    NCH, ESZ, HCH = D // (4 * W), (1 if int8 else 2), D // 32
    qstack = np.concatenate(queries).astype(np.float16)
    qoff = np.concatenate([[0], np.cumsum([q.shape[0] for q in queries])])
    nrows = qstack.shape[0]
    nqt = (nrows + 7) // 8
    qf = stage_query(qstack, nrows, nqt, D, W)
    buf = np.ascontiguousarray(tokens).view(np.uint8).reshape(-1)
    out = np.empty((len(queries), len(starts)), dtype=np.float32)
    for item, (start, length) in enumerate(zip(starts, lengths)):
        rowmax = np.full((warps, nqt * 8), -np.inf, dtype=np.float32)
        ntiles = (length + 16 * mt - 1) // (16 * mt)
        for warp in range(warps):
            for tile in range(warp, ntiles, warps):
                ah = {}
                sc = {}
                for m in range(mt):
                    for h in range(2):
                        r = tile * 16 * mt + m * 16 + G + 8 * h
                        r = np.where(r < length, r, length - 1)
                        sc[m, h] = scales[start + r].astype(np.float32) if int8 else np.ones(32, np.float32)
                        rp = (start + r) * (D * ESZ)
                        if int8:
                            for c in range(NCH):
                                v = _load16(buf, rp + c * 64 + T * 16)
                                ah[m, h, 2 * c] = np.stack([i8pair_to_h2(v[:, 0], SEL_LO), i8pair_to_h2(v[:, 0], SEL_HI),
                                                            i8pair_to_h2(v[:, 1], SEL_LO), i8pair_to_h2(v[:, 1], SEL_HI)], 1)
                                ah[m, h, 2 * c + 1] = np.stack([i8pair_to_h2(v[:, 2], SEL_LO), i8pair_to_h2(v[:, 2], SEL_HI),
                                                                i8pair_to_h2(v[:, 3], SEL_LO), i8pair_to_h2(v[:, 3], SEL_HI)], 1)
                        else:
                            for c in range(HCH):
                                ah[m, h, c] = _load16(buf, rp + (c * 32 + T * 8) * 2)
                for j in range(nqt):
                    acc = np.zeros((mt, 32, 4), dtype=np.float32)
                    for c in range(HCH):
                        qv = qf[(j * HCH + c) * 32 + LANES]
                        for s in range(2):
                            b = [qv[:, 2 * s], qv[:, 2 * s + 1]]
                            for m in range(mt):
                                a = [ah[m, 0, c][:, 2 * s], ah[m, 1, c][:, 2 * s],
                                     ah[m, 0, c][:, 2 * s + 1], ah[m, 1, c][:, 2 * s + 1]]
                                acc[m] = mma16816(acc[m], a, b)
                    for e in range(2):
                        v = np.full(32, -np.inf, dtype=np.float32)
                        for m in range(mt):
                            v = np.maximum(v, np.maximum(acc[m, :, e] * sc[m, 0], acc[m, :, e + 2] * sc[m, 1]))
                        v = _shfl_max_groups(v)
                        for t in range(4):
                            col = j * 8 + 2 * t + e
                            rowmax[warp, col] = max(rowmax[warp, col], v[t])
        rm = rowmax.max(axis=0)
        for b in range(len(queries)):
            out[b, item] = rm[qoff[b]: qoff[b + 1]].sum(dtype=np.float32) if length > 0 else -np.inf
    return out
