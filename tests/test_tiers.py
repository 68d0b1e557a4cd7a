"""Storage tiers and token pooling (revision 0007): what is stored is one bytea per row in the
tier's layout, and every path scores exactly that (float64 reference of the dequantized stored
tokens), on PostgreSQL 15 + PL/Python and on the embedded PostgreSQL 18 (pure SQL)."""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg
import pytest
from pgmaxsim import Index, pooling
from pgmaxsim.db import migrate
from pgmaxsim.db.adapters import Tokens, register_tokens
from pgmaxsim.kernels import quantize
from pgmaxsim.kernels.reference import maxsim_reference

DIM = 16


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def fp16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float16).astype(np.float32)


def corpus(n: int, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    topics = unit(rng.standard_normal((8, DIM)))
    return {i + 1: fp16(unit(topics[rng.integers(0, 8, m)] + 0.3 * rng.standard_normal((m, DIM))))
            for i, m in enumerate(rng.integers(2, 30, n))}


def has_py(db: psycopg.Connection[Any]) -> bool:
    return bool(db.execute("SELECT maxsim.has_plpython()").fetchone()[0])


def create(db: psycopg.Connection[Any], storage: str, factor: int, name: str = "t_idx",
           pooling_: str = "centroids") -> None:
    db.execute(f"CREATE TABLE IF NOT EXISTS src_{name} (id bigint PRIMARY KEY)")
    db.execute(f"INSERT INTO src_{name} SELECT g FROM generate_series(1, 200) g ON CONFLICT DO NOTHING")
    db.execute("SELECT maxsim.create_index(%s, %s::regclass, 'id', dim => %s, options => %s::jsonb)",
               (name, f"src_{name}", DIM,
                f'{{"storage": "{storage}", "pool_factor": {factor}, "pooling": "{pooling_}"}}'))


def stored(db: psycopg.Connection[Any], name: str, storage: str) -> dict[int, tuple[np.ndarray, int, int]]:
    tok = db.execute("SELECT token_table FROM maxsim.indexes WHERE name = %s", (name,)).fetchone()[0]
    rows = db.execute(f"SELECT id, tokens, n_tokens, n_raw_tokens FROM maxsim.{tok}").fetchall()
    return {k: (quantize.dequantize(*quantize.decode_tokens(bytes(b), DIM, storage)), n, raw)
            for k, b, n, raw in rows}


TIERS = [("fp16", 1), ("fp16", 3), ("int8", 1), ("int8", 4)]


@pytest.mark.parametrize(("storage", "factor"), TIERS)
def test_every_path_scores_what_is_stored(db: psycopg.Connection[Any], storage: str, factor: int) -> None:
    py = has_py(db)
    if storage == "int8" and not py:
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="int8.*plpython3u"):
            create(db, storage, factor)
        return
    create(db, storage, factor)
    docs = corpus(30)
    keys = list(docs)
    # half through SQL (maxsim.upsert, encoded in the server), half through the Python writer
    sql_keys = keys[::2] if (py or factor == 1) else []
    for k in sql_keys:
        db.execute("SELECT maxsim.upsert('t_idx', %s::bigint, %s)", (k, Tokens(docs[k])))
    Index(db, "t_idx").upsert([k for k in keys if k not in sql_keys], [docs[k] for k in keys if k not in sql_keys])
    got = stored(db, "t_idx", storage)
    assert sorted(got) == keys
    for k, (tokens, n, raw) in got.items():
        expect = quantize.encode_tokens(pooling.pool_tokens(docs[k], factor), storage)
        assert n == pooling.pooled_count(len(docs[k]), factor) and raw == len(docs[k])
        assert np.array_equal(tokens, quantize.dequantize(*quantize.decode_tokens(expect, DIM, storage))), k
    rng = np.random.default_rng(5)
    for _ in range(3):
        q = fp16(unit(rng.standard_normal((4, DIM))))
        ref = sorted(((maxsim_reference(q, got[k][0]), k) for k in keys), key=lambda t: (-t[0], t[1]))
        res = db.execute("SELECT id, score FROM maxsim.search('t_idx', %s, 10, 1000)", (Tokens(q),)).fetchall()
        assert [int(i) for i, _ in res] == [k for _, k in ref[:10]]
        assert [s for _, s in res] == pytest.approx([s for s, _ in ref[:10]], rel=1e-4, abs=1e-3)
        rr = dict(db.execute("SELECT id, score FROM maxsim.rerank('t_idx', %s, %s::bigint[])",
                             (Tokens(q), keys[:7])).fetchall())
        assert rr == pytest.approx({k: maxsim_reference(q, got[k][0]) for k in keys[:7]}, rel=1e-4, abs=1e-3)
        # the default (ANN) search returns rows scored exactly as stored
        for i, s in db.execute("SELECT id, score FROM maxsim.search('t_idx', %s, 5)", (Tokens(q),)).fetchall():
            assert s == pytest.approx(maxsim_reference(q, got[int(i)][0]), rel=1e-4, abs=1e-3)
    back = db.execute("SELECT maxsim.tokens('t_idx', 3::bigint)").fetchone()[0]
    assert np.array_equal(np.asarray(back, dtype=np.float32), fp16(got[3][0]))


