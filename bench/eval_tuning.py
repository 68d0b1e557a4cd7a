"""A `pgmaxsim eval` tuning curve on a large index (prints its figures, draws docs/eval-tuning.png).

    .venv/bin/python bench/eval_tuning.py                        # 10,000 pages, 40 queries (~25 min on 2 cores)
    .venv/bin/python bench/eval_tuning.py --pages 2000 --queries 20 --plot /tmp/tune.png   # a quick look
    .venv/bin/python bench/eval_tuning.py --dsn postgresql://... # a server of yours: the pages are built
        # there once (table and index `pages`, kept; bench/security.py builds the same ones) and reused

Pages are bench/search.py's synthetic ColQwen-shaped pages (d=128, 600-1,400 tokens, topics shared
by many pages); query i is bench/search.py's query aimed at page i, judged relevant for that page
only (a known-item set: graded 1, one relevant page per query). The queries' token arrays go to
the real command as --tokens, so nothing here re-implements it:

    pgmaxsim eval --index pages --queries Q.jsonl --qrels Q.tsv --tokens Q.npz \\
        --candidates 8,16,32,64,128,256 --plot docs/eval-tuning.png --json

The script prints the table, what each step to more candidates gains in recall@10 vs exact and
costs in latency, and the knee: the first setting after which the next gains less than --knee
(default 0.05) recall@10 vs exact, with NDCG@10 within 0.01 of exact search's. It saves the figures
beside the plot (docs/eval-tuning.json; --figures prints them again). It builds the index with the
first stage that is the default when it runs, so it re-measures whatever that is.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from _server import bench_server
from search import Corpus, D

INDEX = "pages"


def build_pages(dsn: str, corpus: Corpus, n: int) -> float | None:
    """Table and index `pages` (ids 1..n, page i-1 of the corpus); seconds taken, or None when a
    previous run (of this bench or bench/security.py) left them there."""
    from pgmaxsim import Index
    from pgmaxsim.db.adapters import register_tokens

    with psycopg.connect(dsn, autocommit=True) as c:
        register_tokens(c)
        if c.execute("SELECT 1 FROM maxsim.indexes WHERE name = %s", (INDEX,)).fetchone():
            rows = c.execute("SELECT rows FROM maxsim.index_info(%s)", (INDEX,)).fetchone()[0]
            if rows != n:
                raise SystemExit(f"{Path(sys.argv[0]).name}: index {INDEX} on that server has {rows} rows,"
                                 f" not --pages {n}")
            return None
        c.execute("CREATE TABLE pages (id bigint PRIMARY KEY)")
        c.execute("INSERT INTO pages SELECT generate_series(1, %s)", (n,))
        idx = Index.create(c, INDEX, "pages", "id", dim=D)   # the default first stage of the day
        t0 = time.perf_counter()
        for start in range(0, n, 200):
            ids = list(range(start + 1, min(n, start + 200) + 1))
            idx.upsert(ids, [corpus.page(i - 1) for i in ids])
        took = time.perf_counter() - t0
        c.execute("VACUUM ANALYZE")
        return took


def write_inputs(corpus: Corpus, n_pages: int, n_queries: int, out: Path) -> tuple[Path, Path, Path]:
    """BEIR queries.jsonl, qrels TSV and the queries' token arrays (.npz) of known-item queries."""
    rng = np.random.default_rng(1)
    targets = rng.choice(n_pages, size=n_queries, replace=False)
    queries, qrels, tokens = out / "queries.jsonl", out / "qrels.tsv", out / "tokens.npz"
    with queries.open("w") as fq, qrels.open("w") as fr:
        fr.write("query-id\tcorpus-id\tscore\n")
        for t in targets:
            qid = f"q{int(t) + 1}"
            fq.write(json.dumps({"_id": qid, "text": f"synthetic query aimed at page {int(t) + 1}"}) + "\n")
            fr.write(f"{qid}\t{int(t) + 1}\t1\n")
    np.savez(tokens, **{f"q{int(t) + 1}": corpus.query(int(t)).astype(np.float32) for t in targets})
    return queries, qrels, tokens


def run_eval(dsn: str, queries: Path, qrels: Path, tokens: Path, candidates: str, plot: Path) -> dict[str, Any]:
    """The real `pgmaxsim eval` (this checkout's), its --json output."""
    env = dict(os.environ, DATABASE_URL=dsn, PYTHONPATH=f"{ROOT / 'plugin'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [sys.executable, "-m", "pgmaxsim.cli", "eval", "--index", INDEX, "--queries", str(queries),
           "--qrels", str(qrels), "--tokens", str(tokens), "--candidates", candidates, "--plot", str(plot), "--json"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"pgmaxsim eval failed ({r.returncode}): {r.stderr.strip()}")
    return json.loads(r.stdout)


