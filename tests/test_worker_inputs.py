"""20 malformed inputs mixed into good rows: each ends in maxsim.failed with a clear error and the
step that failed; every good row is embedded. Text rows use the real MiniLM default; image rows
(bytea and file paths, including PDFs) a tiny random-init ColQwen2.5 saved with save_pretrained
and loaded through ``load_encoder``, as users load the real checkpoints."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import psycopg
import pytest
from worker_util import (
    create_index,
    failed,
    make_text_table,
    queued,
    run_once,
    tok_rows,
)

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def tiny_colqwen(tmp_path_factory: pytest.TempPathFactory) -> str:
    import encoders_tiny

    return str(encoders_tiny.build_colqwen2_5(tmp_path_factory.mktemp("tiny") / "colqwen2_5"))


def png(w: int, h: int, colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_malformed_inputs_fail_clearly_and_good_rows_are_embedded(
        dsn: str, conn: psycopg.Connection[Any], tiny_colqwen: str, tmp_path: Path) -> None:
    # --- text rows (MiniLM): 30 good, 3 bad ------------------------------------------------
    make_text_table(conn, "txt", 30)
    conn.execute("INSERT INTO txt (id, body) VALUES (101, NULL), (102, ''), (103, E'  \\n\\t ')")
    expect: dict[tuple[str, str], tuple[str, str]] = {
        ("txt", "101"): ("load", "NULL content: 'body' is NULL"),
        ("txt", "102"): ("load", "empty text"),
        ("txt", "103"): ("load", "empty text"),
    }
    # --- image bytes: 8 good (one 3000x2000, downscaled), 9 bad ------------------------------
    conn.execute("CREATE TABLE img (id bigint PRIMARY KEY, img bytea)")
    good_img = {i: png(40 + 10 * i, 30 + 5 * i, (20 * i, 90, 200 - 10 * i)) for i in range(1, 8)}
    good_img[8] = png(3000, 2000, (10, 20, 30))
    bad_img: dict[int, tuple[bytes | None, str]] = {
        201: (b"\x00\x01garbage that is no image at all", "is not in a recognised image format"),
        202: ((DATA / "truncated.jpg").read_bytes(), "could not be decoded: Truncated File Read"),
        203: (b"", "empty image"),
        204: ((DATA / "huge_header.png").read_bytes(), "decode limit"),
        205: (None, "NULL content: 'img' is NULL"),
        206: (b"%PDF-1.4\n% not really a PDF\n", "could not be opened"),
        207: ((DATA / "protected.pdf").read_bytes(), "password-protected"),
        208: (b"hello, I am a text file, not a picture\n", "is not in a recognised image format"),
        209: (b"GIF89a\x10\x00", "is not in a recognised image format"),
    }
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO img VALUES (%s, %s)",
                        [(k, v) for k, v in good_img.items()] + [(k, v) for k, (v, _) in bad_img.items()])
    expect.update({("img", str(k)): ("load", msg) for k, (_, msg) in bad_img.items()})
    # --- image paths: 6 good (one a 3-page PDF), 8 bad ------------------------------------------
    conn.execute("CREATE TABLE paths (id text PRIMARY KEY, path text)")
    good_paths = {}
    for i in range(5):
        f = tmp_path / f"page{i}.png"
        f.write_bytes(png(50, 70, (i * 40, 10, 10)))
        good_paths[f"g{i}"] = str(f)
    good_paths["pdf"] = str(DATA / "three_pages.pdf")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing sensible")
    (tmp_path / "a-directory").mkdir()
    bad_paths: dict[str, tuple[str | None, str]] = {
        "missing": (str(tmp_path / "no-such-file.png"), "does not exist"),
        "dir": (str(tmp_path / "a-directory"), "is a directory"),
        "empty": (str(tmp_path / "empty.png"), "is empty"),
        "url": ("https://example.com/page.png", "is a URL"),
        "blank": ("", "empty file path"),
        "garbage": (str(tmp_path / "garbage.png"), "is not in a recognised image format (from file"),
        "null": (None, "NULL content: 'path' is NULL"),
        "relative": ("missing/relative.png", "does not exist"),
    }
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO paths VALUES (%s, %s)",
                        list(good_paths.items()) + [(k, v) for k, (v, _) in bad_paths.items()])
    expect.update({("paths", k): ("load", msg) for k, (_, msg) in bad_paths.items()})
    assert len(expect) - 3 == 17 and len(expect) == 20

    ids = {"txt": create_index(conn, "txt", "txt"),
           "img": create_index(conn, "img", "img", text=None, image="img", model=tiny_colqwen, dim=128),
           "paths": create_index(conn, "paths", "paths", text=None, image="path", model=tiny_colqwen, dim=128)}
    stats = run_once(dsn, batch_size=16, max_attempts=3)
    assert stats.failed == 20

    for table, iid in ids.items():
        assert queued(conn, iid) == 0, table
    got = {(t, r): v for t, iid in ids.items() for r, v in failed(conn, iid).items()}
    assert set(got) == set(expect)
    for key, (step, needle) in expect.items():
        g_step, g_error, attempts = got[key]
        assert g_step == step and needle in g_error, (key, got[key])
        assert "\n" not in g_error and len(g_error) < 400
        # Errors in the stored content fail at once (a change of the row queues it again);
        # a file's errors are retried first (the file may appear or change without the row changing).
        from_file = key[0] == "paths" and key[1] not in ("url", "blank", "null")
        assert attempts == (3 if from_file else 1), (key, attempts)
    assert "no-such-file.png" in got[("paths", "missing")][1]

    assert set(tok_rows(conn, ids["txt"])) == {str(i) for i in range(1, 31)}
    img_rows = tok_rows(conn, ids["img"])
    assert set(img_rows) == {str(i) for i in good_img}
    path_rows = tok_rows(conn, ids["paths"])
    assert set(path_rows) == set(good_paths)
    from pgmaxsim.encoders import load_encoder, render_pdf

    pages = load_encoder(tiny_colqwen).encode_documents(render_pdf(DATA / "three_pages.pdf"))
    assert path_rows["pdf"][3] == sum(p.shape[0] for p in pages)  # a PDF's pages make one row's tokens
    assert all(r[2] == tiny_colqwen for r in img_rows.values())


def test_a_fixed_row_leaves_the_failed_table(dsn: str, conn: psycopg.Connection[Any]) -> None:
    make_text_table(conn, "fix", 3)
    conn.execute("UPDATE fix SET body = NULL WHERE id = 2")
    iid = create_index(conn, "fix", "fix")
    run_once(dsn)
    assert set(failed(conn, iid)) == {"2"}
    conn.execute("UPDATE fix SET body = 'now it has text about rivers' WHERE id = 2")
    run_once(dsn)
    assert failed(conn, iid) == {} and set(tok_rows(conn, iid)) == {"1", "2", "3"}
    # and a row whose new content is bad loses its old (stale) embeddings
    conn.execute("UPDATE fix SET body = '' WHERE id = 3")
    run_once(dsn)
    assert set(failed(conn, iid)) == {"3"} and set(tok_rows(conn, iid)) == {"1", "2"}
    # a failed row that is deleted leaves the failed table too
    conn.execute("DELETE FROM fix WHERE id = 3")
    run_once(dsn)
    assert failed(conn, iid) == {}


def test_image_root_resolves_and_confines_paths(dsn: str, conn: psycopg.Connection[Any], tiny_colqwen: str,
                                                tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    (root / "a.png").write_bytes(png(30, 30, (1, 2, 3)))
    (tmp_path / "secret.png").write_bytes(png(30, 30, (9, 9, 9)))
    conn.execute("CREATE TABLE rooted (id int PRIMARY KEY, path text)")
    conn.execute("INSERT INTO rooted VALUES (1, 'a.png'), (2, '../secret.png'), (3, %s)",
                 (str(tmp_path / "secret.png"),))
    iid = create_index(conn, "rooted", "rooted", text=None, image="path", model=tiny_colqwen, dim=128)
    run_once(dsn, image_root=str(root))
    assert set(tok_rows(conn, iid)) == {"1"}
    f = failed(conn, iid)
    assert set(f) == {"2", "3"} and all("outside the worker's image root" in e for _, e, _ in f.values())
