"""Image layouts of the ColVision families, read from what the processor actually produced.

Each function takes one item of a processed batch — its token ids (or token strings) at the
positions the model's attention mask keeps, i.e. exactly the token vectors stored for the row —
and returns its :class:`~.layout.Layout`, or None when the tokens do not look as the family's
processor lays them out (then the row is stored without one rather than with a wrong one).
The grids agree with colpali-engine's ``get_n_patches`` helpers (tests/test_explain_layouts.py).

- Qwen2-VL / Qwen2.5-VL (ColQwen2, ColQwen2.5, colnomic): ``image_grid_thw`` = (1, h, w) in
  14 px patches; the vision tower merges ``merge x merge`` patches into one token, emitted row
  by row, so the grid is ``(h / merge, w / merge)`` over the ``<|image_pad|>`` positions.
- PaliGemma (ColPali): ``image_seq_length`` ``<image>`` tokens first, a square-patched
  ``height / patch x width / patch`` grid over the processor's fixed-size resize.
- Idefics3 (ColIdefics3, colSmol): the page is cut into tiles, each announced by
  ``<row_R_col_C>`` and followed by ``image_seq_len`` ``<image>`` tokens (a square of tokens,
  row-major); then ``<global-img>`` and the thumbnail's tokens, which have no grid place
  (colpali-engine leaves them out of its maps too). An image small enough for one tile has only
  the thumbnail, which then is the grid.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from .layout import NO_CELL, NOT_IMAGE, Layout, image_layout

_TILE = re.compile(r"<row_(\d+)_col_(\d+)>")


def qwen_layout(ids: np.ndarray, image_token_id: int, grid_thw: Sequence[int], merge: int) -> Layout | None:
    """Layout of a Qwen-VL page from its kept token ids and ``image_grid_thw``.

    >>> qwen_layout(np.array([7, 5, 5, 5, 5, 5, 5, 8]), 5, (1, 4, 6), 2).grid
    (2, 3)
    """
    t, h, w = (int(x) for x in grid_thw)
    rows, cols = h // merge, w // merge
    image = np.asarray(ids) == image_token_id
    if t != 1 or rows * cols != int(image.sum()) or rows == 0 or cols == 0:
        return None
    cells = np.full(len(ids), NOT_IMAGE, dtype=np.int32)
    cells[image] = np.arange(rows * cols)
    return image_layout((rows, cols), cells)


def paligemma_layout(ids: np.ndarray, image_token_id: int, rows: int, cols: int) -> Layout | None:
    """Layout of a PaliGemma page: its ``rows * cols`` ``<image>`` tokens, row-major.

    >>> paligemma_layout(np.array([3, 3, 3, 3, 1, 9]), 3, 2, 2).cells.tolist()
    [0, 1, 2, 3, -1, -1]
    """
    image = np.asarray(ids) == image_token_id
    if rows * cols != int(image.sum()) or rows == 0:
        return None
    cells = np.full(len(ids), NOT_IMAGE, dtype=np.int32)
    cells[image] = np.arange(rows * cols)
    return image_layout((rows, cols), cells)


def idefics3_layout(tokens: Sequence[str], image_token: str, seq_len: int) -> Layout | None:
    """Layout of an Idefics3 page from its kept token strings.

    >>> toks = ["<row_1_col_1>"] + ["<image>"] * 4 + ["<row_1_col_2>"] + ["<image>"] * 4
    >>> lay = idefics3_layout(toks + ["<global-img>"] + ["<image>"] * 4, "<image>", 4)
    >>> lay.grid, lay.cells.tolist()[:6], lay.cells.tolist()[-1]
    ((2, 4), [-1, 0, 1, 4, 5, -1], -2)
    """
    side = math.isqrt(seq_len)
    if side * side != seq_len:
        return None
    cells = np.full(len(tokens), NOT_IMAGE, dtype=np.int32)
    tile: tuple[int, int] | None = None       # current tile (row, col), 1-based; None: thumbnail
    seen: dict[tuple[int, int] | None, list[int]] = {}
    for i, tok in enumerate(tokens):
        if m := _TILE.fullmatch(tok):
            tile = (int(m.group(1)), int(m.group(2)))
        elif tok == "<global-img>":
            tile = None
        elif tok == image_token:
            seen.setdefault(tile, []).append(i)
    if any(len(pos) != seq_len for pos in seen.values()) or not seen:
        return None
    tiles = [t for t in seen if t is not None]
    if not tiles:                              # one tile: the thumbnail is the page
        cells[seen[None]] = np.arange(seq_len)
        return image_layout((side, side), cells)
    n_rows, n_cols = max(r for r, _ in tiles), max(c for _, c in tiles)
    if len(tiles) != n_rows * n_cols:
        return None
    k = np.arange(seq_len)
    for (r, c), pos in ((t, seen[t]) for t in tiles):
        cells[pos] = ((r - 1) * side + k // side) * (n_cols * side) + (c - 1) * side + k % side
    if None in seen:
        cells[seen[None]] = NO_CELL
    return image_layout((n_rows * side, n_cols * side), cells)