def test_a_row_shorter_than_the_pool_factor_keeps_its_mean(db: psycopg.Connection[Any]) -> None:
    create(db, "fp16", 4)
    two = fp16(unit(np.array([[1.0] + [0.0] * (DIM - 1), [0.0, 1.0] + [0.0] * (DIM - 2)])))
    Index(db, "t_idx").upsert([1], [two])
    (tokens, n, raw), = stored(db, "t_idx", "fp16").values()
    assert (n, raw) == (1, 2)
    assert np.allclose(tokens[0], unit(two.mean(axis=0, keepdims=True))[0], atol=1e-3)


@pytest.mark.parametrize("storage,factor", TIERS)
def test_every_tier_refuses_the_values_fp16_cannot_hold(dsn: str, storage: str, factor: int) -> None:
    """The writer checks a row's range instead of converting it to fp16: the same values pass and
    fail on every tier, as converting to fp16 says (65,519.99 rounds to 65,504; 65,520
    overflows), and a refused row writes nothing. (The check is the Python writer's, the same on
    both kinds of server; int8 needs plpython3u.)"""
    from pgmaxsim import PgmaxsimError

    with psycopg.connect(dsn, autocommit=True) as db:
        create(db, storage, factor, name=f"range_{storage}_{factor}")
        idx = Index(db, f"range_{storage}_{factor}")
        ok = fp16(unit(np.ones((4, DIM))))
        for k, v in enumerate([65519.99, -65519.99, 60000, 65520.0, -65520.0, np.inf, -np.inf, np.nan]):
            row = ok.astype(np.float64)
            row[2, 3] = v
            with np.errstate(over="ignore"):
                fits = bool(np.isfinite(np.float16(v)))
            if fits:
                idx.upsert([k + 1], [row])
                continue
            with pytest.raises(PgmaxsimError, match=rf"row {k + 1}: .*NaN or infinite values \(or values beyond fp16"):
                idx.upsert([k + 1], [row])
        assert sorted(stored(db, f"range_{storage}_{factor}", storage)) == [1, 2, 3]
        half = ok.astype(np.float16)   # what most encoders give: checked by its bits
        idx.upsert([4], [half])
        for k, v in [(5, np.nan), (6, np.inf), (7, -np.inf)]:
            bad = half.copy()
            bad[1, 1] = v
            with pytest.raises(PgmaxsimError, match=f"row {k}: .*NaN or infinite values"):
                idx.upsert([k], [bad])
        assert sorted(stored(db, f"range_{storage}_{factor}", storage)) == [1, 2, 3, 4]
        big = np.full((4, DIM), 70000, dtype=np.int64)
        with pytest.raises(PgmaxsimError, match="beyond fp16 range"):
            idx.upsert([9], [big])
        with pytest.raises(PgmaxsimError, match="row 9: embeddings must be real numbers, got dtype complex"):
            idx.upsert([9], [ok + 1j])


