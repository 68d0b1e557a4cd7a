"""A scorer per Citus node (pgmaxsim.scorer.citus_node) on a real cluster: a coordinator and two
workers started here, one ``pgmaxsim scorer`` per worker connected to that worker's database, every
node's shards asking their own node's scorer (``maxsim.set_scorer('.../scorer-{port}.sock')``).
Scores equal one node's and the float64 reference, while rows change, with a scorer behind or
gone, and while shards move onto a third worker under concurrent searches. Skipped where Citus is
not installed; the GPU case also where CuPy sees no GPU."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest
from citus_cluster import CitusCluster, migrated_cluster
from pgmaxsim.db.adapters import Tokens, register_tokens
from pgmaxsim.index import Index
from pgmaxsim.scorer.server import Scorer, ScorerService
from pgmaxsim.scorer.store import CpuBackend
from pgserver import LocalPostgres
from test_citus import assert_same, make_pair, queries, rebalance_under_searches, ref_top, search

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[CitusCluster]:
    with migrated_cluster() as c:
        yield c


class NodeScorers:
    """One scorer per node, at ``<dir>/scorer-<port>.sock`` (what ``pgmaxsim scorer --dsn <node>
    --socket /run/pgmaxsim/scorer-<port>.sock`` runs on each host)."""

    def __init__(self, cluster: CitusCluster) -> None:
        self.cluster = cluster
        self.dir = tempfile.mkdtemp(prefix="pgms-citus-")
        os.chmod(self.dir, 0o755)
        self.by_port: dict[int, ScorerService] = {}

    @property
    def address(self) -> str:
        return os.path.join(self.dir, "scorer-{port}.sock")

    def start(self, node: LocalPostgres, backend: Any = None) -> ScorerService:
        from citus_cluster import DBNAME

        svc = ScorerService(Scorer(node.dsn(DBNAME), backend or CpuBackend(), poll_interval=0.1),
                            os.path.join(self.dir, f"scorer-{node.port}.sock")).start()
        assert svc.scorer.wait_synced(30)
        self.by_port[node.port] = svc
        return svc

    def stop(self, port: int) -> None:
        self.by_port.pop(port).stop()

    def stop_all(self) -> None:
        for port in list(self.by_port):
            self.stop(port)
        shutil.rmtree(self.dir, ignore_errors=True)

    def served(self) -> int:
        return sum(s.scorer.served["score"] for s in self.by_port.values())

    def held(self, port: int) -> dict[str, int]:
        """Shard name -> rows, as the node's scorer holds them now."""
        return {n: st.rows for n, st in list(self.by_port[port].scorer.shards.items())}


@pytest.fixture(scope="module")
def scorers(cluster: CitusCluster) -> Iterator[NodeScorers]:
    s = NodeScorers(cluster)
    for w in cluster.workers:
        s.start(w)
    with psycopg.connect(cluster.dsn, autocommit=True) as c:
        c.execute("SELECT maxsim.set_scorer(%s)", (s.address,))
    try:
        yield s
    finally:
        s.stop_all()


@pytest.fixture
def conn(cluster: CitusCluster, scorers: NodeScorers) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(cluster.dsn, autocommit=True) as c:
        register_tokens(c)
        yield c


def placements(conn: psycopg.Connection[Any], tok: str) -> dict[int, dict[str, int]]:
    """Node port -> {shard name: rows} of token table ``tok``, from the coordinator's metadata."""
    out: dict[int, dict[str, int]] = {}
    for shard, port in conn.execute("SELECT shard_name::text, nodeport FROM citus_shards WHERE table_name = %s::regclass",
                                    (f"maxsim.{tok}",)).fetchall():
        out.setdefault(port, {})[shard if shard.startswith("maxsim.") else f"maxsim.{shard}"] = 0
    for port, shards in out.items():
        for shard in shards:
            shards[shard] = int(conn.execute(
                "SELECT result FROM run_command_on_placements(%s::regclass, $$SELECT count(*) FROM %%s$$)"
                " WHERE shardid = %s", (f"maxsim.{tok}", int(shard.rsplit("_", 1)[1]))).fetchone()[0])
    return out


