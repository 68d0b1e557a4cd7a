"""The codebook first stage as PostgreSQL tables + pgvector, against today's default search.

    .venv/bin/python bench/firststage_pg.py --pages 10000 --queries 40
    .venv/bin/python bench/firststage_pg.py --pages 2000 --queries 30 --coarse 128 --fine 128   # quick

Needle corpus of bench/needle.py. Starts a PostgreSQL 15 like the test suite (or --dsn), writes
the pages through ``Index.upsert`` (today's write path: per-row centroids + HNSW), then lays
out the codebook first stage (pgmaxsim.firststage) in plain tables, two ways:

- ``postings``: ``fs_post(code int4, row_id bigint, PRIMARY KEY (code, row_id))``: a btree
  range scan per probed code.
- ``gin``: ``fs_codes(row_id bigint PRIMARY KEY, codes int4[])`` (a row's distinct codes)
  with a GIN index: PostgreSQL's own compressed inverted lists, ``codes @> ARRAY[code]``.

Both share ``fs_coarse(cell, vec)`` and ``fs_fine(code, cell, vec)`` (the codebook) and one
SQL statement does probe + centroid interaction (WARP-style, missing = the token's lowest
probed similarity) and returns the ``candidates`` best rows, which ``maxsim.rerank`` scores
exactly. Printed: p50/p95 of the whole search (first stage + exact) from a client, of the
first stage alone, source top-1, storage per row and write cost per row of each layout.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plugin"))

from needle import NeedleCorpus
from pgmaxsim import firststage as fs
from search import percentile, run_queries

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
WITH q AS (SELECT u.v, u.i FROM unnest(%(q)s::halfvec[]) WITH ORDINALITY AS u(v, i)),
cells AS (SELECT q.i, q.v, c.cell FROM q CROSS JOIN LATERAL
            (SELECT c.cell FROM fs_coarse c ORDER BY c.vec <#> q.v LIMIT %(cp)s) c),
ranked AS (SELECT cells.i, f.code, -(f.vec <#> cells.v) AS sim,
                  row_number() OVER (PARTITION BY cells.i ORDER BY f.vec <#> cells.v) AS rn
             FROM cells JOIN fs_fine f ON f.cell = cells.cell),
pr AS (SELECT i, code, sim FROM ranked WHERE rn <= %(np)s),
fl AS (SELECT i, min(sim) AS f FROM pr GROUP BY i),
"""
SCORE = """
gain AS (SELECT h.i, h.row_id, max(h.sim) - min(fl.f) AS g FROM hits h JOIN fl ON fl.i = h.i GROUP BY h.i, h.row_id)
SELECT coalesce(array_agg(s.row_id), '{}') FROM
  (SELECT row_id FROM gain GROUP BY row_id ORDER BY sum(g) DESC, row_id LIMIT %(n)s) s
"""
HITS = {
    "postings": "hits AS (SELECT pr.i, pr.sim, p.row_id FROM pr JOIN fs_post p ON p.code = pr.code),",
    "gin": ("hits AS (SELECT pr.i, pr.sim, c.row_id FROM pr CROSS JOIN LATERAL"
            " (SELECT c.row_id FROM fs_codes c WHERE c.codes @> ARRAY[pr.code]) c),"),
}


def table_bytes(conn: psycopg.Connection[Any], *tables: str) -> int:
    return sum(conn.execute("SELECT pg_total_relation_size(%s::regclass)", (t,)).fetchone()[0] for t in tables)


