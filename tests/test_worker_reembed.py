"""Re-embedding an index under a new model alongside the old one, switching over when complete:
search never comes back empty, the old storage is dropped, changes keep flowing afterwards.
MiniLM (384-d) → a tiny random-init ColQwen2.5 (128-d, loaded through load_encoder) and back."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import psycopg
import pytest
from pgmaxsim.db.adapters import Tokens, register_tokens
from pgmaxsim.errors import PgmaxsimError
from pgmaxsim.worker import cancel_reembed, reembed_status, start_reembed, status
from worker_util import (
    MINILM,
    create_index,
    failed,
    make_text_table,
    queued,
    run_once,
    tok_rows,
)


@pytest.fixture(scope="module")
def tiny_colqwen(tmp_path_factory: pytest.TempPathFactory) -> str:
    import encoders_tiny

    return str(encoders_tiny.build_colqwen2_5(tmp_path_factory.mktemp("tiny") / "colqwen2_5"))


def leftovers(conn: psycopg.Connection[Any], index_id: int) -> list[str]:
    """Objects of an index id that should not exist any more."""
    rels = [r[0] for r in conn.execute(
        "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'maxsim'"
        " AND relname ~ %s", (f"^(tok|cen|src)_{index_id}(_|$)",)).fetchall()]
    funcs = [r[0] for r in conn.execute(
        "SELECT proname FROM pg_proc WHERE proname = %s", (f"src_{index_id}",)).fetchall()]
    trigs = [r[0] for r in conn.execute(
        "SELECT tgname FROM pg_trigger WHERE tgname LIKE %s", (f"maxsim\\_{index_id}\\_%",)).fetchall()]
    return rels + funcs + trigs


class Searcher(threading.Thread):
    """Searches index ``name`` in a loop with a query of the index's current dim."""

    def __init__(self, dsn: str, name: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.name = dsn, name
        self.stop = threading.Event()
        self.results: list[tuple[int, int]] = []  # (dim, rows returned)
        self.errors: list[str] = []

    def run(self) -> None:
        rng = np.random.default_rng(0)
        with psycopg.connect(self.dsn, autocommit=True) as c:
            register_tokens(c)
            while not self.stop.is_set():
                dim = c.execute("SELECT dim FROM maxsim.indexes WHERE name = %s", (self.name,)).fetchone()[0]
                q = rng.standard_normal((4, dim)).astype(np.float32)
                try:
                    rows = c.execute("SELECT * FROM maxsim.search(%s, %s, 5)", (self.name, Tokens(q))).fetchall()
                    self.results.append((dim, len(rows)))
                except psycopg.Error as e:
                    # The model (and dim) changed between reading the dim and searching: a query
                    # encoded for the old model is refused with a clear error, never answered empty.
                    self.errors.append(str(e).splitlines()[0])


def test_reembed_runs_alongside_and_switches_over_without_an_empty_window(
        dsn: str, conn: psycopg.Connection[Any], tiny_colqwen: str) -> None:
    make_text_table(conn, "re", 40)
    iid = create_index(conn, "re", "re")
    run_once(dsn)
    before = tok_rows(conn, iid)
    assert len(before) == 40

    state = start_reembed(conn, "re", tiny_colqwen)
    assert (state.shadow, state.model, state.pending, state.rows) == ("re#reembed", tiny_colqwen, 40, 0)
    shadow_id = state.shadow_id
    with pytest.raises(PgmaxsimError, match="already being re-embedded"):
        start_reembed(conn, "re", MINILM)
    (st,) = [i for i in status(conn).indexes if i.name == "re"]
    assert st.reembed == "re#reembed"
    # Changes during the re-embedding reach both the old index and the shadow.
    conn.execute("UPDATE re SET body = 'rivers and lakes' WHERE id = 1")
    assert queued(conn, iid) == 1 and queued(conn, shadow_id) == 41

    searcher = Searcher(dsn, "re")
    searcher.start()
    try:
        stats = run_once(dsn, batch_size=8)
        for _ in range(300):  # let the searcher run on past the switch
            if sum(1 for d, _ in searcher.results if d == 128) >= 3:
                break
            threading.Event().wait(0.1)
    finally:
        searcher.stop.set()
        searcher.join(timeout=30)
    assert stats.reembeds_finished == ["re"]
    assert searcher.results and all(n == 5 for _, n in searcher.results), searcher.results
    assert {d for d, _ in searcher.results} == {384, 128}  # answered before, during and after the switch
    assert all("dim" in e or "dimensions" in e for e in searcher.errors), searcher.errors

    reg = conn.execute("SELECT id, model, dim, token_table FROM maxsim.indexes WHERE name = 're'").fetchone()
    assert reg == (iid, tiny_colqwen, 128, f"tok_{iid}")
    assert conn.execute("SELECT count(*) FROM maxsim.indexes").fetchone() == (1,)
    assert reembed_status(conn, "re") is None and leftovers(conn, shadow_id) == []
    rows = tok_rows(conn, iid)
    assert set(rows) == set(before) and all(r[2] == tiny_colqwen for r in rows.values())
    assert queued(conn, iid) == 0 and failed(conn, iid) == {}
    # The scorer's change log: the index was emptied, then every row written (under the index's id).
    marker = conn.execute("SELECT max(seq) FROM maxsim.changes WHERE index_id = %s AND row_id IS NULL",
                          (iid,)).fetchone()[0]
    after_marker = conn.execute("SELECT count(DISTINCT row_id) FROM maxsim.changes WHERE index_id = %s"
                                " AND seq > %s AND NOT deleted", (iid, marker)).fetchone()[0]
    assert marker is not None and after_marker == 40

    # Afterwards the index lives on under the new model: inserts, updates and deletes.
    conn.execute("INSERT INTO re (id, body) VALUES (500, 'a new row about galaxies')")
    conn.execute("DELETE FROM re WHERE id = 2")
    run_once(dsn)
    rows = tok_rows(conn, iid)
    assert "500" in rows and "2" not in rows and rows["500"][2] == tiny_colqwen
    last = conn.execute("SELECT index_id, row_id FROM maxsim.changes ORDER BY seq DESC LIMIT 1").fetchone()
    assert last == (iid, "500")
    register_tokens(conn)
    q = np.random.default_rng(1).standard_normal((3, 128)).astype(np.float32)
    assert len(conn.execute("SELECT * FROM maxsim.search('re', %s, 3)", (Tokens(q),)).fetchall()) == 3


def test_cancel_and_drop_remove_the_shadow(dsn: str, conn: psycopg.Connection[Any], tiny_colqwen: str) -> None:
    make_text_table(conn, "rc", 10)
    iid = create_index(conn, "rc", "rc")
    run_once(dsn)
    with pytest.raises(PgmaxsimError, match="already uses model"):
        start_reembed(conn, "rc", MINILM)
    s1 = start_reembed(conn, "rc", tiny_colqwen)
    assert cancel_reembed(conn, "rc") is True and leftovers(conn, s1.shadow_id) == []
    assert cancel_reembed(conn, "rc") is False
    assert len(tok_rows(conn, iid)) == 10 and queued(conn, iid) == 0
    s2 = start_reembed(conn, "rc", tiny_colqwen)
    conn.execute("SELECT maxsim.drop_index('rc')")
    assert conn.execute("SELECT count(*) FROM maxsim.indexes").fetchone() == (0,)
    assert leftovers(conn, s2.shadow_id) == [] and leftovers(conn, iid) == []


def test_a_granted_role_reembeds_and_cancels_on_a_table_it_owns(
        dsn: str, conn: psycopg.Connection[Any], tiny_colqwen: str) -> None:
    """Re-embedding needs no schema owner: start, worker switch-over and cancel run as the role that
    owns the source (granted usage); a role that does not manage the index is refused at each step."""
    import uuid

    from psycopg.conninfo import make_conninfo

    tag = uuid.uuid4().hex[:8]
    owner, other = f"re_owner_{tag}", f"re_other_{tag}"
    for role in (owner, other):
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute("SELECT maxsim.grant_usage(%s)", (role,))
    conn.execute(f'GRANT CREATE ON SCHEMA public TO "{owner}"')
    owner_dsn, other_dsn = make_conninfo(dsn, user=owner), make_conninfo(dsn, user=other)
    try:
        with psycopg.connect(owner_dsn, autocommit=True) as app, psycopg.connect(other_dsn, autocommit=True) as out:
            make_text_table(app, "rg", 12)
            iid = create_index(app, "rg", "rg")
            run_once(owner_dsn)
            assert len(tok_rows(conn, iid)) == 12

            state = start_reembed(app, "rg", tiny_colqwen)
            assert (state.shadow, state.pending) == ("rg#reembed", 12)
            for stmt, args in (("SELECT * FROM maxsim.reembed_state(%s)", ("rg",)),
                               ("SELECT maxsim.switch_index(%s, %s)", ("rg", "rg#reembed")),
                               ("SELECT maxsim.reembed_cancel(%s)", ("rg",)),
                               ("SELECT maxsim.read_rows(%s, 0, 10)", ("rg",))):
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                    out.execute(stmt, args)
            assert out.execute("SELECT count(*) FROM maxsim.reembeds()").fetchone() == (0,)  # not its index
            # the switch is refused while the shadow still has queued rows
            assert app.execute("SELECT maxsim.switch_index('rg', 'rg#reembed')").fetchone() == (False,)

            stats = run_once(owner_dsn, batch_size=8)
            assert stats.reembeds_finished == ["rg"]
            reg = conn.execute("SELECT id, model, dim FROM maxsim.indexes WHERE name = 'rg'").fetchone()
            assert reg == (iid, tiny_colqwen, 128)
            assert reembed_status(app, "rg") is None and leftovers(conn, state.shadow_id) == []
            rows = tok_rows(conn, iid)
            assert len(rows) == 12 and all(r[2] == tiny_colqwen for r in rows.values())
            register_tokens(app)
            q = np.random.default_rng(3).standard_normal((3, 128)).astype(np.float32)
            assert len(app.execute("SELECT * FROM maxsim.search('rg', %s, 5)", (Tokens(q),)).fetchall()) == 5

            again = start_reembed(app, "rg", MINILM)
            assert cancel_reembed(app, "rg") is True and cancel_reembed(app, "rg") is False
            assert leftovers(conn, again.shadow_id) == []
            assert conn.execute("SELECT model FROM maxsim.indexes WHERE name = 'rg'").fetchone() == (tiny_colqwen,)
            for stmt in ("SELECT maxsim._switch_index(1, 2, true)", "SELECT maxsim._read_stage(1, 'x', NULL, 0, 1)"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    app.execute(stmt)
    finally:
        conn.execute("SELECT maxsim.drop_index(name) FROM maxsim.indexes WHERE name LIKE 'rg%'")
        for role in (owner, other):
            conn.execute(f'DROP OWNED BY "{role}" CASCADE')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')
