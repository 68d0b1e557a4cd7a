"""Why a row matched: per-query-token matches, similarity heatmaps over pages, marked text.

>>> ex = Index(conn, "pages").explain("where is the revenue table?", 42)     # doctest: +SKIP
>>> ex.score, ex.matches[0]                                                   # doctest: +SKIP
(17.31, TokenMatch(query_token=0, text='where', doc_token=311, score=0.61, patch_row=12, ...))
>>> heatmap(page_image, ex).save("why.png")                                   # doctest: +SKIP
>>> text_segments(row_text, ex)                                               # doctest: +SKIP
[('The quick ', None), ('fox', 0.83), (' jumps over the ', None), ('lazy', 0.71), ...]

:func:`explain` asks SQL (``maxsim.explain``: the same rights, row-level security and
stored tokens as search; the scores are the terms of the row's MaxSim and sum to it) and,
for page images, reads the row's tokens (``maxsim.tokens``) and patch grid
(``maxsim.layout``) to compute each query token's similarity to every patch: the
similarity map :func:`heatmap` draws (colours from a matplotlib colormap, compositing
by Pillow). Text rows get character spans instead; :func:`text_segments` cuts the text
at them. Positions are 0-based, as in the model's output.

Needs Pillow and matplotlib only for :func:`heatmap` (``pip install 'pgmaxsim[explain]'``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg
from psycopg.adapt import Buffer, Loader
from psycopg.pq import Format

from pgmaxsim.db.adapters import Tokens, tokens_cursor
from pgmaxsim.db.codec import decode_halfvec_array
from pgmaxsim.errors import MissingExtraError, PgmaxsimError, one_line
from pgmaxsim.registry import IndexSpec, get_index

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as PILImage

    from pgmaxsim.encoders.base import Encoder


@dataclass(frozen=True)
class TokenMatch:
    """One query token's best document token: a term of the row's MaxSim."""

    query_token: int
    text: str | None          # the query token as text (text queries, when the model's tokenizer tells)
    doc_token: int
    score: float
    patch_row: int | None = None
    patch_col: int | None = None
    char_start: int | None = None
    char_end: int | None = None


@dataclass
class Explanation:
    """``maxsim.explain`` of one row, plus what drawing it needs.

    ``score``: the sum of the matches' scores (the row's MaxSim). ``kind``: "image" (patch
    grid known), "text" (character spans known) or None (no layout stored: rows written
    by ``upsert``, or stored with token pooling, ``pooled``). ``grid``: ``(rows, cols)``.
    ``cells``: per document token, its cell ``row * cols + col`` or -1 (not on the grid).
    ``similarity``: ``(n_query, n_doc)`` float32, each query token against every stored
    document token (image rows only).
    """

    id: Any
    matches: list[TokenMatch]
    kind: str | None = None
    pooled: bool = False
    grid: tuple[int, int] | None = None
    cells: np.ndarray | None = None
    similarity: np.ndarray | None = field(default=None, repr=False)

    @property
    def score(self) -> float:
        return float(sum(m.score for m in self.matches))

    def patch_map(self, token: int | None = None) -> np.ndarray:
        """``(rows, cols)`` float32 similarity map: of query token ``token``, or (None) each
        patch's best similarity to any query token. Raises PgmaxsimError without a grid."""
        if self.grid is None or self.cells is None or self.similarity is None:
            why = ("it is stored with token pooling" if self.pooled else
                   "it has no page layout (a text row, or written by upsert, or before layouts were stored)")
            raise PgmaxsimError(f"row {self.id}: no patch grid to draw on: {why}")
        sim = self.similarity
        if token is not None:
            if not 0 <= token < sim.shape[0]:
                raise PgmaxsimError(f"query token {token} out of range (the query has {sim.shape[0]} tokens)")
            per_doc = sim[token]
        else:
            per_doc = sim.max(axis=0)
        rows, cols = self.grid
        out = np.full(rows * cols, np.nan, dtype=np.float32)
        on_grid = self.cells >= 0
        out[self.cells[on_grid]] = per_doc[on_grid]
        return out.reshape(rows, cols)


# ---------------------------------------------------------------- explain

def explain(conn: psycopg.Connection[Any], name: str, query: Any, id: Any, *,
            encoder: Encoder | None = None, info: IndexSpec | None = None) -> Explanation:
    """Explain row ``id`` of index ``name`` for ``query`` (text, a PIL image or an ``(n, d)``
    array; text and images are encoded by the index's model or ``encoder``)."""
    from pgmaxsim.search import encode_query, encoder_for

    info = info if info is not None else get_index(conn, name)
    q = encode_query(info, query, encoder)
    strings = None
    if isinstance(query, str):
        enc = encoder if encoder is not None else encoder_for(info.model, info.model_revision)
        strings = query_token_strings(enc, query, len(q))
    key = info.key_text(id)
    try:
        with tokens_cursor(conn, info.halfvec_oid, what="query") as cur:
            rows = cur.execute(
                "SELECT query_token, doc_token, score, patch_row, patch_col, char_start, char_end"
                " FROM maxsim.explain(%s, %s, %s::text)", (info.name, Tokens(q), key)).fetchall()
            layout = cur.execute(
                "SELECT doc_token, token_kind, patch_row, patch_col FROM maxsim.layout(%s, %s::text)",
                (info.name, key)).fetchall()
    except psycopg.Error as e:
        raise PgmaxsimError(one_line(e)) from None
    matches = [TokenMatch(r[0], strings[r[0]] if strings else None, r[1], float(r[2]), *r[3:]) for r in rows]
    ex = Explanation(info.key_from_text(key), matches)
    kinds = {r[1] for r in layout}
    if "patch" in kinds:
        ex.kind = "image"
        _attach_grid(conn, info, key, q, ex, layout)
    elif "text" in kinds:
        ex.kind = "text"
    elif not layout:
        ex.pooled = info.pool_factor > 1
    return ex