def wait_held(scorers: NodeScorers, conn: psycopg.Connection[Any], tok: str, timeout: float = 30) -> None:
    """Until every node's scorer holds exactly its node's shards of ``tok``, with every row."""
    deadline = time.monotonic() + timeout
    while True:
        want = placements(conn, tok)
        got = {port: {n: r for n, r in scorers.held(port).items() if n.startswith(f"maxsim.{tok}_")}
               for port in scorers.by_port}
        if all(got.get(port, {}) == shards for port, shards in want.items()) and \
                all(not got[p] for p in got if p not in want):
            return
        assert time.monotonic() < deadline, f"scorers hold {got}, placements are {want}"
        time.sleep(0.1)


@pytest.mark.parametrize("key", ["bigint", "text"])
def test_node_scorers_score_as_one_node_and_the_reference(conn: psycopg.Connection[Any], cluster: CitusCluster,
                                                          scorers: NodeScorers, key: str) -> None:
    docs, local, dist = make_pair(conn, key, seed=31, tag="_ns")
    tok = conn.execute("SELECT token_table FROM maxsim.index_info(%s)", (dist,)).fetchone()[0]
    wait_held(scorers, conn, tok)

    def check(qs: list[np.ndarray], written: bool = True, served_by: bool = True) -> None:
        """Exact search equals one node and the reference; the default budget equals one node
        before writes, and after them (when per-shard HNSW graphs and one node's may pick other
        candidates among near ties, see docs/SCALING.md) equals the shards scoring on their own."""
        served = scorers.served()
        for q in qs:
            exact = search(conn, dist, q, 10, 100_000)
            assert_same(exact, search(conn, local, q, 10, 100_000))
            ref = ref_top(docs, q, 10)
            assert [i for i, _ in exact] == [str(k) for k, _ in ref]
            np.testing.assert_allclose([s for _, s in exact], [s for _, s in ref], rtol=2e-3, atol=2e-3)
            default = search(conn, dist, q, 10)
            if not written:
                assert_same(default, search(conn, local, q, 10))
                continue
            conn.execute("SELECT maxsim.set_scorer(NULL)")
            try:
                assert_same(default, search(conn, dist, q, 10))
            finally:
                conn.execute("SELECT maxsim.set_scorer(%s)", (scorers.address,))
        assert scorers.served() > served or not served_by   # the nodes' scorers answered

    check(queries(docs, 3, seed=32), written=False)
    q = queries(docs, 1, seed=33)[0]
    keys = list(docs)
    some = [keys[i] for i in range(0, len(keys), 9)]
    got = conn.execute(f"SELECT id, score FROM maxsim.rerank(%s, %s, %s::{key}[], 5)",
                       (dist, Tokens(q), [str(x) for x in some])).fetchall()
    assert_same(got, conn.execute(f"SELECT id, score FROM maxsim.rerank(%s, %s, %s::{key}[], 5)",
                                  (local, Tokens(q), [str(x) for x in some])).fetchall())

    # Writes: new rows, rewritten rows, deleted rows, on both tables. Equal at once (a row the
    # scorer does not hold at the caller's version is scored in the shard's backend) ...
    rng = np.random.default_rng(34)
    new_keys: list[Any] = [10_000 + i for i in range(12)] if key == "bigint" else [f"new {i}" for i in range(12)]
    rewrite = keys[:15]
    gone = keys[20:28]
    for table in (local, dist):
        conn.execute(f"INSERT INTO {table} (id) SELECT unnest(%s::{key}[])", ([str(k) for k in new_keys],))
    fresh = {k: (rng.standard_normal((int(rng.integers(5, 30)), 16)) / 4).astype(np.float32)
             for k in [*new_keys, *rewrite]}
    for table in (local, dist):
        Index(conn, table).upsert(list(fresh), list(fresh.values()))
        conn.execute(f"DELETE FROM {table} WHERE id = ANY(%s::{key}[])", ([str(k) for k in gone],))
    docs.update(fresh)
    for k in gone:
        del docs[k]
    check(queries(docs, 2, seed=35))
    # ... and once the scorers caught up, they hold every row again
    wait_held(scorers, conn, tok)
    check(queries(docs, 2, seed=36))

    # A scorer behind the table (its sync paused) and a scorer gone: still exact.
    port = next(iter(scorers.by_port))
    scorers.by_port[port].scorer.sync_enabled.clear()
    try:
        more = {k: (rng.standard_normal((7, 16)) / 4).astype(np.float32) for k in keys[30:60]}
        for table in (local, dist):
            Index(conn, table).upsert(list(more), list(more.values()))
        docs.update(more)
        check(queries(docs, 2, seed=37))
    finally:
        scorers.by_port[port].scorer.sync_enabled.set()
    node = next(w for w in cluster.workers if w.port == port)
    scorers.stop(port)
    try:
        check(queries(docs, 2, seed=38), served_by=False)
    finally:
        scorers.start(node)
    wait_held(scorers, conn, tok)


