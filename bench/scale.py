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

Exact MaxSim is computed over what the index stores: the token table's bytes are read back
(a server-side cursor) and scored here in NumPy, so no page is generated or pooled twice.
``--write-until HH:MM`` (UTC) stops writing at that time and goes on with the pages written (a
run that must end by a deadline reports the largest size it reached). The search-time split
(first stage: candidates and their rescoring; then the token fetch and exact scoring) is read
from ``SET pgmaxsim.timing`` notices on a second pass over the queries.
Pooling at ingest costs ~30-75 ms per 1,000-token page on one core here (pgmaxsim.pooling).
"""

from __future__ import annotations

import argparse
import calendar
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "plugin"))

import psycopg
from _server import bench_server
from needle import NeedleCorpus
from pgmaxsim import codebook, writes
from pgmaxsim.db.adapters import Tokens, register_tokens
from pgmaxsim.kernels import quantize
from pgmaxsim.registry import get_index


def exact_from_stored(conn: psycopg.Connection, queries: list[np.ndarray], storage: str, dim: int,
                      log: object) -> tuple[np.ndarray, np.ndarray]:
    """(row ids, (n_queries, n_rows) exact MaxSim) over the stored bytes of the token table."""
    qall = np.concatenate(queries).astype(np.float32)
    starts = np.cumsum([0] + [len(q) for q in queries[:-1]])
    ids: list[int] = []
    cols: list[np.ndarray] = []
    t0 = time.time()
    with conn.transaction(), conn.cursor(name="exact") as cur:
        cur.itersize = 256
        cur.execute(f"SELECT id, tokens FROM maxsim.{index_table(conn)}")
        while True:
            rows = cur.fetchmany(256)
            if not rows:
                break
            docs = [quantize.dequantize(*quantize.decode_tokens(bytes(b), dim, storage)) for _, b in rows]
            offsets = np.cumsum([0] + [len(d) for d in docs[:-1]])
            sims = np.concatenate(docs) @ qall.T                      # (tokens, query tokens)
            best = np.maximum.reduceat(sims, offsets, axis=0)          # (rows, query tokens)
            cols.append(np.add.reduceat(best, starts, axis=1).T)       # (queries, rows)
            ids.extend(int(r[0]) for r in rows)
            if len(ids) % 10_240 == 0:
                log(f"  exact: {len(ids)} rows, {time.time() - t0:.0f} s")
    return np.array(ids), np.concatenate(cols, axis=1)


def index_table(conn: psycopg.Connection) -> str:
    return conn.execute("SELECT token_table FROM maxsim.indexes WHERE name = 'pages_idx'").fetchone()[0]


_SPLIT = {  # notice pattern -> what it times (060_search.sql, plpy/api.py)
    "candidates": re.compile(r"candidates \S+ \(([\d.]+) ms"),
    "rescore": re.compile(r"centroid interaction \(([\d.]+) ms"),
    "fetch": re.compile(r"fetch ([\d.]+) ms"),
    "score": re.compile(r"score ([\d.]+) ms"),
}


def timed_split(conn: psycopg.Connection, queries: list[np.ndarray], name: str = "pages_idx",
                candidates: int | None = None) -> dict[str, float]:
    """Median ms of each search stage over ``queries`` (pgmaxsim.timing notices)."""
    seen: dict[str, list[float]] = {k: [] for k in _SPLIT}
    notes: list[str] = []
    conn.add_notice_handler(lambda d: notes.append(d.message_primary or ""))
    conn.execute("SET pgmaxsim.timing = on")
    for q in queries:
        notes.clear()
        conn.execute("SELECT id, score FROM maxsim.search(%s, %s, 10, %s)", (name, Tokens(q), candidates)).fetchall()
        for key, pat in _SPLIT.items():
            vals = [float(m.group(1)) for n in notes for m in [pat.search(n)] if m]
            seen[key].append(sum(vals))
    conn.execute("SET pgmaxsim.timing = off")
    return {k: float(np.median(v)) if v else 0.0 for k, v in seen.items()}


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
    ap.add_argument("--write-until", help="HH:MM (UTC): stop writing then and go on with the pages written")
    ap.add_argument("--train-at-end", action="store_true",
                    help="codebook first stage: write every page first (no training while writing), then train"
                         " once (what `pgmaxsim index reindex NAME --first-stage` does), timed apart")
    args = ap.parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with bench_server(args.dsn, settings={"shared_buffers": "1GB", "max_wal_size": "4GB",
                                          "maintenance_work_mem": "512MB"}) as dsn:
        return run(dsn, args, log)


def pick_queries(corpus: NeedleCorpus, written: int, n: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """``n`` source pages drawn at random among those written, and their needle queries (a page with
    fewer tokens of its two main topics than a needle query copies is passed over)."""
    sources, queries = [], []
    for i in np.random.default_rng(seed).permutation(written):
        try:
            queries.append(corpus.query(int(i)))
        except ValueError:
            continue
        sources.append(int(i))
        if len(sources) == n:
            break
    return np.array(sources), queries


def _deadline(hhmm: str | None) -> float:
    """The epoch second of today's ``HH:MM`` UTC (inf when none)."""
    if not hhmm:
        return float("inf")
    h, m = (int(x) for x in hhmm.split(":"))
    now = time.gmtime()
    return calendar.timegm((now.tm_year, now.tm_mon, now.tm_mday, h, m, 0))


