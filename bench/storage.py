"""Stored representation of a row's tokens, measured through a real PostgreSQL 15.

    .venv/bin/python bench/storage.py                      # 384 pages, warm and cold (~5 min on 2 cores)
    .venv/bin/python bench/storage.py --pages 128 --no-cold

A server is started like the test suite's (tests/pgserver.py: LocalPostgres, PL/Python
importing numpy and pgmaxsim from a readable copy). Pages are bench/search.py's synthetic
ColQwen-shaped pages (600-1400 tokens, mean ~1,000, d=128); every variant stores the same
pages. For each variant it prints:

- bytes/row: pg_total_relation_size (heap + TOAST + indexes) / rows, and / raw fp16 bytes;
- write: client encode ms/page, and binary COPY pages/s of the encoded rows (commit included),
  next to a bare binary COPY of the raw fp16 bytes into a plain bytea table in the same run;
- fetch + score of 64 candidate pages (24-token query) in PL/Python, split as the backend sees
  it (fetch = plpy.execute of the rows, score = decode + MaxSim with pgmaxsim.plpy.scoring), warm
  (best and median of repeated calls) and cold (server restarted and the OS page cache dropped
  before the one call; modules imported first on another table, so the figure is the data).

Variants: ``tokens halfvec(128)[]`` (today; array_send + the fp16 table decode), raw LE fp16
``bytea`` (EXTERNAL: uncompressed out-of-line TOAST; EXTENDED with pglz, with lz4), int8 ``bytea``
with one float32 scale per token (pgmaxsim.kernels.quantize layout; EXTERNAL, EXTENDED lz4).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]
from pgmaxsim.db.codec import encode_halfvec_array
from pgmaxsim.kernels.quantize import encode_tokens
from pgmaxsim.kernels.reference import maxsim_reference_many
from pgserver import LocalPostgres, make_readable_pylib
from search import Corpus

D = 128

# name -> (column type, encoding, storage, compression)
VARIANTS = {
    "halfvec[] (today)": ("halfvec(128)[]", "halfvec", None, None),
    "fp16 bytea EXTERNAL": ("bytea", "fp16", "EXTERNAL", None),
    "fp16 bytea EXTENDED pglz": ("bytea", "fp16", "EXTENDED", "pglz"),
    "fp16 bytea EXTENDED lz4": ("bytea", "fp16", "EXTENDED", "lz4"),
    "int8 bytea EXTERNAL": ("bytea", "int8", "EXTERNAL", None),
    "int8 bytea EXTENDED lz4": ("bytea", "int8", "EXTENDED", "lz4"),
}
BARE = "bare: plain bytea, raw fp16"

SCORE_FN = """
CREATE OR REPLACE FUNCTION bench_score(tbl text, kind text, q bytea, ids int[]) RETURNS float8[]
LANGUAGE plpython3u AS $$
import time
from pgmaxsim.plpy import scoring as cpu  # first: caps BLAS at one thread before NumPy loads it
from pgmaxsim.plpy.tokens import row_words
import numpy as np
key = (tbl, kind)
plan = SD.get(key)
if plan is None:
    col = "pg_catalog.array_send(tokens)" if kind == "halfvec" else "tokens"
    plan = SD[key] = plpy.prepare(f"SELECT {col} AS b FROM {plpy.quote_ident(tbl)} WHERE id = ANY($1)", ["int[]"])
t0 = time.perf_counter()
blobs = [r["b"] for r in plpy.execute(plan, [ids])]
t1 = time.perf_counter()
qa = np.frombuffer(q, dtype=np.float32).reshape(-1, 128)
if kind == "halfvec":
    s = cpu.maxsim_rows(qa, [row_words(None, b, 128) for b in blobs])
else:
    s = cpu.maxsim_stored(qa, blobs, 128, kind)