def _attach_grid(conn: psycopg.Connection[Any], info: IndexSpec, key: str, q: np.ndarray, ex: Explanation,
                 layout: list[tuple[Any, ...]]) -> None:
    """The grid and the query-by-document similarity of an image row (its stored tokens)."""
    try:
        with conn.cursor(binary=True) as cur:
            # this cursor's own loader: the connection may have register_tokens' (or none)
            cur.adapters.register_loader(info.halfvec_array_oid, _HalfvecArrayLoader)
            row = cur.execute("SELECT maxsim.tokens(%s, %s::text)", (info.name, key)).fetchone()
    except psycopg.Error as e:
        raise PgmaxsimError(one_line(e)) from None
    if row is None or row[0] is None:
        return
    doc = np.asarray(row[0], dtype=np.float32)
    if len(layout) != len(doc):  # rewritten between the two reads: no grid rather than a wrong one
        return
    patches = [(r[0], r[2], r[3]) for r in layout if r[1] == "patch"]
    rows = 1 + max(p[1] for p in patches)
    cols = 1 + max(p[2] for p in patches)
    cells = np.full(len(doc), -1, dtype=np.int64)
    for j, pr, pc in patches:
        cells[j] = pr * cols + pc
    ex.grid, ex.cells = (rows, cols), cells
    ex.similarity = np.asarray(q, dtype=np.float32) @ doc.T


class _HalfvecArrayLoader(Loader):
    format = Format.BINARY

    def load(self, data: Buffer) -> np.ndarray:
        return decode_halfvec_array(data)


def query_token_strings(encoder: Any, text: str, n_tokens: int) -> list[str] | None:
    """The query's tokens as text, one per query token vector, when the encoder can tell
    (``encoder.query_token_strings``) and the counts agree; else None."""
    fn = getattr(encoder, "query_token_strings", None)
    if fn is None:
        return None
    try:
        strings = list(fn(text))
    except Exception:  # noqa: BLE001 - the strings are a nicety; the explanation stands without them
        return None
    return strings if len(strings) == n_tokens else None


# ---------------------------------------------------------------- drawing

def heatmap(image: PILImage.Image, explanation: Explanation, token: int | None = None, *,
            cmap: str = "jet", alpha: float = 0.55) -> PILImage.Image:
    """``image`` (the row's page) with the similarity map overlaid: of query token ``token``,
    or (None) each patch's best similarity to any query token.

    The map is stretched over the whole page (the processors resize the page onto their
    grid), scaled to the page's own range, coloured by matplotlib colormap ``cmap`` and
    composited by Pillow with opacity growing with similarity up to ``alpha`` (low
    similarity leaves the page readable). Returns a new RGB image of ``image``'s size.
    """
    Image, colormaps = _imaging()
    grid = explanation.patch_map(token)
    valid = np.isfinite(grid)
    lo, hi = (float(grid[valid].min()), float(grid[valid].max())) if valid.any() else (0.0, 1.0)
    norm = np.where(valid, (grid - lo) / (hi - lo) if hi > lo else 1.0, 0.0)
    colours = colormaps[cmap](norm, bytes=True)[..., :3]   # (rows, cols, 3) uint8
    opacity = (norm * (255 * alpha)).astype(np.uint8)
    # Colour and opacity upscaled apart and composited by a mask: an RGBA resize premultiplies
    # every page pixel and costs ~3x more (bench/explain.py).
    size, smooth = image.size, Image.Resampling.BILINEAR
    colour_layer = Image.fromarray(np.ascontiguousarray(colours), "RGB").resize(size, smooth)
    mask = Image.fromarray(opacity, "L").resize(size, smooth)
    return Image.composite(colour_layer, image.convert("RGB"), mask)


def _imaging() -> tuple[Any, Any]:
    try:
        from matplotlib import colormaps
        from PIL import Image
    except ImportError as exc:
        raise MissingExtraError("Pillow and matplotlib (heatmaps)", "explain") from exc
    return Image, colormaps


def text_segments(text: str, explanation: Explanation, token: int | None = None) -> list[tuple[str, float | None]]:
    """``text`` cut at the matched tokens' character spans: ``(piece, score)`` in order, joining
    back to ``text``; ``score`` is the sum of the matching query tokens' scores (of ``token``
    only, when given), None for unmatched text. ``text`` must be the text the row was
    encoded from (its text column).

    >>> ex = Explanation(1, [TokenMatch(0, None, 1, 0.5, char_start=4, char_end=9)])
    >>> text_segments("the quick fox", ex)
    [('the ', None), ('quick', 0.5), (' fox', None)]
    """
    spans: dict[tuple[int, int], float] = {}
    for m in explanation.matches:
        if m.char_start is None or m.char_end is None or (token is not None and m.query_token != token):
            continue
        s, e = max(0, m.char_start), min(len(text), m.char_end)
        if e > s:
            spans[(s, e)] = spans.get((s, e), 0.0) + m.score
    out: list[tuple[str, float | None]] = []
    pos = 0
    for (s, e), score in sorted(spans.items()):
        s = max(s, pos)          # overlapping spans (rare: byte-level pieces) keep the first
        if e <= s:
            continue
        if s > pos:
            out.append((text[pos:s], None))
        out.append((text[s:e], score))
        pos = e
    if pos < len(text):
        out.append((text[pos:], None))
    return out
