"""The phrase benchmark (bench/phrase.py) through pgmaxsim in PostgreSQL, per first stage.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/phrase_pg.py                      # 1,300 sections, 300 queries
    HF_HUB_OFFLINE=1 .venv/bin/python bench/phrase_pg.py --sections 600 --queries 100

The bundled MiniLM over Python standard-library doc sections (bench/phrase.py: corpus, queries,
embedding cache). One index per first stage over the same source table, filled with
pgmaxsim.writes.write_rows in batches of 64 (write ms/row: those calls alone). A codebook index is
maintained as the worker's trainer would, in line after each batch (codebook.train_due: trained once
a write marks it due, its sketch lists merged once a merge is due), then once more after the last
write as a running worker does within ~40 s (every pending row merged); ``--retrain`` retrains it
once at the end, as ``pgmaxsim index reindex NAME --first-stage`` would. Printed per first stage
and candidates, for phrase queries (6 copied words, source known) and title queries (broad words;
judged against exact search): the columns of bench/firststage_pg.py; for the codebook, the rows
its live codebook was trained on and where its first-stage bytes are.
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


def breakdown(conn: psycopg.Connection, name: str, n: int) -> str:
    """Where a codebook first stage's bytes are, per row: codebook tables, sketch lists (with their
    merged versions and codec), the codes' GIN / partial / version indexes, the codes columns."""
    iid, tok = conn.execute("SELECT id, token_table FROM maxsim.indexes WHERE name = %s", (name,)).fetchone()
    book = conn.execute("SELECT maxsim._fs_bytes(%s) - maxsim._sk_bytes(%s)", (iid, iid)).fetchone()[0]
    lists = conn.execute("SELECT maxsim._sk_bytes(%s)", (iid,)).fetchone()[0]
    idx = conn.execute("SELECT coalesce(sum(pg_relation_size(indexrelid)), 0) FROM pg_index WHERE indrelid = %s::regclass"
                       " AND indexrelid::regclass::text ~ 'codes_|uncoded_|_version$'", (f"maxsim.{tok}",)).fetchone()[0]
    col = conn.execute(f"SELECT coalesce(sum(pg_column_size(codes_0)), 0) + coalesce(sum(pg_column_size(codes_1)), 0)"
                       f" FROM maxsim.{tok}").fetchone()[0]
    return (f"first stage B/row: codebook {book / n:.0f}, sketch lists {lists / n:.0f}, codes' indexes {idx / n:.0f},"
            f" codes columns {col / n:.0f}")


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
                wrote = trainer_s = 0.0
                trained = []
                for a in range(0, n, 64):
                    t = time.perf_counter()
                    writes.write_rows(conn, spec, list(range(a, min(n, a + 64))), pages[a:a + 64])
                    wrote += time.perf_counter() - t
                    if s == "codebook":   # the worker's trainer, in line: writes only mark it due, never merge
                        t = time.perf_counter()
                        done = codebook.train_due(conn, f"p_{s}")
                        trainer_s += time.perf_counter() - t
                        if done is not None:
                            trained.append(str(done.rows))
                write_ms[s] = wrote / n * 1e3
                if s == "codebook":
                    # what a running worker does within ~40 s of the last write (pgmaxsim worker --once: before
                    # it exits): train if due, merge every pending row
                    t = time.perf_counter()
                    done = codebook.train_due(conn, f"p_{s}", merge_all=True)
                    trainer_s += time.perf_counter() - t
                    if done is not None:
                        trained.append(str(done.rows))
                    spec = get_index(conn, f"p_{s}")
                    notes.append(f"codebook trained by the worker's trainer (in line) at {', '.join(trained) or 'no'} rows;"
                                 f" live: trained on {spec.options.get('fs_rows')} of {n} rows; trainer {trainer_s:.0f} s"
                                 f" in all (not in write ms/row)")
                    if args.retrain:
                        done = codebook.train(conn, f"p_{s}")
                        notes.append(f"retrained at the end: {done.n_coarse} x {done.n_fine} codes,"
                                     f" {done.seconds_train + done.seconds_fill:.0f} s")
                    notes.append(breakdown(conn, f"p_{s}", n))
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
