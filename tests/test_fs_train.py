"""Training the codebook first stage outside the write path (sql/idempotent/038_fs_train.sql,
pgmaxsim.codebook.train, maxsim.train_first_stage, the worker's trainer), by the roles that manage
the index: a write past the threshold only marks the index due; the worker, the CLI or the SQL entry
point train it; searches across a retrain always answer from one complete codebook."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from concurrently import search_during
from pgmaxsim import Index, codebook
from pgmaxsim.db.adapters import Tokens, register_tokens
from pgmaxsim.registry import get_index
from pgmaxsim.worker import report
from pgmaxsim.worker.loop import run_worker
from psycopg.conninfo import make_conninfo
from test_firststage_pg import DIM, check_exact, corpus, create, queries_of, search_ids

SMALL = '{"first_stage": "codebook", "train_tokens": 1000, "tokens_per_code": 4}'


def status(c: psycopg.Connection[Any], name: str) -> tuple[Any, ...]:
    """(generation, trained_rows, due, training) of the index's first stage."""
    g, rows, due, training = c.execute("SELECT generation, trained_rows, due_since, training"
                                       " FROM maxsim.first_stage_status(%s)", (name,)).fetchone()
    return g, rows, due is not None, training


@pytest.fixture
def owner(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    conn.autocommit = True
    register_tokens(conn)
    return conn


@pytest.fixture
def app(owner: psycopg.Connection[Any], dsn: str) -> Iterator[dict[str, str]]:
    """Two granted roles: `app` owns a source table and its index, `other` does not."""
    tag = uuid.uuid4().hex[:8]
    roles = {"app": f"fsapp_{tag}", "other": f"fsother_{tag}"}
    for r in roles.values():
        owner.execute(f'CREATE ROLE "{r}" LOGIN')
        owner.execute("SELECT maxsim.grant_usage(%s)", (r,))
    owner.execute(f'GRANT CREATE ON SCHEMA public TO "{roles["app"]}"')
    dsns = {k: make_conninfo(dsn, user=r) for k, r in roles.items()}
    try:
        yield dsns
    finally:
        for r in roles.values():
            owner.execute(f'DROP OWNED BY "{r}" CASCADE')
        owner.execute(f'REVOKE CREATE ON SCHEMA public FROM "{roles["app"]}"')
        for r in roles.values():
            owner.execute(f'DROP ROLE "{r}"')


def as_role(dsn: str) -> psycopg.Connection[Any]:
    c = psycopg.connect(dsn, autocommit=True)
    register_tokens(c)
    return c


def test_a_write_past_the_threshold_only_marks_the_index_due(owner: psycopg.Connection[Any]) -> None:
    idx = create(owner, opts=SMALL)
    docs = corpus(300, seed=8)
    keys = list(docs)
    idx.upsert(keys[:50], [docs[k] for k in keys[:50]])   # ~350 tokens: below train_tokens
    assert status(owner, "fs") == (None, None, False, False)
    idx.upsert(keys[50:299], [docs[k] for k in keys[50:299]])   # past it: due, not trained
    assert status(owner, "fs") == (None, None, True, False)
    owner.execute("SELECT maxsim.upsert('fs', %s::bigint, %s)", (keys[299], Tokens(docs[keys[299]])))
    spec = get_index(owner, "fs")
    assert codebook.gen_of(spec) is None and spec.options["fs_due"]
    assert owner.execute(f"SELECT count(*) FROM maxsim.fs_coarse_{spec.id}").fetchone()[0] == 0
    # meanwhile every row is searchable: exact search
    q = queries_of(docs)[0]
    assert len(search_ids(owner, "fs", q, 299)) == 299
    # the entry point trains it; the flag goes
    done = owner.execute("SELECT maxsim.train_first_stage('fs')").fetchone()[0]
    assert (done["generation"], done["rows"]) == (0, 300) and done["n_fine"] >= 2
    assert status(owner, "fs") == (0, 300, False, False)
    check_exact(owner, "fs", docs, queries_of(docs, seed=2))


def test_the_sql_writer_marks_it_too(owner: psycopg.Connection[Any]) -> None:
    create(owner, opts=SMALL)
    docs = corpus(200, seed=4)
    for k, v in docs.items():
        owner.execute("SELECT maxsim.upsert('fs', %s::bigint, %s)", (k, Tokens(v)))
    assert status(owner, "fs") == (None, None, True, False)


def test_growth_marks_it_due_again(owner: psycopg.Connection[Any]) -> None:
    idx = create(owner, opts='{"first_stage": "codebook", "train_tokens": 500, "tokens_per_code": 4}')
    docs = corpus(900, seed=9)
    keys = list(docs)
    idx.upsert(keys[:100], [docs[k] for k in keys[:100]])
    codebook.train(owner, "fs")
    assert status(owner, "fs") == (0, 100, False, False)
    idx.upsert(keys[100:750], [docs[k] for k in keys[100:750]])   # 7.5x the rows it was trained on
    idx.upsert(keys[750:800], [docs[k] for k in keys[750:800]])
    assert status(owner, "fs") == (0, 100, True, False)
    assert codebook.train(owner, "fs").gen == 1
    assert status(owner, "fs") == (1, 800, False, False)
    # a small index is retrained once it has grown by 10 % (maxsim._fs_growth)
    idx.upsert(keys[800:879], [docs[k] for k in keys[800:879]])
    assert status(owner, "fs") == (1, 800, False, False)
    idx.upsert(keys[879:880], [docs[k] for k in keys[879:880]])
    assert status(owner, "fs") == (1, 800, True, False)
    idx.upsert(keys[880:], [docs[k] for k in keys[880:]])
    check_exact(owner, "fs", docs, queries_of(docs, seed=7))


def test_rows_an_analyze_counts_before_they_are_reported_are_counted_once(owner: psycopg.Connection[Any], dsn: str) -> None:
    """An ANALYZE that counts rows another session committed but has not reported to the statistics
    yet sets PostgreSQL's live-row count with them, and the report adds them again: the schedule
    (maxsim._fs_rows_now) does not take that count, before or after a training."""
    create(owner, opts='{"first_stage": "codebook", "train_tokens": 100000000, "tokens_per_code": 4}')
    spec = get_index(owner, "fs")
    tok = f"maxsim.{spec.token_table}"

    def write_unreported(first: int, n: int) -> None:
        """Rows first..first+n-1 by another session that reports them only after the ANALYZE."""
        with psycopg.connect(dsn, autocommit=True) as w:
            # one query (the server reports a session's counts only between queries) that commits
            # the rows, then waits for the ANALYZE (the lock this session holds meanwhile)
            owner.execute("SELECT pg_catalog.pg_advisory_lock(7311)")
            job = threading.Thread(target=w.execute, args=(
                "BEGIN;"
                f" SELECT count(maxsim.upsert('fs', g::bigint, ARRAY(SELECT pg_catalog.array_fill((g * 7 + j % 5)::real, ARRAY[{DIM}])::halfvec"
                "                                                    FROM generate_series(1, 3) j)))"
                f"   FROM generate_series({first}, {first + n - 1}) g;"
                " COMMIT; SELECT pg_catalog.pg_advisory_lock(7311); SELECT pg_catalog.pg_advisory_unlock(7311);"
                " SELECT pg_catalog.pg_stat_force_next_flush();",))
            job.start()
            deadline = time.monotonic() + 60
            while owner.execute(f"SELECT count(*) FROM {tok}").fetchone()[0] < first + n - 1:
                assert job.is_alive() and time.monotonic() < deadline, "the rows were not written"
                time.sleep(0.02)
            owner.execute(f"ANALYZE {tok}")
            owner.execute("SELECT pg_catalog.pg_advisory_unlock(7311)")
            job.join()

    def counts() -> tuple[int, float, float, bool]:
        """count(*), maxsim._fs_rows_now, the statistics' live-row count (the former estimate), due."""
        return owner.execute(
            "SELECT (SELECT count(*) FROM " + tok + "), maxsim._fs_rows_now(i.token_table, i.options -> 'fs_count'),"
            " pg_catalog.pg_stat_get_live_tuples(%s::regclass), maxsim._fs_due(i)"
            " FROM maxsim.indexes i WHERE i.name = 'fs'", (tok,)).fetchone()

    write_unreported(1, 100)
    assert counts() == (100, 100, 200, False)
    assert codebook.train(owner, "fs").rows == 100
    # trained on 100 rows: due again at 110; 105 rows counted twice would be 110
    write_unreported(101, 5)
    assert counts() == (105, 105, 110, False)
    assert owner.execute("SELECT maxsim.first_stage_mark('fs')").fetchone()[0] is False
    write_unreported(106, 5)
    assert counts()[:2] == (110, 110) and counts()[3] is True
    # TRUNCATE gives the table another file: the training's count no longer applies
    owner.execute("SELECT pg_catalog.pg_stat_force_next_flush(); TRUNCATE src_fs")
    assert counts()[:2] == (0, 0)



def test_a_granted_role_trains_and_retrains_and_others_are_refused(
        owner: psycopg.Connection[Any], app: dict[str, str]) -> None:
    docs = corpus(240, seed=12)
    keys = list(docs)
    with as_role(app["app"]) as c:
        c.execute("CREATE TABLE src_g (id bigint PRIMARY KEY)")
        c.execute("INSERT INTO src_g SELECT generate_series(1, 300)")
        c.execute("GRANT SELECT ON src_g TO PUBLIC")
        c.execute("SELECT maxsim.create_index('g', 'src_g', 'id', dim => %s, options => %s::jsonb)", (DIM, SMALL))
        idx = Index(c, "g")
        idx.upsert(keys[:200], [docs[k] for k in keys[:200]])
        assert status(c, "g") == (None, None, True, False)
        # a worker of a role that does not manage it leaves it alone; the role's own worker trains it
        run_worker(app["other"], once=True, install_signals=False, heartbeat_interval=60)
        assert status(c, "g") == (None, None, True, False)
        assert run_worker(app["app"], once=True, install_signals=False, heartbeat_interval=60).first_stages_trained == ["g"]
        assert status(c, "g") == (0, 200, False, False)
        done = codebook.train(c, "g")   # through the entry points, as the role
        assert (done.gen, done.rows) == (1, 200)
        idx.upsert(keys[200:], [docs[k] for k in keys[200:]])   # coded under the role's codebook
        assert c.execute("SELECT maxsim.train_first_stage('g')").fetchone()[0]["generation"] == 2
        assert codebook.train(c, "g", seed=2).gen == 3
        assert status(c, "g")[:3] == (3, 240, False)
        for k in keys[:3]:
            assert search_ids(c, "g", docs[k][:3], 5)[0] == k
    check_exact(owner, "g", docs, queries_of(docs, seed=13))
    spec = get_index(owner, "g")
    assert owner.execute(f"SELECT count(*) FROM maxsim.{spec.token_table} WHERE codes_0 IS NOT NULL").fetchone()[0] == 0
    # a role that does not manage it: one clear line at every step
    with as_role(app["other"]) as o:
        for stmt in ("SELECT maxsim.train_first_stage('g')",
                     "SELECT * FROM maxsim.first_stage_train_begin('g')",
                     "SELECT maxsim.first_stage_train_switch('g', 3)",
                     "SELECT maxsim.first_stage_train_end('g', 3)",
                     "SELECT maxsim.first_stage_mark('g')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
                o.execute(stmt)
            msg = e.value.diag.message_primary or ""
            assert 'permission denied for index "g"' in msg and "\n" not in msg
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="is internal"):
            o.execute("SELECT * FROM maxsim._fs_begin(%s, true)", (spec.id,))
        with pytest.raises(Exception, match='permission denied for index "g"'):
            codebook.train(o, "g")
        assert o.execute("SELECT count(*) FROM maxsim.first_stage_due()").fetchone()[0] == 0
    assert status(owner, "g")[0] == 3


def test_one_training_at_a_time(owner: psycopg.Connection[Any], dsn: str) -> None:
    idx = create(owner, opts=SMALL)
    docs = corpus(200, seed=14)
    idx.upsert(list(docs), list(docs.values()))
    gen = owner.execute("SELECT gen FROM maxsim.first_stage_train_begin('fs')").fetchone()[0]
    assert gen == 0 and status(owner, "fs")[3] is True
    with as_role(dsn) as other:
        assert other.execute("SELECT gen FROM maxsim.first_stage_train_begin('fs')").fetchone()[0] is None
        with pytest.raises(psycopg.errors.LockNotAvailable, match="being trained by another session"):
            other.execute("SELECT maxsim.train_first_stage('fs')")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="has no codebook yet"):
            other.execute("SELECT maxsim.first_stage_train_switch('fs', 0)")
    # an abandoned training leaves the index as it was; the lock goes with the end (or the session)
    assert owner.execute("SELECT maxsim.first_stage_train_end('fs', 0)").fetchone()[0] is False
    assert status(owner, "fs") == (None, None, True, False)
    assert codebook.train(owner, "fs").gen == 0


