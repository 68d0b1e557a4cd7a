"""Heatmaps and marked words from :mod:`pgmaxsim.explain`, when this installation has it.

The page asks three things of an explanation (one row, one query): the query token
strings (the selector), the page image with the similarity map over it (rows embedded
from images: ``kind == "image"``) and the text cut into marked and plain pieces (rows
embedded from text: ``kind == "text"``). All three come from :mod:`pgmaxsim.explain`;
this module only adapts them to the page and answers None where there is nothing to
draw (the module is missing, or the row has no layout: rows written by applications
through ``upsert``, or stored with token pooling), so the page then shows the row plainly.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("pgmaxsim.web")

#: The longest text marked on a page (characters): longer texts are shown unmarked.
MAX_TEXT = 50000


@dataclass
class Piece:
    text: str
    weight: int | None  # None: not matched; else 0..3, the strength class of the match


def available() -> bool:
    try:
        import pgmaxsim.explain as ex
    except ImportError:
        return False
    return hasattr(ex, "explain") and hasattr(ex, "heatmap") and hasattr(ex, "text_segments")


def explain(conn: Any, info: Any, tokens: np.ndarray, key: str) -> Any | None:
    """The explanation of row ``key`` for the query ``tokens`` (already encoded), or None
    (no explain here, or it failed: the page then shows the row without overlay)."""
    if not available():
        return None
    from pgmaxsim import explain as ex
    from pgmaxsim.errors import PgmaxsimError

    try:
        with conn.transaction():  # a savepoint: a failed explain leaves the page's transaction usable
            return ex.explain(conn, info.name, tokens, info.key_from_text(key), info=info)
    except PgmaxsimError as e:
        log.warning("pgmaxsim serve: explaining row %s of %s: %s", key, info.name, e)
        return None


def token_names(encoder: Any, text: str, n_tokens: int) -> list[str]:
    """The query's tokens as text for the selector (``#i`` where the model cannot tell)."""
    strings = None
    if available():
        from pgmaxsim import explain as ex

        strings = ex.query_token_strings(encoder, text, n_tokens) if encoder is not None else None
    return [str(s) for s in strings] if strings else [f"#{i}" for i in range(n_tokens)]


def has_patches(explanation: Any) -> bool:
    return explanation is not None and getattr(explanation, "kind", None) == "image" and explanation.grid is not None


def heatmap_png(image_bytes: bytes, explanation: Any, token: int | None, width: int | None) -> bytes:
    """The page image with its similarity map (all query tokens, or ``token``), as PNG."""
    from PIL import Image

    from pgmaxsim.explain import heatmap

    with Image.open(io.BytesIO(image_bytes)) as img:
        img.load()
        if width and img.width > width:  # draw on the thumbnail: cheaper, and the same picture
            img = img.resize((width, max(1, round(img.height * width / img.width))))
        return png(heatmap(img, explanation, token=token), None)


def png(image: Any, width: int | None) -> bytes:
    """``image`` (PIL) as PNG bytes, shrunk to ``width`` pixels wide when it is wider."""
    if width and image.width > width:
        image = image.resize((width, max(1, round(image.height * width / image.width))))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def marked(text: str | None, explanation: Any, token: int | None) -> list[Piece] | None:
    """``text`` (the row's indexed text column) cut into plain and matched pieces; None where
    the row has no character spans to mark."""
    if explanation is None or getattr(explanation, "kind", None) != "text" or not text or len(text) > MAX_TEXT:
        return None
    from pgmaxsim.explain import text_segments

    return pieces(text_segments(text, explanation, token))


def pieces(segments: list[tuple[str, float | None]]) -> list[Piece] | None:
    """Segments ``(text, score | None)`` as pieces whose weight is a strength class 0..3 of the
    score relative to the best one (the page draws four strengths); None when nothing matched.

    >>> [(p.text, p.weight) for p in pieces([("bees", 0.8), (" find ", None), ("flowers", 0.2)])]
    [('bees', 3), (' find ', None), ('flowers', 1)]
    >>> pieces([("no match", None)]) is None
    True
    """
    best = max((s for _, s in segments if s is not None and s > 0), default=None)
    if best is None:
        return None
    return [Piece(t, None if s is None else round(3 * max(0.0, s) / best)) for t, s in segments]


def excerpt(segments: list[Piece], width: int) -> list[Piece]:
    """At most ``width`` characters of ``segments`` (whitespace runs folded), starting a little
    before the first strongest match, so a results snippet shows why the row matched.

    >>> [(p.text, p.weight) for p in excerpt([Piece("a " * 50, None), Piece("bee", 3), Piece(" end", None)], 12)]
    [('… a a ', None), ('bee', 3), (' end', None)]
    """
    flat = [Piece(" ".join(p.text.split()) if p.text.strip() else " ", p.weight) for p in segments]
    for i, p in enumerate(flat):  # keep the spaces that split() removed at the pieces' edges
        if p.text != " " and segments[i].text[:1].isspace():
            p.text = " " + p.text
        if p.text != " " and segments[i].text[-1:].isspace():
            p.text += " "
    top = max((p.weight for p in flat if p.weight is not None), default=None)
    start = 0
    if top is not None:
        at = next(i for i, p in enumerate(flat) if p.weight == top)
        before = sum(len(p.text) for p in flat[:at])
        start = max(0, before - width // 3)
    out: list[Piece] = []
    pos = used = 0
    for p in flat:
        end = pos + len(p.text)
        if end > start and used < width:
            piece = p.text[max(0, start - pos):][: width - used]
            out.append(Piece(piece, p.weight))
            used += len(piece)
        pos = end
    if out and start > 0:
        out[0].text = "… " + out[0].text.lstrip()
    if out and pos > start + used:
        out[-1].text = out[-1].text.rstrip() + "…"
    return out
