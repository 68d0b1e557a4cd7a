"""``pgmaxsim eval``: retrieval quality and fidelity to exact MaxSim per ``candidates`` setting
(see :mod:`pgmaxsim.evaluation`)."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from pgmaxsim.errors import PgmaxsimError

EPILOG = """\
examples:
  pgmaxsim eval --demo --plot demo.png                 # the bundled judged queries on the quickstart corpus
  pgmaxsim eval --index docs --queries queries.jsonl --qrels qrels/test.tsv --plot tune.png
  pgmaxsim eval --index pages --queries vidore.jsonl   # one file: query, page id (corpus-id) and score columns
  pgmaxsim eval --index docs --no-qrels --queries questions.txt --candidates 8,16,32
  pgmaxsim eval --index docs --queries q.jsonl --qrels q.tsv --tokens q.npz --json

Corpus ids are the index's source keys. Each setting runs every query through
maxsim.search with -k rows; "exact" scores every row and is the fidelity
reference. Metrics come from pytrec_eval; fidelity (top-1 agreement,
recall@10 vs exact, score-mass@10) is explained in the README.
"""


def _candidates(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def register(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="quality on judged queries and fidelity to exact MaxSim, per candidates setting",
        description="Search labelled queries with each candidates setting and exact search; print NDCG,"
        " recall, MRR, fidelity to exact MaxSim and latency per setting.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--index", "-i", help="index to evaluate")
    p.add_argument("--queries", metavar="FILE", help="BEIR queries.jsonl (_id, text); with no --qrels, a"
                   " ViDoRe-style JSONL/Parquet with query, page id and score columns; with --no-qrels,"
                   " one query per line")
    p.add_argument("--qrels", metavar="FILE", help="judgements: TSV 'query-id corpus-id score' (header optional)")
    p.add_argument("--no-qrels", action="store_true", help="no judgements: fidelity and latency only")
    p.add_argument("--tokens", metavar="FILE.npz", help="precomputed query token arrays keyed by query id"
                   " (instead of encoding with the index's model)")
    p.add_argument("--query-column", help="ViDoRe-style file: the query text column (default: query)")
    p.add_argument("--page-column", help="ViDoRe-style file: the page id column (default: corpus-id,"
                   " corpus_id, page_id, doc_id, ...)")
    p.add_argument("--score-column", help="ViDoRe-style file: the score column (default: score; none: 1)")
    p.add_argument("-k", "--k", type=int, default=10, help="rows per search (default: 10; 100 for recall@100)")
    p.add_argument("--candidates", type=_candidates, default=[16, 32, 64, 128, 256],
                   help="comma-separated settings to compare (default: 16,32,64,128,256; values at or above"
                   " the row count are exact search)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--plot", metavar="PNG", help="write quality and fidelity against latency to this PNG")
    p.add_argument("--demo", action="store_true", help="the bundled judged queries on the quickstart corpus"
                   " (builds table demo_documents and index demo when they are not there; offline)")
    p.set_defaults(func=run)


def _inputs(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, dict[str, int]] | None]:
    from pgmaxsim import evaluation as ev

    if args.demo:
        if args.queries or args.qrels or args.index or args.no_qrels:
            raise PgmaxsimError("--demo uses the bundled set: leave out --index, --queries, --qrels, --no-qrels")
        return ev.bundled_set()
    if not args.index:
        raise PgmaxsimError("which index? pass --index NAME (or --demo)")
    if args.no_qrels:
        if args.qrels:
            raise PgmaxsimError("--no-qrels and --qrels contradict each other")
        if args.queries:
            return ev.read_texts(args.queries), None
        if args.tokens:
            return {q: q for q in ev.read_tokens(args.tokens)}, None
        raise PgmaxsimError("--no-qrels needs --queries FILE (one query per line) or --tokens FILE.npz")
    if not args.queries:
        raise PgmaxsimError("pass --queries FILE (and --qrels FILE, or --no-qrels)")
    if args.qrels:
        return ev.read_beir_queries(args.queries), ev.read_qrels(args.qrels)
    return ev.read_vidore(args.queries, query_column=args.query_column, page_column=args.page_column,
                          score_column=args.score_column)


def run(args: argparse.Namespace) -> int:
    from pgmaxsim import evaluation as ev
    from pgmaxsim.db.connect import connect
    from pgmaxsim.display import progress
    from pgmaxsim.registry import require_schema

    if args.plot and not args.plot.lower().endswith(".png"):
        raise PgmaxsimError(f"--plot writes a PNG: give a file name ending in .png, got {args.plot!r}")
    queries, qrels = _inputs(args)
    tokens = ev.read_tokens(args.tokens) if args.tokens else None
    index = args.index
    if args.demo:
        index = _demo_index(args.dsn)
    with connect(args.dsn) as conn:
        require_schema(conn)
        result = ev.evaluate(conn, index, queries, qrels, k=args.k, candidates=args.candidates, tokens=tokens,
                             progress=lambda total, desc: progress(total, desc, "query"))
    if args.plot:
        ev.plot(result.rows, args.plot, f"pgmaxsim eval: index {index!r}, {result.queries} queries,"
                f" {result.rows_in_index} rows, k={result.k}")
    if args.json:
        print(json.dumps(_finite(result.as_dict()), indent=2, allow_nan=False))
    else:
        _print_table(result)
        if args.plot:
            print(f"\nplot: {args.plot}")
    return 0


def _finite(value: Any) -> Any:
    """NaN (no queries, no latency) as JSON null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _demo_index(dsn: str | None) -> str:
    """The quickstart's index, built (offline, about a minute) unless it is already there as bundled."""
    import sys

    from pgmaxsim import evaluation as ev
    from pgmaxsim.db import migrate
    from pgmaxsim.db.connect import connect, resolve_dsn
    from pgmaxsim.demo import DEMO_INDEX, DEMO_TABLE, run_demo

    migrate.upgrade(resolve_dsn(dsn))  # as the demo does: its schema may predate this pgmaxsim

    def ready() -> bool:
        with connect(dsn) as conn:
            have = conn.execute("SELECT to_regclass('maxsim.indexes') IS NOT NULL").fetchone()[0] and \
                conn.execute("SELECT 1 FROM maxsim.indexes WHERE name = %s", (DEMO_INDEX,)).fetchone()
            if not have or not ev.check_demo_pages(conn, DEMO_TABLE):
                return False
            rows = conn.execute("SELECT rows FROM maxsim.index_info(%s)", (DEMO_INDEX,)).fetchone()
            return bool(rows) and int(rows[0]) == 41

    if not ready():
        print("building the quickstart index (pgmaxsim demo, offline) ...", file=sys.stderr)
        run_demo(dsn, queries=(), out=lambda line: None)
        if not ready():
            raise PgmaxsimError(f"table {DEMO_TABLE} does not hold the corpus ids the bundled judgements name"
                                " (pgmaxsim/data/eval/pages.tsv)")
    return DEMO_INDEX


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _print_table(result: Any) -> None:
    from pgmaxsim.display import table
    from pgmaxsim.evaluation import METRICS

    metrics = [m for m in METRICS if any(r.metrics[m] is not None for r in result.rows)]
    headers = ["setting", *metrics, "top1=exact", "recall@10 vs exact", "score-mass@10", "p50 ms", "p95 ms"]
    body = [[r.setting, *[_fmt(r.metrics[m]) for m in metrics], _fmt(r.fidelity.top1), _fmt(r.fidelity.recall),
             _fmt(r.fidelity.mass, 4), _fmt(r.p50_ms, 1), _fmt(r.p95_ms, 1)] for r in result.rows]
    judged = "judged" if result.judged else "unjudged (fidelity and latency only)"
    print(f"index {result.index!r}: {result.rows_in_index} rows, {result.queries} {judged} queries, k={result.k}")
    table(headers, body, right=list(range(1, len(headers))))
    if result.judged and "recall@100" not in metrics:
        print("(recall@100 needs -k 100)")