def test_retrain_under_concurrent_searches_and_writes(owner: psycopg.Connection[Any], dsn: str) -> None:
    """Searches across several switches always answer from one complete codebook (each query is 3
    tokens of one row, so that row is first whenever the first stage is whole); a writer goes on."""
    idx = create(owner, opts='{"first_stage": "codebook", "train_tokens": 100000000, "tokens_per_code": 4, "nprobe": 3}')
    docs = corpus(200, seed=3)
    idx.upsert(list(docs), list(docs.values()))
    codebook.train(owner, "fs")
    probes = [(k, docs[k][:3]) for k in list(docs)[:8]]
    extra = corpus(60, seed=21, start=201)

    def writer(c: psycopg.Connection[Any]) -> None:
        w = Index(c, "fs")
        for k, v in extra.items():
            w.upsert([k], [v])

    with search_during(dsn, probes, lambda c, q: search_ids(c, "fs", q, 10), also=[writer]) as run:
        assert codebook.train(owner, "fs", seed=1).gen == 1
        assert owner.execute("SELECT maxsim.train_first_stage('fs')").fetchone()[0]["generation"] == 2
        assert codebook.train(owner, "fs", seed=3).gen == 3
    assert not run.errors
    assert run.seen and all(got and got[0] == k for k, got in run.seen)
    docs |= extra
    # rows written during a training have codes under the live codebook, or none (still candidates)
    spec = get_index(owner, "fs")
    book = codebook.live(owner, spec)
    assert book is not None and book.gen == 3
    rows = dict(owner.execute(f"SELECT id, codes_1 FROM maxsim.{spec.token_table}").fetchall())
    assert set(rows) == set(docs)
    assert all(rows[k] is None or rows[k] == codebook.row_codes(book, docs[k]) for k in docs)


