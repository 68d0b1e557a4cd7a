"""Ingestion benchmark: the write path alone (precomputed arrays) vs the binary-COPY ceiling,
and end to end with the MiniLM default on text rows. Prints tables; not a test.

    python bench/ingest.py                       # starts a throwaway PostgreSQL 15 (tests/pgserver.py)
    python bench/ingest.py --dsn postgresql://u@host/db --pages 2000
    python bench/ingest.py --skip-e2e            # write path only

ColQwen-shaped pages: d=128, ~1,000 tokens each (uniform 900-1100), fp16 on the wire.
Rows of the tables:

- ``COPY ceiling``: binary COPY of pre-encoded rows (id, tokens halfvec[], n_tokens,
  pooled) into a table shaped like a token table, no triggers: the server's floor.
- ``write_rows``: ``pgmaxsim.writes.write_rows`` in 64-page transactions (halfvec
  encoding, pooling, advisory locks, delete + COPY, token-table triggers).
- ``worker``: the whole worker write path with the encoder replaced by precomputed
  arrays: queue claim (SKIP LOCKED), source load, content hash, write_rows, dequeue,
  ingest log: what a worker can sustain when the encoder is infinitely fast.
- ``e2e MiniLM``: ``pgmaxsim worker --once`` semantics on short text rows with the real
  offline default encoder, next to the encoder alone on the same texts.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from typing import Any

import numpy as np
import psycopg
from _server import bench_server

_HDR = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)


def pages(n: int, dim: int, tokens: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` unit-norm float32 token matrices of ~``tokens`` x ``dim`` (±10 %), topic-clustered."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((64, dim)).astype(np.float32)
    out = []
    for _ in range(n):
        t = int(rng.integers(int(tokens * 0.9), int(tokens * 1.1) + 1))
        mine = topics[rng.integers(0, 64, size=8)]
        x = mine[rng.integers(0, 8, size=t)] + 0.6 * rng.standard_normal((t, dim)).astype(np.float32)
        out.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return out


def settings(conn: psycopg.Connection[Any]) -> str:
    rows = conn.execute("SELECT name, setting FROM pg_settings WHERE name IN"
                        " ('fsync', 'synchronous_commit', 'full_page_writes', 'shared_buffers', 'wal_level')"
                        " ORDER BY name").fetchall()
    ver = conn.execute("SHOW server_version").fetchone()
    return f"PostgreSQL {ver[0] if ver else '?'}; " + ", ".join(f"{k}={v}" for k, v in rows)


def copy_ceiling(conn: psycopg.Connection[Any], embs: list[np.ndarray], dim: int) -> float:
    from pgmaxsim.db.codec import encode_halfvec, encode_halfvec_array
    from pgmaxsim.pooling import mean_pool

    oid = conn.execute("SELECT oid FROM pg_type WHERE typname = 'halfvec'").fetchone()[0]  # type: ignore[index]
    conn.execute("DROP TABLE IF EXISTS bench_ceiling")
    conn.execute(f"CREATE TABLE bench_ceiling (id bigint PRIMARY KEY, tokens halfvec({dim})[] NOT NULL,"
                 f" n_tokens integer NOT NULL, pooled halfvec({dim}))")
    conn.execute("ALTER TABLE bench_ceiling ALTER COLUMN tokens SET STORAGE EXTERNAL")
    rows = []
    for i, e in enumerate(embs):
        tb, pb = encode_halfvec_array(e, oid), encode_halfvec(mean_pool(e))
        rows.append(struct.pack("!hiq", 4, 8, i) + struct.pack("!i", len(tb)) + tb + struct.pack("!ii", 4, len(e))
                    + struct.pack("!i", len(pb)) + pb)
    t0 = time.perf_counter()
    with conn.cursor() as cur, cur.copy("COPY bench_ceiling FROM STDIN (FORMAT binary)") as cp:
        cp.write(_HDR)
        for r in rows:
            cp.write(r)
        cp.write(struct.pack("!h", -1))
    dt = time.perf_counter() - t0
    conn.execute("DROP TABLE bench_ceiling")
    return dt


def client_costs(embs: list[np.ndarray], options: dict[str, Any]) -> dict[str, float]:
    """Seconds per page of the client-side steps of write_rows."""
    from pgmaxsim import pooling
    from pgmaxsim.db.codec import encode_halfvec_array
    from pgmaxsim.worker.loop import single_threaded_blas

    sample = embs[: min(100, len(embs))]
    out: dict[str, float] = {}
    with single_threaded_blas():  # as in the worker (and writes.write_rows)
        _time_steps(sample, options, out, encode_halfvec_array, pooling)
    return out


def _time_steps(sample: list[np.ndarray], options: dict[str, Any], out: dict[str, float], encode: Any,
                pooling: Any) -> None:
    t0 = time.perf_counter()
    for e in sample:
        encode(e, 1)
    out["halfvec encode"] = (time.perf_counter() - t0) / len(sample)
    for mode in ("mean", "centroids"):
        t0 = time.perf_counter()
        for e in sample[:40]:
            pooling.pool(e.astype(np.float16).astype(np.float32), mode, options)
        out[f"{mode} pooling"] = (time.perf_counter() - t0) / len(sample[:40])


def bench_write_rows(conn: psycopg.Connection[Any], embs: list[np.ndarray], name: str, batch: int) -> float:
    from pgmaxsim import registry, writes

    index = registry.get_index(conn, name)
    t0 = time.perf_counter()
    for b in range(0, len(embs), batch):
        with conn.transaction():
            writes.write_rows(conn, index, list(range(b, b + len(embs[b:b + batch]))), embs[b:b + batch])
    return time.perf_counter() - t0


class Precomputed:
    """An 'encoder' returning precomputed token matrices: the text of a row is its id."""

    def __init__(self, embs: list[np.ndarray], dim: int) -> None:
        self.embs, self.dim, self.name, self.revision = embs, dim, "precomputed", None

    def encode_documents(self, items: list[Any]) -> list[np.ndarray]:
        return [self.embs[int(str(t).split()[0]) % len(self.embs)] for t in items]


def bench_worker(dsn: str, conn: psycopg.Connection[Any], embs: list[np.ndarray], dim: int, pooling: str,
                 batch: int) -> tuple[float, int]:
    from pgmaxsim.worker import run_worker

    table = f"bench_src_{pooling}"
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, body text)")
    conn.execute(f"INSERT INTO {table} SELECT g, g::text || ' page' FROM generate_series(0, %s) g", (len(embs) - 1,))
    conn.execute("SELECT maxsim.create_index(%s, %s::regclass, 'id', 'body', NULL, 'precomputed', %s, %s::jsonb)",
                 (f"bench_worker_{pooling}", table, dim, f'{{"pooling": "{pooling}"}}'))
    enc = Precomputed(embs, dim)
    t0 = time.perf_counter()
    stats = run_worker(dsn, indexes=[f"bench_worker_{pooling}"], once=True, batch_size=batch,
                       token_budget=batch * 2048, encoder_factory=lambda spec: enc, install_signals=False)
    return time.perf_counter() - t0, stats.done


def bench_e2e(dsn: str, conn: psycopg.Connection[Any], rows: int) -> tuple[float, float, int, int]:
    from pgmaxsim.encoders import load_encoder
    from pgmaxsim.worker import run_worker

    rng = np.random.default_rng(1)
    words = ["revenue", "region", "quarter", "growth", "margin", "policy", "river", "mountain", "protein", "enzyme", "cell", "orbit", "galaxy", "court", "appeal", "statute", "poem", "novel", "chorus", "engine", "torque", "battery"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(20, 40)))) for _ in range(rows)]
    conn.execute("DROP TABLE IF EXISTS bench_text")
    conn.execute("CREATE TABLE bench_text (id integer PRIMARY KEY, body text)")
    with conn.cursor() as cur, cur.copy("COPY bench_text (id, body) FROM STDIN") as cp:
        for i, t in enumerate(texts):
            cp.write_row((i, t))
    enc = load_encoder(None)
    enc.encode_documents(texts[:32])  # warm up
    t0 = time.perf_counter()
    out = enc.encode_documents(texts)
    t_enc = time.perf_counter() - t0
    n_tokens = sum(int(np.asarray(o).shape[0]) for o in out)
    conn.execute("SELECT maxsim.create_index('bench_text', 'bench_text', 'id', 'body',"
                 " model => 'sentence-transformers/all-MiniLM-L6-v2')")
    t0 = time.perf_counter()
    stats = run_worker(dsn, indexes=["bench_text"], once=True, encoder_factory=lambda spec: enc,
                       install_signals=False)
    return time.perf_counter() - t0, t_enc, stats.done, n_tokens


def table(headers: list[str], rows: list[list[str]]) -> str:
    w = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(x) for h, x in zip(headers, w)), "  ".join("-" * x for x in w)]
    return "\n".join(lines + ["  ".join(c.ljust(x) for c, x in zip(r, w)) for r in rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", help="a database to use (default: a throwaway local PostgreSQL 15)")
    ap.add_argument("--pages", type=int, default=1000)
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64, help="pages per transaction / worker batch")
    ap.add_argument("--rows", type=int, default=2000, help="text rows for the MiniLM end-to-end run")
    ap.add_argument("--skip-e2e", action="store_true")
    args = ap.parse_args(argv)

    from pgmaxsim.db import migrate

    with bench_server(args.dsn, database="bench", migrate=False) as dsn:
        migrate.upgrade(dsn)
        conn = psycopg.connect(dsn, autocommit=True)
        print(f"server: {settings(conn)}; client cores: {os.cpu_count()}")
        embs = pages(args.pages, args.dim, args.tokens)
        mb = sum(e.shape[0] * (e.shape[1] * 2 + 8) for e in embs) / 1e6
        print(f"{args.pages} pages x ~{args.tokens} tokens x d={args.dim}: {mb:.0f} MB of halfvec[] on the wire\n")
        conn.execute("CREATE TABLE bench_keys (id bigint PRIMARY KEY)")
        for mode in ("mean", "centroids"):
            conn.execute("SELECT maxsim.create_index(%s, 'bench_keys', 'id', dim => %s, options => %s::jsonb)",
                         (f"bench_{mode}", args.dim, f'{{"pooling": "{mode}"}}'))
        res: list[list[str]] = []

        def add(what: str, seconds: float, n: int, note: str = "") -> None:
            res.append([what, f"{n / seconds:,.0f}", f"{mb * n / args.pages / seconds:,.0f}", note])

        add("COPY ceiling (pre-encoded rows, no triggers)", copy_ceiling(conn, embs, args.dim), args.pages)
        for mode in ("mean", "centroids"):
            add(f"writes.write_rows, {mode} pooling", bench_write_rows(conn, embs, f"bench_{mode}", args.batch),
                args.pages, f"{args.batch} pages/txn")
        for mode in ("mean", "centroids"):
            dt, done = bench_worker(dsn, conn, embs, args.dim, mode, args.batch)
            add(f"worker write path, {mode} pooling", dt, done, f"batch {args.batch}, precomputed encoder")
        print(table(["write path (pages/s)", "pages/s", "MB/s", "note"], res))
        opts = {"tokens_per_centroid": 64, "max_centroids": 16}
        costs = client_costs(embs, opts)
        print("\nclient-side cost per page (one process, NumPy BLAS on one thread as in the worker):")
        print(table(["step", "ms/page", "pages/s alone"],
                    [[k, f"{v * 1e3:.2f}", f"{1 / v:,.0f}"] for k, v in costs.items()]))
        if not args.skip_e2e:
            dt, t_enc, done, n_tok = bench_e2e(dsn, conn, args.rows)
            print(f"\nend to end, MiniLM default on {args.rows} text rows ({n_tok / max(1, args.rows):.0f} tokens/row):")
            print(table(["what", "rows/s", "seconds"],
                        [["encoder alone (encode_documents)", f"{args.rows / t_enc:,.0f}", f"{t_enc:.1f}"],
                         [f"worker --once ({done} rows embedded)", f"{done / dt:,.0f}", f"{dt:.1f}"]]))
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