def test_index_info_reports_tier_and_bytes_as_the_catalog(db: psycopg.Connection[Any]) -> None:
    create(db, "fp16", 2)
    docs = corpus(40, seed=3)
    Index(db, "t_idx").upsert(list(docs), list(docs.values()))
    info = db.execute("SELECT storage, pool_factor, bytes, bytes_per_row, rows, id FROM maxsim.index_info('t_idx')"
                      ).fetchone()
    iid = info[5]
    catalog = db.execute("SELECT pg_total_relation_size(%s::regclass) + pg_total_relation_size(%s::regclass)",
                         (f"maxsim.tok_{iid}", f"maxsim.cen_{iid}")).fetchone()[0]
    assert info[:2] == ("fp16", 2)
    assert info[2] == catalog and info[4] == 40 and info[3] == round(catalog / 40)
    assert db.execute("SELECT attstorage FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'tokens'",
                      (f"maxsim.tok_{iid}",)).fetchone()[0] == "e"


@pytest.mark.parametrize("first", ["codebook", "centroids"])
def test_index_info_reports_the_first_stages_bytes_apart(dsn: str, first: str) -> None:
    from pgmaxsim import codebook

    with psycopg.connect(dsn, autocommit=True) as db:
        register_tokens(db)
        create(db, "int8", 1, pooling_=first)
        docs = corpus(60, seed=4)
        Index(db, "t_idx").upsert(list(docs), list(docs.values()))
        if first == "codebook":
            codebook.train(db, "t_idx")
        total, fs_bytes, iid, tok = db.execute(
            "SELECT bytes, first_stage_bytes, id, token_table FROM maxsim.index_info('t_idx')").fetchone()
        # the codebook's, sketch lists' and pending rows' tables (sql/idempotent/035_firststage.sql, 034_sketch.sql)
        names = [f"cen_{iid}"] if first == "centroids" else [t for (t,) in db.execute(
            "SELECT relname FROM pg_class WHERE relname ~ %s AND relkind = 'r'", (f"^(fs_[a-z_]+|skpend)_{iid}$",))]
        indexes = [f"{tok}_codes_0_gin", f"{tok}_codes_1_gin", f"{tok}_uncoded_0", f"{tok}_uncoded_1"]
        catalog = sum(db.execute("SELECT pg_total_relation_size(%s::regclass)", (f"maxsim.{t}",)).fetchone()[0]
                      for t in names)
        catalog += sum(db.execute("SELECT coalesce(pg_relation_size(to_regclass(%s)), 0)", (f"maxsim.{t}",)).fetchone()[0]
                       for t in indexes)
        assert fs_bytes == catalog and 0 < fs_bytes < total
        assert total - fs_bytes >= db.execute("SELECT pg_total_relation_size(reltoastrelid) FROM pg_class"
                                              " WHERE oid = %s::regclass", (f"maxsim.{tok}",)).fetchone()[0]


@pytest.mark.parametrize(("options", "message"), [
    ('{"storage": "int4"}', 'option storage must be "fp16" or "int8"'),
    ('{"storage": 8}', 'option storage must be "fp16" or "int8"'),
    ('{"pool_factor": 0}', "option pool_factor must be an integer between 1 and 64, got 0"),
    ('{"pool_factor": 2.5}', "option pool_factor must be an integer between 1 and 64"),
    ('{"pool_factor": "2"}', "option pool_factor must be an integer between 1 and 64"),
    ('{"packed": true}', 'unknown option "packed"'),
])
def test_bad_tier_options_are_one_clear_error(db: psycopg.Connection[Any], options: str, message: str) -> None:
    db.execute("CREATE TABLE bad (id int PRIMARY KEY)")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message.replace("(", r"\(")):
        db.execute("SELECT maxsim.create_index('bad_idx', 'bad', 'id', dim => 4, options => %s::jsonb)", (options,))


