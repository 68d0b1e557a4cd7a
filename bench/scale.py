"""Scale run: ColQwen-shaped pages through the real write path and the real ``maxsim.search``.

    .venv/bin/python bench/scale.py --pages 100000 --storage int8 --queries 20
    .venv/bin/python bench/scale.py --pages 2000 --queries 10            # a quick look

Pages and queries are bench/needle.py's (600-1,400 tokens, d=128, 256 shared topics; a query
is 14 near-copies of tokens of one page + 10 generic tokens of its topics). The run:

1. starts its own PostgreSQL 15 (tests/pgserver.py; or ``--dsn``), migrates, creates one index
   with ``--storage`` / ``--pool-factor`` / ``--first-stage`` (default: the index default);
2. writes every page with ``pgmaxsim.writes.write_rows`` in batches (the worker's write step),
   timing it; a codebook first stage is trained whenever a write marks it due, as the worker would
   (counted in the build time);
3. reports the index's bytes from ``maxsim.index_info`` against the raw fp16 token bytes;
4. searches ``--queries`` needle queries with ``maxsim.search`` (default candidates, in-backend
   PL/Python scoring: no scorer process), p50/p95, and compares with exact MaxSim computed here in
   NumPy over the stored representation (pages regenerated and encoded as the index stores them):
   source row at top-1, recall@10 and score-mass@10 against exact.

Pooling at ingest is O(n^3) per page (Ward on cosine-distance rows, as colpali-engine), about
0.3-1 s per 1,000-token page on this machine: a 100K run with ``--pool-factor`` > 1 takes many
hours here, so the default is pool factor 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "plugin"))

import psycopg  # noqa: E402

from needle import NeedleCorpus  # noqa: E402
from pgmaxsim import codebook, pooling, writes  # noqa: E402
from pgmaxsim.db.adapters import Tokens, register_tokens  # noqa: E402
from pgmaxsim.kernels import quantize  # noqa: E402
from pgmaxsim.registry import get_index  # noqa: E402


def stored_values(page: np.ndarray, storage: str, factor: int) -> np.ndarray:
    """A page's tokens as the index stores them, dequantized (what exact MaxSim scores)."""
    x = page.astype(np.float32)
    if factor > 1:
        x = pooling.pool_tokens(x, factor)
    return quantize.dequantize(*quantize.decode_tokens(quantize.encode_tokens(x, storage), x.shape[1], storage))


def exact_scores(corpus: NeedleCorpus, queries: list[np.ndarray], storage: str, factor: int,
                 log: object) -> np.ndarray:
    """(n_queries, n_pages) exact MaxSim over the stored representation, one pass over the pages."""
    out = np.zeros((len(queries), corpus.n_pages), dtype=np.float32)
    qs = [q.astype(np.float32) for q in queries]
    t0 = time.time()
    for i in range(corpus.n_pages):
        doc = stored_values(corpus.page(i)[0], storage, factor)
        sims = np.concatenate(qs) @ doc.T
        best = sims.max(axis=1)
        out[:, i] = np.add.reduceat(best, np.cumsum([0] + [len(q) for q in qs[:-1]]))
        if i and i % 10_000 == 0:
            log(f"  exact: {i} pages, {time.time() - t0:.0f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--storage", default="int8", choices=["fp16", "int8"])
    ap.add_argument("--pool-factor", type=int, default=1)
    ap.add_argument("--first-stage", default=None, help="codebook | centroids | mean (default: the index default)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dsn", help="an existing server with pgvector and pgmaxsim's migrations")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    server = None
    if args.dsn:
        dsn = args.dsn
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        from pgserver import LocalPostgres, make_readable_pylib

        pylib_root = Path(tempfile.mkdtemp(prefix="pgmaxsim-scale-pylib-"))
        os.chmod(pylib_root, 0o755)
        server = LocalPostgres().start(pylib=make_readable_pylib(pylib_root / "site"),
                                       settings={"shared_buffers": "1GB", "max_wal_size": "4GB"})
        server.wait_ready()
        dsn = server.dsn()
        from pgmaxsim.db import migrate

        migrate.upgrade(dsn)
    try:
        return run(dsn, args, log)
    finally:
        if server is not None:
            server.stop()


