"""The ``pgmaxsim`` command end to end against a real server, and its answers to bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
import psycopg
import pytest

from pgmaxsim.cli import main
from pgmaxsim.demo import corpus_dir

PDF = corpus_dir() / "northwind-annual-report-2025.pdf"
PASSAGES = corpus_dir() / "field-notes.txt"


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``pgmaxsim ARGV`` in this process; returns (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli_proc(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``pgmaxsim ARGV`` as its own process (real exit code and stderr)."""
    return subprocess.run([sys.executable, "-m", "pgmaxsim.cli", *argv], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_end_to_end_ingest_index_worker_search_status(dsn: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "volcano.md").write_text("# Lava lakes\n\nA lava lake is molten basalt pooled in a volcanic crater, "
                                      "slowly cooling at its crust while convection keeps it liquid below.\n")
    (notes / "ignored.csv").write_text("a,b\n1,2\n")

    code, out, _ = cli(capsys, "--dsn", dsn, "ingest", str(corpus_dir()), str(notes), "--table", "docs")
    assert code == 0
    assert "table docs (created): 3 file(s), 42 row(s): 42 new" in out and "1 unsupported file(s) skipped" in out
    with psycopg.connect(dsn) as conn:
        pages = conn.execute("SELECT page, title, body, image, mime FROM docs WHERE kind = 'pdf'"
                             " ORDER BY page").fetchall()
        assert [p[0] for p in pages] == [1, 2, 3, 4, 5]
        assert all(p[3][:8] == b"\x89PNG\r\n\x1a\n" and p[4] == "image/png" for p in pages)
        assert "Revenue by region" in pages[1][2] and pages[1][1].endswith("p.2")
        docs = dict(conn.execute("SELECT document, count(*) FROM docs GROUP BY document").fetchall())
        assert docs == {"corpus/field-notes.txt": 36, "corpus/northwind-annual-report-2025.pdf": 5,
                        "notes/volcano.md": 1}
        title = conn.execute("SELECT title FROM docs WHERE document = 'notes/volcano.md'").fetchone()
        assert title == ("Lava lakes",)

    # Ingesting again changes nothing (so the worker would re-encode nothing).
    code, out, _ = cli(capsys, "--dsn", dsn, "ingest", str(corpus_dir()), "--table", "docs")
    assert code == 0 and "0 new, 0 changed, 41 unchanged" in out

    code, out, _ = cli(capsys, "--dsn", dsn, "index", "create", "docs", "--table", "docs", "--text-column", "body")
    assert code == 0 and "index docs created" in out and "42 row(s) queued" in out

    code, out, _ = cli(capsys, "--dsn", dsn, "worker", "--once", "--no-progress", "-q")
    assert code == 0

    code, out, _ = cli(capsys, "--dsn", dsn, "search", "what makes the sea rise and fall twice a day",
                       "--index", "docs", "-k", "3")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split() == ["rank", "id", "score", "title", "/", "page", "text"]
    assert "What causes the tides" in lines[2] and lines[2].split()[0] == "1"
    assert len(lines) == 2 + 3

    code, out, _ = cli(capsys, "--dsn", dsn, "search", "revenue by region", "--index", "docs", "-k", "2",
                       "--filter", "kind = 'pdf'")
    assert code == 0 and "northwind-annual-report-2025.pdf p.2" in out.splitlines()[2]
    assert "field-notes" not in out

    code, out, err = cli(capsys, "--dsn", dsn, "search", "lava", "--index", "docs", "--exact", "--json", "-k", "1")
    assert code == 0 and '"title": "Lava lakes"' in out and '"rank": 1' in out, out + err

    code, out, _ = cli(capsys, "--dsn", dsn, "status")
    assert code == 0 and "docs" in out and "42" in out

    code, out, _ = cli(capsys, "--dsn", dsn, "index", "list")
    row = next(line for line in out.splitlines() if line.startswith("docs"))
    assert row.split()[1:] == ["docs", "sentence-transformers/all-MiniLM-L6-v2", "384", "codebook", "42", "0", "0"]

    code, out, _ = cli(capsys, "--dsn", dsn, "index", "show", "docs")
    assert code == 0 and "text column   body" in out and "rows          42" in out and "per row" in out

    code, out, _ = cli(capsys, "--dsn", dsn, "index", "reindex", "docs")
    assert code == 0 and "42 row(s) queued" in out
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM maxsim.queue").fetchone() == (42,)

    code, out, _ = cli(capsys, "--dsn", dsn, "index", "drop", "docs", "--yes")
    assert code == 0 and "dropped" in out
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM maxsim.indexes").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM docs").fetchone() == (42,)  # the source table stays


