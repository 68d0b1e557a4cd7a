"""Search latency of one index on one node vs the same index sharded over two Citus workers.

    .venv/bin/python bench/citus.py                                   # 10K pages of 256 tokens (~10 min on 2 cores)
    .venv/bin/python bench/citus.py --pages 2000 --queries 10         # quick look

Starts a Citus cluster like the tests' (tests/citus_cluster.py: a coordinator and two workers,
PostgreSQL 15 on this machine), and in its coordinator database two tables with the same pages:
one local (an ordinary single-node pgmaxsim index, on the coordinator) and one distributed over the
two workers (its index distributed with it). Each query is run on both, interleaved, so both see
the same machine load; results are compared (same ids, scores equal up to float32 rounding) and
checked against the exact top 10 (recall@10 over the queries also run exhaustively: the one-node
exhaustive result is exact MaxSim). Prints p50/p95 client latency per
configuration and the ratio sharded / one node, with the load average beside them, and the write
rate of loading both (``Index.upsert`` through the coordinator, interleaved).

Pages are synthetic (d=128 fp16, each page a few topics of a shared pool plus noise); queries are
24 tokens near a page's own tokens. Configurations: the default candidate budget (64: pooled
prefilter, exact MaxSim of 64 rows) and exhaustive (candidates >= pages: exact MaxSim of every row).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
D = 128


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def pages(n: int, tokens: int, seed: int, topics: np.ndarray) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        picks = topics[rng.choice(len(topics), size=4, replace=False)]
        own = unit(rng.standard_normal(D))  # what sets this page apart, in every token (and in its mean)
        out.append(unit(picks[rng.integers(0, 4, tokens)] + 0.6 * own + 0.3 * rng.standard_normal((tokens, D)))
                   .astype(np.float16))
    return out


def load(conn: psycopg.Connection[Any], n: int, tokens: int, shards: int) -> np.ndarray:
    """Both tables and indexes, the same pages in each; returns the pages (n, tokens, D) fp16."""
    from pgmaxsim.index import Index

    topics = unit(np.random.default_rng(0).standard_normal((200, D)))
    for table in ("pages_one", "pages_dist"):
        conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY)")
        if table == "pages_dist":
            conn.execute("SELECT create_distributed_table('pages_dist', 'id', shard_count => %s)", (shards,))
        conn.execute(f"INSERT INTO {table} SELECT generate_series(1, %s)", (n,))
        conn.execute("SELECT maxsim.create_index(%s, %s::regclass, 'id', dim => %s, options => '{\"pooling\": \"mean\"}')",
                     (table, table, D))
    stored = np.empty((n, tokens, D), dtype=np.float16)
    t0 = time.monotonic()
    spent = {"pages_one": 0.0, "pages_dist": 0.0}  # upsert time per table (interleaved: same load)
    for start in range(0, n, 500):
        chunk = pages(min(500, n - start), tokens, start, topics)
        ids = list(range(start + 1, start + 1 + len(chunk)))
        for table in ("pages_one", "pages_dist"):
            t1 = time.perf_counter()
            Index(conn, table).upsert(ids, chunk)
            spent[table] += time.perf_counter() - t1
        stored[start:start + len(chunk)] = np.stack(chunk)  # queries are drawn from these pages
        print(f"  loaded {start + len(chunk)} / {n} pages ({time.monotonic() - t0:.0f} s)", flush=True)
    print(f"  Index.upsert (binary COPY through the coordinator), pages/s: one node {n / spent['pages_one']:.0f},"
          f" 2 workers {n / spent['pages_dist']:.0f}; load {os.getloadavg()[0]:.1f}", flush=True)
    conn.execute("VACUUM ANALYZE pages_one")
    conn.execute("VACUUM ANALYZE pages_dist")
    return stored


def timed(conn: psycopg.Connection[Any], name: str, q: np.ndarray, k: int, candidates: int | None) -> tuple[float, list[Any]]:
    from pgmaxsim.db.adapters import Tokens

    t0 = time.perf_counter()
    rows = conn.execute("SELECT id, score FROM maxsim.search(%s, %s, %s, %s)", (name, Tokens(q), k, candidates)).fetchall()
    return (time.perf_counter() - t0) * 1e3, rows


def same(a: list[Any], b: list[Any]) -> bool:
    """Equal ids, and scores equal up to float32 rounding (a row's float32 MaxSim may differ in the
    last bit with the batch it was scored in: BLAS blocks differently by matrix shape)."""
    return [i for i, _ in a] == [i for i, _ in b] and bool(np.allclose([s for _, s in a], [s for _, s in b], rtol=1e-6))


def run(conn: psycopg.Connection[Any], queries: list[np.ndarray], candidates: int | None,
        warm: int = 2) -> tuple[list[float], list[float], int, list[dict[str, list[str]]]]:
    """One configuration: both indexes per query, interleaved (so both see the same machine load).
    Returns latencies (one node, Citus), how many results differ, and each query's top-10 ids."""
    one: list[float] = []
    dist: list[float] = []
    differ = 0
    tops: list[dict[str, list[str]]] = []
    for q in queries[:warm]:  # warm both (PL/Python imports, plans, caches)
        timed(conn, "pages_one", q, 10, candidates)
        timed(conn, "pages_dist", q, 10, candidates)
    for i, q in enumerate(queries):
        order = ("pages_one", "pages_dist") if i % 2 == 0 else ("pages_dist", "pages_one")
        got = {}
        for name in order:
            ms, rows = timed(conn, name, q, 10, candidates)
            (one if name == "pages_one" else dist).append(ms)
            got[name] = rows
        differ += not same(got["pages_one"], got["pages_dist"])
        tops.append({name: [r[0] for r in rows] for name, rows in got.items()})
    return one, dist, differ, tops