def run(dsn: str, args: argparse.Namespace, log: object) -> int:
    corpus = NeedleCorpus(args.pages, seed=args.seed)
    rng = np.random.default_rng(args.seed + 1)
    sources = rng.choice(args.pages, size=args.queries, replace=False)
    queries = [corpus.query(int(i)) for i in sources]
    opts = {"storage": args.storage, "pool_factor": args.pool_factor}
    if args.first_stage:
        opts["first_stage"] = args.first_stage
    with psycopg.connect(dsn, autocommit=True) as conn:
        register_tokens(conn)
        conn.execute("CREATE TABLE pages (id integer PRIMARY KEY)")
        conn.execute("INSERT INTO pages SELECT g FROM generate_series(0, %s) g", (args.pages - 1,))
        conn.execute("SELECT maxsim.create_index('pages_idx', 'pages', 'id', dim => 128, options => %s::jsonb)",
                     (psycopg.types.json.Jsonb(opts),))
        index = get_index(conn, "pages_idx")
        raw_bytes = 0
        t0 = time.time()
        gen = 0.0
        for start in range(0, args.pages, args.batch):
            g0 = time.time()
            ids = list(range(start, min(start + args.batch, args.pages)))
            pages = [corpus.page(i)[0] for i in ids]
            gen += time.time() - g0
            raw_bytes += sum(p.shape[0] * p.shape[1] * 2 for p in pages)
            writes.write_rows(conn, index, ids, pages)
            codebook.train_due(conn, "pages_idx")   # the worker's trainer, in line (writes only mark it due)
            if start and start % (args.batch * 100) == 0:
                done = start + len(ids)
                log(f"  wrote {done} pages, {done / (time.time() - t0 - gen):.0f} pages/s")
        build = time.time() - t0 - gen
        conn.execute("VACUUM ANALYZE")
        info = conn.execute("SELECT rows, bytes, options FROM maxsim.index_info('pages_idx')").fetchone()
        latencies, got = [], []
        for q in queries:
            s0 = time.perf_counter()
            rows = conn.execute("SELECT id, score FROM maxsim.search('pages_idx', %s, 10)", (Tokens(q),)).fetchall()
            latencies.append((time.perf_counter() - s0) * 1000)
            got.append([int(r[0]) for r in rows])
    log("  exact MaxSim in NumPy over the stored representation ...")
    exact = exact_scores(corpus, queries, args.storage, args.pool_factor, log)
    top1 = np.mean([g[:1] == [int(s)] for g, s in zip(got, sources)])
    exact_top1 = np.mean([int(np.argmax(e)) == int(s) for e, s in zip(exact, sources)])
    rec, mass = [], []
    for e, g in zip(exact, got):
        ref = np.argsort(-e, kind="stable")[:10]
        rec.append(len(set(ref.tolist()) & set(g)) / 10)
        mass.append(float(e[g].sum() / e[ref].sum()) if g else 0.0)
    print(f"{args.pages} pages ({raw_bytes / args.pages / 1024:.0f} KiB raw fp16 per page), storage {args.storage},"
          f" pool factor {args.pool_factor}, first stage {info[2].get('first_stage', info[2].get('pooling', '?'))},"
          f" {args.queries} needle queries; load {os.getloadavg()[0]:.1f}")
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| build (write_rows, excluding page generation) | {build:.0f} s, {args.pages / build:.0f} pages/s |")
    print(f"| index bytes (index_info) | {info[1] / 2**30:.2f} GiB, {info[1] / info[0] / 1024:.1f} KiB/row,"
          f" {info[1] / raw_bytes:.3f} x raw fp16 |")
    print(f"| default search p50 / p95 | {np.percentile(latencies, 50):.0f} / {np.percentile(latencies, 95):.0f} ms |")
    print(f"| source at top-1: default / exact | {top1:.0%} / {exact_top1:.0%} |")
    print(f"| recall@10 vs exact | {np.mean(rec):.3f} |")
    print(f"| score-mass@10 vs exact | {np.mean(mass):.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
