"""PostgreSQL binary format of ``halfvec[]`` ↔ NumPy, written once.

Everything that moves token embeddings (psycopg adapters, binary COPY, the
PL/Python functions, the scorer) goes through these two functions, so they
only import NumPy and the standard library: they also run inside PostgreSQL.

Wire format (PostgreSQL ``array_send`` around pgvector's ``halfvec_send``)::

    int32 ndim, int32 has_nulls, uint32 element oid,
    (int32 length, int32 lower bound) * ndim,
    per element: int32 byte length (-1 = NULL), then
                 int16 dim, int16 unused, dim * IEEE half   (all big-endian)

All elements of a token matrix share one dim, so the element records have a
fixed stride and decode as one structured NumPy view with no Python loop.
"""

from __future__ import annotations

import struct

import numpy as np

_HEADER = struct.Struct("!iiI")
_DIM = struct.Struct("!ii")


class CodecError(ValueError):
    """Malformed or unsupported ``halfvec[]`` binary data."""


#: fp16's overflow threshold: a value of at least this magnitude rounds to infinity in fp16 (65,504 is
#: the largest finite half, and values up to half an ulp above it still round down to it).
FP16_OVERFLOW = 65520.0


def fits_fp16(arr: np.ndarray) -> bool:
    """Whether fp16 holds every value of numeric ``arr``: none NaN, infinite or of magnitude
    :data:`FP16_OVERFLOW` or more (what a row's writer and a query's reader refuse). fp16 arrays
    (what most encoders give) by their bits, whose exponent is all ones only for NaN and
    infinities (~0.02 ms for 1,000 x 128; NumPy's fp16 min and max take ~1.9 ms); other real
    arrays by their min and max, which NaN propagates to (~0.03 ms for float32, where converting
    to fp16 and testing that took ~0.6 ms); anything else (complex) by converting it as NumPy casts.

    >>> fits_fp16(np.array([[1.0, np.nan]], dtype=np.float16)), fits_fp16(np.array([[65519.9, -65519.9]]))
    (False, True)
    >>> fits_fp16(np.array([[-65520.0]])), fits_fp16(np.array([[1, 2]], dtype=np.float16))
    (False, True)
    """
    if arr.size == 0:
        return True
    if arr.dtype == np.float16:
        return int((arr.view(np.uint16) & 0x7FFF).max()) < 0x7C00
    if np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating):
        return -FP16_OVERFLOW < float(arr.min()) and float(arr.max()) < FP16_OVERFLOW
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(arr.astype(np.float16)).all())


def _element_dtype(dim: int) -> np.dtype:
    return np.dtype([("len", ">i4"), ("dim", ">i2"), ("unused", ">i2"), ("x", ">f2", (dim,))])


def encode_halfvec_array(tokens: np.ndarray, element_oid: int) -> bytes:
    """Encode an ``(n, d)`` float array as the binary form of ``halfvec[]``.

    ``element_oid`` is the database's oid of type ``halfvec`` (it differs per
    database because pgvector is an extension). Values are rounded to fp16;
    non-finite values are rejected because pgvector rejects them too.
    """
    arr = np.asarray(tokens)
    if arr.ndim != 2:
        raise CodecError(f"token embeddings must be a 2-D (n_tokens, dim) array, got shape {arr.shape}")
    n, dim = arr.shape
    if n == 0:
        return _HEADER.pack(0, 0, element_oid)
    if not 1 <= dim <= 16000:
        raise CodecError(f"halfvec dim must be between 1 and 16000, got {dim}")
    half = arr.astype(np.float16)
    if not np.isfinite(half).all():
        raise CodecError("token embeddings contain NaN or infinite values (or values beyond fp16 range)")
    rec = np.empty(n, dtype=_element_dtype(dim))
    rec["len"] = 4 + 2 * dim
    rec["dim"] = dim
    rec["unused"] = 0
    rec["x"] = half
    return _HEADER.pack(1, 0, element_oid) + _DIM.pack(n, 1) + rec.tobytes()


def decode_halfvec_array(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Decode the binary form of a one-dimensional ``halfvec[]`` into ``(n, d)`` float16.

    An empty array decodes to shape ``(0, 0)``. NULL elements or elements of
    different dims raise :class:`CodecError`.
    """
    buf = memoryview(data).cast("B")
    if len(buf) < _HEADER.size:
        raise CodecError("truncated halfvec[] value")
    ndim, has_nulls, _oid = _HEADER.unpack_from(buf, 0)
    if ndim == 0:
        return np.zeros((0, 0), dtype=np.float16)
    if ndim != 1:
        raise CodecError(f"token arrays must be one-dimensional, got {ndim} dimensions")
    if has_nulls:
        raise CodecError("token array contains NULL elements")
    n, _lbound = _DIM.unpack_from(buf, _HEADER.size)
    offset = _HEADER.size + _DIM.size
    if n == 0:
        return np.zeros((0, 0), dtype=np.float16)
    (first_len,) = struct.unpack_from("!i", buf, offset)
    dim = (first_len - 4) // 2
    if first_len < 6 or (first_len - 4) % 2:
        raise CodecError("malformed halfvec element")
    dt = _element_dtype(dim)
    if len(buf) - offset != n * dt.itemsize:
        raise CodecError("halfvec elements have different dims (or the value is truncated)")
    rec = np.frombuffer(buf, dtype=dt, count=n, offset=offset)
    if (rec["len"] != first_len).any() or (rec["dim"] != dim).any():
        raise CodecError("halfvec elements have different dims")
    return rec["x"].astype(np.float16)


def encode_halfvec(vector: np.ndarray) -> bytes:
    """Binary form of one ``halfvec`` (for pooled vectors)."""
    v = np.asarray(vector, dtype=np.float16).reshape(-1)
    if not np.isfinite(v).all():
        raise CodecError("vector contains NaN or infinite values")
    return struct.pack("!hh", v.shape[0], 0) + v.astype(">f2").tobytes()


def decode_halfvec(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Decode one binary ``halfvec`` into a float16 vector."""
    buf = memoryview(data).cast("B")
    dim, _unused = struct.unpack_from("!hh", buf, 0)
    return np.frombuffer(buf, dtype=">f2", count=dim, offset=4).astype(np.float16)