def build_codebook_tables(conn: psycopg.Connection[Any], cb: fs.Codebook, codes_per_row: list[np.ndarray],
                          layouts: list[str]) -> dict[str, float]:
    """Codebook tables, then each layout's postings written by COPY; returns seconds per layout."""
    from pgmaxsim.db.adapters import Tokens  # noqa: F401 - registers nothing, keeps the import cheap

    d = cb.coarse.shape[1]
    conn.execute(f"CREATE TABLE fs_coarse (cell int4 PRIMARY KEY, vec halfvec({d}))")
    conn.execute(f"CREATE TABLE fs_fine (code int4 PRIMARY KEY, cell int4, vec halfvec({d}))")
    with conn.cursor().copy("COPY fs_coarse (cell, vec) FROM STDIN") as cp:
        for c, v in enumerate(cb.coarse):
            cp.write_row((c, "[" + ",".join(f"{x:.5f}" for x in v) + "]"))
    with conn.cursor().copy("COPY fs_fine (code, cell, vec) FROM STDIN") as cp:
        for c in range(cb.n_coarse):
            for j, v in enumerate(cb.fine[c]):
                cp.write_row((c * cb.n_fine + j, c, "[" + ",".join(f"{x:.5f}" for x in v) + "]"))
    conn.execute("CREATE INDEX ON fs_fine (cell)")
    secs: dict[str, float] = {}
    if "postings" in layouts:
        t = time.perf_counter()
        conn.execute("CREATE TABLE fs_post (code int4, row_id bigint, PRIMARY KEY (code, row_id))")
        with conn.cursor().copy("COPY fs_post (code, row_id) FROM STDIN") as cp:
            for r, cs in enumerate(codes_per_row):
                for c in cs:
                    cp.write_row((int(c), r + 1))
        secs["postings"] = time.perf_counter() - t
    if "gin" in layouts:
        t = time.perf_counter()
        conn.execute("CREATE TABLE fs_codes (row_id bigint PRIMARY KEY, codes int4[])")
        conn.execute("CREATE INDEX fs_codes_gin ON fs_codes USING gin (codes)")
        with conn.cursor().copy("COPY fs_codes (row_id, codes) FROM STDIN") as cp:
            for r, cs in enumerate(codes_per_row):
                cp.write_row((r + 1, [int(c) for c in cs]))
        secs["gin"] = time.perf_counter() - t
    conn.execute("VACUUM ANALYZE")
    return secs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--budgets", default="64,1%,2%")
    ap.add_argument("--coarse", type=int, default=256)
    ap.add_argument("--fine", type=int, default=256)
    ap.add_argument("--nprobe", type=int, default=8)
    ap.add_argument("--coarse-probe", type=int, default=2)
    ap.add_argument("--sample", type=int, default=300_000)
    ap.add_argument("--layouts", default="postings,gin")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dsn", help="an existing server with pgvector and pgmaxsim's migrations")
    args = ap.parse_args(argv)
    layouts = args.layouts.split(",")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    server = None
    if args.dsn:
        dsn = args.dsn
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        from pgserver import LocalPostgres, make_readable_pylib

        pylib_root = Path(tempfile.mkdtemp(prefix="pgmaxsim-bench-pylib-"))
        os.chmod(pylib_root, 0o755)
        server = LocalPostgres().start(pylib=make_readable_pylib(pylib_root / "site"),
                                       settings={"shared_buffers": "1GB", "max_wal_size": "8GB"})
        server.wait_ready()
        dsn = server.dsn()
        from pgmaxsim.db import migrate

        migrate.upgrade(dsn)
    try:
        return _run(dsn, args, layouts, log)
    finally:
        if server is not None:
            server.stop()


