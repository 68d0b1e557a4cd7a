"""Read the source rows of a claimed batch and turn each into encoder inputs.

Each row becomes a :class:`Loaded`: the documents to encode (one text, one
image, or the pages of a PDF), a content hash, or an error saying what is
wrong with that row. A bad row never stops the others.

What is read (per index, from ``maxsim.indexes``):

- ``image_column`` when set and not NULL: ``bytea`` holds the image (or PDF)
  bytes; a text column holds a local file path (relative paths resolve
  against the worker's ``image_root`` (``pgmaxsim worker --image-root DIR``),
  which then also confines them: a path that resolves outside it is refused).
  URLs are refused: a worker never fetches from the network.
- else ``text_column``: the text.
- both NULL, or blank text: an error (``NULL content`` / ``empty text``).

Errors are *permanent* when they are a property of the stored content (NULL,
blank text, undecodable bytes): retrying cannot help, and a change of the row
queues it again anyway. Errors reading a file are transient (the file may
appear or be fixed without the row changing) and are retried with backoff.

The content hash covers the model, its revision and the exact bytes (for a
path: the path *and* the file's bytes), so an unchanged row under the same
model is not encoded again.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pgmaxsim.errors import PgmaxsimError
from pgmaxsim.registry import IndexSpec

PDF_MAGIC = b"%PDF-"
# A row whose PDF has more pages than this is refused (one row = one document).
DEFAULT_MAX_PDF_PAGES = 64


@dataclass
class Loaded:
    """One source row ready to encode, or the reason it is not.

    ``items``: encoder inputs (``str``, PIL images or ``PdfPage``); their token
    matrices are concatenated into the row's embedding.
    """

    row_id: str
    key: Any = None
    items: list[Any] = field(default_factory=list)
    content_hash: bytes | None = None
    cost: int = 0
    error: str | None = None
    permanent: bool = False
    missing: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.missing


def content_hash(spec: IndexSpec, kind: str, payload: bytes, extra: bytes = b"") -> bytes:
    """sha256 over model, revision, content kind and the exact content bytes."""
    h = hashlib.sha256()
    for part in (b"pgmaxsim/1", spec.model.encode(), (spec.model_revision or "").encode(), kind.encode(), extra):
        h.update(part)
        h.update(b"\0")
    h.update(payload)
    return h.digest()


def fetch_rows(conn: psycopg.Connection[Any], spec: IndexSpec, row_ids: list[str]) -> dict[str, tuple[Any, ...]]:
    """``row_id -> (key, text, image)`` for the rows that still exist in the source."""
    text_col = sql.Identifier(spec.text_column) if spec.text_column else sql.NULL
    image_col = sql.Identifier(spec.image_column) if spec.image_column else sql.NULL
    query = sql.SQL(
        "SELECT s.{id}, s.{id}::text, {txt}, {img} FROM {src} s WHERE s.{id} = ANY(CAST(%s AS {typ}[]))"
    ).format(
        id=sql.Identifier(spec.id_column),
        txt=sql.SQL("s.") + text_col if spec.text_column else text_col,
        img=sql.SQL("s.") + image_col if spec.image_column else image_col,
        src=spec.source_ident(),
        typ=spec.id_type_sql(),
    )
    rows = conn.execute(query, (row_ids,)).fetchall()
    return {r[1]: (r[0], r[2], r[3]) for r in rows}


def load_rows(
    conn: psycopg.Connection[Any], spec: IndexSpec, row_ids: list[str], *, max_pixels: int | None = None,
    image_root: str | None = None,
) -> list[Loaded]:
    """Fetch and prepare the rows ``row_ids`` (in that order); never raises for a bad row."""
    found = fetch_rows(conn, spec, row_ids)
    out: list[Loaded] = []
    for rid in row_ids:
        if rid not in found:
            out.append(Loaded(rid, missing=True))
            continue
        key, text, image = found[rid]
        out.append(prepare(spec, rid, key, text, image, max_pixels=max_pixels, image_root=image_root))
    return out


def prepare(
    spec: IndexSpec, row_id: str, key: Any, text: Any, image: Any, *, max_pixels: int | None = None,
    image_root: str | None = None,
) -> Loaded:
    """Turn one row's column values into a :class:`Loaded` (pure apart from reading a file)."""
    row = Loaded(row_id, key=key)
    try:
        if spec.image_column and image is not None:
            _prepare_image(spec, row, image, max_pixels, image_root)
        elif spec.text_column and text is not None:
            if not isinstance(text, str):
                text = str(text)
            if not text.strip():
                raise _Permanent(f"empty text in column {spec.text_column!r}")
            row.items = [text]
            row.content_hash = content_hash(spec, "text", text.encode("utf-8"))
            row.cost = max(1, len(text) // 4 + 2)
        else:
            cols = " and ".join(repr(c) for c in (spec.image_column, spec.text_column) if c)
            raise _Permanent(f"NULL content: {cols} {'are' if ' and ' in cols else 'is'} NULL")
    except _Permanent as e:
        row.error, row.permanent = str(e), True
    except PgmaxsimError as e:
        row.error = str(e)
    except Exception as e:  # noqa: BLE001 - any decoder failure is this row's error
        row.error = f"{type(e).__name__}: {e}".splitlines()[0]
    return row


class _Permanent(PgmaxsimError):
    """A load error that is a property of the stored content."""


def _prepare_image(spec: IndexSpec, row: Loaded, value: Any, max_pixels: int | None,
                   image_root: str | None) -> None:
    from pgmaxsim.encoders.inputs import DEFAULT_MAX_PIXELS, load_image, render_pdf

    cap = max_pixels or int(spec.options.get("max_pixels", DEFAULT_MAX_PIXELS))
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if not data:
            raise _Permanent(f"empty image: column {spec.image_column!r} holds 0 bytes")
        extra = b""
        where = f"bytea column {spec.image_column!r}"
        permanent = True
    else:
        path = resolve_path(str(value), image_root)
        data = read_file(path)
        extra = path.encode("utf-8", "surrogateescape")
        where = f"file {path!r}"
        permanent = False
    try:
        if data.startswith(PDF_MAGIC):
            limit = int(spec.options.get("max_pdf_pages", DEFAULT_MAX_PDF_PAGES))
            from pgmaxsim.encoders.inputs import pdf_page_count

            n = pdf_page_count(data)
            if n > limit:
                raise _Permanent(f"PDF in {where} has {n} pages, over the limit of {limit} per row")
            row.items = list(render_pdf(data, max_pixels=cap))
            kind = "pdf"
        else:
            row.items = [load_image(data, max_pixels=cap)]
            kind = "image"
    except _Permanent:
        raise
    except PgmaxsimError as e:
        if permanent:
            raise _Permanent(f"{e} (from {where})") from None
        raise PgmaxsimError(f"{e} (from {where})") from None
    row.content_hash = content_hash(spec, kind, data, extra)
    row.cost = spec.image_cost * len(row.items)


def resolve_path(value: str, root: str | None) -> str:
    """The local path a row names; confined to ``root`` when the index sets one."""
    from pgmaxsim.encoders.inputs import _URL_RE

    value = value.strip()
    if not value:
        raise _Permanent("empty file path")
    if _URL_RE.match(value):
        raise _Permanent(f"{value!r} is a URL: the worker never fetches URLs; store the bytes or a local path")
    if root:
        base = os.path.realpath(root)
        path = os.path.realpath(os.path.join(base, value))
        if os.path.commonpath([base, path]) != base:
            raise _Permanent(f"path {value!r} is outside the worker's image root {root!r}")
        return path
    return os.path.abspath(value)


def read_file(path: str) -> bytes:
    """The bytes of a local file; a clear PgmaxsimError when it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise PgmaxsimError(f"file {path!r} does not exist") from None
    except IsADirectoryError:
        raise PgmaxsimError(f"path {path!r} is a directory, not a file") from None
    except PermissionError:
        raise PgmaxsimError(f"file {path!r} is not readable (permission denied)") from None
    except OSError as e:
        raise PgmaxsimError(f"file {path!r} could not be read: {e.strerror or e}") from None
    if not data:
        raise PgmaxsimError(f"file {path!r} is empty (0 bytes)")
    return data
