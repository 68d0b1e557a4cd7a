"""The privilege model against a real server with real roles: grants, row-level security, the
attacks of the security review (registry rewrite, overload plants, cross-tenant deletes,
calling the privileged layer directly), settings only admins may change, query limits."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest
from pgmaxsim.db import migrate
from pgmaxsim.db.adapters import Tokens, register_tokens
from pgmaxsim.kernels.reference import maxsim_reference
from psycopg.conninfo import make_conninfo

DIM = 8
ROWS = 40


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def as_role(dsn: str, role: str) -> psycopg.Connection[Any]:
    c = psycopg.connect(make_conninfo(dsn, user=role), autocommit=True)
    register_tokens(c)
    return c


@pytest.fixture
def roles(conn: psycopg.Connection[Any]) -> Iterator[dict[str, str]]:
    """Fresh login roles (cluster-wide, so uniquely named), dropped afterwards."""
    tag = uuid.uuid4().hex[:8]
    names = {k: f"{k}_{tag}" for k in ("app", "tenant_a", "tenant_b", "outsider", "admin")}
    for name in names.values():
        conn.execute(f'CREATE ROLE "{name}" LOGIN')
    conn.execute(f'GRANT CREATE ON SCHEMA public TO "{names["tenant_a"]}", "{names["tenant_b"]}", "{names["app"]}"')
    try:
        yield names
    finally:
        db = conn.info.dbname
        for name in names.values():
            conn.execute(f'DROP OWNED BY "{name}" CASCADE')
        conn.execute(f'REVOKE CREATE ON SCHEMA public FROM "{names["tenant_a"]}", "{names["tenant_b"]}", "{names["app"]}"')
        for name in names.values():
            # other databases of the cluster never saw these roles; only this one holds grants
            conn.execute(f'DROP ROLE IF EXISTS "{name}"')
        assert db


def rolsuper(conn: psycopg.Connection[Any], role: str) -> bool:
    return bool(conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,)).fetchone()[0])


def refused(conn: psycopg.Connection[Any], sql: str, params: Any = None, needle: str = "permission denied") -> str:
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    msg = str(info.value).splitlines()[0]
    assert needle in msg, msg
    return msg


@pytest.fixture
def docs(conn: psycopg.Connection[Any], roles: dict[str, str]) -> dict[str, Any]:
    """docs(id, tenant) owned by the superuser with an RLS policy showing `app` only even ids,
    an index over it with random tokens, `app` granted SELECT and pgmaxsim usage."""
    register_tokens(conn)
    app = roles["app"]
    conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
    conn.execute("INSERT INTO docs SELECT g, 'row ' || g FROM generate_series(1, %s) g", (ROWS,))
    conn.execute("ALTER TABLE docs ENABLE ROW LEVEL SECURITY")
    conn.execute(f'CREATE POLICY even ON docs FOR SELECT TO "{app}" USING (id % 2 = 0)')
    conn.execute(f'GRANT SELECT ON docs TO "{app}"')
    conn.execute("SELECT maxsim.create_index('docs', 'docs', 'id', dim => %s)", (DIM,))
    rng = np.random.default_rng(7)
    tokens = {i: unit(rng.standard_normal((6, DIM))) for i in range(1, ROWS + 1)}
    for i, t in tokens.items():
        conn.execute("SELECT maxsim.upsert('docs', %s::bigint, %s)", (i, Tokens(t)))
    conn.execute("SELECT maxsim.grant_usage(%s)", (app,))
    return {"tokens": tokens, "query": unit(rng.standard_normal((4, DIM)))}


def ranked(tokens: dict[int, np.ndarray], q: np.ndarray, ids: set[int]) -> list[int]:
    scores = {i: maxsim_reference(q, tokens[i]) for i in ids}
    return sorted(scores, key=lambda i: (-scores[i], str(i)))


def test_search_and_rerank_return_only_rows_the_caller_can_see(
        dsn: str, conn: psycopg.Connection[Any], roles: dict[str, str], docs: dict[str, Any]) -> None:
    q, tokens = docs["query"], docs["tokens"]
    even = {i for i in tokens if i % 2 == 0}
    with as_role(dsn, roles["app"]) as app:
        exact = [int(r[0]) for r in app.execute("SELECT id FROM maxsim.search('docs', %s, 6, %s)",
                                                 (Tokens(q), ROWS)).fetchall()]
        assert exact == ranked(tokens, q, even)[:6]
        # the default prefilter (few candidates) still fills k with visible rows only
        default = [int(r[0]) for r in app.execute("SELECT id FROM maxsim.search('docs', %s, 6, 4)",
                                                   (Tokens(q),)).fetchall()]
        assert len(default) == 6 and set(default) <= even
        got = {r[0] for r in app.execute("SELECT id FROM maxsim.rerank('docs', %s, ARRAY[1, 2, 3, 4, 5, 7]::bigint[])",
                                         (Tokens(q),)).fetchall()}
        assert got == {2, 4}
        # row counts would tell about hidden rows: not shown under RLS
        info = app.execute("SELECT rows, tokens, pending FROM maxsim.index_info('docs')").fetchone()
        assert info == (None, None, None)
        assert app.execute("SELECT maxsim.tokens('docs', 3::bigint)").fetchone()[0] is None
        assert len(app.execute("SELECT maxsim.tokens('docs', 4::bigint)").fetchone()[0]) == 6
    # the superuser sees every row
    every = [int(r[0]) for r in conn.execute("SELECT id FROM maxsim.search('docs', %s, 6, %s)",
                                             (Tokens(q), ROWS)).fetchall()]
    assert every == ranked(tokens, q, set(tokens))[:6]
    assert conn.execute("SELECT rows FROM maxsim.index_info('docs')").fetchone()[0] == ROWS


@pytest.mark.parametrize("analyzed", [False, True], ids=["no-row-estimate", "row-estimate"])
def test_search_fills_k_when_few_rows_are_visible(dsn: str, conn: psycopg.Connection[Any], roles: dict[str, str],
                                                  analyzed: bool) -> None:
    """A policy showing 1 row in 25 of 400: the first prefilter round finds about one visible row.
    Without a row estimate (the token table never analyzed) the prefilter is widened in proportion
    to the share it saw; with one, the caller's 16 rows are few and are all taken at once."""
    from pgmaxsim import Index

    register_tokens(conn)
    app = roles["app"]
    conn.execute("CREATE TABLE sparse (id bigint PRIMARY KEY)")
    conn.execute("INSERT INTO sparse SELECT generate_series(1, 400)")
    conn.execute("ALTER TABLE sparse ENABLE ROW LEVEL SECURITY")
    conn.execute(f'CREATE POLICY few ON sparse FOR SELECT TO "{app}" USING (id % 25 = 0)')
    conn.execute(f'GRANT SELECT ON sparse TO "{app}"')
    rng = np.random.default_rng(11)
    Index.create(conn, "sparse", "sparse", "id", dim=DIM, pooling="centroids").upsert(
        list(range(1, 401)), [unit(rng.standard_normal((6, DIM))) for _ in range(400)])
    table = conn.execute("SELECT token_table FROM maxsim.indexes WHERE name = 'sparse'").fetchone()[0]
    if analyzed:
        conn.execute(f'ANALYZE maxsim."{table}"')
    conn.execute("SELECT maxsim.grant_usage(%s)", (app,))
    with as_role(dsn, app) as c:
        notices: list[str] = []
        c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        c.execute("SET pgmaxsim.timing = on")
        got = [int(r[0]) for r in c.execute("SELECT id FROM maxsim.search('sparse', %s, 6, 4)",
                                             (Tokens(unit(rng.standard_normal((4, DIM)))),)).fetchall()]
    assert len(got) == 6 and all(i % 25 == 0 for i in got), got
    prefilter = next(n for n in notices if "row-level security" in n)
    if analyzed:
        assert "candidates 16 " in prefilter and "prefilter rounds 1)" in prefilter, prefilter
    else:
        assert "prefilter rounds 1)" not in prefilter, prefilter


