"""The ``pgmaxsim`` command: parses arguments, calls the library, prints.

Each subcommand lives in ``pgmaxsim/commands/<name>.py`` with
``register(subparsers)``; this module only wires them and turns every
:class:`PgmaxsimError` into one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pgmaxsim.errors import PgmaxsimError

# Order is the order shown in --help.
COMMANDS = ["migrate", "index", "ingest", "worker", "scorer", "search", "status", "bench", "demo"]

EPILOG = """\
examples:
  pgmaxsim migrate                         # install/upgrade the maxsim schema (embedded server by default)
  pgmaxsim demo                            # offline quickstart on the embedded server
  pgmaxsim --dsn postgresql://u@host/db worker --once
  DATABASE_URL=postgresql://u@host/db pgmaxsim search "revenue by region" --index docs -k 5

Without --dsn or DATABASE_URL, pgmaxsim starts its embedded PostgreSQL 18
(data under the user's data directory, or PGMAXSIM_DATA_DIR).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgmaxsim",
        description="Late-interaction (ColBERT/ColPali) MaxSim retrieval inside PostgreSQL.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dsn", help="PostgreSQL connection string (default: $DATABASE_URL, else embedded)")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"pgmaxsim.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"pgmaxsim.commands.{name}":
                continue  # subcommand not built in this installation
            raise
        module.register(sub)
    return parser


def _version() -> str:
    from pgmaxsim import __version__

    return f"pgmaxsim {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except PgmaxsimError as e:
        print(f"pgmaxsim: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pgmaxsim: interrupted", file=sys.stderr)
        return 130
    finally:
        from pgmaxsim.db.embedded import stop_embedded

        stop_embedded()
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
