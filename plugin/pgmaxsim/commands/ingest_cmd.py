"""``pgmaxsim ingest PATH…``: files and folders of PDFs, images and text into a table.

The table's layout and the chunking rules: :mod:`pgmaxsim.ingest`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pgmaxsim import registry
from pgmaxsim.errors import PgmaxsimError
from pgmaxsim.ingest import (
    DEFAULT_CHUNK_CHARS,
    DEFAULT_DPI,
    DEFAULT_TABLE,
    collect_files,
    ingest,
)

EPILOG = """\
examples:
  pgmaxsim ingest report.pdf scans/ notes.md            # into table "documents"
  pgmaxsim ingest docs/ --table pages --index pages     # and create index "pages" (default model)
  pgmaxsim ingest docs/ --index pages --embed           # ... and embed now (worker --once)
  pgmaxsim ingest slides.pdf --index visual --model vidore/colqwen2.5-v0.2 --dim 128

Supported: .pdf; images (.png .jpg .jpeg .gif .bmp .tif .tiff .webp); text (.txt .md .markdown .rst).
Folders are walked recursively; other files in them are skipped (and counted).
"""


# ---------------------------------------------------------------- command

def register(sub: Any) -> None:
    p = sub.add_parser(
        "ingest",
        help="load PDFs (one row per page), images and text files into a table",
        description=__doc__.split("\n\n")[0] + " One row per PDF page (with its image and text), per text"
        " chunk, per image; the table is created when missing.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    p.add_argument("--table", default=DEFAULT_TABLE, help=f"target table, [schema.]name (default: {DEFAULT_TABLE})")
    p.add_argument("--dpi", type=int, default=DEFAULT_DPI, help=f"PDF render resolution (default: {DEFAULT_DPI})")
    p.add_argument("--chunk-chars", type=int, default=DEFAULT_CHUNK_CHARS,
                   help=f"max characters per text chunk; 0 = one row per text file (default: {DEFAULT_CHUNK_CHARS})")
    p.add_argument("--index", help="also create this index over the table when it does not exist")
    p.add_argument("--model", help="model of the new --index (default: the offline MiniLM)")
    p.add_argument("--dim", type=int, help="embedding dim of the new --index (default: the model's)")
    p.add_argument("--pooling", help="pooling of the new --index (see `pgmaxsim index create --help`)")
    p.add_argument("--embed", action="store_true", help="run the worker until the queue is empty (worker --once)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pgmaxsim.commands.index_cmd import embed_now
    from pgmaxsim.db.connect import connect, resolve_dsn
    from pgmaxsim.display import progress

    if args.dpi <= 0:
        raise PgmaxsimError(f"--dpi must be positive, got {args.dpi}")
    if args.embed and not args.index:
        raise PgmaxsimError("--embed needs --index NAME (the index to embed into)")
    files, _ = collect_files(args.paths)  # fail fast on a missing path, before connecting
    del files
    dsn = resolve_dsn(args.dsn)
    with connect(dsn) as conn:
        if args.index:
            registry.check_model_name(args.model)
        report = ingest(conn, args.table, args.paths, dpi=args.dpi, chunk_chars=args.chunk_chars,
                        progress=lambda n: progress(n, "ingest", "file"))
        c = report.counts
        print(f"table {args.table}{' (created)' if report.created else ''}: {report.files} file(s), "
              f"{report.pages} row(s): {c.inserted} new, {c.updated} changed, {c.unchanged} unchanged"
              + (f", {c.removed} removed" if c.removed else "")
              + (f"; {report.skipped} unsupported file(s) skipped" if report.skipped else ""))
        for err in report.errors:
            print(f"pgmaxsim: {err}", file=sys.stderr)
        if args.index:
            if registry.index_exists(conn, args.index):
                print(f"index {args.index} exists: changed rows are queued for its worker")
            else:
                registry.create_index(conn, args.index, args.table, "id", **registry.columns_for_model(args.model),
                                      model=args.model, dim=args.dim, pooling=args.pooling)
                print(f"index {args.index} created over {args.table} (model {args.model or 'default'});"
                      " its rows are queued")
    if args.embed:
        embed_now(dsn, [args.index])
    elif args.index:
        print("next: pgmaxsim worker --once   (embeds the queued rows), then"
              f" pgmaxsim search \"…\" --index {args.index}")
    return 1 if report.errors else 0
