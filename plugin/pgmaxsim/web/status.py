"""The status page's data: per index rows and queue, failed rows with their errors, workers, scorer.

The schema owner (and pgmaxsim admins who own the tables) read it all, as ``pgmaxsim
status`` does (:func:`pgmaxsim.worker.report.status`). Any other granted role reads what
the SQL entry points give it: per index the counts of ``maxsim.index_info`` (NULL where they
would tell it about rows it cannot see) and, for indexes it manages, ``maxsim.queue_state``;
worker heartbeats and the scorer's address are the owner's business and are said to be so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from pgmaxsim.errors import one_line

SCORER_TIMEOUT_S = 1.0


@dataclass
class IndexRow:
    name: str
    model: str
    rows: int | None
    pending: int | None
    retrying: int | None
    failed: int | None
    throughput: str = "-"
    errors: list[Any] = field(default_factory=list)  # FailedRow: row_id, step, error, attempts, failed_at


@dataclass
class StatusView:
    role: str
    full: bool  # False: the role sees only what the entry points give it
    indexes: list[IndexRow]
    workers: list[Any] | None  # WorkerStatus; None: not visible to this role
    scorer: str
    notes: list[str] = field(default_factory=list)


def read_status(conn: psycopg.Connection[Any], errors: int = 10) -> StatusView:
    role = conn.execute("SELECT current_user").fetchone()[0]
    try:
        with conn.transaction():
            view = _full(conn, role, errors)
    except psycopg.errors.InsufficientPrivilege:
        view = _limited(conn, role)
    view.scorer = scorer_status(conn)
    return view


def _full(conn: psycopg.Connection[Any], role: str, errors: int) -> StatusView:
    from pgmaxsim.worker.report import status

    st = status(conn, errors=errors)
    rows = [IndexRow(i.name, _model(i.model, i.model_revision), i.rows, i.pending, i.retrying, i.failed,
                     f"{i.rows_per_s:.1f} rows/s" + ("" if i.workers_running else " (last run)")
                     if i.rows_per_s else "-", i.last_errors) for i in st.indexes]
    return StatusView(role, True, rows, st.workers, "")


def _limited(conn: psycopg.Connection[Any], role: str) -> StatusView:
    out = []
    for name, model, rev in conn.execute(
            "SELECT name, model, model_revision FROM maxsim.list_indexes() ORDER BY name").fetchall():
        info = conn.execute("SELECT rows, pending FROM maxsim.index_info(%s)", (name,)).fetchone()
        row = IndexRow(name, _model(model, rev), info[0] if info else None, info[1] if info else None, None, None)
        try:
            with conn.transaction():
                q = conn.execute("SELECT retrying, cardinality(failed_ids) FROM maxsim.queue_state(%s)",
                                 (name,)).fetchone()
            row.retrying, row.failed = (int(q[0]), int(q[1])) if q else (None, None)
        except psycopg.errors.InsufficientPrivilege:
            pass  # an index this role searches but does not manage
        out.append(row)
    notes = [(f"role {role} is not the schema owner: counts it may not see are blank, failed rows are counted"
              " only for indexes it manages, and their errors and the workers' heartbeats are shown to the"
              " schema owner (serve with its DSN, or run pgmaxsim status as it)")]
    return StatusView(role, False, out, None, "", notes)


def _model(model: str | None, revision: str | None) -> str:
    return (model or "(application)") + (f"@{revision}" if revision else "")


def scorer_status(conn: psycopg.Connection[Any]) -> str:
    """One line: where the scorer is and whether it answers this process."""
    try:
        with conn.transaction():
            settings = conn.execute("SELECT maxsim.show_settings()").fetchone()[0] or {}
    except psycopg.errors.InsufficientPrivilege:
        return "the scorer's address is shown to pgmaxsim admins"
    address = settings.get("scorer")
    if not address:
        return "no scorer configured: searches score inside PostgreSQL"
    from pgmaxsim.scorer.client import ScorerClient

    try:
        with ScorerClient(address, timeout=SCORER_TIMEOUT_S, connect_timeout=SCORER_TIMEOUT_S,
                          secret_file=settings.get("scorer_secret_file")) as c:
            st = c.status()
    except Exception as e:  # noqa: BLE001 - any failure: it does not answer here (it may still answer the server)
        return f"{address}: no answer from this process ({one_line(e)})"
    served = ", ".join(f"{k} {v}" for k, v in sorted((st.get("served") or {}).items())) or "nothing yet"
    return f"{address}: answers, {st.get('backend', '?')} backend, {len(st.get('indexes') or [])} indexes loaded," \
           f" served {served}"
