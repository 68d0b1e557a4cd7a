"""``pgmaxsim status``: per index rows, pending, failed (last errors), throughput; worker heartbeats."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="indexes (rows, pending, failed, throughput) and worker heartbeats",
        description="Show per index: rows embedded, rows pending, failed rows with the last errors, "
                    "throughput and ETA; and the workers seen in the last day with their heartbeats.",
        epilog="examples:\n  pgmaxsim status\n  pgmaxsim status --index docs --errors 10\n"
               "  pgmaxsim status --json\n  pgmaxsim status --quiet   # exit 0 when the database and schema answer\n"
               "  pgmaxsim status --quiet --worker-alive 60   # and a worker on this host beat in the last 60 s",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--index", metavar="NAME", help="only this index")
    p.add_argument("--errors", type=int, default=3, metavar="N", help="last failures shown per index (default 3)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print nothing; exit 0 when the database answers and the schema is installed (healthcheck)")
    p.add_argument("--worker-alive", type=float, metavar="S",
                   help="exit 1 unless a worker on this host is running with a heartbeat younger than S seconds"
                        " (the worker container's liveness check)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from pgmaxsim.db.connect import connect
    from pgmaxsim.errors import PgmaxsimError
    from pgmaxsim.worker.report import render, status

    with connect(args.dsn) as conn:
        ok = conn.execute("SELECT to_regclass('maxsim.indexes') IS NOT NULL").fetchone()
        if not ok or not ok[0]:
            raise PgmaxsimError("the maxsim schema is not installed in this database: run pgmaxsim migrate")
        if args.worker_alive is not None:
            require_live_worker(conn, args.worker_alive)
        if args.quiet:
            return 0
        st = status(conn, args.index, errors=max(0, args.errors))
    if args.json:
        print(json.dumps(asdict(st), default=str, indent=2))
    else:
        print(render(st))
    return 0


def require_live_worker(conn: Any, within_s: float) -> None:
    """PgmaxsimError unless a worker of this host is running and beat within ``within_s`` seconds."""
    import socket

    from pgmaxsim.errors import PgmaxsimError

    host = socket.gethostname()
    row = conn.execute(
        "SELECT min(extract(epoch FROM now() - heartbeat_at)) FROM maxsim.workers"
        " WHERE hostname = %s AND state = 'running'", (host,)).fetchone()
    age = row[0] if row else None
    if age is None:
        raise PgmaxsimError(f"no running worker on {host}")
    if float(age) > within_s:
        raise PgmaxsimError(f"the worker on {host} last beat {float(age):.0f} s ago (limit {within_s:.0f} s)")
