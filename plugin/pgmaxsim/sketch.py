"""Residual sign sketches of tokens, and their XTR-WARP scoring (pure NumPy; bench/FIRST_STAGE.md).

The codebook first stage (:mod:`pgmaxsim.firststage`) knows, per row, only which codes its tokens
fall in: a row holding one near-copy of a query token looks like every other row of that code. A
*sketch* adds 8 bytes per token: the signs of 64 coordinates of the token's residual against its
code's centroid, after a fixed random rotation (``sign64`` in bench/needle_sketch.py). With them a
probed token's similarity to a query token is estimated as::

    q . t  ~=  q . c  +  q . r_hat,     r_hat = rot @ (scale * mag * sign(rot^T r))

which is what separates a near-copy (~0.95) from the other tokens of its code. The tokens are kept
in cluster-major lists (code -> entries), so a query reads only the entries of the codes it probes.

A row's sketch score is XTR-WARP's: per query token the best estimate among its probed entries of
that row, else the token's lowest probed centroid similarity (the missing-similarity floor).

Shapes: ``d`` dims, ``nq`` query tokens, ``p`` probed codes per query token, ``E`` list entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np

from pgmaxsim import firststage as fs
from pgmaxsim.kernels.numpy_maxsim import gather_positions

#: Sign bits per token: 8 bytes (sign64 reached the needle target at 10K; sign32 slipped).
BITS = 64
#: Seed of the fixed rotation (a retrain keeps it: only the magnitudes are learnt).
SEED = 5


@lru_cache(maxsize=8)
def rotation(d: int, bits: int = BITS, seed: int = SEED) -> np.ndarray:
    """``(d, min(bits, d))`` orthonormal columns of a fixed random rotation (deterministic in d, seed).

    >>> r = rotation(16, 8); r.shape, bool(np.allclose(r.T @ r, np.eye(8), atol=1e-5))
    ((16, 8), True)
    """
    if bits >= d:
        return np.eye(d, dtype=np.float32)
    q, _ = np.linalg.qr(np.random.default_rng([seed, 5]).standard_normal((d, d)))
    return np.ascontiguousarray(q[:, :bits], dtype=np.float32)


@dataclass(frozen=True)
class Codec:
    """The sketch codec of one codebook generation: the rotation and the mean |coordinate|."""

    mag: np.ndarray   # (bits,) float32

    @property
    def bits(self) -> int:
        return len(self.mag)

    def rot(self, d: int) -> np.ndarray:
        return rotation(d, self.bits)


def residuals(cb: fs.Codebook, tokens: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``(n, d)`` unit tokens minus their codes' centroids."""
    return fs.normalise(np.asarray(tokens, dtype=np.float32)) - cb.centroid(codes)


def train(cb: fs.Codebook, tokens: np.ndarray, codes: np.ndarray, bits: int = BITS) -> Codec:
    """The codec of codebook ``cb`` from a sample of tokens and their codes."""
    r = residuals(cb, tokens, codes) @ rotation(tokens.shape[1], bits)
    return Codec(np.abs(r).mean(0).astype(np.float32) if len(r) else np.full(r.shape[1], 1e-3, np.float32))


def encode(cb: fs.Codebook, codec: Codec, tokens: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``(n, bits // 8)`` uint8: each token's packed residual signs."""
    return np.packbits(residuals(cb, tokens, codes) @ codec.rot(tokens.shape[1]) > 0, axis=1)


@dataclass(frozen=True)
class Entries:
    """List entries of some codes: for entry ``e`` its code, row version and sketch."""

    code: np.ndarray     # (E,) int64
    version: np.ndarray  # (E,) int64
    sk: np.ndarray       # (E, bits // 8) uint8

    @classmethod
    def concat(cls, parts: list[Entries], nbytes: int) -> Entries:
        if not parts:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, nbytes), np.uint8))
        return cls(np.concatenate([p.code for p in parts]), np.concatenate([p.version for p in parts]),
                   np.concatenate([p.sk for p in parts]))


