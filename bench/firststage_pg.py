"""First stages through pgmaxsim itself, in PostgreSQL: needle pages, per first stage and candidates.

    .venv/bin/python bench/firststage_pg.py --pages 10000 --queries 30
    .venv/bin/python bench/firststage_pg.py --pages 1000 --queries 20 --first-stages codebook,centroids,mean   # quick
    .venv/bin/python bench/firststage_pg.py --dsn DSN --pages 100000 --first-stages codebook --storage int8 \
        --trainer worker --checkpoint ck.npz --build-only      # then the same with --resume (no --build-only)

Needle corpus of bench/needle.py (hard needle: 14 near-copies of one page's tokens + 10 generic
tokens of its two most popular topics). Starts a PostgreSQL 15 like the test suite (or --dsn),
creates one index per first stage (``maxsim.create_index(..., options => {"first_stage": ...})``)
over the same source table, writes every page into each with pgmaxsim.writes.write_rows (the
worker's and Index.upsert's write path; a codebook index is trained whenever a write marks it due,
as the worker's trainer would, and those trainings are counted in its write time), optionally retrains the codebook once at the end
(``--retrain``: ``pgmaxsim index reindex NAME --first-stage``), then runs the queries through
``maxsim.search(name, q, 10, candidates)``.

The corpus is never held: pages are generated per batch from their own seed (NeedleCorpus), and
the exact reference (``--exact stream``, the default) is exact MaxSim in NumPy over what the index
stores (each page pooled, encoded and decoded as pgmaxsim.writes stores it: dequantized int8 for
int8), scored as the batch streams by; ``--exact both`` also runs the exhaustive
``maxsim.search`` (hours at 100K) and prints how the two agree. ``--checkpoint`` keeps the streamed
scores, and ``--resume`` goes on writing an index stopped part way (each batch commits whole).
``--trainer worker`` trains the codebook with the worker's own background trainer thread
(pgmaxsim.worker.train) beside the writes instead of in line. Printed per first stage and candidates: the source
row at top-1, recall@10 and score-mass@10 against exact search (same server), p50/p95 of the
whole search from a client, bytes of the first stage per row (and % of the fp16 token bytes),
index_info.bytes per row, write cost per row.
"""

from __future__ import annotations

import argparse
import calendar
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plugin"))

from _server import bench_server
from needle import NeedleCorpus
from search import percentile


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
    # the codebook tables and the residual sketch lists, with their partitions by slot
    book = int(conn.execute("SELECT maxsim._fs_bytes(%s)", (iid,)).fetchone()[0])
    gin = int(conn.execute(idx, (f"maxsim.{tok}", "codes_|uncoded_|_version$")).fetchone()[0])
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
    ap.add_argument("--storage", default="fp16", choices=["fp16", "int8"], help="index option storage")
    ap.add_argument("--pool-factor", type=int, default=1, help="index option pool_factor")
    ap.add_argument("--exact", default="stream", choices=["stream", "pg", "both"],
                    help="exact reference: NumPy over the stored form of each page as it streams by (stream), an"
                         " exhaustive maxsim.search per query (pg: hours at 100K), or both, compared (a self-check)")
    ap.add_argument("--checkpoint", help=".npz keeping the streamed exact scores (with --dsn --resume/--reuse:"
                                          " a stopped run goes on without rescoring)")
    ap.add_argument("--checkpoint-every", type=int, default=50, help="batches between two checkpoints")
    ap.add_argument("--trainer", default="inline", choices=["inline", "worker"],
                    help="codebook training: in line after the write that made it due (counted in the write"
                         " time), or the worker's background trainer thread (pgmaxsim.worker.train) beside the"
                         " writes, drained at the end as `worker --once` does")
    ap.add_argument("--hold-codebook", action="store_true",
                    help="after the codebook's first training, hold it for the rest of the writes (option fs_rows"
                         " set past any growth: no retrain comes due; the sketch lists are still merged as usual),"
                         " so a large build pays one fill instead of one per doubling")
    ap.add_argument("--resume", action="store_true",
                    help="with --dsn: as --reuse, and an index stopped part way is written on from its last batch")
    ap.add_argument("--sources-among", type=int, default=0,
                    help="draw the query sources among the first N pages (default: all); with --write-until, a run"
                         " stopped at any size >= N keeps the same queries and its streamed reference")
    ap.add_argument("--write-until", help="HH:MM (UTC): stop writing then and go on with the pages written")
    ap.add_argument("--merge-before-search", action="store_true",
                    help="merge the rows written since the sketch lists' last merge before searching (else they"
                         " are searched as pending rows, as right after a write)")
    ap.add_argument("--split", action="store_true",
                    help="a second pass at the first budget with pgmaxsim.timing: median ms per search stage")
    ap.add_argument("--no-vacuum", action="store_true", help="skip the VACUUM ANALYZE before searching")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dsn", help="an existing server with pgvector and pgmaxsim's migrations")
    ap.add_argument("--reuse", action="store_true",
                    help="with --dsn: keep the indexes fs_<stage> already written there by an earlier run (the"
                         " write cost is then not measured); only the missing ones are written")
    args = ap.parse_args(argv)
    with bench_server(args.dsn, settings={"shared_buffers": "1GB", "max_wal_size": "8GB"}) as dsn:
        return _run(dsn, args)


