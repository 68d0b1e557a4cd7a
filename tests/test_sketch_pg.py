"""Residual sketch lists of the codebook first stage inside PostgreSQL (sql/idempotent/034_sketch*.sql,
pgmaxsim.sketch, pgmaxsim.sketch_lists, pgmaxsim.plpy.sketch): the backend's sketch ranking equals
NumPy's over the stored tokens, codebook and codec; a row holding a near-copy of a query token is
found with a budget far below the rows sharing its topics; writes, deletes, TRUNCATE, merges,
compaction and retrains keep the lists exact; both scoring paths agree; a row written since the last
merge, which the lists cannot rank, is found at budgets the sketch's own best rows could fill."""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg
from concurrently import search_during
from pgmaxsim import Index, codebook, fs_train, sketch, sketch_lists
from pgmaxsim import firststage as fs
from pgmaxsim.db.adapters import Tokens, register_tokens
from pgmaxsim.kernels.reference import maxsim_reference
from pgmaxsim.registry import get_index

DIM = 96   # > 64: the sketch's rotation keeps 64 of 96 coordinates
TOPICS = 6
OPTS = '{"first_stage": "codebook", "train_tokens": 100000000, "tokens_per_code": 8, "nprobe": 4}'


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def fp16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float16).astype(np.float32)


class Needles:
    """bench/needle.py in small: rows of 20-40 tokens around a few shared topics, each token its
    topic plus a private direction; a query = near-copies of 3 tokens of one row + 3 generic
    tokens of its topic, so the rows of that topic tie on all but the copied tokens."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.topics = unit(self.rng.standard_normal((TOPICS, DIM)))

    def rows(self, n: int, start: int = 1) -> dict[int, np.ndarray]:
        out = {}
        for i in range(n):
            m = int(self.rng.integers(20, 41))
            t = self.topics[self.rng.integers(0, TOPICS, m)]
            out[start + i] = fp16(unit(t + unit(self.rng.standard_normal((m, DIM)))))
        return out

    def query(self, row: np.ndarray) -> np.ndarray:
        pick = self.rng.choice(len(row), 3, replace=False)
        near = unit(row[pick] + 0.15 * unit(self.rng.standard_normal((3, DIM))))
        topic = self.topics[int(np.argmax(row[pick[0]] @ self.topics.T))]
        gen = unit(topic + 0.25 * unit(self.rng.standard_normal((3, DIM))))
        return fp16(np.concatenate([near, gen]))


def create(db: psycopg.Connection[Any], name: str = "sk", opts: str = OPTS, n_src: int = 2000) -> Index:
    register_tokens(db)
    db.execute(f"CREATE TABLE src_{name} (id bigint PRIMARY KEY)")
    db.execute(f"INSERT INTO src_{name} SELECT g FROM generate_series(1, {n_src}) g")
    db.execute("SELECT maxsim.create_index(%s, %s::regclass, 'id', dim => %s, options => %s::jsonb)",
               (name, f"src_{name}", DIM, opts))
    return Index(db, name)


def sk_top(db: psycopg.Connection[Any], name: str, q: np.ndarray, n: int) -> list[int]:
    """The backend's sketch ranking (maxsim._sk_top: internal, called here as the schema owner)."""
    spec = get_index(db, name)
    got = db.execute("SELECT maxsim._sk_top(%s, %s, %s)", (spec.id, Tokens(q), n)).fetchone()[0]
    return [int(k) for k in got]


def search_ids(db: psycopg.Connection[Any], name: str, q: np.ndarray, k: int, n: int) -> list[int]:
    return [int(r[0]) for r in db.execute("SELECT id FROM maxsim.search(%s, %s, %s, %s)", (name, Tokens(q), k, n))]


