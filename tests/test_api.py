"""``pgmaxsim.Index`` as applications use it: text / image / array queries, filters, source rows, pools."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pgmaxsim
import psycopg
import pytest
from pgmaxsim.demo import corpus_dir
from pgmaxsim.encoders import load_encoder
from pgmaxsim.encoders.text import DEFAULT_MODEL_NAME
from pgmaxsim.errors import PgmaxsimError
from pgmaxsim.ingest import chunk_text
from pgmaxsim.search import Hit, encoder_for

PASSAGES = chunk_text((corpus_dir() / "field-notes.txt").read_text())


@pytest.fixture(scope="module")
def minilm() -> Any:
    return encoder_for(DEFAULT_MODEL_NAME)  # the same cached encoder Index uses


@pytest.fixture
def notes(conn: psycopg.Connection[Any], minilm: Any) -> pgmaxsim.Index:
    """Table ``notes`` (36 passages; odd ids 'science', even 'life') with index ``notes`` (MiniLM)."""
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY, topic text, title text, body text, extra bytea)")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO notes VALUES (%s, %s, %s, %s, %s)",
                        [(i, "science" if i % 2 else "life", p.splitlines()[0], p, b"\x00\x01")
                         for i, p in enumerate(PASSAGES, start=1)])
    idx = pgmaxsim.Index.create(conn, "notes", "notes", "id", text_column="body", model=DEFAULT_MODEL_NAME)
    # Embed with the model here (what the worker would do) so the test needs no worker.
    idx.upsert(list(range(1, len(PASSAGES) + 1)), minilm.encode_documents(PASSAGES), model=DEFAULT_MODEL_NAME)
    return idx


def title_id(title: str) -> int:
    return next(i for i, p in enumerate(PASSAGES, start=1) if p.startswith(title))


def test_text_query_finds_the_known_item(notes: pgmaxsim.Index) -> None:
    hits = notes.search("what makes the ocean rise and fall twice a day", k=3)
    assert isinstance(hits[0], Hit) and hits[0].id == title_id("What causes the tides")
    assert hits[0] == (hits[0].id, hits[0].score)  # still a plain (id, score) pair
    assert hits[0].row is None
    assert hits[0].score > hits[1].score > hits[2].score > 0


def test_rows_when_asked(notes: pgmaxsim.Index) -> None:
    hits = notes.search("the waggle dance of honeybees", k=2, rows=True)
    assert hits[0].row is not None and hits[0].row["title"].startswith("How honeybees tell")
    assert set(hits[0].row) == {"id", "topic", "title", "body", "extra"} and hits[0].row["id"] == hits[0].id
    assert bytes(hits[0].row["extra"]) == b"\x00\x01"
    some = notes.search("the waggle dance of honeybees", k=2, rows=["title"])
    assert set(some[0].row) == {"title"}


def test_filter_as_sql_with_params_and_as_mapping(notes: pgmaxsim.Index) -> None:
    q = "lava and ash from a crater"
    volcano = title_id("Why some volcanoes explode")
    assert volcano % 2 == 0  # a 'life' row (even id), so the filters below matter
    assert notes.search(q, k=1)[0].id == volcano
    sci = notes.search(q, k=5, filter="topic = 'science'")
    assert len(sci) == 5 and all(h.id % 2 == 1 for h in sci)
    assert notes.search(q, k=5, filter="topic = %s AND id > %s", params=("life", 20)) == \
        [h for h in notes.search(q, k=40, candidates=1000) if h.id % 2 == 0 and h.id > 20][:5]
    mapped = notes.search(q, k=3, filter={"topic": ["life"], "id": volcano}, rows=["topic"])
    assert [h.id for h in mapped] == [volcano] and mapped[0].row == {"topic": "life"}
    assert notes.search(q, k=3, filter="title LIKE 'How%'")  # a literal % needs no escaping without params


def test_broad_filter_path_equals_exact(notes: pgmaxsim.Index) -> None:
    q = "gardening in the home"
    exact = [h for h in notes.search(q, k=40, candidates=1000) if h.id != 3][:4]
    notes.filter_rerank_limit = 5  # 35 rows match: too many to rerank, so search + post-filter
    got = notes.search(q, k=4, candidates=1000, filter="id <> 3")
    assert got == exact


def test_array_query_and_scores_match_maxsim(notes: pgmaxsim.Index, minilm: Any,
                                             conn: psycopg.Connection[Any]) -> None:
    q = minilm.encode_query("rules for the first moves of a chess game")
    hits = notes.search(q, k=1, candidates=1000)
    assert hits[0].id == title_id("Principles of the chess opening")
    doc = minilm.encode_documents([PASSAGES[hits[0].id - 1]])[0].astype(np.float16).astype(np.float64)
    ref = (q.astype(np.float16).astype(np.float64) @ doc.T).max(axis=1).sum()
    assert hits[0].score == pytest.approx(ref, abs=1e-2)


def test_bad_queries_are_clear_errors(notes: pgmaxsim.Index, conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(PgmaxsimError, match="query text is empty"):
        notes.search("   ")
    with pytest.raises(PgmaxsimError, match="384"):
        notes.search(np.ones((2, 8)))
    with pytest.raises(PgmaxsimError, match="filter: .*column \"nope\" does not exist"):
        notes.search("x", filter="nope = 1")
    from PIL import Image

    with pytest.raises(PgmaxsimError, match="takes text only"):
        notes.search(Image.new("RGB", (32, 32)))
    conn.execute("CREATE TABLE app (id int PRIMARY KEY)")
    app = pgmaxsim.Index.create(conn, "app", "app", "id", dim=4)
    with pytest.raises(PgmaxsimError, match="has no model"):
        app.search("text needs a model")
    with pytest.raises(PgmaxsimError, match="does not exist"):
        pgmaxsim.Index(conn, "missing").search("x")


def test_cache_query_lets_sql_encode_query_answer(notes: pgmaxsim.Index, conn: psycopg.Connection[Any]) -> None:
    tokens = notes.cache_query("lightning in the mountains")
    row = conn.execute("SELECT s.id FROM maxsim.search('notes', maxsim.encode_query('notes',"
                       " 'lightning in the mountains'), 1) s").fetchone()
    assert row == (str(title_id("Staying safe in a thunderstorm")),)
    assert tokens.shape[1] == 384
    n = conn.execute("SELECT maxsim.clear_query_cache('notes')").fetchone()
    assert n == (1,)


def test_image_query_through_an_image_model(conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    from encoders_tiny import build_colqwen2_5
    from PIL import Image

    model_dir = build_colqwen2_5(tmp_path / "tiny-colqwen")
    model = f"colqwen2_5:{model_dir}"
    enc = load_encoder(model)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(4)]
    conn.execute("CREATE TABLE scans (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), image bytea)")
    ids = [r[0] for r in conn.execute("INSERT INTO scans (image) SELECT NULL FROM generate_series(1, 4)"
                                      " RETURNING id").fetchall()]
    idx = pgmaxsim.Index.create(conn, "scans", "scans", "id", image_column="image", model=model, dim=enc.dim,
                                pooling="mean")
    idx.upsert(ids, enc.encode_documents(images))
    hits = idx.search(images[2], k=1, candidates=100)
    assert hits[0].id == ids[2]


def test_pool_and_threads(notes: pgmaxsim.Index, dsn: str) -> None:
    pool_mod = pytest.importorskip("psycopg_pool", reason="psycopg-pool is not installed")
    with pool_mod.ConnectionPool(dsn, min_size=2, max_size=4, open=True) as pool:
        idx = pgmaxsim.Index(pool, "notes")
        want = idx.search("coffee grind size", k=1, rows=["title"])
        assert want[0].row["title"].startswith("Brewing coffee")
        results: list[Any] = []

        def work() -> None:
            results.append(idx.search("coffee grind size", k=1))

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [[want[0]]] * 4


def test_index_over_a_connection_used_from_threads(notes: pgmaxsim.Index, dsn: str) -> None:
    # A psycopg connection is thread-safe (serialised); Index adds no state of its own per query.
    results: list[Any] = []
    with psycopg.connect(dsn, autocommit=True) as c:
        idx = pgmaxsim.Index(c, "notes")

        def work(q: str) -> None:
            results.append((q, idx.search(q, k=1)[0].id))

        qs = ["knots for climbing", "kimchi fermentation", "solar panel efficiency", "octopus camouflage"]
        threads = [threading.Thread(target=work, args=(q,)) for q in qs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    got = dict(results)
    assert got["kimchi fermentation"] == title_id("Fermenting kimchi")
    assert got["octopus camouflage"] == title_id("The intelligence of the octopus")


# ---------------------------------------------------------------- maxsim.encode_query from SQL

def test_encode_query_without_a_scorer_says_what_to_start(notes: pgmaxsim.Index,
                                                          conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    conn.execute("SELECT maxsim.set_scorer(%s)", (str(tmp_path / "no-scorer.sock"),))
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as info:
        conn.execute("SELECT maxsim.encode_query('notes', 'where do glaciers come from')")
    msg = info.value.diag
    assert msg.message_primary is not None and "needs the scorer service, which is not reachable at" in \
        msg.message_primary
    assert msg.message_hint is not None and "pgmaxsim scorer" in msg.message_hint
    # the query cache answers without the scorer, and the result searches like the client's encoding
    notes.cache_query("where do glaciers come from")
    row = conn.execute("SELECT s.id::int FROM maxsim.search('notes',"
                       " maxsim.encode_query('notes', 'where do glaciers come from'), 1) s").fetchone()
    assert row == (title_id("How glaciers form and move"),)


def test_encode_query_errors(notes: pgmaxsim.Index, conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.UndefinedObject, match='index "nope" does not exist'):
        conn.execute("SELECT maxsim.encode_query('nope', 'x')")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="query text is empty"):
        conn.execute("SELECT maxsim.encode_query('notes', '  ')")
    conn.execute("CREATE TABLE app2 (id int PRIMARY KEY)")
    conn.execute("SELECT maxsim.create_index('app2', 'app2', 'id', dim => 4)")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match='index "app2" has no model'):
        conn.execute("SELECT maxsim.encode_query('app2', 'x')")
    with pytest.raises(psycopg.errors.DataException, match="query token vectors have 2 dimensions"):
        conn.execute("SELECT maxsim.cache_query('notes', 'q', ARRAY['[1,2]']::halfvec[])")


def test_encode_query_on_a_server_without_plpython(embedded_dsn: str, minilm: Any) -> None:
    with psycopg.connect(embedded_dsn, autocommit=True) as c:
        assert c.execute("SELECT maxsim.has_plpython()").fetchone() == (False,)
        c.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        c.cursor().executemany("INSERT INTO notes VALUES (%s, %s)", list(enumerate(PASSAGES[:6], start=1)))
        idx = pgmaxsim.Index.create(c, "notes", "notes", "id", text_column="body", model=DEFAULT_MODEL_NAME)
        idx.upsert(list(range(1, 7)), minilm.encode_documents(PASSAGES[:6]))
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as info:
            c.execute("SELECT maxsim.encode_query('notes', 'sea level and the moon')")
        assert "no plpython3u here" in str(info.value) and "not in the query cache" in str(info.value)
        idx.cache_query("sea level and the moon")
        row = c.execute("SELECT s.id FROM maxsim.search('notes', maxsim.encode_query('notes',"
                        " 'sea level and the moon'), 1) s").fetchone()
        assert row == ("3",)  # "What causes the tides"
