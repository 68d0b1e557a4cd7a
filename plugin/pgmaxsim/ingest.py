"""Files and folders of PDFs, images and text into a table (what ``pgmaxsim ingest`` runs).

The table is created when missing, with one row per *page*:

==========  ===========  =====================================================
column      type         meaning
==========  ===========  =====================================================
id          bigint       identity primary key
document    text         the file, relative to the folder given (or its name)
page        integer      1-based: PDF page, text chunk number, 1 for an image
kind        text         ``pdf``, ``image`` or ``text``
title       text         first heading/line of a text chunk, PDF title, file name
body        text         extracted text (PDF text layer, the text chunk); NULL if none
image       bytea        PNG of the rendered PDF page, or the image file's bytes
mime        text         media type of ``image``
ingested_at timestamptz  when the row was last written
==========  ===========  =====================================================

``(document, page)`` is unique: ingesting the same files again updates rows
whose content changed, leaves the others alone (so the worker re-encodes
nothing), and removes pages or chunks a document no longer has.

Text files are cut into chunks at blank lines: each paragraph starts a chunk,
except that a short paragraph (a heading) joins the one after it, and a
paragraph longer than ``--chunk-chars`` is cut at sentence ends.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgmaxsim.errors import PgmaxsimError

PDF_EXT = {".pdf"}
IMAGE_EXT = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
             ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff", ".webp": "image/webp"}
TEXT_EXT = {".txt", ".md", ".markdown", ".rst", ".text"}
DEFAULT_TABLE = "documents"
DEFAULT_CHUNK_CHARS = 1500
MIN_CHUNK_CHARS = 200  # a paragraph shorter than this (a heading) joins the next one
DEFAULT_DPI = 144

COLUMNS = ("document", "page", "kind", "title", "body", "image", "mime")


# ---------------------------------------------------------------- files → rows

@dataclass
class Row:
    """One row of the ingest table (a PDF page, a text chunk or an image)."""

    document: str
    page: int
    kind: str
    title: str | None
    body: str | None
    image: bytes | None
    mime: str | None

    def values(self) -> tuple[Any, ...]:
        return (self.document, self.page, self.kind, self.title, self.body, self.image, self.mime)


def kind_of(path: Path) -> str | None:
    ext = path.suffix.lower()
    if ext in PDF_EXT:
        return "pdf"
    if ext in IMAGE_EXT:
        return "image"
    if ext in TEXT_EXT:
        return "text"
    return None


def collect_files(paths: Sequence[str]) -> tuple[list[tuple[Path, str]], int]:
    """``(files, skipped)``: each file with its document name; ``skipped`` counts unsupported files in folders.

    A missing path, or an unsupported file named explicitly, is a PgmaxsimError.
    """
    if not paths:
        raise PgmaxsimError("no files or folders given")
    files: list[tuple[Path, str]] = []
    skipped = 0
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            base = p.resolve().parent
            for f in sorted(x for x in p.resolve().rglob("*") if x.is_file()):
                if any(part.startswith(".") for part in f.relative_to(base).parts):
                    continue  # hidden files and folders
                if kind_of(f) is None:
                    skipped += 1
                    continue
                files.append((f, f.relative_to(base).as_posix()))
        elif p.is_file():
            if kind_of(p) is None:
                raise PgmaxsimError(
                    f"{raw}: unsupported file type {p.suffix or '(none)'!r};"
                    " supported: .pdf, images (.png .jpg …), text (.txt .md .rst)"
                )
            files.append((p.resolve(), p.name))
        elif p.exists():
            raise PgmaxsimError(f"{raw}: not a regular file or folder")
        else:
            raise PgmaxsimError(f"{raw}: no such file or folder")
    if not files:
        raise PgmaxsimError(f"no supported files (.pdf, images, text) under {', '.join(paths)}")
    return files, skipped


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def chunk_text(text: str, max_chars: int = DEFAULT_CHUNK_CHARS, min_chars: int = MIN_CHUNK_CHARS) -> list[str]:
    """Cut ``text`` into passages at blank lines (see module doc); ``max_chars <= 0``: one chunk.

    >>> chunk_text("Title\\n\\nFirst paragraph is here.\\n\\nSecond one.", min_chars=10)
    ['Title\\n\\nFirst paragraph is here.', 'Second one.']
    """
    text = text.replace("\r\n", "\n").strip()
    if not text:
        return []
    if max_chars <= 0:
        return [text]
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    pieces: list[str] = []
    for p in paragraphs:
        if len(p) <= max_chars:
            pieces.append(p)
            continue
        current = ""
        for sentence in _SENTENCE_END.split(p):
            while len(sentence) > max_chars:  # no sentence end for a long way: hard cut
                if current:
                    pieces.append(current)
                    current = ""
                pieces.append(sentence[:max_chars])
                sentence = sentence[max_chars:]
            if current and len(current) + 1 + len(sentence) > max_chars:
                pieces.append(current)
                current = sentence
            else:
                current = f"{current} {sentence}".strip()
        if current:
            pieces.append(current)
    chunks: list[str] = []
    pending = ""
    for piece in pieces:
        if pending:
            piece = f"{pending}\n\n{piece}"
            pending = ""
        if len(piece) < min_chars:
            pending = piece
        else:
            chunks.append(piece)
    if pending:
        if chunks and len(chunks[-1]) + len(pending) + 2 <= max_chars:
            chunks[-1] = f"{chunks[-1]}\n\n{pending}"
        else:
            chunks.append(pending)
    return chunks


def title_of(chunk: str, fallback: str) -> str:
    """The first line of a chunk when it reads like a heading, else ``fallback``."""
    first = chunk.strip().splitlines()[0].strip().lstrip("#").strip() if chunk.strip() else ""
    if first and len(first) <= 100 and not first.endswith((".", ",", ";")):
        return first
    return fallback


def read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def rows_for_file(path: Path, document: str, *, dpi: int = DEFAULT_DPI, chunk_chars: int = DEFAULT_CHUNK_CHARS,
                  max_pixels: int | None = None) -> list[Row]:
    """The rows of one file; PgmaxsimError (naming the file) when it cannot be read."""
    kind = kind_of(path)
    try:
        if kind == "text":
            chunks = chunk_text(read_text(path), chunk_chars)
            if not chunks:
                raise PgmaxsimError("the file is empty")
            return [Row(document, i, "text", title_of(c, f"{path.name} #{i}"), c, None, None)
                    for i, c in enumerate(chunks, start=1)]
        if kind == "image":
            from pgmaxsim.encoders.inputs import load_image

            data = path.read_bytes()
            load_image(data)  # refuse corrupt or oversized images now, not in the worker
            return [Row(document, 1, "image", path.name, None, data, IMAGE_EXT[path.suffix.lower()])]
        if kind == "pdf":
            return _pdf_rows(path, document, dpi, max_pixels)
    except PgmaxsimError as e:
        msg = str(e)
        raise PgmaxsimError(msg if str(path) in msg or repr(str(path)) in msg else f"{document}: {msg}") from None
    except OSError as e:
        raise PgmaxsimError(f"{document}: cannot read: {e.strerror or e}") from None
    raise PgmaxsimError(f"{document}: unsupported file type")


def _pdf_rows(path: Path, document: str, dpi: int, max_pixels: int | None) -> list[Row]:
    from pgmaxsim.encoders.inputs import DEFAULT_MAX_PIXELS, render_pdf

    pages = render_pdf(str(path), dpi=dpi, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    title = _pdf_title(path) or path.stem
    rows = []
    for page in pages:
        buf = io.BytesIO()
        page.image.save(buf, format="PNG", optimize=True)
        body = page.text.strip() or None
        rows.append(Row(document, page.page_number, "pdf", f"{title} p.{page.page_number}", body,
                        buf.getvalue(), "image/png"))
    return rows


def _pdf_title(path: Path) -> str | None:
    try:
        import pypdfium2

        doc = pypdfium2.PdfDocument(str(path))
        try:
            title = (doc.get_metadata_dict().get("Title") or "").strip()
        finally:
            doc.close()
        return title or None
    except Exception:
        return None


# ---------------------------------------------------------------- the table

def parse_table_name(name: str) -> sql.Identifier:
    """``"pages"`` or ``"schema.pages"`` → an Identifier (names are taken literally, no quoting games)."""
    name = name.strip()
    if not name:
        raise PgmaxsimError("table name is empty")
    schema, dot, table = name.partition(".")
    if dot and schema and table:
        return sql.Identifier(schema, table)
    return sql.Identifier(name)


def ensure_table(conn: psycopg.Connection[Any], table: str) -> bool:
    """Create the ingest table if missing; returns True when created.

    An existing table must have the ingest columns and a unique ``(document, page)``.
    """
    ident = parse_table_name(table)
    exists = conn.execute("SELECT to_regclass(%s)", (ident.as_string(conn),)).fetchone()
    if exists and exists[0] is not None:
        cols = {r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (ident.as_string(conn),))}
        missing = [c for c in ("id", *COLUMNS) if c not in cols]
        if missing:
            raise PgmaxsimError(
                f"table {table!r} exists but is not an ingest table (no column {', '.join(missing)});"
                " choose another --table"
            )
        return False
    conn.execute(sql.SQL("""
        CREATE TABLE {t} (
            id          bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            document    text NOT NULL,
            page        integer NOT NULL,
            kind        text NOT NULL CHECK (kind IN ('pdf', 'image', 'text')),
            title       text,
            body        text,
            image       bytea,
            mime        text,
            ingested_at timestamptz NOT NULL DEFAULT now(),
            UNIQUE (document, page)
        )""").format(t=ident))
    conn.execute(sql.SQL("COMMENT ON TABLE {t} IS {c}").format(
        t=ident, c=sql.Literal("pgmaxsim ingest: one row per PDF page, text chunk or image")))
    return True


@dataclass
class WriteCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0

    def add(self, other: WriteCounts) -> None:
        self.inserted += other.inserted
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.removed += other.removed


def write_document(conn: psycopg.Connection[Any], table: str, document: str, rows: list[Row]) -> WriteCounts:
    """Upsert one document's rows and drop its pages beyond the last, in one transaction."""
    ident = parse_table_name(table)
    upsert = sql.SQL("""
        INSERT INTO {t} AS t (document, page, kind, title, body, image, mime)
        VALUES (%s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (document, page) DO UPDATE
           SET kind = EXCLUDED.kind, title = EXCLUDED.title, body = EXCLUDED.body,
               image = EXCLUDED.image, mime = EXCLUDED.mime, ingested_at = now()
         WHERE (t.kind, t.title, t.body, t.image, t.mime)
               IS DISTINCT FROM (EXCLUDED.kind, EXCLUDED.title, EXCLUDED.body, EXCLUDED.image, EXCLUDED.mime)
        RETURNING (xmax = 0)""").format(t=ident)
    counts = WriteCounts()
    with conn.transaction():
        with conn.cursor() as cur:
            for row in rows:
                cur.execute(upsert, row.values())
                got = cur.fetchone()
                if got is None:
                    counts.unchanged += 1
                elif got[0]:
                    counts.inserted += 1
                else:
                    counts.updated += 1
            cur.execute(sql.SQL("DELETE FROM {t} WHERE document = %s AND page > %s").format(t=ident),
                        (document, len(rows)))
            counts.removed = cur.rowcount
    return counts