def test_ingest_creates_index_and_embeds(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--dsn", dsn, "ingest", str(PDF), "--table", "reports", "--index", "reports",
                       "--embed")
    assert code == 0, out
    assert "index reports created over reports" in out and "worker: 5 row(s) embedded" in out
    code, out, _ = cli(capsys, "--dsn", dsn, "search", "injuries and safety at work", "--index", "reports", "-k", "1")
    assert "northwind-annual-report-2025.pdf p.4" in out


def test_ingest_images_and_text_chunks(dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = Path(__file__).parent / "data"
    long = tmp_path / "long.txt"
    long.write_text("\n\n".join(f"Paragraph {i}. " + "words " * 60 for i in range(5)))
    code, out, _ = cli(capsys, "--dsn", dsn, "ingest", str(data / "grey.png"), str(long), "--table", "mixed",
                       "--chunk-chars", "400")
    assert code == 0
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT kind, page, body IS NULL, image IS NULL, mime FROM mixed"
                            " ORDER BY kind, page").fetchall()
        img = conn.execute("SELECT image FROM mixed WHERE kind = 'image'").fetchone()
    assert rows[0] == ("image", 1, True, False, "image/png")
    assert bytes(img[0]) == (data / "grey.png").read_bytes()
    assert [r[:4] for r in rows[1:]] == [("text", i, False, True) for i in range(1, 6)]


def test_ingest_reports_bad_files_and_keeps_the_good(dsn: str, tmp_path: Path) -> None:
    (tmp_path / "good.txt").write_text("Tide tables\n\nHigh water at noon and low water six hours later.")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.7 this is not really a pdf")
    (tmp_path / "empty.md").write_text("   \n")
    r = cli_proc("--dsn", dsn, "ingest", str(tmp_path), "--table", "t")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    errors = r.stderr.splitlines()
    assert len(errors) == 2 and all(e.startswith("pgmaxsim: ") for e in errors)
    assert any("broken.pdf" in e and "could not be opened" in e for e in errors)
    assert any("empty.md" in e and "empty" in e for e in errors)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT document, title FROM t").fetchall() == [(f"{tmp_path.name}/good.txt",
                                                                                "Tide tables")]


BAD_INPUT = [
    (["search", "tides", "--index", "nope"], "index 'nope' does not exist"),
    (["search", "tides"], "which index? pass --index NAME"),
    (["ingest", "/no/such/file.pdf"], "/no/such/file.pdf: no such file or folder"),
    (["index", "create", "x", "--table", "t", "--text-column", "body", "--model", "nonsense/model-9"],
     "unknown model 'nonsense/model-9'"),
    (["index", "show", "nope"], "index 'nope' does not exist"),
    (["index", "drop", "nope", "--yes"], "index 'nope' does not exist"),
    (["index", "create", "x", "--table", "no_such_table", "--text-column", "body"],
     "table 'no_such_table' does not exist"),
    (["search", "", "--index", "docs"], "the query is empty"),
    (["search", "tides", "--index", "app", "-k", "3"], "index 'app' has no model"),
]


@pytest.mark.parametrize("argv,message", BAD_INPUT, ids=[" ".join(a[:2]) + f" #{i}" for i, (a, _) in
                                                         enumerate(BAD_INPUT)])
def test_bad_input_is_one_clear_line(dsn: str, argv: list[str], message: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, body text)")
        conn.execute("SELECT maxsim.create_index('app', 't', 'id', dim => 4)")
    r = cli_proc("--dsn", dsn, *argv)
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("pgmaxsim: "), r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_bad_dsn_is_one_clear_line() -> None:
    r = cli_proc("--dsn", "postgresql://nobody@127.0.0.1:1/nothing", "index", "list")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("pgmaxsim: cannot connect to postgresql://nobody@127.0.0.1:1/nothing")
    assert r.stderr.count("\n") == 1
    r = cli_proc("search", "x", "--index", "y", env={"DATABASE_URL": "postgresql://u:secret@127.0.0.1:1/db"})
    assert r.returncode == 1 and "secret" not in r.stderr and "***" in r.stderr


def test_help_has_examples() -> None:
    for cmd in (["--help"], ["index", "--help"], ["ingest", "--help"], ["search", "--help"], ["bench", "--help"],
                ["demo", "--help"]):
        r = cli_proc(*cmd)
        assert r.returncode == 0 and "examples:" in r.stdout, cmd


def test_bench_builtin_runs_and_cleans_up(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--dsn", dsn, "bench", "--pages", "60", "--queries", "4", "--min-tokens", "10",
                       "--max-tokens", "30", "--dim", "32")
    assert code == 0
    assert "maxsim.search (exact: every row)" in out and "top-1 agreement" in out
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM maxsim.indexes").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'pgmaxsim_bench%'").fetchone() == (0,)