def _written(conn: psycopg.Connection[Any], name: str, n: int) -> bool:
    row = conn.execute("SELECT token_table FROM maxsim.indexes WHERE name = %s", (name,)).fetchone()
    if row is None:
        return False
    return int(conn.execute(f"SELECT count(*) FROM maxsim.{row[0]}").fetchone()[0]) == n


def _prefix(conn: psycopg.Connection[Any], name: str) -> int | None:
    """Rows 1..m of index ``name`` when they are exactly what it holds (a run stopped between two
    batches: each write_rows commits whole), else None."""
    row = conn.execute("SELECT token_table FROM maxsim.indexes WHERE name = %s", (name,)).fetchone()
    if row is None:
        return None
    m, top = conn.execute(f"SELECT count(*), coalesce(max(id::bigint), 0) FROM maxsim.{row[0]}").fetchone()
    return int(m) if int(m) == int(top) else None


def pick_sources(corpus: NeedleCorpus, among: int, k: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """``k`` query source pages drawn among the first ``among`` and their needle queries. A page with
    fewer tokens of its two main topics than a query copies cannot be a source: it is replaced by the
    next page of a seeded permutation (the draw is unchanged where every page can, as at 10K)."""
    rng = np.random.default_rng(seed)
    sources = [int(i) for i in rng.choice(among, size=k, replace=False)]
    spare = (int(i) for i in rng.permutation(among) if int(i) not in sources)
    queries = []
    for j, i in enumerate(sources):
        while True:
            try:
                queries.append(corpus.query(i))
                break
            except ValueError:
                i = sources[j] = next(spare)
    return np.array(sources), queries


def _merge_pending(conn: psycopg.Connection[Any], name: str, merge: bool) -> str:
    """How many rows of codebook index ``name`` are not yet in its live sketch lists (search takes them
    all as candidates, or falls back to the GIN path past max(1,000, candidates)); with ``merge``,
    merge them now (maxsim.first_stage_sketch_merge, what writers do past 5 % pending), timed."""
    iid, tok, gen = conn.execute("SELECT id, token_table, (options ->> 'fs_gen')::int FROM maxsim.indexes"
                                 " WHERE name = %s", (name,)).fetchone()
    if gen is None:
        return f"{name}: untrained (searched exactly)"
    pending = "SELECT count(*) FROM maxsim.{t} t WHERE NOT EXISTS (SELECT 1 FROM maxsim.fs_skrow_{i} s" \
              " WHERE s.slot = {g} AND s.version = t.version)".format(t=tok, i=iid, g=gen % 2)
    before = int(conn.execute(pending).fetchone()[0])
    if not merge or not before:
        return f"{name}: {before} rows pending (not in the sketch lists) at search time"
    t = time.perf_counter()
    conn.execute("SELECT maxsim.first_stage_sketch_merge(%s)", (name,))
    return (f"{name}: {before} rows pending after the last write, merged before searching in"
            f" {time.perf_counter() - t:.1f} s ({int(conn.execute(pending).fetchone()[0])} left)")


def hold_codebook(conn: psycopg.Connection[Any], name: str) -> bool:
    """--hold-codebook: once ``name`` is trained, raise its trained-rows option past any growth so that
    no retrain comes due (maxsim._fs_due); True once done."""
    done = conn.execute("UPDATE maxsim.indexes SET options = options || '{\"fs_rows\": 2000000000}'::jsonb"
                        " WHERE name = %s AND options ? 'fs_gen' RETURNING options ->> 'fs_gen'", (name,)).fetchone()
    if done:
        _log(f"  --hold-codebook: {name} generation {done[0]} held for the rest of the writes")
    return done is not None


def _deadline(hhmm: str | None) -> float:
    """The epoch second of today's ``HH:MM`` UTC (inf when none)."""
    if not hhmm:
        return float("inf")
    h, m = (int(x) for x in hhmm.split(":"))
    now = time.gmtime()
    return calendar.timegm((now.tm_year, now.tm_mon, now.tm_mday, h, m, 0))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def stored_form(page: np.ndarray, storage: str, pool_factor: int) -> np.ndarray:
    """A page's tokens as the index stores them (pooled, encoded, decoded: pgmaxsim.writes), float32."""
    from pgmaxsim import pooling
    from pgmaxsim.kernels import quantize

    arr = pooling.pool_tokens(page, pool_factor) if pool_factor > 1 else page
    blob = quantize.encode_tokens(arr, storage)
    return quantize.dequantize(*quantize.decode_tokens(blob, page.shape[1], storage)).astype(np.float32)


class StreamExact:
    """Exact MaxSim of every query against every page, filled batch by batch as the pages stream by
    (over what the index stores), so no pass through PostgreSQL and no corpus in memory is needed:
    ``(n_queries, n_pages)`` float32 (30 x 100K is 12 MB). Checkpointed to ``path`` (.npz) with the
    pages done, so a resumed run only scores the pages it has not scored."""

    def __init__(self, queries: list[np.ndarray], n: int, storage: str, pool_factor: int, key: dict[str, Any],
                 path: Path | None) -> None:
        self.qall = np.concatenate(queries).astype(np.float32)
        self.starts = np.cumsum([0] + [len(q) for q in queries[:-1]])
        self.storage, self.pool_factor, self.key, self.path = storage, pool_factor, key, path
        self.scores = np.full((len(queries), n), -np.inf, dtype=np.float32)
        self.done = 0   # pages [0, done) scored
        self.seconds = 0.0
        if path is not None and path.exists():
            z = np.load(path, allow_pickle=False)
            if {k: str(v) for k, v in key.items()} == {k: str(z[f"key_{k}"]) for k in key}:
                self.done = int(z["done"])
                self.scores[:, :self.done] = z["scores"][:, :self.done]
            else:
                _log(f"  checkpoint {path} is for another corpus/storage: ignored")

    def add(self, first: int, pages: list[np.ndarray]) -> None:
        """Score pages ``first .. first + len(pages) - 1`` (0-based) unless already scored."""
        if first + len(pages) <= self.done:
            return
        assert first == self.done, (first, self.done)
        t = time.perf_counter()
        docs = [stored_form(p, self.storage, self.pool_factor) for p in pages]
        offsets = np.cumsum([0] + [len(d) for d in docs[:-1]])
        best = np.maximum.reduceat(np.concatenate(docs) @ self.qall.T, offsets, axis=0)   # (pages, query tokens)
        self.scores[:, first:first + len(pages)] = np.add.reduceat(best, self.starts, axis=1).T
        self.done = first + len(pages)
        self.seconds += time.perf_counter() - t

    def save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(tmp, scores=self.scores[:, :self.done], done=self.done,
                 **{f"key_{k}": np.array(str(v)) for k, v in self.key.items()})
        os.replace(tmp, self.path)

    def top10(self, n: int) -> list[list[tuple[str, float]]]:
        """The exact top-10 of each query over pages ``0 .. n-1`` as ``exact_top10`` gives it (ids are page + 1)."""
        assert self.done >= n, "not every page is scored"
        out = []
        for row in self.scores[:, :n]:
            top = np.argsort(-row, kind="stable")[:10]
            out.append([(str(int(j) + 1), float(row[j])) for j in top])
        return out


def compare_exact(pg: list[list[tuple[str, float]]], mine: list[list[tuple[str, float]]]) -> str:
    """How the streamed NumPy reference agrees with exhaustive maxsim.search (the self-check)."""
    same = sum({i for i, _ in a} == {i for i, _ in b} for a, b in zip(pg, mine))
    first = sum(bool(a) and bool(b) and a[0][0] == b[0][0] for a, b in zip(pg, mine))
    diff = max((abs(dict(a)[i] - s) for a, b in zip(pg, mine) for i, s in b if i in dict(a)), default=float("nan"))
    return (f"exact reference self-check: streamed NumPy vs exhaustive maxsim.search: same top-10 set in"
            f" {same}/{len(pg)} queries, same top-1 in {first}/{len(pg)}, max |score diff| {diff:.2e}")


def relation_bytes(conn: psycopg.Connection[Any], name: str) -> list[tuple[str, int]]:
    """(relation, bytes) of everything index ``name`` stores: the token table's heap, TOAST and each
    of its indexes, and every maxsim table of the index (``*_<id>``: codebook, sketch lists, centroids)."""
    tok, iid = conn.execute("SELECT token_table, id FROM maxsim.indexes WHERE name = %s", (name,)).fetchone()
    return [(str(label), int(b)) for label, b in conn.execute("""
        SELECT 'token heap', pg_relation_size(c.oid) FROM pg_class c WHERE c.oid = %(t)s::regclass
        UNION ALL SELECT 'token TOAST (+ its index)', pg_total_relation_size(c.reltoastrelid)
          FROM pg_class c WHERE c.oid = %(t)s::regclass AND c.reltoastrelid <> 0
        UNION ALL SELECT 'index ' || replace(i.indexrelid::regclass::text, %(t)s::text, 'tok'), pg_relation_size(i.indexrelid)
          FROM pg_index i WHERE i.indrelid = %(t)s::regclass
        UNION ALL SELECT 'table ' || c.relname, pg_total_relation_size(c.oid) FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'maxsim' AND c.relkind = 'r' AND c.relname ~ %(suffix)s AND c.relname <> %(tn)s
        """, {"t": f"maxsim.{tok}", "tn": tok, "suffix": f"_{iid}$"}).fetchall()]


def function_times(conn: psycopg.Connection[Any]) -> list[str]:
    """The first stage's server functions by total time (pg_stat_user_functions: the server needs
    track_functions = pl or all; empty otherwise)."""
    rows = conn.execute("""SELECT funcname, calls, total_time, self_time FROM pg_stat_user_functions
                            WHERE schemaname = 'maxsim' AND funcname ~ '^(first_stage|_fs|_sk|sk_|_sketch)'
                            ORDER BY total_time DESC LIMIT 12""").fetchall()
    return [f"  {f}: {c} calls, {tt / 1e3:.1f} s total ({st / 1e3:.1f} s self)" for f, c, tt, st in rows]


def _trainer(dsn: str) -> Any:
    """The worker's first-stage trainer (pgmaxsim.worker.train), each training timed."""
    from pgmaxsim.worker.train import Trainer

    class Timed(Trainer):
        def __init__(self) -> None:
            super().__init__(dsn, ["fs_codebook"])
            self.seconds: list[tuple[str, float]] = []

        def _merge(self, conn: psycopg.Connection[Any], name: str, merge_all: bool) -> None:
            from pgmaxsim import sketch_lists

            sketch_lists.merge_calls(conn, name, not merge_all)   # the drain's settle is timed apart (_settle)

        def _train(self, conn: psycopg.Connection[Any], name: str) -> None:
            t = time.perf_counter()
            super()._train(conn, name)
            self.seconds.append((time.strftime("%H:%M:%S", time.gmtime()), time.perf_counter() - t))
            _log(f"  trainer: trained {name} in {self.seconds[-1][1]:.0f} s, load {os.getloadavg()[0]:.1f}")

    return Timed()


def _settle(conn: psycopg.Connection[Any], name: str, raw: int) -> str:
    """Settle the sketch lists into one segment, as ``pgmaxsim worker --once`` does as it drains,
    timed, with the index's bytes before and after."""
    from pgmaxsim import sketch_lists

    iid = conn.execute("SELECT id FROM maxsim.indexes WHERE name = %s", (name,)).fetchone()[0]
    segs = conn.execute(f"SELECT count(DISTINCT seg) FROM maxsim.fs_sk_{int(iid)}").fetchone()[0]
    before = sum(b for _, b in relation_bytes(conn, name))
    t = time.perf_counter()
    sketch_lists.merge(conn, name, settle=True)
    took = time.perf_counter() - t
    after = sum(b for _, b in relation_bytes(conn, name))
    return (f"{name}: sketch lists settled from {segs} segments into one in {took:.0f} s: index bytes"
            f" {before / raw:.4f} -> {after / raw:.4f} x raw fp16 ({(before - after) / 2**20:.1f} MiB less)")


def _run(dsn: str, args: argparse.Namespace) -> int:
    import json

    from pgmaxsim import codebook, writes
    from pgmaxsim.db.adapters import register_tokens
    from pgmaxsim.registry import get_index

    n = args.pages
    stages = args.first_stages.split(",")
    corpus = NeedleCorpus(n, args.seed)
    among = args.sources_among or n
    sources, queries = pick_sources(corpus, among, args.queries, args.seed + 1)
    stop_at = _deadline(args.write_until)
    extra = {}
    for pair in args.option:
        k, _, v = pair.partition("=")
        extra[k] = json.loads(v)
    tier = {"storage": args.storage, "pool_factor": args.pool_factor}
    write_s = dict.fromkeys(stages, 0.0)
    raw = 0
    gen_s = 0.0
    t_start = time.time()
    with psycopg.connect(dsn, autocommit=True) as conn:
        register_tokens(conn)
        have, start = set(), {}
        if args.reuse or args.resume:
            have = {s for s in stages if _written(conn, f"fs_{s}", n)}
            if args.resume:   # partly written indexes go on from their last whole batch
                start = {s: m for s in stages if s not in have and (m := _prefix(conn, f"fs_{s}")) is not None}
        else:
            conn.execute("DROP TABLE IF EXISTS pages CASCADE")
        conn.execute("CREATE TABLE IF NOT EXISTS pages (id bigint PRIMARY KEY)")
        conn.execute("INSERT INTO pages SELECT generate_series(1, %s) ON CONFLICT DO NOTHING", (n,))
        todo = [s for s in stages if s not in have]
        for s in todo:
            if s in start:
                _log(f"  resuming fs_{s} after its {start[s]} rows")
                continue
            opts = {"first_stage": s} | tier | (extra if s == "codebook" else {})
            if args.reuse or args.resume:
                conn.execute("SELECT maxsim.drop_index(name) FROM maxsim.indexes WHERE name = %s", (f"fs_{s}",))
            conn.execute("SELECT maxsim.create_index(%s, 'pages', 'id', dim => 128, options => %s::jsonb)",
                         (f"fs_{s}", json.dumps(opts)))
            start[s] = 0
        specs = {s: get_index(conn, f"fs_{s}") for s in todo}
        ref = get_index(conn, f"fs_{stages[0]}")
        exact_ref = None
        if args.exact in ("stream", "both"):
            key = {"pages": n, "seed": args.seed, "queries": args.queries, "sources_among": among,
                   "storage": ref.storage, "pool_factor": ref.pool_factor}
            exact_ref = StreamExact(queries, n, ref.storage, ref.pool_factor, key,
                                    Path(args.checkpoint) if args.checkpoint else None)
            if exact_ref.done:
                _log(f"  exact reference: {exact_ref.done} pages already scored ({args.checkpoint})")
        trainer = _trainer(dsn) if args.trainer == "worker" and "codebook" in todo else None
        first = min(start.values(), default=n)
        if exact_ref is not None:
            first = min(first, exact_ref.done)
        first -= first % args.batch
        t_loop = time.perf_counter()
        held = False
        for a in range(first, n, args.batch):
            if time.time() >= stop_at and todo and a >= among and a >= max(start.values()):
                n = a   # the pages written: page i is the same whatever the corpus size (NeedleCorpus)
                _log(f"  --write-until {args.write_until} reached: going on with the {n} pages written")
                break   # (not before every query source is written: past the deadline if need be)
            ids = list(range(a + 1, min(n, a + args.batch) + 1))
            t = time.perf_counter()
            pages = [corpus.page(i - 1)[0] for i in ids]
            gen_s += time.perf_counter() - t
            raw += sum(p.shape[0] * p.shape[1] * 2 for p in pages)
            for s in todo:
                if a < start[s]:
                    continue
                t = time.perf_counter()
                writes.write_rows(conn, specs[s], ids, pages)
                if s == "codebook":
                    if trainer is not None:
                        trainer.poke()   # the worker's loop: its trainer thread trains what writes marked due
                    else:                # the worker's trainer, run in line: writes only mark it due
                        codebook.train_due(conn, "fs_codebook")
                    if args.hold_codebook and not held:
                        held = hold_codebook(conn, "fs_codebook")
                write_s[s] += time.perf_counter() - t
            if exact_ref is not None:
                exact_ref.add(a, pages)
            k = a // args.batch
            if k % 25 == 0:
                done = ids[-1] - first
                _log(f"  wrote {ids[-1]}/{n}: " + ", ".join(f"{s} {write_s[s] / max(1, ids[-1] - start[s]) * 1e3:.1f} ms/row"
                                                         for s in todo)
                     + f"; {done / (time.perf_counter() - t_loop):.0f} pages/s all in; load {os.getloadavg()[0]:.1f};"
                       f" {time.strftime('%H:%M:%S', time.gmtime())}")
            if exact_ref is not None and k % args.checkpoint_every == 0:
                exact_ref.save()
        loop_s = time.perf_counter() - t_loop
        if exact_ref is not None:
            exact_ref.save()
        train_wait = 0.0
        if trainer is not None:
            t = time.perf_counter()
            trainer.drain()   # what the worker's --once does before it exits
            train_wait = time.perf_counter() - t
            trainer.stop()
        reused = not todo or any(start[s] for s in todo)
        if reused:   # the fp16 bytes of the stored tokens
            raw = 2 * 128 * int(conn.execute(f"SELECT sum(n_raw_tokens) FROM maxsim.{ref.token_table}").fetchone()[0])
        notes = [f"storage {ref.storage}, pool factor {ref.pool_factor}; trainer: {args.trainer}"]
        if "codebook" in todo:
            notes.append(_settle(conn, "fs_codebook", raw))
        if todo and not reused:
            notes.append("writes (write_rows" + (" + trainings in line" if trainer is None else "") + ", page generation"
                         " excluded): " + ", ".join(f"{s} {write_s[s]:.0f} s = {n / write_s[s]:.0f} pages/s" for s in todo)
                         + f"; page generation {gen_s:.0f} s; streamed exact reference {exact_ref.seconds if exact_ref else 0:.0f} s;"
                           f" loop {loop_s:.0f} s wall")
        if trainer is not None:
            notes.append(f"trainings by the worker's trainer thread: {len(trainer.seconds)}, "
                         + ", ".join(f"{s:.0f} s (ended {at})" for at, s in trainer.seconds)
                         + f"; total {sum(s for _, s in trainer.seconds):.0f} s; after the last write the drain waited {train_wait:.0f} s")
        for line in notes:
            _log(line)
        times = function_times(conn)
        if times:
            notes.append("server time per first-stage function (pg_stat_user_functions, since the server's stats reset):")
            notes += times
            _log("\n".join(times))
        if args.build_only:
            print("\n".join(notes))
            return 0
        if "codebook" in stages:
            spec = get_index(conn, "fs_codebook")
            notes.append(f"codebook trained as writes made it due: generation {spec.options.get('fs_gen')}"
                         f" on {spec.options.get('fs_rows')} rows")
            if args.retrain:
                done = codebook.train(conn, "fs_codebook")
                notes.append(f"retrained at the end: {done.n_coarse} x {done.n_fine} codes on {done.sample_tokens:,}"
                             f" tokens in {done.seconds_train:.0f} s, {n} rows assigned in {done.seconds_fill:.0f} s")
            _log(notes[-1])
        if not args.no_vacuum:
            t = time.perf_counter()
            conn.execute("VACUUM ANALYZE")
            _log(f"  VACUUM ANALYZE {time.perf_counter() - t:.0f} s")
        fp16 = raw / n
        # exact reference (scores are the same in every index of one tier: the same stored tokens)
        if args.write_until and todo and n < args.pages:
            notes.append(f"stopped writing at --write-until {args.write_until}: {n:,} of {args.pages:,} pages written"
                         f" (the first {n:,} pages of the {args.pages:,}-page corpus: go on with --resume)")
        if exact_ref is not None and exact_ref.done < n:
            for a in range(exact_ref.done - exact_ref.done % args.batch, n, args.batch):
                exact_ref.add(a, [corpus.page(i)[0] for i in range(a, min(n, a + args.batch))])
            exact_ref.save()
        exact = exact_ref.top10(n) if exact_ref is not None else exact_top10(conn, f"fs_{stages[0]}", queries, n)
        if args.exact == "both":
            notes.append(compare_exact(exact_top10(conn, f"fs_{stages[0]}", queries, n), exact))
            _log(notes[-1])
        if "codebook" in stages:
            notes.append(_merge_pending(conn, "fs_codebook", args.merge_before_search))
            _log(notes[-1])
        budgets = [max(10, int(float(b[:-1]) / 100 * n)) if b.endswith("%") else int(b)
                   for b in args.budgets.split(",")]
        for s in stages:
            rel = relation_bytes(conn, f"fs_{s}")
            total = sum(b for _, b in rel)
            notes.append(f"bytes of fs_{s}: {total / 2**30:.2f} GiB = {total / raw:.3f} x raw fp16 ({raw / 2**30:.2f} GiB): "
                         + ", ".join(f"{lab} {b / 2**20:,.0f} MiB" for lab, b in rel if b >= 2**20))
            _log(notes[-1])
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
                                  fp16, write_s[s] / n * 1e3 if s in todo and not reused else float("nan"))
                if args.split:
                    from scale import timed_split

                    sp = timed_split(conn, queries, f"fs_{s}", budgets[0])
                    notes.append(f"{label}, {budgets[0]} candidates, median ms per stage (pgmaxsim.timing):"
                                 f" candidates {sp['candidates']:.1f}, rescore {sp['rescore']:.1f},"
                                 f" token fetch {sp['fetch']:.1f}, exact scoring {sp['score']:.1f}")
                    _log(notes[-1])
                    out.append(notes[-1])
    out.append(f"(whole run {time.time() - t_start:.0f} s; load at the end {os.getloadavg()})")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
