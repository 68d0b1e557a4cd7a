"""Why a row matched: per-query-token matches, similarity heatmaps over pages, marked text.

>>> ex = Index(conn, "pages").explain("where is the revenue table?", 42)     # doctest: +SKIP
>>> ex.score, ex.matches[0]                                                   # doctest: +SKIP
(17.31, TokenMatch(query_token=0, text='where', doc_token=311, score=0.61, patch_row=12, ...))
>>> heatmap(page_image, ex).save("why.png")                                   # doctest: +SKIP
>>> text_segments(row_text, ex)                                               # doctest: +SKIP
[('The quick ', None), ('fox', 0.83), (' jumps over the ', None), ('lazy', 0.71), ...]

:func:`explain` reads the row's stored tokens and layout in one round trip
(``maxsim.stored_row``: search's rights and row-level security) and explains it in NumPy
as ``maxsim.explain`` does in SQL: each query token's best stored token, whose scores are
the terms of the row's MaxSim and sum to it. For page images it keeps each query token's
similarity to every patch: the similarity map :func:`heatmap` draws (colours from a
matplotlib colormap, compositing by Pillow). Text rows get character spans instead;
:func:`text_segments` cuts the text at them. Positions are 0-based, as in the model's output.

Needs Pillow and matplotlib only for :func:`heatmap` (``pip install 'pgmaxsim[explain]'``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg

from pgmaxsim.encoders.layout import Layout, decode_layout
from pgmaxsim.errors import MissingExtraError, PgmaxsimError, one_line
from pgmaxsim.kernels import quantize
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
    array; text and images are encoded by the index's model or ``encoder``).

    The row comes from ``maxsim.stored_row`` (search's rights and row-level security; a row
    the role may not see is refused like a missing one) and is explained here, in NumPy,
    exactly as ``maxsim.explain`` does on the server (tests/test_explain.py checks they agree).
    """
    from pgmaxsim.search import encode_query, encoder_for

    info = info if info is not None else get_index(conn, name)
    q = np.asarray(encode_query(info, query, encoder), dtype=np.float32)
    strings = None
    if isinstance(query, str):
        enc = encoder if encoder is not None else encoder_for(info.model, info.model_revision)
        strings = query_token_strings(enc, query, len(q))
    key = info.key_text(id)
    try:
        with conn.cursor(binary=True) as cur:
            row = cur.execute("SELECT storage, dim, n_tokens, tokens, layout, pooled"
                              " FROM maxsim.stored_row(%s, %s::text)", (info.name, key)).fetchone()
    except psycopg.Error as e:
        raise PgmaxsimError(one_line(e)) from None
    assert row is not None
    storage, dim, n_tokens, blob, layout_bytes, pooled = row
    doc = _stored_tokens(bytes(blob), int(dim), int(n_tokens), storage)
    # the query as the server sees it: fp16 (halfvec) values
    sim = q.astype(np.float16).astype(np.float32) @ doc.T
    layout = decode_layout(layout_bytes) if layout_bytes is not None and not pooled else None
    if layout is not None and layout.n_tokens != len(doc):
        layout = None
    best = sim.argmax(axis=1)
    matches = [_match(i, strings, int(j), float(sim[i, j]), layout) for i, j in enumerate(best)]
    ex = Explanation(info.key_from_text(key), matches, pooled=bool(pooled))
    if layout is not None:
        ex.kind = layout.kind
        if layout.kind == "image":
            ex.grid, ex.cells, ex.similarity = layout.grid, layout.cells, sim
    return ex


def _stored_tokens(blob: bytes, dim: int, n_tokens: int, storage: str) -> np.ndarray:
    """The stored tokens as the float32 values they stand for (the tier told by their length:
    a row read across a storage switch may be in the other one)."""
    tiers = [t for t in quantize.STORAGE_TIERS if len(blob) == quantize.stored_nbytes(n_tokens, dim, t)]
    tier = storage if len(tiers) != 1 else tiers[0]
    return quantize.dequantize(*quantize.decode_tokens(blob, dim, tier)).astype(np.float32)


def _match(i: int, strings: list[str] | None, j: int, score: float, layout: Layout | None) -> TokenMatch:
    patch = layout.patch_of(j) if layout is not None else None
    span = layout.span_of(j) if layout is not None else None
    return TokenMatch(i, strings[i] if strings else None, j, score,
                      *(patch if patch else (None, None)), *(span if span else (None, None)))


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