def test_the_worker_trains_due_indexes_in_the_background(owner: psycopg.Connection[Any], dsn: str) -> None:
    idx = create(owner, opts=SMALL)   # no model: written by the application, trained by the worker
    docs = corpus(300, seed=15)
    idx.upsert(list(docs), list(docs.values()))
    assert status(owner, "fs") == (None, None, True, False)
    st = report.status(owner, "fs")
    assert st.indexes[0].first_stage_due
    assert "the first stage of fs is due for training and no worker is running" in report.render(st)
    run_worker(dsn, once=True, install_signals=False, heartbeat_interval=60)
    assert status(owner, "fs") == (0, 300, False, False)
    assert not report.status(owner, "fs").indexes[0].first_stage_due
    check_exact(owner, "fs", docs, queries_of(docs, seed=16))


def test_entry_points_refuse_other_first_stages_with_one_line(owner: psycopg.Connection[Any]) -> None:
    create(owner, opts='{"first_stage": "centroids"}')
    with pytest.raises(psycopg.errors.WrongObjectType) as e:
        owner.execute("SELECT maxsim.train_first_stage('fs')")
    assert e.value.diag.message_primary == "pgmaxsim: index \"fs\" has first stage 'centroids'; only a 'codebook' first stage is trained"
    assert owner.execute("SELECT maxsim.first_stage_mark('fs')").fetchone()[0] is False


