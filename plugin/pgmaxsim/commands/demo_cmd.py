"""``pgmaxsim demo``: the offline quickstart (see :mod:`pgmaxsim.demo`)."""

from __future__ import annotations

import argparse
from typing import Any

EPILOG = """\
examples:
  pgmaxsim demo                                  # embedded PostgreSQL, offline, CPU (about a minute)
  pgmaxsim demo --query "volcanoes" --query "git rebase"
  pgmaxsim demo --psql                           # then open psql on the demo's database
  pgmaxsim demo --serve                          # then the web search page on it (127.0.0.1:8000)
  pgmaxsim --dsn postgresql://u@host/db demo     # on your own server (needs pgvector)

The demo creates (and replaces on every run) table demo_documents and index demo.
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="offline quickstart: ingest a small bundled corpus, embed it, search it",
        description="Ingest the bundled corpus (36 passages + a 5-page PDF), index it with the offline"
        " MiniLM model, run the worker, print ranked results and the SQL to try next.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--table", default="demo_documents", help="table to (re)create (default: demo_documents)")
    p.add_argument("--index", default="demo", help="index to (re)create (default: demo)")
    p.add_argument("--query", action="append", metavar="TEXT", help="search these instead (repeatable)")
    p.add_argument("-k", type=int, default=3, help="results per query (default: 3)")
    p.add_argument("--psql", action="store_true", help="open psql on the demo's database afterwards")
    p.add_argument("--serve", action="store_true", help="then serve the web search page on the demo's index"
                   " (pgmaxsim serve; needs the web extra)")
    from pgmaxsim.commands.serve_cmd import add_arguments

    add_arguments(p, index=False)  # --host, --port of --serve
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pgmaxsim.demo import DEMO_QUERIES, open_psql, run_demo
    from pgmaxsim.errors import PgmaxsimError

    if args.k <= 0:
        raise PgmaxsimError(f"-k must be positive, got {args.k}")
    if args.psql and args.serve:
        raise PgmaxsimError("--psql and --serve both take over the terminal: choose one")
    if args.serve:
        from pgmaxsim.commands.serve_cmd import check
        from pgmaxsim.web.server import require_extra

        check(args)
        require_extra()  # before the demo's minute of work, not after it
    run_demo(args.dsn, table=args.table, index=args.index, queries=args.query or DEMO_QUERIES, k=args.k)
    if args.psql:
        return open_psql(args.dsn)
    if args.serve:
        from pgmaxsim.web.server import serve

        print()
        serve(args.dsn, index=args.index, host=args.host, port=args.port)
    return 0
