"""``pgmaxsim migrate``: install, upgrade or remove the ``maxsim`` schema."""

from __future__ import annotations

import argparse
from typing import Any

from pgmaxsim.db import migrate


def register(sub: Any) -> None:
    p = sub.add_parser(
        "migrate",
        help="install or upgrade the maxsim schema (alembic upgrade head)",
        description="Install or upgrade the maxsim schema; --downgrade base removes everything pgmaxsim created.",
        epilog="examples:\n  pgmaxsim migrate\n  pgmaxsim migrate --downgrade base\n  pgmaxsim migrate --revision 0001",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--revision", default="head", help="upgrade to this revision (default: head)")
    g.add_argument("--downgrade", metavar="REVISION", help="downgrade to REVISION ('base' removes everything)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.downgrade:
        report = migrate.downgrade(args.dsn, args.downgrade)
    else:
        report = migrate.upgrade(args.dsn, args.revision)
    for note in report.notes:
        print(f"note: {note}")
    before = report.revision_before or "none"
    after = report.revision_after or "none (maxsim schema removed)"
    print(f"maxsim schema: {before} -> {after}")
    return 0
