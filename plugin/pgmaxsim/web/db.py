"""Read-only database access for the web page: a few kept connections, one error type per answer.

Contract:

- every connection is read-only twice over: the session's ``default_transaction_read_only``
  and psycopg's ``read_only`` (``BEGIN READ ONLY``), so nothing the page runs can write,
  whatever the role may do elsewhere;
- the page connects as the role of the DSN it was given: the privilege and row-level
  security rules of ``maxsim.search`` and of the source tables apply to what it shows;
- a request borrows one connection for one transaction (:meth:`Database.transaction`);
  a connection that broke (server restarted, network gone) is closed, not returned, so the
  next request connects afresh and the page recovers by itself once the server is back;
- the outcomes the page shows as HTTP statuses are the exceptions below; every other
  server error is a bug to see (500).

Why not psycopg_pool: a pool waits up to its timeout for a connection when the server is
down; connecting on demand answers "database unavailable" as soon as the refusal comes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from pgmaxsim.errors import PgmaxsimError, one_line

#: Idle connections kept for the next requests (uvicorn's thread pool runs sync handlers).
KEEP_IDLE = 4
#: Seconds to wait for the server to accept a connection before answering 503.
CONNECT_TIMEOUT_S = 5
#: A connection idle longer than this is checked (SELECT 1) before a request gets it: the server
#: may have restarted meanwhile, and the request would fail on it although the server is back.
CHECK_AFTER_IDLE_S = 5.0


class WebError(PgmaxsimError):
    """An outcome shown to the user as a page with an HTTP status (``status``)."""

    status = 500


class BadRequest(WebError):
    status = 400


class Forbidden(WebError):
    status = 403


class NotFound(WebError):
    status = 404


class Unavailable(WebError):
    status = 503


class Database:
    """Connections to ``dsn`` as its role, read-only; see the module doc."""

    def __init__(self, dsn: str, *, shown_as: str | None = None) -> None:
        self.dsn = dsn
        self.shown_as = shown_as or "the database"  # what error pages name (no password)
        self._idle: list[tuple[psycopg.Connection[Any], float]] = []  # (connection, idle since)
        self._lock = threading.Lock()

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as e:
            raise Unavailable(f"cannot connect to {self.shown_as}: {one_line(e)}") from None
        conn.execute("SET default_transaction_read_only = on")
        conn.autocommit = False
        conn.read_only = True
        return conn

    def _get(self) -> psycopg.Connection[Any]:
        while True:
            with self._lock:
                if not self._idle:
                    break
                conn, since = self._idle.pop()
            if conn.closed:
                continue
            if time.monotonic() - since < CHECK_AFTER_IDLE_S:
                return conn
            try:
                conn.execute("SELECT 1")
                conn.rollback()
                return conn
            except psycopg.Error:
                conn.close()  # gone with a server restart: try the next, else connect afresh
        return self._connect()

    def _put(self, conn: psycopg.Connection[Any]) -> None:
        if conn.closed or conn.broken or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.close()
            return
        with self._lock:
            if len(self._idle) < KEEP_IDLE:
                self._idle.append((conn, time.monotonic()))
                return
        conn.close()

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection inside one read-only transaction; server errors become WebErrors."""
        conn = self._get()
        try:
            with conn.transaction():
                yield conn
        except (psycopg.Error, PgmaxsimError) as e:
            if isinstance(e, WebError):
                raise
            mapped = self._classify(e, conn)
            if mapped is None:
                raise
            raise mapped from None
        finally:
            self._put(conn)

    def _classify(self, e: BaseException, conn: psycopg.Connection[Any]) -> WebError | None:
        """The WebError that ``e`` is (the library wraps server errors in PgmaxsimError: the
        server's error is then its ``__context__``), or None: not one the page expects."""
        server = e if isinstance(e, psycopg.Error) else e.__context__
        if conn.broken or isinstance(server, psycopg.OperationalError) and conn.closed:
            conn.close()
            self.close()  # the kept ones went with it, most likely
            return Unavailable(f"lost the connection to {self.shown_as}: {one_line(e)}")
        if isinstance(server, psycopg.errors.InsufficientPrivilege):
            return Forbidden(one_line(e))
        if isinstance(e, PgmaxsimError):
            return BadRequest(one_line(e))
        return None

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()
