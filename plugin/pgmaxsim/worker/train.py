"""The worker's first-stage trainer: trains the codebook indexes marked due, and merges their residual
sketch lists, in the background.

A write that takes a codebook index past its threshold only marks it due
(sql/idempotent/038_fs_train.sql), and writers never merge their rows into the sketch lists
(sql/idempotent/034_sketch.sql: rows not merged yet are candidates of every search); this does both,
so no write waits for either:

- :meth:`Trainer.poke` (every round of the loop): at most every :data:`CHECK_S` seconds, when no
  training runs, a thread on its own connection lists the due indexes the worker's role manages
  (``maxsim.first_stage_due``; only the worker's ``--index`` names when given, else every one,
  including indexes whose embeddings the application writes) and trains them one after another
  (:func:`pgmaxsim.codebook.train`: steps that each commit; searches and writes go on); then, for
  every trained codebook index it manages (``maxsim.first_stage_trained``), merges the rows written
  since the last merge once they are 5 % of the rows or no row was written for 30 s
  (``maxsim.first_stage_sketch_merge(name, true)``: one transaction; a look when nothing is due).
- :meth:`Trainer.drain` (``--once``): train what is due now, merge every pending row, settle the
  lists into one segment (their smallest and fastest form; sketch_lists), and wait.
- :meth:`Trainer.stop`: stop a training in progress at its next step or batch (its running query
  is cancelled; a k-means in progress is waited for), before its switch: the index stays due, its
  live codebook untouched (the half-built slot is cleared by the next training); a merge in progress
  is cancelled (its rows stay pending); then wait for the thread.

A failed training is logged and retried after a back-off (:data:`RETRY_S`, doubling), not every round.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import psycopg

from pgmaxsim import sketch_lists
from pgmaxsim.errors import PgmaxsimError, one_line

log = logging.getLogger("pgmaxsim.worker")

#: Seconds between two looks for due indexes (a look is one small query).
CHECK_S = 10.0
#: First back-off after a failed training of an index; doubles up to RETRY_MAX_S.
RETRY_S = 30.0
RETRY_MAX_S = 600.0


class Trainer:
    def __init__(self, dsn: str, names: list[str] | None, check_s: float = CHECK_S) -> None:
        self.dsn, self.names, self.check_s = dsn, names, check_s
        self.trained: list[str] = []
        self.merged: dict[str, int] = {}   # index -> rows merged into its sketch lists
        self.settled: list[str] = []       # indexes whose lists a merge settled into one segment
        self._checked = -float("inf")
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._stopping = threading.Event()
        self._failed: dict[str, tuple[float, int]] = {}   # name -> (retry after, failures)

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def poke(self, force: bool = False, merge_all: bool = False) -> None:
        """Start a look for due indexes (their training, then their merges) when none runs and it is
        time; ``merge_all``: merge every pending row, not only once a merge is due."""
        now = time.monotonic()
        if self.busy or self._stopping.is_set() or (not force and now - self._checked < self.check_s):
            return
        self._checked = now
        self._thread = threading.Thread(target=self._run, args=(merge_all,), name="pgmaxsim-trainer", daemon=True)
        self._thread.start()

    def drain(self) -> None:
        """Train every index due now (after one in progress), merge every pending row, and wait."""
        if self._thread is not None:
            self._thread.join()
        self.poke(force=True, merge_all=True)
        if self._thread is not None:
            self._thread.join()

    def stop(self) -> None:
        self._stopping.set()
        conn = self._conn
        if conn is not None and self.busy:
            with contextlib.suppress(Exception):   # it may be closing on its own
                conn.cancel()
        if self._thread is not None:
            self._thread.join(timeout=60)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    # -- the thread -------------------------------------------------------------------------
    def _run(self, merge_all: bool = False) -> None:
        try:
            conn = self._connection()
            due = [r[0] for r in conn.execute("SELECT name FROM maxsim.first_stage_due()").fetchall()]
            for name in due:
                if self._stopping.is_set():
                    return
                if (self.names is None or name in self.names) and self._may_retry(name):
                    self._train(conn, name)
            for (name,) in conn.execute("SELECT name FROM maxsim.first_stage_trained()").fetchall():
                if self._stopping.is_set():
                    return
                if self.names is None or name in self.names:
                    self._merge(conn, name, merge_all)
        except psycopg.Error as e:
            if not self._stopping.is_set():
                log.warning("pgmaxsim worker: looking for first stages to train failed: %s", one_line(e))
            self._drop()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10,
                                         application_name="pgmaxsim worker trainer")
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None

    def _may_retry(self, name: str) -> bool:
        after, _ = self._failed.get(name, (0.0, 0))
        return time.monotonic() >= after

    def _train(self, conn: psycopg.Connection[Any], name: str) -> None:
        from pgmaxsim import codebook

        try:
            done = codebook.train(conn, name, stop=self._stopping)
        except (psycopg.Error, PgmaxsimError) as e:
            if self._stopping.is_set():
                return
            _, n = self._failed.get(name, (0.0, 0))
            wait = min(RETRY_MAX_S, RETRY_S * 2 ** n)
            self._failed[name] = (time.monotonic() + wait, n + 1)
            log.warning("pgmaxsim worker: index %s: training its first stage failed (again in %.0f s): %s",
                        name, wait, one_line(e))
            if conn.broken:
                self._drop()
            return
        self._failed.pop(name, None)
        self.trained.append(name)
        log.info("pgmaxsim worker: index %s: first stage codebook %d x %d trained (generation %d, %d rows,"
                 " %.1f s + %.1f s)", name, done.n_coarse, done.n_fine, done.gen, done.rows, done.seconds_train,
                 done.seconds_fill)

    def _merge(self, conn: psycopg.Connection[Any], name: str, merge_all: bool) -> None:
        try:
            got = sketch_lists.merge_calls(conn, name, not merge_all, settle=merge_all)
        except psycopg.Error as e:   # the rows stay pending (candidates of every search) until a later merge
            if not self._stopping.is_set():
                log.warning("pgmaxsim worker: index %s: merging its sketch lists failed: %s", name, one_line(e))
            if conn.broken:
                self._drop()
            return
        if not got:
            return
        if got.get("rows"):
            self.merged[name] = self.merged.get(name, 0) + int(got["rows"])
        if got.get("settled"):
            self.settled.append(name)
        if got.get("rows") or got.get("settled"):
            log.info("pgmaxsim worker: index %s: %d rows merged into its sketch lists%s", name, int(got.get("rows") or 0),
                     ", the lists settled into one segment" if got.get("settled")
                     else " (compacted)" if got.get("compacted") else "")
