"""The codebook first stage inside PostgreSQL (sql/idempotent/035_firststage.sql, pgmaxsim.codebook):
the candidates are exactly the rows holding a probed code (brute force in NumPy over the stored
codebook), under writes, deletes, TRUNCATE and retrains, on PostgreSQL 15 + PL/Python and on the
embedded PostgreSQL 18 (pure SQL)."""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg
import pytest
from concurrently import search_during
from pgmaxsim import Index, codebook, sketch_lists
from pgmaxsim import firststage as fs
from pgmaxsim.db.adapters import Tokens, register_tokens
from pgmaxsim.kernels.reference import maxsim_reference
from pgmaxsim.registry import get_index

DIM = 16
OPTS = '{"first_stage": "codebook", "train_tokens": 100000000, "tokens_per_code": 4, "nprobe": 3}'


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def fp16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float16).astype(np.float32)


def corpus(n: int, seed: int = 0, start: int = 1) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {start + i: fp16(unit(rng.standard_normal((int(m), DIM)))) for i, m in enumerate(rng.integers(3, 12, n))}


def create(db: psycopg.Connection[Any], name: str = "fs", opts: str = OPTS) -> Index:
    db.execute(f"CREATE TABLE src_{name} (id bigint PRIMARY KEY)")
    db.execute(f"INSERT INTO src_{name} SELECT g FROM generate_series(1, 1000) g")
    db.execute("SELECT maxsim.create_index(%s, %s::regclass, 'id', dim => %s, options => %s::jsonb)",
               (name, f"src_{name}", DIM, opts))
    return Index(db, name)


def write(db: psycopg.Connection[Any], idx: Index, docs: dict[int, np.ndarray]) -> None:
    """Half through maxsim.upsert (codes assigned in SQL), half through Index.upsert (NumPy)."""
    keys = list(docs)
    for k in keys[::2]:
        db.execute("SELECT maxsim.upsert(%s, %s::bigint, %s)", (idx.name, k, Tokens(docs[k])))
    idx.upsert(keys[1::2], [docs[k] for k in keys[1::2]])


def stored_book(db: psycopg.Connection[Any], name: str) -> codebook.Live:
    book = codebook.live(db, get_index(db, name))
    assert book is not None
    return book


def probed_rows(db: psycopg.Connection[Any], name: str, q: np.ndarray) -> set[int]:
    """Brute force: the rows having a token whose code (NumPy, stored codebook) is probed by q."""
    spec = get_index(db, name)
    book = stored_book(db, name)
    codes, _ = fs.probe(book.cb, q, int(spec.options["nprobe"]), int(spec.options["coarse_probe"]))
    want = set(codes.ravel().tolist())
    rows = db.execute(f"SELECT id, {codebook.column(book.slot)} FROM maxsim.{spec.token_table}").fetchall()
    return {k for k, c in rows if c is None or want & set(c)}


def search_ids(db: psycopg.Connection[Any], name: str, q: np.ndarray, n: int) -> list[int]:
    return [int(r[0]) for r in db.execute("SELECT id FROM maxsim.search(%s, %s, %s, %s)",
                                          (name, Tokens(q), n, n)).fetchall()]


def check_exact(db: psycopg.Connection[Any], name: str, docs: dict[int, np.ndarray], queries: list[np.ndarray]) -> None:
    """Stored codes = NumPy's assignment of the stored tokens; the candidates (search with
    k = candidates = rows - 1, so the result is the whole candidate set) = the probed rows."""
    sketch_lists.merge(db, name)   # rows not merged into the sketch lists yet are all candidates (test_sketch_pg.py)
    spec = get_index(db, name)
    book = stored_book(db, name)
    rows = dict(db.execute(f"SELECT id, {codebook.column(book.slot)} FROM maxsim.{spec.token_table}").fetchall())
    assert set(rows) == set(docs)
    agree = sum(rows[k] == codebook.row_codes(book, docs[k]) for k in docs)
    assert agree >= 0.97 * len(docs)   # SQL assignment in halfvec arithmetic: rare near-ties may differ
    n = len(docs) - 1
    for q in queries:
        want = probed_rows(db, name, q)
        assert len(want) < n
        got = search_ids(db, name, q, n)
        assert set(got) == want
        ref = {k: float(maxsim_reference(q, docs[k])) for k in want}
        assert got[0] == max(ref, key=ref.get)


