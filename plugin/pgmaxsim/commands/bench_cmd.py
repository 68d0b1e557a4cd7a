"""``pgmaxsim bench``: a quick built-in micro-benchmark, or one of the repository's bench/ scripts.

Built-in (default): on the target database, a temporary table and index of
synthetic pages (unit-norm tokens clustered by topic, like ColQwen pages),
written with ``Index.upsert`` (binary COPY); then queries made from a page's
topics, searched through ``maxsim.search`` at the index's default settings
and exactly. Prints write rate, p50/p95 latency and fidelity against exact
search (top-1 agreement, recall@10), then drops everything it created.

``--script NAME [ARGS…]`` runs ``bench/NAME.py`` of a source checkout
(search, ingest, encode, gpu: the full benchmarks of each subsystem) with the
same Python, passing ARGS through.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from psycopg import sql

from pgmaxsim.errors import PgmaxsimError

EPILOG = """\
examples:
  pgmaxsim bench                                   # 1,000 pages of 100-300 tokens, d=128
  pgmaxsim bench --pages 10000 --queries 50
  pgmaxsim --dsn postgresql://u@host/db bench --pages 5000
  pgmaxsim bench --script search -- --sizes 1000   # bench/search.py from a source checkout
"""

TOPICS = 256  # shared topic directions; each page also has a private one


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="quick built-in search benchmark, or run a bench/ script",
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--pages", type=int, default=1000, help="synthetic pages (default: 1000)")
    p.add_argument("--min-tokens", type=int, default=100, help="tokens per page, lower bound (default: 100)")
    p.add_argument("--max-tokens", type=int, default=300, help="tokens per page, upper bound (default: 300)")
    p.add_argument("--dim", type=int, default=128, help="embedding dim (default: 128)")
    p.add_argument("--queries", type=int, default=20, help="queries (default: 20)")
    p.add_argument("--query-tokens", type=int, default=24, help="tokens per query (default: 24)")
    p.add_argument("--pooling", choices=["centroids", "mean"], default="centroids")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--script", metavar="NAME", help="run bench/NAME.py of the source checkout instead")
    p.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments for --script (after --)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.script:
        return run_script(args.script, [a for a in args.script_args if a != "--"], args.dsn)
    if args.script_args:
        raise PgmaxsimError(f"unexpected arguments {' '.join(args.script_args)} (they go with --script NAME)")
    for name in ("pages", "min_tokens", "max_tokens", "dim", "queries", "query_tokens"):
        if getattr(args, name) <= 0:
            raise PgmaxsimError(f"--{name.replace('_', '-')} must be positive")
    if args.min_tokens > args.max_tokens:
        raise PgmaxsimError("--min-tokens is larger than --max-tokens")
    result = micro_bench(args.dsn, pages=args.pages, tokens=(args.min_tokens, args.max_tokens), dim=args.dim,
                         queries=args.queries, query_tokens=args.query_tokens, pooling=args.pooling,
                         seed=args.seed)
    result.print()
    return 0


def run_script(name: str, argv: list[str], dsn: str | None) -> int:
    """Run ``bench/<name>.py`` from the source checkout this package is installed from."""
    root = Path(__file__).resolve().parents[3]
    bench = root / "bench"
    script = bench / f"{name.removesuffix('.py')}.py"
    if not bench.is_dir():
        raise PgmaxsimError("bench/ scripts come with a source checkout (git clone); this installation has none."
                            " The built-in `pgmaxsim bench` works everywhere")
    if not script.is_file():
        have = ", ".join(sorted(p.stem for p in bench.glob("*.py") if not p.stem.startswith("_")))
        raise PgmaxsimError(f"no benchmark {name!r} in {bench} (have: {have})")
    env = dict(os.environ)
    if dsn:
        env["DATABASE_URL"] = dsn
    return subprocess.call([sys.executable, str(script), *argv], cwd=str(root), env=env)


# ---------------------------------------------------------------- synthetic data

def synthetic_pages(n: int, tokens: tuple[int, int], dim: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` pages of unit fp16 tokens: 70 % around 3 of ``TOPICS`` shared topic directions,
    30 % around a direction of the page's own, plus noise (norm about 0.5).

    Returns (pages, page_topics) with page_topics (n, 3) the shared topic ids of each page.
    """
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((TOPICS, dim)))
    topics = np.stack([rng.choice(TOPICS, 3, replace=False) for _ in range(n)])
    pages = []
    for i in range(n):
        m = int(rng.integers(tokens[0], tokens[1] + 1))
        own = _unit(rng.standard_normal((1, dim)))
        base = np.where((rng.random(m) < 0.7)[:, None], centres[topics[i][rng.integers(0, 3, m)]], own)
        x = base + 0.5 * rng.standard_normal((m, dim)) / np.sqrt(dim)
        pages.append(_unit(x).astype(np.float16))
    return pages, topics