def test_pure_sql_upsert_refuses_pooling_with_a_clear_error(embedded_dsn: str) -> None:
    with psycopg.connect(embedded_dsn, autocommit=True) as db:
        register_tokens(db)
        create(db, "fp16", 2)
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="pool_factor 2.*plpython3u"):
            db.execute("SELECT maxsim.upsert('t_idx', 1::bigint, %s)", (Tokens(corpus(1)[1]),))


# ------------------------------------------------------------------ upgrade from revision 0006

OLD_TABLE = """
CREATE TABLE maxsim.tok_{i} (
  id bigint PRIMARY KEY,
  tokens halfvec({d})[] NOT NULL CONSTRAINT tokens_valid CHECK (CASE WHEN cardinality(tokens) = 0
    OR array_ndims(tokens) <> 1 THEN false ELSE array_position(tokens, NULL) IS NULL END),
  n_tokens integer NOT NULL,
  tokens_packed bytea,
  pooled halfvec({d}),
  model text, model_revision text, content_hash bytea,
  version bigint NOT NULL DEFAULT nextval('maxsim.version_seq'),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT n_tokens_valid CHECK (n_tokens = cardinality(tokens)),
  CONSTRAINT tokens_packed_valid CHECK (length(tokens_packed) = n_tokens * {b}));
ALTER TABLE maxsim.tok_{i} ALTER COLUMN tokens SET STORAGE EXTERNAL, ALTER COLUMN tokens_packed SET STORAGE EXTERNAL;
CREATE INDEX tok_{i}_pooled_hnsw ON maxsim.tok_{i} USING hnsw (pooled halfvec_ip_ops);
"""


def test_an_fp16_index_of_revision_0006_keeps_working_after_the_upgrade(raw_dsn: str) -> None:
    migrate.upgrade(raw_dsn, "0006")
    docs = corpus(12, seed=9)
    with psycopg.connect(raw_dsn, autocommit=True) as db:
        register_tokens(db)
        db.execute("CREATE TABLE old_src (id bigint PRIMARY KEY)")
        db.execute("INSERT INTO old_src SELECT g FROM generate_series(1, 12) g")
        iid = db.execute(
            "INSERT INTO maxsim.indexes (name, source, id_column, id_type, dim, pooling, options, token_table)"
            " VALUES ('old_idx', 'old_src', 'id', 'bigint', %s, 'mean', %s::jsonb, 'pending') RETURNING id",
            (DIM, ('{"candidates": 64, "ef_search": 64, "probe": 64, "rescore": 4, "max_centroids": 16,'
                   ' "tokens_per_centroid": 64, "hnsw_m": 16, "hnsw_ef_construction": 64, "packed": true}'))
        ).fetchone()[0]
        db.execute("UPDATE maxsim.indexes SET token_table = %s WHERE id = %s", (f"tok_{iid}", iid))
        db.execute(OLD_TABLE.format(i=iid, d=DIM, b=2 * DIM))
        for k, d in docs.items():  # odd rows without the packed copy (pure-SQL writers left it NULL)
            db.execute(f"INSERT INTO maxsim.tok_{iid} (id, tokens, n_tokens, tokens_packed, pooled)"
                       " VALUES (%s, %s, %s, %s, %s::halfvec)",
                       (k, Tokens(d), len(d), d.astype("<f2").tobytes() if k % 2 == 0 else None,
                        "[" + ",".join(map(str, unit(d.mean(axis=0, keepdims=True))[0])) + "]"))
    migrate.upgrade(raw_dsn)
    with psycopg.connect(raw_dsn, autocommit=True) as db:
        register_tokens(db)
        got = stored(db, "old_idx", "fp16")
        for k, d in docs.items():
            assert np.array_equal(got[k][0], d) and got[k][1:] == (len(d), len(d))
        info = db.execute("SELECT storage, pool_factor, options ? 'packed' FROM maxsim.index_info('old_idx')").fetchone()
        assert info == ("fp16", 1, False)
        q = fp16(unit(np.random.default_rng(2).standard_normal((3, DIM))))
        ref = sorted(((maxsim_reference(q, d), k) for k, d in docs.items()), key=lambda t: (-t[0], t[1]))
        res = db.execute("SELECT id, score FROM maxsim.search('old_idx', %s, 5, 100)", (Tokens(q),)).fetchall()
        assert [int(i) for i, _ in res] == [k for _, k in ref[:5]]
        assert [s for _, s in res] == pytest.approx([s for s, _ in ref[:5]], rel=1e-4, abs=1e-3)
        Index(db, "old_idx").upsert([99], [docs[1]])  # new writes in the new layout
        db.execute("SELECT maxsim.upsert('old_idx', 98::bigint, %s)", (Tokens(docs[2]),))
        assert len(stored(db, "old_idx", "fp16")) == 14
    # and back: revision 0006's halfvec[] + packed copy, equal to what was stored
    migrate.downgrade(raw_dsn, "0006")
    with psycopg.connect(raw_dsn, autocommit=True) as db:
        register_tokens(db)
        rows = db.execute(f"SELECT id, tokens, tokens_packed, n_tokens FROM maxsim.tok_{iid} WHERE id <= 12").fetchall()
        for k, tokens, packed, n in rows:
            assert np.array_equal(np.asarray(tokens, dtype=np.float32), docs[k]) and n == len(docs[k])
            assert bytes(packed) == docs[k].astype("<f2").tobytes()
        assert db.execute("SELECT options FROM maxsim.indexes WHERE id = %s", (iid,)).fetchone()[0]["packed"] is True


