"""Keeping an index's residual sketch lists current, from a client (sql/idempotent/034_sketch.sql;
the merging itself runs in the server: pgmaxsim.plpy.sketch_merge).

- Writers never merge (a merge reads every pending row's tokens: seconds per few hundred pages,
  which no write should wait for). The worker's trainer merges in the background once 5 % of the
  rows are not in the lists, or some are and none was written for 30 s
  (pgmaxsim.worker.train: ``maxsim.first_stage_sketch_merge(name, true)``); ``--once`` merges them all.
- Without a worker (an application writing through ``Index.upsert`` or ``maxsim.upsert`` alone) no
  merge happens by itself, as no training does: the pending rows stay exact-scored candidates of
  every search (up to 1,000 of them; beyond, their best by the codebook's probe score over their
  codes), so results stay right and searches get slower as they pile up. Such an application calls
  :func:`merge` (``maxsim.first_stage_sketch_merge(name)``) after its bulk writes, or runs the worker.
- A training builds the new codebook's lists before its switch, and the switch merges the rows
  written meanwhile (pgmaxsim.codebook.train, maxsim.train_first_stage).
- :func:`merge` merges now (tests, benchmarks, after bulk loads).
- A full compaction (all the lists rewritten without the entries of rows gone) writes them into a
  table of their own; the next merge call swaps it in for the lists' partition once the
  transactions that could not see it have ended (maxsim._sk_swap), so the dead entries' bytes go back
  to the system at once. :func:`merge_calls` makes that call right away.
- A *settle* is such a full compaction into one segment, the lists' smallest and fastest form:
  asked for by ``settle`` (``pgmaxsim worker --once``, :func:`merge` after a bulk load), and made
  by a merge that takes the tail of a burst of writes once the newer segments hold 1/16 of the
  largest (pgmaxsim.plpy.sketch_merge.settles).

Why this is exact under writes: a list entry names a row version, and every write gives a row a
new version (maxsim._tok_row), so entries of rows updated or deleted since map to no live row and
drop out at query time; rows not merged yet are all candidates (up to a cap; beyond it their
best by the codebook's probe score). Merges of one index are serialized; each commits its segment
and the versions it merged in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from pgmaxsim.plpy.sketch_merge import MAX_SEGMENTS, threshold

__all__ = ["MAX_SEGMENTS", "Merged", "merge", "merge_calls", "threshold"]


@dataclass
class Merged:
    rows: int
    entries: int
    compacted: bool
    settled: bool = False


def merge(conn: psycopg.Connection[Any], name: str, settle: bool = False) -> Merged | None:
    """Merge the rows written since the last merge into the live codebook's lists, as any role that
    manages the index; ``settle``: then rewrite them as one segment. None: not a trained codebook
    index, no plpython3u, or another session merging."""
    got = merge_calls(conn, name, False, settle)
    if not got or got.get("busy"):
        return None
    return Merged(int(got["rows"]), int(got["entries"]), bool(got["compacted"]), bool(got.get("settled")))


def merge_calls(conn: psycopg.Connection[Any], name: str, only_if_due: bool,
                settle: bool = False) -> dict[str, Any] | None:
    """``maxsim.first_stage_sketch_merge(name, only_if_due, settle)``, called as often as a full compaction's
    swap needs: a merge that compacted all the lists wrote them into a table of their own, which the
    next call swaps in, in a transaction of its own, and returns (maxsim._sk_swap). On an autocommit
    connection each call is one transaction, so: a swap left by an earlier merge, then the merge,
    then its own swap. Otherwise the swap waits for the next call in another transaction.
    Returns the merge's answer (jsonb), or None (not a trained codebook index)."""
    def call() -> dict[str, Any] | None:
        row = conn.execute("SELECT maxsim.first_stage_sketch_merge(%s, %s, %s)", (name, only_if_due, settle)).fetchone()
        return row[0] if row else None

    got = call()
    if got and got.get("swapped"):
        got = call()
    if got and got.get("swap") == "pending" and conn.autocommit:
        call()
    return got
