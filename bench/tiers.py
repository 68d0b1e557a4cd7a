"""Storage tiers through pgmaxsim itself: bytes per row and write throughput, on a real PostgreSQL 15.

    .venv/bin/python bench/tiers.py                          # 1,000 pages (pooled tiers on 200 of them)
    .venv/bin/python bench/tiers.py --pages 200 --pool-pages 50

Pages are bench/search.py's synthetic ColQwen-shaped pages (600-1400 tokens, d=128). For each
tier an index is created with maxsim.create_index and filled with pgmaxsim.writes.write_rows (the
worker's and Index.upsert's write path); it prints

- bytes/row: maxsim.index_info(name).bytes / rows (token table with TOAST and indexes, pooled
  vectors with their HNSW, centroid table with its HNSW or codebook tables and the codes' GIN
  indexes), and that over the raw fp16 token bytes
  (n_tokens x dim x 2) of the same rows. Targets: fp16 <= 1.1x, int8 <= 0.55x, int8 + pool 4 <= 1/8;
- write: pages/s of write_rows (batches of --batch rows, encode + pooled vectors + COPY + commit)
  next to a bare binary COPY of the same stored bytes into a plain bytea table, same run (target
  >= 80 %). Pooled tiers are written on the first --pool-pages pages (token pooling costs
  ~0.3 s/page on this VM: bench/STORAGE.md §3) and not compared for throughput.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]
from pgmaxsim import codebook, writes
from pgmaxsim.db import migrate
from pgmaxsim.kernels.quantize import encode_tokens
from pgmaxsim.registry import get_index
from pgserver import LocalPostgres, make_readable_pylib
from search import Corpus

D = 128


def bare_copy(dsn: str, table: str, blobs: list[bytes], batch: int) -> float:
    """Binary COPY of (id, bytes) into a plain bytea table, committed per batch like write_rows."""
    t = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        for start in range(0, len(blobs), batch):
            with conn.cursor() as cur, cur.copy(f"COPY {table} (id, tokens) FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(["int4", "bytea"])
                for i in range(start, min(start + batch, len(blobs))):
                    cp.write_row((i, blobs[i]))
            conn.commit()
    return time.perf_counter() - t


def fill(dsn: str, name: str, pages: list[np.ndarray], batch: int) -> float:
    t = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        spec = get_index(conn, name)
        for start in range(0, len(pages), batch):
            part = pages[start:start + batch]
            writes.write_rows(conn, spec, list(range(start, start + len(part))), part)
            conn.commit()
            codebook.train_due(conn, name)   # the worker's trainer, in line (writes only mark it due)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=1000)
    ap.add_argument("--pool-pages", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    corpus = Corpus(max(args.pages, 256), seed=0)
    pages = [corpus.page(i) for i in range(args.pages)]
    # first stage codebook (the default; trained whenever a write marks it due, as the worker would,
    # and that is counted in the write time), with today's centroids and mean beside it on fp16
    tiers = [("fp16", "fp16", 1, "codebook", args.pages),
             ("fp16 (first stage centroids)", "fp16", 1, "centroids", args.pages),
             ("fp16 (first stage mean)", "fp16", 1, "mean", args.pages),
             ("int8", "int8", 1, "codebook", args.pages),
             ("int8 + pool_factor 4", "int8", 4, "codebook", min(args.pool_pages, args.pages))]

    pylib_root = Path(tempfile.mkdtemp(prefix="pgmaxsim-pylib-"))
    os.chmod(pylib_root, 0o755)
    pg = LocalPostgres().start(pylib=make_readable_pylib(pylib_root / "site"))
    try:
        pg.wait_ready()
        dsn = pg.dsn()
        migrate.upgrade(dsn)
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE TABLE src (id int PRIMARY KEY)")
            c.execute("INSERT INTO src SELECT g FROM generate_series(0, %s) g", (args.pages,))
            for i, (_, tier, factor, pooling, _n) in enumerate(tiers):
                c.execute("SELECT maxsim.create_index(%s, 'src', 'id', dim => 128, options => %s::jsonb)",
                          (f"t{i}", f'{{"storage": "{tier}", "pool_factor": {factor}, "first_stage": "{pooling}"}}'))
            c.execute("CREATE TABLE bare_fp16 (id int PRIMARY KEY, tokens bytea)")
            c.execute("CREATE TABLE bare_int8 (id int PRIMARY KEY, tokens bytea)")
        print(f"{args.pages} pages ({np.mean([len(p) for p in pages]):.0f} tokens mean, d={D}),"
              f" write batches of {args.batch} rows\n")
        print("| stored | pages | bytes/row | x raw fp16 | write pages/s | bare COPY pages/s | x bare |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for i, (label, tier, factor, _pooling, n) in enumerate(tiers):
            secs = fill(dsn, f"t{i}", pages[:n], args.batch)
            with psycopg.connect(dsn) as c:
                nbytes, rows = c.execute("SELECT bytes, rows FROM maxsim.index_info(%s)", (f"t{i}",)).fetchone()
            raw = sum(len(p) * D * 2 for p in pages[:n]) / n
            ratio = ""
            bare_rate = ""
            if factor == 1:
                blobs = [encode_tokens(p, tier) for p in pages[:n]]
                with psycopg.connect(dsn, autocommit=True) as c:
                    c.execute(f"TRUNCATE bare_{tier}")
                bare = bare_copy(dsn, f"bare_{tier}", blobs, args.batch)
                bare_rate = f"{n / bare:.0f}"
                ratio = f"{bare / secs:.2f}"
            print(f"| {label} | {rows} | {nbytes / rows / 1024:.1f} KiB | {nbytes / rows / raw:.3f} |"
                  f" {n / secs:.0f} | {bare_rate} | {ratio} |", flush=True)
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
