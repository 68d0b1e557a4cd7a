"""Token quantization: int8 with one scale per token, and binary signs.

int8 (symmetric, per token): ``scale_t = max_k |x_tk| / 127`` and
``q_tk = round(x_tk / scale_t)`` in [-127, 127], so ``x_tk ≈ q_tk * scale_t``
with ``|x_tk - q_tk * scale_t| <= scale_t / 2``. A similarity then errs by at
most ``||query_i||_1 * scale_t / 2`` (:func:`int8_error_bound`). Queries stay
in fp16/fp32: only the stored tokens are quantized, which halves the bytes a
memory-bound scorer reads.

Stored bytes of one row (the ``storage`` tier of an index; no header, the tier
and ``dim`` come from the index, so ``n`` follows from the length). These are the
only two layouts; PL/Python, the scorer and the pure-SQL path decode the same bytes:

- ``fp16``: ``n * dim`` IEEE half floats, little-endian, token-major
  (token ``t``, dim ``k`` at byte ``2 * (t * dim + k)``). ``2 * n * dim`` bytes.
- ``int8``: ``n`` float32 little-endian scales, then ``n * dim`` int8 codes,
  token-major (code of token ``t``, dim ``k`` at byte ``4 * n + t * dim + k``);
  value = code * scale of its token. ``n * (dim + 4)`` bytes (~0.52x fp16 at d=128).
  Scales first: they stay 4-byte aligned in the buffer, and a reader learns
  ``n = len / (dim + 4)`` before it reaches the codes.

Binary: one sign bit per dimension, packed 8 per byte; similarity of sign
vectors is ``d - 2 * hamming``. A coarse, cheap prefilter only.
"""

from __future__ import annotations

import numpy as np


def quantize_int8(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``tokens`` (T, d) float -> (int8 (T, d), scales (T,) float32).

    All-zero tokens get scale 0 (and dequantize to exact zeros).

    >>> q, s = quantize_int8(np.array([[0.5, -1.0, 0.25]]))
    >>> q.tolist(), [round(float(v), 6) for v in s]
    ([[64, -127, 32]], [0.007874])
    """
    x = np.array(tokens, dtype=np.float32)   # a copy, worked on in place (one float32 buffer in all)
    if x.ndim != 2:
        raise ValueError(f"tokens must be (T, d), got shape {x.shape}")
    if x.shape[1]:
        amax = np.maximum(x.max(axis=1), -x.min(axis=1))   # max |x| without an abs() copy
    else:
        amax = np.zeros(x.shape[0], dtype=np.float32)
    scales = (amax / 127.0).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1.0))
    np.divide(x, safe[:, None], out=x)
    np.rint(x, out=x)
    np.clip(x, -127, 127, out=x)   # only a subnormal scale (amax < ~1e-36) can push past 127
    return x.astype(np.int8), scales


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


STORAGE_TIERS = ("fp16", "int8")


class StoredTokensError(ValueError):
    """Stored token bytes that do not fit their layout."""


def encode_fp16(tokens: np.ndarray) -> bytes:
    """``(n, dim)`` float tokens -> the ``fp16`` bytes (little-endian half floats, token-major).

    >>> encode_fp16(np.array([[1.0, -2.0]])).hex()
    '003c00c0'
    """
    return np.ascontiguousarray(tokens, dtype="<f2").tobytes()


def decode_fp16(blob: bytes, dim: int) -> np.ndarray:
    """``fp16`` bytes -> ``(n, dim)`` float16, a read-only view of ``blob`` (nothing copied).

    >>> decode_fp16(bytes.fromhex('003c00c0'), 2).tolist()
    [[1.0, -2.0]]
    """
    if dim <= 0 or len(blob) % (2 * dim):
        raise StoredTokensError(f"fp16 tokens of {len(blob)} bytes do not hold whole {dim}-dimension vectors")
    return np.frombuffer(blob, dtype="<f2").reshape(-1, dim)


def encode_int8(tokens: np.ndarray) -> bytes:
    """``(n, dim)`` float tokens -> the ``int8`` bytes: ``n`` float32 LE scales, then ``n * dim`` codes.

    Quantized by :func:`quantize_int8` (the one int8 quantizer).

    >>> encode_int8(np.array([[0.5, -1.0, 0.25]])).hex()   # scale 1/127 (0x3c010204), then 64, -127, 32
    '0402013c408120'
    """
    q, scales = quantize_int8(tokens)
    return scales.astype("<f4").tobytes() + q.tobytes()


def decode_int8(blob: bytes, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``int8`` bytes -> ``(codes (n, dim) int8, scales (n,) float32)``, read-only views of ``blob``.

    >>> codes, scales = decode_int8(encode_int8(np.array([[0.5, -1.0, 0.25]])), 3)
    >>> codes.tolist(), [round(float(s), 6) for s in scales]
    ([[64, -127, 32]], [0.007874])
    """
    if dim <= 0 or len(blob) % (dim + 4):
        raise StoredTokensError(f"int8 tokens of {len(blob)} bytes do not hold whole {dim}-dimension vectors"
                                f" with their scales ({dim + 4} bytes each)")
    n = len(blob) // (dim + 4)
    scales = np.frombuffer(blob, dtype="<f4", count=n)
    codes = np.frombuffer(blob, dtype=np.int8, offset=4 * n).reshape(n, dim)
    return codes, scales


def encode_tokens(tokens: np.ndarray, storage: str) -> bytes:
    """One row's tokens ``(n, dim)`` -> its stored bytes in tier ``storage`` (``fp16`` or ``int8``)."""
    if storage == "fp16":
        return encode_fp16(tokens)
    if storage == "int8":
        return encode_int8(tokens)
    raise ValueError(f"unknown storage {storage!r} (expected one of {', '.join(STORAGE_TIERS)})")


def decode_tokens(blob: bytes, dim: int, storage: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Stored bytes -> ``(tokens (n, dim) float16 or int8, scales (n,) float32 or None)``, views of ``blob``.

    What every scorer takes (:func:`pgmaxsim.kernels.numpy_maxsim.maxsim_docs`); for float
    values use :func:`dequantize` on the result.
    """
    if storage == "fp16":
        return decode_fp16(blob, dim), None
    if storage == "int8":
        return decode_int8(blob, dim)
    raise ValueError(f"unknown storage {storage!r} (expected one of {', '.join(STORAGE_TIERS)})")


def dequantize(tokens: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    """Decoded tokens (fp16, or int8 with scales) -> float32 ``(n, dim)``: the values they stand for."""
    if scales is None:
        return np.asarray(tokens, dtype=np.float32)
    return dequantize_int8(tokens, scales)


def stored_nbytes(n_tokens: int, dim: int, storage: str) -> int:
    """Bytes of one row of ``n_tokens`` in tier ``storage``.

    >>> stored_nbytes(1000, 128, "fp16"), stored_nbytes(1000, 128, "int8")
    (256000, 132000)
    """
    per = {"fp16": 2 * dim, "int8": dim + 4}.get(storage)
    if per is None:
        raise ValueError(f"unknown storage {storage!r} (expected one of {', '.join(STORAGE_TIERS)})")
    return n_tokens * per


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