def test_a_role_without_select_on_the_source_gets_a_permission_error(
        dsn: str, conn: psycopg.Connection[Any], roles: dict[str, str], docs: dict[str, Any]) -> None:
    conn.execute("SELECT maxsim.grant_usage(%s)", (roles["outsider"],))
    with as_role(dsn, roles["outsider"]) as out:
        for sql in ("SELECT * FROM maxsim.search('docs', %s, 3)",
                    "SELECT * FROM maxsim.rerank('docs', %s, ARRAY[2]::bigint[])"):
            refused(out, sql, (Tokens(docs["query"]),), 'permission denied for index "docs"')
        assert out.execute("SELECT rows FROM maxsim.index_info('docs')").fetchone()[0] is None
    with as_role(dsn, roles["tenant_a"]) as nobody:  # never granted pgmaxsim at all
        refused(nobody, "SELECT * FROM maxsim.search('docs', %s, 3)", (Tokens(docs["query"]),),
                "permission denied for schema maxsim")


def test_no_role_but_the_owner_creates_in_maxsim_or_touches_its_tables(
        dsn: str, conn: psycopg.Connection[Any], roles: dict[str, str], docs: dict[str, Any]) -> None:
    app = roles["app"]
    with as_role(dsn, app) as c:
        # the registry rewrite of the review: token_table pointing at the attacker's function
        refused(c, "UPDATE maxsim.indexes SET token_table = 'tok_1 t, mal.pwn() x --'")
        refused(c, "DELETE FROM maxsim.indexes")
        refused(c, "SELECT * FROM maxsim.queue")
        refused(c, "SELECT nextval('maxsim.version_seq')")
        # overload plants: neither wins anything, the schema does not take them
        refused(c, "CREATE FUNCTION maxsim._check_query(r maxsim.indexes, q halfvec[], k text) RETURNS void"
                   " LANGUAGE sql AS 'SELECT NULL'")
        refused(c, "CREATE FUNCTION maxsim.create_index(a text, b text) RETURNS integer LANGUAGE sql AS 'SELECT 1'")
    # the victim's index still works and nobody became superuser
    assert conn.execute("SELECT count(*) FROM maxsim.search('docs', %s, 5)", (Tokens(docs["query"]),)).fetchone()[0] == 5
    assert not rolsuper(conn, app)


