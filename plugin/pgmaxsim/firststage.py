"""Token-level first stage: a global two-level codebook with inverted lists (pure NumPy).

Late interaction finds a row because *one* of its tokens is near *one* query token.
A per-row summary (mean vector, a few k-means centroids) averages that token away,
so the first stage here works at token granularity, in the manner of PLAID / XTR-WARP:

- **Codebook** (trained once on a sample of all tokens, retrained on drift): ``n_coarse``
  spherical k-means centroids, and inside each coarse cell ``n_fine`` spherical k-means
  centroids of the sample tokens that fell into it. A token's *code* is
  ``coarse * n_fine + fine``: its nearest coarse centroid, then the nearest fine centroid
  of that cell. Two levels keep writes cheap: a token costs ``n_coarse + n_fine`` dot
  products, not ``n_coarse * n_fine`` (65,536 codes for 512 dot products).
- **Inverted lists**: code -> the distinct rows that hold a token with that code. Writing a
  row = assigning its tokens to the *existing* codebook and adding (code, row) pairs;
  deleting it = removing them. Nothing else changes, so the structure stays exact.
- **Probe** (per query): each query token takes its ``coarse_probe`` nearest coarse cells,
  and among their fine centroids the ``nprobe`` nearest (with their similarities).
- **Candidate score** (WARP-style centroid interaction over the probed lists only): for a
  query token, a row scores the best similarity among the probed centroids it holds, or,
  where it holds none, the smallest probed similarity (the missing-similarity estimate:
  its true token is farther than every probed centroid). Summed over query tokens.
- **Rescore** (optional, PLAID's centroid interaction): of ``factor * candidates`` rows kept by
  that score, the best ``candidates`` by MaxSim with each token replaced by its centroid
  (:func:`centroid_interaction`, over all the row's codes). These rows go to exact MaxSim.

A row is a candidate whenever any of its tokens shares a probed code with a query token:
:func:`probed_rows` is that set, which tests check against a brute-force reference.

>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((400, 8)).astype(np.float32)
>>> cb = train(x, n_coarse=4, n_fine=4, seed=0)
>>> codes = assign(cb, x)
>>> bool(codes.min() >= 0 and codes.max() < cb.n_codes)
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from pgmaxsim.kernels.numpy_maxsim import gather_positions

T = TypeVar("T")

ROUNDS = 10
#: Tokens per assignment block: bounds the (block, n_coarse) similarity matrix.
BLOCK = 65_536


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def spherical_kmeans(x: np.ndarray, k: int, rounds: int = ROUNDS, seed: int = 0) -> np.ndarray:
    """``(n, d)`` -> ``(min(k, n), d)`` float32 unit centroids (Lloyd rounds on cosine).

    Starts from ``k`` distinct random rows; an emptied centroid is re-seeded with the
    token worst served by its centroid, so every centroid ends up holding tokens.
    """
    x = normalise(x)
    n = len(x)
    k = max(1, min(int(k), n))
    rng = np.random.default_rng(seed)
    cent = x[rng.choice(n, size=k, replace=False)].copy()
    for _ in range(rounds):
        sims = x @ cent.T
        assign_ = sims.argmax(axis=1)
        best = sims[np.arange(n), assign_]
        counts = np.bincount(assign_, minlength=k)
        order = np.argsort(assign_, kind="stable")  # segment sums: much faster than np.add.at
        sums = np.zeros_like(cent)
        held = np.flatnonzero(counts)
        sums[held] = np.add.reduceat(x[order], np.concatenate([[0], np.cumsum(counts)[:-1]])[held], axis=0)
        empty = np.flatnonzero(counts == 0)
        moved = normalise(sums)
        if len(empty):
            moved[empty] = x[np.argsort(best)[: len(empty)]]
        cent = moved
    return cent


@dataclass(frozen=True)
class Codebook:
    """``coarse`` (n_coarse, d) and ``fine`` (n_coarse, n_fine, d) unit float32 centroids.

    A cell with fewer than ``n_fine`` sample tokens repeats its last centroid; the repeats
    never win an argmax tie (the lowest index wins), so their codes stay unused.
    """

    coarse: np.ndarray
    fine: np.ndarray

    @property
    def n_coarse(self) -> int:
        return int(self.coarse.shape[0])

    @property
    def n_fine(self) -> int:
        return int(self.fine.shape[1])

    @property
    def n_codes(self) -> int:
        return self.n_coarse * self.n_fine

    def centroid(self, codes: np.ndarray) -> np.ndarray:
        """``(m,)`` codes -> ``(m, d)`` their fine centroids."""
        codes = np.asarray(codes)
        return self.fine[codes // self.n_fine, codes % self.n_fine]


def train(sample: np.ndarray, n_coarse: int = 256, n_fine: int = 256, rounds: int = ROUNDS,
          seed: int = 0) -> Codebook:
    """A two-level codebook from a sample of tokens ``(n, d)`` (see the module docstring)."""
    x = normalise(sample)
    coarse = spherical_kmeans(x, n_coarse, rounds, seed)
    cell = (x @ coarse.T).argmax(axis=1)
    fine = np.repeat(coarse[:, None, :], n_fine, axis=1)
    for c in range(len(coarse)):
        members = x[cell == c]
        if len(members):
            f = spherical_kmeans(members, n_fine, rounds, seed + 1 + c)
            fine[c, : len(f)] = f
            fine[c, len(f):] = f[-1]
    return Codebook(coarse, fine)


def assign(cb: Codebook, tokens: np.ndarray) -> np.ndarray:
    """``(n, d)`` tokens -> ``(n,)`` int32 codes under ``cb`` (nearest coarse, then nearest fine).

    Cost: ``n * (n_coarse + n_fine) * d`` multiply-adds in float32 GEMMs, one for the coarse cells
    and one per cell present (its tokens sorted together, so each is one contiguous block). Give it
    many rows' tokens at once (:func:`distinct_codes`; pgmaxsim.writes codes a write's rows in chunks
    of 8-32K tokens): a cell's fine centroids are then read once for all of them, and a cell's GEMM
    has enough rows to run near the coarse GEMM's speed (~44 rows a cell, 8,000 tokens at 181 cells,
    took 1.5x the coarse GEMM's time for as many multiply-adds).
    The tokens are not normalised: the centroids are unit vectors, so a token's nearest centroid by
    cosine is the one of largest dot product whatever the token's norm (a zero token gets code 0
    either way), and skipping the copy saves ~8 % of the call.
    """
    x = np.ascontiguousarray(tokens, dtype=np.float32)
    out = np.empty(len(x), dtype=np.int32)
    for a in range(0, len(x), BLOCK):
        blk = x[a:a + BLOCK]
        cell = (blk @ cb.coarse.T).argmax(axis=1)
        order = np.argsort(cell, kind="stable")
        cells = cell[order]
        srt = np.take(blk, order, axis=0)
        cuts = (np.flatnonzero(np.diff(cells)) + 1).tolist()
        fine = np.empty(len(order), dtype=np.int32)
        for s, e in zip([0, *cuts], [*cuts, len(order)]):
            fine[s:e] = (srt[s:e] @ cb.fine[cells[s]].T).argmax(axis=1)
        out[a + order] = cells * cb.n_fine + fine
    return out


#: Tokens coded in one :func:`assign` call by :func:`distinct_codes`: rows are added to a call until
#: they hold this many (a row is never split). At a 10K-page index's 181 cells that is ~180 tokens a
#: cell's GEMM (bench/STORAGE.md section 11: 32 pages of 1,000 tokens coded 20 % faster a page than
#: 8); 16 MiB of float32 tokens.
ASSIGN_TOKENS = 32_768


def distinct_codes(cb: Codebook, rows: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each row's distinct codes (sorted int32) under ``cb``; the rows' tokens are assigned
    :data:`ASSIGN_TOKENS` at a time (:func:`take_tokens`), not row by row (a page's ~5 tokens a
    cell are slow GEMMs).

    >>> cb = Codebook(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32)[None].repeat(2, 0))
    >>> [c.tolist() for c in distinct_codes(cb, [np.array([[1, 0], [2, 0.5]]), np.array([[0, 1.0]])])]
    [[0], [3]]
    """
    out: list[np.ndarray] = []
    left = iter(rows)
    while group := take_tokens(left, ASSIGN_TOKENS, len):
        codes = assign(cb, np.concatenate(group))
        out.extend(np.unique(c) for c in np.split(codes, np.cumsum([len(r) for r in group])[:-1]))
    return out


