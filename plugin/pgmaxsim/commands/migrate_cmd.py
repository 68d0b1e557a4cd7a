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
        epilog="examples:\n  pgmaxsim migrate\n  pgmaxsim migrate --downgrade base --yes   # drops every index"
               " and its embeddings\n  pgmaxsim migrate --revision 0001"
               "\n  pgmaxsim migrate --scorer /run/pgmaxsim/scorer.sock   # docker-compose's migrate step",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--revision", default="head", help="upgrade to this revision (default: head)")
    g.add_argument("--downgrade", metavar="REVISION", help="downgrade to REVISION ('base' removes everything)")
    p.add_argument("--yes", "-y", action="store_true",
                   help="do not ask before a downgrade drops indexes and their embeddings")
    p.add_argument("--scorer", metavar="ADDRESS",
                   help="after upgrading, point backends at this scorer (a Unix socket path or HOST:PORT;"
                        " SELECT maxsim.set_scorer(ADDRESS), which needs a pgmaxsim admin)")
    p.set_defaults(func=run)


# The revision that creates maxsim.indexes: a downgrade below it drops every index.
INDEX_REVISION = "0002"


def drops_indexes(target: str) -> bool:
    """Whether downgrading to ``target`` removes the index registry (relative targets count as yes)."""
    known = migrate.revisions()
    if target == "base" or target not in known:
        return True
    return known.index(target) < known.index(INDEX_REVISION)


def confirm_drop(dsn: str | None, target: str, yes: bool) -> None:
    """Refuse (or, on a terminal, ask) before a downgrade that drops existing indexes."""
    import sys

    from pgmaxsim.db.connect import connect
    from pgmaxsim.errors import PgmaxsimError

    if yes or not drops_indexes(target):
        return
    with connect(dsn) as conn:
        if not conn.execute("SELECT to_regclass('maxsim.indexes') IS NOT NULL").fetchone()[0]:  # type: ignore[index]
            return
        names = [r[0] for r in conn.execute("SELECT name FROM maxsim.indexes ORDER BY name")]
    if not names:
        return
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    what = f"--downgrade {target} drops {len(names)} index(es) and all their embeddings ({shown})"
    if sys.stdin.isatty() and sys.stdout.isatty():
        if input(f"{what}. Continue? [y/N] ").strip().lower() in ("y", "yes"):
            return
        raise PgmaxsimError("downgrade cancelled")
    raise PgmaxsimError(f"{what}: pass --yes to confirm")


def set_scorer(dsn: str | None, address: str) -> None:
    """Where backends reach the scorer (an admin setting; see maxsim.set_scorer)."""
    from pgmaxsim.db.connect import connect

    with connect(dsn) as conn:
        conn.execute("SELECT maxsim.set_scorer(%s)", (address,))


def run(args: argparse.Namespace) -> int:
    if args.downgrade:
        confirm_drop(args.dsn, args.downgrade, args.yes)
        report = migrate.downgrade(args.dsn, args.downgrade)
    else:
        report = migrate.upgrade(args.dsn, args.revision)
    for note in report.notes:
        print(f"note: {note}")
    if args.scorer is not None and not args.downgrade:
        set_scorer(args.dsn, args.scorer)
        print(f"scorer: {args.scorer}")
    before = report.revision_before or "none"
    after = report.revision_after or "none (maxsim schema removed)"
    print(f"maxsim schema: {before} -> {after}")
    return 0
