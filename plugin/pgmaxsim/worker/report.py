"""What ``pgmaxsim status`` shows: per index rows, pending, failed (last errors), throughput; workers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pgmaxsim.errors import PgmaxsimError

# Window for the throughput figure and the heartbeat age after which a running worker is "stale".
THROUGHPUT_WINDOW_S = 300
STALE_AFTER_S = 60


@dataclass
class FailedRow:
    row_id: str
    step: str
    error: str
    attempts: int
    failed_at: Any


@dataclass
class IndexStatus:
    name: str
    model: str | None
    model_revision: str | None
    dim: int
    rows: int
    pending: int
    retrying: int
    failed: int
    rows_per_s: float | None  # rows/s of the running workers; of the last worker when none runs
    last_batch_at: Any
    last_errors: list[FailedRow] = field(default_factory=list)
    reembed: str | None = None  # "<shadow> (<model>): <rows> rows, <pending> pending" while re-embedding
    shadow_of: str | None = None
    workers_running: int = 0  # workers with a fresh heartbeat that embedded rows of this index lately
    first_stage_due: bool = False  # a codebook first stage marked due for training (a worker trains it)

    @property
    def eta_s(self) -> float | None:
        """Seconds until the queue is empty at the current rate; None when no worker is on it."""
        if not self.pending or not self.rows_per_s or not self.workers_running:
            return None
        return self.pending / self.rows_per_s


@dataclass
class WorkerStatus:
    worker_id: str
    hostname: str
    pid: int
    state: str
    heartbeat_age_s: float
    rows_done: int
    rows_failed: int
    indexes: list[str]
    last_error: str | None


@dataclass
class Status:
    indexes: list[IndexStatus]
    workers: list[WorkerStatus]


def status(conn: psycopg.Connection[Any], index: str | None = None, *, errors: int = 3) -> Status:
    """Collect the status of every index (or of ``index``) and of the workers seen in the last day."""
    rows = conn.execute(
        "SELECT i.id, i.name, i.model, i.model_revision, i.dim, i.token_table,"
        " (SELECT count(DISTINCT q.row_id) FROM maxsim.queue q WHERE q.index_id = i.id),"
        " (SELECT count(DISTINCT q.row_id) FROM maxsim.queue q WHERE q.index_id = i.id AND q.attempts > 0),"
        " (SELECT count(*) FROM maxsim.failed f WHERE f.index_id = i.id),"
        " NULL,"
        " (SELECT max(l.at) FROM maxsim.ingest_log l WHERE l.index_id = i.id),"
        " (SELECT s.name FROM maxsim.reembeds r JOIN maxsim.indexes s ON s.id = r.shadow_id"
        "   WHERE r.index_id = i.id),"
        " (SELECT m.name FROM maxsim.reembeds r JOIN maxsim.indexes m ON m.id = r.index_id"
        "   WHERE r.shadow_id = i.id),"
        " i.pooling = 'codebook' AND i.options ? 'fs_due'"
        " FROM maxsim.indexes i WHERE (%s::text IS NULL OR i.name = %s) ORDER BY i.name",
        (index, index)).fetchall()
    if index is not None and not rows:
        raise PgmaxsimError(f"index {index!r} does not exist")
    rates = throughput(conn)
    out: list[IndexStatus] = []
    for (iid, name, model, rev, dim, tok, pending, retrying, failed, _, last_at, shadow, shadow_of, due) in rows:
        n = conn.execute(sql.SQL("SELECT count(*) FROM maxsim.{}").format(sql.Identifier(tok))).fetchone()
        errs = [FailedRow(*r) for r in conn.execute(
            "SELECT row_id, step, error, attempts, failed_at FROM maxsim.failed WHERE index_id = %s"
            " ORDER BY failed_at DESC, row_id LIMIT %s", (iid, errors)).fetchall()]
        rate, running = rates.get(iid, (None, 0))
        st = IndexStatus(name, model, rev, dim, int(n[0]) if n else 0, int(pending), int(retrying), int(failed),
                         rate, last_at, errs, shadow_of=shadow_of, workers_running=running,
                         first_stage_due=bool(due))
        if shadow:
            st.reembed = shadow
        out.append(st)
    workers = [WorkerStatus(r[0], r[1], r[2], r[3], float(r[4]), r[5], r[6], list(r[7] or []), r[8])
               for r in conn.execute(
                   "SELECT worker_id, hostname, pid, state, extract(epoch FROM now() - heartbeat_at),"
                   " rows_done, rows_failed, indexes, last_error FROM maxsim.workers"
                   " WHERE heartbeat_at > now() - interval '1 day' ORDER BY started_at").fetchall()]
    for w in workers:
        if w.state == "running" and w.heartbeat_age_s > STALE_AFTER_S:
            w.state = "stale"
    return Status(out, workers)


def throughput(conn: psycopg.Connection[Any]) -> dict[int, tuple[float | None, int]]:
    """Per index id: (rows/s, running workers), from the batches of the last THROUGHPUT_WINDOW_S.

    Each worker's rate is the rows its batches handled over the wall time from the
    start of its first batch to the end of its last one (idle gaps between two
    worker runs do not dilute it). The index's rate is the sum over the workers
    whose heartbeat is fresh; when none is, the rate of the worker that finished
    last (shown for reference, with no ETA).
    """
    rows = conn.execute(
        "SELECT l.index_id, sum(l.rows_done + l.rows_skipped),"
        "  extract(epoch FROM max(l.at + make_interval(secs => l.seconds)) - min(l.at)),"
        "  max(l.at + make_interval(secs => l.seconds)),"
        "  coalesce(bool_or(w.state = 'running' AND w.heartbeat_at > now() - make_interval(secs => %s)), false)"
        " FROM maxsim.ingest_log l LEFT JOIN maxsim.workers w ON w.worker_id = l.worker_id"
        " WHERE l.at > now() - make_interval(secs => %s)"
        " GROUP BY l.index_id, l.worker_id", (STALE_AFTER_S, THROUGHPUT_WINDOW_S)).fetchall()
    live: dict[int, tuple[float, int]] = {}
    last: dict[int, tuple[Any, float]] = {}
    for iid, n, span, ended, running in rows:
        rate = float(n) / max(float(span or 0), 0.001)
        if running:
            total, count = live.get(iid, (0.0, 0))
            live[iid] = (total + rate, count + 1)
        elif iid not in last or ended > last[iid][0]:
            last[iid] = (ended, rate)
    out: dict[int, tuple[float | None, int]] = {iid: (r, 0) for iid, (_, r) in last.items()}
    out.update({iid: (r, c) for iid, (r, c) in live.items()})
    return out


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain aligned text table."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def render(st: Status) -> str:
    """Human-readable status: an index table, the last errors, a worker table."""
    idx_rows = []
    for i in st.indexes:
        model = (i.model or "(application)") + (f"@{i.model_revision}" if i.model_revision else "")
        rate = f"{i.rows_per_s:.1f}/s" if i.rows_per_s else "-"
        if i.rows_per_s and not i.workers_running:
            rate += " (last)"
        note = ""
        if i.reembed:
            note = f"re-embedding into {i.reembed}"
        elif i.shadow_of:
            note = f"re-embedding of {i.shadow_of}"
        if i.first_stage_due:
            note = (note + "; " if note else "") + "first stage due for training"
        idx_rows.append([i.name, model, str(i.dim), str(i.rows), str(i.pending), str(i.retrying), str(i.failed),
                         rate, _duration(i.eta_s), note])
    parts = [table(["index", "model", "dim", "rows", "pending", "retrying", "failed", "throughput", "eta", ""],
                   idx_rows) if idx_rows else "no indexes (create one with maxsim.create_index)"]
    if any(i.pending for i in st.indexes) and not any(w.state == "running" for w in st.workers):
        parts.append("rows are pending and no worker is running: start one with `pgmaxsim worker`")
    due = [i.name for i in st.indexes if i.first_stage_due]
    if due and not any(w.state == "running" for w in st.workers):
        parts.append(f"the first stage of {', '.join(due)} is due for training and no worker is running (an"
                     f" untrained index is searched exactly): `pgmaxsim worker`, `pgmaxsim index reindex {due[0]}"
                     f" --first-stage` or SELECT maxsim.train_first_stage('{due[0]}')")
    for i in st.indexes:
        if i.last_errors:
            parts.append(f"\nlast failures of {i.name} ({i.failed} in maxsim.failed):")
            parts += [f"  row {e.row_id}  [{e.step}, {e.attempts} attempt{'s' if e.attempts != 1 else ''}]  {e.error}"
                      for e in i.last_errors]
    if st.workers:
        parts.append("\nworkers:")
        parts.append(table(["worker", "state", "heartbeat", "rows done", "failed", "indexes"],
                           [[w.worker_id, w.state, _age(w.heartbeat_age_s), str(w.rows_done), str(w.rows_failed),
                             ",".join(w.indexes) or "*"] for w in st.workers]))
    else:
        parts.append("\nworkers: none seen in the last day (start one with: pgmaxsim worker)")
    return "\n".join(parts)