def reference_top(db: psycopg.Connection[Any], name: str, q: np.ndarray, n: int) -> list[int]:
    """NumPy over every stored row: codes and sketches under the stored codebook and codec, WARP score."""
    spec = get_index(db, name)
    book = codebook.live(db, spec)
    assert book is not None
    mag = db.execute(f"SELECT mag FROM maxsim.fs_skm_{spec.id} WHERE slot = %s AND gen = %s",
                     (book.slot, book.gen)).fetchone()[0]
    codec = sketch.Codec(np.asarray(mag, np.float32))
    parts, key_of = [], {}
    for key, blob, m, version in db.execute(f"SELECT id, tokens, n_tokens, version FROM maxsim.{spec.token_table}"):
        x = fs_train.stored_tokens(bytes(blob), m, spec.dim, spec.storage)
        c = fs.assign(book.cb, x)
        parts.append(sketch.Entries(c.astype(np.int64), np.full(len(x), version, np.int64), sketch.encode(book.cb, codec, x, c)))
        key_of[int(version)] = int(key)
    qn = fs.normalise(q)
    pc, ps = fs.probe(book.cb, qn, int(spec.options["nprobe"]), int(spec.options["coarse_probe"]))
    best = sketch.scores(codec, qn, pc, ps, sketch.Entries.concat(parts, codec.bits // 8)).top(n)
    return [key_of[int(v)] for v in best]


def write(idx: Index, docs: dict[int, np.ndarray]) -> None:
    idx.upsert(list(docs), list(docs.values()))


def test_sketch_ranking_matches_numpy_and_finds_the_needle(conn: psycopg.Connection[Any]) -> None:
    idx = create(conn)
    nd = Needles()
    docs = nd.rows(400)
    write(idx, docs)
    codebook.train(conn, "sk")   # trains, fills the codes, builds the lists, switches
    spec = get_index(conn, "sk")
    assert conn.execute(f"SELECT count(*) FROM maxsim.fs_skrow_{spec.id}").fetchone()[0] == 400
    keys = list(docs)
    found = 0
    for k in keys[:12]:
        q = nd.query(docs[k])
        got = sk_top(conn, "sk", q, 10)
        want = reference_top(conn, "sk", q, 10)
        assert got[:5] == want[:5] and len(set(got) & set(want)) >= 9   # float32 sums: near-ties may swap
        found += got[0] == k
        # 8 rows scored exactly of 400 (2 %): the source row first, as exact search ranks it
        ref = {i: float(maxsim_reference(q, d)) for i, d in docs.items()}
        assert max(ref, key=ref.get) == k
        assert search_ids(conn, "sk", q, 1, 8) == [k]
    assert found >= 11


def test_writes_deletes_truncate_merges_and_compaction_keep_it_exact(conn: psycopg.Connection[Any]) -> None:
    idx = create(conn)
    nd = Needles(1)
    docs = nd.rows(300)
    write(idx, docs)
    codebook.train(conn, "sk")
    spec = get_index(conn, "sk")
    # new rows: not in the lists until a merge (the codebook's GIN still ranks them), then found
    more = nd.rows(30, start=301)
    write(idx, more)
    q_new = nd.query(more[305])
    assert 305 not in sk_top(conn, "sk", q_new, 10)
    done = sketch_lists.merge(conn, "sk")
    assert done is not None and done.rows == 30
    assert sk_top(conn, "sk", q_new, 10)[0] == 305
    docs |= more
    # an update replaces the row's tokens: its old entries map to no live row
    q_old = nd.query(docs[7])
    assert sk_top(conn, "sk", q_old, 10)[0] == 7
    docs[7] = nd.rows(1, start=7)[7]
    write(idx, {7: docs[7]})
    assert 7 not in sk_top(conn, "sk", q_old, 10)
    # a delete: the same
    q_del = nd.query(docs[11])
    assert sk_top(conn, "sk", q_del, 10)[0] == 11
    conn.execute("DELETE FROM src_sk WHERE id = 11")
    docs.pop(11)
    assert 11 not in sk_top(conn, "sk", q_del, 10)
    assert sk_top(conn, "sk", q_new, 10) == reference_top(conn, "sk", q_new, 10)
    # merges past MAX_SEGMENTS compact the lists into one segment without the dead entries
    compacted = []
    for i in range(sketch_lists.MAX_SEGMENTS + 1):
        extra = nd.rows(3, start=400 + 3 * i)
        write(idx, extra)
        docs |= extra
        done = sketch_lists.merge(conn, "sk")
        assert done is not None and done.rows == (4 if i == 0 else 3)   # the first one also merges updated row 7
        compacted.append(done.compacted)
    assert any(compacted)
    segs = conn.execute(f"SELECT count(DISTINCT seg) FROM maxsim.fs_sk_{spec.id}").fetchone()[0]
    assert segs <= sketch_lists.MAX_SEGMENTS
    # every live row merged once (the compaction is size-tiered: the entries of the updated and
    # deleted rows may stay in the largest segment until a compaction rewrites it too; they map to
    # no live row)
    versions = np.concatenate([sketch.unpack_versions(int(b), o, len(k) // 8) for b, o, k in conn.execute(
        f"SELECT base, offs, sk FROM maxsim.fs_sk_{spec.id}")])
    live = dict(conn.execute(f"SELECT version, n_tokens FROM maxsim.{spec.token_table}").fetchall())
    got, counts = np.unique(versions[np.isin(versions, list(live))], return_counts=True)
    assert dict(zip(got.tolist(), counts.tolist())) == live
    for k in (305, 410, 1, 200):
        q = nd.query(docs[k])
        assert sk_top(conn, "sk", q, 10)[:5] == reference_top(conn, "sk", q, 10)[:5]
    # TRUNCATE: no entry maps to a row; rows written again are found after their merge
    conn.execute("TRUNCATE src_sk")
    assert sk_top(conn, "sk", q_new, 10) == []
    assert search_ids(conn, "sk", q_new, 5, 5) == []
    write(idx, {305: more[305]})
    sketch_lists.merge(conn, "sk")
    assert sk_top(conn, "sk", q_new, 10) == [305]


def _trained(db: psycopg.Connection[Any], seed: int, rows: int) -> tuple[Index, Needles, dict[int, np.ndarray], Any]:
    """Index "sk" over ``rows`` needle rows (room for 3,000 keys), trained: its lists built."""
    idx = create(db, n_src=3000)
    nd = Needles(seed)
    docs = nd.rows(rows)
    write(idx, docs)
    codebook.train(db, "sk")
    return idx, nd, docs, get_index(db, "sk")


def _lists_part(db: psycopg.Connection[Any], index_id: int) -> tuple[int, int]:
    """(oid, bytes with TOAST and indexes) of slot 0's lists partition."""
    return db.execute(f"SELECT p::oid::int, pg_catalog.pg_total_relation_size(p) FROM maxsim._sk_part('fs_sk_{index_id}', 0) p"
                      ).fetchone()


def _compact_fully(db: psycopg.Connection[Any], idx: Index, nd: Needles, docs: dict[int, np.ndarray], start: int) -> None:
    """Merges of fresh rows until the lists are compacted into one segment: a full compaction
    (sketch_merge._Lists.compact: the rows outside the largest segment outgrew it)."""
    spec = get_index(db, "sk")
    for i in range(4 * sketch_lists.MAX_SEGMENTS):
        extra = nd.rows(40, start=start + 40 * i)
        write(idx, extra)
        docs |= extra
        done = sketch_lists.merge(db, "sk")
        assert done is not None
        if done.compacted and db.execute(f"SELECT count(DISTINCT seg) FROM maxsim.fs_sk_{spec.id}").fetchone()[0] == 1:
            return
    raise AssertionError("no full compaction")


def test_a_full_compaction_gives_the_dead_entries_bytes_back(conn: psycopg.Connection[Any], dsn: str) -> None:
    """Rewritten in place, the lists' file would keep the old entries' pages (~2x the live bytes):
    the full compaction swaps in a table holding just the live entries, under searches."""
    idx, nd, docs, spec = _trained(conn, 4, 300)
    docs |= nd.rows(150, start=1)   # half the rows updated: their merged entries are dead
    write(idx, {k: docs[k] for k in range(1, 151)})
    sketch_lists.merge(conn, "sk")
    oid_before, _ = _lists_part(conn, spec.id)
    probes = [(k, nd.query(docs[k])) for k in (3, 160, 290)]
    with search_during(dsn, probes, lambda c, q: search_ids(c, "sk", q, 1, 6)) as run:
        _compact_fully(conn, idx, nd, docs, 1000)
    assert not run.errors
    # the probe's row, or a row written meanwhile that exact search ranks above it
    exact = {k: {k, *search_ids(conn, "sk", q, 1, 100_000)} for k, q in probes}
    assert run.seen and all(len(got) == 1 and got[0] in exact[k] for k, got in run.seen)
    oid, size = _lists_part(conn, spec.id)
    assert oid != oid_before
    # just the live entries: as small as a fresh copy of its rows
    conn.execute(f"CREATE TEMP TABLE fresh (LIKE maxsim.fs_sk_{spec.id} INCLUDING STORAGE)")
    conn.execute(f"INSERT INTO fresh SELECT * FROM maxsim.fs_sk_{spec.id} WHERE slot = 0")
    conn.execute("ALTER TABLE fresh ADD PRIMARY KEY (slot, code, seg)")
    fresh = conn.execute("SELECT pg_catalog.pg_total_relation_size('fresh')").fetchone()[0]
    assert size <= 1.25 * fresh
    versions = np.concatenate([sketch.unpack_versions(int(b), o, len(k) // 8) for b, o, k in conn.execute(
        f"SELECT base, offs, sk FROM maxsim.fs_sk_{spec.id}")])
    live = dict(conn.execute(f"SELECT version, n_tokens FROM maxsim.{spec.token_table}").fetchall())
    got, counts = np.unique(versions, return_counts=True)
    assert dict(zip(got.tolist(), counts.tolist())) == live   # every live row once, no dead entry
    for k in (3, 160, 290, 1005):
        q = nd.query(docs[k])
        assert sk_top(conn, "sk", q, 10)[:5] == reference_top(conn, "sk", q, 10)[:5]
        assert search_ids(conn, "sk", q, 1, 6) == [k]


def _segments(db: psycopg.Connection[Any], index_id: int) -> int:
    return int(db.execute(f"SELECT count(DISTINCT seg) FROM maxsim.fs_sk_{index_id}").fetchone()[0])


def _merged_versions(db: psycopg.Connection[Any], index_id: int) -> dict[int, int]:
    """version -> entries of it in the lists."""
    versions = np.concatenate([sketch.unpack_versions(int(b), o, len(k) // 8) for b, o, k in db.execute(
        f"SELECT base, offs, sk FROM maxsim.fs_sk_{index_id}")])
    got, counts = np.unique(versions, return_counts=True)
    return dict(zip(got.tolist(), counts.tolist()))


def _age_writes(db: psycopg.Connection[Any], token_table: str, seconds: int) -> None:
    """Make every row of the token table look written ``seconds`` ago (the write trigger lets a
    change that keeps the row's version through under pgmaxsim.codes_only)."""
    with db.transaction():
        db.execute("SELECT set_config('pgmaxsim.codes_only', 'on', true)")
        db.execute(f"UPDATE maxsim.{token_table} SET updated_at = updated_at - make_interval(secs => %s)", (seconds,))


def test_a_settle_rewrites_the_lists_as_one_segment_under_searches(conn: psycopg.Connection[Any], dsn: str) -> None:
    """``settle`` (pgmaxsim worker --once, sketch_lists.merge after a bulk load): the lists of several
    segments, with entries of updated and deleted rows, become one segment of just the live
    entries, swapped in under searches, smaller, ranking as NumPy's over the stored rows."""
    idx, nd, docs, spec = _trained(conn, 7, 300)
    for i in range(3):
        extra = nd.rows(20, start=1000 + 20 * i)
        write(idx, extra)
        docs |= extra
        assert sketch_lists.merge(conn, "sk").rows == 20
    docs |= nd.rows(30, start=1)                          # updated: their merged entries are dead
    write(idx, {k: docs[k] for k in range(1, 31)})
    conn.execute("DELETE FROM src_sk WHERE id BETWEEN 31 AND 40")
    for k in range(31, 41):
        docs.pop(k)
    assert _segments(conn, spec.id) == 4
    oid_before, size_before = _lists_part(conn, spec.id)
    probes = [(k, nd.query(docs[k])) for k in (5, 120, 1010)]
    with search_during(dsn, probes, lambda c, q: search_ids(c, "sk", q, 1, 6)) as run:
        done = sketch_lists.merge(conn, "sk", settle=True)
    assert not run.errors and run.seen and all(got == [k] for k, got in run.seen)
    assert done is not None and done.rows == 30 and done.settled
    assert _segments(conn, spec.id) == 1
    oid, size = _lists_part(conn, spec.id)
    assert oid != oid_before and size < size_before
    live = dict(conn.execute(f"SELECT version, n_tokens FROM maxsim.{spec.token_table}").fetchall())
    assert _merged_versions(conn, spec.id) == live        # every live row once, no dead entry
    for k in (5, 120, 299, 1010, 1055):
        q = nd.query(docs[k])
        assert sk_top(conn, "sk", q, 10)[:5] == reference_top(conn, "sk", q, 10)[:5]
        assert search_ids(conn, "sk", q, 1, 6) == [k]
    # one segment already: a settle asked for again rewrites nothing
    again = sketch_lists.merge(conn, "sk", settle=True)
    assert again is not None and not again.settled and _lists_part(conn, spec.id)[0] == oid


def test_the_merge_at_the_end_of_a_burst_settles_once_the_newer_segments_are_worth_it(
        conn: psycopg.Connection[Any]) -> None:
    """The worker's looks (only_if_due) merge a burst's tail once no row was written for 30 s; that
    merge settles the lists too when the segments besides the largest hold 1/16 of it
    (sketch_merge.SETTLE_SHARE), not for a few rows (which would rewrite the lists every quiet spell)."""
    idx, nd, docs, spec = _trained(conn, 8, 320)
    tail = nd.rows(4, start=1000)
    write(idx, tail)
    merge_if_due = "SELECT maxsim.first_stage_sketch_merge('sk', true)"
    assert conn.execute(merge_if_due).fetchone()[0]["rows"] == 0          # just written: not due
    _age_writes(conn, spec.token_table, 60)
    got = conn.execute(merge_if_due).fetchone()[0]
    assert got["rows"] == 4 and not got.get("settled") and _segments(conn, spec.id) == 2   # 4 rows of 324
    more = nd.rows(24, start=1100)
    write(idx, more)
    _age_writes(conn, spec.token_table, 60)
    got = sketch_lists.merge_calls(conn, "sk", True)
    assert got is not None and got["rows"] == 24 and got["settled"]        # 28 rows of 348 > 1/16
    assert _segments(conn, spec.id) == 1
    live = dict(conn.execute(f"SELECT version, n_tokens FROM maxsim.{spec.token_table}").fetchall())
    assert _merged_versions(conn, spec.id) == live
    for k in (1003, 1110, 7):
        assert search_ids(conn, "sk", nd.query((docs | tail | more)[k]), 1, 6) == [k]


def test_a_full_compaction_held_off_by_an_open_transaction_rewrites_in_place(conn: psycopg.Connection[Any],
                                                                               dsn: str) -> None:
    """A session that searched and left its transaction open holds the lists: the swap does not wait
    for it (nor make every other search wait behind it) but rewrites in place, as before."""
    idx, nd, docs, spec = _trained(conn, 5, 200)
    oid_before, _ = _lists_part(conn, spec.id)
    with psycopg.connect(dsn) as other:   # not autocommit: the search's transaction stays open
        register_tokens(other)
        assert search_ids(other, "sk", nd.query(docs[9]), 1, 6) == [9]
        _compact_fully(conn, idx, nd, docs, 1000)
        other.rollback()
    assert _lists_part(conn, spec.id)[0] == oid_before
    for k in (9, 1010):
        assert search_ids(conn, "sk", nd.query(docs[k]), 1, 6) == [k]


def test_a_rewrite_waiting_for_its_swap_takes_the_merges_made_meanwhile(conn: psycopg.Connection[Any], dsn: str) -> None:
    """Merges in transactions that cannot swap (they wrote first) add their segments to the rewritten
    lists too; the swap, when it comes, loses none of them."""
    idx, nd, docs, spec = _trained(conn, 6, 200)
    oid_before, _ = _lists_part(conn, spec.id)
    nxt = conn.execute("SELECT maxsim._sk_next(%s, 0)", (spec.id,)).fetchone()[0]
    with psycopg.connect(dsn) as tx:
        def merge_without_swap() -> dict[str, Any]:
            tx.execute("SELECT pg_catalog.pg_current_xact_id()")   # this transaction has an id: no swap
            got = tx.execute("SELECT maxsim.first_stage_sketch_merge('sk')").fetchone()[0]
            tx.commit()
            return got
        for i in range(4 * sketch_lists.MAX_SEGMENTS):
            extra = nd.rows(40, start=1000 + 40 * i)
            write(idx, extra)
            docs |= extra
            if merge_without_swap().get("compacted") == "aside":
                break
        else:
            raise AssertionError("no full compaction")
        late = nd.rows(30, start=3001 - 30)
        write(idx, late)
        docs |= late
        got = merge_without_swap()
        assert got["rows"] == 30 and got["swap"] == "pending"
    in_next = {int(v) for b, o, k in conn.execute(f"SELECT base, offs, sk FROM maxsim.{nxt}")
               for v in sketch.unpack_versions(int(b), o, len(k) // 8)}
    late_versions = {v for (v,) in conn.execute(f"SELECT version FROM maxsim.{spec.token_table} WHERE id >= 2971")}
    assert late_versions and late_versions <= in_next
    assert sketch_lists.merge(conn, "sk") is not None   # swaps, then merges (nothing left)
    assert _lists_part(conn, spec.id)[0] != oid_before
    assert conn.execute("SELECT pg_catalog.to_regclass(%s)", (f"maxsim.{nxt}",)).fetchone()[0] is None
    versions = np.concatenate([sketch.unpack_versions(int(b), o, len(k) // 8) for b, o, k in conn.execute(
        f"SELECT base, offs, sk FROM maxsim.fs_sk_{spec.id}")])
    live = dict(conn.execute(f"SELECT version, n_tokens FROM maxsim.{spec.token_table}").fetchall())
    got_v, counts = np.unique(versions[np.isin(versions, list(live))], return_counts=True)
    assert dict(zip(got_v.tolist(), counts.tolist())) == live
    for k in (2980, 1003, 17):
        q = nd.query(docs[k])
        assert sk_top(conn, "sk", q, 10)[:5] == reference_top(conn, "sk", q, 10)[:5]
        assert search_ids(conn, "sk", q, 1, 6) == [k]


def test_writes_never_merge_the_workers_trainer_does(conn: psycopg.Connection[Any], dsn: str) -> None:
    from pgmaxsim.worker.train import Trainer

    idx = create(conn)
    nd = Needles(2)
    docs = nd.rows(200)
    write(idx, docs)
    codebook.train(conn, "sk")
    spec = get_index(conn, "sk")
    merged = f"SELECT count(*) FROM maxsim.fs_skrow_{spec.id}"
    more = nd.rows(100 + sketch_lists.threshold(200), start=201)
    write(idx, more)                                          # far past the threshold: the writer only writes
    conn.execute("SELECT maxsim.upsert('sk', 999::bigint, %s)", (Tokens(more[201]),))
    # (so much growth also calls for a retrain, which would rebuild the lists: not the point here)
    conn.execute("UPDATE maxsim.indexes SET options = options - 'fs_due' || '{\"fs_rows\": 557}' WHERE name = 'sk'")
    assert conn.execute(merged).fetchone()[0] == 200
    q = nd.query(more[205])
    assert 205 not in sk_top(conn, "sk", q, 10)
    trainer = Trainer(dsn, None)
    trainer.poke(force=True)                                  # a look of the running worker: a merge is due
    trainer.drain()
    trainer.stop()
    assert conn.execute(merged).fetchone()[0] == 200 + len(more) + 1 and trainer.merged == {"sk": len(more) + 1}
    assert sk_top(conn, "sk", q, 10)[0] == 205
    # under the threshold and just written: a look leaves them pending; --once (drain) merges them
    write(idx, nd.rows(5, start=1001))
    assert conn.execute("SELECT maxsim.first_stage_sketch_merge('sk', true)").fetchone()[0]["rows"] == 0
    trainer = Trainer(dsn, ["sk"])
    trainer.drain()
    trainer.stop()
    assert trainer.merged == {"sk": 5} and conn.execute(merged).fetchone()[0] == 200 + len(more) + 6
    assert trainer.settled == ["sk"] and _segments(conn, spec.id) == 1   # --once leaves the lists settled


def test_retrain_under_concurrent_needle_searches(conn: psycopg.Connection[Any]) -> None:
    idx = create(conn)
    nd = Needles(3)
    docs = nd.rows(300)
    write(idx, docs)
    codebook.train(conn, "sk")
    keys = list(docs)
    probes = [(k, nd.query(docs[k])) for k in keys[:6]]
    for k, q in probes:
        assert search_ids(conn, "sk", q, 1, 6) == [k]
    with search_during(conn.info.dsn, probes, lambda c, q: search_ids(c, "sk", q, 1, 6)) as run:
        for gen in (1, 2):
            assert codebook.train(conn, "sk", seed=gen).gen == gen
    assert not run.errors
    assert run.seen and all(got == [k] for k, got in run.seen)
    spec = get_index(conn, "sk")
    # only the live slot's lists remain, and the old slot's bytes went back at once (TRUNCATE)
    assert conn.execute(f"SELECT array_agg(DISTINCT slot) FROM maxsim.fs_sk_{spec.id}").fetchone()[0] == [0]
    assert conn.execute(f"SELECT array_agg(slot) FROM maxsim.fs_skm_{spec.id}").fetchone()[0] == [0]
    size = "SELECT pg_relation_size(maxsim._sk_part(%s, %s))"
    for kind in ("fs_sk_", "fs_skrow_"):
        assert conn.execute(size, (f"{kind}{spec.id}", 1)).fetchone()[0] == 0
        assert conn.execute(size, (f"{kind}{spec.id}", 0)).fetchone()[0] > 0


def test_scorer_and_in_backend_scoring_agree(conn: psycopg.Connection[Any], dsn: str) -> None:
    from pgmaxsim.scorer.server import Limits, Scorer, ScorerService
    from pgmaxsim.scorer.store import CpuBackend
    from test_scorer import _sock, _wait_sync, use_scorer

    idx = create(conn)
    nd = Needles(4)
    docs = nd.rows(200)
    write(idx, docs)
    codebook.train(conn, "sk")
    queries = [(k, nd.query(docs[k])) for k in list(docs)[:5]]
    backend = [conn.execute("SELECT id, score FROM maxsim.search('sk', %s, 5, 6)", (Tokens(q),)).fetchall() for _, q in queries]
    svc = ScorerService(Scorer(dsn, CpuBackend(), Limits(max_ids=500, max_query_tokens=64, max_k=100),
                               poll_interval=0.2), _sock()).start()
    try:
        _wait_sync(svc.scorer)
        use_scorer(conn, svc.address)
        served = svc.scorer.served["score"]
        scored = [conn.execute("SELECT id, score FROM maxsim.search('sk', %s, 5, 6)", (Tokens(q),)).fetchall() for _, q in queries]
        assert svc.scorer.served["score"] > served
    finally:
        use_scorer(conn, None)
        svc.stop()
    for (k, _), a, b in zip(queries, backend, scored):
        assert [r[0] for r in a] == [r[0] for r in b] and a[0][0] == str(k)
        np.testing.assert_allclose([r[1] for r in a], [r[1] for r in b], rtol=1e-4, atol=1e-4)


def test_without_plpython_the_codebook_gin_path_answers(embedded_dsn: str) -> None:
    with psycopg.connect(embedded_dsn, autocommit=True) as db:
        idx = create(db, n_src=300)
        nd = Needles(5)
        docs = nd.rows(120)
        write(idx, docs)
        codebook.train(db, "sk")   # the lists are built (client-side NumPy) but not read there
        tok = get_index(db, "sk").token_table
        assert {r[0] for r in db.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s AND indexdef ~ 'USING gin'",
                                         (tok,))} == {f"{tok}_codes_0_gin", f"{tok}_codes_1_gin"}   # this server's first stage
        k = list(docs)[3]
        q = nd.query(docs[k])
        assert sk_top(db, "sk", q, 10) == []
        assert search_ids(db, "sk", q, 1, 119) == [k]


def pending(db: psycopg.Connection[Any], name: str, key: int) -> bool:
    """Row ``key`` is not merged into the live slot's lists (its version is not in fs_skrow_<id>)."""
    spec = get_index(db, name)
    slot = int(spec.options["fs_gen"]) % 2
    return db.execute(f"SELECT NOT EXISTS (SELECT 1 FROM maxsim.fs_skrow_{spec.id} s JOIN maxsim.{spec.token_table} t"
                      f" ON t.version = s.version WHERE s.slot = %s AND t.id = %s)", (slot, key)).fetchone()[0]


def test_a_row_written_since_the_merge_is_found_at_budgets_the_sketch_could_fill(conn: psycopg.Connection[Any]) -> None:
    """Budgets at or below option sketch_top (10): the sketch's best rows could take every slot,
    and a row written since the last merge, which the lists cannot rank, would never be scored."""
    idx = create(conn)
    nd = Needles(6)
    docs = nd.rows(300)
    write(idx, docs)
    codebook.train(conn, "sk")
    fresh = nd.rows(1, start=301)
    write(idx, fresh)   # not merged: the worker's trainer has not run
    assert pending(conn, "sk", 301)
    q = nd.query(fresh[301])
    ref = {i: float(maxsim_reference(q, d)) for i, d in (docs | fresh).items()}
    assert max(ref, key=ref.get) == 301
    assert 301 not in sk_top(conn, "sk", q, 10)
    assert len(sk_top(conn, "sk", q, 10)) == 10   # the sketch alone has 10 rows to propose
    assert search_ids(conn, "sk", q, 10, 20)[0] == 301   # a budget the sketch leaves room in
    # (the sketch's 10 best rows took every slot of these budgets: 301 was never scored)
    for k, n in ((10, 10), (5, 5), (3, 3), (1, 4)):
        assert search_ids(conn, "sk", q, k, n)[0] == 301, (k, n)
    # the merged rows' needles keep their place at those budgets
    for m in list(docs)[:6]:
        assert search_ids(conn, "sk", nd.query(docs[m]), 1, 4) == [m]
    sketch_lists.merge(conn, "sk")
    assert not pending(conn, "sk", 301)
    assert search_ids(conn, "sk", q, 10, 10)[0] == 301


def test_past_the_pending_cap_the_probe_score_ranks_the_backlog(conn: psycopg.Connection[Any]) -> None:
    """More unmerged rows than maxsim._fs_candidates' cap (1,000): the lists rank the merged rows,
    and of the backlog only the best by the codebook's probe score over their codes are candidates (this
    PL/Python server has no GIN over the codes); the same rescoring must not let the sketch's rows
    fill the budget."""
    idx = create(conn, n_src=1400)
    nd = Needles(7)
    docs = nd.rows(150)
    write(idx, docs)
    codebook.train(conn, "sk")
    burst = nd.rows(1001, start=151)
    write(idx, burst)   # not merged
    spec = get_index(conn, "sk")
    assert conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = %s AND indexdef ~ 'USING gin'",
                        (spec.token_table,)).fetchone()[0] == 0
    other = conn.execute("SELECT maxsim._sk_candidates(%s, %s, 40, 1000)", (spec.id, Tokens(nd.query(docs[1])))).fetchone()[0]
    assert other is not None and len(other) <= 80   # past the cap, yet ranked: not the whole backlog
    key = 1000
    row = burst[key]   # a query of near-copies of its tokens only: one the probe score ranks well
    q = fp16(unit(row[nd.rng.choice(len(row), 6, replace=False)] + 0.15 * unit(nd.rng.standard_normal((6, DIM)))))
    got = [int(k) for k in conn.execute("SELECT maxsim._sk_candidates(%s, %s, 40, 1000)",
                                        (spec.id, Tokens(q))).fetchone()[0]]
    # past the cap: 40 by the sketch, and the backlog's best 40 by the codebook's probe score (NumPy
    # over the stored codes, as the pure-SQL path ranks them over its GIN)
    book = codebook.live(conn, spec)
    assert book is not None
    stored = dict(conn.execute(f"SELECT id, codes_{book.slot} FROM maxsim.{spec.token_table} WHERE id > 150").fetchall())
    keys = sorted(stored)
    lists = fs.InvertedLists.build(np.concatenate([np.asarray(stored[k], np.int64) for k in keys]),
                                   np.repeat(np.arange(len(keys)), [len(stored[k]) for k in keys]), book.cb.n_codes)
    pc, ps = fs.probe(book.cb, q, int(spec.options["nprobe"]), int(spec.options["coarse_probe"]))
    want = {keys[int(i)] for i in fs.candidates(lists, pc, ps, len(keys), 40)}
    backlog = [k for k in got if k > 150]
    assert 40 <= len(got) <= 80 and len(backlog) == 40
    assert len(set(backlog) & want) >= 38 and key in backlog   # near-ties at the 40th may fall either way
    ref = {i: float(maxsim_reference(q, d)) for i, d in (docs | burst).items()}
    assert max(ref, key=ref.get) == key
    assert search_ids(conn, "sk", q, 10, 20)[0] == key   # a budget the sketch leaves room in
    for k, n in ((10, 10), (3, 4)):
        assert search_ids(conn, "sk", q, k, n)[0] == key, (k, n)
    for m in list(docs)[:4]:
        assert search_ids(conn, "sk", nd.query(docs[m]), 1, 4) == [m]


def test_revision_0009_drops_the_codes_gin_where_plpython_is_and_search_goes_on(raw_dsn: str) -> None:
    """An index of revision 0008 (the codes' GIN on both slots) on a PL/Python server: the upgrade
    drops the GINs (nothing here reads them), the downgrade builds them again, and the index answers
    as before the upgrade."""
    from pgmaxsim.db import migrate

    def gins(tok: str) -> set[str]:
        with psycopg.connect(raw_dsn) as c:
            return {r[0] for r in c.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'maxsim'"
                                            " AND tablename = %s AND indexdef ~ 'USING gin'", (tok,))}

    migrate.upgrade(raw_dsn)
    nd = Needles(8)
    docs = nd.rows(200)
    with psycopg.connect(raw_dsn, autocommit=True) as db:
        idx = create(db, n_src=300)
        write(idx, docs)
        codebook.train(db, "sk")
        tok = get_index(db, "sk").token_table
    assert gins(tok) == set()
    migrate.downgrade(raw_dsn, "0008")
    assert gins(tok) == {f"{tok}_codes_0_gin", f"{tok}_codes_1_gin"}
    migrate.upgrade(raw_dsn)
    assert gins(tok) == set()
    with psycopg.connect(raw_dsn, autocommit=True) as db:
        register_tokens(db)
        for m in list(docs)[:6]:
            assert search_ids(db, "sk", nd.query(docs[m]), 1, 8) == [m]
