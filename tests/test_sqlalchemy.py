"""SQLAlchemy 2 integration against a real PostgreSQL: column type, maxsim_search/rerank, alembic ops."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pgmaxsim.sqlalchemy import HalfvecArray, maxsim_rerank, maxsim_search
from sqlalchemy import Integer, String, Text, create_engine, func, literal, select, text
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import NullPool

DIM = 8


class Base(DeclarativeBase):
    pass


class Page(Base):
    __tablename__ = "pages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    body: Mapped[str] = mapped_column(Text)
    tokens = mapped_column(HalfvecArray(DIM), nullable=True)


class Note(Base):
    __tablename__ = "notes"
    key: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tokens = mapped_column(HalfvecArray(DIM))


class Tag(Base):
    __tablename__ = "tags"
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    tokens = mapped_column(HalfvecArray(DIM))


def _engine(dsn: str) -> Any:
    return create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1), poolclass=NullPool)


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _ref(doc: np.ndarray, q: np.ndarray) -> float:
    """float64 MaxSim of the fp16-rounded arrays."""
    d = doc.astype(np.float16).astype(np.float64)
    qq = q.astype(np.float16).astype(np.float64)
    return float((qq @ d.T).max(axis=1).sum())


@pytest.fixture
def pages(dsn: str) -> tuple[Any, dict[int, np.ndarray]]:
    """Table ``pages`` (30 rows, 3-12 tokens each) and index ``pages`` over it (application-written)."""
    engine = _engine(dsn)
    Base.metadata.create_all(engine)
    rng = np.random.default_rng(7)
    docs = {i: _unit(rng, int(rng.integers(3, 13))) for i in range(1, 31)}
    with Session(engine) as s:
        s.add_all(Page(id=i, body=("even " if i % 2 == 0 else "odd ") + f"page {i}", tokens=t)
                  for i, t in docs.items())
        s.commit()
        s.execute(text("SELECT maxsim.create_index('pages', 'pages', 'id', dim => :d)"), {"d": DIM})
        # The application's own column is the source of the token embeddings.
        s.execute(select(func.maxsim.upsert("pages", Page.id, Page.tokens)))
        s.commit()
    yield engine, docs
    engine.dispose()


def test_column_type_roundtrip_numpy(pages: tuple[Any, dict[int, np.ndarray]]) -> None:
    engine, docs = pages
    with Session(engine) as s:
        got = {p.id: p.tokens for p in s.scalars(select(Page).order_by(Page.id))}
        assert set(got) == set(docs)
        for i, arr in got.items():
            assert isinstance(arr, np.ndarray) and arr.dtype == np.float16
            assert arr.shape == docs[i].shape
            np.testing.assert_array_equal(arr, docs[i].astype(np.float16))
        # NULL in and out, and an update through the ORM
        p = s.get(Page, 3)
        assert p is not None
        p.tokens = None
        s.commit()
        assert s.scalar(select(Page.tokens).where(Page.id == 3)) is None
        p.tokens = [[0.5] * DIM, [-0.25] * DIM]  # nested lists are accepted too
        s.commit()
        back = s.scalar(select(Page.tokens).where(Page.id == 3))
        np.testing.assert_array_equal(back, np.array([[0.5] * DIM, [-0.25] * DIM], dtype=np.float16))
    assert str(HalfvecArray(128).compile()) == "halfvec(128)[]"


def test_column_type_rejects_wrong_shapes(pages: tuple[Any, dict[int, np.ndarray]]) -> None:
    engine, _ = pages
    with Session(engine) as s:
        s.add(Page(id=100, body="bad", tokens=np.ones((2, DIM + 1))))
        with pytest.raises(StatementError, match="dim 9 bound to a halfvec\\(8\\)"):
            s.commit()
        s.rollback()
        s.add(Page(id=101, body="bad", tokens=np.ones(DIM)))
        with pytest.raises(StatementError, match="2-D"):
            s.commit()


def test_orm_query_joins_maxsim_search(pages: tuple[Any, dict[int, np.ndarray]]) -> None:
    engine, docs = pages
    q = _unit(np.random.default_rng(1), 4)
    ref = sorted(((_ref(d, q), i) for i, d in docs.items()), key=lambda t: (-t[0], t[1]))[:5]
    hits = maxsim_search("pages", q, k=5, candidates=1000, id_type=Page.id)
    stmt = select(Page, hits.c.score).join(hits, Page.id == hits.c.id).order_by(hits.c.score.desc())
    with Session(engine) as s:
        rows = s.execute(stmt).all()
    assert [p.id for p, _ in rows] == [i for _, i in ref]
    for (p, score), (want, _) in zip(rows, ref):
        assert isinstance(p, Page) and p.body.endswith(f"page {p.id}")
        assert score == pytest.approx(want, abs=2e-3)


def test_maxsim_search_default_candidates_and_text_ids(pages: tuple[Any, dict[int, np.ndarray]]) -> None:
    engine, docs = pages
    q = docs[17][:3]  # a query made of one page's own tokens finds that page first
    hits = maxsim_search("pages", q, k=3)  # id stays text without id_type
    with Session(engine) as s:
        rows = s.execute(select(hits.c.id, hits.c.score).order_by(hits.c.score.desc())).all()
    assert rows[0].id == "17" and len(rows) == 3


def test_rerank_over_a_where_clause_and_scalar_maxsim(pages: tuple[Any, dict[int, np.ndarray]]) -> None:
    engine, docs = pages
    q = _unit(np.random.default_rng(2), 3)
    even = [i for i in docs if i % 2 == 0]
    ref = sorted(((_ref(docs[i], q), i) for i in even), key=lambda t: (-t[0], t[1]))[:4]
    hits = maxsim_rerank("pages", q, select(Page.id).where(Page.body.like("even%")), k=4)
    with Session(engine) as s:
        rows = s.execute(select(Page.id, hits.c.score).join(hits, Page.id == hits.c.id)
                         .order_by(hits.c.score.desc())).all()
        assert [r.id for r in rows] == [i for _, i in ref]
        assert [r.score for r in rows] == pytest.approx([w for w, _ in ref], abs=2e-3)
        # a Python list of ids works too (typed by id_type), ids not in the index are ignored
        listed = maxsim_rerank("pages", q, [2, 4, 999], id_type=Integer)
        got = dict(s.execute(select(listed.c.id, listed.c.score)).all())
        assert set(got) == {2, 4}
        # the scalar form on the application's own column, in ORDER BY
        top = s.execute(select(Page.id, Page.tokens.maxsim(q).label("s"))
                        .where(Page.tokens.is_not(None)).order_by(text("s DESC")).limit(3)).all()
    best = sorted(((_ref(d, q), i) for i, d in docs.items()), key=lambda t: (-t[0], t[1]))[:3]
    assert [r.id for r in top] == [i for _, i in best]
    assert [r.s for r in top] == pytest.approx([w for w, _ in best], abs=2e-3)


def test_uuid_and_text_keys(dsn: str) -> None:
    engine = _engine(dsn)
    Base.metadata.create_all(engine)
    rng = np.random.default_rng(3)
    notes = {uuid.UUID(int=i + 1): _unit(rng, 4) for i in range(6)}
    tags = {f"tag '{i}\"": _unit(rng, 4) for i in range(6)}  # quotes in keys
    with Session(engine) as s:
        s.add_all(Note(key=k, tokens=v) for k, v in notes.items())
        s.add_all(Tag(name=k, tokens=v) for k, v in tags.items())
        s.commit()
        for name in ("notes", "tags"):
            s.execute(text("SELECT maxsim.create_index(:n, CAST(:src AS regclass), :c, dim => :d)"),
                      {"n": name, "src": name, "c": "key" if name == "notes" else "name", "d": DIM})
        s.execute(select(func.maxsim.upsert("notes", Note.key, Note.tokens)))
        s.execute(select(func.maxsim.upsert("tags", Tag.name, Tag.tokens)))
        s.commit()
        target_note = list(notes)[4]
        hits = maxsim_search("notes", notes[target_note], k=2, id_type=Note.key)
        got = s.execute(select(Note).join(hits, Note.key == hits.c.id).order_by(hits.c.score.desc())).scalars()
        assert next(iter(got)).key == target_note
        target_tag = list(tags)[2]
        hits = maxsim_search("tags", tags[target_tag], k=2, id_type=Tag.name)
        got = s.execute(select(Tag).join(hits, Tag.name == hits.c.id).order_by(hits.c.score.desc())).scalars()
        assert next(iter(got)).name == target_tag
    engine.dispose()


def test_alembic_operations_in_an_application_migration(dsn: str, tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    versions = tmp_path / "versions"
    versions.mkdir()
    (tmp_path / "env.py").write_text(textwrap.dedent("""
        from alembic import context
        import pgmaxsim.sqlalchemy  # registers op.create_maxsim_index / op.drop_maxsim_index

        conn = context.config.attributes["connection"]
        context.configure(connection=conn)
        with context.begin_transaction():
            context.run_migrations()
    """))
    (tmp_path / "script.py.mako").write_text("")
    (versions / "a1_docs.py").write_text(textwrap.dedent("""
        import sqlalchemy as sa
        from alembic import op

        revision = "a1"
        down_revision = None

        def upgrade():
            op.create_table("docs", sa.Column("id", sa.BigInteger, primary_key=True),
                            sa.Column("body", sa.Text))
            op.execute("INSERT INTO docs VALUES (1, 'alpha'), (2, 'beta')")
            op.create_maxsim_index("docs_text", "docs", "id", text_column="body",
                                   model="sentence-transformers/all-MiniLM-L6-v2",
                                   options={"pooling": "mean"})
            op.create_maxsim_index("docs_app", "docs", dim=16)

        def downgrade():
            op.drop_maxsim_index("docs_app")
            op.drop_maxsim_index("docs_text")
            op.drop_table("docs")
    """))
    cfg = Config()
    cfg.set_main_option("script_location", str(tmp_path))
    engine = _engine(dsn)
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        conn.commit()
        rows = conn.execute(text("SELECT name, model, dim, pooling FROM maxsim.indexes ORDER BY name")).all()
        assert [tuple(r) for r in rows] == [("docs_app", None, 16, "codebook"),
                                            ("docs_text", "sentence-transformers/all-MiniLM-L6-v2", 384, "mean")]
        queued = conn.execute(text("SELECT count(*) FROM maxsim.queue q JOIN maxsim.indexes i"
                                   " ON i.id = q.index_id WHERE i.name = 'docs_text'")).scalar()
        assert queued == 2  # existing rows were queued for the worker
        command.downgrade(cfg, "base")
        conn.commit()
        assert conn.execute(text("SELECT count(*) FROM maxsim.indexes")).scalar() == 0
        assert conn.execute(text("SELECT to_regclass('docs')")).scalar() is None
    engine.dispose()


def test_alembic_create_op_reverses_to_drop() -> None:
    from pgmaxsim.sqlalchemy import CreateMaxsimIndexOp, DropMaxsimIndexOp

    op = CreateMaxsimIndexOp("x", "t", "id", dim=4)
    rev = op.reverse()
    assert isinstance(rev, DropMaxsimIndexOp) and rev.name == "x" and rev.reverse() is op
    with pytest.raises(ValueError, match="cannot be reversed"):
        DropMaxsimIndexOp("x").reverse()


def test_text_query_goes_through_encode_query(pages: tuple[Any, dict[int, np.ndarray]]) -> None:
    engine, docs = pages
    with Session(engine) as s:
        # An index with a model; its query encoding for 'page seven' is in the query cache (as a
        # client that encoded it would leave it), so maxsim.encode_query answers without a scorer.
        s.execute(text("SELECT maxsim.create_index('pages_m', 'pages', 'id', text_column => 'body',"
                       " model => 'text:some/model', dim => :d)"), {"d": DIM})
        s.execute(select(func.maxsim.upsert("pages_m", Page.id, Page.tokens)))
        s.execute(select(func.maxsim.cache_query("pages_m", "page seven", literal(docs[7], HalfvecArray()))))
        s.commit()
        hits = maxsim_search("pages_m", "page seven", k=1, id_type=Page.id)
        top = s.execute(select(Page.body).join(hits, Page.id == hits.c.id)).scalar_one()
    assert top == "odd page 7"