def test_int8_shards_score_as_one_node(conn: psycopg.Connection[Any], scorers: NodeScorers) -> None:
    docs, local, dist = make_pair(conn, "bigint", seed=41, tag="_ns8", options='{"storage": "int8", "pooling": "mean"}')
    tok = conn.execute("SELECT token_table FROM maxsim.index_info(%s)", (dist,)).fetchone()[0]
    wait_held(scorers, conn, tok)
    assert {st.meta.storage for s in scorers.by_port.values() for n, st in s.scorer.shards.items()
            if n.startswith(f"maxsim.{tok}_")} == {"int8"}
    served = scorers.served()
    for q in queries(docs, 2, seed=42):
        assert_same(search(conn, dist, q, 10, 100_000), search(conn, local, q, 10, 100_000))
        assert_same(search(conn, dist, q, 10), search(conn, local, q, 10))
    assert scorers.served() > served


def test_rebalancing_onto_a_new_worker_moves_what_the_scorers_hold(conn: psycopg.Connection[Any],
                                                                   cluster: CitusCluster,
                                                                   scorers: NodeScorers) -> None:
    docs, local, dist = make_pair(conn, "bigint", seed=51, tag="_nsrb")
    tok = conn.execute("SELECT token_table FROM maxsim.index_info(%s)", (dist,)).fetchone()[0]
    wait_held(scorers, conn, tok)
    qs = queries(docs, 3, seed=52)
    expected = [search(conn, local, q, 10, 100_000) for q in qs]
    new, during, errors = rebalance_under_searches(conn, cluster, dist, qs, expected, on_new=scorers.start)
    assert errors == []
    assert during > 0
    moved = placements(conn, tok)
    assert moved.get(new.port), moved   # shards of this index moved onto the new worker
    wait_held(scorers, conn, tok)       # ... which its scorer now holds; the others dropped them
    served = scorers.by_port[new.port].scorer.served["score"]
    for q, want in zip(qs, expected):
        assert_same(search(conn, dist, q, 10, 100_000), want)
        assert_same(search(conn, dist, q, 10), search(conn, local, q, 10))
    assert scorers.by_port[new.port].scorer.served["score"] > served
    assert conn.execute(f"SELECT rows FROM maxsim.index_info('{dist}')").fetchone()[0] == len(docs)


def test_gpu_node_scorer(conn: psycopg.Connection[Any], cluster: CitusCluster, scorers: NodeScorers) -> None:
    """The same per-node scoring on a GPU backend (one per node; here the first worker's)."""
    from pgmaxsim.kernels import cupy_maxsim

    if not cupy_maxsim.available():
        pytest.skip("no GPU: CuPy is not installed or sees no device")
    from pgmaxsim.scorer.store import GpuBackend

    docs, local, dist = make_pair(conn, "bigint", seed=61, tag="_nsgpu")
    tok = conn.execute("SELECT token_table FROM maxsim.index_info(%s)", (dist,)).fetchone()[0]
    node = cluster.workers[0]
    scorers.stop(node.port)
    scorers.start(node, GpuBackend())
    wait_held(scorers, conn, tok)
    for q in queries(docs, 2, seed=62):
        assert_same(search(conn, dist, q, 10, 100_000), search(conn, local, q, 10, 100_000))