# ------------------------------------------------------------------ reindex --storage / --pool-factor

def test_reindex_to_int8_and_pooling_answers_across_the_switch(dsn: str) -> None:
    import threading

    from pgmaxsim.retier import retier

    docs = corpus(60, seed=11)
    with psycopg.connect(dsn, autocommit=True) as db:
        register_tokens(db)
        create(db, "fp16", 1)
        Index(db, "t_idx").upsert(list(docs), list(docs.values()))
        old_tok = db.execute("SELECT token_table FROM maxsim.index_info('t_idx')").fetchone()[0]
        q = fp16(unit(np.random.default_rng(4).standard_normal((4, DIM))))
        errors: list[BaseException] = []
        counts: list[int] = []
        stop = threading.Event()

        def searcher() -> None:
            with psycopg.connect(dsn, autocommit=True) as c:
                register_tokens(c)
                while not stop.is_set():
                    try:
                        for cand in (None, 1000):   # ANN + exact over every row
                            counts.append(len(c.execute("SELECT * FROM maxsim.search('t_idx', %s, 5, %s)",
                                                        (Tokens(q), cand)).fetchall()))
                    except BaseException as e:  # noqa: BLE001 - any error is the failure
                        errors.append(e)
                        return

        threads = [threading.Thread(target=searcher) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            done = retier(db, "t_idx", storage_tier="int8", pool_factor=3)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not errors, errors
        assert counts and min(counts) == 5
        assert (done.rows, done.storage, done.pool_factor) == (60, "int8", 3)
        assert done.bytes_after < done.bytes_before   # tiny rows: page and HNSW overheads dominate
        # the old storage is gone: one token table and one centroid table left, no shadow in the registry
        assert db.execute("SELECT count(*) FROM maxsim.indexes").fetchone()[0] == 1
        assert db.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'maxsim'"
                          " AND tablename ~ '^(tok|cen)_'").fetchone()[0] == 2
        assert db.execute("SELECT token_table FROM maxsim.index_info('t_idx')").fetchone()[0] == old_tok
        got = stored(db, "t_idx", "int8")
        for k, d in docs.items():
            expect = quantize.encode_tokens(pooling.pool_tokens(d, 3), "int8")
            assert np.array_equal(got[k][0], quantize.dequantize(*quantize.decode_tokens(expect, DIM, "int8")))
            assert got[k][1:] == (pooling.pooled_count(len(d), 3), len(d))
        ref = sorted(((maxsim_reference(q, got[k][0]), k) for k in docs), key=lambda t: (-t[0], t[1]))
        res = db.execute("SELECT id, score FROM maxsim.search('t_idx', %s, 5, 1000)", (Tokens(q),)).fetchall()
        assert [int(i) for i, _ in res] == [k for _, k in ref[:5]]
        assert [s for _, s in res] == pytest.approx([s for s, _ in ref[:5]], rel=1e-4, abs=1e-3)
        # writes after the switch use the new tier; the stored tokens no longer suffice to go back
        Index(db, "t_idx").upsert([1], [docs[2]])
        assert stored(db, "t_idx", "int8")[1][1] == pooling.pooled_count(len(docs[2]), 3)
        from pgmaxsim import PgmaxsimError

        with pytest.raises(PgmaxsimError, match="int8 tokens, which do not hold the fp16 values"):
            retier(db, "t_idx", storage_tier="fp16")
        with pytest.raises(PgmaxsimError, match="pooled by 3: pool factor 2 needs the raw tokens"):
            retier(db, "t_idx", pool_factor=2)
        with pytest.raises(PgmaxsimError, match="pool factor must be an integer of at least 1"):
            retier(db, "t_idx", pool_factor=0)
        with pytest.raises(PgmaxsimError, match="already stores int8 with pool factor 3"):
            retier(db, "t_idx", storage_tier="int8")


