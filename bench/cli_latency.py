"""Warm ``pgmaxsim search`` latency on the quickstart corpus, end to end and by part.

    .venv/bin/python bench/cli_latency.py                 # the embedded server, as the quickstart
    .venv/bin/python bench/cli_latency.py --pg15          # and, in the same run, a PostgreSQL 15 with plpython3u
    .venv/bin/python bench/cli_latency.py -n 40 --dsn postgresql://u@host/db   # a server of yours instead

The embedded server has no plpython3u: there the search fetches maxsim.search's candidates with
their stored bytes (maxsim.search_tokens) and scores them in NumPy (pgmaxsim.search_here), where
SQL arithmetic took seconds. --pg15 starts a server like the test suite's (tests/pgserver.py),
where maxsim.search scores in PL/Python + NumPy.

It builds the quickstart corpus with ``pgmaxsim demo`` (table demo_documents, index demo; on the
embedded server in a private data directory unless --data-dir), then times, each as its own
process as a user types it:

- the first ``pgmaxsim search`` (starts the warm service, which loads the model);
- ``-n`` warm searches (the queries of the demo and eval sets, in turn): p50 / p95. A warm
  search is a thin client (pgmaxsim.warm_search): the service encodes, searches and formats;

and, to split the warm figure into its parts, in the same run:

- ``python -c 'import <the thin client's modules>'``: interpreter start-up and imports;
- the service's answer to one search request from this process (round trip), and the
  service's own time for it, of which the query encoding;
- ``pgmaxsim.search.search`` from this process on an open connection (encoding through the
  service): what a search costs without the thin client, imports aside.

Bytecode is written as a user's installation has it (PYTHONDONTWRITEBYTECODE is unset for the
children: without .pyc files every call compiles the package again). The warm service runs with
its own runtime directory, so it is the bench's, and is stopped at the end. ``uptime`` is printed
before and after: on a shared machine the load changes every figure, so compare rows of one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
QUERIES = (
    "how do bees tell each other where the flowers are", "revenue by region",
    "staying warm when a hike turns cold and wet", "how many people were injured at work",
    "solar energy for the greenhouses", "why does the sea rise twice a day", "git rebase onto main",
    "volcanoes and lava", "what limits the efficiency of solar panels", "thunderstorm safety",
)
# What a warm `pgmaxsim search` imports (tests/test_cli_latency.py checks that numpy, psycopg and
# torch are not among them).
SEARCH_MODULES = ("pgmaxsim.cli", "pgmaxsim.commands.search_cmd", "pgmaxsim.warm_search", "pgmaxsim.db.embedded")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return f"load average {os.getloadavg()}"


def cli(env: dict[str, str], *argv: str, check: bool = True) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pgmaxsim.cli", *argv], env=env, capture_output=True, text=True,
                       check=False, timeout=1800)
    took = time.perf_counter() - t0
    if check and r.returncode != 0:
        sys.exit(f"pgmaxsim {' '.join(argv[:2])} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return took, r


def timed(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def row(label: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"{label:<44} {len(ms):>3}  {statistics.median(ms):>9.1f}  {percentile(ms, 95):>9.1f}"
            f"  {min(ms):>9.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=20, help="warm searches (default 20)")
    ap.add_argument("--dsn", help="a server to use instead of the embedded one")
    ap.add_argument("--pg15", action="store_true", help="also a PostgreSQL 15 + plpython3u started here")
    ap.add_argument("--data-dir", type=Path, help="the embedded server's data directory (default: a new"
                    " temporary one)")
    ap.add_argument("--reuse", action="store_true", help="keep an existing demo index instead of rebuilding it")
    args = ap.parse_args()

    print(f"before: {uptime()}")
    results = []
    if args.dsn:
        results.append((args.dsn.split("@")[-1], bench_target(args, dsn=args.dsn)))
    else:
        data = args.data_dir or Path(tempfile.mkdtemp(prefix="pgmaxsim-bench-data-")) / "pgdata"
        try:
            results.append(("embedded PG 18 (no plpython3u)", bench_target(args, data_dir=data)))
        finally:
            if not args.data_dir:
                _remove_when_stopped(data)
    if args.pg15:
        server, pylib_root = _start_pg15()
        try:
            results.append(("PostgreSQL 15, PL/Python", bench_target(args, dsn=server.dsn())))
        finally:
            server.stop()
            shutil.rmtree(pylib_root, ignore_errors=True)
    print(f"after:  {uptime()}")
    for label, (first, warm, imports, parts, sql) in results:
        print(f"\n{label}: first search (starts the warm service, loads the model) {first:.2f} s")
        print(f"{'warm pgmaxsim search, ms':<44} {'n':>3}  {'p50':>9}  {'p95':>9}  {'min':>9}")
        print(row("pgmaxsim search (whole command)", warm))
        print(row("  interpreter start-up + thin-client imports", imports))
        print(row("  service round trip (one search request)", parts["round trip"]))
        print(row("    service: encode + search + rows + format", parts["service"]))
        print(row("    service: of which query encoding", parts["encode"]))
        print(row("without the thin client: Python search call", sql))


def bench_target(args: argparse.Namespace, *, dsn: str | None = None, data_dir: Path | None = None) -> tuple[Any, ...]:
    run_dir = Path(tempfile.mkdtemp(prefix="pgmaxsim-bench-run-"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONDONTWRITEBYTECODE", "DATABASE_URL", "PGMAXSIM_DATA_DIR")}
    env.update({"XDG_RUNTIME_DIR": str(run_dir), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "PGMAXSIM_QUERY_ENCODER": "auto", "PGMAXSIM_QUERY_ENCODER_IDLE": "120",
                "PYTHONPATH": os.pathsep.join([str(ROOT / "plugin"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)})
    if dsn:
        env["DATABASE_URL"] = dsn
    else:
        env["PGMAXSIM_DATA_DIR"] = str(data_dir)
    target = dsn or f"embedded server in {data_dir}"
    first, probe = cli(env, "search", QUERIES[1], "--index", "demo", check=False) if args.reuse else (0.0, None)
    if probe is not None and probe.returncode == 0:  # that was the first search (it started the encoder)
        print(f"corpus: the existing demo index on {target}")
    else:
        took, _ = cli(env, "demo", "--query", QUERIES[0])
        print(f"corpus: pgmaxsim demo on {target} ({took:.0f} s)")
        first, _ = cli(env, "search", QUERIES[1], "--index", "demo")
    warm = [cli(env, "search", QUERIES[i % len(QUERIES)], "--index", "demo")[0] for i in range(args.n)]
    imports = timed(lambda: subprocess.run([sys.executable, "-c", "import " + ", ".join(SEARCH_MODULES)],
                                           env=env, check=True), max(5, args.n // 2))
    try:
        parts, sql = _in_process(env, max(5, args.n // 2))
    finally:
        _stop_service(env)
        shutil.rmtree(run_dir, ignore_errors=True)
    return first, warm, imports, parts, sql


def _start_pg15() -> tuple[Any, Path]:
    """A PostgreSQL 15 + pgvector + plpython3u like the test suite's, with the schema migrated,
    and the directory of the Python modules it imports (to remove after it)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from pgserver import LocalPostgres, make_readable_pylib

    pylib_root = Path(tempfile.mkdtemp(prefix="pgmaxsim-bench-pylib-"))
    os.chmod(pylib_root, 0o755)
    server = LocalPostgres().start(pylib=make_readable_pylib(pylib_root / "site"))
    server.wait_ready()
    sys.path.insert(0, str(ROOT / "plugin"))
    from pgmaxsim.db import migrate

    migrate.upgrade(server.dsn())
    return server, pylib_root