@dataclass
class IngestReport:
    files: int = 0
    pages: int = 0
    skipped: int = 0
    counts: WriteCounts = field(default_factory=WriteCounts)
    errors: list[str] = field(default_factory=list)
    created: bool = False


def ingest(conn: psycopg.Connection[Any], table: str, paths: Sequence[str], *, dpi: int = DEFAULT_DPI,
           chunk_chars: int = DEFAULT_CHUNK_CHARS, progress: Callable[[int], Any] | None = None) -> IngestReport:
    """Read every file under ``paths`` into ``table`` (see module doc). A bad file is reported, not fatal.

    ``progress``: called with the number of files, returns a tqdm-like bar (``update``,
    ``set_postfix``, ``close``) or None.
    """
    files, skipped = collect_files(paths)
    report = IngestReport(skipped=skipped)
    report.created = ensure_table(conn, table)
    bar = progress(len(files)) if progress is not None else None
    try:
        for path, document in files:
            try:
                rows = rows_for_file(path, document, dpi=dpi, chunk_chars=chunk_chars)
            except PgmaxsimError as e:
                report.errors.append(str(e))
            else:
                report.counts.add(write_document(conn, table, document, rows))
                report.files += 1
                report.pages += len(rows)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(rows=report.pages)
    finally:
        if bar is not None:
            bar.close()
    return report