def _run(dsn: str, args: argparse.Namespace, layouts: list[str], log: Any) -> int:
    from pgmaxsim import Index
    from pgmaxsim.db.adapters import Tokens, register_tokens

    n = args.pages
    corpus = NeedleCorpus(n, args.seed)
    srng = np.random.default_rng(args.seed + 2)
    sample_pages = srng.choice(n, size=min(n, max(1, args.sample // 500)), replace=False)
    sample = np.concatenate([corpus.page(int(i))[0] for i in sample_pages])
    sample = sample[srng.choice(len(sample), size=min(len(sample), args.sample), replace=False)]
    t = time.perf_counter()
    cb = fs.train(sample, args.coarse, args.fine, seed=args.seed)
    log(f"codebook {args.coarse}x{args.fine} in {time.perf_counter() - t:.0f} s")
    qrng = np.random.default_rng(args.seed + 1)
    sources = qrng.choice(n, size=args.queries, replace=False)
    queries = [corpus.query(int(i)) for i in sources]

    codes_per_row: list[np.ndarray] = []
    write_s = assign_s = 0.0
    raw = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        register_tokens(conn)
        conn.execute("DROP TABLE IF EXISTS pages, fs_coarse, fs_fine, fs_post, fs_codes CASCADE")
        conn.execute("CREATE TABLE pages (id bigint PRIMARY KEY)")
        conn.execute("INSERT INTO pages SELECT generate_series(1, %s)", (n,))
        idx = Index.create(conn, "needle", "pages", "id", dim=128)
        for a in range(0, n, args.batch):
            pages = [corpus.page(i)[0] for i in range(a, min(n, a + args.batch))]
            raw += sum(p.nbytes for p in pages)
            t = time.perf_counter()
            idx.upsert(list(range(a + 1, a + 1 + len(pages))), pages)
            write_s += time.perf_counter() - t
            t = time.perf_counter()
            codes_per_row += [np.unique(fs.assign(cb, p)) for p in pages]
            assign_s += time.perf_counter() - t
            if (a // args.batch) % 20 == 0:
                log(f"  wrote {a + len(pages)}/{n} ({write_s / (a + len(pages)) * 1e3:.0f} ms/row today,"
                    f" assign {assign_s / (a + len(pages)) * 1e3:.1f} ms/row)")
        secs = build_codebook_tables(conn, cb, codes_per_row, layouts)
        today_bytes = table_bytes(conn, f"maxsim.{idx.info.centroid_table}")
        book = table_bytes(conn, "fs_coarse", "fs_fine")
        lay_bytes = {"postings": lambda: table_bytes(conn, "fs_post"), "gin": lambda: table_bytes(conn, "fs_codes")}
        fp16 = raw / n
        out = [(f"\n## first stage in PostgreSQL: needle, {n:,} pages ({fp16 / 1024:.0f} KB fp16 per row),"
               f" {args.queries} queries, codebook {args.coarse}x{args.fine}, nprobe {args.nprobe}"),
               f"write: today's Index.upsert {write_s / n * 1e3:.1f} ms/row; codebook assignment"
               f" {assign_s / n * 1e3:.1f} ms/row (NumPy) + postings COPY "
               + ", ".join(f"{k} {v / n * 1e3:.2f} ms/row" for k, v in secs.items()),
               f"storage per row: today's centroid table + HNSW {today_bytes / n:.0f} B"
               f" ({today_bytes / n / fp16:.1%}); codebook {book / n:.0f} B ({book / n / fp16:.2%}); "
               + ", ".join(f"{k} {lay_bytes[k]() / n:.0f} B ({lay_bytes[k]() / n / fp16:.1%})" for k in layouts),
               "",
               "| first stage | candidates | p50 ms | p95 ms | stage-1 p50 ms | source top-1 |",
               "|---|---|---|---|---|---|"]
        budgets = [max(10, int(float(b[:-1]) / 100 * n)) if b.endswith("%") else int(b)
                   for b in args.budgets.split(",")]
        run_queries(conn, "needle", queries[:5], 10, None)  # warm
        for c in budgets:
            times, found = run_queries(conn, "needle", queries, 10, c)
            top1 = np.mean([bool(f) and f[0] == s + 1 for f, s in zip(found, sources)])
            out.append(f"| centroids (today) | {c} ({c / n:.1%}) | {percentile(times, 50):.1f} |"
                       f" {percentile(times, 95):.1f} | - | {top1:.1%} |")
            log(out[-1])
        for lay in layouts:
            sql = PROBE + HITS[lay] + SCORE
            for q in queries[:3]:  # warm
                conn.execute(sql, {'q': Tokens(q), 'cp': args.coarse_probe, 'np': args.nprobe, 'n': 64}).fetchone()
            for c in budgets:
                tt, t1, hit = [], [], 0
                for q, s in zip(queries, sources):
                    t0 = time.perf_counter()
                    ids = conn.execute(sql, {'q': Tokens(q), 'cp': args.coarse_probe, 'np': args.nprobe, 'n': c}).fetchone()[0]
                    t1.append((time.perf_counter() - t0) * 1e3)
                    rows = conn.execute("SELECT id FROM maxsim.rerank('needle', %s, %s::bigint[], 10)",
                                        (Tokens(q), ids)).fetchall()
                    tt.append((time.perf_counter() - t0) * 1e3)
                    hit += bool(rows) and rows[0][0] == s + 1
                out.append(f"| codebook ({lay}) | {c} ({c / n:.1%}) | {percentile(tt, 50):.1f} |"
                           f" {percentile(tt, 95):.1f} | {percentile(t1, 50):.1f} | {hit / len(queries):.1%} |")
                log(out[-1])
        times, found = run_queries(conn, "needle", queries[:5], 10, n)
        out.append(f"| exact (all rows) | {n} | {percentile(times, 50):.1f} | {percentile(times, 95):.1f} | - |"
                   f" {np.mean([f[0] == s + 1 for f, s in zip(found, sources[:5])]):.1%} (5 queries) |")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
