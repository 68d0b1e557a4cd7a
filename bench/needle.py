"""Needle benchmark: does the first stage keep the row that one query token matches exactly?

    .venv/bin/python bench/needle.py --pages 10000 --queries 60           # NumPy, every first stage
    .venv/bin/python bench/needle.py --pages 100000 --queries 30 --no-exact   # 100K, no full exact pass
    .venv/bin/python bench/needle.py --pages 10000 --pg                   # + latency through PostgreSQL

Corpus (issue 18): ``--pages`` pages of 600-1,400 fp16 tokens, d=128. 256 shared topics
(Zipf popularity); a page covers 4-12 of them; each token is its topic plus a private
direction of the same length (cos 0.71 to the topic, about 0.5 between two tokens of one
topic: individually distinct). A query = 14 near-copies (cos ~0.97) of tokens of its
source page + 10 generic tokens, all on the page's two most popular topics, so the hundreds
of rows with those topics tie on everything but the copied tokens, and only a token-level
first stage can tell the source apart.

First stages, each given a budget of ``candidates`` rows to score exactly:

- ``centroids``: today's default, emulated exactly (``maxsim._candidates`` + ``_rescore``):
  16 per-row k-means centroids; each query token probes its nearest ``max(64, 4n/4)`` row
  centroids (exact kNN here: an upper bound for the HNSW), gains summed, ``4n`` rows kept,
  then the best ``n`` by centroid interaction.
- ``codebook``: pgmaxsim.firststage, a global two-level codebook (coarse x fine k-means over
  a token sample), inverted lists code -> rows, ``nprobe`` codes per query token, WARP-style
  centroid interaction over the probed lists. ``+CI xR``: keep R x candidates rows that way,
  then the best ``candidates`` by PLAID centroid interaction over all of each row's codes.
- ``tokens-knn``: an exact kNN over every token (the upper bound of an HNSW on a token
  table): each query token's ``ktok`` nearest tokens' rows, scored like ``codebook``.
- ``muvera``: fixed-dimensional encodings (SimHash buckets, per-bucket mean of the row's
  tokens / sum of the query's, random projections), searched exactly by inner product
  (the upper bound of an HNSW on them).

Printed per first stage and budget: source row at top-1, recall@10 and score-mass@10 against
exact MaxSim, rows scored, first-stage time per query (NumPy), bytes per row of the first
stage, write cost per row (NumPy, one core's share of this machine).

At 100K pages the tokens are not kept (12.8 GB fp16): each chunk is generated, encoded and
dropped, and with ``--no-exact`` only the rows some first stage proposes are regenerated and
scored exactly; the source row counts as top-1 when it is proposed and no proposed row
beats it (exact search ranks it first in every 10K query; the 10K run checks that).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plugin"))

from pgmaxsim import firststage as fs
from pgmaxsim import pooling
from search import _unit, percentile

D = 128
N_TOPICS = 256
N_NEEDLE = 14
N_GENERIC = 10


class NeedleCorpus:
    """Deterministic needle pages and queries (module docstring); page ``i`` from its own seed."""

    def __init__(self, n_pages: int, seed: int = 0, d: int = D) -> None:
        rng = np.random.default_rng(seed)
        self.n_pages, self.seed, self.d = n_pages, seed, d
        self.topics = _unit(rng.standard_normal((N_TOPICS, d)).astype(np.float32))
        pop = 1.0 / np.arange(1, N_TOPICS + 1) ** 0.7
        self.pop = pop / pop.sum()

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 7, i])

    def size(self, i: int) -> int:
        return int(self._rng(i).integers(600, 1401))

    def page(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Page ``i`` as ``(n, d)`` float16 unit rows, its topic ids, and each token's topic."""
        r = self._rng(i)
        n = int(r.integers(600, 1401))
        t = r.choice(N_TOPICS, size=int(r.integers(4, 13)), replace=False, p=self.pop)
        which = t[r.choice(len(t), size=n, p=r.dirichlet(np.ones(len(t))))]
        private = _unit(r.standard_normal((n, self.d), dtype=np.float32))
        return _unit(self.topics[which] + private).astype(np.float16), t, which

    def query(self, i: int, seed: int = 0) -> np.ndarray:
        """``(24, d)`` float16: 14 near-copies of page ``i``'s tokens + 10 generic topic tokens.

        All from the page's two most popular topics, which hundreds of pages share: a row that
        matches the query's topics ties with the source everywhere but on the copied tokens.
        """
        tokens, t, which = self.page(i)
        focus = np.sort(t)[:2]  # topic ids are in decreasing popularity
        r = np.random.default_rng([self.seed, 11, seed, i])
        pick = r.choice(np.flatnonzero(np.isin(which, focus)), size=N_NEEDLE, replace=False)
        near = _unit(tokens[pick].astype(np.float32)
                     + 0.25 * _unit(r.standard_normal((N_NEEDLE, self.d), dtype=np.float32)))
        gen = _unit(self.topics[r.choice(focus, size=N_GENERIC)]
                    + 0.25 * _unit(r.standard_normal((N_GENERIC, self.d), dtype=np.float32)))
        return np.concatenate([near, gen]).astype(np.float16)


