"""maxsim.explain and pgmaxsim.explain against a real PostgreSQL: the per-token scores are the terms
of the row's MaxSim on every scoring path (PL/Python, pure SQL on the embedded PostgreSQL 18, the
scorer service), storage tier and key type; the stored layout gives patch cells and character spans;
the rights and row-level security rules are search's."""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg
import pytest
from pgmaxsim import Index
from pgmaxsim import explain as explaining
from pgmaxsim.db.adapters import Tokens, register_tokens
from pgmaxsim.encoders.layout import (
    NO_CELL,
    NOT_IMAGE,
    decode_layout,
    encode_layout,
    image_layout,
    text_layout,
)
from pgmaxsim.errors import PgmaxsimError
from pgmaxsim.writes import write_rows

DIM = 16
# fp16 tolerance of a sum of up to ~10 terms, each an fp16 dot product
TOL = {"rel": 2e-3, "abs": 2e-3}


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def rows_of(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [unit(rng.standard_normal((int(m), DIM))) for m in rng.integers(3, 40, n)]


def make(db: psycopg.Connection[Any], name: str, key: str, storage: str = "fp16", factor: int = 1,
         n: int = 12) -> tuple[list[Any], list[np.ndarray]]:
    db.execute(f"CREATE TABLE src_{name} (id {key} PRIMARY KEY, body text)")
    ids: list[Any] = list(range(1, n + 1)) if key != "text" else [f"doc '{i}'" for i in range(1, n + 1)]
    with db.cursor() as cur:
        cur.executemany(f"INSERT INTO src_{name} (id) VALUES (%s)", [(i,) for i in ids])
    db.execute("SELECT maxsim.create_index(%s, %s::regclass, 'id', dim => %s, options => %s::jsonb)",
               (name, f"src_{name}", DIM, f'{{"storage": "{storage}", "pool_factor": {factor}}}'))
    docs = rows_of(n, seed=len(name))
    Index(db, name).upsert(ids, docs)
    return ids, docs


def explain_rows(db: psycopg.Connection[Any], name: str, q: np.ndarray, id: Any) -> list[tuple[Any, ...]]:
    # psycopg sends str as unknown, which a polymorphic argument cannot take: say text
    cast = "::text" if isinstance(id, str) else ""
    return db.execute("SELECT query_token, doc_token, score, patch_row, patch_col, char_start, char_end"
                      f" FROM maxsim.explain(%s, %s, %s{cast})", (name, Tokens(q), id)).fetchall()


@pytest.mark.parametrize("key", ["bigint", "text"])
def test_scores_sum_to_the_rows_maxsim_on_every_path(db: psycopg.Connection[Any], key: str) -> None:
    ids, docs = make(db, "ex", key)
    q = unit(np.random.default_rng(5).standard_normal((7, DIM)))
    found = db.execute("SELECT id, score FROM maxsim.search('ex', %s, 5, 1000)", (Tokens(q),)).fetchall()
    assert len(found) == 5
    for sid, score in found:
        rows = explain_rows(db, "ex", q, sid)
        assert [r[0] for r in rows] == list(range(7))
        assert sum(r[2] for r in rows) == pytest.approx(score, **TOL)
        # each term is that query token's best similarity to the stored (fp16) tokens, at doc_token
        doc = docs[[str(i) for i in ids].index(sid)].astype(np.float16).astype(np.float32)
        sim = q.astype(np.float16).astype(np.float32) @ doc.T
        assert [r[2] for r in rows] == pytest.approx(sim.max(axis=1).tolist(), **TOL)
        assert all(sim[r[0], r[1]] == pytest.approx(sim[r[0]].max(), **TOL) for r in rows)
        assert all(r[3:] == (None, None, None, None) for r in rows)   # upsert: no layout
        cast = "::text" if key == "text" else "::bigint"
        direct = db.execute(f"SELECT maxsim.maxsim(maxsim.tokens('ex', %s{cast}), %s)", (sid, Tokens(q))).fetchone()[0]
        assert sum(r[2] for r in rows) == pytest.approx(direct, **TOL)
    # typed key through the Python API too, equal to rerank's score
    typed = ids[3]
    ex = Index(db, "ex").explain(q, typed)
    (rid, rscore), = db.execute(f"SELECT id, score FROM maxsim.rerank('ex', %s, ARRAY[%s]::{key}[])",
                                (Tokens(q), typed)).fetchall()
    assert ex.id == typed == rid and ex.score == pytest.approx(rscore, **TOL)
    assert ex.kind is None and ex.matches[0].text is None
    # Python explains the row as SQL does
    rows = explain_rows(db, "ex", q, typed)
    assert [m.doc_token for m in ex.matches] == [r[1] for r in rows]
    assert [m.score for m in ex.matches] == pytest.approx([r[2] for r in rows], **TOL)


def test_int8_and_pooled_rows_explain_their_stored_tokens(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as db:
        register_tokens(db)
        make(db, "i8", "bigint", storage="int8")
        make(db, "pool", "bigint", factor=2)
        q = unit(np.random.default_rng(6).standard_normal((5, DIM)))
        for name in ("i8", "pool"):
            for sid, score in db.execute("SELECT id, score FROM maxsim.search(%s, %s, 4, 1000)",
                                         (name, Tokens(q))).fetchall():
                assert sum(r[2] for r in explain_rows(db, name, q, int(sid))) == pytest.approx(score, **TOL)
        notices: list[str] = []
        db.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        explain_rows(db, "pool", q, 1)
        assert any("token pooling (pool_factor 2)" in m for m in notices), notices


@pytest.mark.parametrize("storage", ["fp16", "int8"])
def test_the_scorer_path_agrees(dsn: str, storage: str) -> None:
    from pgmaxsim.scorer.server import Limits, Scorer, ScorerService
    from pgmaxsim.scorer.store import CpuBackend
    from test_scorer import _sock, _wait_sync, use_scorer

    with psycopg.connect(dsn, autocommit=True) as db:
        register_tokens(db)
        make(db, "sc", "text", storage=storage)
        svc = ScorerService(Scorer(dsn, CpuBackend(), Limits(max_ids=500, max_query_tokens=64, max_k=100),
                                   poll_interval=0.2), _sock()).start()
        try:
            _wait_sync(svc.scorer)
            use_scorer(db, svc.address)
            q = unit(np.random.default_rng(7).standard_normal((6, DIM)))
            before = svc.scorer.served["search"]
            found = db.execute("SELECT id, score FROM maxsim.search('sc', %s, 5, 1000)", (Tokens(q),)).fetchall()
            assert svc.scorer.served["search"] > before
            for sid, score in found:
                assert sum(r[2] for r in explain_rows(db, "sc", q, sid)) == pytest.approx(score, **TOL)
        finally:
            use_scorer(db, None)
            svc.stop()


def test_layouts_give_patches_and_spans(db: psycopg.Connection[Any]) -> None:
    ids, docs = make(db, "lay", "bigint", n=3)
    spec = Index(db, "lay").info
    n0, n1 = len(docs[0]), len(docs[1])
    # row 1: 2 prompt tokens, a 3 x 4 grid filled row-major from its last tokens, 1 thumbnail token
    cells = np.full(n0, NOT_IMAGE)
    cells[2:14] = np.arange(12)
    cells[14] = NO_CELL
    # row 2: each token spans 3 characters, the first one none
    spans = np.array([[-1, -1]] + [[3 * i, 3 * i + 2] for i in range(1, n1)])
    write_rows(db, spec, ids[:2], docs[:2], layouts=[image_layout((3, 4), cells), text_layout(spans)])
    q = docs[0][[5, 13, 0]] + 0.0
    rows = explain_rows(db, "lay", q, 1)
    assert [r[1] for r in rows] == [5, 13, 0]
    assert [r[3:5] for r in rows] == [(0, 3), (2, 3), (None, None)]
    lay = db.execute("SELECT doc_token, token_kind, patch_row, patch_col FROM maxsim.layout('lay', 1)").fetchall()
    assert len(lay) == n0 and lay[0][1] == "prompt" and lay[14][1] == "thumbnail" and lay[2] == (2, "patch", 0, 0)
    rows = explain_rows(db, "lay", docs[1][[0, 4]] + 0.0, 2)
    assert [r[5:] for r in rows] == [(None, None), (12, 14)]
    # the Python view: similarity map on the grid, text segments
    ex = Index(db, "lay").explain(q, 1)
    assert ex.kind == "image" and ex.grid == (3, 4)
    assert [(m.query_token, m.doc_token, m.patch_row, m.patch_col, m.char_start) for m in ex.matches] == \
        [(r[0], r[1], r[3], r[4], r[5]) for r in explain_rows(db, "lay", q, 1)]
    m = ex.patch_map(0)
    assert m.shape == (3, 4) and m[0, 3] == pytest.approx(1.0, abs=2e-3) and np.nanargmax(m) == 3
    ex2 = Index(db, "lay").explain(docs[1][[4]] + 0.0, 2)
    assert ex2.kind == "text" and (ex2.matches[0].char_start, ex2.matches[0].char_end) == (12, 14)
    text = "".join(chr(97 + i % 26) * 3 for i in range(n1))
    segs = explaining.text_segments(text, ex2)
    assert "".join(s for s, _ in segs) == text and [s for s, v in segs if v is not None] == [text[12:14]]
    with pytest.raises(PgmaxsimError, match="no patch grid"):
        ex2.patch_map()
    # read-only, as on a hot standby (no writes, no transaction id)
    with db.transaction():
        db.execute("SET TRANSACTION READ ONLY")
        assert len(explain_rows(db, "lay", q, 1)) == 3
        assert db.execute("SELECT pg_current_xact_id_if_assigned()").fetchone()[0] is None
    # upsert without a layout removes the row's old one
    db.execute("SELECT maxsim.upsert('lay', 1::bigint, %s)", (Tokens(docs[0]),))
    assert db.execute("SELECT count(*) FROM maxsim.layout('lay', 1)").fetchone()[0] == 0


def test_layout_codec_round_trip_and_bad_layouts(db: psycopg.Connection[Any]) -> None:
    lay = image_layout((2, 2), np.array([-1, 0, 1, 2, 3, -2]))
    back = decode_layout(encode_layout(lay))
    assert back.grid == (2, 2) and back.cells.tolist() == [-1, 0, 1, 2, 3, -2]
    assert decode_layout(encode_layout(text_layout(np.array([[0, 2], [-1, -1]])))).span_of(0) == (0, 2)
    with pytest.raises(PgmaxsimError, match="out of range"):
        image_layout((2, 2), np.array([4]))
    ids, docs = make(db, "bad", "bigint", n=1)
    with pytest.raises(PgmaxsimError, match="layout describes 3 tokens"):
        write_rows(db, Index(db, "bad").info, ids, docs, layouts=[text_layout(np.zeros((3, 2)))])


def test_hidden_rows_are_refused_like_missing_ones(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as db:
        register_tokens(db)
        _, docs = make(db, "rls", "bigint", n=4)
        db.execute("DROP ROLE IF EXISTS ex_reader")
        db.execute("CREATE ROLE ex_reader LOGIN")
        db.execute("SELECT maxsim.grant_usage('ex_reader')")
        db.execute("GRANT SELECT ON src_rls TO ex_reader")
        db.execute("ALTER TABLE src_rls ENABLE ROW LEVEL SECURITY")
        db.execute("CREATE POLICY odd ON src_rls FOR SELECT TO ex_reader USING (id % 2 = 1)")
        db.execute("CREATE TABLE src_secret (id bigint PRIMARY KEY)")
        db.execute("INSERT INTO src_secret VALUES (1)")
        db.execute("SELECT maxsim.create_index('secret', 'src_secret', 'id', dim => %s)", (DIM,))
        Index(db, "secret").upsert([1], [docs[0]])
        q = docs[0][:2] + 0.0
        db.execute("SET ROLE ex_reader")
        try:
            assert len(explain_rows(db, "rls", q, 1)) == 2          # visible
            errors = []
            for name, id in (("rls", 2), ("rls", 99)):              # hidden, missing: one answer
                with pytest.raises(psycopg.errors.NoDataFound) as e:
                    explain_rows(db, name, q, id)
                errors.append(str(e.value).replace(str(id), "N"))
            assert errors[0] == errors[1]
            for fn in ("layout", "stored_row"):
                with pytest.raises(psycopg.errors.NoDataFound):
                    db.execute(f"SELECT * FROM maxsim.{fn}('rls', 2::bigint)").fetchall()
            with pytest.raises(PgmaxsimError, match="has no row 2"):
                Index(db, "rls").explain(q, 2)
            assert Index(db, "rls").explain(q, 3).score > 0
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not SELECT"):
                explain_rows(db, "secret", q, 1)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="internal"):
                db.execute("SELECT maxsim._explain_row(1, '1')")
        finally:
            db.execute("RESET ROLE")


def test_heatmap_lights_the_matching_patches() -> None:
    from PIL import Image

    # a 4 x 5 grid; query token 0 matches cell (1, 3) best, token 1 cell (3, 0)
    cells = np.concatenate([[-1], np.arange(20), [-2]])
    sim = np.zeros((2, 22), dtype=np.float32)
    sim[0, 1 + 1 * 5 + 3] = 0.9
    sim[1, 1 + 3 * 5 + 0] = 0.7
    ex = explaining.Explanation(1, [], kind="image", grid=(4, 5), cells=cells, similarity=sim)
    page = Image.new("RGB", (500, 400), "white")
    one = np.asarray(explaining.heatmap(page, ex, token=0)).astype(int)
    both = np.asarray(explaining.heatmap(page, ex)).astype(int)
    assert one.shape == (400, 500, 3)

    def tint(img: np.ndarray, row: int, col: int) -> int:   # how far the cell's centre is from white
        return int(np.abs(img[row * 100 + 50, col * 100 + 50] - 255).sum())

    assert tint(one, 1, 3) > 100 and tint(one, 3, 0) < 10 and tint(one, 0, 0) < 10
    assert tint(both, 1, 3) > 100 and tint(both, 3, 0) > 50
    with pytest.raises(PgmaxsimError, match="out of range"):
        explaining.heatmap(page, ex, token=2)


def test_reindex_keeps_layouts_unless_it_pools(dsn: str) -> None:
    from pgmaxsim.retier import retier

    with psycopg.connect(dsn, autocommit=True) as db:
        register_tokens(db)
        ids, docs = make(db, "re", "bigint", n=2)
        spans = np.array([[2 * i, 2 * i + 1] for i in range(len(docs[0]))])
        write_rows(db, Index(db, "re").info, ids[:1], docs[:1], layouts=[text_layout(spans)])
        q = docs[0][[3]] + 0.0
        retier(db, "re", storage_tier="int8")
        assert explain_rows(db, "re", q, 1)[0][1] == 3
        assert explain_rows(db, "re", q, 1)[0][5:] == (6, 7)
        retier(db, "re", pool_factor=2)
        assert db.execute("SELECT count(*) FROM maxsim.layout('re', 1)").fetchone()[0] == 0
