"""Where each token of a row came from: image patches on a grid, or character spans of a text.

An encoder that knows its processor's layout returns a :class:`Layout` beside each row's
tokens; the write path stores it once per row (``layout bytea`` of the token table) and
``maxsim.explain`` / :mod:`pgmaxsim.explain` read it back. Token ``i`` of a layout is token
``i`` of the row as the model gave it (prompt and special tokens included, padding dropped),
so a layout applies only to rows stored without token pooling.

Image layouts: ``grid`` is ``(rows, cols)`` of the patch grid *after* the processor's merging
(Qwen: 2x2 patches per token; Idefics3: the tiles' token grids side by side), and ``cells[i]``
is ``row * cols + col`` for an image patch token, :data:`NOT_IMAGE` for a prompt / special
token and :data:`NO_CELL` for an image token without a place on the grid (the Idefics3
global thumbnail, which colpali-engine's similarity maps leave out too).

Text layouts: ``spans[i] = (start, end)`` character offsets of token ``i`` in the encoded
text (``text[start:end]``), ``(-1, -1)`` for tokens that cover no character.

Byte format (stored; decoded in SQL by ``maxsim._layout_rows`` with get_byte arithmetic, so
big-endian int32 words, which is what ``bit(32)::integer`` reads):

    word 0: version (1) << 24 | kind (1 image, 2 text) << 16
    word 1: n tokens
    image:  word 2 rows, word 3 cols, then n words cells[i]
    text:   then n pairs of words (start, end)

A 1,000-patch page takes 4 KB beside its 256 KB of fp16 tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import PgmaxsimError

VERSION = 1
KIND_CODES = {"image": 1, "text": 2}
NOT_IMAGE = -1
NO_CELL = -2
_WORD = np.dtype(">i4")


@dataclass(frozen=True)
class Layout:
    """The layout of one row's tokens (see module doc). Build with :func:`image_layout` /
    :func:`text_layout`."""

    kind: Literal["image", "text"]
    n_tokens: int
    grid: tuple[int, int] | None = None
    cells: np.ndarray | None = None      # (n,) int32, image layouts
    spans: np.ndarray | None = None      # (n, 2) int32, text layouts

    def patch_of(self, token: int) -> tuple[int, int] | None:
        """``(row, col)`` of token ``token`` on the grid, or None."""
        if self.cells is None or self.grid is None or not 0 <= token < self.n_tokens:
            return None
        c = int(self.cells[token])
        return None if c < 0 else divmod(c, self.grid[1])

    def span_of(self, token: int) -> tuple[int, int] | None:
        """``(start, end)`` characters of token ``token``, or None."""
        if self.spans is None or not 0 <= token < self.n_tokens:
            return None
        s, e = (int(x) for x in self.spans[token])
        return None if s < 0 else (s, e)


def image_layout(grid: tuple[int, int], cells: np.ndarray) -> Layout:
    """An image layout; ``cells`` as in the module doc.

    >>> lay = image_layout((2, 3), np.array([-1, 0, 1, 2, 3, 4, 5, -1]))
    >>> lay.patch_of(4), lay.patch_of(0)
    ((1, 0), None)
    """
    rows, cols = int(grid[0]), int(grid[1])
    c = np.asarray(cells, dtype=np.int32).reshape(-1)
    if rows <= 0 or cols <= 0:
        raise PgmaxsimError(f"layout grid must be positive, got {rows} x {cols}")
    if c.size and (c.max() >= rows * cols or c.min() < NO_CELL):
        raise PgmaxsimError(f"layout cells out of range for a {rows} x {cols} grid")
    return Layout("image", int(c.size), grid=(rows, cols), cells=c)


def text_layout(spans: np.ndarray) -> Layout:
    """A text layout from ``(n, 2)`` character offsets (``-1`` where a token has none).

    >>> text_layout(np.array([[0, 3], [4, 9]])).span_of(1)
    (4, 9)
    """
    s = np.asarray(spans, dtype=np.int32).reshape(-1, 2)
    return Layout("text", int(s.shape[0]), spans=s)


def row_grid(rows: int, cols: int) -> np.ndarray:
    """Cells ``0 .. rows*cols-1`` in row-major order (the order processors emit patches in)."""
    return np.arange(rows * cols, dtype=np.int32)


def encode_layout(layout: Layout) -> bytes:
    """The stored bytes of ``layout`` (module doc).

    >>> decode_layout(encode_layout(image_layout((1, 2), np.array([-1, 0, 1])))).cells.tolist()
    [-1, 0, 1]
    """
    head = [(VERSION << 24) | (KIND_CODES[layout.kind] << 16), layout.n_tokens]
    if layout.kind == "image":
        assert layout.grid is not None and layout.cells is not None
        body = np.concatenate([np.array([*head, *layout.grid]), layout.cells])
    else:
        assert layout.spans is not None
        body = np.concatenate([np.array(head), layout.spans.reshape(-1)])
    return body.astype(_WORD).tobytes()


def decode_layout(data: bytes | bytearray | memoryview) -> Layout:
    """Inverse of :func:`encode_layout`; PgmaxsimError for bytes that are not a layout."""
    words = np.frombuffer(bytes(data), dtype=_WORD).astype(np.int32)
    if words.size < 2 or words[0] >> 24 != VERSION:
        raise PgmaxsimError("not a pgmaxsim layout (or a newer version of one)")
    kind = {v: k for k, v in KIND_CODES.items()}.get(int(words[0] >> 16) & 0xFF)
    n = int(words[1])
    if kind == "image" and words.size == 4 + n:
        return image_layout((int(words[2]), int(words[3])), words[4:])
    if kind == "text" and words.size == 2 + 2 * n:
        return text_layout(words[2:].reshape(n, 2))
    raise PgmaxsimError("layout bytes do not match their header")
