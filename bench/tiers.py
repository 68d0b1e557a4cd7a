"""Storage tiers through pgmaxsim itself: bytes per row and write throughput, on a real PostgreSQL 15.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/tiers.py                 # 1,000 pages per tier
    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/tiers.py --pages 3000 --tiers int8,int8+pool4

Pages are bench/search.py's synthetic ColQwen-shaped pages (600-1400 tokens, d=128). For each
tier an index is created with maxsim.create_index and filled with pgmaxsim.writes.write_rows (the
worker's and Index.upsert's write path) on autocommit connections, so the codebook first stage
trains as the write path decides; it prints

- bytes/row: maxsim.index_info(name).bytes / rows (token table with TOAST and indexes, pooled
  vectors with their HNSW, centroid table with its HNSW or codebook tables, sketch lists and the
  codes' GIN indexes), and that over the raw fp16 token bytes (n_tokens x dim x 2) of the same rows;
  "of which first stage": index_info's first_stage_bytes over the same raw bytes (issue 18's figure).
  Targets: fp16 <= 1.1x, int8 <= 0.55x, int8 + pool 4 <= 1/8. ``--breakdown`` adds where the
  bytes are (each relation, as a share of the raw fp16 bytes);
- write: pages/s of write_rows (batches of --batch rows: validation, pooling, quantizing, the
  first stage's codes, COPY, commit) against a bare binary COPY of the same stored bytes into a
  plain ``(id int PRIMARY KEY, tokens bytea)`` table, and into one whose bytea column has
  STORAGE EXTERNAL as the token tables have (no pglz attempt: the stricter baseline). The three
  take turns batch by batch on the same server, so all see the same load: the ratios are the
  issue's "same run" (target >= 80 %). The first stage's training (codebook.train_due after
  each batch: the worker trains in the background once a write has marked the index due) is
  timed apart: "write" excludes it, "train s" is its total.
  The ``+untrained`` tiers never train (option train_tokens), so their rows carry no codes:
  the write path without the first stage's per-row work (its codes and their GIN index).
  After the table, the CPU time a page of the writes and of the plain COPYs, in this process (all
  its threads) and in the connection's server process: a write that takes more wall time than CPU on
  either side waits on the other.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]
from pgmaxsim import codebook, pooling, writes
from pgmaxsim.kernels.quantize import encode_tokens
from pgmaxsim.registry import get_index
from _server import bench_server
from firststage_pg import hold_codebook
from search import Corpus

D = 128


NEVER = 2_000_000_000   # option train_tokens: the codebook is never trained, so rows carry no codes
TIERS = {   # label -> (storage, pool_factor, first stage, train_tokens or None for the default)
    "fp16": ("fp16", 1, "codebook", None),
    "fp16+centroids": ("fp16", 1, "centroids", None),
    "fp16+mean": ("fp16", 1, "mean", None),
    "fp16+untrained": ("fp16", 1, "codebook", NEVER),
    "int8": ("int8", 1, "codebook", None),
    "int8+untrained": ("int8", 1, "codebook", NEVER),
    "int8+pool3": ("int8", 3, "codebook", None),
    "int8+pool4": ("int8", 4, "codebook", None),
    "int8+pool4+untrained": ("int8", 4, "codebook", NEVER),
    "int8+pool4+mean": ("int8", 4, "mean", None),
}


def bare_batch(conn: psycopg.Connection[Any], table: str, ids: range, blobs: list[bytes]) -> float:
    """Binary COPY of (id, bytes) rows into a plain bytea table, committed: seconds."""
    t = time.perf_counter()
    with conn.cursor() as cur, cur.copy(f"COPY {table} (id, tokens) FROM STDIN (FORMAT BINARY)") as cp:
        cp.set_types(["int4", "bytea"])
        for i, b in zip(ids, blobs):
            cp.write_row((i, b))
    conn.commit()
    return time.perf_counter() - t


def backend_cpu(conn: psycopg.Connection[Any]) -> float:
    """CPU seconds (user + system) the server process of ``conn`` has used, from /proc (0 elsewhere)."""
    try:
        fields = Path(f"/proc/{conn.info.backend_pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Filled:
    """What :func:`fill` measured. Seconds: ``write`` (write_rows, training excluded), ``train``,
    ``bare`` (COPY into the plain bytea table) and ``bare_ext`` (into the STORAGE EXTERNAL one);
    ``cpu``: CPU seconds of the writes and of the plain COPYs, {"write"|"plain": [this process's
    threads, the connection's server process]}; ``steady``: with a hold, the seconds of the batches
    written after it ({"write"|"plain"|"external"}) and their ``pages``."""

    write: float = 0.0
    train: float = 0.0
    bare: float = 0.0
    bare_ext: float = 0.0
    cpu: dict[str, list[float]] = field(default_factory=lambda: {"write": [0.0, 0.0], "plain": [0.0, 0.0]})
    steady: dict[str, float] = field(default_factory=lambda: dict.fromkeys(("write", "plain", "external", "pages"), 0.0))


def fill(dsn: str, name: str, pages: list[np.ndarray], batch: int,
         storage: str, factor: int, hold: bool = False) -> Filled:
    """Write ``pages`` into index ``name`` and the same stored bytes into two bare tables, batch by
    batch in turn, timing each (:class:`Filled`), with the CPU time the writes and the plain COPYs
    took in this process (every thread) and in their server process: whether a write is bound by
    CPU or waits. ``hold``: no retraining once the codebook is first trained (firststage_pg's
    --hold-codebook)."""
    out = Filled()
    bare = {"plain": 0.0, "external": 0.0}
    held = False
    with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(dsn) as plain:
        for kind in bare:
            plain.execute(f"CREATE TABLE bare_{kind}_{name} (id int PRIMARY KEY, tokens bytea)")
        # the token tables' own setting: no compression attempt (pglz tries the first KB of
        # every value in a plain table, and int8 rows, whose float32 scales come first, pass
        # that test and are compressed whole before being stored as they were)
        plain.execute(f"ALTER TABLE bare_external_{name} ALTER COLUMN tokens SET STORAGE EXTERNAL")
        plain.commit()
        spec = get_index(conn, name)
        for j, start in enumerate(range(0, len(pages), batch)):
            part = pages[start:start + batch]
            ids = range(start, start + len(part))
            # the bare tables get what the index stores (pooled + quantized), encoded beforehand
            blobs = [encode_tokens(pooling.pool_tokens(p, factor) if factor > 1 else p, storage) for p in part]
            steps = ["write", "plain", "external"]
            steady = held   # a batch written against the held codebook from its start
            out.steady["pages"] += len(part) if steady else 0
            for step in steps[j % 3:] + steps[:j % 3]:   # each goes first in turn
                client, server = time.process_time(), backend_cpu(conn if step == "write" else plain)
                if step == "write":
                    t = time.perf_counter()
                    writes.write_rows(conn, spec, list(ids), part)
                    t1 = time.perf_counter()
                    out.cpu["write"][0] += time.process_time() - client
                    out.cpu["write"][1] += backend_cpu(conn) - server
                    codebook.train_due(conn, name)   # the worker's trainer, in line (writes only mark it due)
                    held = held or (hold and hold_codebook(conn, name))
                    out.write += t1 - t
                    out.train += time.perf_counter() - t1
                    out.steady["write"] += (t1 - t) if steady else 0.0
                else:
                    took = bare_batch(plain, f"bare_{step}_{name}", ids, blobs)
                    bare[step] += took
                    out.steady[step] += took if steady else 0.0
                    if step == "plain":
                        out.cpu["plain"][0] += time.process_time() - client
                        out.cpu["plain"][1] += backend_cpu(plain) - server
    out.bare, out.bare_ext = bare["plain"], bare["external"]
    return out


def breakdown(conn: psycopg.Connection[Any], name: str, raw: float) -> list[tuple[str, float]]:
    """(relation, bytes / raw fp16 bytes) of everything index ``name`` stores."""
    tok, iid = conn.execute("SELECT token_table, id FROM maxsim.indexes WHERE name = %s", (name,)).fetchone()
    rows = conn.execute("""
        SELECT 'token heap', pg_relation_size(c.oid) FROM pg_class c WHERE c.oid = %(t)s::regclass
        UNION ALL SELECT 'TOAST (+ its index)', pg_total_relation_size(c.reltoastrelid)
          FROM pg_class c WHERE c.oid = %(t)s::regclass AND c.reltoastrelid <> 0
        UNION ALL SELECT 'index ' || i.indexrelid::regclass::text, pg_relation_size(i.indexrelid)
          FROM pg_index i WHERE i.indrelid = %(t)s::regclass
        UNION ALL SELECT 'table ' || c.relname, pg_total_relation_size(c.oid) FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'maxsim' AND c.relkind = 'r' AND c.relname ~ %(first)s
        """, {"t": f"maxsim.{tok}", "first": f"^(cen|fs_[a-z_]+|skpend)_{iid}$"}).fetchall()
    return [(label.replace(f"maxsim.{tok}", "tok"), b / raw) for label, b in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tiers", default="fp16,fp16+mean,int8,int8+pool4",
                    help="comma-separated, of: " + ", ".join(TIERS))
    ap.add_argument("--breakdown", action="store_true", help="where each tier's bytes are")
    ap.add_argument("--size-as-tokens", type=int, default=0,
                    help="size every codebook as fs_train.sizing does for an index of this many tokens (e.g."
                         " 10000000: the codebook a 10K-page index writes against), to measure writes at that scale")
    ap.add_argument("--hold-codebook", action="store_true",
                    help="no retraining once a codebook is first trained: the writes of an index between two"
                         " trainings (with --size-as-tokens, a large index's steady state, where each writer"
                         " reads the codebook once per generation rather than at every doubling of 600 pages)")
    args = ap.parse_args()
    if args.size_as_tokens:
        from pgmaxsim import fs_train

        sizing = fs_train.sizing
        fs_train.sizing = lambda n, options: sizing(max(n, args.size_as_tokens), options)
    labels = args.tiers.split(",")
    unknown = [t for t in labels if t not in TIERS]
    if unknown:
        ap.error(f"unknown tiers {unknown}; known: {', '.join(TIERS)}")

    corpus = Corpus(max(args.pages, 256), seed=0)
    pages = [corpus.page(i) for i in range(args.pages)]
    raw_total = sum(len(p) * D * 2 for p in pages)
    with bench_server(settings={"max_wal_size": "4GB"}) as dsn:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE TABLE src (id int PRIMARY KEY)")
            c.execute("INSERT INTO src SELECT g FROM generate_series(0, %s) g", (args.pages,))
            for i, label in enumerate(labels):
                storage, factor, first, train_tokens = TIERS[label]
                opts = {"storage": storage, "pool_factor": factor, "first_stage": first}
                if train_tokens:
                    opts["train_tokens"] = train_tokens
                c.execute("SELECT maxsim.create_index(%s, 'src', 'id', dim => 128, options => %s::jsonb)",
                          (f"t{i}", json.dumps(opts)))
        print(f"{args.pages} pages ({np.mean([len(p) for p in pages]):.0f} tokens mean, d={D}),"
              f" write batches of {args.batch} rows, load {os.getloadavg()[0]:.1f}"
              + (f"; codebooks sized as for {args.size_as_tokens:,} tokens" if args.size_as_tokens else "")
              + ("; each codebook held after its first training" if args.hold_codebook else "") + "\n")
        print("| stored | first stage | bytes/row | x raw fp16 | of which first stage | write pages/s"
              " | bare COPY pages/s: plain / EXTERNAL | x bare: plain / EXTERNAL | train s |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        parts = {}
        cpu: list[str] = []
        for i, label in enumerate(labels):
            storage, factor, first, train_tokens = TIERS[label]
            first += " (untrained: no codes)" if train_tokens else ""
            got = fill(dsn, f"t{i}", pages, args.batch, storage, factor, args.hold_codebook)
            write, train, bare, bare_ext, cpu_s, steady = got.write, got.train, got.bare, got.bare_ext, got.cpu, got.steady
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute("VACUUM ANALYZE")
                nbytes, fs_bytes, rows = c.execute("SELECT bytes, first_stage_bytes, rows FROM maxsim.index_info(%s)",
                                                   (f"t{i}",)).fetchone()
                if args.breakdown:
                    parts[label] = breakdown(c, f"t{i}", raw_total)
            name = storage if factor == 1 else f"{storage} + pool_factor {factor}"
            n = len(pages)
            print(f"| {name} | {first} | {nbytes / rows / 1024:.1f} KiB | {nbytes / raw_total:.3f} |"
                  f" {fs_bytes / raw_total:.3f} |"
                  f" {n / write:.0f} | {n / bare:.0f} / {n / bare_ext:.0f} | {bare / write:.2f} / {bare_ext / write:.2f}"
                  f" | {train:.0f} |", flush=True)
            if steady["pages"]:
                k = steady["pages"]
                print(f"| {name}, the {k:.0f} pages written after the hold | | | | | {k / steady['write']:.0f}"
                      f" | {k / steady['plain']:.0f} / {k / steady['external']:.0f}"
                      f" | {steady['plain'] / steady['write']:.2f} / {steady['external'] / steady['write']:.2f} | |",
                      flush=True)
            cpu.append(f"{name}, {first}: write {write / n * 1e3:.2f} ms a page wall, CPU client"
                       f" {cpu_s['write'][0] / n * 1e3:.2f} + server {cpu_s['write'][1] / n * 1e3:.2f};"
                       f" bare plain COPY {bare / n * 1e3:.2f} ms wall, CPU client {cpu_s['plain'][0] / n * 1e3:.2f}"
                       f" + server {cpu_s['plain'][1] / n * 1e3:.2f}")
        print("\nCPU time a page (this process's threads, and the server process of each connection):\n")
        for line in cpu:
            print(f"- {line}")
        for label, items in parts.items():
            print(f"\n{label}: where the bytes are (x raw fp16)\n")
            print("| relation | x raw fp16 |")
            print("|---|---:|")
            for rel, share in items:
                print(f"| {rel} | {share:.4f} |")
        print(f"\nload at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