def knee(settings: list[dict[str, Any]], gain: float) -> dict[str, Any] | None:
    """The knee: the first setting (by candidates, exact last) after which the next one gains less
    than ``gain`` recall@10 vs exact, among those whose NDCG@10 is within 0.01 of exact search's
    (None when every step gains more, or the judged quality is not reached below exact)."""
    ordered = sorted(settings, key=lambda s: (s["setting"] == "exact", s["effective_candidates"]))
    exact = ordered[-1]
    for here, after in itertools.pairwise(ordered):
        if here is exact or after is exact:
            return None
        good = here["ndcg@10"] is None or here["ndcg@10"] >= exact["ndcg@10"] - 0.01
        if good and after["recall@10_vs_exact"] - here["recall@10_vs_exact"] < gain:
            return here
    return None


def report(result: dict[str, Any], gain: float, plot: Path, header: str) -> None:
    print(header)
    print("| setting | ndcg@10 | recall@10 | mrr@10 | top-1 = exact | recall@10 vs exact | score-mass@10 | p50 ms | p95 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in result["settings"]:
        print(f"| {s['setting']} | {s['ndcg@10']:.3f} | {s['recall@10']:.3f} | {s['mrr@10']:.3f} |"
              f" {s['top1_agreement']:.3f} | {s['recall@10_vs_exact']:.3f} | {s['score_mass@10']:.4f} |"
              f" {s['latency_p50_ms']:.1f} | {s['latency_p95_ms']:.1f} |")
    ordered = sorted(result["settings"], key=lambda s: (s["setting"] == "exact", s["effective_candidates"]))
    steps = [f"{a['effective_candidates']}->{b['setting'] if b['setting'] == 'exact' else b['effective_candidates']}:"
             f" {b['recall@10_vs_exact'] - a['recall@10_vs_exact']:+.3f} for"
             f" {b['latency_p50_ms'] / a['latency_p50_ms']:.1f}x the p50" for a, b in itertools.pairwise(ordered)]
    print("recall@10 vs exact gained per step: " + "; ".join(steps))
    k = knee(result["settings"], gain)
    exact = ordered[-1]
    if k is None:
        print(f"knee: none below exact (every step gains >= {gain} recall@10 vs exact, or quality is not reached)")
    else:
        print(f"knee: candidates {k['effective_candidates']} (the next setting gains < {gain} recall@10 vs exact);"
              f" recall@10 vs exact {k['recall@10_vs_exact']:.3f}, score-mass@10 {k['score_mass@10']:.4f},"
              f" NDCG@10 {k['ndcg@10']:.3f} (exact {exact['ndcg@10']:.3f}); p50 {k['latency_p50_ms']:.0f} ms,"
              f" exact {exact['latency_p50_ms']:.0f} ms ({exact['latency_p50_ms'] / k['latency_p50_ms']:.0f}x)")
    print(f"plot: {plot} (figures: {plot.with_suffix('.json')})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--candidates", default="8,16,32,64,128,256")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "eval-tuning.png")
    ap.add_argument("--knee", type=float, default=0.05, help="the knee: the first setting after which the next"
                    " gains less than this recall@10 vs exact (default 0.05)")
    ap.add_argument("--figures", type=Path, help="print the figures an earlier run saved (its .json), run nothing")
    ap.add_argument("--dsn", help="an existing server (superuser); pages built there once and kept")
    args = ap.parse_args(argv)
    if args.figures:
        saved = json.loads(args.figures.read_text())
        report(saved, args.knee, args.figures.with_suffix(".png"), saved.pop("header"))
        return 0

    from pgmaxsim.db import migrate

    settings = {"shared_buffers": "2GB", "max_wal_size": "8GB"}
    with bench_server(args.dsn, settings=settings, migrate=False) as dsn:
        migrate.upgrade(dsn)   # a given server's too: its pages are kept between runs
        corpus = Corpus(args.pages)
        build = build_pages(dsn, corpus, args.pages)
        with tempfile.TemporaryDirectory(prefix="pgmaxsim-eval-tuning-") as tmp:
            q, r, t = write_inputs(corpus, args.pages, args.queries, Path(tmp))
            load = os.getloadavg()[0]
            result = run_eval(dsn, q, r, t, args.candidates, args.plot)
    built = f"built in {build:.0f} s" if build is not None else "built before"
    header = (f"# bench/eval_tuning.py: {result['rows_in_index']} pages ({built}), {result['queries']} known-item"
              f" queries of 24 tokens, k={result['k']}; load average {load:.1f} at the start,"
              f" {os.getloadavg()[0]:.1f} at the end")
    args.plot.with_suffix(".json").write_text(json.dumps({"header": header, **result}, indent=1) + "\n")
    report(result, args.knee, args.plot, header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
