"""README.md's code blocks run as written, in order, on both servers (PostgreSQL 15 with
plpython3u, and the embedded PostgreSQL 18 without it), as the role the README grants usage to
(`app`, not a superuser), the way pgvector-python and psycopg keep their docs honest.

Every block of the README is listed in PLAN by its language and first line: a new block fails this
test until it is run here (or its reason not to be is written down). Where a block uses a name it
does not define (`tokens_1`, `session`, `query_tokens`), the test defines that name and nothing more.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parent.parent
APP = "app"  # the role of the README's Security section


@dataclass
class Block:
    lang: str
    text: str
    line: int

    @property
    def key(self) -> tuple[str, str]:
        return self.lang, self.text.strip().splitlines()[0].strip()


def readme_blocks() -> list[Block]:
    text = (ROOT / "README.md").read_text()
    return [Block(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1)
            for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.MULTILINE | re.DOTALL)]


# How each block runs: "app" (as the granted role), "owner" (as the schema owner: what the README
# itself says needs one), "defer" (after the block that creates what it uses), or a reason not to run.
PLAN: dict[tuple[str, str], str] = {
    # the teaser at the top: the same query "SQL in ten lines" builds up to
    ("sql", "SELECT d.title, s.score"): "defer",
    ("sh", "bash scripts/quickstart.sh    # the quickstart: offline demo on an embedded PostgreSQL (no root, no apt)"):
        "not run: the quickstart and the test suite themselves (CI runs both)",
    ("", "your table ──trigger──▶ maxsim.queue ──▶ pgmaxsim worker (GPU/CPU encoder) ──binary COPY──▶ maxsim.tok_<id>"):
        "not run: a diagram",
    ("sql", "CREATE TABLE docs (id bigint PRIMARY KEY, title text, body text, lang text DEFAULT 'en');"): "app",
    # line by line, all as app: the worker runs as a role that manages the index (README "Security")
    ("sh", "pgmaxsim worker --once                                  # embed the queued rows, then exit"): "app",
    ("sql", "SELECT d.title, s.score                                    -- top 10 by MaxSim"): "app",
    ("python", "import os, psycopg, pgmaxsim"): "app",
    ("sql", "SELECT e.query_token, e.doc_token, round(e.score::numeric, 3) AS score,"): "app",
    ("python", "import os, psycopg"): "app",
    ("python", "from sqlalchemy import select"): "app",
    ("", "pgmaxsim migrate [--downgrade base]          install / upgrade / remove the maxsim schema"):
        "not run: the command synopsis (each command has its own tests)",
    ("sh", "pgmaxsim psql                                  # psql on the embedded server (its own psql 18)"):
        "embedded",
    ("sh", "pip install 'pgmaxsim[web]'                    # Starlette, Jinja2, uvicorn; the page's assets are in the"
           " package"):
        "not run: a pip install and servers that run until stopped (tests/test_web.py runs pgmaxsim serve in a browser)",
    ("sh", "pip install 'pgmaxsim[eval]'       # pytrec_eval-terrier (trec_eval's code) and matplotlib"):
        "not run: a pip install and the reader's own judgement files (`pgmaxsim eval`: tests/test_eval.py)",
    ("", "setting            ndcg@5  ndcg@10  recall@5  recall@10  mrr@10  top1=exact  recall@10 vs exact  "
         "score-mass@10  p50 ms  p95 ms"): "not run: printed output",
    ("sql", "-- as the role that ran `pgmaxsim migrate` (the schema owner) or another pgmaxsim admin:"): "owner",
    ("sh", "pgmaxsim eval --index pages --queries q.jsonl --qrels q.tsv --tokens q.npz --candidates 8,16,32,64,128,256"
           " --plot docs/eval-tuning.png --json"):
        "not run: the command bench/eval_tuning.py runs on the 10,000 pages it builds (~25 min)",
}


@pytest.fixture(params=["full", "embedded"])
def servers(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(owner DSN, app DSN) of a fresh migrated database where `app` was granted usage."""
    owner = request.getfixturevalue("dsn" if request.param == "full" else "embedded_dsn")
    with psycopg.connect(owner, autocommit=True) as c:
        for role, login in ((APP, "LOGIN"), ("ops", "NOLOGIN")):
            if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                c.execute(f"CREATE ROLE {role} {login} NOSUPERUSER")
        c.execute(f"GRANT CREATE ON SCHEMA public TO {APP}")  # PostgreSQL 15+: public is not writable by all
        c.execute("SELECT maxsim.grant_usage(%s)", (APP,))
        assert not c.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (APP,)).fetchone()[0]
    return owner, make_conninfo(owner, user=APP)


def result_sets(conn: psycopg.Connection[Any], sql: str) -> list[list[tuple[Any, ...]]]:
    cur = conn.execute(sql)  # no parameters: the simple protocol, several statements in one go
    out = []
    while True:
        out.append(cur.fetchall() if cur.description is not None else [])
        if not cur.nextset():
            return out