def test_without_plpython_a_client_trains_and_the_sql_entry_point_says_so(embedded_dsn: str) -> None:
    with as_role(embedded_dsn) as c:
        idx = create(c, opts=SMALL)
        docs = corpus(200, seed=5)
        idx.upsert(list(docs), list(docs.values()))
        assert status(c, "fs") == (None, None, True, False)
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            c.execute("SELECT maxsim.train_first_stage('fs')")
        assert "needs plpython3u" in (e.value.diag.message_primary or "")
        assert codebook.train(c, "fs").gen == 0
        assert status(c, "fs") == (0, 200, False, False)
        check_exact(c, "fs", docs, queries_of(docs, seed=6))


def test_the_cli_retrains_as_the_role_that_manages_the_index(
        owner: psycopg.Connection[Any], app: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    from pgmaxsim.cli import main

    docs = corpus(150, seed=17)
    with as_role(app["app"]) as c:
        c.execute("CREATE TABLE src_c (id bigint PRIMARY KEY)")
        c.execute("INSERT INTO src_c SELECT generate_series(1, 150)")
        c.execute("GRANT SELECT ON src_c TO PUBLIC")
        c.execute("SELECT maxsim.create_index('c', 'src_c', 'id', dim => %s, options => %s::jsonb)", (DIM, SMALL))
        Index(c, "c").upsert(list(docs), list(docs.values()))
    capsys.readouterr()
    assert main(["--dsn", app["app"], "index", "reindex", "c", "--first-stage"]) == 0
    out, _ = capsys.readouterr()
    assert "index c: first stage codebook" in out and "(generation 0)" in out
    code = main(["--dsn", app["other"], "index", "reindex", "c", "--first-stage"])
    _, err = capsys.readouterr()
    assert code != 0 and "permission denied" in err and len(err.strip().splitlines()) == 1
    assert status(owner, "c") == (0, 150, False, False)


def test_stopping_the_trainer_mid_training_leaves_a_whole_first_stage(owner: psycopg.Connection[Any], dsn: str) -> None:
    """The worker's trainer cancelled while it trains (as a worker's stop does): no lock left behind,
    and the index either switched or is still due with no codebook; the next training goes through."""
    import time

    from pgmaxsim.worker.train import Trainer

    idx = create(owner, opts=SMALL)
    docs = corpus(900, seed=18)
    idx.upsert(list(docs), list(docs.values()))
    trainer = Trainer(dsn, None)
    trainer.poke(force=True)
    deadline = time.monotonic() + 30
    while not status(owner, "fs")[3] and trainer.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    trainer.stop()
    # a cancel that lands on the training's own end step leaves its session lock to the connection's
    # close: the server ends that backend a moment later
    deadline = time.monotonic() + 30
    while status(owner, "fs")[3] and time.monotonic() < deadline:
        time.sleep(0.05)
    gen, rows, due, training = status(owner, "fs")
    assert not training and (gen, rows, due) in ((None, None, True), (0, 900, False))
    assert codebook.train(owner, "fs").gen == (0 if gen is None else 1)
    check_exact(owner, "fs", docs, queries_of(docs, seed=19))