def queries_of(docs: dict[int, np.ndarray], seed: int = 1, n: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    keys = list(docs)
    return [fp16(unit(docs[keys[int(i)]][:3] + 0.05 * rng.standard_normal((3, DIM)))) for i in rng.choice(len(keys), n)]


def test_candidates_are_the_rows_holding_a_probed_code_under_writes(db: psycopg.Connection[Any]) -> None:
    idx = create(db)
    docs = corpus(240)
    write(db, idx, docs)
    # not trained: every row is a candidate (exact search)
    q = queries_of(docs)[0]
    assert len(search_ids(db, "fs", q, 239)) == 239
    done = codebook.train(db, "fs")
    assert (done.gen, done.rows) == (0, 240) and done.n_fine >= 2
    check_exact(db, "fs", docs, queries_of(docs))
    # inserts and updates (both writers) get codes as they are written; deletes go with the row
    more = corpus(40, seed=5, start=241)
    changed = corpus(30, seed=6, start=1)
    write(db, idx, more | changed)
    docs |= more | changed
    db.execute("DELETE FROM src_fs WHERE id BETWEEN 100 AND 119")
    for k in range(100, 120):
        docs.pop(k)
    check_exact(db, "fs", docs, queries_of(docs, seed=2))
    # a row without live codes (here: cleared by hand) is still a candidate
    db.execute(f"UPDATE maxsim.{idx.info.token_table} SET codes_0 = NULL WHERE id = 7")
    assert 7 in search_ids(db, "fs", queries_of(docs, seed=3)[0], len(docs) - 1)
    db.execute("TRUNCATE src_fs")
    assert search_ids(db, "fs", q, 5) == []
    assert db.execute(f"SELECT count(*) FROM maxsim.{idx.info.token_table}").fetchone()[0] == 0


def test_a_write_coded_in_many_chunks_stores_each_rows_own_codes(db: psycopg.Connection[Any],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """pgmaxsim.writes codes a write's rows in chunks on a helper thread while the COPY sends the
    previous chunk: with chunks of a row or two, every row still gets its own codes, in its row."""
    from pgmaxsim import writes

    idx = create(db)
    docs = corpus(120, seed=21)
    keys = list(docs)
    idx.upsert(keys[:60], [docs[k] for k in keys[:60]])
    codebook.train(db, "fs")
    monkeypatch.setattr(writes, "CHUNK_MIN_TOKENS", 12)
    monkeypatch.setattr(fs, "ASSIGN_TOKENS", 12)
    assert writes.chunk_tokens(10_000) == 12
    later = keys[60:] + keys[:10]   # new rows and rewritten ones
    idx.upsert(later, [docs[k] for k in later])
    book = stored_book(db, "fs")
    rows = dict(db.execute(f"SELECT id, {codebook.column(book.slot)} FROM maxsim.{idx.info.token_table}").fetchall())
    assert all(rows[k] == codebook.row_codes(book, docs[k]) for k in later)


def test_retrain_switches_under_concurrent_searches(db: psycopg.Connection[Any]) -> None:
    idx = create(db)
    docs = corpus(200, seed=3)
    write(db, idx, docs)
    codebook.train(db, "fs")
    keys = list(docs)
    # each query is 3 tokens of one row: that row holds the nearest code of each, so it is always found first
    probes = [(k, docs[k][:3]) for k in keys[:8]]
    with search_during(db.info.dsn, probes, lambda c, q: search_ids(c, "fs", q, 10)) as run:
        for gen in (1, 2):
            assert codebook.train(db, "fs", seed=gen).gen == gen
    assert not run.errors
    assert run.seen and all(got and got[0] == k for k, got in run.seen)
    # the old slot is cleared after the switch: only the live codes remain
    spec = get_index(db, "fs")
    assert codebook.gen_of(spec) == 2
    assert db.execute(f"SELECT count(*) FROM maxsim.{spec.token_table} WHERE codes_1 IS NOT NULL").fetchone()[0] == 0
    assert db.execute(f"SELECT count(DISTINCT slot) FROM maxsim.fs_fine_{spec.id}").fetchone()[0] == 1
    check_exact(db, "fs", docs, queries_of(docs, seed=4))


@pytest.mark.parametrize(("opts", "needle"), [
    ('{"first_stage": "ivf"}', 'option first_stage must be "codebook", "centroids" or "mean", got "ivf"'),
    ('{"first_stage": "codebook", "pooling": "mean"}', "options first_stage (codebook) and pooling (mean) disagree"),
    ('{"first_stage": "codebook", "nprobe": 0}', "option nprobe must be an integer between 1 and 1024, got 0"),
])
def test_bad_first_stage_options_fail_with_one_line(conn: psycopg.Connection[Any], opts: str, needle: str) -> None:
    conn.autocommit = True
    conn.execute("CREATE TABLE src_bad (id bigint PRIMARY KEY)")
    with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
        conn.execute("SELECT maxsim.create_index('bad', 'src_bad', 'id', dim => 8, options => %s::jsonb)", (opts,))
    primary = e.value.diag.message_primary or ""
    assert needle in primary and "\n" not in primary


def test_retraining_a_centroids_index_is_refused(conn: psycopg.Connection[Any]) -> None:
    conn.autocommit = True
    create(conn, opts='{"first_stage": "centroids"}')
    with pytest.raises(Exception, match="has first stage 'centroids'"):
        codebook.train(conn, "fs")


def test_storage_switch_keeps_the_first_stage_exact(conn: psycopg.Connection[Any]) -> None:
    from pgmaxsim.kernels import quantize
    from pgmaxsim.retier import retier

    conn.autocommit = True
    register_tokens(conn)
    idx = create(conn)
    docs = corpus(200, seed=10)
    write(conn, idx, docs)
    codebook.train(conn, "fs")
    done = retier(conn, "fs", storage_tier="int8")
    assert (done.storage, done.rows) == ("int8", 200)
    spec = get_index(conn, "fs")
    assert codebook.gen_of(spec) == 0 and spec.options["first_stage" if "first_stage" in spec.options else "nprobe"]
    stored = {k: quantize.dequantize(*quantize.decode_tokens(bytes(b), DIM, "int8")).astype(np.float32)
              for k, b in conn.execute(f"SELECT id, tokens FROM maxsim.{spec.token_table}").fetchall()}
    check_exact(conn, "fs", stored, queries_of(docs, seed=11))


def test_a_granted_role_writes_codes_and_searches(conn: psycopg.Connection[Any], dsn: str) -> None:
    import uuid

    from psycopg.conninfo import make_conninfo

    conn.autocommit = True
    register_tokens(conn)
    role = f"fsapp_{uuid.uuid4().hex[:8]}"
    conn.execute(f'CREATE ROLE "{role}" LOGIN')
    conn.execute(f'GRANT CREATE ON SCHEMA public TO "{role}"')
    conn.execute("SELECT maxsim.grant_usage(%s)", (role,))
    docs = corpus(120, seed=12)
    try:
        with psycopg.connect(make_conninfo(dsn, user=role), autocommit=True) as c:
            register_tokens(c)
            c.execute("CREATE TABLE src_g (id bigint PRIMARY KEY)")
            c.execute("INSERT INTO src_g SELECT generate_series(1, 200)")
            c.execute("SELECT maxsim.create_index('g', 'src_g', 'id', dim => %s, options => %s::jsonb)", (DIM, OPTS))
            idx = Index(c, "g")
            keys = list(docs)
            idx.upsert(keys[:60], [docs[k] for k in keys[:60]])
            codebook.train(c, "g")   # the role that manages it trains it (tests/test_fs_train.py)
            idx.upsert(keys[60:], [docs[k] for k in keys[60:]])   # codes from maxsim.first_stage_codebook
            for k in keys[:3]:
                assert search_ids(c, "g", docs[k][:3], 5)[0] == k
        spec = get_index(conn, "g")
        book = stored_book(conn, "g")
        rows = dict(conn.execute(f"SELECT id, codes_0 FROM maxsim.{spec.token_table}").fetchall())
        assert all(rows[k] == codebook.row_codes(book, docs[k]) for k in keys[60:])
    finally:
        conn.execute(f'DROP OWNED BY "{role}" CASCADE')
        conn.execute(f'REVOKE CREATE ON SCHEMA public FROM "{role}"')
        conn.execute(f'DROP ROLE "{role}"')


def stored_codes(db: psycopg.Connection[Any], name: str) -> tuple[list[int], fs.InvertedLists, fs.InvertedLists]:
    """Every row's stored live codes: (keys in id order, code -> rows lists, row -> codes lists)."""
    spec = get_index(db, name)
    book = stored_book(db, name)
    rows = db.execute(f"SELECT id, {codebook.column(book.slot)} FROM maxsim.{spec.token_table} ORDER BY id").fetchall()
    codes = np.concatenate([np.asarray(c, np.int64) for _, c in rows])
    row_of = np.repeat(np.arange(len(rows)), [len(c) for _, c in rows])
    lists = fs.InvertedLists.build(codes, row_of, book.cb.n_codes)
    return [k for k, _ in rows], lists, fs.row_codes(lists, len(rows))


def check_probe_score(db: psycopg.Connection[Any], opts: str, gins: int, rescore: bool) -> None:
    """With fewer candidates than probed rows, the rows kept are pgmaxsim.firststage's choice over the
    stored codes and codebook: WARP's probe score (and with ``rescore``, 4 x 20 rows by it, then the
    best 20 by PLAID's centroid interaction); ``gins``: the GIN indexes the token table has."""
    register_tokens(db)
    idx = create(db, opts=opts)
    docs = corpus(300, seed=13)
    idx.upsert(list(docs), list(docs.values()))
    codebook.train(db, "fs")
    spec = get_index(db, "fs")
    assert db.execute("SELECT count(*) FROM pg_indexes WHERE schemaname = 'maxsim' AND tablename = %s"
                      " AND indexdef ~ 'USING gin'", (spec.token_table,)).fetchone()[0] == gins
    book = stored_book(db, "fs")
    keys, lists, per_row = stored_codes(db, "fs")
    for q in queries_of(docs, seed=14, n=5):
        pc, ps = fs.probe(book.cb, q, 6, 2)
        want = fs.candidates(lists, pc, ps, len(keys), 20, rescore=(book.cb, q, per_row, 4) if rescore else None)
        got = search_ids(db, "fs", q, 20)
        assert len(got) == 20
        assert len(set(got) & {keys[i] for i in want}) >= 18   # near-ties may fall either way


def test_the_probe_score_ranks_as_the_numpy_model(conn: psycopg.Connection[Any]) -> None:
    """No sketch lists read (sketch_top 0) on a PL/Python server, which has no GIN over the codes
    (maxsim._fs_create): the backend computes the probe score over the codes themselves
    (pgmaxsim.plpy.codes.best), then centroid interaction narrows."""
    conn.autocommit = True
    check_probe_score(conn, '{"first_stage": "codebook", "train_tokens": 100000000, "tokens_per_code": 8,'
                            ' "nprobe": 6, "sketch_top": 0}', gins=0, rescore=True)


def test_without_plpython_the_probe_score_ranks_as_the_numpy_model(embedded_dsn: str) -> None:
    """The pure-SQL first stage (servers without plpython3u), over the codes' GIN that only they have
    (one per codebook slot); no rescoring there."""
    with psycopg.connect(embedded_dsn, autocommit=True) as db:
        check_probe_score(db, '{"first_stage": "codebook", "train_tokens": 100000000, "tokens_per_code": 8,'
                              ' "nprobe": 6}', gins=2, rescore=False)


def test_rescoring_reads_every_candidates_codes(conn: psycopg.Connection[Any]) -> None:
    """maxsim._rescore on a codebook index (sketch_top 0: centroid interaction alone), over rows
    with codes (one with more than 16,000), one with an empty code array and two without codes
    (NULL): the best n rows with
    codes by pgmaxsim.firststage's centroid interaction over their stored codes (NumPy), the empty
    one ranked last (-inf: dropped first), then the rows without codes, never dropped."""
    conn.autocommit = True
    register_tokens(conn)
    idx = create(conn, opts='{"first_stage": "codebook", "train_tokens": 100000000, "tokens_per_code": 8,'
                            ' "sketch_top": 0}')
    docs = corpus(60, seed=21)
    idx.upsert(list(docs), list(docs.values()))
    codebook.train(conn, "fs")
    spec = get_index(conn, "fs")
    book = stored_book(conn, "fs")
    conn.execute(f"UPDATE maxsim.{spec.token_table} SET codes_0 = NULL WHERE id IN (5, 9)")
    conn.execute(f"UPDATE maxsim.{spec.token_table} SET codes_0 = '{{}}' WHERE id = 7")
    # more codes than pgvector's vector holds (16,000), read through array_send: the row's own codes
    # over and over, which centroid interaction scores as the row's own
    conn.execute(f"UPDATE maxsim.{spec.token_table} SET codes_0 = (SELECT array_agg(c) FROM unnest(codes_0) c,"
                 f" generate_series(1, 16001 / cardinality(codes_0) + 1)) WHERE id = 3")
    stored = dict(conn.execute(f"SELECT id, codes_0 FROM maxsim.{spec.token_table}").fetchall())
    coded = [k for k in docs if stored[k] is not None]
    per_row = fs.InvertedLists(np.concatenate([[0], np.cumsum([len(stored[k]) for k in coded])]).astype(np.int64),
                               np.concatenate([np.asarray(stored[k], np.int32) for k in coded]))
    n = len(coded) - 1
    for q in queries_of(docs, seed=22, n=3):
        score = dict(zip(coded, fs.centroid_interaction(book.cb, q, per_row, np.arange(len(coded))).tolist()))
        got = [int(k) for k in conn.execute("SELECT maxsim._rescore(%s, %s, %s::text[], %s)",
                                            (spec.id, Tokens(q), [str(k) for k in docs], n)).fetchone()[0]]
        assert set(got[:n]) == set(coded) - {7} and set(got[n:]) == {5, 9}
        assert all(score[a] >= score[b] for a, b in zip(got[:n - 1], got[1:n]))
    assert len(stored[3]) > 16_000
    # codes are written one-dimensional without NULLs; anything else fails loudly (pgvector's cast
    # or, past its size, pgmaxsim's check), not misread
    for bad in ("{1,NULL,2}", "{{1,2},{3,4}}", "{" + ",".join(["1"] * 16_001) + ",NULL}"):
        conn.execute(f"UPDATE maxsim.{spec.token_table} SET codes_0 = %s WHERE id = 11", (bad,))
        with pytest.raises(psycopg.Error, match="not one-dimensional int4 without NULLs|must not contain nulls|must be 1-D"):
            conn.execute("SELECT maxsim._rescore(%s, %s, %s::text[], %s)",
                         (spec.id, Tokens(q), [str(k) for k in docs], n))
