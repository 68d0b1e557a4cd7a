"""Residual sketches on the hard needle: a PLAID / XTR-WARP-style first stage, in NumPy.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/needle_sketch.py --pages 10000 --queries 60
    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/needle_sketch.py --pages 100000 --queries 30 --no-exact

Corpus and queries: bench/needle.py (hard needle). The codebook's codes alone cannot tell the
source page apart once a code holds ~150 tokens of a topic shared by hundreds of pages
(bench/FIRST_STAGE.md). Here each token also stores a small *residual sketch*, so that the
tokens of the probed codes can be scored approximately, as PLAID decompresses residuals and
XTR-WARP scores the probed clusters only:

- **Storage, cluster-major** (PLAID / WARP): per code, the row ids of its tokens and their
  sketches, contiguous. A query reads the ``nprobe`` lists of each query token only.
- **Sketches** of the residual ``r = token - centroid(code)`` (unit token, fine centroid):
  ``sign{b}``: ``b`` sign bits of ``r`` (``b = 128``: one bit per dimension, ColBERTv2's
  ``nbits=1``; fewer: of ``r`` rotated by a fixed random orthogonal matrix, first ``b``
  coordinates), decoded as ``mean|r_j| * sign`` per coordinate; ``pq{m}``: product quantiser
  of ``r``, ``m`` sub-spaces x 256 centroids (1 byte each), scored by table look-up (ADC);
  ``exact``: the token itself (the bound a perfect sketch could reach).
- **Score** (XTR-WARP): a probed token's estimate is ``q.c + q.r_hat``; per query token a
  row takes the best estimate among its probed tokens, or, holding none, the query token's
  missing-similarity estimate (its ``nprobe``-th code's centroid similarity); summed over
  query tokens. The best ``candidates`` rows reached by some probe go to exact MaxSim.
- ``+rows W``: the per-row layout instead (one ``fs_codes`` row per indexed row, as the
  PostgreSQL codebook): GIN probe score (pgmaxsim.firststage) keeps ``W`` rows, whose token
  sketches are then scored as above. Same estimates, restricted to those rows.

Printed per method and budget: source top-1, recall@10 and mass@10 vs exact, stage-1 p50/p95
ms (NumPy, probe + gather + score + top-n), first-stage bytes per row, write ms per row.
A diagnostic line per method gives the share of needle query tokens whose source token lies
in a probed code (probe recall) and the source's rank under the stage-1 score.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plugin"))

import needle as nd
from pgmaxsim import firststage as fs
from search import percentile

D = nd.D


# ------------------------------------------------------------------ sketches

@dataclass(frozen=True)
class SignSketch:
    """``bits`` sign bits of the (rotated) residual, decoded as ``scale * mag * sign``."""

    bits: int
    rot: np.ndarray  # (d, bits) orthonormal columns
    mag: np.ndarray  # (bits,) mean |coordinate|
    scale: float     # d / bits: the kept coordinates stand for the whole residual

    name = property(lambda self: f"sign{self.bits}")
    nbytes = property(lambda self: self.bits // 8)

    @classmethod
    def train(cls, res: np.ndarray, bits: int, seed: int = 0) -> SignSketch:
        d = res.shape[1]
        if bits == d:
            rot = np.eye(d, dtype=np.float32)
        else:
            q, _ = np.linalg.qr(np.random.default_rng([seed, 5]).standard_normal((d, d)))
            rot = q[:, :bits].astype(np.float32)
        return cls(bits, rot, np.abs(res @ rot).mean(0).astype(np.float32), d / bits)

    def encode(self, res: np.ndarray) -> np.ndarray:
        return np.packbits(res @ self.rot > 0, axis=1)

    def scorer(self, q: np.ndarray):
        """Per query token ``(nq, d)``: a function (i, sketches) -> q_i . r_hat."""
        w = (q @ self.rot) * self.mag * self.scale  # (nq, bits)
        off = w.sum(1)

        def f(i: int, sk: np.ndarray) -> np.ndarray:
            return 2.0 * (np.unpackbits(sk, axis=1).astype(np.float32) @ w[i]) - off[i]
        return f


@dataclass(frozen=True)
class PQSketch:
    """Product quantiser of the residual: ``m`` sub-spaces of d/m dims, 256 centroids each."""

    m: int
    cent: np.ndarray  # (m, 256, d/m)

    name = property(lambda self: f"pq{self.m}")
    nbytes = property(lambda self: self.m)

    @classmethod
    def train(cls, res: np.ndarray, m: int, seed: int = 0, rounds: int = 8) -> PQSketch:
        n, d = res.shape
        sub = res.reshape(n, m, d // m)
        rng = np.random.default_rng([seed, 6])
        cent = np.empty((m, 256, d // m), dtype=np.float32)
        for j in range(m):
            x = sub[:, j]
            c = x[rng.choice(n, 256, replace=False)].copy()
            for _ in range(rounds):
                a = _nearest(x, c)
                cnt = np.bincount(a, minlength=256)
                s = np.zeros_like(c)
                np.add.at(s, a, x)
                held = cnt > 0
                c[held] = s[held] / cnt[held, None]
            cent[j] = c
        return cls(m, cent)

    def encode(self, res: np.ndarray) -> np.ndarray:
        n, d = res.shape
        sub = res.reshape(n, self.m, d // self.m)
        return np.stack([_nearest(sub[:, j], self.cent[j]) for j in range(self.m)], 1).astype(np.uint8)

    def scorer(self, q: np.ndarray):
        nq, d = q.shape
        tab = np.einsum("qmk,mck->qmc", q.reshape(nq, self.m, d // self.m), self.cent)  # (nq, m, 256)
        cols = np.arange(self.m)

        def f(i: int, sk: np.ndarray) -> np.ndarray:
            return tab[i][cols, sk].sum(1)
        return f


def _nearest(x: np.ndarray, c: np.ndarray, block: int = 65_536) -> np.ndarray:
    out = np.empty(len(x), dtype=np.int64)
    cc = (c * c).sum(1)
    for a in range(0, len(x), block):
        out[a:a + block] = (cc - 2 * x[a:a + block] @ c.T).argmin(1)
    return out


# ------------------------------------------------------------------ balanced codebook

@dataclass(frozen=True)
class RaggedCodebook:
    """Two-level codebook whose cells get fine centroids in proportion to their share of tokens.

    A uniform ``n_fine`` per cell leaves the cells of popular topics with thousands of tokens per
    code (13,386 at most at 10K needle pages), and those are exactly the codes a query probes.
    Here cell ``c`` holds ``fine[start[c]:start[c + 1]]`` and a code is a global fine index
    (0 .. n_codes - 1), so the table ``fs_fine(code, cell, vec)`` needs no change.
    """

    coarse: np.ndarray  # (n_coarse, d)
    fine: np.ndarray    # (n_codes, d)
    start: np.ndarray   # (n_coarse + 1,) int64
    cell_of: np.ndarray  # (n_codes,) int32

    @property
    def n_codes(self) -> int:
        return len(self.fine)

    def centroid(self, codes: np.ndarray) -> np.ndarray:
        return self.fine[np.asarray(codes)]

    @classmethod
    def train(cls, sample: np.ndarray, n_coarse: int, n_codes: int, rounds: int = 4, seed: int = 0
              ) -> RaggedCodebook:
        x = fs.normalise(sample)
        coarse = fs.spherical_kmeans(x, n_coarse, fs.ROUNDS, seed)
        cell = (x @ coarse.T).argmax(1)
        cnt = np.bincount(cell, minlength=len(coarse))
        k = np.maximum(1, np.floor(n_codes * cnt / cnt.sum())).astype(np.int64)
        k = np.minimum(k, np.maximum(cnt, 1))
        fine, cells = [], []
        for c in range(len(coarse)):
            members = x[cell == c]
            f = fs.spherical_kmeans(members, int(k[c]), rounds, seed + 1 + c) if len(members) else coarse[c:c + 1]
            fine.append(f)
            cells.append(np.full(len(f), c, dtype=np.int32))
        sizes = np.array([len(f) for f in fine])
        return cls(coarse, np.concatenate(fine), np.concatenate([[0], np.cumsum(sizes)]), np.concatenate(cells))

    def assign(self, tokens: np.ndarray) -> np.ndarray:
        blk = fs.normalise(tokens)
        cell = (blk @ self.coarse.T).argmax(1)
        out = np.empty(len(blk), dtype=np.int32)
        for c in np.unique(cell):
            grp = np.flatnonzero(cell == c)
            a, b = self.start[c], self.start[c + 1]
            out[grp] = a + (blk[grp] @ self.fine[a:b].T).argmax(1)
        return out

    def probe(self, query: np.ndarray, nprobe: int, coarse_probe: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """As pgmaxsim.firststage.probe: the ``nprobe`` nearest codes in the ``coarse_probe`` nearest cells."""
        q = fs.normalise(query)
        cells = np.argsort(-(q @ self.coarse.T), axis=1)[:, :coarse_probe]
        codes = np.empty((len(q), nprobe), dtype=np.int32)
        sims = np.empty((len(q), nprobe), dtype=np.float32)
        for i in range(len(q)):
            cand = np.concatenate([np.arange(self.start[c], self.start[c + 1]) for c in cells[i]])
            s = self.fine[cand] @ q[i]
            p = min(nprobe, len(s))
            top = np.argpartition(-s, p - 1)[:p]
            top = top[np.argsort(-s[top], kind="stable")]
            codes[i, :p], sims[i, :p] = cand[top], s[top]
            codes[i, p:], sims[i, p:] = codes[i, p - 1], sims[i, p - 1]
        return codes, sims


def probe(cb, q: np.ndarray, nprobe: int, coarse_probe: int) -> tuple[np.ndarray, np.ndarray]:
    return cb.probe(q, nprobe, coarse_probe) if isinstance(cb, RaggedCodebook) else fs.probe(cb, q, nprobe, coarse_probe)


def assign(cb, x: np.ndarray) -> np.ndarray:
    return cb.assign(x) if isinstance(cb, RaggedCodebook) else fs.assign(cb, x)


# ------------------------------------------------------------------ cluster-major index

@dataclass
class ClusterMajor:
    """Tokens sorted by code: the tokens of code ``c`` are positions ``ptr[c]:ptr[c + 1]``."""

    ptr: np.ndarray   # (n_codes + 1,) int64
    row: np.ndarray   # (T,) int32 row of each position
    tok: np.ndarray   # (T,) int64 original token index of each position (exact oracle only)

    @classmethod
    def build(cls, codes: np.ndarray, row_of_token: np.ndarray, n_codes: int) -> ClusterMajor:
        order = np.argsort(codes, kind="stable")
        ptr = np.zeros(n_codes + 1, dtype=np.int64)
        np.cumsum(np.bincount(codes, minlength=n_codes), out=ptr[1:])
        return cls(ptr, row_of_token[order], order)

    def gather(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the tokens of flattened ``codes``, and for each the index into ``codes``."""
        flat = codes.ravel()
        lengths = self.ptr[flat + 1] - self.ptr[flat]
        starts = np.repeat(self.ptr[flat] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        return starts + np.arange(int(lengths.sum())), np.repeat(np.arange(len(flat)), lengths)


def warp_scores(est: np.ndarray, qi: np.ndarray, rows: np.ndarray, floor: np.ndarray,
                n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows reached and their summed scores: per (query token, row) the best estimate, else ``floor``."""
    best = np.repeat(floor[:, None], n_rows, axis=1)  # (nq, n_rows)
    np.maximum.at(best, (qi, rows), est)  # an estimate below the floor keeps the floor
    reached = np.unique(rows)
    return reached, best[:, reached].sum(0)


def sketch_candidates(cb: fs.Codebook, cm: ClusterMajor, est_fn, q: np.ndarray, n: int, nprobe: int,
                      coarse_probe: int, n_rows: int, allowed: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``n`` best rows by the sketch score (best first); also the probe and the gathered positions."""
    qn = fs.normalise(q)
    codes, csims = probe(cb, qn, nprobe, coarse_probe)
    pos, which = cm.gather(codes)
    qi = which // codes.shape[1]
    est = csims.ravel()[which].astype(np.float32)
    bounds = np.searchsorted(qi, np.arange(len(q) + 1))
    for i in range(len(q)):
        a, b = bounds[i], bounds[i + 1]
        if b > a:
            est[a:b] += est_fn(i, pos[a:b])
    rows = cm.row[pos]
    if allowed is not None:
        keep = allowed[rows]
        est, qi, rows = est[keep], qi[keep], rows[keep]
    reached, score = warp_scores(est, qi, rows, csims[:, -1].astype(np.float32), n_rows)
    return reached[np.argsort(-score, kind="stable")[:n]], reached, score, codes


# ------------------------------------------------------------------ the run

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--budgets", default="", help="candidates (default 0.5%%, 1%%, 2%% of the rows)")
    ap.add_argument("--coarse", type=int, default=256)
    ap.add_argument("--fine", type=int, default=256)
    ap.add_argument("--nprobe", default="8,32")
    ap.add_argument("--balanced", type=int, default=0,
                    help="total fine codes, shared among the coarse cells by their share of tokens")
    ap.add_argument("--coarse-probe", type=int, default=2)
    ap.add_argument("--sample", type=int, default=300_000)
    ap.add_argument("--sketches", default="exact,sign128,sign64,sign32,pq16,pq8",
                    help="comma list: exact, sign<bits>, pq<m>")
    ap.add_argument("--rows-width", default="", help="per-row layout widths W, e.g. 1000,2000 (rows)")
    ap.add_argument("--no-exact", action="store_true", help="skip the full exact pass (100K)")
    ap.add_argument("--fill", type=int, default=0,
                    help="also: keep this many rows by the sketch score, fill the budget by the codebook's"
                         " probe score + centroid interaction x4 (pgmaxsim.firststage)")
    ap.add_argument("--cache", default="", help="folder keeping the generated tokens and exact scores between runs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    n = args.pages
    corpus = nd.NeedleCorpus(n, args.seed)
    budgets = [int(b) for b in args.budgets.split(",")] if args.budgets else [n // 200, n // 100, n // 50]
    sources = np.random.default_rng(args.seed + 1).choice(n, size=args.queries, replace=False)
    queries = [corpus.query(int(i)) for i in sources]
    keep = not args.no_exact
    names = [s for s in args.sketches.split(",") if s]
    if "exact" in names and not keep:
        names.remove("exact")

    # codebook + sketch training on a token sample of random pages (as a retrain would)
    t0 = time.perf_counter()
    srng = np.random.default_rng(args.seed + 2)
    sample_pages = srng.choice(n, size=min(n, max(1, args.sample // 500)), replace=False)
    sample = np.concatenate([corpus.page(int(i))[0] for i in sample_pages])
    sample = fs.normalise(sample[srng.choice(len(sample), size=min(len(sample), args.sample), replace=False)])
    if args.balanced:
        cb = RaggedCodebook.train(sample, args.coarse, args.balanced, seed=args.seed)
    else:
        cb = fs.train(sample, args.coarse, args.fine, seed=args.seed)
    train_s = time.perf_counter() - t0
    res = sample - cb.centroid(assign(cb, sample))
    sketches = {}
    for s in names:
        if s.startswith("sign"):
            sketches[s] = SignSketch.train(res, int(s[4:]), args.seed)
        elif s.startswith("pq"):
            sketches[s] = PQSketch.train(res[:100_000], int(s[2:]), args.seed)
    log(f"codebook {args.coarse}x{args.balanced or args.fine} trained on {len(sample):,} tokens in {train_s:.0f} s; "
        f"sketches trained in {time.perf_counter() - t0 - train_s:.0f} s; "
        f"mean |residual| {np.linalg.norm(res, axis=1).mean():.3f}")
    del sample, res

    sizes = np.array([corpus.size(i) for i in range(n)])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    n_tok = int(offsets[-1])
    cache = Path(args.cache) / f"needle{n}_s{args.seed}" if args.cache else None
    cached = cache is not None and (cache / "tokens.npy").exists()
    tokens = None
    if keep:
        tokens = np.load(cache / "tokens.npy", mmap_mode="r") if cached else np.empty((n_tok, D), dtype=np.float16)
    codes = np.empty(n_tok, dtype=np.int32)
    sk = {s: np.empty((n_tok, o.nbytes), dtype=np.uint8) for s, o in sketches.items()}
    cost = {"gen": 0.0, "assign": 0.0, **{s: 0.0 for s in sketches}}
    chunk = 500
    for a in range(0, n, chunk):
        t = time.process_time()
        lo, hi = offsets[a], offsets[min(n, a + chunk)]
        if cached:
            blk = np.asarray(tokens[lo:hi])
        else:
            blk = np.concatenate([corpus.page(i)[0] for i in range(a, min(n, a + chunk))])
        cost["gen"] += time.process_time() - t
        t = time.process_time()
        c = assign(cb, blk)
        codes[lo:hi] = c
        cost["assign"] += time.process_time() - t
        t1 = time.process_time()
        r = fs.normalise(blk) - cb.centroid(c)
        t_res = time.process_time() - t1
        for s, o in sketches.items():
            t = time.process_time()
            sk[s][lo:hi] = o.encode(r)
            cost[s] += time.process_time() - t + t_res
        if keep and not cached:
            tokens[lo:hi] = blk
        if (a // chunk) % 4 == 0:
            log(f"  encoded {min(n, a + chunk):,}/{n:,} pages ({time.perf_counter() - t0:.0f} s)")
    row_of_token = np.repeat(np.arange(n, dtype=np.int32), sizes)
    cm = ClusterMajor.build(codes, row_of_token, cb.n_codes)
    lists = fs.InvertedLists.build(codes, row_of_token, cb.n_codes) if args.rows_width or args.fill else None
    del row_of_token
    for s in sk:
        sk[s] = sk[s][cm.tok]  # cluster-major order
    log(f"  cluster-major built ({time.perf_counter() - t0:.0f} s); "
        f"tokens per code: mean {n_tok / cb.n_codes:.0f}, max {int(np.diff(cm.ptr).max())}")

    if cache is not None and keep and not cached:
        cache.mkdir(parents=True, exist_ok=True)
        np.save(cache / "tokens.npy", tokens)
    exact_full = None
    exact_file = cache / f"exact_q{args.queries}.npy" if cache is not None else None
    if keep and exact_file is not None and exact_file.exists():
        exact_full = np.load(exact_file)
    elif keep:
        t = time.perf_counter()
        qall = np.concatenate(queries)
        ptm = nd.exact_pass(tokens, offsets, qall)
        qoff = np.cumsum([0] + [len(q) for q in queries])
        exact_full = np.stack([ptm[:, qoff[i]:qoff[i + 1]].astype(np.float64).sum(1) for i in range(len(queries))])
        del ptm
        if exact_file is not None:
            np.save(exact_file, exact_full)
        log(f"  exact pass {time.perf_counter() - t:.0f} s; exact ranks the source first in "
            f"{np.mean(exact_full.argmax(1) == sources):.1%}")

    def exact_of(qi: int, cand: np.ndarray) -> np.ndarray:
        if exact_full is not None:
            return exact_full[qi, cand]
        q = queries[qi].astype(np.float32)
        return np.array([float((corpus.page(int(r))[0].astype(np.float32) @ q.T).max(0).sum()) for r in cand])

    # which source tokens the needles copy: the nearest source-page token of each needle query token
    src_tok = []
    for qi, s in enumerate(sources):
        page = corpus.page(int(s))[0].astype(np.float32)
        src_tok.append(offsets[s] + (queries[qi][:nd.N_NEEDLE].astype(np.float32) @ page.T).argmax(1))

    def est_fn_for(name: str, q: np.ndarray):
        qn = fs.normalise(q)
        if name == "exact":
            def f(i: int, pos: np.ndarray) -> np.ndarray:
                t = tokens[cm.tok[pos]].astype(np.float32)
                return t @ qn[i] - (cb.centroid(codes[cm.tok[pos]]) @ qn[i])
            return f
        inner = sketches[name].scorer(qn)
        return lambda i, pos: inner(i, sk[name][pos])

    fine_label = "balanced" if args.balanced else args.fine
    mean_tok = float(sizes.mean())
    fp16_row = mean_tok * D * 2
    book = cb.n_codes * D * 2 / n  # fp16 fine centroids per row (the coarse ones are negligible)
    out = [(f"\n## hard needle, {n:,} pages (mean {mean_tok:.0f} tokens = {fp16_row / 1024:.0f} KB fp16 per row),"
            f" {args.queries} queries; codebook {args.coarse}x{fine_label} = {cb.n_codes:,} codes"
            f" (~{n_tok / cb.n_codes:.0f} tokens per code), coarse_probe {args.coarse_probe}"),
           "",
           ("| first stage | candidates (of rows) | source top-1 | recall@10 | mass@10 | stage-1 p50 ms (wall / cpu) |"
            " stage-1 p95 ms | bytes/row (% of fp16) | write ms/row |"),
           "|---|---|---|---|---|---|---|---|---|"]
    if exact_full is not None:
        out.append(f"| exact | {n} (100%) | {np.mean(exact_full.argmax(1) == sources):.1%} | 1.000 | 1.0000 |"
                   " - | - | - | - |")
    diag = []
    widths = [int(w) for w in args.rows_width.split(",") if w]
    per_row = fs.row_codes(lists, n) if args.fill else None
    for name in names:
        nbytes = 0 if name == "exact" else sketches[name].nbytes
        b = mean_tok * (4 + nbytes) + book
        wcost = (cost["assign"] + cost.get(name, 0.0)) / n * 1e3
        for npb in [int(x) for x in args.nprobe.split(",")]:
            variants = [("", None, 0)] + [(f" +rows W={w}", "rows", w) for w in widths]
            if args.fill:
                variants.append((f" top {args.fill} +fill CI x4", "fill", args.fill))
            for suffix, mode, param in variants:
                label = f"codes+{name} nprobe={npb}{suffix}"
                allowed_of = {}
                if mode == "rows":
                    for qi, q in enumerate(queries):
                        c, s_ = probe(cb, q, npb, args.coarse_probe)
                        allowed_of[qi] = np.zeros(n, dtype=bool)
                        allowed_of[qi][fs.candidates(lists, c, s_, n, param)] = True
                # per-row layout: + a 2-byte code per token; fill: + the GIN of distinct codes (int4 postings)
                bb = b + (mean_tok * 2 if mode == "rows" else 0) + (lists.postings() / n * 4 if mode == "fill" else 0)
                probe_hits, ranks = [], []
                stats = {bud: ([], [], 0, [], []) for bud in budgets}
                for qi, q in enumerate(queries):
                    fn = est_fn_for(name, q)
                    t, tc = time.perf_counter(), time.process_time()
                    top, reached, score, pcodes = sketch_candidates(
                        cb, cm, fn, q, max(budgets), npb, args.coarse_probe, n, allowed_of.get(qi))
                    base, base_cpu = time.perf_counter() - t, time.process_time() - tc
                    probe_hits.append(np.mean([codes[st] in pcodes[j] for j, st in enumerate(src_tok[qi])]))
                    hit = np.flatnonzero(reached == sources[qi])
                    ranks.append(int((score > score[hit[0]]).sum()) + 1 if len(hit) else n)
                    for bud in budgets:
                        times, cpu, _, rec, mass = stats[bud]
                        t, tc = time.perf_counter(), time.process_time()
                        cand = top[:bud]  # the sketch ranking does not depend on the budget
                        if mode == "fill":
                            c, s_ = probe(cb, q, npb, args.coarse_probe)
                            more = fs.candidates(lists, c, s_, n, bud, rescore=(cb, q, per_row, 4))
                            head_ = cand[:param]
                            cand = np.concatenate([head_, more[~np.isin(more, head_)]])[:bud]
                        times.append((time.perf_counter() - t + base) * 1e3)
                        cpu.append((time.process_time() - tc + base_cpu) * 1e3)
                        sc = exact_of(qi, cand)
                        got = cand[np.argsort(-sc, kind="stable")[:10]]
                        if len(got) and got[0] == sources[qi]:
                            stats[bud] = (times, cpu, stats[bud][2] + 1, rec, mass)
                        if exact_full is not None:
                            ref = np.argsort(-exact_full[qi], kind="stable")[:10]
                            rec.append(len(set(got.tolist()) & set(ref.tolist())) / 10)
                            mass.append(exact_full[qi, got].sum() / exact_full[qi, ref].sum())
                for bud in budgets:
                    times, cpu, top1, rec, mass = stats[bud]
                    r = f"{np.mean(rec):.3f}" if rec else "-"
                    m = f"{np.mean(mass):.4f}" if mass else "-"
                    out.append(f"| {label} | {bud} ({bud / n:.1%}) | {top1 / len(queries):.1%} | {r} | {m} |"
                               f" {percentile(times, 50):.1f} / {percentile(cpu, 50):.1f} |"
                               f" {percentile(times, 95):.1f} | {bb:.0f} ({bb / fp16_row:.1%}) | {wcost:.2f} |")
                    log(out[-1])
                ranks_a = np.array(ranks)
                diag.append(f"| {label} | {np.mean(probe_hits):.1%} | {np.median(ranks_a):.0f} |"
                            f" {np.percentile(ranks_a, 95):.0f} | {ranks_a.max()} |")
                log(diag[-1])
    head = "| first stage | needle tokens whose source token is probed | source rank by stage-1 score: median | p95 | max |"
    out += ["", head, "|---|---|---|---|---|", *diag]
    out.append(f"\n(generation {cost['gen']:.0f} s; codebook assignment {cost['assign'] / n * 1e3:.2f} ms/row; write ms/row is CPU time; "
               "bytes/row = tokens x (4-byte row id + sketch) + fp16 codebook share; +rows adds a 2-byte code per token;"
               " stage-1 times are NumPy on this 2-core machine)")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
