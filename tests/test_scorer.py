"""The scorer service on its CPU backend against a real PostgreSQL: protocol, sync,
snapshot correctness, the SQL functions going through it, fallback, limits, memory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest
from pgmaxsim.index import Index
from pgmaxsim.kernels.reference import maxsim_reference
from pgmaxsim.scorer.client import ScorerClient
from pgmaxsim.scorer.protocol import ScorerError, Snapshot, send_frame
from pgmaxsim.scorer.server import Limits, Scorer, ScorerService
from pgmaxsim.scorer.store import CpuBackend

DIM = 16
rng = np.random.default_rng(0)


def _vec(n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)


def _make_index(conn: psycopg.Connection[Any], name: str, n: int, key: str = "integer") -> tuple[Index, dict[Any, np.ndarray]]:
    table = f"src_{name}"
    conn.execute(f"CREATE TABLE {table} (id {key} PRIMARY KEY)")
    ids: list[Any] = list(range(1, n + 1)) if key != "text" else [f"doc '{i}'" for i in range(1, n + 1)]
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} (id) VALUES (%s)", [(i,) for i in ids])
    idx = Index.create(conn, name, table, "id", dim=DIM)
    docs = {i: _vec(int(rng.integers(1, 40))) for i in ids}
    idx.upsert(list(docs), list(docs.values()))
    return idx, docs


def _exact(q: np.ndarray, docs: dict[Any, np.ndarray], k: int) -> list[tuple[str, float]]:
    q16 = q.astype(np.float16).astype(np.float64)
    s = [(str(i), maxsim_reference(q16, d)) for i, d in docs.items()]
    return sorted(s, key=lambda kv: (-kv[1], kv[0]))[:k]


def _sock() -> str:
    d = tempfile.mkdtemp(prefix="pgms-")
    os.chmod(d, 0o755)
    return os.path.join(d, "scorer.sock")


def use_scorer(conn: psycopg.Connection[Any], address: str | None, **more: str) -> None:
    """What an admin does: maxsim.set_scorer (None: no scorer) and the other scorer settings."""
    conn.execute("SELECT maxsim.set_scorer(%s)", (address,))
    for key in ("scorer_timeout_ms", "scorer_secret_file", "scorer_user"):
        conn.execute("SELECT maxsim.set_setting(%s, %s)", (key, more.get(key)))


def _wait_sync(scorer: Scorer, rounds: int = 2, timeout: float = 10.0) -> None:
    target = scorer.sync_count + rounds
    end = time.time() + timeout
    while scorer.sync_count < target:
        assert time.time() < end, "scorer did not sync"
        time.sleep(0.01)


@pytest.fixture
def service(dsn: str) -> Iterator[ScorerService]:
    svc = ScorerService(Scorer(dsn, CpuBackend(), Limits(max_ids=500, max_query_tokens=64, max_k=100),
                               poll_interval=0.2), _sock()).start()
    yield svc
    svc.stop()


def _search_sql(conn: psycopg.Connection[Any], name: str, q: np.ndarray, k: int) -> list[tuple[str, float]]:
    idx = Index(conn, name)
    return [(str(i), s) for i, s in idx.search(q, k=k, candidates=10_000)]


def _close(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> None:
    assert [i for i, _ in a] == [i for i, _ in b]
    np.testing.assert_allclose([s for _, s in a], [s for _, s in b], rtol=1e-4, atol=1e-4)


def test_protocol_scores_and_search_match_reference(conn: psycopg.Connection[Any], service: ScorerService) -> None:
    idx, docs = _make_index(conn, "docs", 60)
    _wait_sync(service.scorer)
    iid = idx.info.id
    q = _vec(7)
    with ScorerClient(service.address) as c:
        assert c.ping()["backend"] == "cpu"
        versions = dict(conn.execute(f"SELECT id::text, version FROM maxsim.{idx.info.token_table}").fetchall())
        ids = ["5", "1", "59", "1000"]
        res = c.score(iid, q, ids, [versions.get(i, 0) for i in ids])
        assert res.found.tolist() == [True, True, True, False]
        for i, s in zip(ids[:3], res.scores[:3]):
            assert s == pytest.approx(maxsim_reference(q.astype(np.float64), docs[int(i)]), rel=1e-4)
        stale = c.score(iid, q, ["5"], [versions["5"] - 1])
        assert stale.found.tolist() == [False]
        snap = conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0]
        rep = c.search(iid, q, 10, snap)
        _close(list(zip(rep.ids, rep.scores.tolist())), _exact(q, docs, 10))
        assert not rep.dirty and not rep.exhausted and rep.rows == 60


def test_sql_functions_go_through_the_scorer(conn: psycopg.Connection[Any], service: ScorerService) -> None:
    idx, docs = _make_index(conn, "docs", 50, key="text")
    _wait_sync(service.scorer)
    q = _vec(5)
    cpu_search = _search_sql(conn, "docs", q, 7)
    keys = [f"doc '{i}'" for i in (3, 9, 11, 47)]
    cpu_rerank = Index(conn, "docs").rerank(q, keys + ["absent"], k=3)
    use_scorer(conn, service.address)
    before = dict(service.scorer.served)
    _close(_search_sql(conn, "docs", q, 7), cpu_search)
    _close(_exact(q, docs, 7), cpu_search)
    got = Index(conn, "docs").rerank(q, keys + ["absent"], k=3)
    assert [i for i, _ in got] == [i for i, _ in cpu_rerank]
    assert service.scorer.served["search"] > before["search"]
    assert service.scorer.served["score"] > before["score"]


def test_writes_seen_after_sync_and_snapshots_stay_exact(conn: psycopg.Connection[Any], dsn: str,
                                                         service: ScorerService) -> None:
    idx, docs = _make_index(conn, "docs", 40)
    _wait_sync(service.scorer)
    use_scorer(conn, service.address)
    q = _vec(6)
    top = _exact(q, docs, 5)
    best = int(top[0][0])
    iid = idx.info.id

    # An old snapshot (REPEATABLE READ) opened before the writes.
    old = psycopg.connect(dsn)
    old.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    assert _search_sql(old, "docs", q, 5)[0][0] == str(best)

    # delete the best row, update another to become the best, insert a new one
    new_docs = dict(docs)
    idx.delete([best])
    del new_docs[best]
    conn.execute("INSERT INTO src_docs VALUES (41)")
    new_docs[7] = q.copy()            # identical to the query: the best possible row
    new_docs[41] = _vec(3)
    idx.upsert([7, 41], [new_docs[7], new_docs[41]])
    _wait_sync(service.scorer)        # the scorer is now ahead of `old`
    with ScorerClient(service.address) as c:
        snap = conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0]
        rep = c.search(iid, q, 5, snap)
        assert rep.ids[0] == "7" and str(best) not in rep.ids   # visible after the documented lag
    _close(_search_sql(conn, "docs", q, 5), _exact(q, new_docs, 5))
    # the old snapshot still sees the old rows, scored exactly (rows ahead come back dirty)
    _close(_search_sql(old, "docs", q, 5), _exact(q, docs, 5))
    old.rollback()
    old.close()

    # The scorer held behind: new commits are patched in by the caller from maxsim.changes.
    service.scorer.sync_enabled.clear()
    time.sleep(0.3)
    idx.delete([7])
    del new_docs[7]
    new_docs[2] = -q.copy()
    idx.upsert([2], [new_docs[2]])
    _close(_search_sql(conn, "docs", q, 5), _exact(q, new_docs, 5))
    rer = Index(conn, "docs").rerank(q, [2, 7, 3])
    assert [i for i, _ in rer] == [3, 2]
    assert rer[1][1] == pytest.approx(maxsim_reference(q.astype(np.float64), new_docs[2]), rel=1e-3)
    service.scorer.sync_enabled.set()


def test_fallback_when_scorer_down_or_dies_mid_query(conn: psycopg.Connection[Any], dsn: str) -> None:
    idx, docs = _make_index(conn, "docs", 30)
    q = _vec(4)
    want = _exact(q, docs, 5)
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    # nothing listens on this path
    use_scorer(conn, _sock())
    _close(_search_sql(conn, "docs", q, 5), want)
    assert any("scorer service not used" in n and "unreachable" in n for n in notices)
    # a "scorer" that greets, then dies mid-request
    path = _sock()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    os.chmod(path, 0o777)
    srv.listen(8)

    def die() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            send_frame(c, {"ok": True, "hello": "pgmaxsim-scorer", "auth": "peercred"})
            c.recv(16)
            c.close()

    threading.Thread(target=die, daemon=True).start()
    use_scorer(conn, path)
    notices.clear()
    _close(_search_sql(conn, "docs", q, 5), want)
    assert any("unreachable" in n for n in notices)
    srv.close()
    # service started afterwards on that path: the same backend uses it again
    os.unlink(path)
    svc = ScorerService(Scorer(dsn, CpuBackend(), poll_interval=0.2), path).start()
    try:
        _wait_sync(svc.scorer)
        notices.clear()
        _close(_search_sql(conn, "docs", q, 5), want)
        assert not notices and svc.scorer.served["search"] >= 1
    finally:
        svc.stop()


def test_sixteen_concurrent_clients(conn: psycopg.Connection[Any], service: ScorerService) -> None:
    idx, docs = _make_index(conn, "docs", 80)
    _wait_sync(service.scorer)
    iid = idx.info.id
    snap = conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0]
    queries = [_vec(int(rng.integers(1, 30))) for _ in range(16)]
    expected = [_exact(q, docs, 8) for q in queries]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with ScorerClient(service.address) as c:
                for _ in range(5):
                    rep = c.search(iid, queries[i], 8, snap)
                    _close(list(zip(rep.ids, rep.scores.tolist())), expected[i])
        except BaseException as exc:  # collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_request_limits_give_clear_errors(conn: psycopg.Connection[Any], service: ScorerService) -> None:
    idx, _ = _make_index(conn, "docs", 5)
    _wait_sync(service.scorer)
    iid = idx.info.id
    snap = conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0]
    with ScorerClient(service.address) as c:
        with pytest.raises(ScorerError, match="501 ids in one request, the limit is 500") as e:
            c.score(iid, _vec(2), [str(i) for i in range(501)], list(range(501)))
        assert e.value.code == "limit"
        with pytest.raises(ScorerError, match="query has 65 tokens, the limit is 64"):
            c.search(iid, _vec(65), 3, snap)
        with pytest.raises(ScorerError, match="query dim 8 does not match the index dim 16") as e:
            c.search(iid, np.ones((2, 8), np.float32), 3, snap)
        assert e.value.code == "bad_request"
        with pytest.raises(ScorerError, match="k = 101 exceeds the limit of 100"):
            c.search(iid, _vec(2), 101, snap)
        with pytest.raises(ScorerError, match="does not hold index 9999") as e:
            c.search(9999, _vec(2), 3, snap)
        assert e.value.code == "unknown_index"
        with pytest.raises(ScorerError, match="older than the scorer's change journal") as e:
            c.search(iid, _vec(2), 3, "1:1:")
        assert c.ping()["ok"]   # the connection survives errors


def test_out_of_memory_while_loading_keeps_serving_the_rest(conn: psycopg.Connection[Any], dsn: str) -> None:
    small, sdocs = _make_index(conn, "small", 10)
    big, _ = _make_index(conn, "big", 10)
    big.upsert(list(range(1, 11)), [_vec(3000) for _ in range(10)])   # ~1 MB of fp16 tokens
    svc = ScorerService(Scorer(dsn, CpuBackend(max_memory=400_000), poll_interval=0.2), _sock()).start()
    try:
        _wait_sync(svc.scorer)
        with ScorerClient(svc.address) as c:
            st = {i["name"]: i for i in c.status()["indexes"]}
            assert st["small"]["state"] == "ready"
            assert st["big"]["state"] == "failed"
            assert "out of memory while loading index 'big'" in st["big"]["error"]
            snap = conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0]
            q = _vec(3)
            rep = c.search(small.info.id, q, 3, snap)
            _close(list(zip(rep.ids, rep.scores.tolist())), _exact(q, sdocs, 3))
            with pytest.raises(ScorerError, match="out of memory") as e:
                c.search(big.info.id, q, 3, snap)
            assert e.value.code == "not_ready"
        # the SQL functions fall back for the index that did not fit
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        use_scorer(conn, svc.address)
        assert len(_search_sql(conn, "big", _vec(2), 3)) == 3
        assert any("out of memory" in n for n in notices)
    finally:
        svc.stop()


def test_process_start_stop_restart_and_reload(conn: psycopg.Connection[Any], dsn: str) -> None:
    idx, docs = _make_index(conn, "docs", 12)
    path = _sock()
    cmd = [sys.executable, "-m", "pgmaxsim.scorer.server", "--dsn", dsn, "--socket", path,
           "--backend", "cpu", "--poll-interval", "0.2"]
    q = _vec(3)
    for _round in range(2):   # start, stop, start again on the same socket
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            end = time.time() + 30
            while True:
                try:
                    with ScorerClient(path) as c:
                        st = c.status()
                        if st["indexes"] and st["indexes"][0]["state"] == "ready":
                            break
                except (OSError, ScorerError):
                    pass
                assert time.time() < end and proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.1)
            with ScorerClient(path) as c:
                snap = conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0]
                rep = c.search(idx.info.id, q, 4, snap)
                _close(list(zip(rep.ids, rep.scores.tolist())), _exact(q, docs, 4))
                assert c.reload(idx.info.id)["ok"]
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        assert not os.path.exists(path)


def test_snapshot_visibility_rules() -> None:
    s = Snapshot.parse("100:105:101,103")
    assert s.sees(99) and s.sees(102) and s.sees(104)
    assert not s.sees(101) and not s.sees(103) and not s.sees(105)
    assert Snapshot.parse(s.text()) == s


def test_encode_query_op_serves_sql_encode_query(conn: psycopg.Connection[Any], dsn: str) -> None:
    """maxsim.encode_query (revision 0004) asks the scorer, which hosts the index's model."""
    pytest.importorskip("torch")
    from pgmaxsim.encoders.registry import load_encoder

    conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    Index.create(conn, "notes", "notes", "id", text_column="body", model="default", dim=384)
    svc = ScorerService(Scorer(dsn, CpuBackend(), poll_interval=0.2), _sock()).start()
    try:
        _wait_sync(svc.scorer)
        # the scorer loads the model on the first request: give it longer than a search's default
        use_scorer(conn, svc.address, scorer_timeout_ms="120000")
        got = conn.execute("SELECT array_length(maxsim.encode_query('notes', 'opening rules of chess'), 1)").fetchone()[0]
        want = load_encoder("default", device="cpu").encode_query("opening rules of chess")
        assert got == want.shape[0]
        with ScorerClient(svc.address) as c:
            iid = conn.execute("SELECT id FROM maxsim.indexes WHERE name = 'notes'").fetchone()[0]
            _head, arrays = c.request({"op": "encode_query", "index": iid, "text": "opening rules of chess"})
            np.testing.assert_allclose(arrays["tokens"], want, atol=1e-4)
            with pytest.raises(ScorerError, match="query text is empty"):
                c.request({"op": "encode_query", "index": iid, "text": " "})
    finally:
        svc.stop()
