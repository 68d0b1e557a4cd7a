"""Searches (and other work) in other sessions while a test changes an index under them.

    with search_during(dsn, probes, lambda c, q: search_ids(c, "fs", q, 10)) as run:
        codebook.train(db, "fs", seed=1)
    assert not run.errors
    assert run.seen and all(got and got[0] == k for k, got in run.seen)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from pgmaxsim.db.adapters import register_tokens


@dataclass
class Run:
    seen: list[tuple[Any, Any]] = field(default_factory=list)   # (probe key, what its search returned)
    errors: list[BaseException] = field(default_factory=list)   # of every thread, for the test to assert on


@contextmanager
def search_during(dsn: str, probes: Sequence[tuple[Any, Any]], search: Callable[[psycopg.Connection[Any], Any], Any],
                  also: Sequence[Callable[[psycopg.Connection[Any]], None]] = ()) -> Iterator[Run]:
    """Search the probes ``(key, query)`` in turn, ``search(conn, query)``, from a thread of its own
    from the start of the block to its end (at least 4 searches); each of `also` runs once in a thread
    of its own. Each thread has its own autocommit connection with halfvec registered. At the end of
    the block the threads are stopped and joined; their errors are in ``run.errors``, not raised."""
    run = Run()
    stop = threading.Event()

    def guarded(work: Callable[[psycopg.Connection[Any]], None]) -> Callable[[], None]:
        def body() -> None:
            try:
                with psycopg.connect(dsn, autocommit=True) as c:
                    register_tokens(c)
                    work(c)
            except BaseException as e:  # noqa: BLE001 - reported to the test
                run.errors.append(e)
        return body

    def searcher(c: psycopg.Connection[Any]) -> None:
        i = 0
        while not stop.is_set() or i < 4:
            k, q = probes[i % len(probes)]
            run.seen.append((k, search(c, q)))
            i += 1

    threads = [threading.Thread(target=guarded(w)) for w in (searcher, *also)]
    for t in threads:
        t.start()
    try:
        yield run
    finally:
        stop.set()
        for t in threads:
            t.join()
