"""The quickstart as a new user runs it: ``pgmaxsim demo`` on the embedded default server, offline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts the embedded PostgreSQL

def test_demo_runs_to_completion_on_the_embedded_default(tmp_path: Path) -> None:
    env = {**os.environ, "PGMAXSIM_DATA_DIR": str(tmp_path / "pgdata"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    env.pop("DATABASE_URL", None)
    r = subprocess.run([sys.executable, "-m", "pgmaxsim.cli", "demo"], capture_output=True, text=True,
                       timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "Traceback" not in out + r.stderr
    for step in range(1, 7):
        assert f"[{step}/6]" in out
    assert "embedded PostgreSQL 18" in out
    assert "36 text passages and 5 PDF pages" in out
    assert re.search(r"worker: embedded 41 rows", out)

    def top(query: str) -> str:
        block = out.split(f"query: {query!r}")[1]
        return block.splitlines()[3]  # header, rule, then rank 1

    assert "How honeybees tell each other" in top("how do bees tell each other where the flowers are")
    assert "northwind-annual-report-2025.pdf p.2" in top("revenue by region")
    assert "hypothermia" in top("staying warm when a hike turns cold and wet").lower()
    assert "northwind-annual-report-2025.pdf p.4" in top("how many people were injured at work")
    # the SQL to paste next, and proof that it answers on this server
    assert "maxsim.search('demo', maxsim.encode_query('demo', 'solar energy for the greenhouses'), 5)" in out
    answer = out.split("here the first statement gives:")[1].splitlines()[1]
    assert "northwind" in answer.lower() and "p.3" in answer
    # a second run replaces the demo's table and index instead of failing
    r2 = subprocess.run([sys.executable, "-m", "pgmaxsim.cli", "demo", "--query", "git branches", "-k", "1"],
                        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert "Working with branches in git" in r2.stdout
