"""The ingestion worker on a real server with the real MiniLM default: backfill, content-hash skip,
updates, deletes, TRUNCATE, key changes, claims (SKIP LOCKED, budget, per-row lock), retries and
the failed table, --exit-on-error, status."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import psycopg
import pytest
from pgmaxsim.errors import PgmaxsimError
from pgmaxsim.worker import queue, render_status, status
from pgmaxsim.worker.batch import BatchSettings, process_batch
from pgmaxsim.worker.encoding import EncoderCache
from pgmaxsim.worker.spec import load_specs
from worker_util import (
    ROOT,
    create_index,
    failed,
    make_text_table,
    queued,
    run_once,
    tok_rows,
    worker_env,
    writes_per_row,
)


def test_backfill_then_only_changed_rows_are_encoded_again(dsn: str, conn: psycopg.Connection[Any]) -> None:
    make_text_table(conn, "docs", 120)
    iid = create_index(conn, "docs", "docs")
    assert queued(conn, iid) == 120  # existing rows are queued on creation
    stats = run_once(dsn)
    assert (stats.done, stats.failed, stats.skipped) == (120, 0, 0)
    rows = tok_rows(conn, iid)
    assert len(rows) == 120 and queued(conn, iid) == 0
    assert all(r[1] is not None and len(r[1]) == 32 and r[2] == "sentence-transformers/all-MiniLM-L6-v2"
               and r[3] > 2 for r in rows.values())

    # Change the text of 5 rows, touch 5 others without changing them, change a column not indexed.
    conn.execute("UPDATE docs SET body = body || ' and lakes' WHERE id <= 5")
    conn.execute("UPDATE docs SET body = body WHERE id BETWEEN 6 AND 10")
    conn.execute("UPDATE docs SET note = 'x' WHERE id BETWEEN 11 AND 20")
    assert queued(conn, iid) == 5
    stats = run_once(dsn)
    assert (stats.done, stats.skipped) == (5, 0)
    after = tok_rows(conn, iid)
    changed = {k for k in rows if after[k][0] != rows[k][0]}
    assert changed == {str(i) for i in range(1, 6)}
    assert all(after[k][1] != rows[k][1] for k in changed)

    # Rows queued again without a change (e.g. by hand, or duplicates) are not encoded again.
    conn.execute("INSERT INTO maxsim.queue (index_id, row_id) SELECT %s, id::text FROM docs WHERE id > 100", (iid,))
    stats = run_once(dsn)
    assert (stats.done, stats.skipped) == (0, 20)
    assert tok_rows(conn, iid) == after
    assert max(writes_per_row(conn, iid).values()) <= 2


def test_deletes_truncate_and_key_changes(dsn: str, conn: psycopg.Connection[Any]) -> None:
    make_text_table(conn, "d2", 40, key="text")
    iid = create_index(conn, "d2", "d2")
    run_once(dsn)
    assert len(tok_rows(conn, iid)) == 40
    conn.execute("DELETE FROM d2 WHERE id IN ('1', '2', '3')")
    assert set(tok_rows(conn, iid)) == {str(i) for i in range(4, 41)}  # removed at once, no worker needed

    # A row deleted while queued: the worker drops the entry and writes nothing for it.
    conn.execute("UPDATE d2 SET body = 'changed' WHERE id = '4'")
    conn.execute("DELETE FROM d2 WHERE id = '4'")
    stats = run_once(dsn)
    assert stats.missing == 1 and stats.done == 0 and queued(conn, iid) == 0
    assert "4" not in tok_rows(conn, iid)

    # Primary-key change: the old id's embeddings go, the new id is embedded.
    conn.execute("UPDATE d2 SET id = 'five' WHERE id = '5'")
    assert "5" not in tok_rows(conn, iid)
    run_once(dsn)
    rows = tok_rows(conn, iid)
    assert "five" in rows and "5" not in rows and len(rows) == 36

    conn.execute("TRUNCATE d2")
    assert tok_rows(conn, iid) == {}
    conn.execute("INSERT INTO d2 (id, body) VALUES ('new', 'a fresh row about rivers')")
    run_once(dsn)
    assert set(tok_rows(conn, iid)) == {"new"}


def _spec(conn: psycopg.Connection[Any], name: str) -> Any:
    return next(s for s in load_specs(conn) if s.name == name)


def test_claims_are_disjoint_budgeted_and_one_row_at_a_time(dsn: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE c (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO c SELECT g, repeat('word ', 800) FROM generate_series(1, 10) g")  # ~1000 tokens each
    iid = create_index(conn, "c", "c")
    conn.execute("INSERT INTO maxsim.queue (index_id, row_id) VALUES (%s, '1')", (iid,))  # a duplicate of row 1
    spec = _spec(conn, "c")
    with psycopg.connect(dsn, autocommit=True) as other:
        with conn.transaction():
            a = queue.claim(conn, spec, batch_size=8, token_budget=2500)
            assert [r.row_id for r in a] == ["1", "2"]  # the token budget cut the batch at 2 rows
            with other.transaction():
                b = queue.claim(other, spec, batch_size=20, token_budget=100_000)
                # Disjoint, and the cut-off rows 3.. were released (not held by the first claim);
                # row 1's duplicate entry is skipped: row 1 is being encoded by the first claim.
                assert [r.row_id for r in b] == [str(i) for i in range(3, 11)]
                assert not {r.row_id for r in a} & {r.row_id for r in b}
        # After both transactions ended without dequeuing, everything is claimable again.
        with conn.transaction():
            again = queue.claim(conn, spec, batch_size=100, token_budget=10**9)
            assert len(again) == 10 and sorted(next(r for r in again if r.row_id == "1").qids) == sorted(
                q for (q,) in conn.execute("SELECT qid FROM maxsim.queue WHERE row_id = '1'").fetchall())


def test_transient_failure_backs_off_then_succeeds_or_fails(dsn: str, conn: psycopg.Connection[Any],
                                                           tmp_path: Any) -> None:
    conn.execute("CREATE TABLE p (id int PRIMARY KEY, path text)")
    late, never = tmp_path / "late.png", tmp_path / "never.png"
    conn.execute("INSERT INTO p VALUES (1, %s), (2, %s)", (str(late), str(never)))
    create_index(conn, "p", "p", text=None, image="path", model="text:unused", dim=384)
    spec = _spec(conn, "p")
    settings = BatchSettings(max_attempts=3, retry_base=60.0)
    encoders = EncoderCache(lambda s: pytest.fail("nothing must reach the encoder"))
    r = process_batch(conn, spec, encoders, settings)
    assert r is not None and r.retried == 2 and r.failed == 0
    rows = conn.execute("SELECT row_id, attempts, last_error, not_before > now() + interval '50 s'"
                        " FROM maxsim.queue ORDER BY row_id").fetchall()
    assert [(x[0], x[1], x[3]) for x in rows] == [("1", 1, True), ("2", 1, True)]
    assert "load: file" in rows[0][2] and "does not exist" in rows[0][2]
    assert process_batch(conn, spec, encoders, settings) is None  # backing off: nothing claimable
    conn.execute("UPDATE maxsim.queue SET not_before = now()")
    r = process_batch(conn, spec, encoders, settings)
    assert r is not None and r.retried == 2
    conn.execute("UPDATE maxsim.queue SET not_before = now()")
    r = process_batch(conn, spec, encoders, settings)
    assert r is not None and r.failed == 2 and queued(conn, spec.id) == 0
    f = failed(conn, spec.id)
    assert f["2"][0] == "load" and f["2"][2] == 3 and str(never) in f["2"][1]


def test_exit_on_error_rolls_back_and_raises(dsn: str, conn: psycopg.Connection[Any]) -> None:
    make_text_table(conn, "e", 5)
    conn.execute("UPDATE e SET body = NULL WHERE id = 3")
    iid = create_index(conn, "e", "e")
    with pytest.raises(PgmaxsimError, match="row 3: load: NULL content"):
        run_once(dsn, exit_on_error=True)
    assert queued(conn, iid) == 5 and tok_rows(conn, iid) == {} and failed(conn, iid) == {}


def test_unknown_index_and_model_are_clear_errors(dsn: str, conn: psycopg.Connection[Any]) -> None:
    from pgserver import free_port

    with pytest.raises(PgmaxsimError, match=r"^cannot connect to postgresql://u:\*\*\*@127\.0\.0\.1"):
        run_once(f"postgresql://u:secret@127.0.0.1:{free_port()}/x")
    with pytest.raises(PgmaxsimError, match="index 'nope' does not exist"):
        run_once(dsn, indexes=["nope"])
    make_text_table(conn, "u", 3)
    iid = create_index(conn, "u", "u", model="text:/no/such/model", dim=384)
    stats = run_once(dsn, max_attempts=2)
    assert stats.failed == 3
    f = failed(conn, iid)
    assert all(step == "encode" and "cannot load model 'text:/no/such/model'" in err for step, err, _ in f.values())


def test_status_library_and_cli(dsn: str, conn: psycopg.Connection[Any]) -> None:
    make_text_table(conn, "s", 30)
    conn.execute("UPDATE s SET body = '' WHERE id IN (7, 8)")
    iid = create_index(conn, "s", "s")
    run_once(dsn, batch_size=8)
    conn.execute("INSERT INTO s (id, body) VALUES (100, 'pending row')")
    st = status(conn)
    (i,) = st.indexes
    assert (i.name, i.rows, i.pending, i.failed) == ("s", 28, 1, 2)
    assert {e.row_id for e in i.last_errors} == {"7", "8"} and all("empty text" in e.error for e in i.last_errors)
    assert i.rows_per_s and i.rows_per_s > 0
    assert st.workers and st.workers[-1].state == "stopped" and st.workers[-1].rows_done == 28
    text = render_status(st)
    assert "empty text" in text and "stopped" in text

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pgmaxsim.cli", "--dsn", dsn, "status", *args],
                              capture_output=True, text=True, timeout=120, env=worker_env(), cwd=ROOT,
                              check=False)

    out = cli()
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:8] == ["index", "model", "dim", "rows", "pending", "retrying", "failed", "throughput"]
    assert lines[2].split()[:7] == ["s", "sentence-transformers/all-MiniLM-L6-v2", "384", "28", "1", "0", "2"]
    assert "row 7" in out.stdout and "[load, 1 attempt]" in out.stdout
    data = json.loads(cli("--json", "--index", "s").stdout)
    assert data["indexes"][0]["failed"] == 2
    assert cli("--quiet").returncode == 0 and cli("--quiet").stdout == ""
    bad = cli("--index", "nope")
    assert bad.returncode == 1 and bad.stderr.strip() == "pgmaxsim: index 'nope' does not exist"
    assert iid


def test_stop_finishes_the_current_batch_then_exits(dsn: str, conn: psycopg.Connection[Any]) -> None:
    import threading

    from pgmaxsim.worker import run_worker

    make_text_table(conn, "st", 50)
    iid = create_index(conn, "st", "st")
    stop = threading.Event()
    seen: list[int] = []

    def on_batch(r: Any) -> None:
        seen.append(r.done)
        stop.set()  # what SIGTERM does: the batch in hand is already committed, no new one starts

    stats = run_worker(dsn, batch_size=10, stop_event=stop, on_batch=on_batch, install_signals=False)
    assert seen == [10] and stats.done == 10
    assert len(tok_rows(conn, iid)) == 10 and queued(conn, iid) == 40
    assert conn.execute("SELECT state FROM maxsim.workers WHERE worker_id = %s",
                        (stats.worker_id,)).fetchone() == ("stopped",)


def test_progress_bar_shows_rate_and_eta() -> None:
    import io

    from pgmaxsim.worker.progress import Progress

    out = io.StringIO()
    p = Progress(True, stream=out)
    p.set_pending(200)
    p.advance(50, index="docs")
    p.close()
    text = out.getvalue()
    assert "50/200" in text and "row/s" in text and "<" in text  # done/total, rate, elapsed<ETA
    silent = Progress(False)
    silent.set_pending(5)
    silent.advance(5)
    silent.close()


def test_worker_on_the_embedded_default_server(embedded_dsn: str) -> None:
    with psycopg.connect(embedded_dsn, autocommit=True) as c:
        make_text_table(c, "emb", 12)
        iid = create_index(c, "emb", "emb")
        stats = run_once(embedded_dsn)
        assert stats.done == 12 and len(tok_rows(c, iid)) == 12 and queued(c, iid) == 0
        c.execute("DELETE FROM emb WHERE id = 1")
        assert len(tok_rows(c, iid)) == 11


def test_a_batch_never_runs_on_a_stale_view_of_its_index(dsn: str, conn: psycopg.Connection[Any]) -> None:
    from pgmaxsim.worker.batch import StaleSpec

    make_text_table(conn, "sv", 3)
    iid = create_index(conn, "sv", "sv")
    spec = _spec(conn, "sv")
    conn.execute("UPDATE maxsim.indexes SET model_revision = 'v2' WHERE id = %s", (iid,))  # e.g. a switch-over
    with pytest.raises(StaleSpec):
        process_batch(conn, spec, EncoderCache(), BatchSettings())
    assert queued(conn, iid) == 3 and tok_rows(conn, iid) == {}
    # with the registry back as the worker reads it, the rows are embedded
    conn.execute("UPDATE maxsim.indexes SET model_revision = NULL WHERE id = %s", (iid,))
    assert run_once(dsn).done == 3


def test_a_running_worker_survives_the_drop_of_an_index_it_serves(dsn: str, conn: psycopg.Connection[Any]) -> None:
    import threading
    import time

    from pgmaxsim.worker import run_worker

    make_text_table(conn, "da", 3)
    make_text_table(conn, "db", 3)
    ia = create_index(conn, "da", "da")
    ib = create_index(conn, "db", "db")
    stop = threading.Event()
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(stats=run_worker(
        dsn, indexes=["da", "db"], stop_event=stop, poll_interval=0.05, install_signals=False)))
    t.start()
    try:
        deadline = time.monotonic() + 60
        # both served once (then the count below does not depend on which index the worker took first)
        while (queued(conn, ia) or queued(conn, ib)) and time.monotonic() < deadline:
            time.sleep(0.05)
        conn.execute("SELECT maxsim.drop_index('db')")
        conn.execute("INSERT INTO da (id, body) VALUES (10, 'after the drop')")
        while "10" not in tok_rows(conn, ia) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "10" in tok_rows(conn, ia)
    finally:
        stop.set()
        t.join(timeout=60)
    assert out["stats"].done == 7
