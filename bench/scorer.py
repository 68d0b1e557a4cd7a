"""End-to-end latency of exhaustive exact search through the scorer service (CPU or GPU backend).

    python bench/scorer.py --dsn postgresql://... [--pages 500] [--queries 30] [--backend auto]
    python bench/scorer.py                    # embedded PostgreSQL (no plpython: Python-API path only)

Builds a ColQwen-shaped index (d = 128, 600-1400 tokens per page, clustered
topics) through ``pgmaxsim.Index.upsert``, starts the scorer in-process, and
reports p50/p95 of: the scorer alone (``ScorerClient.search``), the SQL
function ``maxsim.search(..., candidates >= rows)`` through the scorer (needs
plpython3u) and the same SQL on the in-backend CPU path. The difference
between the first two is the SQL-function overhead that adds to a GPU
scorer's time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin"))

D = 128


def _pct(xs: list[float]) -> str:
    a = np.array(xs) * 1e3
    return f"p50 {np.percentile(a, 50):8.2f} ms   p95 {np.percentile(a, 95):8.2f} ms"


def main(argv: list[str] | None = None) -> int:
    import psycopg

    from pgmaxsim.index import Index
    from pgmaxsim.scorer.client import ScorerClient
    from pgmaxsim.scorer.server import Scorer, ScorerService
    from pgmaxsim.scorer.store import make_backend

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dsn", default=os.environ.get("DATABASE_URL"))
    ap.add_argument("--pages", type=int, default=500)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--int8", action="store_true")
    args = ap.parse_args(argv)
    dsn = args.dsn
    if not dsn:
        from pgmaxsim.db import embedded, migrate

        dsn = embedded.default_dsn() if hasattr(embedded, "default_dsn") else None
        if dsn is None:
            print("bench/scorer.py: give --dsn (or DATABASE_URL)")
            return 2
        migrate.upgrade(dsn)
    rng = np.random.default_rng(0)
    topics = rng.standard_normal((64, D)).astype(np.float32)
    name = f"bench_scorer_{os.getpid()}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        has_plpython = conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'plpython3u'").fetchone()[0] > 0
        conn.execute(f"CREATE TABLE {name}_src (id bigint PRIMARY KEY)")
        conn.execute(f"INSERT INTO {name}_src SELECT g FROM generate_series(1, %s) g", (args.pages,))
        idx = Index.create(conn, name, f"{name}_src", "id", dim=D)
        t0 = time.time()
        for a in range(0, args.pages, 100):
            ids = list(range(a + 1, min(args.pages, a + 100) + 1))
            embs = []
            for _ in ids:
                n = int(rng.integers(600, 1401))
                x = topics[rng.integers(0, 64, n)] + 0.7 * rng.standard_normal((n, D)).astype(np.float32)
                embs.append(x / np.linalg.norm(x, axis=1, keepdims=True))
            idx.upsert(ids, embs)
        print(f"index: {args.pages} pages written in {time.time() - t0:.1f} s")
        queries = []
        for _ in range(args.queries):
            q = topics[rng.integers(0, 64, 24)] + 0.8 * rng.standard_normal((24, D)).astype(np.float32)
            queries.append(q / np.linalg.norm(q, axis=1, keepdims=True))
        sock = os.path.join(tempfile.mkdtemp(prefix="pgms-bench-"), "scorer.sock")
        os.chmod(os.path.dirname(sock), 0o755)
        backend = make_backend(args.backend, int8=args.int8)
        svc = ScorerService(Scorer(dsn, backend, poll_interval=0.5, index_names=[name]), sock).start()
        try:
            t0 = time.time()
            svc.scorer.wait_synced(600)
            print(f"scorer ({backend.name}): loaded in {time.time() - t0:.1f} s")
            iid = idx.info.id
            direct, via_sql, cpu_sql = [], [], []
            with ScorerClient(sock, timeout=600) as c:
                for q in queries:
                    snap = conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0]
                    t = time.perf_counter()
                    c.search(iid, q, args.k, snap)
                    direct.append(time.perf_counter() - t)
            if has_plpython:
                conn.execute("SELECT maxsim.set_scorer(%s)", (sock,))
                for q in queries:
                    t = time.perf_counter()
                    idx.search(q, k=args.k, candidates=args.pages)
                    via_sql.append(time.perf_counter() - t)
                conn.execute("SELECT maxsim.set_scorer(NULL)")
                for q in queries[: max(3, args.queries // 5)]:
                    t = time.perf_counter()
                    idx.search(q, k=args.k, candidates=args.pages)
                    cpu_sql.append(time.perf_counter() - t)
            print(f"\nexhaustive exact top-{args.k} over {args.pages} pages, 24-token queries ({backend.name} backend)")
            print(f"  scorer alone (socket client)      {_pct(direct)}")
            if via_sql:
                print(f"  maxsim.search via scorer (SQL)    {_pct(via_sql)}")
                print(f"  SQL-function overhead (p50)       {1e3 * (np.median(via_sql) - np.median(direct)):8.2f} ms")
                print(f"  maxsim.search CPU path (no scorer){_pct(cpu_sql)}")
            else:
                print("  (no plpython3u on this server: SQL path not measured)")
        finally:
            svc.stop()
            idx.drop()
            conn.execute(f"DROP TABLE {name}_src")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