def row(label: str, one: list[float], dist: list[float], differ: int, recall: str) -> None:
    def p(xs: list[float], f: int) -> float:
        return float(np.percentile(xs, f))

    print(f"| {label} | {p(one, 50):.0f} / {p(one, 95):.0f} | {p(dist, 50):.0f} / {p(dist, 95):.0f}"
          f" | {statistics.median(d / o for d, o in zip(dist, one)):.2f} | {len(one)} | {differ}"
          f" | {recall} | {os.getloadavg()[0]:.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=10_000)
    ap.add_argument("--tokens", type=int, default=256, help="tokens per page (d=128)")
    ap.add_argument("--shards", type=int, default=8, help="shards of the distributed table (over 2 workers)")
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--exhaustive-queries", type=int, default=3)
    args = ap.parse_args()

    from citus_cluster import CitusCluster, citus_missing
    from pgmaxsim.db import migrate
    from pgserver import make_readable_pylib

    reason = citus_missing()
    if reason:
        sys.exit(f"bench/citus.py: {reason}")
    root = Path(tempfile.mkdtemp(prefix="pgmaxsim-citus-bench-"))
    os.chmod(root, 0o755)
    cluster = CitusCluster(pylib=make_readable_pylib(root / "site"))
    try:
        print(f"starting a coordinator and 2 workers; {args.pages} pages of {args.tokens} tokens, d={D}", flush=True)
        cluster.start(n_workers=2)
        migrate.upgrade(cluster.dsn)
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            from pgmaxsim.db.adapters import register_tokens

            register_tokens(conn)
            stored = load(conn, args.pages, args.tokens, args.shards)
            rng = np.random.default_rng(7)
            queries = [unit(stored[int(i)][rng.choice(args.tokens, 24, replace=False)].astype(np.float32)
                            + 0.2 * rng.standard_normal((24, D))) for i in rng.integers(0, args.pages, args.queries)]
            del stored
            print(f"\nsearch latency, ms (client, p50 / p95); {os.cpu_count()} cores;"
                  f" {args.shards} shards over 2 workers; k=10\n")
            print("| candidates | one node | 2 workers (Citus) | ratio 2w / 1 (median per query) | queries"
                  " | results differ | recall@10 vs exact: one node / Citus | load |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|")
            default = run(conn, queries, None)
            n_ex = args.exhaustive_queries
            exhaustive = run(conn, queries[:n_ex], args.pages, warm=0)
            # recall@10 of the default budget on the queries also run exhaustively (the one-node
            # exhaustive top 10 is exact MaxSim: tests/test_citus.py checks it against float64)
            truth = [t["pages_one"] for t in exhaustive[3]]
            rec = {name: sum(len(set(t[name]) & set(w)) for t, w in zip(default[3], truth)) / (10 * len(truth))
                   for name in ("pages_one", "pages_dist")}
            row("64 (default)", *default[:3], f"{rec['pages_one']:.3f} / {rec['pages_dist']:.3f} ({len(truth)} queries)")
            row(f"{args.pages} (exhaustive)", *exhaustive[:3], "exact: the truth")
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
