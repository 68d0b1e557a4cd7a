"""pgmaxsim on a real Citus cluster (a coordinator and two workers, started here; see
tests/citus_cluster.py): an index over a distributed source table, search and rerank fanned out to
the shards, worker ingestion through the coordinator, a kill -9 mid-batch, and rebalancing onto a
third worker under concurrent searches. Skipped, with the reason, where Citus is not installed."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from citus_cluster import CitusCluster, migrated_cluster
from pgmaxsim.db.adapters import Tokens, register_tokens
from pgmaxsim.index import Index
from pgmaxsim.kernels.reference import maxsim_reference
from pgserver import LocalPostgres
from worker_util import MINILM, add_text_rows, run_once, spawn_worker, wait_for

pytestmark = pytest.mark.slow
DIM = 16
N_ROWS = 400
SHARDS = 8


@pytest.fixture(scope="module")
def cluster() -> Iterator[CitusCluster]:
    with migrated_cluster() as c:
        yield c


@pytest.fixture
def conn(cluster: CitusCluster) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(cluster.dsn, autocommit=True) as c:
        register_tokens(c)
        yield c


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered_docs(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Rows whose tokens come from a few topics each (so the pooled prefilter has structure)."""
    topics = unit(rng.standard_normal((max(4, n // 3), DIM)))
    docs = []
    for _ in range(n):
        picks = rng.choice(len(topics), size=3, replace=False)
        m = int(rng.integers(8, 40))
        docs.append(unit(topics[picks[rng.integers(0, 3, m)]] + 0.15 * rng.standard_normal((m, DIM))))
    return docs


def ref_top(docs: dict[Any, np.ndarray], q: np.ndarray, k: int) -> list[tuple[Any, float]]:
    """The float64 reference on the fp16 values the database stores, best k first."""
    scored = [(maxsim_reference(q.astype(np.float16), d.astype(np.float16)), key) for key, d in docs.items()]
    return [(key, s) for s, key in sorted(scored, key=lambda t: (-t[0], str(t[1])))[:k]]


def make_pair(conn: psycopg.Connection[Any], key: str, seed: int = 0, tag: str = "",
              options: str = '{"pooling": "mean"}') -> tuple[dict[Any, np.ndarray], str, str]:
    """The same rows and embeddings in a local table and in a distributed one, each indexed."""
    rng = np.random.default_rng(seed)
    keys: list[Any] = list(range(1, N_ROWS + 1)) if key == "bigint" else [f"doc '{i}\" x" for i in range(N_ROWS)]
    docs = dict(zip(keys, clustered_docs(N_ROWS, rng)))
    local, dist = f"one_{key}{tag}", f"dist_{key}{tag}"
    for table in (local, dist):
        conn.execute(f"CREATE TABLE {table} (id {key} PRIMARY KEY, body text)")
        if table == dist:
            conn.execute("SELECT create_distributed_table(%s, 'id', shard_count => %s)", (table, SHARDS))
        conn.execute(f"INSERT INTO {table} (id) SELECT unnest(%s::{key}[])", ([str(k) for k in keys],))
        conn.execute("SELECT maxsim.create_index(%s, %s::regclass, 'id', dim => %s, options => %s::jsonb)",
                     (table, table, DIM, options))
        Index(conn, table).upsert(keys, list(docs.values()))
    return docs, local, dist


def search(conn: psycopg.Connection[Any], name: str, q: np.ndarray, k: int = 10,
           candidates: int | None = None) -> list[tuple[str, float]]:
    return conn.execute("SELECT id, score FROM maxsim.search(%s, %s, %s, %s)",
                        (name, Tokens(q), k, candidates)).fetchall()


def assert_same(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    """Same ids in the same order, scores equal up to float32 rounding: a row's float32 MaxSim can
    differ in its last bit with the batch it was scored in (BLAS blocks by matrix shape), and a
    shard scores other batches than one node does."""
    assert [i for i, _ in got] == [i for i, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-6)


def queries(docs: dict[Any, np.ndarray], n: int, seed: int) -> list[np.ndarray]:
    """Queries near a row's tokens (a known item to find) and random ones."""
    rng = np.random.default_rng(seed)
    rows = list(docs.values())
    near = [unit(rows[int(i)][:6] + 0.2 * rng.standard_normal((min(6, len(rows[int(i)])), DIM)))
            for i in rng.integers(0, len(rows), n)]
    return near + [unit(rng.standard_normal((5, DIM))) for _ in range(n)]


@pytest.mark.parametrize("key", ["bigint", "text"])
def test_fanned_out_search_and_rerank_equal_one_node_and_the_reference(conn: psycopg.Connection[Any],
                                                                       key: str) -> None:
    docs, local, dist = make_pair(conn, key)
    # The index is distributed with its source: same colocation group, so a row's tokens live in
    # the shard group of its source row (on the same node).
    groups = dict(conn.execute("SELECT logicalrelid::text, colocationid FROM pg_dist_partition").fetchall())
    tok = conn.execute("SELECT token_table FROM maxsim.index_info(%s)", (dist,)).fetchone()[0]
    assert groups[f"maxsim.{tok}"] == groups[dist]
    assert conn.execute("SELECT count(DISTINCT nodeport) FROM citus_shards WHERE table_name = %s::regclass",
                        (f"maxsim.{tok}",)).fetchone()[0] == 2
    assert conn.execute(f"SELECT rows FROM maxsim.index_info('{dist}')").fetchone()[0] == N_ROWS
    with pytest.raises(psycopg.errors.FeatureNotSupported, match='uses first stage "mean"'):
        conn.execute("SELECT maxsim.create_index('other', %s::regclass, 'id', dim => 4,"
                     " options => '{\"pooling\": \"centroids\"}')", (dist,))

    for q in queries(docs, 4, seed=1):
        exact_dist = search(conn, dist, q, 10, 100_000)
        assert_same(exact_dist, search(conn, local, q, 10, 100_000))
        ref = ref_top(docs, q, 10)
        assert [i for i, _ in exact_dist] == [str(k) for k, _ in ref]
        np.testing.assert_allclose([s for _, s in exact_dist], [s for _, s in ref], rtol=2e-3, atol=2e-3)
        # default: the pooled prefilter (each shard's HNSW, merged), then exact MaxSim per shard
        assert_same(search(conn, dist, q, 10), search(conn, local, q, 10))
        assert_same(search(conn, dist, q, 5, 30), search(conn, local, q, 5, 30))

    # Each shard is scored in one call (085_citus.sql); without tsm_system_rows, one call per row:
    # the same results.
    assert conn.execute("SELECT maxsim._citus_sampler() IS NOT NULL").fetchone()[0]
    q = queries(docs, 1, seed=3)[0]
    batched = search(conn, dist, q, 10, 100_000)
    conn.execute("DROP EXTENSION tsm_system_rows")
    try:
        assert_same(search(conn, dist, q, 10, 100_000), batched)
        assert_same(search(conn, dist, q, 10), search(conn, local, q, 10))
    finally:
        assert conn.execute("SELECT maxsim._citus_install_sampler()").fetchone()[0]

    q = queries(docs, 1, seed=2)[0]
    keys = list(docs)
    some = [keys[i] for i in range(0, N_ROWS, 7)]
    arr = f"%s::{key}[]"
    for k in (None, 5):
        got = conn.execute(f"SELECT id, score FROM maxsim.rerank(%s, %s, {arr}, %s)",
                           (dist, Tokens(q), [str(x) for x in some] + ["999999"], k)).fetchall()
        want = conn.execute(f"SELECT id, score FROM maxsim.rerank(%s, %s, {arr}, %s)",
                            (local, Tokens(q), [str(x) for x in some] + ["999999"], k)).fetchall()
        assert_same(got, want)
        assert len(got) == (k or len(some))
        ref = ref_top({x: docs[x] for x in some}, q, k or len(some))
        assert [i for i, _ in got] == [k_ for k_, _ in ref]

    # deletes and rewrites reach the shards: a deleted source row leaves the index
    gone = keys[3]
    conn.execute(f"DELETE FROM {dist} WHERE id = %s", (gone,))
    del docs[gone]
    assert conn.execute(f"SELECT rows FROM maxsim.index_info('{dist}')").fetchone()[0] == N_ROWS - 1
    assert [i for i, _ in search(conn, dist, q, 10, 100_000)] == [str(k) for k, _ in ref_top(docs, q, 10)]


def test_worker_ingests_a_distributed_source_once_and_follows_updates_and_deletes(
        conn: psycopg.Connection[Any], cluster: CitusCluster) -> None:
    conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text, note text)")
    conn.execute("SELECT create_distributed_table('notes', 'id', shard_count => %s)", (SHARDS,))
    add_text_rows(conn, "notes", range(1, 121))
    iid = conn.execute("SELECT maxsim.create_index('notes', 'notes', 'id', 'body', model => %s)", (MINILM,)).fetchone()[0]
    stats = run_once(cluster.dsn, batch_size=32)
    assert stats.done == 120 and stats.failed == 0
    assert counts(conn, iid) == (120, 0, 0, 120)

    # Changes made through the coordinator are queued on the shards (the outbox), taken in by the
    # next claim, embedded once each; a change to a column the index does not read queues nothing.
    v_before = dict(conn.execute(f"SELECT id, version FROM maxsim.tok_{iid}").fetchall())
    add_text_rows(conn, "notes", range(121, 141))
    conn.execute("UPDATE notes SET body = body || ' and rivers' WHERE id <= 10")
    conn.execute("UPDATE notes SET note = 'not indexed' WHERE id BETWEEN 11 AND 20")
    conn.execute("DELETE FROM notes WHERE id BETWEEN 21 AND 25")
    assert counts(conn, iid)[:3] == (115, 0, 30)  # deletes are immediate; 20 inserts + 10 updates wait
    stats = run_once(cluster.dsn, batch_size=32)
    assert stats.done == 30 and stats.failed == 0
    assert counts(conn, iid) == (135, 0, 0, 150)  # 120 + 30 embeddings written in all: none twice
    v_after = dict(conn.execute(f"SELECT id, version FROM maxsim.tok_{iid}").fetchall())
    assert {i for i in v_before if i in v_after and v_after[i] != v_before[i]} == set(range(1, 11))
    hits = Index(conn, "notes").search("row 7 is about rivers", k=3, candidates=100_000)
    assert len(hits) == 3 and {h.id for h in hits} <= set(v_after)

    conn.execute("TRUNCATE notes")  # the coordinator's statement trigger empties token table and outbox
    assert counts(conn, iid)[:3] == (0, 0, 0)

    conn.execute("SELECT maxsim.drop_index('notes')")  # tables, shards and the triggers on the source's shards
    assert conn.execute(f"SELECT to_regclass('maxsim.tok_{iid}'), to_regclass('maxsim.q_{iid}')").fetchone() == (None, None)
    per_shard = conn.execute("SELECT result FROM run_command_on_shards('notes', $$SELECT count(*) FROM pg_trigger"
                             " WHERE tgrelid = '%s'::regclass AND NOT tgisinternal$$)").fetchall()
    assert len(per_shard) == SHARDS and {r[0] for r in per_shard} == {"0"}


def counts(conn: psycopg.Connection[Any], iid: int) -> tuple[int, int, int, int]:
    """(embedded rows, queued, in the outbox, embeddings written by committed batches)."""
    row = conn.execute(
        f"SELECT (SELECT count(*) FROM maxsim.tok_{iid}), (SELECT count(*) FROM maxsim.queue WHERE index_id = %s),"
        f" (SELECT count(*) FROM maxsim.q_{iid}),"
        " (SELECT coalesce(sum(rows_done), 0) FROM maxsim.ingest_log WHERE index_id = %s)", (iid, iid)).fetchone()
    return tuple(int(x) for x in row)  # type: ignore[return-value]


def test_kill_9_of_the_worker_loses_and_duplicates_nothing(conn: psycopg.Connection[Any], cluster: CitusCluster,
                                                            tmp_path: Path) -> None:
    conn.execute("CREATE TABLE k9 (id text PRIMARY KEY, body text, note text)")
    conn.execute("SELECT create_distributed_table('k9', 'id', shard_count => %s)", (SHARDS,))
    iid = conn.execute("SELECT maxsim.create_index('k9', 'k9', 'id', 'body', model => %s)", (MINILM,)).fetchone()[0]
    conn.execute("INSERT INTO k9 (id, body) SELECT 'r' || g, 'row ' || g || ' is about rivers' FROM generate_series(1, 200) g")
    assert counts(conn, iid)[:3] == (0, 0, 200)
    dsn = cluster.dsn
    victim = spawn_worker(dsn, "--batch-size", "20", log=tmp_path / "victim.log")

    def active() -> int:
        with psycopg.connect(dsn, autocommit=True) as c:
            return int(c.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgmaxsim worker'"
                                 " AND state IN ('idle in transaction', 'active') AND xact_start IS NOT NULL").fetchone()[0])

    wait_for(lambda: counts(conn, iid)[3] >= 20 and active() == 1, 120, "the worker inside a batch", step=0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    done = counts(conn, iid)
    assert 0 < done[0] < 200 and done[0] == done[3], done
    heir = spawn_worker(dsn, "--poll", "0.2", log=tmp_path / "heir.log")
    wait_for(lambda: counts(conn, iid)[:3] == (200, 0, 0), 180, "the new worker to finish")
    heir.send_signal(signal.SIGTERM)
    assert heir.wait(timeout=60) == 0, (tmp_path / "heir.log").read_text()[-2000:]
    assert counts(conn, iid) == (200, 0, 0, 200)  # every row embedded, by exactly one committed batch
    assert conn.execute("SELECT count(*) FROM maxsim.failed WHERE index_id = %s", (iid,)).fetchone()[0] == 0


def rebalance_under_searches(
        conn: psycopg.Connection[Any], cluster: CitusCluster, dist: str, qs: list[np.ndarray], expected: list[Any],
        on_new: Callable[[LocalPostgres], Any] | None = None) -> tuple[LocalPostgres, int, list[str]]:
    """Add a worker node (``on_new(node)`` right after) and rebalance the shards onto it while two
    sessions search index `dist` with `qs` over and over, each answer's ids compared to `expected`.
    Returns the new node, the searches that completed during the rebalance, and what went wrong
    (an error's first line, or a different answer)."""
    errors: list[str] = []
    runs = [0]
    stop = threading.Event()

    def searcher() -> None:
        with psycopg.connect(cluster.dsn, autocommit=True) as c:
            register_tokens(c)
            while not stop.is_set():
                for q, want in zip(qs, expected):
                    try:
                        got = search(c, dist, q, 10, 100_000)
                    except psycopg.Error as e:
                        errors.append(str(e).splitlines()[0])
                        continue
                    if [i for i, _ in got] != [i for i, _ in want]:
                        errors.append(f"different results: {got[:3]} vs {want[:3]}")
                    runs[0] += 1

    threads = [threading.Thread(target=searcher) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        new = cluster.add_worker()
        if on_new is not None:
            on_new(new)
        before = runs[0]
        conn.execute("SELECT citus_rebalance_start()")
        conn.execute("SELECT citus_rebalance_wait()")
        during = runs[0] - before
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    return new, during, errors


def test_adding_a_worker_and_rebalancing_under_concurrent_searches(conn: psycopg.Connection[Any],
                                                                   cluster: CitusCluster) -> None:
    docs, local, dist = make_pair(conn, "bigint", seed=5, tag="_rb")
    tok = conn.execute("SELECT token_table FROM maxsim.index_info(%s)", (dist,)).fetchone()[0]
    qs = queries(docs, 3, seed=9)
    expected = [search(conn, dist, q, 10, 100_000) for q in qs]
    new, during, errors = rebalance_under_searches(conn, cluster, dist, qs, expected)
    assert errors == []
    assert during > 0  # searches ran while shards moved
    moved = conn.execute("SELECT count(*) FROM citus_shards WHERE table_name = %s::regclass AND nodeport = %s",
                         (f"maxsim.{tok}", new.port)).fetchone()[0]
    assert moved > 0
    # colocation kept: each token shard sits on the node of its source shard
    assert conn.execute(
        "SELECT count(*) FROM citus_shards a JOIN citus_shards b ON a.colocation_id = b.colocation_id"
        " AND a.shard_name <> b.shard_name AND a.nodeport <> b.nodeport"
        " JOIN pg_dist_shard sa ON sa.shardid = a.shardid JOIN pg_dist_shard sb ON sb.shardid = b.shardid"
        " AND sa.shardminvalue = sb.shardminvalue WHERE a.table_name = %s::regclass",
        (f"maxsim.{tok}",)).fetchone()[0] == 0
    assert conn.execute(f"SELECT rows FROM maxsim.index_info('{dist}')").fetchone()[0] == len(docs)
    for q, want in zip(qs, expected):
        assert_same(search(conn, dist, q, 10, 100_000), want)
        assert_same(search(conn, dist, q, 10), search(conn, local, q, 10))


def test_row_level_security_holds_for_a_granted_role(conn: psycopg.Connection[Any], cluster: CitusCluster) -> None:
    """A granted role searching a distributed index sees exactly the rows the source's policy shows
    it (Citus applies the policy on the shards, where the role's own connections read), as on one
    node; the token shards stay unreadable to it, through the coordinator or on a worker."""
    rng = np.random.default_rng(11)
    n = 150
    docs = dict(zip(range(1, n + 1), clustered_docs(n, rng)))
    mine = {k: d for k, d in docs.items() if k % 3 == 0}
    conn.execute("CREATE ROLE rls_reader LOGIN")   # LOGIN: Citus reads the shards as the role itself
    conn.execute("SELECT maxsim.grant_usage('rls_reader')")
    for table in ("sec_one", "sec_dist"):
        conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, team text NOT NULL)")
        if table == "sec_dist":
            conn.execute("SELECT create_distributed_table('sec_dist', 'id', shard_count => %s)", (SHARDS,))
        conn.execute(f"INSERT INTO {table} SELECT g, CASE WHEN g %% 3 = 0 THEN 'a' ELSE 'b' END FROM generate_series(1, %s) g",
                     (n,))
        conn.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        conn.execute(f"CREATE POLICY team_a ON {table} FOR SELECT TO rls_reader USING (team = 'a')")
        conn.execute(f"GRANT SELECT ON {table} TO rls_reader")
        conn.execute("SELECT maxsim.create_index(%s, %s::regclass, 'id', dim => %s, options => '{\"pooling\": \"mean\"}')",
                     (table, table, DIM))
        Index(conn, table).upsert(list(docs), list(docs.values()))
    tok = conn.execute("SELECT token_table FROM maxsim.index_info('sec_dist')").fetchone()[0]

    with psycopg.connect(cluster.coordinator.dsn("pgmaxsim_citus", user="rls_reader"), autocommit=True) as reader:
        register_tokens(reader)
        assert reader.execute("SELECT count(*) FROM sec_dist").fetchone()[0] == len(mine)
        for q in queries(docs, 3, seed=12):
            for cand in (None, 100_000):
                got = search(reader, "sec_dist", q, 10, cand)
                assert {int(i) for i, _ in got} <= set(mine) and len(got) == 10
                assert_same(got, search(reader, "sec_one", q, 10, cand))
                assert [i for i, _ in got] == [str(k) for k, _ in ref_top(mine, q, 10)]
            # the owner (not subject to the policy) gets rows the reader must not
            assert {int(i) for i, _ in search(conn, "sec_dist", q, 10, 100_000)} - set(mine)
        q = queries(docs, 1, seed=13)[0]
        got = reader.execute("SELECT id, score FROM maxsim.rerank('sec_dist', %s, %s::bigint[])",
                             (Tokens(q), list(docs))).fetchall()
        assert sorted(i for i, _ in got) == sorted(mine)
        assert_same(got, reader.execute("SELECT id, score FROM maxsim.rerank('sec_one', %s, %s::bigint[])",
                                        (Tokens(q), list(docs))).fetchall())
        assert reader.execute("SELECT maxsim.tokens('sec_dist', 1::bigint) IS NULL,"
                              " maxsim.tokens('sec_dist', 3::bigint) IS NULL").fetchone() == (True, False)
        # the tokens themselves: not through the token table, nor the per-shard scorer
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute(f"SELECT count(*) FROM maxsim.{tok}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("SELECT * FROM maxsim._citus_shard_score(%s::regclass, array_send(%s), NULL, 1, %s,"
                           " 'fp16', 'bigint', 'x')", (f"maxsim.{tok}", Tokens(q), DIM))
    shard, port = conn.execute("SELECT shard_name, nodeport FROM citus_shards WHERE table_name = %s::regclass"
                               " ORDER BY shard_name LIMIT 1", (f"maxsim.{tok}",)).fetchone()
    worker = next(w for w in cluster.workers if w.port == port)
    with psycopg.connect(worker.dsn("pgmaxsim_citus", user="rls_reader"), autocommit=True) as on_worker:
        register_tokens(on_worker)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            on_worker.execute("SELECT * FROM maxsim._citus_shard_score(%s::regclass, array_send(%s), NULL, 1, %s,"
                              " 'fp16', 'bigint', 'x')", (shard, Tokens(q), DIM))


def test_storage_switch_and_reembedding_are_refused_in_one_line(conn: psycopg.Connection[Any]) -> None:
    from pgmaxsim.retier import retier

    conn.execute("CREATE TABLE sw (id bigint PRIMARY KEY, body text)")
    conn.execute("SELECT create_distributed_table('sw', 'id', shard_count => 2)")
    conn.execute("SELECT maxsim.create_index('sw', 'sw', 'id', 'body', model => %s)", (MINILM,))
    with pytest.raises(psycopg.errors.FeatureNotSupported,
                       match=r'index "sw" is distributed \(Citus\): changing its storage'):
        retier(conn, "sw", storage_tier="int8")
    with pytest.raises(psycopg.errors.FeatureNotSupported, match=r'index "sw" is distributed \(Citus\): re-embedding'):
        conn.execute("SELECT maxsim.create_index('sw#reembed', 'sw', 'id', 'body', model => %s)", (MINILM,))
    assert [r[0] for r in conn.execute("SELECT name FROM maxsim.list_indexes() WHERE name LIKE 'sw%%'")] == ["sw"]
    # reindex --first-stage: says why there is nothing to retrain (not "create it with first_stage=codebook")
    from pgmaxsim.codebook import train
    from pgmaxsim.errors import PgmaxsimError

    with pytest.raises(PgmaxsimError, match=r"index 'sw' is distributed \(Citus\): its first stage is 'mean'"):
        train(conn, "sw")


def test_int8_storage_scores_as_on_one_node(conn: psycopg.Connection[Any]) -> None:
    """The per-shard scorer reads each row in its stored tier, as one node does."""
    docs, local, dist = make_pair(conn, "bigint", seed=21, tag="_i8", options='{"storage": "int8", "pooling": "mean"}')
    for q in queries(docs, 2, seed=22):
        assert_same(search(conn, dist, q, 10, 100_000), search(conn, local, q, 10, 100_000))
        assert_same(search(conn, dist, q, 10), search(conn, local, q, 10))
