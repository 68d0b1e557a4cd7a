"""The warm service's side of a thin client's search (:mod:`pgmaxsim.warm_search`).

A request carries the search's options, where to search (``dsn``, or ``embedded``: the
embedded server's data directory) and the caller's ``PG*`` environment. The answer is
what ``pgmaxsim search`` would print (:func:`pgmaxsim.commands.search_cmd.render`) and
its exit code, or ``ok: false`` when the client should search itself.

Rights: the connection is made with exactly the caller's DSN and libpq environment, and
kept for that combination only, so each search runs as the role the caller's own
command would run as. After each search the connection is kept only when it is idle
and still that role (a filter could have called ``set_config('role', …)``), with its
settings reset; else it is closed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: The request's search options and their types (anything else is refused).
OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "query": (str,), "index": (str, type(None)), "k": (int,), "candidates": (int, type(None)),
    "exact": (bool,), "filter": (str, type(None)), "json": (bool,), "cache": (bool,)}


class Searches:
    """Connections by (target, PG environment), the embedded servers held, and the answers."""

    def __init__(self) -> None:
        self.conns: dict[str, tuple[Any, tuple[str, str]]] = {}
        self.held: dict[str, Any] = {}
        self._uris: dict[str, str] = {}

    def hold(self, pgdata: Path) -> str:
        """Start or join the embedded server in ``pgdata``: it stays up while the service runs."""
        from pgmaxsim.db.embedded import embedded_uri

        key = str(pgdata)
        if key not in self._uris:
            self._uris[key] = embedded_uri(pgdata)
            if not self.held:  # the one a ping names (pgmaxsim.query_encoder_service.held_embedded_uri)
                self.held = {"embedded": key, "uri": self._uris[key]}
        return self._uris[key]

    def answer(self, head: dict[str, Any]) -> dict[str, Any]:
        from pgmaxsim import __version__

        if head.get("version") != __version__:
            return _not_served(f"this service runs pgmaxsim {__version__}")
        try:
            args, where, pgenv = _parse(head)
        except ValueError as e:
            return {"ok": False, "code": "bad_request", "error": str(e)}
        key = json.dumps([where, sorted(pgenv.items())])
        out, err = io.StringIO(), io.StringIO()
        t0 = time.perf_counter()
        timer = _EncodeTimer()
        conn = None
        try:
            conn = self._connection(key, where, pgenv)
            code = _render(conn, args, timer, out, err)
        except Exception as e:  # noqa: BLE001 - see _failure
            self._drop(key)
            return _failure(e)
        finally:
            if conn is not None:
                self._settle(key)
        total = (time.perf_counter() - t0) * 1000
        return {"ok": True, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
                "timing_ms": {"total": round(total, 2), "encode": round(timer.ms, 2)}}

    # ------------------------------------------------------------ connections

    def _connection(self, key: str, where: dict[str, str], pgenv: dict[str, str]) -> Any:
        found = self.conns.get(key)
        if found is not None and not found[0].closed:
            return found[0]
        from pgmaxsim.db.connect import connect

        dsn = where.get("dsn") or self.hold(Path(where["embedded"]))
        with _environment(pgenv):
            conn = connect(dsn)
        who = conn.execute("SELECT current_user::text, session_user::text").fetchone()
        self.conns[key] = (conn, (who[0], who[1]))
        return conn

    def _settle(self, key: str) -> None:
        """Keep the connection for the next search only when it is idle and still the caller's role."""
        import psycopg

        found = self.conns.get(key)
        if found is None:
            return
        conn, who = found
        try:
            if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                raise psycopg.OperationalError("not idle")
            now = conn.execute("SELECT current_user::text, session_user::text").fetchone()
            if (now[0], now[1]) != who:
                raise psycopg.OperationalError("role changed")
            conn.execute("RESET ALL")
        except psycopg.Error:
            self._drop(key)

    def _drop(self, key: str) -> None:
        found = self.conns.pop(key, None)
        if found is not None:
            with contextlib.suppress(Exception):
                found[0].close()

    def close(self) -> None:
        for key in list(self.conns):
            self._drop(key)


def _parse(head: dict[str, Any]) -> tuple[argparse.Namespace, dict[str, str], dict[str, str]]:
    opts = {}
    for name, types in OPTION_TYPES.items():
        value = head.get(name)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ValueError(f"search option {name!r} is missing or of the wrong type")
        opts[name] = value
    if isinstance(head.get("dsn"), str) and head["dsn"]:
        where = {"dsn": head["dsn"]}
    elif isinstance(head.get("embedded"), str) and head["embedded"]:
        where = {"embedded": str(Path(head["embedded"]).resolve())}
    else:
        raise ValueError("a search needs a dsn or the embedded server's data directory")
    pgenv = head.get("pgenv") or {}
    if not isinstance(pgenv, dict) or not all(isinstance(k, str) and k.startswith("PG") and isinstance(v, str)
                                              for k, v in pgenv.items()):
        raise ValueError("pgenv must map PG* variable names to strings")
    return argparse.Namespace(**opts), where, pgenv


@contextlib.contextmanager
def _environment(pgenv: dict[str, str]) -> Iterator[None]:
    """The caller's PG* variables, and only those, while libpq reads them (connecting)."""
    ours = {k: v for k, v in os.environ.items() if k.startswith("PG") and not k.startswith("PGMAXSIM")}
    for k in ours:
        del os.environ[k]
    os.environ.update(pgenv)
    try:
        yield
    finally:
        for k in pgenv:
            os.environ.pop(k, None)
        os.environ.update(ours)


class _EncodeTimer:
    """Wraps the query encoder to time it (the reply's timing, for bench/cli_latency.py)."""

    def __init__(self) -> None:
        self.ms = 0.0
        self.inner: Any = None

    def wrap(self, encoder: Any) -> Any:
        self.inner = encoder
        return self

    def encode_query(self, text: str) -> Any:
        t0 = time.perf_counter()
        try:
            return self.inner.encode_query(text)
        finally:
            self.ms += (time.perf_counter() - t0) * 1000

    def check_dim(self, dim: int, index: str) -> None:
        self.inner.check_dim(dim, index)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _render(conn: Any, args: argparse.Namespace, timer: _EncodeTimer, out: io.StringIO, err: io.StringIO) -> int:
    from pgmaxsim.commands.search_cmd import render
    from pgmaxsim.errors import PgmaxsimError, one_line

    def encoder_of(index_id: int, model: str, revision: str | None) -> Any:
        from pgmaxsim.query_encoder_service import scorer_encoder
        from pgmaxsim.search import encoder_for

        return timer.wrap(scorer_encoder(conn, index_id, model, revision) or encoder_for(model, revision))

    try:
        return render(conn, args, encoder_of, out, err)
    except PgmaxsimError as e:  # what the command prints for it, as cli.main would
        print(f"pgmaxsim: {one_line(e)}", file=err)
        return 1


def _failure(e: Exception) -> dict[str, Any]:
    """A failure outside the search's own errors (a lost connection, a bug): the client searches itself,
    and shows whatever happens there as it would without the service."""
    from pgmaxsim.errors import one_line

    return _not_served(f"{type(e).__name__}: {one_line(e)}")


def _not_served(why: str) -> dict[str, Any]:
    return {"ok": False, "code": "not_served", "error": why}
