"""Token quantization: int8 with one scale per token, and binary signs.

int8 (symmetric, per token): ``scale_t = max_k |x_tk| / 127`` and
``q_tk = round(x_tk / scale_t)`` in [-127, 127], so ``x_tk ≈ q_tk * scale_t``
with ``|x_tk - q_tk * scale_t| <= scale_t / 2``. A similarity then errs by at
most ``||query_i||_1 * scale_t / 2`` (:func:`int8_error_bound`). Queries stay
in fp16/fp32: only the stored tokens are quantized, which halves the bytes a
memory-bound scorer reads.

Binary: one sign bit per dimension, packed 8 per byte; similarity of sign
vectors is ``d - 2 * hamming``. A coarse, cheap prefilter only.
"""

from __future__ import annotations

import numpy as np


def quantize_int8(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``tokens`` (T, d) float -> (int8 (T, d), scales (T,) float32).

    All-zero tokens get scale 0 (and dequantize to exact zeros).

    >>> q, s = quantize_int8(np.array([[0.5, -1.0, 0.25]]))
    >>> q.tolist(), s.round(6).tolist()
    ([[64, -127, 32]], [0.007874])
    """
    x = np.asarray(tokens, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"tokens must be (T, d), got shape {x.shape}")
    amax = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(x.shape[0], dtype=np.float32)
    scales = (amax / 127.0).astype(np.float32)
    safe = np.where(scales > 0, scales, 1.0).astype(np.float32)
    q = np.clip(np.rint(x / safe[:, None]), -127, 127).astype(np.int8)
    return q, scales


def dequantize_int8(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """(T, d) int8 and (T,) scales -> float32 (T, d)."""
    return q.astype(np.float32) * np.asarray(scales, dtype=np.float32)[:, None]


def int8_error_bound(query: np.ndarray, scales: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per-document bound on |MaxSim(int8) - MaxSim(float)|: ``sum_i ||q_i||_1 * max_t scale_t / 2``.

    Each max over a document's tokens moves by at most the largest per-token
    error bound among that document's tokens; the sum over query tokens adds
    those bounds up. query (nq, d); scales (T,); offsets (n + 1,) -> (n,).
    """
    l1 = np.abs(np.asarray(query, dtype=np.float64)).sum(axis=1).sum()
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    out = np.zeros(len(lengths), dtype=np.float64)
    ne = lengths > 0
    if ne.any():
        out[ne] = np.maximum.reduceat(np.asarray(scales, dtype=np.float64), offsets[:-1][ne]) * l1 / 2
    return out


def binarize(tokens: np.ndarray) -> np.ndarray:
    """(T, d) float -> (T, ceil(d / 8)) uint8 sign bits (bit set = value > 0)."""
    return np.packbits(np.asarray(tokens) > 0, axis=1)


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def maxsim_binary(query_bits: np.ndarray, doc_bits: np.ndarray, dim: int) -> float:
    """MaxSim of ±1 sign vectors: ``sum_i max_j (dim - 2 * hamming(q_i, d_j))``.

    query_bits (nq, B) and doc_bits (nd, B) from :func:`binarize`.
    """
    if doc_bits.shape[0] == 0:
        return float("-inf")
    x = np.bitwise_xor(query_bits[:, None, :], doc_bits[None, :, :])
    ham = _POPCOUNT[x].sum(axis=2, dtype=np.int64)
    return float((dim - 2 * ham).max(axis=1).sum())
