"""Decode ``array_send(halfvec[])`` blobs straight into one packed float32 matrix.

Same wire format as :mod:`pgmaxsim.db.codec` (see there), but decoding a batch
of rows at once: each row's fixed-stride element records are viewed in place as
16-bit words, the words of all rows are gathered into one contiguous array, and
a 65,536-entry table maps each (byte-swapped) fp16 bit pattern straight to its
float32 value. That single gather replaces byte swapping plus NumPy's scalar
fp16 → float32 cast, about twice as fast. Rows with ``tokens_packed`` (the same
values as raw little-endian fp16) skip array_send's per-element work entirely.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from pgmaxsim.db.codec import CodecError, decode_halfvec_array

_HEAD = struct.Struct("!iiIiii")  # ndim, has_nulls, elem oid, n, lbound, first element length


# float32 value of every fp16 bit pattern read as a little-endian uint16: for little-endian
# fp16 (tokens_packed) and for the big-endian fp16 of array_send (byte-swapped patterns)
_LE_HALF_TO_F32 = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
_BE_HALF_TO_F32 = np.arange(65536, dtype=np.uint16).byteswap().view(np.float16).astype(np.float32)


def _records(blob: bytes, dim: int) -> np.ndarray:
    """The ``(n, dim)`` raw 16-bit words (big-endian fp16 read as ``<u2``) of one blob (validated)."""
    if len(blob) < _HEAD.size:
        decode_halfvec_array(blob)  # raises the precise error (empty/NULL/truncated)
        raise CodecError("empty token array")
    ndim, has_nulls, _oid, n, _lb, first = _HEAD.unpack_from(blob, 0)
    stride = 8 + 2 * dim
    if ndim != 1 or has_nulls or first != 4 + 2 * dim or len(blob) != 20 + n * stride:
        arr = decode_halfvec_array(blob)  # raises with a precise message, or has another dim
        raise CodecError(f"token vectors have {arr.shape[1]} dimensions, expected {dim}")
    words = np.frombuffer(blob, dtype="<u2", count=n * (4 + dim), offset=20).reshape(n, 4 + dim)
    # word 2 of each record is the element's dim (big-endian int16); all must equal `dim`
    if n and (words[:, 2] != np.array([dim], dtype=">u2").view("<u2")[0]).any():
        raise CodecError(f"token vectors have mixed dimensions, expected {dim}")
    return words[:, 4:]


def pack(blobs: Sequence[bytes], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Blobs of ``m`` rows → ``(tokens (N, dim) float32, offsets (m + 1,) int64)``.

    Row ``i``'s tokens are ``tokens[offsets[i]:offsets[i + 1]]``.
    """
    return pack_rows([(None, b) for b in blobs], dim)


def _packed_words(packed: bytes, dim: int) -> np.ndarray:
    if len(packed) == 0 or len(packed) % (2 * dim):
        raise CodecError(f"packed tokens of {len(packed)} bytes do not hold whole {dim}-dimension vectors")
    return np.frombuffer(packed, dtype="<u2").reshape(-1, dim)


def row_words(packed: bytes | None, blob: bytes | None, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """One row as ``(words (n, dim) uint16 view, table)``: ``table[words]`` is its float32 tokens.

    ``packed`` (``tokens_packed``, raw little-endian fp16) is used when present, else the
    ``array_send`` blob. Nothing is copied yet.
    """
    if packed is not None:
        return _packed_words(packed, dim), _LE_HALF_TO_F32
    if blob is None:
        raise CodecError("row has neither tokens_packed nor tokens")
    return _records(blob, dim), _BE_HALF_TO_F32


def convert(words: np.ndarray, table: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``table[words]`` into ``out`` (same shape), float32. One gather; indices are always valid."""
    return np.take(table, words, out=out, mode="wrap")


def pack_rows(rows: Sequence[tuple[bytes | None, bytes | None]], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`pack`, for rows given as ``(tokens_packed, array_send blob)`` pairs."""
    parts = [row_words(p, b, dim) for p, b in rows]
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([w.shape[0] for w, _ in parts], out=offsets[1:])
    out = np.empty((int(offsets[-1]), dim), dtype=np.float32)
    for (words, table), start, end in zip(parts, offsets[:-1], offsets[1:]):
        convert(words, table, out[start:end])
    return out, offsets


def to_packed(tokens: np.ndarray) -> bytes:
    """``(n, d)`` tokens → the ``tokens_packed`` bytes (raw little-endian fp16)."""
    return np.ascontiguousarray(tokens, dtype="<f2").tobytes()


def decode_query(blob: bytes) -> np.ndarray:
    """One ``halfvec[]`` blob → ``(n, d)`` float32 (raises CodecError on NULLs / mixed dims)."""
    return decode_halfvec_array(blob).astype(np.float32)