def pack_versions(v: np.ndarray) -> tuple[int, bytes]:
    """A list row's versions as ``(base, bytes)``, in the smallest of three forms, which the reader
    tells apart by length (``n`` entries):

    - ``2n``: uint16 steps, ``base`` the first version and the first step 0 (versions in
      non-decreasing order, no gap past 65,535: the merges write each list in version order, so
      every list but a rare code's spread over a long history);
    - ``4n``: uint32 offsets from ``base``, the smallest;
    - ``8n``: int64 versions (``base`` 0).

    Two bytes an entry instead of four: a sixth of the lists (10 bytes a token instead of 12).

    >>> b, raw = pack_versions(np.array([7, 9, 12])); b, len(raw), unpack_versions(b, raw, 3).tolist()
    (7, 6, [7, 9, 12])
    >>> b, raw = pack_versions(np.array([12, 7, 9])); b, len(raw), unpack_versions(b, raw, 3).tolist()
    (7, 12, [12, 7, 9])
    >>> b, raw = pack_versions(np.array([7, 70_000])); b, len(raw), unpack_versions(b, raw, 2).tolist()
    (7, 8, [7, 70000])
    """
    if not len(v):
        return 0, b""
    step = np.diff(v)
    if (step >= 0).all() and (not len(step) or int(step.max()) < 2**16):
        return int(v[0]), np.concatenate([[0], step]).astype("<u2").tobytes()
    base = int(v.min())
    off = v - base
    if int(off.max()) >= 2**32:
        return 0, v.astype("<i8").tobytes()
    return base, off.astype("<u4").tobytes()


def unpack_versions(base: int, raw: bytes, n: int) -> np.ndarray:
    """The versions :func:`pack_versions` packed (``n`` of them)."""
    return unpack_lists(np.array([base], np.int64), np.array([len(raw)], np.int64), np.array([n], np.int64), raw)


def unpack_lists(base: np.ndarray, olen: np.ndarray, n: np.ndarray, raw: bytes) -> np.ndarray:
    """The versions of several list rows whose packed versions (:func:`pack_versions`) are
    concatenated in ``raw``: row ``i`` has ``n[i]`` entries, ``olen[i]`` bytes and ``base[i]``.
    Vectorised over the rows (a query reads ~1,000-30,000 of them, in any mix of the three forms).

    >>> rows = [pack_versions(np.array(v)) for v in ([3, 3, 5], [9, 2], [1, 2**40])]
    >>> unpack_lists(np.array([b for b, _ in rows]), np.array([len(r) for _, r in rows]),
    ...              np.array([3, 2, 2]), b"".join(r for _, r in rows)).tolist()
    [3, 3, 5, 9, 2, 1, 1099511627776]
    """
    base, olen, n = (np.asarray(a, dtype=np.int64) for a in (base, olen, n))
    width = np.floor_divide(olen, np.maximum(n, 1))   # bytes an entry: 2, 4 or 8
    buf = np.frombuffer(raw, dtype=np.uint8)
    out = np.empty(int(n.sum()), dtype=np.int64)
    for w, dtype in ((2, "<u2"), (4, "<u4"), (8, "<i8")):
        rows = width == w
        if not rows.any():
            continue
        every = bool(rows.all())   # the common case: one form throughout, no masks
        at = slice(None) if every else np.repeat(rows, n)
        vals = (buf if every else buf[np.repeat(rows, olen)]).view(dtype).astype(np.int64)
        m = n[rows]
        if w == 2:   # steps: a cumulative sum restarted at each row's first entry (whose step is 0)
            c = np.cumsum(vals)
            vals = c - np.repeat(c[np.cumsum(m) - m], m)
        out[at] = vals + np.repeat(base[rows], m)
    return out