def synthetic_query(page: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A query of ``n`` noisy copies of tokens of ``page`` (it shares the page's topics)."""
    idx = rng.integers(0, page.shape[0], n)
    x = page[idx].astype(np.float64) + 0.3 * rng.standard_normal((n, page.shape[1])) / np.sqrt(page.shape[1])
    return _unit(x)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------- the benchmark

@dataclass
class BenchResult:
    server: str
    pages: int
    tokens: int
    dim: int
    pooling: str
    write_s: float
    storage_bytes: int
    default_ms: list[float]
    exact_ms: list[float]
    top1: float
    recall10: float
    mass10: float

    def print(self) -> None:
        from pgmaxsim.display import human_bytes, table

        print(f"pgmaxsim bench: {self.pages} pages, {self.tokens / self.pages:.0f} tokens/page avg, d={self.dim},"
              f" pooling {self.pooling}; {self.server}")
        print(f"write (Index.upsert, binary COPY): {self.pages / self.write_s:,.0f} pages/s;"
              f" storage {human_bytes(self.storage_bytes)} ({human_bytes(self.storage_bytes / self.pages)}/page)")
        rows = []
        for label, ms in (("maxsim.search (default candidates)", self.default_ms),
                          ("maxsim.search (exact: every row)", self.exact_ms)):
            rows.append([label, len(ms), f"{np.percentile(ms, 50):.1f}", f"{np.percentile(ms, 95):.1f}"])
        table(["query", "n", "p50 ms", "p95 ms"], rows, right=[1, 2, 3])
        print(f"fidelity of the default vs exact: top-1 agreement {self.top1:.0%}, recall@10 {self.recall10:.0%},"
              f" score-mass@10 {self.mass10:.3f} (exact scores of the returned 10 / of the exact top 10)")


def micro_bench(dsn: str | None, *, pages: int = 1000, tokens: tuple[int, int] = (100, 300), dim: int = 128,
                queries: int = 20, query_tokens: int = 24, pooling: str = "centroids", seed: int = 0,
                show_progress: bool = True) -> BenchResult:
    """Run the built-in benchmark (see module doc) and drop what it created."""
    from pgmaxsim.db.connect import connect
    from pgmaxsim.display import progress
    from pgmaxsim.index import Index
    from pgmaxsim.registry import require_schema

    data, _ = synthetic_pages(pages, tokens, dim, seed)
    rng = np.random.default_rng(seed + 1)
    targets = rng.integers(0, pages, queries)
    qs = [synthetic_query(data[t], query_tokens, rng) for t in targets]
    name = f"pgmaxsim_bench_{os.getpid()}"
    with connect(dsn) as conn:
        require_schema(conn)
        server = conn.execute("SELECT current_setting('server_version')").fetchone()[0]  # type: ignore[index]
        plpy = conn.execute("SELECT maxsim.has_plpython()").fetchone()[0]  # type: ignore[index]
        server = f"PostgreSQL {server.split()[0]}, {'PL/Python + NumPy' if plpy else 'pure-SQL'} scoring"
        table_ident = sql.Identifier(name)
        conn.execute(sql.SQL("CREATE TABLE {} (id integer PRIMARY KEY)").format(table_ident))
        try:
            conn.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, %s)").format(table_ident), (pages,))
            idx = Index.create(conn, name, name, "id", dim=dim, pooling=pooling)
            t = time.perf_counter()
            bar = progress(pages, "write", "page") if show_progress else None
            step = 250
            for lo in range(0, pages, step):
                hi = min(pages, lo + step)
                idx.upsert(list(range(lo + 1, hi + 1)), data[lo:hi])
                if bar is not None:
                    bar.update(hi - lo)
            if bar is not None:
                bar.close()
            write_s = time.perf_counter() - t
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier("maxsim", idx.info.token_table)))
            size = conn.execute("SELECT pg_total_relation_size(%s::regclass)",
                                (sql.Identifier("maxsim", idx.info.token_table).as_string(conn),)).fetchone()
            default_ms, exact_ms, top1, rec, mass = [], [], 0, 0.0, 0.0
            bar = progress(queries, "search", "query") if show_progress else None
            for q in qs:
                t = time.perf_counter()
                got = idx.search(q, k=10)
                default_ms.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                exact = idx.search(q, k=10, candidates=pages)
                exact_ms.append((time.perf_counter() - t) * 1000)
                top1 += int(bool(got) and bool(exact) and got[0][0] == exact[0][0])
                rec += len({g[0] for g in got} & {e[0] for e in exact}) / max(1, len(exact))
                got_exact = idx.rerank(q, [g[0] for g in got])
                mass += sum(s for _, s in got_exact) / max(1e-9, sum(s for _, s in exact))
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.close()
        finally:
            conn.execute("SELECT maxsim.drop_index(%s) FROM maxsim.indexes WHERE name = %s", (name, name))
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table_ident))
    return BenchResult(server=server, pages=pages, tokens=sum(len(p) for p in data), dim=dim, pooling=pooling,
                       write_s=write_s, storage_bytes=int(size[0]) if size else 0, default_ms=default_ms,
                       exact_ms=exact_ms, top1=top1 / queries, recall10=rec / queries,
                       mass10=mass / queries)
