"""What the privilege model costs and how fast its limits act (prints its figures).

    .venv/bin/python bench/security.py [--pages 10000] [--queries 40]
    .venv/bin/python bench/security.py --dsn postgresql://postgres@127.0.0.1:PORT/postgres   # a server
        # of yours: the pages are built there once (kept), later runs re-apply this checkout's SQL
        # functions (pgmaxsim migrate) and measure again, so SQL changes compare on one index

- search p50/p95 as application roles whose row-level security policies hide half, nine
  tenths and 99 in 100 of the rows, against a session row-level security does not apply to (unfiltered: the
  table's owner) and a role whose policy hides nothing (filtering path, nothing filtered); same
  index, same queries, same run, the roles taking turns query by query (the target: half-hidden
  p50 <= 1.5x unfiltered);
- how long a 10,000-token query takes to be refused;
- how long a 1 s statement_timeout takes to stop an exhaustive 512-token search.

Pages are bench/search.py's synthetic ColQwen-shaped pages (d=128, 600-1,400 tokens).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import psycopg
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from _server import bench_server
from eval_tuning import build_pages
from search import Corpus, D, percentile


def timed(conn: psycopg.Connection, sql: str, params: tuple) -> float:
    t0 = time.perf_counter()
    conn.execute(sql, params).fetchall()
    return (time.perf_counter() - t0) * 1000


#: Roles and their row-level security policies on pages (besides the table's owner, unfiltered).
POLICIES = {"whole": ("true", "RLS, nothing hidden"), "half": ("id % 2 = 0", "RLS, half hidden"),
            "tenth": ("id % 10 = 0", "RLS, 9 in 10 hidden"), "hundredth": ("id % 100 = 0", "RLS, 99 in 100 hidden")}


def ensure_roles(dsn: str) -> None:
    """Row-level security on pages and a login role per POLICIES entry (made again each run)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("ALTER TABLE pages ENABLE ROW LEVEL SECURITY")
        for role, (policy, _) in POLICIES.items():
            c.execute(f"DROP POLICY IF EXISTS p_{role} ON pages")
            if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                c.execute(f"CREATE ROLE {role} LOGIN")
            c.execute(f"GRANT SELECT ON pages TO {role}")
            c.execute(f"CREATE POLICY p_{role} ON pages FOR SELECT TO {role} USING ({policy})")
            c.execute("SELECT maxsim.grant_usage(%s)", (role,))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--exact-queries", type=int, help="queries timed with exact search (default: a fifth"
                    " of --queries, at least 3; 0: none)")
    ap.add_argument("--dsn", help="an existing server (superuser); pages built there once and kept")
    args = ap.parse_args(argv)

    from pgmaxsim.db import migrate
    from pgmaxsim.db.adapters import Tokens, register_tokens

    settings = {"shared_buffers": "2GB", "max_wal_size": "8GB"}
    with bench_server(args.dsn, settings=settings, migrate=False) as dsn:
        migrate.upgrade(dsn)   # a given server's too: its pages are kept between runs
        corpus = Corpus(args.pages)
        build = build_pages(dsn, corpus, args.pages)
        ensure_roles(dsn)
        rng = np.random.default_rng(1)
        queries = [corpus.query(int(i)) for i in rng.integers(0, args.pages, args.queries)]
        built = f"built in {build:.0f} s" if build is not None else "built before"
        print(f"# bench/security.py: {args.pages} pages ({built}), {args.queries} queries of 24 tokens;"
              f" load average {os.getloadavg()[0]:.1f}")
        print("| role (policy) | search | p50 ms | p95 ms |")
        print("|---|---|---|---|")
        p50: dict[tuple[str, str], float] = {}
        policies = {"postgres": "no RLS: table owner", **{r: label for r, (_, label) in POLICIES.items()}}
        sql = "SELECT id FROM maxsim.search('pages', %s, 10, %s)"
        conns = {role: psycopg.connect(make_conninfo(dsn, user=role), autocommit=True) for role in policies}
        try:
            for c in conns.values():
                register_tokens(c)
            n_exact = max(3, len(queries) // 5) if args.exact_queries is None else args.exact_queries
            for label, cand, qs in (("default", None, queries), ("exact", args.pages, queries[:n_exact])):
                if not qs:
                    continue
                times: dict[str, list[float]] = {role: [] for role in policies}
                for c in conns.values():
                    timed(c, sql, (Tokens(queries[0]), cand))  # warm
                # interleaved, query by query, so load from other processes hits every role alike
                for q in qs:
                    for role, c in conns.items():
                        times[role].append(timed(c, sql, (Tokens(q), cand)))
                for role, ms in times.items():
                    p50[(role, label)] = percentile(ms, 50)
                    print(f"| {role} ({policies[role]}) | {label} | {p50[(role, label)]:.1f} |"
                          f" {percentile(ms, 95):.1f} |")
        finally:
            for c in conns.values():
                c.close()
        for label in sorted({label for _, label in p50}):
            ratios = ", ".join(f"{policies[r]} {p50[(r, label)] / p50[('postgres', label)]:.2f}x" for r in POLICIES)
            print(f"{label} search, p50 ratio to unfiltered (target for half hidden: <= 1.5x): {ratios}")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
