"""The phrase benchmark (bench/phrase.py) through pgmaxsim in PostgreSQL, per first stage.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/phrase_pg.py                      # 1,300 sections, 300 queries
    HF_HUB_OFFLINE=1 .venv/bin/python bench/phrase_pg.py --sections 600 --queries 100

The bundled MiniLM over Python standard-library doc sections (bench/phrase.py: corpus, queries,
embedding cache). One index per first stage over the same source table, filled with
pgmaxsim.writes.write_rows (a codebook index is trained, as the worker would, once a write marks it due;
``--retrain`` retrains it once at the end, as ``pgmaxsim index reindex NAME --first-stage``
would). Printed per first stage and candidates, for phrase queries (6 copied words, source
known) and title queries (broad words; judged against exact search): the columns of
bench/firststage_pg.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plugin"))

from _server import bench_server
from firststage_pg import HEADER, exact_top10, table_rows
from phrase import PHRASE, encode, sections, title_words


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", type=int, default=1300)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--budgets", default="13,26,64")
    ap.add_argument("--first-stages", default="codebook,centroids")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="codebook index option")
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--sketch-tops", default="10",
                    help="codebook rows per option sketch_top (rows the residual sketch lists put first; 0: off)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/pgmaxsim-bench-phrase"))
    args = ap.parse_args(argv)

    secs = sections(args.sections)
    texts = [f"{q}: {t}" for q, t in secs]
    pages = encode(texts, args.cache, "docs")
    rng = np.random.default_rng(args.seed + 1)
    sources = rng.choice(len(secs), size=min(args.queries, len(secs)), replace=False)
    phrases = []
    for i in sources:
        words = texts[i].split()
        a = int(rng.integers(0, max(1, min(len(words), 120) - PHRASE)))
        phrases.append(" ".join(words[a:a + PHRASE]))
    qp = encode(phrases, args.cache, "phrase")
    qt = encode([title_words(secs[i][0]) for i in sources], args.cache, "title")

    from pgmaxsim import codebook, writes
    from pgmaxsim.db.adapters import register_tokens
    from pgmaxsim.registry import get_index

    extra = {k: json.loads(v) for k, _, v in (p.partition("=") for p in args.option)}
    stages = args.first_stages.split(",")
    n = len(pages)
    with bench_server(settings={"shared_buffers": "512MB"}) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            register_tokens(conn)
            conn.execute("CREATE TABLE sections (id int PRIMARY KEY)")
            conn.execute("INSERT INTO sections SELECT generate_series(0, %s)", (n - 1,))
            write_ms, notes = {}, []
            for s in stages:
                conn.execute("SELECT maxsim.create_index(%s, 'sections', 'id', dim => 384, options => %s::jsonb)",
                             (f"p_{s}", json.dumps({"first_stage": s} | (extra if s == "codebook" else {}))))
                spec = get_index(conn, f"p_{s}")
                t = time.perf_counter()
                for a in range(0, n, 64):
                    writes.write_rows(conn, spec, list(range(a, min(n, a + 64))), pages[a:a + 64])
                    if s == "codebook":   # the worker's trainer, in line: writes only mark it due
                        codebook.train_due(conn, f"p_{s}")
                write_ms[s] = (time.perf_counter() - t) / n * 1e3
                if s == "codebook":
                    spec = get_index(conn, f"p_{s}")
                    notes.append(f"codebook trained as writes made it due, on {spec.options.get('fs_rows')} rows")
                    if args.retrain:
                        done = codebook.train(conn, f"p_{s}")
                        notes.append(f"retrained at the end: {done.n_coarse} x {done.n_fine} codes,"
                                     f" {done.seconds_train + done.seconds_fill:.0f} s")
            conn.execute("VACUUM ANALYZE")
            fp16 = float(np.mean([p.shape[0] * p.shape[1] * 2 for p in pages]))
            budgets = [int(b) for b in args.budgets.split(",")]
            out = [(f"## phrase benchmark through maxsim.search: MiniLM, {n} sections, {len(sources)} queries;"
                    f" load {os.getloadavg()[0]:.1f}"), *notes]
            for label, qs, src in (("phrase (6 copied words)", qp, [int(i) for i in sources]), ("title", qt, None)):
                exact = exact_top10(conn, f"p_{stages[0]}", qs, n)
                out += ["", f"#### {label} queries", "", HEADER, "|---|---|---|---|---|---|---|---|---|---|"]
                if src is not None:
                    top1 = np.mean([bool(e) and e[0][0] == str(s) for e, s in zip(exact, src)])
                    out.append(f"| exact | {n} (100%) | {top1:.1%} | 1.000 | 1.0000 | - | - | - | - | - |")
                for s in stages:
                    for top in ([int(t) for t in args.sketch_tops.split(",")] if s == "codebook" else [None]):
                        label_s = s
                        if top is not None:
                            conn.execute("UPDATE maxsim.indexes SET options = options"
                                         " || jsonb_build_object('sketch_top', %s::int) WHERE name = %s", (top, f"p_{s}"))
                            label_s = f"codebook + sketch top {top}" if top else "codebook (no sketch)"
                        out += table_rows(conn, f"p_{s}", label_s, qs, src, exact, budgets, n, fp16, write_ms[s])
        print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
