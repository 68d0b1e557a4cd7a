"""The rows a codebook index's sketch lists lack are always first-stage candidates, found from the
index's pending versions (``maxsim.skpend_<id>``, sql/idempotent/035_firststage.sql) instead of a scan
of every row: after inserts, updates, deletes, merges, TRUNCATE, a retrain and a storage switch, and
for an index created before that table (it gets it at its next merge)."""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg
from pgmaxsim import Index, codebook, retier, sketch_lists
from pgmaxsim.db.adapters import Tokens, register_tokens
from pgmaxsim.registry import get_index

DIM = 96
OPTS = '{"first_stage": "codebook", "train_tokens": 100000000, "tokens_per_code": 8, "nprobe": 4}'


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def rows(rng: np.random.Generator, n: int, start: int) -> dict[int, np.ndarray]:
    topics = unit(np.random.default_rng(99).standard_normal((6, DIM)))
    out = {}
    for i in range(n):
        m = int(rng.integers(20, 41))
        t = topics[rng.integers(0, 6, m)]
        out[start + i] = unit(t + unit(rng.standard_normal((m, DIM)))).astype(np.float16).astype(np.float32)
    return out


def create(db: psycopg.Connection[Any], name: str = "pd") -> Index:
    register_tokens(db)
    db.execute(f"CREATE TABLE src_{name} (id bigint PRIMARY KEY)")
    db.execute(f"INSERT INTO src_{name} SELECT g FROM generate_series(1, 2000) g")
    db.execute("SELECT maxsim.create_index(%s, %s::regclass, 'id', dim => %s, options => %s::jsonb)",
               (name, f"src_{name}", DIM, OPTS))
    return Index(db, name)


def write(idx: Index, rng: np.random.Generator, n: int, start: int) -> dict[int, np.ndarray]:
    """`n` rows (keys from `start`) written through the index."""
    docs = rows(rng, n, start)
    idx.upsert(list(docs), list(docs.values()))
    return docs


def trained(db: psycopg.Connection[Any], seed: int, n: int) -> tuple[np.random.Generator, Index, dict[int, np.ndarray]]:
    """Index "pd" with rows 1..n and its codebook trained (codes, the sketch lists of every row,
    switch), and the generator of the rows that follow."""
    rng = np.random.default_rng(seed)
    idx = create(db)
    docs = write(idx, rng, n, 1)
    codebook.train(db, "pd")
    return rng, idx, docs


def unmerged(db: psycopg.Connection[Any], name: str) -> set[int]:
    """Brute force: the live coded rows whose version is not in the live slot's merged versions."""
    spec = get_index(db, name)
    slot = int(spec.options["fs_gen"]) % 2
    got = db.execute(f"SELECT t.id FROM maxsim.{spec.token_table} t WHERE t.codes_{slot} IS NOT NULL"
                     f" AND NOT EXISTS (SELECT 1 FROM maxsim.fs_skrow_{spec.id} s WHERE s.slot = %s"
                     f" AND s.version = t.version)", (slot,)).fetchall()
    return {int(r[0]) for r in got}


def first_stage(db: psycopg.Connection[Any], name: str, q: np.ndarray, n: int = 5, cap: int = 1000) -> list[int] | None:
    """The sketch lists' first stage (maxsim._sk_candidates: internal, called as the schema owner)."""
    spec = get_index(db, name)
    got = db.execute("SELECT maxsim._sk_candidates(%s, %s, %s, %s)", (spec.id, Tokens(q), n, cap)).fetchone()[0]
    return None if got is None else [int(k) for k in got]


def pending_table(db: psycopg.Connection[Any], name: str) -> set[int]:
    spec = get_index(db, name)
    return {int(r[0]) for r in db.execute(f"SELECT version FROM maxsim.skpend_{spec.id}").fetchall()}


def check(db: psycopg.Connection[Any], name: str, q: np.ndarray, want: set[int] | None = None) -> list[int]:
    """Every unmerged row is a candidate (and, when given, the unmerged rows are exactly `want`)."""
    todo = unmerged(db, name)
    if want is not None:
        assert todo == want
    got = first_stage(db, name, q)
    assert got is not None
    assert todo <= set(got), todo - set(got)
    assert len(got) == len(set(got))
    return got