def run_sh(block: Block, url: str | None, extra_env: dict[str, str] | None = None) -> list[str]:
    """Each command line of ``block`` in bash with DATABASE_URL ``url`` (None: unset, the embedded
    server). Every shell line runs as the granted role: none of them needs the schema owner."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.update(extra_env or {})
    outputs = []
    for line in block.text.splitlines():
        command = line.split("  #")[0].strip()
        if not command:
            continue
        if url is None:
            env.pop("DATABASE_URL", None)
        else:
            env["DATABASE_URL"] = url
        r = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=300,
                           stdin=subprocess.DEVNULL, check=False)
        assert r.returncode == 0, f"README line {block.line}: {command}\n{r.stdout}\n{r.stderr}"
        outputs.append(r.stdout + r.stderr)
    return outputs


def pages_fixture(app: str) -> np.ndarray:
    """What the SQLAlchemy block assumes: table and index `pages` (128-dim tokens) with a few rows."""
    from pgmaxsim.db.adapters import Tokens, register_tokens

    rng = np.random.default_rng(7)
    with psycopg.connect(app, autocommit=True) as c:
        register_tokens(c)
        c.execute("CREATE TABLE pages (id int PRIMARY KEY, tokens halfvec(128)[])")
        c.execute("SELECT maxsim.create_index('pages', 'pages', 'id', dim => 128)")
        for i in range(1, 4):
            t = Tokens(rng.standard_normal((4, 128)))
            c.execute("INSERT INTO pages VALUES (%s, %s)", (i, t))
            c.execute("SELECT maxsim.upsert('pages', %s, %s)", (i, t))
    return rng.standard_normal((3, 128)).astype(np.float32)


def test_readme_blocks_run_as_written(servers: tuple[str, str], capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                      request: pytest.FixtureRequest) -> None:
    owner, app = servers
    embedded = "embedded" in request.node.callspec.id
    blocks = readme_blocks()
    unknown = [b.key for b in blocks if b.key not in PLAN]
    assert not unknown, f"README blocks this test does not know (add them to PLAN): {unknown}"
    monkeypatch.setenv("DATABASE_URL", app)
    deferred: list[Block] = []
    ran = []
    with psycopg.connect(app, autocommit=True) as conn:
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        for block in blocks:
            how = PLAN[block.key]
            if how == "defer":
                deferred.append(block)
                continue
            if how.startswith("not run"):
                continue
            first = block.key[1]
            if block.lang == "sql" and how == "owner":
                with psycopg.connect(owner, autocommit=True) as oc:
                    result_sets(oc, block.text)
                # the Security block's last line revoked app's usage: app may no longer search
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute("SELECT * FROM maxsim.search('docs', maxsim.encode_query('docs', 'tides'))")
            elif block.lang == "sql":
                sets = result_sets(conn, block.text)
                if first.startswith("CREATE TABLE docs"):
                    assert any("default text model sentence-transformers/all-MiniLM-L6-v2" in n for n in notices)
                if first.startswith("SELECT e.query_token"):   # explain cuts the query's words out of row 2
                    assert [r[3] for r in sets[0]] == ["Revenue", "by", "region"], sets
                if first.startswith("SELECT d.title"):
                    assert sets[0][0][0] == "Annual report", sets  # 'revenue by region'
                    assert [r[0] for r in sets[1]] == [1], sets   # only row 1 mentions the moon
                    assert not [n for n in notices if "queued" in n], notices  # the worker embedded them all
                    for later in deferred:  # the teaser, now that docs exists
                        assert result_sets(conn, later.text)[0][0][0] == "Annual report"
                        ran.append(later.key)
                    deferred.clear()
            elif block.lang == "sh" and how == "embedded":
                if not embedded:
                    continue
                # the user's own embedded server: its data directory here, stopped by `dsn --stop`
                out = run_sh(block, None, {"PGMAXSIM_DATA_DIR": str(tmp_path / "embedded")})
                out = "\n".join(out)
                assert "Traceback" not in out, out
            elif block.lang == "sh":
                out = run_sh(block, app)
                assert "Annual report" in out[1].splitlines()[2], out  # rank 1 of 'revenue by region'
            elif block.lang == "python":
                # a real module, as a script's __main__ is (SQLAlchemy resolves Mapped[...] through it)
                module = types.ModuleType(f"readme_line_{block.line}")
                monkeypatch.setitem(sys.modules, module.__name__, module)
                namespace: dict[str, Any] = module.__dict__
                if first == "import os, psycopg":        # explain from Python
                    capsys.readouterr()
                    exec(compile(block.text, f"README.md:{block.line}", "exec"), namespace)  # noqa: S102
                    printed = capsys.readouterr().out.splitlines()
                    assert "('Revenue', 0." in printed[1] and "('region', 0." in printed[1], printed
                elif first == "import os, psycopg, pgmaxsim":
                    rng = np.random.default_rng(3)  # (n_i, d) float arrays for the index's 384 dims
                    namespace.update(tokens_1=rng.standard_normal((5, 384)), tokens_2=rng.standard_normal((7, 384)))
                    capsys.readouterr()
                    exec(compile(block.text, f"README.md:{block.line}", "exec"), namespace)  # noqa: S102
                    printed = capsys.readouterr().out.splitlines()
                    assert len(printed) == 2 and all(line.split()[0] in ("1", "2") for line in printed), printed
                else:
                    from sqlalchemy import create_engine
                    from sqlalchemy.orm import Session

                    query_tokens = pages_fixture(app)
                    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(app))
                    with Session(engine) as session:
                        namespace.update(session=session, query_tokens=query_tokens)
                        exec(compile(block.text, f"README.md:{block.line}", "exec"), namespace)  # noqa: S102
                    rows = namespace["rows"]
                    assert len(rows) == 3 and rows[0][1] >= rows[1][1] >= rows[2][1], rows
                    assert rows[0][0].tokens.shape[1] == 128
                    engine.dispose()
            ran.append(block.key)
    assert not deferred, "a deferred block never ran"
    assert len(ran) >= 7 + (1 if embedded else 0), ran
