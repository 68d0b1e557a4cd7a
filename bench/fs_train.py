"""Where the codebook first stage's training time goes: in the writes, or beside them.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/fs_train.py --pages 2000
    OPENBLAS_NUM_THREADS=1 PYTHONPATH=/path/to/older/plugin .venv/bin/python bench/fs_train.py --pages 2000  # before

Starts a PostgreSQL 15 like the test suite (or --dsn), creates a codebook index (default options:
train_tokens 65,536, retrained each time the rows double), writes needle pages (bench/needle.py:
600-1,400 tokens of d=128) in batches with pgmaxsim.writes.write_rows (the write path of the worker
and Index.upsert), timing every batch. With a build where writes train, the batches that cross a
threshold carry the training; with one where writes only mark the index due, the script trains it
after the writes (pgmaxsim.codebook.train, as the worker's trainer or `index reindex --first-stage`
does) and, if the server has plpython3u, once more with maxsim.train_first_stage (in the server).
Prints batch p50 / max, the slowest batches, and each training's time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pgmaxsim  # noqa: F401 - the one on PYTHONPATH (or installed), before bench/needle.py adds this tree's
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import bench_server
from needle import NeedleCorpus


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dsn", help="an existing server with pgvector and pgmaxsim's migrations")
    args = ap.parse_args(argv)
    with bench_server(args.dsn, settings={"shared_buffers": "1GB", "max_wal_size": "8GB"}) as dsn:
        return _run(dsn, args)


def _run(dsn: str, args: argparse.Namespace) -> int:
    from pgmaxsim import codebook, writes
    from pgmaxsim.db.adapters import register_tokens
    from pgmaxsim.registry import get_index

    corpus = NeedleCorpus(args.pages, 0)
    marks_only = hasattr(codebook, "mark_due")
    with psycopg.connect(dsn, autocommit=True) as conn:
        register_tokens(conn)
        conn.execute("CREATE TABLE pages (id bigint PRIMARY KEY)")
        conn.execute("INSERT INTO pages SELECT g FROM generate_series(1, %s) g", (args.pages,))
        conn.execute("SELECT maxsim.create_index('fs', 'pages', 'id', dim => 128)")
        spec = get_index(conn, "fs")
        batches: list[tuple[float, int, object, object]] = []
        tokens = 0
        for a in range(0, args.pages, args.batch):
            ids = list(range(a + 1, min(args.pages, a + args.batch) + 1))
            pages = [corpus.page(i - 1)[0] for i in ids]
            tokens += sum(len(p) for p in pages)
            t = time.perf_counter()
            writes.write_rows(conn, spec, ids, pages)
            ms = (time.perf_counter() - t) * 1e3
            opts = get_index(conn, "fs").options
            batches.append((ms, ids[-1], opts.get("fs_gen"), opts.get("fs_due")))
        ms = np.array([b[0] for b in batches])
        print(f"{args.pages} pages, {tokens:,} tokens, batches of {args.batch}; writes "
              f"{'mark the index due' if marks_only else 'train'}; load {os.getloadavg()[0]:.1f}")
        print()
        print("| measure | value |")
        print("|---|---|")
        print(f"| write batch p50 / p95 / max | {np.percentile(ms, 50):.0f} / {np.percentile(ms, 95):.0f} / {ms.max():.0f} ms |")
        print(f"| all batches | {ms.sum() / 1e3:.1f} s |")
        slow = sorted(batches, reverse=True)[:4]
        print("| slowest batches (ms, up to page, live generation after, due) | "
              + "; ".join(f"{b[0]:.0f} ms @ {b[1]} gen {b[2]} due {'yes' if b[3] else 'no'}" for b in slow) + " |")
        if marks_only:
            t = time.perf_counter()
            done = codebook.train(conn, "fs")
            print(f"| codebook.train (client, after the writes) | {time.perf_counter() - t:.1f} s: {done.n_coarse} x"
                  f" {done.n_fine} codes on {done.sample_tokens:,} tokens in {done.seconds_train:.1f} s, codes of"
                  f" {done.rows} rows in {done.seconds_fill:.1f} s (+ VACUUM / REINDEX) |")
            if conn.execute("SELECT maxsim.has_plpython()").fetchone()[0]:
                t = time.perf_counter()
                got = conn.execute("SELECT maxsim.train_first_stage('fs')").fetchone()[0]
                print(f"| maxsim.train_first_stage (in the server, one transaction) | {time.perf_counter() - t:.1f} s:"
                      f" {got['n_coarse']} x {got['n_fine']} codes on {got['sample_tokens']:,} tokens |")
        print(f"| load after | {os.getloadavg()[0]:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