def test_cli_show_and_reindex_storage(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    from pgmaxsim.cli import main

    docs = corpus(10, seed=12)
    with psycopg.connect(dsn, autocommit=True) as db:
        create(db, "fp16", 1)
        Index(db, "t_idx").upsert(list(docs), list(docs.values()))
        nbytes = db.execute("SELECT bytes FROM maxsim.index_info('t_idx')").fetchone()[0]

    def cli(*argv: str) -> tuple[int, str, str]:
        code = main(["--dsn", dsn, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = cli("index", "show", "t_idx")
    assert code == 0 and "fp16, pool factor 1" in out
    from pgmaxsim.display import human_bytes

    assert f"bytes         {human_bytes(nbytes)} (" in out and "per row" in out
    code, out, err = cli("index", "reindex", "t_idx", "--storage", "int8", "--pool-factor", "2")
    assert code == 0 and "10 row(s) now stored as int8, pool factor 2" in out, out + err
    code, out, _ = cli("index", "show", "t_idx")
    assert code == 0 and "int8, pool factor 2" in out
    code, out, err = cli("index", "reindex", "t_idx", "--storage", "fp16")
    assert code != 0 and "do not hold the fp16 values" in err


def test_the_owner_of_the_source_reindexes_as_a_granted_role(dsn: str) -> None:
    """reindex --storage needs no schema owner: every read, write and the switch go through entry
    points that check the caller manages the index; a role that does not is refused."""
    import uuid

    from pgmaxsim.retier import retier
    from psycopg.conninfo import make_conninfo

    tag = uuid.uuid4().hex[:8]
    owner, other = f"rt_owner_{tag}", f"rt_other_{tag}"
    docs = corpus(30, seed=41)
    with psycopg.connect(dsn, autocommit=True) as su:
        for role in (owner, other):
            su.execute(f'CREATE ROLE "{role}" LOGIN')
            su.execute("SELECT maxsim.grant_usage(%s)", (role,))
        su.execute(f'GRANT CREATE ON SCHEMA public TO "{owner}"')
        try:
            with psycopg.connect(make_conninfo(dsn, user=owner), autocommit=True) as app, \
                    psycopg.connect(make_conninfo(dsn, user=other), autocommit=True) as out:
                register_tokens(app)
                create(app, "fp16", 1, name="g_idx")
                Index(app, "g_idx").upsert(list(docs), list(docs.values()))
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                    retier(out, "g_idx", storage_tier="int8")
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                    out.execute("SELECT maxsim.read_rows('g_idx', 0, 10)")
                done = retier(app, "g_idx", storage_tier="int8", pool_factor=2)
                assert (done.rows, done.storage, done.pool_factor) == (30, "int8", 2)
                got = stored(su, "g_idx", "int8")
                for k, d in docs.items():
                    expect = quantize.encode_tokens(pooling.pool_tokens(d, 2), "int8")
                    assert np.array_equal(got[k][0], quantize.dequantize(*quantize.decode_tokens(expect, DIM, "int8")))
                assert su.execute("SELECT count(*) FROM maxsim.indexes WHERE name LIKE 'g_idx%'").fetchone() == (1,)
                q = fp16(unit(np.random.default_rng(5).standard_normal((4, DIM))))
                ref = sorted(((maxsim_reference(q, got[k][0]), k) for k in docs), key=lambda t: (-t[0], t[1]))
                res = app.execute("SELECT id, score FROM maxsim.search('g_idx', %s, 5, 1000)", (Tokens(q),)).fetchall()
                assert [int(i) for i, _ in res] == [k for _, k in ref[:5]]
        finally:
            su.execute("SELECT maxsim.drop_index(name) FROM maxsim.indexes WHERE name LIKE 'g_idx%'")
            for role in (owner, other):
                su.execute(f'DROP OWNED BY "{role}" CASCADE')
                su.execute(f'DROP ROLE IF EXISTS "{role}"')


@pytest.mark.parametrize(("storage", "factor"), [("int8", 1), ("fp16", 2)])
def test_the_scorer_serves_the_stored_tier(dsn: str, storage: str, factor: int) -> None:
    from pgmaxsim.scorer.client import ScorerClient
    from pgmaxsim.scorer.server import Limits, Scorer, ScorerService
    from pgmaxsim.scorer.store import CpuBackend
    from test_scorer import _sock, _wait_sync, use_scorer

    docs = corpus(40, seed=21)
    with psycopg.connect(dsn, autocommit=True) as db:
        register_tokens(db)
        create(db, storage, factor)
        Index(db, "t_idx").upsert(list(docs), list(docs.values()))
        got = stored(db, "t_idx", storage)
        iid = db.execute("SELECT id FROM maxsim.index_info('t_idx')").fetchone()[0]
        svc = ScorerService(Scorer(dsn, CpuBackend(), Limits(max_ids=500, max_query_tokens=64, max_k=100),
                                   poll_interval=0.2), _sock()).start()
        try:
            _wait_sync(svc.scorer)
            q = fp16(unit(np.random.default_rng(8).standard_normal((5, DIM))))
            ref = sorted(((maxsim_reference(q, got[k][0]), k) for k in docs), key=lambda t: (-t[0], t[1]))
            with ScorerClient(svc.address) as c:
                snap = db.execute("SELECT pg_current_snapshot()::text").fetchone()[0]
                rep = c.search(iid, q, 10, snap)
            assert [int(i) for i in rep.ids] == [k for _, k in ref[:10]]
            # the store holds the tier it reads: int8 codes + scales (half the bytes), or fp16
            buf = svc.scorer.stores[iid].buf
            n_tok = sum(len(got[k][0]) for k in docs)
            assert buf.tokens.dtype == (np.int8 if storage == "int8" else np.float16)
            assert buf.size == n_tok
            assert (buf.scales is not None) == (storage == "int8")
            assert rep.scores.tolist() == pytest.approx([s for s, _ in ref[:10]], rel=1e-3, abs=1e-3)
            use_scorer(db, svc.address)
            before = svc.scorer.served["search"]
            res = db.execute("SELECT id, score FROM maxsim.search('t_idx', %s, 10, 1000)", (Tokens(q),)).fetchall()
            assert svc.scorer.served["search"] > before
            assert [int(i) for i, _ in res] == [k for _, k in ref[:10]]
        finally:
            svc.stop()


def test_reindex_keeps_every_write_made_while_it_runs(dsn: str) -> None:
    import threading

    from pgmaxsim.retier import retier

    docs = corpus(120, seed=31)
    with psycopg.connect(dsn, autocommit=True) as db:
        register_tokens(db)
        create(db, "fp16", 1)
        Index(db, "t_idx").upsert(list(docs), list(docs.values()))
        last = dict(docs)
        errors: list[BaseException] = []
        stop = threading.Event()

        def writer() -> None:
            rng = np.random.default_rng(3)
            with psycopg.connect(dsn, autocommit=True) as c:
                register_tokens(c)
                idx = Index(c, "t_idx")   # its registry row read once, before the switch
                while not stop.is_set():
                    k = int(rng.integers(1, 121))
                    t = fp16(unit(rng.standard_normal((int(rng.integers(2, 20)), DIM))))
                    try:
                        if k % 2:   # the Python writer (binary COPY), and maxsim.upsert
                            idx.upsert([k], [t])
                        else:
                            c.execute("SELECT maxsim.upsert('t_idx', %s::bigint, %s)", (k, Tokens(t)))
                        last[k] = t
                        if k % 7 == 0:
                            c.execute("DELETE FROM src_t_idx WHERE id = %s", (k,))   # the source row goes
                            last.pop(k, None)
                    except BaseException as e:  # noqa: BLE001 - any error is the failure
                        errors.append(e)
                        return

        w = threading.Thread(target=writer)
        w.start()
        try:
            retier(db, "t_idx", storage_tier="int8")
        finally:
            stop.set()
            w.join()
        assert not errors, errors
        got = stored(db, "t_idx", "int8")
        assert sorted(got) == sorted(last)
        for k, t in last.items():
            expect = quantize.dequantize(*quantize.decode_tokens(quantize.encode_tokens(t, "int8"), DIM, "int8"))
            assert np.array_equal(got[k][0], expect), k


def test_streamed_writes_codes_and_all_or_nothing(dsn: str) -> None:
    """write_rows encodes rows as the COPY sends them: the codes it streams (binary int4[]) are the
    first stage's codes of the stored tokens, and a bad row anywhere in a batch still fails it
    before anything is written."""
    from pgmaxsim import PgmaxsimError, codebook
    from pgmaxsim.registry import get_index

    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute("CREATE TABLE src_stream (id bigint PRIMARY KEY)")
        db.execute("INSERT INTO src_stream SELECT g FROM generate_series(1, 200) g")
        db.execute("SELECT maxsim.create_index('stream_idx', 'src_stream', 'id', dim => %s, options =>"
                   " '{\"storage\": \"int8\", \"pool_factor\": 2, \"first_stage\": \"codebook\", \"train_tokens\": 64}')",
                   (DIM,))
        docs = corpus(40, seed=3)
        idx = Index(db, "stream_idx")
        idx.upsert(list(docs), list(docs.values()))
        codebook.train(db, "stream_idx")
        idx = Index(db, "stream_idx")
        idx.upsert(list(docs), [d[::-1] for d in docs.values()])   # rewritten under the trained codebook
        spec = get_index(db, "stream_idx")
        book = codebook.live(db, spec)
        assert book is not None
        col = codebook.column(book.slot)
        rows = db.execute(f"SELECT id, tokens, {col}, version FROM maxsim.{spec.token_table} ORDER BY id").fetchall()
        assert len(rows) == len(docs)
        for k, blob, codes, _ in rows:
            values = quantize.dequantize(*quantize.decode_tokens(bytes(blob), DIM, "int8"))
            assert codes == codebook.row_codes(book, values), k
        before = {k: v for k, _, _, v in rows}
        bad = [docs[1], docs[2], np.full((3, DIM), np.nan, dtype=np.float32), docs[4]]
        with pytest.raises(PgmaxsimError, match="row 3: .*NaN"):
            idx.upsert([1, 2, 3, 4], bad)
        after = dict(db.execute(f"SELECT id, version FROM maxsim.{spec.token_table}").fetchall())
        assert after == before
