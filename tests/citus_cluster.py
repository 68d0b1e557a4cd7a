"""A real Citus cluster for the tests and the bench: a coordinator and workers on one machine.

Each node is a PostgreSQL 15 cluster (:class:`pgserver.LocalPostgres`, run as the ``postgres``
OS user when root) on a free port with ``shared_preload_libraries = 'citus'``; every node loads
PL/Python code from the same readable copy of numpy and pgmaxsim. The database is created on
every node with the citus extension, the workers are added to the coordinator, and
``pgmaxsim migrate`` runs against the coordinator only: it creates vector, plpython3u and
tsm_system_rows, and the ``maxsim`` schema and functions, which Citus propagates to the workers.

Citus is not in Debian's archive: ``../shared/citus/build.sh`` builds it (scripts/test.sh runs
it when that folder exists). Where it is not installed, :func:`citus_missing` says so and the
tests skip with that reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from pgserver import PG_BIN, LocalPostgres, make_readable_pylib

DBNAME = "pgmaxsim_citus"
# Per node: Citus's two-phase commits need prepared transactions; shard moves (rebalancing) copy
# shards by logical replication; a few hundred connections is PostgreSQL's budget for the
# coordinator's executor fanning out to every shard of every node.
SETTINGS = {
    "shared_preload_libraries": "'citus'",
    "max_prepared_transactions": "100",
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "max_connections": "200",
    "shared_buffers": "128MB",
    # Keep the coordinator's connections to the workers (Citus caches 1 per worker by default and
    # opens the others per statement): a new worker backend pays PL/Python's numpy and pgmaxsim
    # imports on its first score, which otherwise lands on every fanned-out search.
    "citus.max_cached_conns_per_worker": "16",
}


def citus_missing() -> str | None:
    """Why a Citus cluster cannot be started here (None when it can)."""
    try:
        libdir = subprocess.run([str(PG_BIN / "pg_config"), "--pkglibdir"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        libdir = "/usr/lib/postgresql/15/lib"
    if not (Path(libdir) / "citus.so").exists():
        return (f"Citus is not installed ({libdir}/citus.so missing): run bash ../shared/citus/build.sh"
                " (scripts/test.sh does when ../shared/citus exists)")
    return None


@dataclass
class CitusCluster:
    """A coordinator and workers; ``dsn`` is the coordinator's database (where pgmaxsim runs)."""

    pylib: Path
    coordinator: LocalPostgres = field(default_factory=LocalPostgres)
    workers: list[LocalPostgres] = field(default_factory=list)

    @property
    def dsn(self) -> str:
        return self.coordinator.dsn(DBNAME)

    def start(self, n_workers: int = 2) -> CitusCluster:
        self._start_node(self.coordinator)
        with psycopg.connect(self.dsn, autocommit=True) as c:
            c.execute("SELECT citus_set_coordinator_host('127.0.0.1', %s)", (self.coordinator.port,))
        for _ in range(n_workers):
            self.add_worker()
        return self

    def _start_node(self, node: LocalPostgres) -> None:
        node.start(pylib=self.pylib, settings=SETTINGS)
        node.wait_ready()
        with psycopg.connect(node.dsn(), autocommit=True) as c:
            c.execute(f"CREATE DATABASE {DBNAME}")
        with psycopg.connect(node.dsn(DBNAME), autocommit=True) as c:
            c.execute("CREATE EXTENSION citus")

    def add_worker(self) -> LocalPostgres:
        """Start one more node and add it to the cluster (it holds no shards until a rebalance)."""
        node = LocalPostgres()
        self._start_node(node)
        self.workers.append(node)
        with psycopg.connect(self.dsn, autocommit=True) as c:
            c.execute("SELECT citus_add_node('127.0.0.1', %s)", (node.port,))
        return node

    def worker_dsn(self, i: int) -> str:
        return self.workers[i].dsn(DBNAME)

    def stop(self) -> None:
        for node in [*self.workers, self.coordinator]:
            node.stop()


@contextmanager
def migrated_cluster(n_workers: int = 2) -> Iterator[CitusCluster]:
    """A started cluster (PL/Python reading a world-readable copy of pgmaxsim) with pgmaxsim's
    migrations applied, stopped and removed at the end; skips the test when Citus is missing."""
    import pytest
    from pgmaxsim.db import migrate

    reason = citus_missing()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="pgmaxsim-citus-pylib-"))
    os.chmod(root, 0o755)
    c = CitusCluster(pylib=make_readable_pylib(root / "site"))
    try:
        c.start(n_workers=n_workers)
        migrate.upgrade(c.dsn)
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)
