"""Binary COPY framing: psycopg's ``Copy.set_types`` + ``write_row`` (what ``writes.write_rows``
uses) against rows framed by hand with ``struct`` (what it used before), in the same run.

    python bench/copy_framing.py                      # starts a throwaway PostgreSQL 15 (tests/pgserver.py)
    python bench/copy_framing.py --dsn postgresql://u@host/db --pages 500 --tokens 1000

Both sides COPY the same pre-encoded rows (halfvec[] / halfvec bytes from the one codec) into
an index's token table, in a transaction rolled back after each run; the framing is all that
differs. Prints the median of ``--reps`` runs of each, interleaved. Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin"))

from _server import bench_server
from ingest import pages, settings
from pgmaxsim import registry, writes
from pgmaxsim.registry import IndexSpec

_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_TRAILER = struct.pack("!h", -1)
_NULL = struct.pack("!i", -1)


def _field(data: bytes | None) -> bytes:
    return _NULL if data is None else struct.pack("!i", len(data)) + data


def hand_framed(rows: list[tuple[Any, ...]]) -> list[bytes]:
    """The former ``storage`` framing of token rows with a bigint key."""
    return [struct.pack("!h", 8) + _field(struct.pack("!q", r[0])) + _field(r[1]) + _field(struct.pack("!i", r[2]))
            + _field(r[3]) + _field(r[4]) + _field(None if r[5] is None else r[5].encode())
            + _field(None if r[6] is None else r[6].encode()) + _field(r[7]) for r in rows]


def copy_statement(index: IndexSpec) -> psycopg.sql.Composed:
    return psycopg.sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
        index.token_ident(), psycopg.sql.SQL(", ").join(map(psycopg.sql.Identifier, writes.TOKEN_COLUMNS)))


def run_hand(conn: psycopg.Connection[Any], index: IndexSpec, rows: list[tuple[Any, ...]]) -> float:
    t0 = time.perf_counter()
    with conn.transaction(force_rollback=True), conn.cursor() as cur, cur.copy(copy_statement(index)) as copy:
        copy.write(_HEADER)
        for row in hand_framed(rows):
            copy.write(row)
        copy.write(_TRAILER)
    return time.perf_counter() - t0


def run_set_types(conn: psycopg.Connection[Any], index: IndexSpec, rows: list[tuple[Any, ...]]) -> float:
    t0 = time.perf_counter()
    with conn.transaction(force_rollback=True), conn.cursor() as cur:
        types, _ = writes.copy_types(cur, index)
        with cur.copy(copy_statement(index)) as copy:
            copy.set_types(types)
            for row in rows:
                copy.write_row(row)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", help="a database to use (default: a throwaway local PostgreSQL 15)")
    ap.add_argument("--pages", type=int, default=500)
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    from pgmaxsim.db import migrate

    with bench_server(args.dsn, database="bench", migrate=False) as dsn:
        migrate.upgrade(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            print(f"server: {settings(conn)}")
            conn.execute("DROP TABLE IF EXISTS bench_copy_keys CASCADE")
            conn.execute("CREATE TABLE bench_copy_keys (id bigint PRIMARY KEY)")
            conn.execute("SELECT maxsim.create_index('bench_copy', 'bench_copy_keys', 'id', dim => %s,"
                         " options => '{\"pooling\": \"mean\"}'::jsonb)", (args.dim,))
            index = registry.get_index(conn, "bench_copy")
            embs = pages(args.pages, args.dim, args.tokens)
            tok_rows, _ = writes.encode_rows(index, {str(i): i for i in range(len(embs))}, embs,
                                              [b"h" * 32] * len(embs), "model", None)
            mb = sum(len(r[1]) + len(r[3] or b"") for r in tok_rows) / 1e6
            print(f"{len(tok_rows)} rows x ~{args.tokens} tokens x d={args.dim} ({mb:.0f} MB), {args.reps} runs each")
            hand, typed = [], []
            for _ in range(args.reps):
                hand.append(run_hand(conn, index, tok_rows))
                typed.append(run_set_types(conn, index, tok_rows))
            h, t = statistics.median(hand), statistics.median(typed)
            print(f"hand-framed struct COPY : {h * 1e3:8.1f} ms  ({len(tok_rows) / h:8.0f} rows/s)")
            print(f"set_types + write_row   : {t * 1e3:8.1f} ms  ({len(tok_rows) / t:8.0f} rows/s)")
            print(f"set_types / hand-framed : {t / h:.3f}x time")
            # framing alone (no server): what the client spends per row either way
            t0 = time.perf_counter()
            hand_framed(tok_rows)
            fh = time.perf_counter() - t0
            print(f"hand framing alone      : {fh * 1e6 / len(tok_rows):8.1f} us/row")
            conn.execute("SELECT maxsim.drop_index('bench_copy')")
            conn.execute("DROP TABLE bench_copy_keys")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
