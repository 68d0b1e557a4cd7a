"""Web page benchmark: the server-side time of a search page vs the search's own p50.

    .venv/bin/python bench/web.py                       # the quickstart corpus on a server started here
    .venv/bin/python bench/web.py --queries 60
    .venv/bin/python bench/web.py --dsn postgresql://u@host/db --index demo   # an existing corpus

Without --dsn a PostgreSQL 15 server is started like the test suite's (tests/pgserver.py) and
the quickstart corpus is loaded into it (pgmaxsim.demo.run_demo: 36 passages, 5 PDF pages).

For each query, in turn and on the same database (so both see the same load):

- search: ``pgmaxsim.search.search(conn, index, text, k, rows=True)`` in this process, what the
  Python API and ``pgmaxsim search`` do: encode the text with the index's model, maxsim.search,
  read the source rows; torch on one thread, as the page encodes (pgmaxsim.web.data);
- page: ``GET /?index=&q=`` from a ``pgmaxsim serve`` process: its Server-Timing ``total`` (the
  handler from the request's arrival to the rendered page) and the client's wall time.

Every query is new to both (the page keeps recently encoded queries; none is asked twice).
Prints p50/p95 of each, the page's overhead over the search at p50 and the target (<= +30 ms),
the page's stage breakdown at p50, and the machine's load (uptime), which the figures depend on.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
TARGET_MS = 30.0


def queries_from(conn: Any, table: str, n: int) -> list[str]:
    """``n`` distinct queries: the corpus's own titles and first lines, lower-cased (each is asked once)."""
    from psycopg import sql

    from pgmaxsim.ingest import parse_table_name

    rows = conn.execute(sql.SQL("SELECT DISTINCT lower(title) FROM {} WHERE title IS NOT NULL ORDER BY 1").format(
        parse_table_name(table))).fetchall()
    base = [r[0] for r in rows if r[0].strip()]
    out: list[str] = []
    i = 0
    while len(out) < n:
        q = base[i % len(base)] + ("" if i < len(base) else f" ({i // len(base) + 1})")
        out.append(q)
        i += 1
    return out


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def start_page(dsn: str, index: str) -> tuple[subprocess.Popen[bytes], str]:
    sys.path.insert(0, str(ROOT / "tests"))
    from pgserver import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pgmaxsim.cli", "--dsn", dsn, "serve", "--index", index,
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=5).close()
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("bench/web.py: pgmaxsim serve did not answer in 120 s")


def page(url: str, index: str, q: str, k: int) -> tuple[float, float, dict[str, float]]:
    """(server total ms, client wall ms, server stages ms) of one search page."""
    t = time.perf_counter()
    with urllib.request.urlopen(url + "/?" + urlencode({"index": index, "q": q, "k": k}), timeout=120) as r:
        r.read()
        timing = r.headers.get("Server-Timing", "")
    wall = (time.perf_counter() - t) * 1000
    stages = {m.group(1): float(m.group(2)) for m in re.finditer(r"(\w+);dur=([\d.]+)", timing)}
    return stages["total"], wall, stages


def run(dsn: str, index: str, table: str, n: int, k: int) -> None:
    import psycopg

    from pgmaxsim import search
    from pgmaxsim.web import data

    data._one_cpu_thread()  # encode as the page does (one torch thread), so the difference is the page's own
    with psycopg.connect(dsn, autocommit=True) as conn:
        qs = queries_from(conn, table, n + 1)
        proc, url = start_page(dsn, index)
        try:
            # warm both: the model loads once per process, PL/Python once per backend
            search.search(conn, index, "warming up", k=k, rows=True)
            page(url, index, "warming up", k)
            t_search, t_page, t_wall, stages = [], [], [], []
            for q in qs[1:]:
                t = time.perf_counter()
                search.search(conn, index, q, k=k, rows=True)
                t_search.append((time.perf_counter() - t) * 1000)
                total, wall, st = page(url, index, q, k)
                t_page.append(total)
                t_wall.append(wall)
                stages.append(st)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    p50_search, p50_page = statistics.median(t_search), statistics.median(t_page)
    over = p50_page - p50_search
    print(f"bench/web.py: {n} queries, k={k}, index {index!r}; load: {os.getloadavg()[0]:.2f} "
          f"{os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min) on {os.cpu_count()} CPUs")
    print(f"{'':34}{'p50 ms':>9}{'p95 ms':>9}")
    print(f"{'search (Python API, rows=True)':34}{p50_search:9.1f}{pct(t_search, 95):9.1f}")
    print(f"{'page, server side (Server-Timing)':34}{p50_page:9.1f}{pct(t_page, 95):9.1f}")
    print(f"{'page, client wall (HTTP)':34}{statistics.median(t_wall):9.1f}{pct(t_wall, 95):9.1f}")
    verdict = "meets" if over <= TARGET_MS else "MISSES"
    print(f"page - search at p50: {over:+.1f} ms ({verdict} the target <= +{TARGET_MS:.0f} ms)")
    names = [s for s in stages[0] if s != "total"]
    print("page stages, p50 ms: " + ", ".join(
        f"{s} {statistics.median([st.get(s, 0.0) for st in stages]):.1f}" for s in names))
    rest = [st["total"] - sum(v for s, v in st.items() if s != "total") for st in stages]
    print(f"page beyond its stages (connection, template, response), p50: {statistics.median(rest):.1f} ms")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dsn", help="a database holding the corpus (default: a server started here, with the"
                    " quickstart corpus loaded)")
    ap.add_argument("--index", default="demo")
    ap.add_argument("--table", default="demo_documents", help="where the queries' texts come from")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("PGMAXSIM_QUERY_ENCODER", "off")
    if args.dsn:
        run(args.dsn, args.index, args.table, args.queries, args.k)
        return 0
    from _server import bench_server
    from pgmaxsim.demo import run_demo

    with bench_server() as dsn:
        print("bench/web.py: loading the quickstart corpus (a minute)", file=sys.stderr, flush=True)
        run_demo(dsn, queries=(), out=lambda _line: None)
        run(dsn, args.index, args.table, args.queries, args.k)
    return 0


if __name__ == "__main__":
    sys.exit(main())
