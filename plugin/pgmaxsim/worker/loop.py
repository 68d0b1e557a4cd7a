"""The worker loop: batches until stopped, heartbeats, reconnects, ``--once``.

- **Stop**: a :class:`threading.Event`; SIGTERM/SIGINT set it (when the loop
  runs in the main thread). The current batch finishes and commits, then the
  loop exits. A second SIGINT interrupts at once (the open batch rolls back,
  which loses nothing).
- **Once**: drain and exit. Rows waiting for a retry are waited for; rows
  another worker is processing are left to it once nothing else is queued.
- **Reconnect**: a lost connection or a PostgreSQL restart aborts the open
  batch (nothing is lost: it was not committed) and the loop reconnects with
  exponential backoff (0.5 s doubling to 30 s), for ever by default or up to
  ``max_downtime`` seconds. A server that is not up yet when a long-running
  worker starts is waited for the same way; with ``once`` a database that
  cannot be reached at start is an immediate error.
- **Schema**: a database without the ``maxsim`` schema (never migrated, or
  downgraded while the worker ran) is an immediate one-line error, not a retry.
- **Errors**: each distinct row error (the text without the row id: a model
  that cannot load fails every row with the same text) is logged once, as a
  warning; repeats are only counted.
- **Heartbeat**: a row in ``maxsim.workers``, refreshed by a small thread on
  its own connection every ``heartbeat_interval`` seconds (so a long batch
  does not look like a dead worker); set to ``stopped`` on a clean exit.
- **First stages**: codebook indexes marked due for training (by the writes
  that took them past their threshold) are trained by a background thread
  on its own connection (:mod:`pgmaxsim.worker.train`), so batches go on;
  ``once`` trains what is due before it exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pgmaxsim.errors import ConfigurationError, PgmaxsimError, one_line
from pgmaxsim.worker import queue
from pgmaxsim.worker.batch import BatchResult, BatchSettings, StaleSpec, process_batch
from pgmaxsim.worker.encoding import EncoderCache, EncoderFactory, default_factory
from pgmaxsim.worker.progress import Progress
from pgmaxsim.worker.spec import IndexSpec, load_specs
from pgmaxsim.worker.train import Trainer

log = logging.getLogger("pgmaxsim.worker")

RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 30.0
SPEC_REFRESH_S = 30.0


@dataclass
class WorkerStats:
    """Totals of one :func:`run_worker` call."""

    worker_id: str = ""
    batches: int = 0
    done: int = 0
    skipped: int = 0
    missing: int = 0
    retried: int = 0
    failed: int = 0
    tokens: int = 0
    reconnects: int = 0
    waiting: int = 0  # rows of the served indexes queued for a retry when the worker stopped
    reembeds_finished: list[str] = field(default_factory=list)
    first_stages_trained: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, r: BatchResult) -> None:
        self.batches += 1
        self.done += r.done
        self.skipped += r.skipped
        self.missing += r.missing
        self.retried += r.retried
        self.failed += r.failed
        self.tokens += r.tokens
        self.errors = (self.errors + r.errors)[-50:]


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def run_worker(
    dsn: str | None = None,
    *,
    indexes: list[str] | None = None,
    once: bool = False,
    stop_event: threading.Event | None = None,
    batch_size: int = queue.DEFAULT_BATCH_SIZE,
    token_budget: int = queue.DEFAULT_TOKEN_BUDGET,
    max_attempts: int = queue.DEFAULT_MAX_ATTEMPTS,
    retry_base: float = queue.DEFAULT_RETRY_BASE_S,
    exit_on_error: bool = False,
    poll_interval: float = 2.0,
    heartbeat_interval: float = 10.0,
    max_downtime: float | None = None,
    progress: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    image_root: str | None = None,
    max_pixels: int | None = None,
    encoder_factory: EncoderFactory | None = None,
    install_signals: bool | None = None,
    on_batch: Callable[[BatchResult], None] | None = None,
) -> WorkerStats:
    """Embed queued rows until stopped (or, with ``once``, until the queue is drained).

    ``indexes``: names to serve (default: every index that has a model).
    ``image_root``: relative image paths resolve against it, and paths outside it
    are refused. ``max_pixels``: the pixel cap per image/page (default: the
    encoders' 2048 x 2048).
    ``encoder_factory(spec) -> Encoder`` replaces model loading (the default
    loads ``spec.model`` with :func:`pgmaxsim.encoders.load_encoder`).
    ``install_signals``: SIGTERM/SIGINT set the stop event (default: when
    called from the main thread). Raises PgmaxsimError for a bad index name,
    for the first row error with ``exit_on_error``, or when the database stays
    unreachable longer than ``max_downtime`` seconds.
    """
    from pgmaxsim.db.connect import resolve_dsn

    target = resolve_dsn(dsn)
    stop = stop_event or threading.Event()
    settings = BatchSettings(batch_size=batch_size, token_budget=token_budget, max_attempts=max_attempts,
                             retry_base=retry_base, exit_on_error=exit_on_error, max_pixels=max_pixels,
                             image_root=image_root)
    worker = _Worker(target, indexes, once, stop, settings, poll_interval, heartbeat_interval, max_downtime,
                     EncoderCache(encoder_factory or default_factory(device, dtype)), Progress(progress), on_batch)
    if install_signals is None:
        install_signals = threading.current_thread() is threading.main_thread()
    restore = _install_signal_handlers(stop) if install_signals else None
    try:
        with single_threaded_blas():
            return worker.run()
    finally:
        worker.progress.close()
        if restore:
            restore()


def single_threaded_blas() -> contextlib.AbstractContextManager[Any]:
    """Limit NumPy's BLAS to one thread while the worker runs.

    The worker's NumPy work (pooling, hashing) is small matrices; a multi-threaded
    OpenBLAS spins its idle threads and, on a small machine, starves the encoder
    (torch keeps its own thread pool) and a local PostgreSQL: measured on 2 cores,
    centroid pooling went from 77 to 1.9 ms per page and MiniLM from 51 to 204 rows/s.
    Uses threadpoolctl when installed (else the OPENBLAS_NUM_THREADS of the environment).
    """
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")  # type: ignore[no-any-return]


def _install_signal_handlers(stop: threading.Event) -> Callable[[], None]:
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.info("pgmaxsim worker: %s received, finishing the current batch", signal.Signals(signum).name)
        stop.set()

    for s in old:
        signal.signal(s, handler)

    def restore() -> None:
        for s, h in old.items():
            signal.signal(s, h)

    return restore


def _is_connection_error(e: BaseException, conn: psycopg.Connection[Any] | None) -> bool:
    if conn is not None and (conn.closed or conn.broken):
        return True
    return isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError)) and not isinstance(
        e, (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected,
            psycopg.errors.SerializationFailure))


class _Worker:
    def __init__(self, dsn: str, names: list[str] | None, once: bool, stop: threading.Event,
                 settings: BatchSettings, poll_interval: float, heartbeat_interval: float,
                 max_downtime: float | None, encoders: EncoderCache, progress: Progress,
                 on_batch: Callable[[BatchResult], None] | None) -> None:
        self.dsn, self.names, self.once, self.stop = dsn, names, once, stop
        self.settings, self.poll_interval = settings, poll_interval
        self.max_downtime = max_downtime
        self.encoders, self.progress, self.on_batch = encoders, progress, on_batch
        self.stats = WorkerStats(worker_id=new_worker_id())
        self.conn: psycopg.Connection[Any] | None = None
        self.lost = False
        self.connected_once = False
        self.specs: list[IndexSpec] = []
        self.specs_at = 0.0
        self.heartbeat = _Heartbeat(dsn, self.stats, heartbeat_interval)
        self.trainer = Trainer(dsn, names)
        self.reported: set[str] = set()

    # -- connection -------------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        delay, down_since = RECONNECT_FIRST_S, time.monotonic()
        while True:
            try:
                conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10, keepalives=1,
                                       keepalives_idle=30, keepalives_interval=10, keepalives_count=3,
                                       application_name="pgmaxsim worker")
                self.connected_once = True
                if self.lost:
                    self.stats.reconnects += 1
                    self.lost = False
                    log.info("pgmaxsim worker: reconnected")
                return conn
            except psycopg.OperationalError as e:
                from pgmaxsim.db.connect import redact

                down = time.monotonic() - down_since
                if self.once and not self.connected_once:
                    # --once against a database never reached: one clear line at once.
                    raise ConfigurationError(f"cannot connect to {redact(self.dsn)}: {one_line(e)}") from e
                if self.max_downtime is not None and down >= self.max_downtime:
                    raise ConfigurationError(
                        f"cannot connect to {redact(self.dsn)} for {down:.0f} s: {one_line(e)}") from e
                log.warning("pgmaxsim worker: cannot connect (%s); retrying in %.1f s", one_line(e), delay)
                if self.stop.wait(delay):
                    raise _Stopped from None
                delay = min(RECONNECT_MAX_S, delay * 2)

    def _drop_connection(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):  # it is already broken
                self.conn.close()
        self.conn = None

    def _refresh_specs(self, force: bool = False) -> None:
        assert self.conn is not None
        if force or not self.specs or time.monotonic() - self.specs_at > SPEC_REFRESH_S:
            self.specs = load_specs(self.conn, self.names, missing_ok=self.specs_at > 0)
            self.specs_at = time.monotonic()
            for spec in self.specs:
                queue.prune_failed(self.conn, spec)
            self.heartbeat.indexes = [s.name for s in self.specs]

    # -- main loop --------------------------------------------------------------------------
    def run(self) -> WorkerStats:
        self.heartbeat.start()
        try:
            self._loop()
        except _Stopped:
            pass
        finally:
            self._count_waiting()
            self.trainer.stop()
            self.heartbeat.stop(final_state="stopped")
            self._drop_connection()
        return self.stats

    def _loop(self) -> None:
        delay = RECONNECT_FIRST_S
        while not self.stop.is_set():
            try:
                if self.conn is None:
                    self.conn = self._connect()
                    self._require_schema()
                    self._refresh_specs(force=True)
                if not self._round() and self._idle():
                    return
                delay = RECONNECT_FIRST_S
            except PgmaxsimError:
                raise
            except psycopg.Error as e:
                if self.settings.exit_on_error and not _is_connection_error(e, self.conn):
                    raise PgmaxsimError(f"worker stopped on a database error: {one_line(e)}") from e
                if _is_connection_error(e, self.conn):
                    log.warning("pgmaxsim worker: connection lost (%s); reconnecting", one_line(e))
                    self._drop_connection()
                    self.lost = True
                else:
                    self._require_schema()  # dropped under us (migrate --downgrade): stop, do not retry
                    log.warning("pgmaxsim worker: database error (%s); retrying", one_line(e))
                    self.specs = []  # an index may have been dropped or changed
                if self.stop.wait(delay):
                    return
                delay = min(RECONNECT_MAX_S, delay * 2)

    def _round(self) -> bool:
        """One batch of each index that has work; True when anything was claimed."""
        assert self.conn is not None
        self._refresh_specs()
        self.trainer.poke()   # first stages marked due are trained beside the batches
        worked = False
        for spec in list(self.specs):
            if self.stop.is_set():
                break
            try:
                result = process_batch(self.conn, spec, self.encoders, self.settings, self.stats.worker_id)
            except StaleSpec:
                self._refresh_specs(force=True)
                return True
            if result is None:
                continue
            worked = True
            self.stats.add(result)
            self.progress.advance(result.handled, failed=self.stats.failed, index=spec.name)
            self._report(spec, result.errors)
            if self.on_batch:
                self.on_batch(result)
        return worked

    def _report(self, spec: IndexSpec, errors: list[str]) -> None:
        """Log each distinct error once (with the first row it hit); count the repeats."""
        repeats = 0
        for err in errors:
            row, _, text = err.partition(": ") if err.startswith("row ") else ("", "", err)
            key = f"{spec.name}\0{text}"
            if key in self.reported:
                repeats += 1
                continue
            if len(self.reported) < 10_000:
                self.reported.add(key)
            log.warning("pgmaxsim worker: index %s, %s: %s%s", spec.name, row or "rows", text,
                        " (later rows with this error are not logged again)" if row else "")
        if repeats:
            log.debug("pgmaxsim worker: index %s: %d more row(s) with errors already logged", spec.name, repeats)

    def _require_schema(self) -> None:
        assert self.conn is not None
        with contextlib.suppress(psycopg.Error):  # the connection itself failing is handled by the caller
            row = self.conn.execute("SELECT to_regclass('maxsim.indexes') IS NOT NULL").fetchone()
            if row is not None and not row[0]:
                raise ConfigurationError(f"database {self.conn.info.dbname!r} has no maxsim schema:"
                                         " run `pgmaxsim migrate` first")

    def _count_waiting(self) -> None:
        if self.conn is None or self.conn.closed or not self.specs:
            return
        with contextlib.suppress(psycopg.Error):
            self.stats.waiting = queue.totals(self.conn, self.specs).retrying

    def _idle(self) -> bool:
        """Nothing was claimable: finish re-embeddings, then wait or (``once``) decide to exit."""
        assert self.conn is not None
        from pgmaxsim.worker import reembed

        finished = reembed.finish_ready(self.conn, self.specs)
        if finished:
            self.stats.reembeds_finished += finished
            self._refresh_specs(force=True)
            return False
        count, due_in = queue.pending(self.conn, self.specs)
        self.progress.set_pending(count)
        if self.once and count == 0:
            self.trainer.drain()   # draining includes the first stages the batches made due
            self.stats.first_stages_trained = list(self.trainer.trained)
            return True
        wait = self.poll_interval if due_in is None else min(self.poll_interval, max(0.05, due_in))
        if self.once:
            wait = min(wait, 0.2) if due_in is None else max(0.05, due_in)
        return self.stop.wait(wait)


class _Stopped(Exception):
    pass


class _Heartbeat:
    """Keeps this worker's ``maxsim.workers`` row fresh from a thread with its own connection."""

    def __init__(self, dsn: str, stats: WorkerStats, interval: float) -> None:
        self.dsn, self.stats, self.interval = dsn, stats, interval
        self.indexes: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pgmaxsim-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, final_state: str) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._beat(final_state)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._beat("running")
            self._stop.wait(self.interval)

    def _beat(self, state: str) -> None:
        s = self.stats
        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5,
                                             application_name="pgmaxsim worker heartbeat")
            self._conn.execute(
                "SELECT maxsim.worker_heartbeat(%s, %s, %s, %s::bigint[], %s, %s::text[], %s)",
                (s.worker_id, socket.gethostname(), os.getpid(), [s.done, s.failed], state, self.indexes,
                 s.errors[-1] if s.errors else None))
        except psycopg.Error:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
            self._conn = None
