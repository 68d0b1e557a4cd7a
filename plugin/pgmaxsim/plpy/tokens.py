"""Decode ``array_send(halfvec[])`` blobs straight into one packed float32 matrix.

Same wire format as :mod:`pgmaxsim.db.codec` (see there), but decoding a batch
of rows at once: each row's fixed-stride element records are viewed in place
and converted big-endian fp16 → native float32 in one NumPy assignment into a
preallocated ``(total_tokens, d)`` matrix (no intermediate float16 copy).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from pgmaxsim.db.codec import CodecError, decode_halfvec_array

_HEAD = struct.Struct("!iiIiii")  # ndim, has_nulls, elem oid, n, lbound, first element length


def _records(blob: bytes, dim: int) -> np.ndarray:
    """The ``(n, dim)`` big-endian fp16 view of one blob (validated)."""
    if len(blob) < _HEAD.size:
        decode_halfvec_array(blob)  # raises the precise error (empty/NULL/truncated)
        raise CodecError("empty token array")
    ndim, has_nulls, _oid, n, _lb, first = _HEAD.unpack_from(blob, 0)
    stride = 8 + 2 * dim
    if ndim != 1 or has_nulls or first != 4 + 2 * dim or len(blob) != 20 + n * stride:
        arr = decode_halfvec_array(blob)  # raises with a precise message, or has another dim
        raise CodecError(f"token vectors have {arr.shape[1]} dimensions, expected {dim}")
    dt = np.dtype([("len", ">i4"), ("dim", ">i2"), ("unused", ">i2"), ("x", ">f2", (dim,))])
    rec = np.frombuffer(blob, dtype=dt, count=n, offset=20)
    if (rec["dim"] != dim).any():
        raise CodecError(f"token vectors have mixed dimensions, expected {dim}")
    return rec["x"]


def pack(blobs: Sequence[bytes], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Blobs of ``m`` rows → ``(tokens (N, dim) float32, offsets (m + 1,) int64)``.

    Row ``i``'s tokens are ``tokens[offsets[i]:offsets[i + 1]]``.
    """
    views = [_records(b, dim) for b in blobs]
    offsets = np.zeros(len(views) + 1, dtype=np.int64)
    np.cumsum([v.shape[0] for v in views], out=offsets[1:])
    out = np.empty((int(offsets[-1]), dim), dtype=np.float32)
    for v, start, end in zip(views, offsets[:-1], offsets[1:]):
        out[start:end] = v
    return out, offsets


def decode_query(blob: bytes) -> np.ndarray:
    """One ``halfvec[]`` blob → ``(n, d)`` float32 (raises CodecError on NULLs / mixed dims)."""
    return decode_halfvec_array(blob).astype(np.float32)
