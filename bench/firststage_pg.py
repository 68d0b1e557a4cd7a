"""First stages through pgmaxsim itself, in PostgreSQL: needle pages, per first stage and candidates.

    .venv/bin/python bench/firststage_pg.py --pages 10000 --queries 30
    .venv/bin/python bench/firststage_pg.py --pages 1000 --queries 20 --first-stages codebook,centroids,mean   # quick

Needle corpus of bench/needle.py (hard needle: 14 near-copies of one page's tokens + 10 generic
tokens of its two most popular topics). Starts a PostgreSQL 15 like the test suite (or --dsn),
creates one index per first stage (``maxsim.create_index(..., options => {"first_stage": ...})``)
over the same source table, writes every page into each with pgmaxsim.writes.write_rows (the
worker's and Index.upsert's write path; a codebook index is trained whenever a write marks it due,
as the worker's trainer would, and those trainings are counted in its write time), optionally retrains the codebook once at the end
(``--retrain``: ``pgmaxsim index reindex NAME --first-stage``), then runs the queries through
``maxsim.search(name, q, 10, candidates)``. Printed per first stage and candidates: the source
row at top-1, recall@10 and score-mass@10 against exact search (same server), p50/p95 of the
whole search from a client, bytes of the first stage per row (and % of the fp16 token bytes),
index_info.bytes per row, write cost per row.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plugin"))

from needle import NeedleCorpus
from search import percentile

ROOT = Path(__file__).resolve().parent.parent


def first_stage_bytes(conn: psycopg.Connection[Any], name: str) -> int:
    """Bytes the first stage adds to the index: the centroid table (+ HNSW), the pooled HNSW,
    or the codebook tables + the codes columns + their GIN and partial indexes + the sketch lists
    and the token table's version index."""
    iid, tok, kind = conn.execute("SELECT id, token_table, pooling FROM maxsim.indexes WHERE name = %s",
                                  (name,)).fetchone()
    size = "SELECT coalesce(pg_total_relation_size(to_regclass(%s)), 0)"
    if kind == "centroids":
        return int(conn.execute(size, (f"maxsim.cen_{iid}",)).fetchone()[0])
    idx = "SELECT coalesce(sum(pg_relation_size(indexrelid)), 0) FROM pg_index WHERE indrelid = %s::regclass" \
          " AND indexrelid::regclass::text ~ %s"
    if kind == "mean":
        return int(conn.execute(idx, (f"maxsim.{tok}", "pooled_hnsw")).fetchone()[0])
    book = sum(int(conn.execute(size, (f"maxsim.{t}_{iid}",)).fetchone()[0]) for t in ("fs_coarse", "fs_fine"))
    gin = int(conn.execute(idx, (f"maxsim.{tok}", "codes_|uncoded_|_version$")).fetchone()[0])
    book += int(conn.execute("SELECT maxsim._sk_bytes(%s)", (iid,)).fetchone()[0])   # the residual sketch lists
    col = int(conn.execute(f"SELECT coalesce(sum(pg_column_size(codes_0)), 0) + coalesce(sum(pg_column_size(codes_1)), 0)"
                           f" FROM maxsim.{tok}").fetchone()[0])
    return book + gin + col


HEADER = ("| first stage | candidates | source top-1 | recall@10 | mass@10 | p50 ms | p95 ms |"
          " first stage B/row (% fp16) | index B/row (x fp16) | write ms/row |")


def exact_top10(conn: psycopg.Connection[Any], name: str, queries: list[np.ndarray], n: int) -> list[list[tuple[str, float]]]:
    from pgmaxsim.db.adapters import Tokens

    return [[(str(i), float(sc)) for i, sc in conn.execute("SELECT id, score FROM maxsim.search(%s, %s, 10, %s)",
                                                          (name, Tokens(q), n)).fetchall()] for q in queries]


