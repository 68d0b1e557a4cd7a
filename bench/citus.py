"""Search latency of one index on one node vs the same index sharded over two Citus workers.

    .venv/bin/python bench/citus.py                                   # 10K pages of 256 tokens (~10 min on 2 cores)
    .venv/bin/python bench/citus.py --pages 2000 --queries 10         # quick look
    .venv/bin/python bench/citus.py --writes --pages 2000             # writes: coordinator vs straight into the shards

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


class DirectWriter:
    """Writes an index's token rows straight into its shards, on the nodes holding them: rows
    grouped by shard, and per node one transaction that deletes the rows' old embeddings and binary
    COPYs the new ones into each shard table (``maxsim.tok_N_<shardid>``); the coordinator only
    answers which shard a key hashes to (cached placements, one routing query per batch).

    What the coordinator path does besides (and this one skips): the advisory row locks and the
    registry re-check (``pgmaxsim.writes``), and one distributed transaction over all nodes (Citus
    commits it with two-phase commit), where this writes one transaction per node."""

    def __init__(self, coordinator: psycopg.Connection[Any], name: str, node_dsn: dict[int, str]) -> None:
        from pgmaxsim.registry import get_index

        self.coordinator = coordinator
        self.index = get_index(coordinator, name)
        tok = f"maxsim.{self.index.token_table}"
        self.tok = tok
        self.shards = {int(sid): (int(port), str(shard)) for sid, port, shard in coordinator.execute(
            "SELECT s.shardid, s.nodeport, pg_catalog.shard_name(%s::regclass, s.shardid)"
            " FROM citus_shards s WHERE s.table_name = %s::regclass", (tok, tok)).fetchall()}
        self.nodes = {port: psycopg.connect(node_dsn[port], autocommit=True) for port, _ in self.shards.values()}

    def close(self) -> None:
        for c in self.nodes.values():
            c.close()

    def upsert(self, ids: list[int], embeddings: list[np.ndarray]) -> None:
        from psycopg import sql

        from pgmaxsim import writes

        latest = {self.index.key_text(k): i for i, k in enumerate(ids)}
        tok_rows, _ = writes.encode_rows(self.index, latest, embeddings, None, None, None)
        keys = list(latest)
        by_shard: dict[int, list[int]] = {}
        for pos, sid in self.coordinator.execute(
                "SELECT u.o, get_shard_id_for_distribution_column(%s::regclass, u.k)"
                " FROM unnest(%s::text[]) WITH ORDINALITY AS u(k, o)", (self.tok, keys)).fetchall():
            by_shard.setdefault(int(sid), []).append(int(pos) - 1)
        per_node: dict[int, list[tuple[str, list[int]]]] = {}
        for sid, rows in by_shard.items():
            port, shard = self.shards[sid]
            per_node.setdefault(port, []).append((shard, rows))
        for port, parts in per_node.items():
            conn = self.nodes[port]
            with conn.transaction(), conn.cursor() as cur:
                tok_types, _ = writes.copy_types(cur, self.index)
                for shard, rows in parts:
                    table = sql.SQL(shard)   # shard_name() output: quoted by the server
                    cur.execute(sql.SQL("DELETE FROM {} t WHERE t.id = ANY(%s::text[]::{}[])").format(
                        table, sql.SQL(self.index.id_type)), ([keys[r] for r in rows],))
                    writes._copy(cur, table, writes.TOKEN_COLUMNS, tok_types[:len(writes.TOKEN_COLUMNS)],
                                 (tok_rows[r] for r in rows))


def writes_only(conn: psycopg.Connection[Any], cluster: Any, n: int, tokens: int, shards: int) -> None:
    """``--writes``: the same pages written into two distributed indexes, through the coordinator
    (``Index.upsert``) and straight into the shards on the workers (:class:`DirectWriter`), chunk by
    chunk interleaved; then both indexes are compared (rows, and exhaustive search)."""
    from pgmaxsim.index import Index

    from citus_cluster import DBNAME

    topics = unit(np.random.default_rng(0).standard_normal((200, D)))
    for table in ("pages_coord", "pages_direct"):
        conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY)")
        conn.execute("SELECT create_distributed_table(%s, 'id', shard_count => %s)", (table, shards))
        conn.execute(f"INSERT INTO {table} SELECT generate_series(1, %s)", (n,))
        conn.execute("SELECT maxsim.create_index(%s, %s::regclass, 'id', dim => %s, options => '{\"pooling\": \"mean\"}')",
                     (table, table, D))
    direct = DirectWriter(conn, "pages_direct", {w.port: w.dsn(DBNAME) for w in cluster.workers})
    spent = {"coordinator": 0.0, "direct": 0.0}
    chunk_rows = 100
    try:
        for rnd in range(2):   # the second round rewrites every page (delete + insert per row)
            for start in range(0, n, chunk_rows):
                chunk = pages(min(chunk_rows, n - start), tokens, start + rnd * n, topics)
                ids = list(range(start + 1, start + 1 + len(chunk)))
                ways = [("coordinator", lambda: Index(conn, "pages_coord").upsert(ids, chunk)),
                        ("direct", lambda: direct.upsert(ids, chunk))]
                for name, fn in (ways if (start // chunk_rows) % 2 == 0 else ways[::-1]):
                    t1 = time.perf_counter()
                    fn()
                    spent[name] += time.perf_counter() - t1
            print(f"  {'insert' if rnd == 0 else 'rewrite'} round done; load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        direct.close()
    total = 2 * n
    print(f"\nwrites of {n} pages of {tokens} tokens, twice (insert, then rewrite), {chunk_rows} pages per call,"
          f" {shards} shards over 2 workers:")
    print(f"| path | pages/s | load |\n|---|---:|---:|")
    for name in ("coordinator", "direct"):
        print(f"| {name} | {total / spent[name]:.0f} | {os.getloadavg()[0]:.1f} |")
    counts = [conn.execute(f"SELECT rows FROM maxsim.index_info('{t}')").fetchone()[0] for t in ("pages_coord", "pages_direct")]
    rng = np.random.default_rng(3)
    agree = 0
    for _ in range(3):
        q = unit(rng.standard_normal((24, D)))
        agree += same(timed(conn, "pages_coord", q, 10, n)[1], timed(conn, "pages_direct", q, 10, n)[1])
    print(f"rows: coordinator {counts[0]}, direct {counts[1]}; exhaustive top-10 equal in {agree} / 3 queries")


def timed(conn: psycopg.Connection[Any], name: str, q: np.ndarray, k: int, candidates: int | None) -> tuple[float, list[Any]]:
    from pgmaxsim.db.adapters import Tokens

    t0 = time.perf_counter()
    rows = conn.execute("SELECT id, score FROM maxsim.search(%s, %s, %s, %s)", (name, Tokens(q), k, candidates)).fetchall()
    return (time.perf_counter() - t0) * 1e3, rows


def same(a: list[Any], b: list[Any]) -> bool:
    """Equal ids, and scores equal up to float32 rounding (a row's float32 MaxSim may differ in the
    last bit with the batch it was scored in: BLAS blocks differently by matrix shape)."""
    return [i for i, _ in a] == [i for i, _ in b] and bool(np.allclose([s for _, s in a], [s for _, s in b], rtol=1e-6))


#: The configurations compared: label -> (index, whether the nodes' scorers are in use).
ONE, DIST, SCORED = "one node", "2 workers", "2 workers + node scorers"
SETUPS = {ONE: ("pages_one", False), DIST: ("pages_dist", False), SCORED: ("pages_dist", True)}


def use_scorers(conn: psycopg.Connection[Any], address: str | None) -> None:
    conn.execute("SELECT maxsim.set_scorer(%s)", (address,))


def run(conn: psycopg.Connection[Any], queries: list[np.ndarray], candidates: int | None, setups: list[str],
        scorer_address: str | None, warm: int = 2) -> tuple[dict[str, list[float]], int, list[dict[str, list[str]]]]:
    """One candidate budget: every setup per query, interleaved in a rotating order (so all see the
    same machine load). Returns latencies per setup, how many queries' results differ between the
    setups, and each query's top-10 ids per setup. The scorers are switched on (maxsim.set_scorer)
    only around the timed calls of SCORED, outside the timing."""
    ms: dict[str, list[float]] = {name: [] for name in setups}
    differ = 0
    tops: list[dict[str, list[str]]] = []

    def one_call(name: str, q: np.ndarray) -> tuple[float, list[Any]]:
        index, scored = SETUPS[name]
        if scored:
            use_scorers(conn, scorer_address)
        try:
            return timed(conn, index, q, 10, candidates)
        finally:
            if scored:
                use_scorers(conn, None)

    for q in queries[:warm]:  # warm every setup (PL/Python imports, plans, caches, scorer connections)
        for name in setups:
            one_call(name, q)
    for i, q in enumerate(queries):
        order = setups[i % len(setups):] + setups[:i % len(setups)]
        got = {}
        for name in order:
            t, rows = one_call(name, q)
            ms[name].append(t)
            got[name] = rows
        differ += not all(same(got[setups[0]], got[name]) for name in setups[1:])
        tops.append({name: [r[0] for r in rows] for name, rows in got.items()})
    return ms, differ, tops


def row(label: str, ms: dict[str, list[float]], differ: int, recall: str) -> None:
    def p(xs: list[float], f: int) -> float:
        return float(np.percentile(xs, f))

    one = ms[ONE]
    cells = [f"{p(xs, 50):.0f} / {p(xs, 95):.0f}" for xs in ms.values()]
    ratios = [f"{statistics.median(d / o for d, o in zip(xs, one)):.2f}" for name, xs in ms.items() if name != ONE]
    print(f"| {label} | {' | '.join(cells)} | {' | '.join(ratios)} | {len(one)} | {differ}"
          f" | {recall} | {os.getloadavg()[0]:.1f} |", flush=True)


def start_scorers(cluster: Any, root: Path) -> tuple[list[Any], str, str]:
    """One scorer process per worker (``python -m pgmaxsim.scorer.server --backend cpu``: no GPU
    here), at <root>/scorers/scorer-<port>.sock; returns the processes with their addresses, the address
    for maxsim.set_scorer and a line on a sync's cost (measured apart, in this process)."""
    import subprocess

    from citus_cluster import DBNAME
    from pgmaxsim.scorer import citus_node
    from pgmaxsim.scorer.client import ScorerClient
    from pgmaxsim.scorer.store import CpuBackend

    sock_dir = str(root / "scorers")
    os.mkdir(sock_dir, 0o755)
    timings = []
    for w in cluster.workers:   # a sync's cost: first load, a sync scanning every shard, a gated one
        with psycopg.connect(w.dsn(DBNAME), autocommit=True) as c:
            held: dict[str, Any] = {}
            marks: dict[str, Any] = {}
            spent = []
            for use_marks in (True, False, True):
                t0 = time.perf_counter()
                citus_node.sync_shards(held, c, CpuBackend(), 600.0, marks if use_marks else None)
                spent.append(time.perf_counter() - t0)
            rows = sum(st.rows for st in held.values())
            for st in held.values():
                st.release()
            timings.append(f"{rows} rows in {len(held)} shards: load {spent[0]:.1f} s, sync scanning every shard"
                           f" {spent[1] * 1e3:.0f} ms, sync with no shard written {spent[2] * 1e3:.0f} ms")
    procs = []
    for w in cluster.workers:
        path = os.path.join(sock_dir, f"scorer-{w.port}.sock")
        procs.append((subprocess.Popen([sys.executable, "-m", "pgmaxsim.scorer.server", "--dsn", w.dsn(DBNAME),
                                        "--socket", path, "--backend", "cpu"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), path))
    deadline = time.monotonic() + 600
    for proc, path in procs:   # until each holds its node's shards
        while True:
            try:
                if ScorerClient(path).status()["shards"]:
                    break
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"bench/citus.py: the scorer at {path} did not start")
            time.sleep(0.5)
    return procs, os.path.join(sock_dir, "scorer-{port}.sock"), "; ".join(timings)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=10_000)
    ap.add_argument("--tokens", type=int, default=256, help="tokens per page (d=128)")
    ap.add_argument("--shards", type=int, default=8, help="shards of the distributed table (over 2 workers)")
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--exhaustive-queries", type=int, default=3)
    ap.add_argument("--scorers", action="store_true",
                    help="also run a scorer process per worker (CPU backend) and time the distributed index through them")
    ap.add_argument("--writes", action="store_true",
                    help="only compare writes through the coordinator with writes straight into the workers' shards")
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
            if args.writes:
                writes_only(conn, cluster, args.pages, args.tokens, args.shards)
                return
            stored = load(conn, args.pages, args.tokens, args.shards)
            rng = np.random.default_rng(7)
            queries = [unit(stored[int(i)][rng.choice(args.tokens, 24, replace=False)].astype(np.float32)
                            + 0.2 * rng.standard_normal((24, D))) for i in rng.integers(0, args.pages, args.queries)]
            del stored
            setups, address = [ONE, DIST], None
            if args.scorers:
                services, address, costs = start_scorers(cluster, root)
                setups.append(SCORED)
                print(f"  node scorers (one process per worker, CPU backend), per worker: {costs};"
                      f" load {os.getloadavg()[0]:.1f}", flush=True)
            print(f"\nsearch latency, ms (client, p50 / p95); {os.cpu_count()} cores;"
                  f" {args.shards} shards over 2 workers; k=10\n")
            print(f"| candidates | {' | '.join(setups)} | {' | '.join(f'ratio {n} / one' for n in setups[1:])}"
                  " | queries | results differ | recall@10 vs exact: " + " / ".join(setups) + " | load |")
            print("|---|" + "---:|" * (2 * len(setups) + 3))
            default = run(conn, queries, None, setups, address)
            n_ex = args.exhaustive_queries
            exhaustive = run(conn, queries[:n_ex], args.pages, setups, address, warm=0)
            # recall@10 of the default budget on the queries also run exhaustively (the one-node
            # exhaustive top 10 is exact MaxSim: tests/test_citus.py checks it against float64)
            truth = [t[ONE] for t in exhaustive[2]]
            rec = [sum(len(set(t[name]) & set(w)) for t, w in zip(default[2], truth)) / (10 * len(truth))
                   for name in setups]
            row("64 (default)", *default[:2], " / ".join(f"{r:.3f}" for r in rec) + f" ({len(truth)} queries)")
            row(f"{args.pages} (exhaustive)", *exhaustive[:2], "exact: the truth")
            if args.scorers:
                from pgmaxsim.scorer.client import ScorerClient

                served = [ScorerClient(path).status()["served"]["score"] for _, path in services]
                print(f"\nscore requests answered by the node scorers: {served}")
                for proc, _ in services:
                    proc.terminate()
                    proc.wait(timeout=30)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
