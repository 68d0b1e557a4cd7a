"""Terminal output shared by the CLI and the demo: plain-text tables, sizes, snippets,
progress bars, and what names a result row (its label and body)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, right: Sequence[int] = (),
          out: TextIO | None = None) -> None:
    """Print ``rows`` under ``headers`` as an aligned plain-text table.

    ``right``: indexes of the columns to right-align (numbers).

    >>> table(["rank", "id"], [[1, "a"], [10, "bb"]], right=[0])
    rank  id
    ----  --
       1  a
      10  bb
    """
    out = out or sys.stdout
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))

    def fmt(row: Sequence[str]) -> str:
        parts = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)]
        return "  ".join(parts).rstrip()

    print(fmt(list(headers)), file=out)
    print(fmt(["-" * w for w in widths]), file=out)
    for row in cells:
        print(fmt(row), file=out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def snippet(text: str | None, width: int = 60) -> str:
    """One line of at most ``width`` characters from ``text``.

    >>> snippet("a  b\\nc", 10)
    'a b c'
    >>> snippet("x" * 20, 10)
    'xxxxxxxxx…'
    """
    if not text:
        return ""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def human_bytes(n: float | None) -> str:
    """``1536`` → ``'1.5 KiB'``.

    >>> human_bytes(1536)
    '1.5 KiB'
    >>> human_bytes(10)
    '10 B'
    """
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def progress(total: int | None, desc: str, unit: str = "it") -> Any:
    """A tqdm progress bar on stderr, shown only on a terminal (quiet in logs and tests)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=None, file=sys.stderr, leave=False,
                dynamic_ncols=True)


def label(row: dict[str, Any] | None) -> str:
    """What names a row in the results: the ingest table's title and page, else a title-ish column."""
    if not row:
        return ""
    if row.get("document") is not None and row.get("page") is not None:
        title = row.get("title") or row["document"]
        if row.get("kind") == "pdf":
            return f"{row['document']} p.{row['page']}"
        return str(title)
    for key in ("title", "name", "document", "filename", "path", "subject", "heading"):
        if isinstance(row.get(key), str) and row[key].strip():
            return row[key]
    return ""


def body(row: dict[str, Any] | None) -> str:
    """A snippet of the row's text: ``body`` of ingest tables, else the first long text column."""
    if not row:
        return ""
    if isinstance(row.get("body"), str):
        text = row["body"].strip()
        title = row.get("title")
        if isinstance(title, str):
            if row.get("kind") == "text" and text.startswith(title):
                text = text[len(title):]  # the title is already in the other column
            elif row.get("kind") == "pdf":
                first, _, rest = text.partition("\n")
                if first.strip() and title.startswith(first.strip()):
                    text = rest  # the page's running header repeats the document title
        return text
    texts = [v for v in row.values() if isinstance(v, str)]
    return max(texts, key=len) if texts else ""