def _in_process(env: dict[str, str], n: int) -> tuple[dict[str, list[float]], list[float]]:
    """The service's answer to a search request (round trip, and its own time), and the search
    as a Python call on one connection, timed from this process."""
    for key in ("DATABASE_URL", "PGMAXSIM_DATA_DIR"):
        os.environ.pop(key, None)
    os.environ.update(env)
    sys.path.insert(0, str(ROOT / "plugin"))
    from pgmaxsim import search_here, warm_search
    from pgmaxsim.commands.search_cmd import _connect
    from pgmaxsim.query_encoder_service import remote_encoder
    from pgmaxsim.registry import get_index
    from pgmaxsim.search import search

    parts: dict[str, list[float]] = {"round trip": [], "service": [], "encode": []}
    for i in range(n):
        options = {"query": QUERIES[i % len(QUERIES)], "index": "demo", "k": 10, "candidates": None,
                   "exact": False, "filter": None, "json": False, "cache": False}
        t0 = time.perf_counter()
        reply = warm_search.search(options, env.get("DATABASE_URL"))
        parts["round trip"].append(time.perf_counter() - t0)
        if reply is None:
            sys.exit("the warm service did not answer the search")
        parts["service"].append(reply["timing_ms"]["total"] / 1000)
        parts["encode"].append(reply["timing_ms"]["encode"] / 1000)
    with _connect(env.get("DATABASE_URL")) as conn:
        info = get_index(conn, "demo")
        encoder = remote_encoder(conn, info.id, info.model, info.model_revision)
        if encoder is None:
            sys.exit("the warm query encoder did not answer")
        here = search_here.wanted(conn)
        it = iter(range(10**9))
        sql = timed(lambda: search(conn, "demo", QUERIES[next(it) % len(QUERIES)], k=10, rows=True,
                                   encoder=encoder, score_here=here), n)
    from pgmaxsim.db.embedded import stop_embedded

    stop_embedded()
    return parts, sql


def _stop_service(env: dict[str, str]) -> None:
    """SIGTERM the bench's query encoder and wait for it: it releases the embedded server, which then stops."""
    import signal

    from pgmaxsim.query_encoder_service import _ping, socket_path

    answer = _ping(socket_path())
    if answer and answer.get("pid"):
        pid = int(answer["pid"])
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
            time.sleep(0.1)


def _remove_when_stopped(pgdata: Path) -> None:
    """Remove the bench's embedded data directory once its server has stopped (its last user gone)."""
    deadline = time.monotonic() + 60
    while (pgdata / "postmaster.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    shutil.rmtree(pgdata.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
