"""Search QPS on a primary alone vs a primary + one hot standby (same run, same data).

    PYTHONPATH=plugin .venv/bin/python bench/replicas.py [--pages 400 --tokens 256 --seconds 20 --clients 8]

Starts a real primary and a real standby (``pg_basebackup -R``, tests/pgserver.py), builds one
index on the primary (random unit tokens, d=128), waits for replay, then runs ``--clients``
client threads (one connection each, ``maxsim.search`` with a fresh random 24-token query per
call, the index's default candidates: ANN prefilter + exact MaxSim in the backend, PL/Python):

1. every client on the primary;
2. half the clients on the primary, half on the standby.

Prints queries/s of each and the ratio. Each search runs in the backend that received it, so
a standby adds its backends' CPUs to the pool; on one machine both servers share its cores, so
the ratio is bounded by (cores busy in phase 2) / (cores busy in phase 1), about 1 when phase 1
already kept every core busy.

``--scorers`` runs both phases again with a scorer per server (CPU backend, in this process): the
admin sets one replicated address with ``{port}`` in it (``maxsim.set_scorer('.../scorer-{port}.sock')``),
so each server's backends reach their own scorer on this one host, as each replica's own host would.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from pgserver import LocalPostgres, make_readable_pylib

DB = "bench"


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _hv(a: np.ndarray) -> str:
    return "{" + ",".join('"[' + ",".join(f"{x:.4f}" for x in row) + ']"' for row in a) + "}"


def build(pages: int, tokens: int, dim: int) -> tuple[LocalPostgres, LocalPostgres, Path]:
    from pgmaxsim.db import migrate
    from pgmaxsim.index import Index
    from pytest_postgresql.janitor import DatabaseJanitor

    root = Path(tempfile.mkdtemp(prefix="pgmaxsim-pylib-"))
    os.chmod(root, 0o755)
    primary = LocalPostgres().start(pylib=make_readable_pylib(root / "site"))
    primary.wait_ready()
    DatabaseJanitor(user=primary.user, host=primary.host, port=primary.port, dbname=DB).init()
    migrate.upgrade(primary.dsn(DB))
    rng = np.random.default_rng(0)
    with psycopg.connect(primary.dsn(DB), autocommit=True) as conn:
        conn.execute("CREATE TABLE pages (id integer PRIMARY KEY)")
        conn.execute("INSERT INTO pages SELECT generate_series(1, %s)", (pages,))
        idx = Index.create(conn, "pages", "pages", "id", dim=dim)
        for start in range(0, pages, 50):
            ids = list(range(start + 1, min(pages, start + 50) + 1))
            idx.upsert(ids, [_unit(rng, tokens, dim) for _ in ids])
        lsn = conn.execute("SELECT pg_catalog.pg_current_wal_insert_lsn()::text").fetchone()[0]
    standby = primary.standby()
    standby.wait_ready()
    with psycopg.connect(standby.dsn(DB), autocommit=True) as s:
        while not s.execute("SELECT pg_catalog.pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]:
            time.sleep(0.1)
    return primary, standby, root


def run_clients(dsns: list[str], seconds: float, dim: int, qtokens: int) -> tuple[float, list[int]]:
    """QPS of len(dsns) clients (client i on dsns[i]) over ``seconds``; and per-client counts."""
    counts = [0] * len(dsns)
    start = threading.Barrier(len(dsns) + 1)
    stop = threading.Event()

    def client(i: int) -> None:
        rng = np.random.default_rng(100 + i)
        queries = [_hv(_unit(rng, qtokens, dim)) for _ in range(16)]
        with psycopg.connect(dsns[i], autocommit=True) as c:
            c.execute("SELECT count(*) FROM maxsim.search('pages', %s::halfvec[], 10)", (queries[0],))  # warm
            start.wait()
            n = 0
            while not stop.is_set():
                c.execute("SELECT count(*) FROM maxsim.search('pages', %s::halfvec[], 10)", (queries[n % 16],))
                n += 1
            counts[i] = n

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(len(dsns))]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0), counts


def phases(p: str, s: str, args: argparse.Namespace, what: str) -> None:
    n = args.clients
    alone, c1 = run_clients([p] * n, args.seconds, args.dim, args.query_tokens)
    both, c2 = run_clients([p, s] * (n // 2) + [p] * (n % 2), args.seconds, args.dim, args.query_tokens)
    on_primary = sum(c for i, c in enumerate(c2) if i % 2 == 0)
    print(f"\n{what}\n\n| setup | clients | queries/s | per client (min-max) |\n|---|---:|---:|---|\n"
          f"| primary alone | {n} on the primary | {alone:.1f} | {min(c1)}-{max(c1)} |\n"
          f"| primary + standby | {n - n // 2} on the primary, {n // 2} on the standby | {both:.1f} "
          f"| {min(c2)}-{max(c2)} ({on_primary} vs {sum(c2) - on_primary} queries) |")
    print(f"ratio (primary + standby) / primary alone: {both / alone:.2f}; load after {os.getloadavg()[0]:.1f}",
          flush=True)


@contextmanager
def scorer_per_server(primary: LocalPostgres, standby: LocalPostgres, root: Path) -> Iterator[None]:
    """A ``pgmaxsim scorer`` process (CPU backend) per server, each at its server's ``{port}`` path."""
    import subprocess
    import sys

    folder = root / "scorers"
    folder.mkdir()
    os.chmod(folder, 0o755)
    with psycopg.connect(primary.dsn(DB), autocommit=True) as conn:
        conn.execute("SELECT maxsim.set_scorer(%s)", (str(folder / "scorer-{port}.sock"),))
        lsn = conn.execute("SELECT pg_catalog.pg_current_wal_insert_lsn()::text").fetchone()[0]
    with psycopg.connect(standby.dsn(DB), autocommit=True) as c:
        while not c.execute("SELECT pg_catalog.pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]:
            time.sleep(0.1)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT / "plugin"))
    cmd = [sys.executable, "-m", "pgmaxsim.cli", "scorer", "--backend", "cpu", "--poll-interval", "0.5"]
    procs = [subprocess.Popen(cmd + ["--dsn", primary.dsn(DB), "--socket", str(folder / f"scorer-{primary.port}.sock")],
                              env=env, stderr=subprocess.DEVNULL),
             subprocess.Popen(cmd + ["--dsn", standby.dsn(DB), "--socket", str(folder / f"scorer-{standby.port}.sock"),
                                     "--report-dsn", primary.dsn(DB)], env=env, stderr=subprocess.DEVNULL)]
    try:
        with psycopg.connect(primary.dsn(DB), autocommit=True) as conn:   # both report their sync here
            deadline = time.monotonic() + 180
            while conn.execute("SELECT count(*) FROM maxsim.scorers").fetchone()[0] < 2:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise RuntimeError("the scorers did not start and sync")
                time.sleep(0.5)
        yield
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=400)
    ap.add_argument("--tokens", type=int, default=256, help="tokens per page")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--query-tokens", type=int, default=24)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--scorers", action="store_true", help="also measure with a scorer per server")
    args = ap.parse_args()
    t0 = time.perf_counter()
    primary, standby, root = build(args.pages, args.tokens, args.dim)
    print(f"built {args.pages} pages x {args.tokens} tokens (d={args.dim}) + standby in "
          f"{time.perf_counter() - t0:.0f} s; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}", flush=True)
    try:
        p, s = primary.dsn(DB), standby.dsn(DB)
        phases(p, s, args, "in-backend scoring (PL/Python)")
        if args.scorers:
            with scorer_per_server(primary, standby, root):
                phases(p, s, args, "a scorer per server (CPU backend), reached through '{port}'")
    finally:
        standby.stop()
        primary.stop()
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
