"""One batch, one transaction: claim → load → skip unchanged → encode → write → dequeue.

If anything kills the worker before the commit, the transaction aborts and
the queue is exactly as before; after the commit, the embeddings and the
dequeue are visible together. Per-row failures are recorded (retry with
backoff, or ``maxsim.failed``) in the same transaction.

Writes re-check the source under ``FOR KEY SHARE`` just before writing: a
row deleted (or whose key changed) while it was being encoded is not written,
so no embedding outlives its row. The lock is held only for the short write,
and blocks nothing but deletes and key changes of those rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from pgmaxsim import citus, writes
from pgmaxsim.errors import PgmaxsimError, one_line
from pgmaxsim.registry import IndexSpec
from pgmaxsim.worker import queue
from pgmaxsim.worker.encoding import EncoderCache, encode_rows
from pgmaxsim.worker.load import Loaded, load_rows
from pgmaxsim.worker.queue import Claimed, Failure


@dataclass
class BatchSettings:
    batch_size: int = queue.DEFAULT_BATCH_SIZE
    token_budget: int = queue.DEFAULT_TOKEN_BUDGET
    max_attempts: int = queue.DEFAULT_MAX_ATTEMPTS
    retry_base: float = queue.DEFAULT_RETRY_BASE_S
    max_pixels: int | None = None
    image_root: str | None = None
    exit_on_error: bool = False


@dataclass
class BatchResult:
    """What one committed batch did."""

    index: str
    claimed: int = 0
    done: int = 0
    skipped: int = 0
    missing: int = 0
    retried: int = 0
    failed: int = 0
    tokens: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def handled(self) -> int:
        """Rows that left the queue or were pushed back (progress units)."""
        return self.done + self.skipped + self.missing + self.retried + self.failed


class RowErrors(PgmaxsimError):
    """Raised (after the batch is rolled back) in ``--exit-on-error`` mode."""


class StaleSpec(Exception):
    """The index changed (model, dim, or dropped) since the worker read it: reload and retry."""


def process_batch(
    conn: psycopg.Connection[Any],
    spec: IndexSpec,
    encoders: EncoderCache,
    settings: BatchSettings,
    worker_id: str = "",
) -> BatchResult | None:
    """Claim and process one batch of ``spec``; None when nothing was claimable."""
    t0 = time.monotonic()
    with conn.transaction():
        # Share-lock the registry row for the batch: a re-embedding switch-over (or a drop) waits
        # for the batch to commit, and a batch never writes one model's embeddings into another's table.
        try:
            reg = conn.execute("SELECT model, model_revision, dim FROM maxsim.batch_begin(%s)", (spec.name,)).fetchone()
        except psycopg.errors.UndefinedObject:   # dropped meanwhile
            raise StaleSpec(spec.name) from None
        if reg is None or tuple(reg) != (spec.model, spec.model_revision, spec.dim):
            raise StaleSpec(spec.name)
        claimed = queue.claim(conn, spec, batch_size=settings.batch_size, token_budget=settings.token_budget)
        if not claimed:
            return None
        result = BatchResult(spec.name, claimed=len(claimed))
        by_id = {c.row_id: c for c in claimed}
        loaded = load_rows(conn, spec, list(by_id), max_pixels=settings.max_pixels,
                           image_root=settings.image_root)
        failures: list[Failure] = []
        finished: list[Claimed] = []
        missing: list[str] = []
        ready: list[Loaded] = []
        for row in loaded:
            if row.missing:
                missing.append(row.row_id)
            elif row.error is not None:
                failures.append(Failure(by_id[row.row_id], "load", row.error, row.permanent))
            else:
                ready.append(row)
        unchanged = _unchanged(conn, spec, ready)
        result.skipped = len(unchanged)
        finished += [by_id[r] for r in unchanged]
        todo = [r for r in ready if r.row_id not in unchanged]
        written: list[tuple[Loaded, np.ndarray]] = []
        if todo:
            try:
                encoder = encoders.get(spec)
                encoded = encode_rows(encoder, spec, todo)
            except Exception as e:  # noqa: BLE001 - the whole encode step failed: every row retries
                msg = one_line(e)
                failures += [Failure(by_id[r.row_id], "encode", msg) for r in todo]
                encoded = []
                encoder = None
            for enc in encoded:
                if enc.tokens is None:
                    failures.append(Failure(by_id[enc.row.row_id], "encode", enc.error or "encoding failed"))
                else:
                    written.append((enc.row, enc.tokens))
            if written:
                present = lock_present(conn, spec, [r.row_id for r, _ in written])
                gone = [r.row_id for r, _ in written if r.row_id not in present]
                missing += gone
                written = [(r, t) for r, t in written if r.row_id in present]
                layouts = {enc.row.row_id: enc.layout for enc in encoded if getattr(enc, "layout", None) is not None}
                ok, bad = write_embeddings(conn, spec, written, encoder, layouts)
                failures += [Failure(by_id[r.row_id], "write", msg) for r, msg in bad]
                finished += [by_id[r.row_id] for r in ok]
                result.done = len(ok)
                ok_ids = {id(r) for r in ok}
                result.tokens = int(sum(t.shape[0] for r, t in written if id(r) in ok_ids))
        if missing:
            queue.delete_embeddings(conn, spec, missing)
            finished += [by_id[r] for r in missing]
            result.missing = len(missing)
        if failures and settings.exit_on_error:
            raise RowErrors(f"index {spec.name!r}, row {failures[0].row.row_id}: {failures[0].step}: "
                            f"{failures[0].error}")
        queue.dequeue(conn, spec, finished)
        result.retried, result.failed = queue.record_failures(
            conn, spec, failures, max_attempts=settings.max_attempts, retry_base=settings.retry_base)
        result.errors = [f"row {f.row.row_id}: {f.step}: {f.error}" for f in failures]
        result.seconds = time.monotonic() - t0
        conn.execute("SELECT maxsim.log_batch(%s, %s, %s::bigint[], %s::real)",
                     (spec.name, worker_id, [result.done, result.skipped, result.failed + result.retried, result.tokens],
                      result.seconds))
    return result


def _unchanged(conn: psycopg.Connection[Any], spec: IndexSpec, rows: list[Loaded]) -> set[str]:
    """Row ids whose stored content hash equals the freshly loaded one (nothing to encode)."""
    if not rows:
        return set()
    have = queue.state(conn, spec, [r.row_id for r in rows]).hashes
    return {r.row_id for r in rows if r.content_hash is not None and have.get(r.row_id) == r.content_hash}


def lock_present(conn: psycopg.Connection[Any], spec: IndexSpec, row_ids: list[str]) -> set[str]:
    """Lock the source rows ``row_ids`` against delete/key change until commit; the ones that exist.
    On a Citus distributed source, one statement per shard (:func:`pgmaxsim.citus.shard_groups`)."""
    statement = sql.SQL("SELECT s.{id}::text FROM {src} s WHERE s.{id} = ANY(CAST(%s AS {typ}[])) FOR KEY SHARE OF s"
                        ).format(id=sql.Identifier(spec.id_column), src=spec.source_ident(), typ=spec.id_type_sql())
    present: set[str] = set()
    for ids in citus.shard_groups(conn, spec.source, row_ids):
        present.update(r[0] for r in conn.execute(statement, (ids,)).fetchall())
    return present


def write_embeddings(
    conn: psycopg.Connection[Any], spec: IndexSpec, rows: list[tuple[Loaded, np.ndarray]], encoder: Any,
    layouts: dict[str, Any] | None = None,
) -> tuple[list[Loaded], list[tuple[Loaded, str]]]:
    """Write all rows with one binary COPY; if that fails, row by row to isolate the bad ones."""
    if not rows:
        return [], []
    try:
        with conn.transaction():
            _write(conn, spec, rows, encoder, layouts)
        return [r for r, _ in rows], []
    except psycopg.OperationalError:
        raise  # connection trouble: the whole batch is retried after reconnecting
    except Exception as e:  # noqa: BLE001 - find the culprit(s) below
        if len(rows) == 1:
            return [], [(rows[0][0], one_line(e))]
    ok: list[Loaded] = []
    bad: list[tuple[Loaded, str]] = []
    for r, t in rows:
        try:
            with conn.transaction():
                _write(conn, spec, [(r, t)], encoder, layouts)
            ok.append(r)
        except psycopg.OperationalError:
            raise
        except Exception as e:  # noqa: BLE001 - reported per row
            bad.append((r, one_line(e)))
    return ok, bad


def _write(conn: psycopg.Connection[Any], spec: IndexSpec, rows: list[tuple[Loaded, np.ndarray]],
           encoder: Any, layouts: dict[str, Any] | None = None) -> None:
    model = getattr(encoder, "name", None) or spec.model
    revision = getattr(encoder, "revision", None) or spec.model_revision
    writes.write_rows(
        conn, spec, [r.key for r, _ in rows], [t for _, t in rows], model=model, model_revision=revision,
        content_hashes=[r.content_hash for r, _ in rows],
        layouts=[(layouts or {}).get(r.row_id) for r, _ in rows])
