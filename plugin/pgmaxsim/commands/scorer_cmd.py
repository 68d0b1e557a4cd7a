"""``pgmaxsim scorer``: the long-lived MaxSim scoring service (one per GPU; CPU backend without one)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

EPILOG = """\
examples:
  pgmaxsim scorer                     # /run/pgmaxsim/scorer.sock as root, else /tmp/pgmaxsim-scorer-<uid>/
  pgmaxsim scorer --socket /run/pgmaxsim/scorer.sock --allow-user postgres --int8
  pgmaxsim scorer --tcp 127.0.0.1:7433 --secret-file /etc/pgmaxsim/scorer.secret
  pgmaxsim scorer --backend cpu --index docs
  pgmaxsim scorer --dsn 'host=worker1 dbname=app'   # on each Citus node: serves that node's shards

Only root, the scorer's own OS user and the --allow-user users (default: postgres) may
connect to its socket (mode 0660, in a directory no other user can write); TCP peers must
prove the shared secret. An admin tells PostgreSQL backends where it is:
  SELECT maxsim.set_scorer('/run/pgmaxsim/scorer.sock');
Without it (or when the service is down) search and rerank score on the CPU in the backend.
"""


def register(sub: Any) -> None:
    from pgmaxsim.scorer.server import build_parser

    p = sub.add_parser(
        "scorer",
        help="run the MaxSim scorer service (holds token tables on the GPU, CPU backend otherwise)",
        description="Run the long-lived scorer service that the SQL functions and the Python API call.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build_parser(p)
    p.add_argument("--ping", action="store_true",
                   help="only check that a scorer answers on --socket/--tcp: exit 0, or 1 with one line"
                        " (the scorer container's liveness check; a stale socket file fails it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.ping:
        return ping(args)
    from pgmaxsim.db.connect import resolve_dsn
    from pgmaxsim.scorer.server import run_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return run_args(args, resolve_dsn(args.dsn))


def ping(args: argparse.Namespace) -> int:
    from pgmaxsim.errors import PgmaxsimError, one_line
    from pgmaxsim.scorer.auth import default_socket
    from pgmaxsim.scorer.client import ScorerClient

    address = f"tcp:{args.tcp}" if args.tcp else (args.socket or default_socket())
    try:
        with ScorerClient(address, timeout=5.0, connect_timeout=2.0, secret_file=args.secret_file) as c:
            c.ping()
    except Exception as e:  # any failure: the scorer is not live
        raise PgmaxsimError(f"no scorer answers on {address}: {one_line(e)}") from e
    return 0