def test_migrate_refuses_objects_planted_in_maxsim_and_takes_create_back(
        dsn: str, conn: psycopg.Connection[Any], roles: dict[str, str]) -> None:
    app = roles["app"]
    # an installation where a DBA once granted CREATE (the old advice) and a role used it
    conn.execute(f'GRANT CREATE ON SCHEMA maxsim TO "{app}"')
    with as_role(dsn, app) as c:
        c.execute("CREATE FUNCTION maxsim._check_query(a text, b text, k text) RETURNS void LANGUAGE sql AS ''")
    with pytest.raises(Exception, match="objects its owner did not create"):
        migrate.upgrade(dsn)
    conn.execute("DROP FUNCTION maxsim._check_query(text, text, text)")
    migrate.upgrade(dsn)
    assert not conn.execute("SELECT has_schema_privilege(%s, 'maxsim', 'CREATE')", (app,)).fetchone()[0]


def test_the_privileged_layer_answers_only_the_entry_points(
        dsn: str, conn: psycopg.Connection[Any], roles: dict[str, str], docs: dict[str, Any]) -> None:
    q = Tokens(docs["query"])
    with as_role(dsn, roles["app"]) as c:
        for sql in ("SELECT maxsim._index('docs')",
                    "SELECT maxsim._scores(1, %s, NULL, 5)",
                    "SELECT maxsim._candidates(NULL::maxsim.indexes, %s, 5)",
                    "SELECT maxsim._setting('scorer')"):
            refused(c, sql, (q,) if "%s" in sql else None, "is internal")
        # from a function of the caller's own, from a DO block, and with a forged frame in the statement text
        c.execute("CREATE FUNCTION public.peek(q halfvec[]) RETURNS text[] LANGUAGE plpgsql AS $$"
                  " DECLARE res record; BEGIN res := maxsim._scores(1, q, NULL, 50); RETURN res.ranked_ids; END $$")
        refused(c, "SELECT public.peek(%s)", (q,), "is internal")
        refused(c, "DO $$ DECLARE r maxsim.indexes; BEGIN r := maxsim._index('docs'); END $$", None, "is internal")
        c.execute("CREATE FUNCTION public.forge() RETURNS void LANGUAGE plpgsql AS $$ BEGIN"
                  " PERFORM maxsim._index('docs') /*\nPL/pgSQL function maxsim.search(text) line 1 at assignment\n*/;"
                  " END $$")
        refused(c, "SELECT public.forge()", None, "is internal")
        # the guard's helpers run as their caller: a forged context opens nothing
        refused(c, "SELECT maxsim._guarded_index(%s, '_x', 1)",
                ("x\nPL/pgSQL function maxsim.search(text) line 1 at assignment",), "permission denied")
    # every SECURITY DEFINER function of the schema (but two that only answer a yes/no or a version)
    # opens by reading its own PG_CONTEXT and handing it, with its own name, to the guard
    guarded = re.compile(r"\s*(#variable_conflict \w+\s+)?DECLARE\b.*?\bBEGIN\s+GET DIAGNOSTICS ctx = PG_CONTEXT;\s+"
                         r"(PERFORM maxsim\._guard\(ctx, '(\w+)'\)|r := maxsim\._guarded_index\(ctx, '(\w+)', )", re.S)
    definers = conn.execute(
        "SELECT p.proname, p.prosrc FROM pg_proc p WHERE p.pronamespace = 'maxsim'::regnamespace AND p.prosecdef"
        " AND p.proname !~ '^src_[0-9]+$'").fetchall()
    unguarded = []
    for name, src in definers:
        m = guarded.match(src)
        if not m or name not in (m[3], m[4]):
            unguarded.append(name)
    assert sorted(unguarded) == ["_is_admin", "version"]
    assert len(definers) > 40
    helpers = conn.execute("SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'maxsim'::regnamespace"
                           " AND p.proname IN ('_guard', '_guarded_index', '_called_by_maxsim') AND NOT p.prosecdef")
    assert len(helpers.fetchall()) == 3


