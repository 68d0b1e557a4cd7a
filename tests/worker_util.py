"""Helpers shared by the worker tests (no tests here).

The encoder is the real offline MiniLM default (loaded once per process by the
worker's own encoder cache), or a tiny random-init ColQwen2.5 saved with
save_pretrained and loaded through ``load_encoder`` for image inputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from pgmaxsim.worker import run_worker
from pgmaxsim.worker.loop import WorkerStats
from psycopg import sql

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
ROOT = Path(__file__).resolve().parent.parent
TOPICS = ["rivers", "databases", "proteins", "galaxies", "poetry", "engines", "courts", "markets"]


def make_text_table(conn: psycopg.Connection[Any], table: str, n: int, *, key: str = "integer",
                    start: int = 1) -> None:
    conn.execute(sql.SQL("CREATE TABLE {} (id {} PRIMARY KEY, body text, note text)").format(
        sql.Identifier(table), sql.SQL(key)))
    add_text_rows(conn, table, range(start, start + n))


def add_text_rows(conn: psycopg.Connection[Any], table: str, ids: Any) -> None:
    with conn.cursor() as cur, cur.copy(sql.SQL("COPY {} (id, body) FROM STDIN").format(sql.Identifier(table))) as cp:
        for i in ids:
            cp.write_row((i, f"row {i} is about {TOPICS[int(i) % len(TOPICS)]}"))


def create_index(conn: psycopg.Connection[Any], name: str, table: str, *, text: str | None = "body",
                 image: str | None = None, model: str | None = MINILM, dim: int | None = None,
                 options: str = "{}") -> int:
    row = conn.execute("SELECT maxsim.create_index(%s, %s::regclass, 'id', %s, %s, %s, %s, %s::jsonb)",
                       (name, table, text, image, model, dim, options)).fetchone()
    assert row is not None
    return int(row[0])


def tok_rows(conn: psycopg.Connection[Any], index_id: int) -> dict[str, tuple[Any, ...]]:
    """``id::text -> (version, content_hash, model, n_tokens)`` of an index's token table."""
    rows = conn.execute(sql.SQL("SELECT id::text, version, content_hash, model, n_tokens FROM maxsim.{}").format(
        sql.Identifier(f"tok_{index_id}"))).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def queued(conn: psycopg.Connection[Any], index_id: int) -> int:
    row = conn.execute("SELECT count(*) FROM maxsim.queue WHERE index_id = %s", (index_id,)).fetchone()
    return int(row[0]) if row else 0


def failed(conn: psycopg.Connection[Any], index_id: int) -> dict[str, tuple[str, str, int]]:
    """``row_id -> (step, error, attempts)``."""
    return {r[0]: (r[1], r[2], r[3]) for r in conn.execute(
        "SELECT row_id, step, error, attempts FROM maxsim.failed WHERE index_id = %s", (index_id,)).fetchall()}


def writes_per_row(conn: psycopg.Connection[Any], index_id: int) -> dict[str, int]:
    """How many times each row's embeddings were written (the token table's change log)."""
    return {r[0]: int(r[1]) for r in conn.execute(
        "SELECT row_id, count(*) FROM maxsim.changes WHERE index_id = %s AND NOT deleted"
        " GROUP BY row_id", (index_id,)).fetchall()}


def run_once(dsn: str, **kw: Any) -> WorkerStats:
    kw.setdefault("retry_base", 0.01)
    kw.setdefault("poll_interval", 0.1)
    kw.setdefault("heartbeat_interval", 1.0)
    return run_worker(dsn, once=True, install_signals=False, **kw)


def worker_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def spawn_worker(dsn: str, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """A real ``pgmaxsim worker`` process."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "pgmaxsim.cli", "--dsn", dsn, "worker", "--no-progress", *args],
                            stdout=out, stderr=subprocess.STDOUT, env=worker_env(), cwd=ROOT)


def wait_for(pred: Any, timeout: float, what: str, step: float = 0.05) -> None:
    """Poll `pred` every `step` seconds until it is true; after `timeout` seconds, fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(step)