def run(dsn: str, args: argparse.Namespace, log: object) -> int:
    corpus = NeedleCorpus(args.pages, seed=args.seed)
    opts = {"storage": args.storage, "pool_factor": args.pool_factor}
    if args.first_stage:
        opts["first_stage"] = args.first_stage
    if args.train_at_end:
        opts["train_tokens"] = 2_000_000_000
    stop_at = _deadline(args.write_until)
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
        written = 0
        for start in range(0, args.pages, args.batch):
            if time.time() >= stop_at:
                log(f"  --write-until {args.write_until} reached after {written} pages")
                break
            g0 = time.time()
            ids = list(range(start, min(start + args.batch, args.pages)))
            pages = [corpus.page(i)[0] for i in ids]
            gen += time.time() - g0
            raw_bytes += sum(p.shape[0] * p.shape[1] * 2 for p in pages)
            writes.write_rows(conn, index, ids, pages)
            if not args.train_at_end:
                codebook.train_due(conn, "pages_idx")   # the worker's trainer, in line (writes only mark it due)
            written += len(ids)
            if start and start % (args.batch * 100) == 0:
                log(f"  wrote {written} pages, {written / (time.time() - t0 - gen):.0f} pages/s,"
                    f" load {os.getloadavg()[0]:.1f}, {time.strftime('%H:%M:%S', time.gmtime())}")
        build = time.time() - t0 - gen
        log(f"  wrote {written} pages in {build:.0f} s")
        train_s = None
        if args.train_at_end:
            t1 = time.time()
            trained = codebook.train(conn, "pages_idx")
            train_s = time.time() - t1
            log(f"  trained: {trained}")
        log("  VACUUM ANALYZE")
        conn.execute("VACUUM ANALYZE")
        info = conn.execute("SELECT rows, bytes, pooling FROM maxsim.index_info('pages_idx')").fetchone()
        sources, queries = pick_queries(corpus, written, args.queries, args.seed + 1)
        s0 = time.perf_counter()
        conn.execute("SELECT id, score FROM maxsim.search('pages_idx', %s, 10)", (Tokens(queries[0]),)).fetchall()
        first_ms = (time.perf_counter() - s0) * 1000
        latencies, got = [], []
        for q in queries:
            s0 = time.perf_counter()
            rows = conn.execute("SELECT id, score FROM maxsim.search('pages_idx', %s, 10)", (Tokens(q),)).fetchall()
            latencies.append((time.perf_counter() - s0) * 1000)
            got.append([int(r[0]) for r in rows])
        load_search = os.getloadavg()[0]
        split = timed_split(conn, queries)
        log("  exact MaxSim in NumPy over the stored bytes ...")
        row_ids, exact_cols = exact_from_stored(conn, queries, args.storage, 128, log)
    order = np.argsort(row_ids)
    row_ids, exact = row_ids[order], exact_cols[:, order]
    pos = {int(r): j for j, r in enumerate(row_ids)}
    top1 = np.mean([g[:1] == [int(s)] for g, s in zip(got, sources)])
    exact_top1 = np.mean([int(row_ids[int(np.argmax(e))]) == int(s) for e, s in zip(exact, sources)])
    rec, mass = [], []
    for e, g in zip(exact, got):
        ref = np.argsort(-e, kind="stable")[:10]
        rec.append(len(set(row_ids[ref].tolist()) & set(g)) / 10)
        mass.append(float(sum(e[pos[i]] for i in g) / e[ref].sum()) if g else 0.0)
    print(f"{written} pages of {args.pages} asked ({raw_bytes / written / 1024:.0f} KiB raw fp16 per page),"
          f" storage {args.storage}, pool factor {args.pool_factor},"
          f" first stage {info[2]}, {len(queries)} needle queries;"
          f" load {os.getloadavg()[0]:.1f} (searches: {load_search:.1f})")
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| build (write_rows incl. first-stage training, excluding page generation) | {build:.0f} s,"
          f" {written / build:.1f} pages/s |")
    if train_s is not None:
        print(f"| first-stage training after the writes (codebook.train: sample, k-means, codes of every row,"
              f" VACUUM, REINDEX) | {train_s:.0f} s |")
    print(f"| index bytes (index_info) | {info[1] / 2**30:.2f} GiB, {info[1] / info[0] / 1024:.1f} KiB/row,"
          f" {info[1] / raw_bytes:.3f} x raw fp16 |")
    print(f"| first search after the build | {first_ms:.0f} ms |")
    print(f"| default search p50 / p95 | {np.percentile(latencies, 50):.0f} / {np.percentile(latencies, 95):.0f} ms |")
    print(f"| split, median ms (pgmaxsim.timing pass) | candidates {split['candidates']:.1f},"
          f" rescore {split['rescore']:.1f}, token fetch {split['fetch']:.1f}, exact scoring {split['score']:.1f} |")
    print(f"| source at top-1: default / exact | {top1:.0%} / {exact_top1:.0%} |")
    print(f"| recall@10 vs exact | {np.mean(rec):.3f} |")
    print(f"| score-mass@10 vs exact | {np.mean(mass):.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