def take_tokens(rows: Iterator[T], tokens: int, size: Callable[[T], int]) -> list[T]:
    """The next rows of ``rows`` (each of ``size(row)`` tokens) until they hold ``tokens`` tokens, or
    the rest; takes no more rows from ``rows`` than it returns (a row is never split). What one
    :func:`assign` call gets: here, and a write's chunk in pgmaxsim.writes.

    >>> left = iter([3, 0, 5, 2, 9]); take_tokens(left, 8, int), take_tokens(left, 8, int), take_tokens(left, 8, int)
    ([3, 0, 5], [2, 9], [])
    """
    out, n = [], 0
    for row in rows:
        out.append(row)
        n += size(row)
        if n >= tokens:
            break
    return out


def probe(cb: Codebook, query: np.ndarray, nprobe: int, coarse_probe: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The ``nprobe`` nearest codes of each query token among its ``coarse_probe`` nearest cells.

    Returns ``(codes (nq, p), sims (nq, p))``, each row sorted by descending similarity,
    ``p = min(nprobe, coarse_probe * n_fine)``.
    """
    q = normalise(query)
    cp = min(coarse_probe, cb.n_coarse)
    cells = np.argsort(-(q @ cb.coarse.T), axis=1, kind="stable")[:, :cp]  # (nq, cp)
    cand = cb.fine[cells].reshape(len(q), cp * cb.n_fine, -1)  # (nq, cp*nf, d)
    sims = np.einsum("qd,qkd->qk", q, cand)
    codes = (cells[:, :, None] * cb.n_fine + np.arange(cb.n_fine)).reshape(len(q), -1)
    p = min(nprobe, sims.shape[1])
    top = np.argsort(-sims, axis=1, kind="stable")[:, :p]
    return np.take_along_axis(codes, top, 1).astype(np.int32), np.take_along_axis(sims, top, 1)


@dataclass(frozen=True)
class InvertedLists:
    """CSR lists: the rows holding code ``c`` are ``rows[ptr[c]:ptr[c + 1]]`` (sorted, distinct)."""

    ptr: np.ndarray
    rows: np.ndarray

    @classmethod
    def build(cls, codes: np.ndarray, row_of_token: np.ndarray, n_codes: int) -> InvertedLists:
        """From each token's code and row number (``(T,)`` each)."""
        pairs = np.unique(np.asarray(codes, np.int64) * (1 << 32) + np.asarray(row_of_token, np.int64))
        code = (pairs >> 32).astype(np.int64)
        ptr = np.zeros(n_codes + 1, dtype=np.int64)
        np.cumsum(np.bincount(code, minlength=n_codes), out=ptr[1:])
        return cls(ptr, (pairs & 0xFFFFFFFF).astype(np.int32))

    def postings(self) -> int:
        return int(self.ptr[-1])


def _gather(lists: InvertedLists, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the flattened ``codes`` concatenated, and for each the index into ``codes``."""
    flat = np.asarray(codes).ravel()
    lengths = lists.ptr[flat + 1] - lists.ptr[flat]
    return lists.rows[gather_positions(lists.ptr[flat], lengths)], np.repeat(np.arange(len(flat)), lengths)


def probed_rows(lists: InvertedLists, codes: np.ndarray) -> np.ndarray:
    """Sorted distinct rows holding any of ``codes``."""
    return np.unique(_gather(lists, codes)[0])


def candidate_scores(lists: InvertedLists, codes: np.ndarray, sims: np.ndarray, n_rows: int) -> np.ndarray:
    """``(n_rows,)`` centroid-interaction estimates of MaxSim from probe results ``(nq, p)``.

    Per query token: the best probed similarity among the codes a row holds, else the
    token's smallest probed similarity. Rows reached by no probe get the all-missing sum.
    """
    nq = codes.shape[0]
    floor = sims.min(axis=1).astype(np.float32)  # (nq,)
    best = np.repeat(floor[:, None], n_rows, axis=1)  # (nq, n_rows)
    rows, which = _gather(lists, codes)
    vals = sims.ravel()[which]
    order = np.argsort(vals, kind="stable")  # ascending: the last write per (token, row) is its max
    best[which[order] // codes.shape[1], rows[order]] = vals[order]
    return best.sum(axis=0) if nq else np.zeros(n_rows, dtype=np.float32)


def row_codes(lists: InvertedLists, n_rows: int) -> InvertedLists:
    """The transpose of ``lists``: row -> its distinct codes (same CSR layout, ``rows`` holds codes)."""
    code_of = np.repeat(np.arange(len(lists.ptr) - 1, dtype=np.int64), np.diff(lists.ptr))
    return InvertedLists.build(lists.rows, code_of, n_rows)


def centroid_interaction(cb: Codebook, query: np.ndarray, per_row: InvertedLists, rows: np.ndarray) -> np.ndarray:
    """``(len(rows),)`` PLAID centroid interaction: sum over query tokens of the best similarity
    to any of the row's codes' centroids (MaxSim with every token replaced by its centroid);
    ``-inf`` for a row without codes. Float32, summed over query tokens in one fixed order (the
    ``(rows, nq)`` maxima summed along a contiguous axis), so rows with equal code sets score
    equal within a call (a rescore's ties are broken by row order, not by rounding).

    ``query`` is ``(nq, d)`` (normalised here); ``rows`` index ``per_row``, a row -> codes
    :class:`InvertedLists` (:func:`row_codes`).
    """
    rows = np.asarray(rows, dtype=np.intp)
    out = np.full(len(rows), -np.inf, dtype=np.float32)
    nz = per_row.ptr[rows + 1] > per_row.ptr[rows]
    if not nz.any():
        return out
    held, starts = _held(per_row, rows[nz])
    cents, at = _distinct(cb, held)
    qn = normalise(query)
    if len(held) < PER_TOKEN_FROM:
        best = np.maximum.reduceat((cents @ qn.T)[at], starts, axis=0)
    else:
        best = _best_per_token(_sims_by_token(cents, qn), at, starts)
    out[nz] = best.sum(axis=1)
    return out


#: Held codes (all rows' codes together) from which centroid interaction gathers one query token at a
#: time: a contiguous 1-D gather and reduceat per token cost about a third of gathering ``(held, nq)``
#: rows and reducing along the rows, once that no longer fits in cache; below, the Python loop
#: over the query tokens costs more than it saves.
PER_TOKEN_FROM = 16_384
#: Centroids per block of the query-token-major similarity product: a block's ``(block, nq)`` result
#: is transposed while it is in the L2 cache (transposing the whole ``(n_codes, nq)`` product misses
#: it: +25 % for 32K codes).
SIMS_BLOCK = 4096


def _held(per_row: InvertedLists, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The codes of ``rows`` (each holding some) concatenated, as intp (what a gather indexes with:
    other integer types are converted at every use), and each row's start in them. Rows stored
    one after another (as rescoring numbers them) are one slice rather than a gather."""
    lengths = per_row.ptr[rows + 1] - per_row.ptr[rows]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    if np.array_equal(per_row.ptr[rows[1:]], per_row.ptr[rows[:-1] + 1]):
        held = per_row.rows[per_row.ptr[rows[0]]:per_row.ptr[rows[-1] + 1]]
    else:
        held, _ = _gather(per_row, rows)
    return held.astype(np.intp), starts


def _distinct(cb: Codebook, held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(m, d)`` centroids covering ``held`` codes and each held code's row among them: the
    distinct ones gathered, or every centroid (no copy) once the distinct ones are half the
    codebook (a gathered centroid is memory-bound: it costs about what a product with two does).
    Distinct codes by a mask over the codebook: linear, where ``np.unique`` sorts."""
    fine = cb.fine.reshape(cb.n_codes, -1)
    present = np.zeros(cb.n_codes, dtype=bool)
    present[held] = True
    uniq = np.flatnonzero(present)
    if 2 * len(uniq) >= cb.n_codes:
        return fine, held
    row_of = np.empty(cb.n_codes, dtype=np.intp)
    row_of[uniq] = np.arange(len(uniq))
    return fine[uniq], row_of[held]


def _sims_by_token(cents: np.ndarray, qn: np.ndarray) -> np.ndarray:
    """``(nq, m)`` similarities of ``qn`` to ``cents`` ``(m, d)``, query-token-major (each token's
    row contiguous for its gathers): ``(cents @ qn.T).T``, computed block by block."""
    sims = np.empty((len(qn), len(cents)), dtype=np.float32)
    for a in range(0, len(cents), SIMS_BLOCK):
        sims[:, a:a + SIMS_BLOCK] = (cents[a:a + SIMS_BLOCK] @ qn.T).T
    return sims


def _best_per_token(sims: np.ndarray, at: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``(rows, nq)``: for each query token, the best of ``sims[token, at]`` within each row
    (``starts``: each row's first entry of ``at``)."""
    best = np.empty((len(starts), len(sims)), dtype=np.float32)
    buf = np.empty(len(at), dtype=np.float32)
    for i, s in enumerate(sims):
        # mode="wrap": every index is in range, and take buffers ``out`` in its default mode (about
        # twice the cost of the gather itself)
        best[:, i] = np.maximum.reduceat(np.take(s, at, out=buf, mode="wrap"), starts)
    return best


def probed_scores(lists: InvertedLists, codes: np.ndarray, sims: np.ndarray, n_rows: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The probe score's ranking input: the rows holding a probed code (:func:`probed_rows`) and
    their :func:`candidate_scores`; other rows are never candidates."""
    reached = probed_rows(lists, codes)
    if len(reached) == 0:
        return reached, np.empty(0, dtype=np.float32)
    return reached, candidate_scores(lists, codes, sims, n_rows)[reached]


def row_probed_scores(per_row: InvertedLists, codes: np.ndarray, sims: np.ndarray, n_codes: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`probed_scores` of rows given as row -> codes lists (:func:`row_codes`'s layout, as a
    scan of stored rows reads them): the code -> rows lists of just the probed codes they hold (a
    few % of all codes: one small sort, not the whole transpose)."""
    n_rows = len(per_row.ptr) - 1
    row_of = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(per_row.ptr))
    hit = np.isin(per_row.rows, codes)
    return probed_scores(InvertedLists.build(per_row.rows[hit], row_of[hit], n_codes), codes, sims, n_rows)


def candidates(lists: InvertedLists, codes: np.ndarray, sims: np.ndarray, n_rows: int, n: int,
               rescore: tuple[Codebook, np.ndarray, InvertedLists, int] | None = None) -> np.ndarray:
    """The ``n`` best rows by :func:`candidate_scores`, among the probed rows only, best first.

    ``rescore = (codebook, query, per_row, factor)``: keep ``factor * n`` rows by the probe
    score, then the best ``n`` of them by :func:`centroid_interaction` (all of a row's codes).
    """
    reached, score = probed_scores(lists, codes, sims, n_rows)
    if len(reached) == 0:
        return reached
    wide = n if rescore is None else n * rescore[3]
    keep = reached[np.argsort(-score, kind="stable")[:wide]]
    if rescore is None or len(keep) <= n:
        return keep[:n]
    cb, query, per_row, _ = rescore
    return keep[np.argsort(-centroid_interaction(cb, query, per_row, keep), kind="stable")[:n]]