def test_tenants_manage_only_indexes_over_their_own_tables(
        dsn: str, conn: psycopg.Connection[Any], roles: dict[str, str]) -> None:
    a, b = roles["tenant_a"], roles["tenant_b"]
    for role in (a, b):
        conn.execute("SELECT maxsim.grant_usage(%s)", (role,))
    q = Tokens(unit(np.random.default_rng(1).standard_normal((3, DIM))))
    with as_role(dsn, a) as ca, as_role(dsn, b) as cb:
        ca.execute("CREATE TABLE a_docs (id bigint PRIMARY KEY, body text)")
        ca.execute("INSERT INTO a_docs VALUES (1, 'x'), (2, 'y')")
        ca.execute("SELECT maxsim.create_index('a_idx', 'a_docs', 'id', dim => %s)", (DIM,))
        ca.execute("SELECT maxsim.upsert('a_idx', 1::bigint, %s)", (q,))
        refused(cb, "SELECT maxsim.create_index('b_on_a', 'a_docs', 'id', dim => 8)", None, "only the owner of")
        refused(cb, "SELECT maxsim.drop_index('a_idx')", None, "only the owner of")
        refused(cb, "SELECT maxsim.upsert('a_idx', 2::bigint, %s)", (q,), "only the owner of")
        refused(cb, "SELECT maxsim.delete('a_idx', ARRAY[1]::bigint[])", None, "only the owner of")
        refused(cb, "DELETE FROM maxsim.indexes")
        refused(cb, "SELECT * FROM maxsim.search('a_idx', %s, 2)", (q,), 'permission denied for index "a_idx"')
        # the victim's writes and searches still work
        ca.execute("INSERT INTO a_docs VALUES (3, 'z')")
        assert [r[0] for r in ca.execute("SELECT id FROM maxsim.search('a_idx', %s, 5)", (q,)).fetchall()] == ["1"]
        ca.execute("SELECT maxsim.drop_index('a_idx')")
    assert not rolsuper(conn, a) and not rolsuper(conn, b)