def table_rows(conn: psycopg.Connection[Any], name: str, label: str, queries: list[np.ndarray], sources: list[Any] | None,
               exact: list[list[tuple[str, float]]], budgets: list[int], n: int, fp16: float, write_ms: float) -> list[str]:
    """One table row per budget: source top-1 (or top-1 = exact when no source is known), recall@10
    and mass@10 vs exact, p50/p95 of maxsim.search, first-stage and index bytes per row, write cost."""
    from pgmaxsim.db.adapters import Tokens

    fsb = first_stage_bytes(conn, name) / n
    total = conn.execute("SELECT bytes FROM maxsim.index_info(%s)", (name,)).fetchone()[0] / n
    for q in queries[:3]:
        conn.execute("SELECT * FROM maxsim.search(%s, %s, 10, 64)", (name, Tokens(q))).fetchall()
    out = []
    for c in budgets:
        times, hits, rec, mass = [], 0, [], []
        for j, (q, ex) in enumerate(zip(queries, exact)):
            t0 = time.perf_counter()
            rows = conn.execute("SELECT id, score FROM maxsim.search(%s, %s, 10, %s)", (name, Tokens(q), c)).fetchall()
            times.append((time.perf_counter() - t0) * 1e3)
            got = [str(r[0]) for r in rows]
            want = str(sources[j]) if sources is not None else (ex[0][0] if ex else None)
            hits += bool(got) and got[0] == want
            rec.append(len(set(got) & {i for i, _ in ex}) / max(1, len(ex)))
            mass.append(sum(float(r[1]) for r in rows) / sum(sc for _, sc in ex))
        out.append(f"| {label} | {c} ({c / n:.1%}) | {hits / len(queries):.1%} | {np.mean(rec):.3f} |"
                   f" {np.mean(mass):.4f} | {percentile(times, 50):.1f} | {percentile(times, 95):.1f} |"
                   f" {fsb:.0f} ({fsb / fp16:.2%}) | {total:.0f} ({total / fp16:.3f}) | {write_ms:.1f} |")
        _log(out[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--budgets", default="64,1%,2%")
    ap.add_argument("--first-stages", default="codebook,centroids")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="codebook index option (e.g. nprobe=16, tokens_per_code=16, train_sample=1000000)")
    ap.add_argument("--retrain", action="store_true", help="retrain the codebook once after the last write")
    ap.add_argument("--sketch-tops", default="10",
                    help="codebook rows per option sketch_top (rows the residual sketch lists put first; 0: off)")
    ap.add_argument("--build-only", action="store_true", help="stop after writing (with --dsn --reuse: a corpus to reuse)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dsn", help="an existing server with pgvector and pgmaxsim's migrations")
    ap.add_argument("--reuse", action="store_true",
                    help="with --dsn: keep the indexes fs_<stage> already written there by an earlier run (the"
                         " write cost is then not measured); only the missing ones are written")
    args = ap.parse_args(argv)

    server = None
    if args.dsn:
        dsn = args.dsn
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        from pgserver import LocalPostgres, make_readable_pylib

        pylib_root = Path(tempfile.mkdtemp(prefix="pgmaxsim-bench-pylib-"))
        os.chmod(pylib_root, 0o755)
        server = LocalPostgres().start(pylib=make_readable_pylib(pylib_root / "site"),
                                       settings={"shared_buffers": "1GB", "max_wal_size": "8GB"})
        server.wait_ready()
        dsn = server.dsn()
        from pgmaxsim.db import migrate

        migrate.upgrade(dsn)
    try:
        return _run(dsn, args)
    finally:
        if server is not None:
            server.stop()


def _written(conn: psycopg.Connection[Any], name: str, n: int) -> bool:
    row = conn.execute("SELECT token_table FROM maxsim.indexes WHERE name = %s", (name,)).fetchone()
    if row is None:
        return False
    return int(conn.execute(f"SELECT count(*) FROM maxsim.{row[0]}").fetchone()[0]) == n


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _run(dsn: str, args: argparse.Namespace) -> int:
    import json

    from pgmaxsim import codebook, writes
    from pgmaxsim.db.adapters import register_tokens
    from pgmaxsim.registry import get_index

    n = args.pages
    stages = args.first_stages.split(",")
    corpus = NeedleCorpus(n, args.seed)
    sources = np.random.default_rng(args.seed + 1).choice(n, size=args.queries, replace=False)
    queries = [corpus.query(int(i)) for i in sources]
    extra = {}
    for pair in args.option:
        k, _, v = pair.partition("=")
        extra[k] = json.loads(v)
    write_s = dict.fromkeys(stages, 0.0)
    raw = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        register_tokens(conn)
        have = set()
        if args.reuse:
            have = {s for s in stages if _written(conn, f"fs_{s}", n)}
        else:
            conn.execute("DROP TABLE IF EXISTS pages CASCADE")
        conn.execute("CREATE TABLE IF NOT EXISTS pages (id bigint PRIMARY KEY)")
        conn.execute("INSERT INTO pages SELECT generate_series(1, %s) ON CONFLICT DO NOTHING", (n,))
        todo = [s for s in stages if s not in have]
        for s in todo:
            opts = {"first_stage": s} | (extra if s == "codebook" else {})
            if args.reuse:
                conn.execute("SELECT maxsim.drop_index(name) FROM maxsim.indexes WHERE name = %s", (f"fs_{s}",))
            conn.execute("SELECT maxsim.create_index(%s, 'pages', 'id', dim => 128, options => %s::jsonb)",
                         (f"fs_{s}", json.dumps(opts)))
        specs = {s: get_index(conn, f"fs_{s}") for s in todo}
        for a in range(0, n if todo else 0, args.batch):
            ids = list(range(a + 1, min(n, a + args.batch) + 1))
            pages = [corpus.page(i - 1)[0] for i in ids]
            raw += sum(p.shape[0] * p.shape[1] * 2 for p in pages)
            for s in todo:
                t = time.perf_counter()
                writes.write_rows(conn, specs[s], ids, pages)
                if s == "codebook":   # the worker's trainer, run in line: writes only mark it due
                    codebook.train_due(conn, "fs_codebook")
                write_s[s] += time.perf_counter() - t
            if (a // args.batch) % 25 == 0:
                _log(f"  wrote {ids[-1]}/{n}: " + ", ".join(f"{s} {write_s[s] / ids[-1] * 1e3:.1f} ms/row" for s in todo))
        if not raw:   # reused: the fp16 bytes of the stored tokens
            raw = 2 * 128 * int(conn.execute(f"SELECT sum(n_tokens) FROM maxsim.{get_index(conn, f'fs_{stages[0]}').token_table}").fetchone()[0])
        if args.build_only:
            return 0
        notes = []
        if "codebook" in stages:
            spec = get_index(conn, "fs_codebook")
            notes.append(f"codebook trained as writes made it due: generation {spec.options.get('fs_gen')}"
                         f" on {spec.options.get('fs_rows')} rows")
            if args.retrain:
                done = codebook.train(conn, "fs_codebook")
                notes.append(f"retrained at the end: {done.n_coarse} x {done.n_fine} codes on {done.sample_tokens:,}"
                             f" tokens in {done.seconds_train:.0f} s, {n} rows assigned in {done.seconds_fill:.0f} s")
            _log(notes[-1])
        conn.execute("VACUUM ANALYZE")
        fp16 = raw / n
        # exact reference (scores are the same in every index: one fp16 copy of the same tokens)
        exact = exact_top10(conn, f"fs_{stages[0]}", queries, n)
        budgets = [max(10, int(float(b[:-1]) / 100 * n)) if b.endswith("%") else int(b)
                   for b in args.budgets.split(",")]
        out = [(f"\n#### needle through maxsim.search, {n:,} pages ({fp16 / 1024:.0f} KB fp16 per row),"
                f" {args.queries} queries; load {os.getloadavg()[0]:.1f}"),
               *notes, "", HEADER, "|---|---|---|---|---|---|---|---|---|---|"]
        top1 = np.mean([bool(e) and e[0][0] == str(s + 1) for e, s in zip(exact, sources)])
        out.append(f"| exact | {n} (100%) | {top1:.1%} | 1.000 | 1.0000 | - | - | - | - | - |")
        for s in stages:
            for top in ([int(t) for t in args.sketch_tops.split(",")] if s == "codebook" else [None]):
                label = s
                if top is not None:
                    conn.execute("UPDATE maxsim.indexes SET options = options || jsonb_build_object('sketch_top', %s::int)"
                                 " WHERE name = %s", (top, f"fs_{s}"))
                    label = f"codebook + sketch top {top}" if top else "codebook (no sketch)"
                out += table_rows(conn, f"fs_{s}", label, queries, [int(i) + 1 for i in sources], exact, budgets, n,
                                  fp16, write_s[s] / n * 1e3 if s in todo else float("nan"))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
