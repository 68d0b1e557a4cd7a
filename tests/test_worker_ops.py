"""Operations on a real server with real ``pgmaxsim worker`` processes and the MiniLM default:
4 workers in parallel, kill -9 mid-batch, SIGTERM, PostgreSQL restarted under a running worker."""

from __future__ import annotations

import re
import signal
import threading
from pathlib import Path
from typing import Any

import psycopg
from pgmaxsim.worker import run_worker
from worker_util import (
    create_index,
    failed,
    make_text_table,
    queued,
    spawn_worker,
    tok_rows,
    wait_for,
    writes_per_row,
)


def count(dsn: str, query: str, *params: Any) -> int:
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute(query, params).fetchone()
    return int(row[0]) if row else 0


def test_four_workers_in_parallel_embed_every_row_exactly_once(dsn: str, conn: psycopg.Connection[Any],
                                                               tmp_path: Path) -> None:
    make_text_table(conn, "par", 2000)
    iid = create_index(conn, "par", "par")
    procs = [spawn_worker(dsn, "--once", "--batch-size", "25", log=tmp_path / f"w{i}.log") for i in range(4)]
    for p in procs:
        assert p.wait(timeout=240) == 0, (tmp_path / f"w{procs.index(p)}.log").read_text()[-2000:]
    logs = [(tmp_path / f"w{i}.log").read_text() for i in range(4)]
    done = [int(re.search(r": (\d+) row\(s\) embedded", log).group(1)) for log in logs]  # type: ignore[union-attr]
    assert sum(done) == 2000
    assert sum(1 for d in done if d > 0) >= 2  # the work really was shared
    assert len(tok_rows(conn, iid)) == 2000 and queued(conn, iid) == 0 and failed(conn, iid) == {}
    writes = writes_per_row(conn, iid)
    assert len(writes) == 2000 and set(writes.values()) == {1}  # each row written exactly once
    per_worker = conn.execute("SELECT worker_id, sum(rows_done) FROM maxsim.ingest_log WHERE index_id = %s"
                              " GROUP BY worker_id", (iid,)).fetchall()
    assert len(per_worker) == sum(1 for d in done if d > 0) and sum(n for _, n in per_worker) == 2000


def test_kill_9_mid_batch_then_a_new_worker_loses_and_duplicates_nothing(dsn: str, conn: psycopg.Connection[Any],
                                                                        tmp_path: Path) -> None:
    make_text_table(conn, "k9", 600)
    iid = create_index(conn, "k9", "k9")
    victim = spawn_worker(dsn, "--batch-size", "40", log=tmp_path / "victim.log")

    def mid_batch() -> bool:
        # The worker's work connection is inside a batch transaction (claimed, encoding or writing),
        # after it has already committed at least one batch.
        return count(dsn, "SELECT count(*) FROM maxsim.ingest_log WHERE index_id = %s", iid) >= 1 and count(
            dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgmaxsim worker'"
                 " AND state IN ('idle in transaction', 'active') AND xact_start IS NOT NULL") == 1

    wait_for(mid_batch, 120, "the worker to be inside a batch", step=0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    embedded = len(tok_rows(conn, iid))
    assert 0 < embedded < 600, embedded
    # The killed worker's claims are released with its connection: nothing is left locked.
    wait_for(lambda: count(dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgmaxsim worker'") == 0,
             30, "the killed worker's backend to go away")
    heir = spawn_worker(dsn, "--poll", "0.2", log=tmp_path / "heir.log")
    wait_for(lambda: queued(conn, iid) == 0 and len(tok_rows(conn, iid)) == 600, 180, "the new worker to finish")
    heir.send_signal(signal.SIGTERM)  # finishes its (empty) round and exits cleanly
    assert heir.wait(timeout=60) == 0, (tmp_path / "heir.log").read_text()[-2000:]
    writes = writes_per_row(conn, iid)
    assert len(writes) == 600 and set(writes.values()) == {1}  # the killed batch left no trace
    assert failed(conn, iid) == {}
    states = dict(conn.execute("SELECT pid, state FROM maxsim.workers").fetchall())
    assert states.get(heir.pid) == "stopped"
    assert states.get(victim.pid) == "running"  # its last heartbeat; status shows it going stale


def test_postgres_restart_while_the_worker_runs(pg_server: Any, dsn: str, conn: psycopg.Connection[Any]) -> None:
    make_text_table(conn, "rs", 600)
    iid = create_index(conn, "rs", "rs")
    conn.close()
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["stats"] = run_worker(dsn, once=True, batch_size=10, install_signals=False,
                                         heartbeat_interval=0.5, max_downtime=120)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            result["error"] = e

    t = threading.Thread(target=work)
    t.start()
    wait_for(lambda: count(dsn, "SELECT count(*) FROM maxsim.ingest_log WHERE index_id = %s", iid) >= 2, 120,
             "a few batches")
    pg_server.restart()
    t.join(timeout=240)
    assert not t.is_alive()
    assert "error" not in result, result.get("error")
    stats = result["stats"]
    assert stats.reconnects >= 1
    with psycopg.connect(dsn, autocommit=True) as c:
        assert len(tok_rows(c, iid)) == 600 and queued(c, iid) == 0 and failed(c, iid) == {}
        assert set(writes_per_row(c, iid).values()) == {1}