t2 = time.perf_counter()
return [t1 - t0, t2 - t1, float(len(blobs)), float(np.sort(s).sum())]
$$;
"""


def table_name(i: int) -> str:
    return f"v{i}"


def encode(pages: list[np.ndarray], kind: str, elem_oid: int) -> tuple[list[bytes], float]:
    t = time.perf_counter()
    if kind == "halfvec":
        out = [encode_halfvec_array(p, elem_oid) for p in pages]
    else:
        out = [encode_tokens(p, kind) for p in pages]
    return out, (time.perf_counter() - t) / len(pages)


def copy_rows(dsn: str, table: str, blobs: list[bytes]) -> float:
    """Binary COPY of (id, bytes) rows; the bytes go as they are (the column's receive function decodes)."""
    with psycopg.connect(dsn) as conn:
        t = time.perf_counter()
        with conn.cursor() as cur, cur.copy(f"COPY {table} (id, tokens) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(["int4", "bytea"])
            for i, b in enumerate(blobs):
                cp.write_row((i, b))
        conn.commit()
        return time.perf_counter() - t


def drop_os_cache() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=384)
    ap.add_argument("--candidates", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--no-cold", action="store_true")
    args = ap.parse_args()

    corpus = Corpus(max(args.pages, 256), seed=0)
    pages = [corpus.page(i) for i in range(args.pages)]
    raw = [len(p) * D * 2 for p in pages]
    rng = np.random.default_rng(1)
    ids = sorted(rng.choice(args.pages, size=args.candidates, replace=False).tolist())
    q = corpus.query(ids[0], 24).astype(np.float32)

    pylib_root = Path(tempfile.mkdtemp(prefix="pgmaxsim-pylib-"))
    os.chmod(pylib_root, 0o755)
    pg = LocalPostgres().start(pylib=make_readable_pylib(pylib_root / "site"))
    try:
        pg.wait_ready()
        dsn = pg.dsn()
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE EXTENSION IF NOT EXISTS vector")
            c.execute("CREATE EXTENSION IF NOT EXISTS plpython3u")
            c.execute(SCORE_FN)
            elem_oid = int(c.execute("SELECT 'halfvec'::regtype::oid").fetchone()[0])  # type: ignore[index]
            c.execute("CREATE TABLE bare (id int PRIMARY KEY, tokens bytea)")
            c.execute("CREATE TABLE warmup (id int PRIMARY KEY, tokens bytea)")
            c.execute("INSERT INTO warmup VALUES (0, %s)", (encode_tokens(pages[0], "fp16"),))
            for i, (name, (coltype, _, storage, comp)) in enumerate(VARIANTS.items()):
                t = table_name(i)
                c.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, tokens {coltype})")
                if storage:
                    c.execute(f"ALTER TABLE {t} ALTER COLUMN tokens SET STORAGE {storage}")
                if comp:
                    c.execute(f"ALTER TABLE {t} ALTER COLUMN tokens SET COMPRESSION {comp}")

        fp16_blobs, _ = encode(pages, "fp16", elem_oid)
        results: dict[str, dict[str, float]] = {}
        bare_s = []
        with psycopg.connect(dsn, autocommit=True) as c:
            for i, (name, (_, kind, _, _)) in enumerate(VARIANTS.items()):
                blobs, enc = encode(pages, kind, elem_oid)
                # bare COPY of the raw fp16 bytes alongside each variant, so both see the same load
                c.execute("TRUNCATE bare")
                bare_s.append(copy_rows(dsn, "bare", fp16_blobs))
                secs = copy_rows(dsn, table_name(i), blobs)
                c.execute(f"VACUUM ANALYZE {table_name(i)}")
                size = int(c.execute(f"SELECT pg_total_relation_size('{table_name(i)}')").fetchone()[0])  # type: ignore[index]
                results[name] = {"enc_ms": enc * 1e3, "copy_pps": args.pages / secs, "bytes": size / args.pages,
                                 "ratio": size / sum(raw)}
            c.execute("VACUUM ANALYZE bare")
            bare_size = int(c.execute("SELECT pg_total_relation_size('bare')").fetchone()[0])  # type: ignore[index]
        bare_pps = args.pages / statistics.median(bare_s)

        qb = q.tobytes()
        ref = np.sort(maxsim_reference_many(q, [pages[i] for i in ids])).sum()
        with psycopg.connect(dsn, autocommit=True) as c:
            for i, (name, (_, kind, _, _)) in enumerate(VARIANTS.items()):
                runs = []
                for _ in range(args.repeats + 2):
                    f, s, n, tot = c.execute("SELECT bench_score(%s, %s, %s, %s)",
                                             (table_name(i), kind, qb, ids)).fetchone()[0]  # type: ignore[index]
                    assert int(n) == len(ids) and abs(tot - ref) < 0.05 * len(ids), (name, tot, ref)
                    runs.append((f, s))
                runs = runs[2:]
                results[name]["warm_fetch"] = min(r[0] for r in runs) * 1e3
                results[name]["warm_score"] = min(r[1] for r in runs) * 1e3
                results[name]["warm_total_med"] = statistics.median(r[0] + r[1] for r in runs) * 1e3

        dropped = None
        if not args.no_cold:
            for i, (name, (_, kind, _, _)) in enumerate(VARIANTS.items()):
                pg.restart()
                pg.wait_ready()
                dropped = drop_os_cache()
                with psycopg.connect(dsn, autocommit=True) as c:
                    c.execute("SELECT bench_score('warmup', 'fp16', %s, ARRAY[0])", (qb,))  # imports, plans
                    f, s, _, _ = c.execute("SELECT bench_score(%s, %s, %s, %s)",
                                           (table_name(i), kind, qb, ids)).fetchone()[0]  # type: ignore[index]
                results[name]["cold_fetch"] = f * 1e3
                results[name]["cold_score"] = s * 1e3

        n_tok = sum(len(p) for p in pages)
        print(f"\n{args.pages} pages ({n_tok / args.pages:.0f} tokens mean, d={D}), {args.candidates} candidates, "
              f"24-token query; raw fp16 {sum(raw) / args.pages / 1024:.0f} KiB/page; "
              f"cold: {'server restarted + OS page cache dropped' if dropped else 'server restarted only (drop_caches not permitted)' if dropped is False else 'not measured'}\n")
        print("| representation | bytes/row | x raw fp16 | encode ms/page | COPY pages/s | x bare COPY "
              "| warm fetch ms | warm score ms | warm total (median) | cold fetch ms | cold score ms |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, r in results.items():
            cold = (f"{r['cold_fetch']:.1f} | {r['cold_score']:.1f}" if "cold_fetch" in r else "- | -")
            print(f"| {name} | {r['bytes'] / 1024:.0f} KiB | {r['ratio']:.3f} | {r['enc_ms']:.2f} | {r['copy_pps']:.0f} "
                  f"| {r['copy_pps'] / bare_pps:.2f} | {r['warm_fetch']:.1f} | {r['warm_score']:.1f} "
                  f"| {r['warm_total_med']:.1f} | {cold} |")
        print(f"| {BARE} | {bare_size / args.pages / 1024:.0f} KiB | {bare_size / sum(raw):.3f} | - | {bare_pps:.0f} "
              f"| 1.00 | | | | | |")
    finally:
        pg.stop()
        import shutil

        shutil.rmtree(pylib_root, ignore_errors=True)


if __name__ == "__main__":
    main()