def test_unmerged_rows_are_candidates_through_writes_merges_truncate_and_retrain(conn: psycopg.Connection[Any]) -> None:
    rng, idx, docs = trained(conn, 0, 200)
    spec = get_index(conn, "pd")
    q = docs[3][:4]
    check(conn, "pd", q, set())
    # the training merged every row at its switch, and forgot them: with no write since (a table
    # loaded, then trained) no merge comes to forget them, and each search would check them all
    assert pending_table(conn, "pd") == set()
    # new rows: not merged, candidates; the pending table names their versions
    more = write(idx, rng, 20, 201)
    got = check(conn, "pd", q, set(more))
    assert set(more) <= set(got)
    versions = {int(r[0]) for r in conn.execute(f"SELECT version FROM maxsim.{spec.token_table} WHERE id > 200")}
    assert versions <= pending_table(conn, "pd")
    # an update of a merged row: its new version is pending; a delete of a pending row: gone
    write(idx, rng, 1, 5)
    conn.execute("DELETE FROM src_pd WHERE id = 210")
    got = check(conn, "pd", q, (set(more) - {210}) | {5})
    assert 210 not in got
    # a merge takes them all and the pending table forgets them (and the dead versions)
    done = sketch_lists.merge(conn, "pd")
    assert done is not None and done.rows == 20
    check(conn, "pd", q, set())
    assert pending_table(conn, "pd") == set()
    # codes-only rewrites (a retrain's fill) add nothing; rows written before the retrain are merged by it
    late = write(idx, rng, 5, 300)
    check(conn, "pd", q, set(late))
    codebook.train(conn, "pd")
    check(conn, "pd", q, set())
    assert pending_table(conn, "pd") == set()
    # an index a training left so (before its switch forgot them): a merge asked for repairs it
    conn.execute(f"INSERT INTO maxsim.skpend_{spec.id} SELECT version FROM maxsim.{spec.token_table}")
    assert len(pending_table(conn, "pd")) == conn.execute(f"SELECT count(*) FROM maxsim.{spec.token_table}").fetchone()[0]
    done = sketch_lists.merge(conn, "pd")
    assert done is not None and done.rows == 0
    assert pending_table(conn, "pd") == set()
    new = write(idx, rng, 5, 400)
    check(conn, "pd", q, set(new))
    assert sketch_lists.merge(conn, "pd") is not None
    check(conn, "pd", q, set())
    assert pending_table(conn, "pd") == set()
    # TRUNCATE empties the pending table with the rows; rows written again are candidates
    conn.execute("TRUNCATE src_pd")
    assert pending_table(conn, "pd") == set()
    assert first_stage(conn, "pd", q) == []
    again = write(idx, rng, 3, 1)
    assert set(check(conn, "pd", q, set(again))) == set(again)


def test_more_pending_rows_than_the_cap_are_ranked_by_the_probe_score(conn: psycopg.Connection[Any]) -> None:
    rng, idx, docs = trained(conn, 1, 100)
    more = write(idx, rng, 12, 101)
    q = docs[1][:4]
    # past the cap: the sketch's 5 and the backlog's best 5 by the codebook's probe score
    # (pgmaxsim.plpy.codes.best: this PL/Python server has no GIN over the codes)
    got = first_stage(conn, "pd", q, cap=11)
    assert got is not None and len(got) == 10 and len(set(got) & set(more)) == 5
    assert set(more) <= set(first_stage(conn, "pd", q, cap=12) or [])
    # the search still returns the needle: exact scores of what the probe score gives
    got = [int(r[0]) for r in conn.execute("SELECT id FROM maxsim.search('pd', %s, 3, 20)", (Tokens(more[105][:6]),))]
    assert got[0] == 105


def test_an_index_older_than_the_pending_table_gets_it_at_its_next_merge(conn: psycopg.Connection[Any]) -> None:
    rng, idx, docs = trained(conn, 2, 120)
    spec = get_index(conn, "pd")
    # as before the table existed
    for t in ("ins", "upd", "truncate"):
        conn.execute(f"DROP TRIGGER maxsim_skpend_{t} ON maxsim.{spec.token_table}")
    conn.execute(f"DROP TABLE maxsim.skpend_{spec.id}")
    more = write(idx, rng, 10, 121)
    q = docs[2][:4]
    check(conn, "pd", q, set(more))   # every row checked, as before
    # a training's merge into the next slot creates the table: the live slot's unmerged rows are seeded
    conn.execute("SELECT maxsim._sk_create(%s, %s)", (spec.id, spec.token_table))
    assert pending_table(conn, "pd") >= {int(r[0]) for r in conn.execute(
        f"SELECT version FROM maxsim.{spec.token_table} WHERE id > 120")}
    check(conn, "pd", q, set(more))
    assert sketch_lists.merge(conn, "pd") is not None
    check(conn, "pd", q, set())
    assert pending_table(conn, "pd") == set()
    late = write(idx, rng, 4, 200)
    check(conn, "pd", q, set(late))


def test_a_storage_switch_keeps_every_row_a_candidate_until_merged(conn: psycopg.Connection[Any]) -> None:
    rng, idx, docs = trained(conn, 3, 150)
    retier.retier(conn, "pd", storage_tier="int8")
    q = docs[9][:4]
    check(conn, "pd", q, set(docs))   # new versions in a new token table: none merged yet
    assert sketch_lists.merge(conn, "pd") is not None
    check(conn, "pd", q, set())
    assert pending_table(conn, "pd") == set()
    late = write(idx, rng, 3, 500)
    check(conn, "pd", q, set(late))
    # (a budget above option sketch_top, 10: at or below it the sketch's own best fill it)
    got = [int(r[0]) for r in conn.execute("SELECT id FROM maxsim.search('pd', %s, 1, 20)", (Tokens(late[501][:6]),))]
    assert got == [501]
