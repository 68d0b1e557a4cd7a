"""Where one default ``maxsim.search`` spends its time, inside the server (needle pages).

    OPENBLAS_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/firststage_pg.py --dsn DSN --pages 10000 --build-only
    OPENBLAS_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/search_profile.py --dsn DSN --pages 10000 --queries 30

Runs over a database that bench/firststage_pg.py built (indexes ``fs_codebook`` and ``fs_centroids`` over
the needle corpus of bench/needle.py, same seed and query sources). Prints:

1. p50/p95 of ``maxsim.search(name, q, 10, candidates)`` per index, the indexes interleaved query by
   query so they share the load, with the source row's top-1 rate and recall@10 against exact search
   (``--exact``: exact top-10s computed once and kept in ``--exact-cache``);
2. per SQL function (``track_functions = all``, pg_stat_user_functions): calls and total / self ms per
   search of the default index;
3. per statement run inside those functions (pg_stat_statements, ``track = all``, when the server
   preloads it): calls and ms per search;
4. per Python step inside the PL/Python functions: the backend's pgmaxsim.plpy modules are wrapped
   with timers (inclusive ms per search), and every SPI call (plpy.execute / prepare / cursor) is
   timed by its statement.

To compare two trees on the same data, alternate runs of each (its SQL reinstalled with ``pgmaxsim migrate``,
its PL/Python modules on the server's PYTHONPATH), with the centroids index as the common reference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plugin"))

from needle import NeedleCorpus
from search import percentile

#: Python functions timed inside the backend: (module, attribute).
WRAPPED = [
    ("pgmaxsim.plpy.api", "score"), ("pgmaxsim.plpy.api", "rescore"), ("pgmaxsim.plpy.api", "index_by_id"),
    ("pgmaxsim.plpy.api", "_score_rows"), ("pgmaxsim.plpy.api", "_Timer"),
    ("pgmaxsim.plpy.codes", "rescore"), ("pgmaxsim.plpy.codes", "_codebook"), ("pgmaxsim.plpy.codes", "_coded_rows"),
    ("pgmaxsim.plpy.sketch", "candidates"), ("pgmaxsim.plpy.sketch", "top"), ("pgmaxsim.plpy.sketch", "scores"),
    ("pgmaxsim.plpy.sketch", "first"), ("pgmaxsim.plpy.sketch", "_entries"), ("pgmaxsim.plpy.sketch", "_keys"),
    ("pgmaxsim.plpy.sketch", "_codec"), ("pgmaxsim.plpy.sketch", "_statement"), ("pgmaxsim.plpy.sketch", "_pending"),
    ("pgmaxsim.plpy.sketch", "_state"),
    ("pgmaxsim.firststage", "probe"), ("pgmaxsim.firststage", "centroid_interaction"),
    ("pgmaxsim.sketch", "scores"), ("pgmaxsim.plpy.tokens", "decode_query"),
    ("pgmaxsim.plpy.remote", "score_ids"), ("pgmaxsim.plpy.scoring", "maxsim_stored"),
]

INSTALL = r"""
import sys, time, importlib
import plpy as _plpy
prof = sys.modules.setdefault('_pgmaxsim_profile', type(sys)('_pgmaxsim_profile'))
prof.t = {}
prof.sql = {}
def _timed(label, fn):   # fn, its calls and inclusive time added up under label(*its arguments); once
    if getattr(fn, '_prof', False):
        return fn
    def w(*a, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            c = prof.t.setdefault(label(*a, **kw), [0, 0.0]); c[0] += 1; c[1] += time.perf_counter() - t0
    w._prof = True
    w.__wrapped__ = fn
    return w
for mod, attr in WRAPPED:
    try:
        m = importlib.import_module(mod)
    except ImportError:
        continue
    if hasattr(m, attr):
        name = mod.replace('pgmaxsim.', '') + '.' + attr
        setattr(m, attr, _timed(lambda *a, _name=name, **kw: _name, getattr(m, attr)))
def _label(q, *a, **kw):
    s = q if isinstance(q, str) else prof.sql.get(id(q), 'plan?')
    return 'SPI ' + ' '.join(s.split())[:110]
if not getattr(_plpy.prepare, '_prof', False):
    _prep = _plpy.prepare
    def _prepare(q, *a, **kw):
        p = _prep(q, *a, **kw)
        prof.sql[id(p)] = q
        return p
    _plpy.prepare = _timed(lambda *a, **kw: 'SPI prepare', _prepare)
    _plpy.execute = _timed(_label, _plpy.execute)
    _plpy.cursor = _timed(_label, _plpy.cursor)
"""

REPORT = r"""
import sys, json
prof = sys.modules['_pgmaxsim_profile']
plpy.notice('PROFILE ' + json.dumps(prof.t))
prof.t.clear()
"""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def queries_of(pages: int, n: int, seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """The needle queries and their sources, as bench/firststage_pg.py draws them."""
    corpus = NeedleCorpus(pages, seed)
    sources = np.random.default_rng(seed + 1).choice(pages, size=n, replace=False)
    return [corpus.query(int(i)) for i in sources], [int(i) + 1 for i in sources]


def search(conn: psycopg.Connection[Any], name: str, q: np.ndarray, c: int | None) -> list[tuple[str, float]]:
    from pgmaxsim.db.adapters import Tokens

    return [(str(i), float(s)) for i, s in
            conn.execute("SELECT id, score FROM maxsim.search(%s, %s, 10, %s)", (name, Tokens(q), c)).fetchall()]


def search_all(conn: psycopg.Connection[Any], name: str, queries: list[np.ndarray], c: int | None) -> None:
    """Each query once (what is timed is read from the server afterwards)."""
    for q in queries:
        search(conn, name, q, c)


def exact(conn: psycopg.Connection[Any], name: str, queries: list[np.ndarray], pages: int, cache: Path | None) -> list[list[str]]:
    if cache is not None and cache.exists():
        got = json.loads(cache.read_text())
        if len(got) >= len(queries):
            return got[:len(queries)]
    out = []
    for j, q in enumerate(queries):
        out.append([i for i, _ in search(conn, name, q, pages)])
        _log(f"  exact {j + 1}/{len(queries)}")
    if cache is not None:
        cache.write_text(json.dumps(out))
    return out


def latency(conn: psycopg.Connection[Any], names: list[str], queries: list[np.ndarray], sources: list[int],
            ex: list[list[str]] | None, c: int | None, rounds: int, variants: list[str] | None = None) -> list[str]:
    """p50/p95, source top-1 and recall@10 per index (``variants``: option patches of the first
    index, e.g. '{"rescore": 1}', each its own row; the registry row is patched before each search)."""
    runs = [(n, None) for n in names] if not variants else \
        [(names[0], v) for v in variants] + [(n, None) for n in names[1:]]
    label = {r: r[0] if r[1] is None else f"{r[0]} {r[1]}" for r in runs}
    base = conn.execute("SELECT options FROM maxsim.indexes WHERE name = %s", (names[0],)).fetchone()[0]

    def options(run: tuple[str, str | None]) -> None:
        if run[1] is not None:
            conn.execute("UPDATE maxsim.indexes SET options = %s::jsonb || %s::jsonb WHERE name = %s",
                         (json.dumps(base), run[1], run[0]))
    times: dict[str, list[float]] = {label[r]: [] for r in runs}
    top1: dict[str, int] = dict.fromkeys(times, 0)
    rec: dict[str, list[float]] = {n: [] for n in times}
    for run in runs:   # warm each backend's caches
        options(run)
        search_all(conn, run[0], queries[:3], c)
    for _ in range(rounds):
        for j, q in enumerate(queries):
            for run in runs:
                options(run)
                name = label[run]
                t0 = time.perf_counter()
                got = search(conn, run[0], q, c)
                times[name].append((time.perf_counter() - t0) * 1e3)
                if _ == 0:
                    top1[name] += bool(got) and got[0][0] == str(sources[j])
                    if ex is not None:
                        rec[name].append(len({i for i, _ in got} & set(ex[j])) / max(1, len(ex[j])))
    if variants:
        conn.execute("UPDATE maxsim.indexes SET options = %s::jsonb WHERE name = %s", (json.dumps(base), names[0]))
    out = [f"| index | candidates | p50 ms | p95 ms | source top-1 | recall@10 vs exact |", "|---|---|---|---|---|---|"]
    for name in times:
        out.append(f"| {name} | {c} | {percentile(times[name], 50):.1f} | {percentile(times[name], 95):.1f} |"
                   f" {top1[name] / len(queries):.1%} | {np.mean(rec[name]) if rec[name] else float('nan'):.3f} |")
    return out


def functions(conn: psycopg.Connection[Any], name: str, queries: list[np.ndarray], c: int | None) -> list[str]:
    conn.execute("SET track_functions = 'all'")
    conn.execute("SELECT pg_stat_reset()")
    search_all(conn, name, queries, c)
    conn.execute("SELECT pg_stat_force_next_flush()")
    time.sleep(0.1)
    rows = conn.execute("SELECT funcname, calls, total_time, self_time FROM pg_stat_user_functions"
                        " WHERE schemaname = 'maxsim' ORDER BY total_time DESC").fetchall()
    conn.execute("RESET track_functions")
    n = len(queries)
    out = ["| function | calls/search | total ms/search | self ms/search |", "|---|---|---|---|"]
    out += [f"| {f} | {calls / n:.1f} | {tot / n:.2f} | {self_ / n:.2f} |" for f, calls, tot, self_ in rows]
    return out


def statements(conn: psycopg.Connection[Any], name: str, queries: list[np.ndarray], c: int | None, top: int) -> list[str]:
    if conn.execute("SELECT count(*) FROM pg_settings WHERE name = 'pg_stat_statements.track'").fetchone()[0] == 0:
        return ["(pg_stat_statements not preloaded: skipped)"]
    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    conn.execute("SELECT pg_stat_statements_reset()")
    search_all(conn, name, queries, c)
    rows = conn.execute("SELECT calls, total_exec_time, query FROM pg_stat_statements"
                        " WHERE query NOT LIKE '%%pg_stat_statements%%' ORDER BY total_exec_time DESC LIMIT %s",
                        (top,)).fetchall()
    n = len(queries)
    out = ["| calls/search | ms/search | statement |", "|---|---|---|"]
    out += [f"| {calls / n:.1f} | {t / n:.2f} | `{' '.join(q.split())[:140]}` |" for calls, t, q in rows]
    return out


def python_steps(conn: psycopg.Connection[Any], name: str, queries: list[np.ndarray], c: int | None) -> list[str]:
    got: list[str] = []
    conn.add_notice_handler(lambda d: got.append(d.message_primary or ""))
    body = f"WRAPPED = {WRAPPED!r}\n" + INSTALL
    conn.execute("DO $prof$\n" + body + "\n$prof$ LANGUAGE plpython3u")   # before any plan is prepared
    search_all(conn, name, queries[:3], c)
    search_all(conn, name, queries, c)
    got.clear()
    conn.execute("DO $prof$\n" + REPORT + "\n$prof$ LANGUAGE plpython3u")
    t = json.loads(next(m for m in got if m.startswith("PROFILE "))[len("PROFILE "):])
    n = len(queries)
    out = ["| Python step (inclusive) | calls/search | ms/search |", "|---|---|---|"]
    out += [f"| {k} | {v[0] / n:.1f} | {v[1] * 1e3 / n:.2f} |" for k, v in sorted(t.items(), key=lambda kv: -kv[1][1])]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--pages", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--candidates", type=int, default=64)
    ap.add_argument("--indexes", default="fs_codebook,fs_centroids", help="the first is profiled")
    ap.add_argument("--rounds", type=int, default=1, help="latency rounds over the queries")
    ap.add_argument("--exact", action="store_true", help="recall@10 against exact search")
    ap.add_argument("--exact-cache", type=Path, default=None)
    ap.add_argument("--parts", default="latency,functions,statements,python")
    ap.add_argument("--variant", action="append", default=None, metavar="JSON",
                    help="an option patch of the first index timed as its own row (repeat; '{}' = as it is)")
    ap.add_argument("--budgets", default=None, help="candidates settings for the latency part, e.g. 64,100,200")
    ap.add_argument("--max-source", type=int, default=None,
                    help="only the queries whose source page is among the first N (a build stopped early)")
    args = ap.parse_args(argv)

    from pgmaxsim.db.adapters import register_tokens

    queries, sources = queries_of(args.pages, args.queries, args.seed)
    if args.max_source is not None:
        keep = [j for j, s in enumerate(sources) if s <= args.max_source]
        queries, sources = [queries[j] for j in keep], [sources[j] for j in keep]
    names = args.indexes.split(",")
    parts = set(args.parts.split(","))
    out = [f"#### maxsim.search profile, {args.pages:,} needle pages, {len(queries)} queries,"
           f" candidates {args.candidates}; load {' '.join(f'{x:.1f}' for x in os.getloadavg())}"]
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        register_tokens(conn)
        n_rows = conn.execute("SELECT rows FROM maxsim.index_info(%s)", (names[0],)).fetchone()[0]
        out[0] += f", {n_rows:,} rows in {names[0]}"
        ex = exact(conn, names[0], queries, max(args.pages, int(n_rows)), args.exact_cache) if args.exact else None
        if "latency" in parts:
            for c in ([int(b) for b in args.budgets.split(",")] if args.budgets else [args.candidates]):
                out += ["", *latency(conn, names, queries, sources, ex, c, args.rounds, args.variant)]
    for part, fn in (("functions", functions), ("statements", statements), ("python", python_steps)):
        if part not in parts:
            continue
        with psycopg.connect(args.dsn, autocommit=True) as conn:   # a fresh backend per part
            register_tokens(conn)
            if part != "python":   # python_steps wraps the backend's modules first
                search_all(conn, names[0], queries[:3], args.candidates)
            extra = (20,) if part == "statements" else ()
            out += ["", f"{part} of {names[0]}:", *fn(conn, names[0], queries, args.candidates, *extra)]
    out.append(f"\nload at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