def test_the_readme_flow_runs_as_a_granted_role(dsn: str, conn: psycopg.Connection[Any], roles: dict[str, str]) -> None:
    conn.execute("SELECT maxsim.grant_usage(%s)", (roles["app"],))
    rng = np.random.default_rng(3)
    with as_role(dsn, roles["app"]) as c:
        c.execute("CREATE TABLE mine (id bigint PRIMARY KEY, title text)")
        c.execute("INSERT INTO mine VALUES (1, 'one'), (2, 'two'), (3, 'three')")
        c.execute("SELECT maxsim.create_index('mine', 'mine', 'id', dim => %s)", (DIM,))
        for i in (1, 2, 3):
            c.execute("SELECT maxsim.upsert('mine', %s::bigint, %s)", (i, Tokens(unit(rng.standard_normal((4, DIM))))))
        q = Tokens(unit(rng.standard_normal((2, DIM))))
        rows = c.execute("SELECT d.title, s.score FROM maxsim.search('mine', %s, 2) s"
                         " JOIN mine d ON d.id = s.id::bigint", (q,)).fetchall()
        assert len(rows) == 2
        assert c.execute("SELECT rows FROM maxsim.index_info('mine')").fetchone()[0] == 3
        assert c.execute("SELECT count(*) FROM maxsim.list_indexes() WHERE name = 'mine'").fetchone()[0] == 1
        assert c.execute("SELECT maxsim.delete('mine', ARRAY[3]::bigint[])").fetchone()[0] == 1
        c.execute("SELECT maxsim.drop_index('mine')")
    assert not rolsuper(conn, roles["app"])


def test_only_admins_choose_settings(dsn: str, conn: psycopg.Connection[Any], roles: dict[str, str]) -> None:
    conn.execute("SELECT maxsim.grant_usage(%s)", (roles["app"],))
    conn.execute("SELECT maxsim.grant_usage(%s, admin => true)", (roles["admin"],))
    with as_role(dsn, roles["app"]) as c:
        refused(c, "SELECT maxsim.set_scorer('127.0.0.1:9')", None, "needs a pgmaxsim admin")
        refused(c, "SELECT maxsim.grant_usage(%s, admin => true)", (roles["app"],), "needs a pgmaxsim admin")
        refused(c, "SELECT maxsim.show_settings()", None, "needs a pgmaxsim admin")
    with as_role(dsn, roles["admin"]) as c:
        c.execute("SELECT maxsim.set_scorer('/run/pgmaxsim/scorer.sock')")
        c.execute("SELECT maxsim.set_setting('max_query_tokens', '64')")
        assert c.execute("SELECT maxsim.show_settings()").fetchone()[0] == {
            "scorer": "/run/pgmaxsim/scorer.sock", "max_query_tokens": "64"}
        refused(c, "SELECT maxsim.set_setting('bogus', '1')", None, 'unknown setting "bogus"')
        refused(c, "SELECT maxsim.set_setting('max_query_tokens', 'lots')", None, "must be a positive integer")
    conn.execute("SELECT maxsim.revoke_usage(%s)", (roles["admin"],))
    with as_role(dsn, roles["admin"]) as c:
        refused(c, "SELECT maxsim.set_scorer(NULL)", None, "permission denied")


