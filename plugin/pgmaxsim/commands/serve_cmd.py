"""``pgmaxsim serve``: the web search page on this database (see :mod:`pgmaxsim.web`)."""

from __future__ import annotations

import argparse
from typing import Any

EPILOG = """\
examples:
  pgmaxsim serve                                  # http://127.0.0.1:8000/ on the embedded server
  pgmaxsim serve --index docs --port 8080
  pgmaxsim --dsn postgresql://app@db/prod serve   # searches as role app: its privileges apply
  pgmaxsim demo --serve                           # the quickstart corpus, then this page on it

The page is read-only (every transaction is READ ONLY) and listens on 127.0.0.1
unless --host says otherwise. Bookmark searches as /?index=NAME&q=TEXT.
Needs the web extra: pip install 'pgmaxsim[web]'.
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="a web page to search the indexes (thumbnails, heatmaps, status)",
        description="Serve a search page over this database's indexes, as the role of the DSN, read-only.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser, *, index: bool = True) -> None:
    from pgmaxsim.web.server import DEFAULT_HOST, DEFAULT_PORT

    if index:
        p.add_argument("--index", "-i", metavar="NAME", help="index searched by default (default: the first)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")


def check(args: argparse.Namespace) -> None:
    from pgmaxsim.errors import PgmaxsimError

    if not 1 <= args.port <= 65535:
        raise PgmaxsimError(f"--port must be from 1 to 65535, got {args.port}")


def run(args: argparse.Namespace) -> int:
    from pgmaxsim.web.server import serve

    check(args)
    serve(args.dsn, index=args.index, host=args.host, port=args.port)
    return 0
