"""docker-compose.yml cannot run here (no Docker engine): check it statically.

Every service command must parse as a real ``pgmaxsim`` invocation (subcommand
and options), and every file it references (Dockerfiles, COPY sources) must exist.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pgmaxsim.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def dockerfile_of(service: dict[str, Any]) -> Path | None:
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return ROOT / build / "Dockerfile"
    return ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")


def entrypoint_is_pgmaxsim(dockerfile: Path) -> bool:
    return bool(re.search(r'^ENTRYPOINT\s+\["pgmaxsim"\]', dockerfile.read_text(), re.MULTILINE))


def assert_parses(argv: list[str]) -> None:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits on unknown subcommands/options
        raise AssertionError(f"not a valid pgmaxsim command: {argv}") from e
    assert callable(args.func)


def test_services_and_wiring(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"db", "scorer", "worker"} <= set(services)
    for name in ("scorer", "worker"):
        svc = services[name]
        assert "DATABASE_URL" in svc["environment"]
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d["capabilities"] and d["driver"] == "nvidia" for d in devices)
        assert "healthcheck" in svc
    assert "healthcheck" in services["db"]
    volumes = set(compose["volumes"])
    for svc in services.values():
        for v in svc.get("volumes", []):
            source = v.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in volumes, f"undeclared named volume {source}"


def test_every_command_is_a_real_pgmaxsim_subcommand(compose: dict[str, Any]) -> None:
    checked = 0
    for name, svc in compose["services"].items():
        dockerfile = dockerfile_of(svc)
        if "command" in svc and name == "db":
            assert svc["command"][0] == "postgres"
        elif "command" in svc:
            assert dockerfile is not None and entrypoint_is_pgmaxsim(dockerfile), name
            assert_parses(list(svc["command"]))
            checked += 1
        test = (svc.get("healthcheck") or {}).get("test", [])
        if isinstance(test, list) and "pgmaxsim" in test:
            assert_parses(test[test.index("pgmaxsim") + 1:])
            checked += 1
    assert checked >= 3


def test_every_referenced_file_exists(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        dockerfile = dockerfile_of(svc)
        if dockerfile is None:
            continue
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        for line in dockerfile.read_text().splitlines():
            m = re.match(r"^COPY\s+(?!--from)(.+)\s+(\S+)$", line.strip())
            if m:
                for src in m.group(1).split():
                    assert (ROOT / src).exists(), f"{dockerfile.name}: COPY source {src} missing"


def test_db_image_installs_what_plpython_needs() -> None:
    text = (ROOT / "docker" / "Dockerfile.db").read_text()
    assert "plpython3" in text and "pgvector" in text
    assert re.search(r"pip3? install .*(/src|pgmaxsim)", text)
    assert re.search(r"^FROM postgres:17", text, re.MULTILINE)


def test_db_is_local_only_with_a_required_password(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert ":-pgmaxsim" not in text and "${POSTGRES_PASSWORD:?" in text  # no default password
    for port in compose["services"]["db"].get("ports", []):
        assert str(port).startswith("127.0.0.1:"), port


def test_liveness_checks_test_the_processes(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]["healthcheck"]["test"]
    scorer = compose["services"]["scorer"]["healthcheck"]["test"]
    assert "--worker-alive" in worker  # the heartbeat's age, not only the database
    assert "--ping" in scorer  # an answer, not only a socket file


def test_one_pinned_cuda_runtime() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"torch==\$\{TORCH\}", text) and re.search(r"ARG TORCH=\d+\.\d+\.\d+", text)
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "cupy-cuda13x" in code and "cupy-cuda12x" not in code
    assert "[models,gpu]" not in text  # the gpu extra would bring a CUDA 12 CuPy


SOCKET = "/run/pgmaxsim/scorer.sock"


def test_scorer_address_is_set_by_migrate_and_reachable_by_the_db_user(compose: dict[str, Any]) -> None:
    services = compose["services"]
    # the session setting pgmaxsim.scorer is ignored now: the address is an admin setting in the database
    assert not any("pgmaxsim.scorer" in str(a) for a in services["db"].get("command", []))
    migrate = services["migrate"]["command"]
    assert migrate[:1] == ["migrate"] and migrate[migrate.index("--scorer") + 1] == SOCKET
    scorer = services["scorer"]["command"]
    assert scorer[scorer.index("--socket") + 1] == SOCKET
    # the db image's postgres uid/gid (999 in the official image) does not exist in the scorer's image
    assert scorer[scorer.index("--allow-user") + 1] == "999"
    assert scorer[scorer.index("--socket-group") + 1] == "999"
    assert re.search(r"^FROM postgres:17-bookworm", (ROOT / "docker" / "Dockerfile.db").read_text(), re.MULTILINE)
    for name in ("db", "scorer"):
        assert any(str(v).startswith("scorer-socket:/run/pgmaxsim") for v in services[name]["volumes"]), name


def test_migrate_scorer_option_sets_the_admin_setting(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    import psycopg
    from pgmaxsim.cli import main

    assert main(["--dsn", dsn, "migrate", "--scorer", SOCKET]) == 0
    assert f"scorer: {SOCKET}" in capsys.readouterr().out
    with psycopg.connect(dsn) as c:
        assert c.execute("SELECT value FROM maxsim.settings WHERE key = 'scorer'").fetchone() == (SOCKET,)


def test_replica_profile_has_a_streaming_replica_with_its_own_scorer(compose: dict[str, Any]) -> None:
    services = compose["services"]
    replica, scorer = services["db-replica"], services["scorer-replica"]
    assert replica["profiles"] == ["replica"] and scorer["profiles"] == ["replica"]
    assert "pg_basebackup -h db" in " ".join(replica["entrypoint"]) and " -R " in " ".join(replica["entrypoint"])
    assert "@db-replica:" in scorer["environment"]["DATABASE_URL"]
    cmd = scorer["command"]
    assert "@db:" in cmd[cmd.index("--report-dsn") + 1] and cmd[cmd.index("--socket") + 1] == SOCKET
    # each node's backends reach their own scorer at the replicated address: separate socket volumes
    assert any(str(v).startswith("scorer-socket-replica:/run/pgmaxsim") for v in replica["volumes"])
    assert any(str(v).startswith("scorer-socket-replica:/run/pgmaxsim") for v in scorer["volumes"])
    assert all(str(p).startswith("127.0.0.1:") for p in replica.get("ports", []))
    assert any("replication.sh" in str(v) for v in services["db"]["volumes"])
    assert (ROOT / "docker" / "replication.sh").is_file()