# ------------------------------------------------------------------ first stages (NumPy)

def row_centroids(pages: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Today's per-row centroids: (sum c_i, d) float16 and the row of each."""
    cents = [pooling.centroids(p, pooling.n_centroids(len(p))) for p in pages]
    return (np.concatenate(cents).astype(np.float16),
            np.repeat(np.arange(len(cents)), [len(c) for c in cents]).astype(np.int32))


def centroids_candidates(cent: np.ndarray, cent_row: np.ndarray, q: np.ndarray, n: int,
                         probe: int = 64, rescore: int = 4) -> np.ndarray:
    """maxsim._candidates (centroids pooling) then maxsim._rescore, with exact kNN for the HNSW."""
    n_rows = int(cent_row.max()) + 1
    wide = n * rescore
    p = min(1000, max(probe, wide // 4))
    sims = q.astype(np.float32) @ cent.astype(np.float32).T  # (nq, C)
    top = np.argpartition(-sims, p, axis=1)[:, :p]
    ts = np.take_along_axis(sims, top, 1)
    gain = np.zeros((len(q), n_rows), dtype=np.float32)
    tr = cent_row[top]
    order = np.argsort(ts, axis=None, kind="stable")
    qi = np.repeat(np.arange(len(q)), p)[order]
    gain[qi, tr.ravel()[order]] = (ts - ts.min(1, keepdims=True)).ravel()[order]
    tot = gain.sum(0)
    reached = np.flatnonzero(tot > 0) if np.any(tot > 0) else np.unique(tr)
    wide_rows = reached[np.argsort(-tot[reached], kind="stable")[:wide]]
    if len(wide_rows) <= n:
        return wide_rows
    # centroid interaction: sum over query tokens of the max over the row's centroids
    ci = np.full((len(q), len(wide_rows)), -np.inf, dtype=np.float32)
    pos = {int(r): j for j, r in enumerate(wide_rows)}
    mask = np.isin(cent_row, wide_rows)
    idx = np.flatnonzero(mask)
    cols = np.array([pos[int(r)] for r in cent_row[idx]])
    s = sims[:, idx]
    order = np.argsort(s, axis=1, kind="stable")
    for qi_ in range(len(q)):
        ci[qi_, cols[order[qi_]]] = s[qi_, order[qi_]]
    return wide_rows[np.argsort(-ci.sum(0), kind="stable")[:n]]


def knn_candidates(page_tok_max: np.ndarray, cols: slice, n: int, ktok: int) -> np.ndarray:
    """Exact token kNN: each query token's ``ktok`` best rows by their best token, WARP-scored.

    Counting each row once per query token makes this an upper bound of ``ktok`` token hits.
    """
    m = page_tok_max[:, cols].T  # (nq, rows)
    top = np.argpartition(-m, ktok, axis=1)[:, :ktok]
    ts = np.take_along_axis(m, top, 1)
    floor = ts.min(1, keepdims=True)
    score = np.repeat(floor, m.shape[1], axis=1)
    np.put_along_axis(score, top, ts, 1)
    tot = score.sum(0)
    reached = np.unique(top)
    return reached[np.argsort(-tot[reached], kind="stable")[:n]]


class Muvera:
    """Fixed-dimensional encodings (MUVERA): ``reps`` x 2^``bits`` buckets x ``dproj`` dims."""

    def __init__(self, d: int, reps: int = 10, bits: int = 4, dproj: int = 16, seed: int = 0) -> None:
        rng = np.random.default_rng([seed, 99])
        self.reps, self.bits, self.dproj = reps, bits, dproj
        self.planes = rng.standard_normal((reps, d, bits)).astype(np.float32)
        self.proj = (rng.choice([-1.0, 1.0], size=(reps, d, dproj)) / np.sqrt(dproj)).astype(np.float32)
        self.dims = reps * (1 << bits) * dproj
        self.planes_flat = self.planes.transpose(1, 0, 2).reshape(d, reps * bits)
        self.proj_flat = self.proj.transpose(1, 0, 2).reshape(d, reps * dproj)

    def encode(self, tokens: np.ndarray, query: bool) -> np.ndarray:
        x = tokens.astype(np.float32)
        n, nb = len(x), 1 << self.bits
        bits = (x @ self.planes_flat > 0).reshape(n, self.reps, self.bits)
        buckets = bits.astype(np.int64) @ (1 << np.arange(self.bits))  # (n, reps)
        y = (x @ self.proj_flat).reshape(n, self.reps, self.dproj)
        out = np.zeros((self.reps, nb, self.dproj), dtype=np.float32)
        for r in range(self.reps):
            onehot = (buckets[:, r, None] == np.arange(nb)).astype(np.float32)  # (n, nb)
            out[r] = onehot.T @ y[:, r]
            if not query:
                counts = onehot.sum(0)
                out[r] /= np.maximum(counts, 1)[:, None]
                for b in np.flatnonzero(counts == 0):  # an empty bucket takes the token nearest it in Hamming
                    ham = (bits[:, r] != ((b >> np.arange(self.bits)) & 1)).sum(1)
                    out[r, b] = y[int(ham.argmin()), r]
        return out.ravel()


# ------------------------------------------------------------------ the run

def exact_pass(tokens: np.ndarray, offsets: np.ndarray, qall: np.ndarray, chunk: int = 40_000) -> np.ndarray:
    """``(n_pages, nq_total)`` float32: each page's best similarity to each query token."""
    n = len(offsets) - 1
    out = np.empty((n, len(qall)), dtype=np.float32)
    qt = qall.astype(np.float32).T
    a = 0
    while a < n:
        b = int(np.searchsorted(offsets, offsets[a] + chunk, side="right")) - 1
        b = min(max(b, a + 1), n)
        blk = tokens[offsets[a]:offsets[b]].astype(np.float32) @ qt
        out[a:b] = np.maximum.reduceat(blk, offsets[a:b] - offsets[a], axis=0)
        a = b
    return out


def measure(name: str, fn: Callable[[int, np.ndarray, int], np.ndarray], queries: list[np.ndarray],
            sources: np.ndarray, budgets: list[int], exact_of: Callable[[int, np.ndarray], np.ndarray],
            exact_full: np.ndarray | None, extra: str, log: Callable[[str], None], n_rows: int) -> list[str]:
    lines = []
    for n in budgets:
        times, top1, rec, mass = [], 0, [], []
        for qi, q in enumerate(queries):
            t0 = time.perf_counter()
            cand = fn(qi, q, n)
            times.append((time.perf_counter() - t0) * 1e3)
            sc = exact_of(qi, cand)
            order = np.argsort(-sc, kind="stable")[:10]
            got = cand[order]
            top1 += bool(len(got)) and got[0] == sources[qi]
            if exact_full is not None:
                ref = np.argsort(-exact_full[qi], kind="stable")[:10]
                rec.append(len(set(got.tolist()) & set(ref.tolist())) / 10)
                mass.append(exact_full[qi, got].sum() / exact_full[qi, ref].sum())
        r = f"{np.mean(rec):.3f}" if rec else "-"
        m = f"{np.mean(mass):.4f}" if mass else "-"
        lines.append(f"| {name} | {n} ({n / n_rows:.1%}) | {top1 / len(queries):.1%} |"
                     f" {r} | {m} | {percentile(times, 50):.1f} | {percentile(times, 95):.1f} | {extra} |")
        log(lines[-1])
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--budgets", default="", help="candidates settings (default: 64, 0.5%%, 1%%, 2%%)")
    ap.add_argument("--coarse", type=int, default=256)
    ap.add_argument("--fine", type=int, default=256)
    ap.add_argument("--nprobe", default="8,32", help="codes probed per query token (comma list)")
    ap.add_argument("--coarse-probe", type=int, default=2)
    ap.add_argument("--sample", type=int, default=200_000, help="tokens to train the codebook on")
    ap.add_argument("--rescore", type=int, default=4,
                    help="+CI rows: keep rescore x candidates by the probe score, then centroid interaction")
    ap.add_argument("--ktok", type=int, default=100)
    ap.add_argument("--no-exact", action="store_true", help="skip the full exact pass (100K)")
    ap.add_argument("--no-centroids", action="store_true", help="skip today's per-row centroids")
    ap.add_argument("--no-muvera", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    n = args.pages
    corpus = NeedleCorpus(n, args.seed)
    budgets = ([int(b) for b in args.budgets.split(",")] if args.budgets
               else sorted({64, n // 200, n // 100, n // 50}))
    qrng = np.random.default_rng(args.seed + 1)
    sources = qrng.choice(n, size=args.queries, replace=False)
    queries = [corpus.query(int(i)) for i in sources]
    qall = np.concatenate(queries)
    keep = not args.no_exact

    # codebook trained on a token sample from a random subset of pages (as a retrain would)
    t0 = time.perf_counter()
    srng = np.random.default_rng(args.seed + 2)
    sample_pages = srng.choice(n, size=min(n, max(1, args.sample // 500)), replace=False)
    sample = np.concatenate([corpus.page(int(i))[0] for i in sample_pages])
    sample = sample[srng.choice(len(sample), size=min(len(sample), args.sample), replace=False)]
    cb = fs.train(sample, args.coarse, args.fine, seed=args.seed)
    train_s = time.perf_counter() - t0
    log(f"codebook {args.coarse}x{args.fine} trained on {len(sample):,} tokens in {train_s:.0f} s")

    mu = Muvera(D, seed=args.seed)
    sizes = np.array([corpus.size(i) for i in range(n)])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    tokens = np.empty((int(offsets[-1]), D), dtype=np.float16) if keep else None
    codes = np.empty(int(offsets[-1]), dtype=np.int32)
    fde = np.zeros((n if not args.no_muvera else 1, mu.dims), dtype=np.float16)
    cents, cent_rows = [], []
    cost = {"gen": 0.0, "codebook": 0.0, "centroids": 0.0, "muvera": 0.0}
    chunk = 500
    for a in range(0, n, chunk):
        t = time.perf_counter()
        pages = [corpus.page(i)[0] for i in range(a, min(n, a + chunk))]
        cost["gen"] += time.perf_counter() - t
        t = time.perf_counter()
        codes[offsets[a]:offsets[a + len(pages)]] = fs.assign(cb, np.concatenate(pages))
        cost["codebook"] += time.perf_counter() - t
        if not args.no_centroids:
            t = time.perf_counter()
            c, r = row_centroids(pages)
            cents.append(c)
            cent_rows.append(r + a)
            cost["centroids"] += time.perf_counter() - t
        if not args.no_muvera:
            t = time.perf_counter()
            for j, p in enumerate(pages):
                fde[a + j] = mu.encode(p, query=False)
            cost["muvera"] += time.perf_counter() - t
        if keep:
            tokens[offsets[a]:offsets[a + len(pages)]] = np.concatenate(pages)
        if (a // chunk) % 20 == 0:
            log(f"  encoded {a + len(pages):,}/{n:,} pages")
    row_of_token = np.repeat(np.arange(n, dtype=np.int32), sizes)
    lists = fs.InvertedLists.build(codes, row_of_token, cb.n_codes)
    del row_of_token
    log(f"  {lists.postings():,} postings ({lists.postings() / n:.0f} distinct codes per row)")

    exact_full = None
    ptm = None
    if keep:
        t = time.perf_counter()
        ptm = exact_pass(tokens, offsets, qall)
        qoff = np.cumsum([0] + [len(q) for q in queries])
        exact_full = np.stack([ptm[:, qoff[i]:qoff[i + 1]].astype(np.float64).sum(1) for i in range(len(queries))])
        log(f"  exact pass {time.perf_counter() - t:.0f} s; exact ranks the source first in "
            f"{np.mean(exact_full.argmax(1) == sources):.1%} of queries")

    def exact_of(qi: int, cand: np.ndarray) -> np.ndarray:
        if exact_full is not None:
            return exact_full[qi, cand]
        q = queries[qi].astype(np.float32)
        return np.array([float((corpus.page(int(r))[0].astype(np.float32) @ q.T).max(0).sum()) for r in cand])

    mean_tok = float(sizes.mean())
    fp16_row = mean_tok * D * 2
    out = [(f"\n## needle, {n:,} pages (d={D}, 600-1400 tokens; mean {mean_tok:.0f} = {fp16_row / 1024:.0f} KB fp16"
           f" per row), {args.queries} queries of {N_NEEDLE} near-copies + {N_GENERIC} generic tokens"),
           (f"codebook {args.coarse}x{args.fine} = {cb.n_codes:,} codes, trained on {len(sample):,} tokens in"
           f" {train_s:.0f} s; {lists.postings() / n:.0f} distinct codes (postings) per row"),
           "",
           ("| first stage | candidates (of rows) | source top-1 | recall@10 | mass@10 | stage-1 p50 ms |"
           " stage-1 p95 ms | bytes/row (% of fp16) ; write ms/row |"),
           "|---|---|---|---|---|---|---|---|"]
    if exact_full is not None:
        out.append(f"| exact | {n} (100%) | {np.mean(exact_full.argmax(1) == sources):.1%} | 1.000 | 1.0000 |"
                   " - | - | - |")

    def w(key: str) -> str:
        return f"{cost[key] / n * 1e3:.2f}"

    if not args.no_centroids:
        cent = np.concatenate(cents)
        cent_row = np.concatenate(cent_rows)
        b = len(cent) / n * (D * 2 + 8 + 200)  # halfvec + heap header + HNSW neighbours (m=16)
        out += measure("centroids (today)", lambda qi, q, k: centroids_candidates(cent, cent_row, q, k),
                       queries, sources, budgets, exact_of, exact_full,
                       f"{b:.0f} ({b / fp16_row:.1%}); {w('centroids')}", log, n)
    per_row = fs.row_codes(lists, n)
    for npb in [int(x) for x in args.nprobe.split(",")]:
        # postings as int4 row numbers in per-code arrays, plus a 2-byte code per token
        b = lists.postings() / n * 4 + mean_tok * 2
        for rs in (None, args.rescore):
            label = f"codebook nprobe={npb}" + (f" +CI x{rs}" if rs else "")
            out += measure(label,
                           lambda qi, q, k, npb=npb, rs=rs: fs.candidates(
                               lists, *fs.probe(cb, q, npb, args.coarse_probe), n, k,
                               rescore=None if rs is None else (cb, q, per_row, rs)),
                           queries, sources, budgets, exact_of, exact_full,
                           f"{b:.0f} ({b / fp16_row:.1%}); {w('codebook')}", log, n)
    if ptm is not None:
        qoff = np.cumsum([0] + [len(q) for q in queries])
        b = mean_tok * (D * 2 + 8 + 200)
        out += measure(f"tokens-knn k={args.ktok}",
                       lambda qi, q, k: knn_candidates(ptm, slice(qoff[qi], qoff[qi + 1]), k, args.ktok),
                       queries, sources, budgets, exact_of, exact_full,
                       f"{b:.0f} ({b / fp16_row:.0%}); HNSW insert of {mean_tok:.0f} tokens", log, n)
    b = mu.dims * 2
    fde32 = fde.astype(np.float32)
    out += [] if args.no_muvera else measure(f"muvera {mu.dims} dims", lambda qi, q, k: np.argsort(-(fde32 @ mu.encode(q, True)))[:k],
                   queries, sources, budgets, exact_of, exact_full,
                   f"{b:.0f} ({b / fp16_row:.1%}); {w('muvera')}", log, n)
    out.append(f"\n(generation {cost['gen']:.0f} s; stage-1 times are NumPy on this 2-core machine; "
               "bytes/row: centroids = 16 halfvecs + HNSW, codebook = int4 postings + int2 code per token,"
               " tokens-knn = every token in an HNSW, muvera = one fp16 FDE)")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