def test_a_huge_query_is_refused_at_once(conn: psycopg.Connection[Any]) -> None:
    register_tokens(conn)
    conn.execute("CREATE TABLE big (id bigint PRIMARY KEY)")
    conn.execute("INSERT INTO big SELECT generate_series(1, 20)")
    conn.execute("SELECT maxsim.create_index('big', 'big', 'id', dim => %s)", (DIM,))
    rng = np.random.default_rng(5)
    for i in range(1, 21):
        conn.execute("SELECT maxsim.upsert('big', %s::bigint, %s)", (i, Tokens(unit(rng.standard_normal((50, DIM))))))
    q = Tokens(unit(rng.standard_normal((10_000, DIM))))
    refused(conn, "SELECT * FROM maxsim.search('big', %s, 5)", (q,), "more than the limit of 512")
    refused(conn, "SELECT * FROM maxsim.rerank('big', %s, ARRAY[1]::bigint[])", (q,), "more than the limit of 512")


def test_pg_dump_and_restore_keep_indexes_grants_and_search(
        pg_server: Any, dsn: str, conn: psycopg.Connection[Any], roles: dict[str, str], docs: dict[str, Any],
        tmp_path: Any) -> None:
    import subprocess

    from pgserver import PG_BIN

    dump = tmp_path / "db.dump"
    subprocess.run([str(PG_BIN / "pg_dump"), "-Fc", "-f", str(dump), dsn], check=True, capture_output=True)
    target = f"restored_{uuid.uuid4().hex[:8]}"
    conn.execute(f'CREATE DATABASE "{target}"')
    restored = pg_server.dsn(target)
    try:
        out = subprocess.run([str(PG_BIN / "pg_restore"), "-d", restored, str(dump)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        migrate.upgrade(restored)  # a migrate after a restore is a no-op that keeps everything
        q = Tokens(docs["query"])
        even = {i for i in docs["tokens"] if i % 2 == 0}
        with as_role(restored, roles["app"]) as app:
            got = [int(r[0]) for r in app.execute("SELECT id FROM maxsim.search('docs', %s, 5, %s)",
                                                   (q, ROWS)).fetchall()]
            assert got == ranked(docs["tokens"], docs["query"], even)[:5]
            refused(app, "UPDATE maxsim.indexes SET token_table = 'x'")
        with psycopg.connect(restored, autocommit=True) as c:
            register_tokens(c)
            c.execute("INSERT INTO docs VALUES (1000, 'new')")  # the source triggers came back too
            c.execute("SELECT maxsim.upsert('docs', 1000::bigint, %s)", (q,))
            assert c.execute("SELECT rows FROM maxsim.index_info('docs')").fetchone()[0] == ROWS + 1
    finally:
        conn.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')


def test_the_change_log_stays_bounded_while_a_scorer_syncs(conn: psycopg.Connection[Any], dsn: str) -> None:
    from pgmaxsim.scorer.server import Scorer
    from pgmaxsim.scorer.store import CpuBackend

    register_tokens(conn)
    conn.execute("CREATE TABLE churn (id bigint PRIMARY KEY)")
    conn.execute("INSERT INTO churn SELECT generate_series(1, 50)")
    conn.execute("SELECT maxsim.create_index('churn', 'churn', 'id', dim => %s, options => '{\"pooling\": \"mean\"}')",
                  (DIM,))
    scorer = Scorer(dsn, CpuBackend(), poll_interval=0.05)
    scorer.start_sync()
    try:
        assert scorer.wait_synced(30)
        t = Tokens(unit(np.random.default_rng(11).standard_normal((3, DIM))))
        most = 0
        for _ in range(40):   # 20,000 upserts (each a new version and a change-log entry), 500 a statement
            conn.execute("SELECT maxsim.upsert('churn', (1 + g %% 50)::bigint, %s) FROM generate_series(1, 500) g", (t,))
            most = max(most, conn.execute("SELECT count(*) FROM maxsim.changes").fetchone()[0])
        assert conn.execute("SELECT count(*) FROM maxsim.scorers").fetchone()[0] == 1
    finally:
        scorer.stop()
    # untrimmed, the log would reach 20,000; the bound leaves the sync thread (polling every 50 ms
    # beside this one on 2 cores) a few statements of lag: 2,000 was reached once in CI's run
    assert most <= 5000, most


def test_statement_timeout_and_cancel_stop_an_exhaustive_search(conn: psycopg.Connection[Any], dsn: str) -> None:
    import threading

    from pgmaxsim import Index

    register_tokens(conn)
    conn.execute("CREATE TABLE heavy (id bigint PRIMARY KEY)")
    conn.execute("INSERT INTO heavy SELECT generate_series(1, 600)")
    idx = Index.create(conn, "heavy", "heavy", "id", dim=128, pooling="mean")
    rng = np.random.default_rng(9)
    for start in range(0, 600, 100):
        idx.upsert(list(range(start + 1, start + 101)), [unit(rng.standard_normal((300, 128))) for _ in range(100)])
    q = Tokens(unit(rng.standard_normal((512, 128))))
    exhaustive = "SELECT * FROM maxsim.search('heavy', %s, 10, 100000)"
    conn.execute("SET statement_timeout = '100ms'")
    with pytest.raises(psycopg.errors.QueryCanceled):
        conn.execute(exhaustive, (q,))
    conn.execute("RESET statement_timeout")
    # pg_cancel_backend from another session, while the search runs
    with psycopg.connect(dsn, autocommit=True) as other:
        pid = conn.info.backend_pid
        fired = threading.Event()

        def cancel() -> None:
            while not fired.wait(0.05):
                if other.execute("SELECT state = 'active' FROM pg_stat_activity WHERE pid = %s",
                                 (pid,)).fetchone()[0]:
                    other.execute("SELECT pg_cancel_backend(%s)", (pid,))
                    fired.set()

        t = threading.Thread(target=cancel)
        t.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute(exhaustive, (q,))
        finally:
            fired.set()
            t.join()
    assert conn.execute("SELECT 1").fetchone()[0] == 1   # the session goes on


def test_python_index_writes_and_searches_as_a_granted_role(dsn: str, conn: psycopg.Connection[Any],
                                                           roles: dict[str, str]) -> None:
    from pgmaxsim import Index

    conn.execute("SELECT maxsim.grant_usage(%s)", (roles["app"],))
    rng = np.random.default_rng(4)
    docs = {i: unit(rng.standard_normal((5, DIM))) for i in range(1, 9)}
    with as_role(dsn, roles["app"]) as c:
        c.execute("CREATE TABLE pages (id bigint PRIMARY KEY)")
        c.execute("INSERT INTO pages SELECT generate_series(1, 8)")
        for pooling in ("centroids", "mean"):
            idx = Index.create(c, f"pages_{pooling}", "pages", "id", dim=DIM, pooling=pooling)
            idx.upsert(list(docs), list(docs.values()))          # binary COPY through the stage tables
            idx.upsert([3], [docs[3]])                            # a replace, not a second copy
            q = unit(rng.standard_normal((3, DIM)))
            got = [int(i) for i, _ in idx.search(q, k=8, candidates=100)]
            assert got == ranked(docs, q, set(docs))
            assert idx.delete([1, 2]) == 2
            assert c.execute("SELECT rows FROM maxsim.index_info(%s)", (f"pages_{pooling}",)).fetchone()[0] == 6
        # the stage tables are the schema owner's and gone after the write
        assert c.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'maxsim_stage_%'").fetchone()[0] == 0
        # another role's stage names are refused, and so is a table of the caller's own
        c.execute("CREATE TEMP TABLE maxsim_stage_tok_x (LIKE pages)")
        refused(c, "SELECT maxsim.write_commit('pages_mean', ARRAY['maxsim_stage_tok_x', NULL])", None,
                "is not a stage table")
    with as_role(dsn, roles["tenant_b"]) as other:
        conn.execute("SELECT maxsim.grant_usage(%s)", (roles["tenant_b"],))
        refused(other, "SELECT maxsim.write_stage('pages_mean')", None, "only the owner of")
    assert not rolsuper(conn, roles["app"])


def test_the_worker_runs_as_a_granted_role(dsn: str, conn: psycopg.Connection[Any], roles: dict[str, str]) -> None:
    from pgmaxsim.errors import PgmaxsimError
    from worker_util import MINILM, add_text_rows, run_once

    app = roles["app"]
    conn.execute("SELECT maxsim.grant_usage(%s)", (app,))
    app_dsn = make_conninfo(dsn, user=app)
    with as_role(dsn, app) as c:
        c.execute("CREATE TABLE notes (id integer PRIMARY KEY, body text, note text)")
        add_text_rows(c, "notes", range(1, 13))
        c.execute("SELECT maxsim.create_index('notes', 'notes', 'id', text_column => 'body', model => %s)", (MINILM,))
    stats = run_once(app_dsn)
    assert (stats.done, stats.failed) == (12, 0)
    assert conn.execute("SELECT rows, pending FROM maxsim.index_info('notes')").fetchone() == (12, 0)
    with as_role(dsn, app) as c:
        c.execute("UPDATE notes SET body = 'rivers and lakes' WHERE id = 3")
        c.execute("DELETE FROM notes WHERE id = 4")
    stats = run_once(app_dsn)
    assert stats.done == 1
    assert conn.execute("SELECT rows FROM maxsim.index_info('notes')").fetchone()[0] == 11
    assert conn.execute("SELECT count(*) FROM maxsim.workers").fetchone()[0] >= 1   # its heartbeat
    assert conn.execute("SELECT sum(rows_done) FROM maxsim.ingest_log").fetchone()[0] == 13
    # a role that does not manage the index cannot serve it, nor touch its queue
    conn.execute("SELECT maxsim.grant_usage(%s)", (roles["tenant_b"],))
    with pytest.raises(PgmaxsimError, match="may not manage it"):
        run_once(make_conninfo(dsn, user=roles["tenant_b"]), indexes=["notes"])
    with as_role(dsn, roles["tenant_b"]) as other:
        refused(other, "SELECT * FROM maxsim.queue_claim('notes', 10)", None, "only the owner of")
        refused(other, "SELECT maxsim.queue_settle('notes', 'done', ARRAY[1]::bigint[], NULL)", None,
                "only the owner of")
        refused(other, "SELECT * FROM maxsim.queue_totals(ARRAY['notes'])", None, "only the owner of")
    # the idle round's counts, all served indexes in one statement: two rows backed off for a minute
    with as_role(dsn, app) as c:
        from pgmaxsim.registry import get_index
        from pgmaxsim.worker import queue

        add_text_rows(c, "notes", range(20, 22))
        with c.transaction():
            qids, rids = zip(*c.execute("SELECT qid, row_id FROM maxsim.queue_claim('notes', 10)").fetchall())
            c.execute("SELECT maxsim.queue_settle('notes', 'retry', %s, %s, 1, 'encode', 'boom', 60)",
                      (list(qids), list(rids)))
        t = queue.totals(c, [get_index(c, "notes")])
        assert (t.queued, t.retrying) == (2, 2) and t.due_in is not None and 50 < t.due_in <= 60
        assert queue.totals(c, []) == queue.QueueTotals(0, None, 0)
    assert not rolsuper(conn, app)
