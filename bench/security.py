"""What the privilege model costs and how fast its limits act (prints its figures).

    .venv/bin/python bench/security.py [--pages 10000] [--queries 40]

- search p50/p95 as an application role whose row-level security policy hides half of the
  rows, against a session row-level security does not apply to (unfiltered: the table's
  owner) and a role whose policy hides nothing (filtering path, nothing filtered); same index,
  same queries, same run (the target: half-hidden p50 <= 1.5x unfiltered);
- how long a 10,000-token query takes to be refused;
- how long a 1 s statement_timeout takes to stop an exhaustive 512-token search.

Pages are bench/search.py's synthetic ColQwen-shaped pages (d=128, 600-1,400 tokens).
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
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from search import Corpus, D, percentile


def timed(conn: psycopg.Connection, sql: str, params: tuple) -> float:
    t0 = time.perf_counter()
    conn.execute(sql, params).fetchall()
    return (time.perf_counter() - t0) * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=40)
    args = ap.parse_args(argv)

    from pgmaxsim import Index
    from pgmaxsim.db import migrate
    from pgmaxsim.db.adapters import Tokens, register_tokens
    from pgserver import LocalPostgres, make_readable_pylib

    pylib_root = Path(tempfile.mkdtemp(prefix="pgmaxsim-bench-pylib-"))
    os.chmod(pylib_root, 0o755)
    server = LocalPostgres().start(pylib=make_readable_pylib(pylib_root / "site"),
                                   settings={"shared_buffers": "2GB", "max_wal_size": "8GB"})
    server.wait_ready()
    try:
        dsn = server.dsn()
        migrate.upgrade(dsn)
        corpus = Corpus(args.pages)
        with psycopg.connect(dsn, autocommit=True) as c:
            register_tokens(c)
            c.execute("CREATE TABLE pages (id bigint PRIMARY KEY)")
            c.execute("INSERT INTO pages SELECT generate_series(1, %s)", (args.pages,))
            idx = Index.create(c, "pages", "pages", "id", dim=D, pooling="centroids")
            t0 = time.perf_counter()
            for start in range(0, args.pages, 200):
                ids = list(range(start + 1, min(args.pages, start + 200) + 1))
                idx.upsert(ids, [corpus.page(i - 1) for i in ids])
            build = time.perf_counter() - t0
            c.execute("VACUUM ANALYZE")
            c.execute("ALTER TABLE pages ENABLE ROW LEVEL SECURITY")
            for role, policy in (("half", "id % 2 = 0"), ("whole", "true")):
                c.execute(f"DROP ROLE IF EXISTS {role}")
                c.execute(f"CREATE ROLE {role} LOGIN")
                c.execute(f"GRANT SELECT ON pages TO {role}")
                c.execute(f"CREATE POLICY p_{role} ON pages FOR SELECT TO {role} USING ({policy})")
                c.execute("SELECT maxsim.grant_usage(%s)", (role,))
        rng = np.random.default_rng(1)
        queries = [corpus.query(int(i)) for i in rng.integers(0, args.pages, args.queries)]
        print(f"# bench/security.py: {args.pages} pages (built in {build:.0f} s), {args.queries} queries of 24 tokens")
        print("| role (policy) | search | p50 ms | p95 ms |")
        print("|---|---|---|---|")
        p50: dict[tuple[str, str], float] = {}
        policies = {"postgres": "no RLS: table owner", "whole": "RLS, nothing hidden", "half": "RLS, half hidden"}
        sql = "SELECT id FROM maxsim.search('pages', %s, 10, %s)"
        conns = {role: psycopg.connect(make_conninfo(dsn, user=role), autocommit=True) for role in policies}
        try:
            for c in conns.values():
                register_tokens(c)
            for label, cand in (("default", None), ("exact", args.pages)):
                times: dict[str, list[float]] = {role: [] for role in policies}
                for c in conns.values():
                    timed(c, sql, (Tokens(queries[0]), cand))  # warm
                # interleaved, query by query, so load from other processes hits every role alike
                for q in queries if label == "default" else queries[: max(3, len(queries) // 5)]:
                    for role, c in conns.items():
                        times[role].append(timed(c, sql, (Tokens(q), cand)))
                for role, ms in times.items():
                    p50[(role, label)] = percentile(ms, 50)
                    print(f"| {role} ({policies[role]}) | {label} | {p50[(role, label)]:.1f} |"
                          f" {percentile(ms, 95):.1f} |")
        finally:
            for c in conns.values():
                c.close()
        for label in ("default", "exact"):
            print(f"row-level security filtering half the rows, {label} search: p50 ratio"
                  f" {p50[('half', label)] / p50[('postgres', label)]:.2f}x of unfiltered"
                  f" (nothing hidden: {p50[('whole', label)] / p50[('postgres', label)]:.2f}x)")
        with psycopg.connect(dsn, autocommit=True) as c:
            register_tokens(c)
            huge = Tokens(rng.standard_normal((10_000, D)).astype(np.float32))
            t0 = time.perf_counter()
            try:
                c.execute("SELECT * FROM maxsim.search('pages', %s, 10)", (huge,))
            except psycopg.Error as e:
                print(f"10,000-token query refused in {(time.perf_counter() - t0) * 1000:.0f} ms:"
                      f" {str(e).splitlines()[0]}")
            long_q = Tokens(rng.standard_normal((512, D)).astype(np.float32))
            c.execute("SET statement_timeout = '1s'")
            t0 = time.perf_counter()
            try:
                c.execute("SELECT * FROM maxsim.search('pages', %s, 10, %s)", (long_q, args.pages))
                print("exhaustive 512-token search finished within the 1 s statement_timeout")
            except psycopg.errors.QueryCanceled:
                print(f"exhaustive 512-token search stopped by a 1 s statement_timeout after"
                      f" {time.perf_counter() - t0:.2f} s")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