def weights(codec: Codec, qn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per unit query token ``(nq, d)``: bit weights ``(nq, bits)`` and offsets ``(nq,)`` such that
    ``q_i . r_hat = 2 * bits . w_i - off_i``."""
    w = (qn @ codec.rot(qn.shape[1])) * codec.mag * (qn.shape[1] / codec.bits)
    return w.astype(np.float32), w.sum(1).astype(np.float32)


_BITS_OF_BYTE = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float32)   # (256, 8)


def byte_tables(w: np.ndarray) -> np.ndarray:
    """``(nq, bits // 8, 256)``: for query token i, sketch byte k holding value b, the sum of
    ``w[i]`` over the bits set in b (packbits order: the first of 8 coordinates is the high bit).
    Scoring then reads 8 table entries per sketch instead of unpacking 64 bits.

    >>> w = np.arange(16, dtype=np.float32)[None, :]
    >>> float(byte_tables(w)[0, 1, 0b10000001])   # bits 0 and 7 of byte 1: w[8] + w[15]
    23.0
    """
    nq, bits = w.shape
    return np.einsum("vj,qkj->qkv", _BITS_OF_BYTE, w.reshape(nq, bits // 8, 8)).astype(np.float32)


@dataclass(frozen=True)
class Scores:
    """Sketch scores of the row versions a query reached (``versions`` sorted)."""

    versions: np.ndarray
    score: np.ndarray    # the XTR-WARP estimate from the sketches
    lifted: np.ndarray   # the same with each entry counted at least at its code's similarity
    base: float          # the score of a row reached by none (the sum of the floors)

    def top(self, n: int, lifted: bool = False) -> np.ndarray:
        """The ``n`` best versions: by the sketch score among those above ``base``, or (``lifted``)
        every version reached, by the lifted score."""
        if lifted:
            return top(self.versions, self.lifted, self.base, n, above=False)
        return top(self.versions, self.score, self.base, n)


def scores(codec: Codec, qn: np.ndarray, codes: np.ndarray, sims: np.ndarray, ent: Entries) -> Scores:
    """WARP scores of the row versions reached by probe ``(codes, sims)`` (each ``(nq, p)``, best
    first) over list entries ``ent`` of (at least) the probed codes.

    ``Scores.lifted`` counts an entry at least at its code's similarity (the codebook's probe
    score), so the sketch only raises rows above that ranking: the broad part of a query (topic
    words) ranks as the codebook ranks it, near-copies stand out. Ranking the whole budget by the
    plain sketch score instead cost recall@10 (0.64-0.87 instead of 0.86-0.98 on the 10K needle at
    0.6-2 %): noisy estimates below the centroid's similarity lose rows the credit the codebook gives.

    Cost: one pass per query token over the entries of its probed codes (~14K at 10K rows of ~1,000
    tokens; ~330K (token, entry) pairs a query), 8 table reads per entry. Expanding every pair at
    once and reading the table by a 3-D fancy index took 120-270 ms a query; per token, with the
    entries' sketch bytes gathered as one 64-bit word and read byte-plane by byte-plane, ~20 ms.
    """
    nq, p = codes.shape
    floor = sims[:, -1].astype(np.float32) if p else np.zeros(nq, np.float32)
    base = float(floor.sum())
    none = Scores(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32), base)
    if not len(ent.code) or not p:
        return none
    code, version, sk = _by_code(ent)
    begin, length = _spans(code, codes)
    if not length.any():
        return none
    reached = np.zeros(len(code), dtype=bool)
    for s, n in zip(begin[length > 0].tolist(), length[length > 0].tolist()):
        reached[s:s + n] = True
    versions, at = dense_ids(version[reached])
    slot = np.full(len(code), -1, dtype=np.int64)   # entry -> its version's column
    slot[reached] = at
    w, off = weights(codec, qn)
    lut = byte_tables(w)                                       # (nq, bytes, 256)
    planes = _byte_planes(sk)
    best = np.repeat(floor[:, None], len(versions), axis=1)   # an estimate below the floor keeps the floor
    lifted = best.copy()   # never below the probed centroid's similarity: the codebook's credit, plus the sketch's
    sims32 = sims.astype(np.float32)
    for i in range(nq):
        m = length[i] > 0
        if not m.any():
            continue
        b, n = begin[i][m], length[i][m]
        idx = gather_positions(b, n)                           # the entries of its codes
        g = planes(idx)                                        # (bytes, m) uint8
        dot = lut[i, 0].take(g[0])
        for k in range(1, len(g)):
            dot += lut[i, k].take(g[k])
        sim = np.repeat(sims32[i][m], n)
        est = sim + 2.0 * dot - off[i]
        np.maximum.at(best[i], slot[idx], est)
        np.maximum.at(lifted[i], slot[idx], np.maximum(est, sim))
    return Scores(versions, best.sum(0), lifted.sum(0), base)


def _by_code(ent: Entries) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The entries' codes, versions and sketches grouped by code (the backend reads them so: no sort)."""
    code = ent.code
    if len(code) > 1 and bool((code[1:] < code[:-1]).any()):
        order = np.argsort(code, kind="stable")
        return code[order], ent.version[order], ent.sk[order]
    return code, ent.version, ent.sk


def _spans(code: np.ndarray, probed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(nq, p)`` first entry and entry count of each probed code in ``code`` (grouped; 0: absent)."""
    start = np.concatenate([[0], np.flatnonzero(code[1:] != code[:-1]) + 1])
    count = np.diff(np.concatenate([start, [len(code)]]))
    ucode = code[start]
    flat = probed.ravel().astype(np.int64)
    at = np.minimum(np.searchsorted(ucode, flat), len(ucode) - 1)
    length = np.where(ucode[at] == flat, count[at], 0)
    return start[at].reshape(probed.shape), length.reshape(probed.shape)


def _byte_planes(sk: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``idx -> (bytes, len(idx))`` uint8: the sketches of entries ``idx``, one row per byte. With 8
    bytes each sketch is gathered as one uint64 (a row gather of 8 uint8 columns is ~3x slower)."""
    if sk.shape[1] == 8:
        words = np.ascontiguousarray(sk).view(np.uint64).ravel()
        return lambda idx: np.ascontiguousarray(words[idx].view(np.uint8).reshape(-1, 8).T)
    return lambda idx: np.ascontiguousarray(sk[idx].T)


def dense_ids(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(distinct values sorted, index of each value in them)`` of int64 ``v``, like
    ``np.unique(v, return_inverse=True)``; by a table over the value range when that is small
    (row versions come from a sequence: a few times the row count), else by a sort.

    >>> [x.tolist() for x in dense_ids(np.array([7, 3, 7, 5]))]
    [[3, 5, 7], [2, 0, 2, 1]]
    """
    if not len(v):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lo, hi = int(v.min()), int(v.max())
    if hi - lo >= 8 * len(v) + 65536:
        distinct, at = np.unique(v, return_inverse=True)
        return distinct.astype(np.int64), at.reshape(-1).astype(np.int64)
    seen = np.zeros(hi - lo + 1, dtype=bool)
    seen[v - lo] = True
    rank = np.cumsum(seen, dtype=np.int64) - 1
    return (np.flatnonzero(seen) + lo).astype(np.int64), rank[v - lo]


def top(versions: np.ndarray, score: np.ndarray, base: float, n: int, above: bool = True) -> np.ndarray:
    """The ``n`` best versions (best first; ties by version): those scoring above ``base``, or with
    ``above=False`` every version reached (a row holding a probed code whose tokens all estimate
    below the floors is still reached, as the codebook's probe score would find it)."""
    keep = score > base + 1e-6 if above else np.ones(len(score), bool)
    v, s = versions[keep], score[keep]
    order = np.lexsort((v, -s))[:n]
    return v[order]
