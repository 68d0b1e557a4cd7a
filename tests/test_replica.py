"""pgmaxsim on PostgreSQL streaming replication: a real primary and a real hot standby made with
``pg_basebackup -R``. Searches on the standby (read-only by construction: any write fails there
with "cannot execute ... in a read-only transaction") equal the primary's and the float64
reference; a scorer attached to the standby syncs by polling and stays exact; a worker on a
multi-host DSN survives the primary's loss and the standby's promotion."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
import pytest
from pgmaxsim.index import Index
from pgmaxsim.kernels.reference import maxsim_reference
from pgmaxsim.scorer.server import Scorer, ScorerService
from pgmaxsim.scorer.store import CpuBackend
from pgserver import LocalPostgres
from pytest_postgresql.janitor import DatabaseJanitor

DIM = 16
DB = "replicated"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
rng = np.random.default_rng(15)


@dataclass
class Pair:
    primary: LocalPostgres
    standby: LocalPostgres

    def wait_replay(self, timeout: float = 30.0) -> None:
        """Until the standby has replayed everything the primary has written so far."""
        with psycopg.connect(self.primary.dsn(DB), autocommit=True) as p:
            lsn = p.execute("SELECT pg_catalog.pg_current_wal_insert_lsn()::text").fetchone()[0]
        wait_replayed(self.standby, lsn, timeout)


def wait_replayed(standby: LocalPostgres, lsn: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(standby.dsn(DB), autocommit=True) as s:
        while not s.execute("SELECT pg_catalog.pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]:
            assert time.monotonic() < deadline, f"standby did not replay up to {lsn}"
            time.sleep(0.05)


def start_pair(pylib: Any) -> Pair:
    primary = LocalPostgres().start(pylib=pylib)
    primary.wait_ready()
    DatabaseJanitor(user=primary.user, host=primary.host, port=primary.port, dbname=DB).init()
    from pgmaxsim.db import migrate

    migrate.upgrade(primary.dsn(DB))
    standby = primary.standby()
    standby.wait_ready()
    return Pair(primary, standby)


@pytest.fixture(scope="module")
def pair(pg_server: LocalPostgres) -> Iterator[Pair]:
    """Built once for the module (initdb + base backup); tests use their own indexes."""
    p = start_pair(pg_server.pylib)
    try:
        yield p
    finally:
        p.standby.stop()
        p.primary.stop()


def _vec(n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)


def hv(a: np.ndarray) -> str:
    """A token matrix as a halfvec[] literal."""
    return "{" + ",".join('"[' + ",".join(repr(float(x)) for x in row) + ']"' for row in a) + "}"


def make_index(conn: psycopg.Connection[Any], name: str, n: int) -> dict[str, np.ndarray]:
    conn.execute(f"CREATE TABLE {name} (id integer PRIMARY KEY)")
    conn.execute(f"INSERT INTO {name} SELECT g FROM generate_series(1, {n}) g")
    idx = Index.create(conn, name, name, "id", dim=DIM)
    return add_rows(idx, range(1, n + 1))


def add_rows(idx: Index, ids: Any) -> dict[str, np.ndarray]:
    docs = {i: _vec(int(rng.integers(1, 30))) for i in ids}
    idx.upsert(list(docs), list(docs.values()))
    return {str(i): d for i, d in docs.items()}


def reference(q: np.ndarray, docs: dict[str, np.ndarray], k: int) -> list[tuple[str, float]]:
    s = [(i, maxsim_reference(q.astype(np.float64), d)) for i, d in docs.items()]
    return sorted(s, key=lambda kv: (-kv[1], kv[0]))[:k]


def search(dsn: str, name: str, q: np.ndarray, k: int, candidates: int | None = 100_000) -> list[tuple[str, float]]:
    """maxsim.search in an explicitly read-only transaction."""
    with psycopg.connect(dsn) as c:
        c.execute("SET TRANSACTION READ ONLY")
        return [(i, float(s)) for i, s in c.execute(
            "SELECT id, score FROM maxsim.search(%s, %s::halfvec[], %s, %s)", (name, hv(q), k, candidates))]


def close(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> None:
    assert [i for i, _ in a] == [i for i, _ in b]
    np.testing.assert_allclose([s for _, s in a], [s for _, s in b], rtol=1e-3, atol=1e-3)


def test_standby_search_equals_primary_and_reference_and_sees_new_rows(pair: Pair) -> None:
    with psycopg.connect(pair.primary.dsn(DB), autocommit=True) as conn:
        docs = make_index(conn, "pages", 80)
        pair.wait_replay()
        for _ in range(3):
            q = _vec(6)
            ref = reference(q, docs, 10)
            on_standby = search(pair.standby.dsn(DB), "pages", q, 10)
            close(on_standby, ref)
            assert on_standby == search(pair.primary.dsn(DB), "pages", q, 10)
            # the ANN prefilter path too: the replicated HNSW graph gives the same candidates
            assert search(pair.standby.dsn(DB), "pages", q, 5, None) == search(pair.primary.dsn(DB), "pages", q, 5, None)

        # Rows written on the primary are found on the standby once replayed.
        conn.execute("INSERT INTO pages SELECT g FROM generate_series(81, 90) g")
        new = add_rows(Index(conn, "pages"), range(81, 91))
        docs.update(new)
        q = new["85"][:3]
        pair.wait_replay()
        got = search(pair.standby.dsn(DB), "pages", q, 5)
        assert got[0][0] == "85"
        close(got, reference(q, docs, 5))


def test_readme_search_examples_run_read_only_on_the_standby(pair: Pair) -> None:
    with psycopg.connect(pair.primary.dsn(DB), autocommit=True) as conn:
        conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, title text, body text)")
        conn.execute("INSERT INTO docs SELECT g, 'title ' || g, CASE WHEN g % 3 = 0 THEN 'the moon and tides'"
                     " ELSE 'revenue by region' END FROM generate_series(1, 30) g")
        conn.execute("SELECT maxsim.create_index('docs', 'docs', 'id', text_column => 'body', model => %s)", (MINILM,))
        dim = conn.execute("SELECT (maxsim.index_info('docs')).dim").fetchone()[0]
        docs = {i: _vec(int(rng.integers(2, 9)), dim) for i in range(1, 31)}
        Index(conn, "docs").upsert(list(docs), list(docs.values()), model=MINILM)  # as the worker writes
        queries = {"revenue by region": _vec(5, dim), "tides": _vec(4, dim)}
        for text, tokens in queries.items():  # what Index.cache_query stores (a manager, on the primary)
            conn.execute("SELECT maxsim.cache_query('docs', %s, %s::halfvec[])", (text, hv(tokens)))
    pair.wait_replay()
    ref = reference(queries["revenue by region"], {str(i): d for i, d in docs.items()}, 10)
    moon = [i for i in range(1, 31) if i % 3 == 0]
    with psycopg.connect(pair.standby.dsn(DB)) as s:
        s.execute("SET TRANSACTION READ ONLY")
        top = s.execute("""
            SELECT d.id, d.title, s.score
              FROM maxsim.search('docs', maxsim.encode_query('docs', 'revenue by region'), 10, 1000) s
              JOIN docs d ON d.id = s.id::bigint""").fetchall()
        close([(str(i), float(sc)) for i, _t, sc in top], ref)
        reranked = s.execute("""
            SELECT * FROM maxsim.rerank('docs', maxsim.encode_query('docs', 'tides'),
                                        ARRAY(SELECT id FROM docs WHERE body @@ 'moon'::tsquery))""").fetchall()
        close([(str(i), float(sc)) for i, sc in reranked],
              reference(queries["tides"], {str(i): docs[i] for i in moon}, len(moon)))
        info = s.execute("SELECT * FROM maxsim.index_info('docs')").fetchone()
        assert info is not None and dim in info
        tok = s.execute("SELECT maxsim.tokens('docs', 3::bigint)::text[]").fetchone()[0]
        assert len(tok) == docs[3].shape[0]
        listed = s.execute("SELECT count(*) FROM maxsim.list_indexes()").fetchone()[0]
        assert listed >= 1
        # A query text that is not cached goes to the scorer (none here): a clear error, not a write.
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="no scorer is configured"):
            s.execute("SELECT maxsim.encode_query('docs', 'never cached')")


def _sock() -> str:
    d = tempfile.mkdtemp(prefix="pgms-")
    os.chmod(d, 0o755)
    return os.path.join(d, "scorer.sock")


def _wait(cond: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _wait_syncs(scorer: Scorer, rounds: int = 2) -> None:
    target = scorer.sync_count + rounds
    _wait(lambda: scorer.sync_count >= target, "scorer did not sync")


def _held_version(scorer: Scorer, iid: int, row: str) -> int:
    store = scorer.stores[iid]
    return int(store.versions[store.slot_of[row]])


def _version(dsn: str, iid: int, row: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as c:
        return int(c.execute(f"SELECT version FROM maxsim.tok_{iid} WHERE id = %s::integer", (row,)).fetchone()[0])


def test_scorer_on_the_standby_polls_and_stays_exact(pair: Pair) -> None:
    sdsn = pair.standby.dsn(DB)
    with psycopg.connect(pair.primary.dsn(DB), autocommit=True) as conn:
        docs = make_index(conn, "scored", 60)
        iid = Index(conn, "scored").info.id
        sock = _sock()
        conn.execute("SELECT maxsim.set_scorer(%s)", (sock,))  # replicated: the standby's backends use it
        pair.wait_replay()
        # one scorer per replica; it reports its sync position to the primary (the standby is read-only)
        svc = ScorerService(Scorer(sdsn, CpuBackend(), poll_interval=0.1, report_dsn=pair.primary.dsn(DB)),
                            sock).start()
        try:
            scorer = svc.scorer
            assert scorer.wait_synced(30)
            assert scorer.standby and iid in scorer.stores  # polled: LISTEN is refused in recovery
            served = scorer.served["search"]
            q = _vec(5)
            close(search(sdsn, "scored", q, 10), reference(q, docs, 10))
            assert scorer.served["search"] == served + 1

            # A transaction in progress on the primary while the standby scorer syncs: the scorer must
            # not take it for committed (pg_current_snapshot lists no running xids on a standby).
            old5 = docs["5"]
            writer = psycopg.connect(pair.primary.dsn(DB))
            new5 = _vec(7)
            Index(writer, "scored").upsert([5], [new5])      # not committed
            docs.update(add_rows(Index(conn, "scored"), [6]))  # a later transaction commits first
            pair.wait_replay()
            _wait_syncs(scorer)
            close(search(sdsn, "scored", q, 10), reference(q, docs, 10))
            scorer.sync_enabled.clear()                       # hold the scorer behind the commit
            time.sleep(0.3)
            writer.commit()
            writer.close()
            docs["5"] = new5
            pair.wait_replay()
            assert docs["5"] is not old5
            q5 = new5[:3]
            got = search(sdsn, "scored", q5, 5)   # the scorer holds the old row 5: the caller rescores it
            assert got[0][0] == "5"
            close(got, reference(q5, docs, 5))
            scorer.sync_enabled.set()
            _wait(lambda: _held_version(scorer, iid, "5") == _version(sdsn, iid, "5"),
                  "the standby scorer missed a commit replayed after its sync")

            # New rows written on the primary reach the standby's scorer after replay.
            conn.execute("INSERT INTO scored SELECT g FROM generate_series(61, 70) g")
            docs.update(add_rows(Index(conn, "scored"), range(61, 71)))
            pair.wait_replay()
            _wait(lambda: scorer.stores[iid].rows == 70, "the standby scorer did not load the new rows")
            q = docs["66"][:4]
            served = scorer.served["search"]
            got = search(sdsn, "scored", q, 10)
            assert got[0][0] == "66" and scorer.served["search"] == served + 1
            close(got, reference(q, docs, 10))
            assert not scorer._prune_warned  # no write was tried on the standby
            mark = conn.execute("SELECT pg_catalog.pg_snapshot_xmin(watermark)::text FROM maxsim.scorers"
                                " WHERE scorer_id = %s", (scorer.scorer_id,)).fetchone()
            assert mark is not None and int(mark[0]) <= scorer.stores[iid].watermark.xmin  # the primary keeps its log
        finally:
            svc.stop()
            conn.execute("SELECT maxsim.set_scorer(NULL)")


def test_a_scorer_per_server_on_one_host_through_the_port_placeholder(pair: Pair) -> None:
    """The scorer address is replicated; '{port}' in it makes each server's backends reach their own
    scorer: the primary's searches go to the primary's scorer, the standby's to the standby's."""
    sdsn, pdsn = pair.standby.dsn(DB), pair.primary.dsn(DB)
    with psycopg.connect(pdsn, autocommit=True) as conn:
        docs = make_index(conn, "per_server", 30)
        folder = os.path.dirname(_sock())
        conn.execute("SELECT maxsim.set_scorer(%s)", (os.path.join(folder, "scorer-{port}.sock"),))
        pair.wait_replay()
        at = {p.port: os.path.join(folder, f"scorer-{p.port}.sock") for p in (pair.primary, pair.standby)}
        on_primary = ScorerService(Scorer(pdsn, CpuBackend(), poll_interval=0.1), at[pair.primary.port]).start()
        on_standby = ScorerService(Scorer(sdsn, CpuBackend(), poll_interval=0.1, report_dsn=pdsn),
                                   at[pair.standby.port]).start()
        try:
            assert on_primary.scorer.wait_synced(30) and on_standby.scorer.wait_synced(30)
            q = _vec(11)
            for dsn, mine, other in ((pdsn, on_primary, on_standby), (sdsn, on_standby, on_primary)):
                before = (mine.scorer.served["search"], other.scorer.served["search"])
                close(search(dsn, "per_server", q, 10), reference(q, docs, 10))
                assert (mine.scorer.served["search"], other.scorer.served["search"]) == (before[0] + 1, before[1])
        finally:
            on_primary.stop()
            on_standby.stop()
            conn.execute("SELECT maxsim.set_scorer(NULL)")


class HashEncoder:
    """A tiny deterministic text encoder (one unit vector per word, from its md5): no model load.
    Each batch takes a little while, so that the primary can be stopped mid-queue."""

    name, revision, dim, kind = "text:hash-words", None, 8, "multi"

    def encode_documents(self, items: list[Any]) -> list[np.ndarray]:
        time.sleep(0.08)
        return [word_tokens(str(t)) for t in items]


def word_tokens(text: str) -> np.ndarray:
    import hashlib

    rows = [np.frombuffer(hashlib.md5(w.encode()).digest(), dtype=np.uint8)[:8].astype(np.float32) - 127.5
            for w in text.split()]
    x = np.stack(rows)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_worker_on_a_multi_host_dsn_survives_failover_and_embeds_every_row_once(pg_server: LocalPostgres) -> None:
    from pgmaxsim.worker import run_worker

    n = 240
    p = start_pair(pg_server.pylib)
    try:
        with psycopg.connect(p.primary.dsn(DB), autocommit=True) as conn:
            conn.execute("CREATE TABLE f (id integer PRIMARY KEY, body text)")
            conn.execute("INSERT INTO f SELECT g, 'row ' || g || ' about word' || (g %% 7) FROM generate_series(1, %s) g",
                         (n,))
            iid = conn.execute("SELECT maxsim.create_index('f', 'f'::regclass, 'id', 'body', NULL, %s, 8)",
                               (HashEncoder.name,)).fetchone()[0]
        p.wait_replay()
        dsn = (f"host={p.primary.host},{p.standby.host} port={p.primary.port},{p.standby.port} dbname={DB}"
               f" user={p.primary.user} target_session_attrs=read-write")
        done = []
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                result["stats"] = run_worker(dsn, once=True, install_signals=False, batch_size=8, poll_interval=0.1,
                                             heartbeat_interval=0.5, retry_base=0.01,
                                             encoder_factory=lambda spec: HashEncoder(),
                                             on_batch=lambda r: done.append(r.done))
            except BaseException as e:  # noqa: BLE001 - reported by the assertion below
                result["error"] = e

        t = threading.Thread(target=work, daemon=True)
        t.start()
        _wait(lambda: sum(done) >= n // 3, "the worker did not start embedding", 60)
        p.primary._pg_ctl("stop", "-m", "fast", "-w", "-t", "60")   # mid-queue
        assert sum(done) < n
        p.standby.promote()
        t.join(180)
        assert not t.is_alive(), "the worker did not finish the queue on the promoted standby"
        assert "error" not in result, result.get("error")
        assert result["stats"].reconnects >= 1
        with psycopg.connect(p.standby.dsn(DB), autocommit=True) as new_primary:
            assert not new_primary.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()[0]
            rows = dict(new_primary.execute(f"SELECT id::text, n_tokens FROM maxsim.tok_{iid}").fetchall())
            bodies = dict(new_primary.execute("SELECT id::text, body FROM f").fetchall())
            writes = dict(new_primary.execute(
                "SELECT row_id, count(*) FROM maxsim.changes WHERE index_id = %s AND NOT deleted GROUP BY row_id",
                (iid,)).fetchall())
            queued = new_primary.execute("SELECT count(*) FROM maxsim.queue WHERE index_id = %s", (iid,)).fetchone()[0]
            sample = new_primary.execute("SELECT maxsim.tokens('f', 7)::text[]").fetchone()[0]
        assert queued == 0 and set(rows) == set(bodies)                # nothing lost
        assert set(writes) == set(bodies) and set(writes.values()) == {1}  # nothing embedded twice
        assert all(rows[i] == len(bodies[i].split()) for i in rows)
        got = np.array([[float(x) for x in v.strip("[]").split(",")] for v in sample])
        np.testing.assert_allclose(got, word_tokens(bodies["7"]), atol=2e-3)
    finally:
        p.standby.stop()
        p.primary.stop()
