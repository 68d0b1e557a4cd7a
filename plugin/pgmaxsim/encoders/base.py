"""The encoder interface every model family implements.

An encoder turns documents (text, PIL images, PDF pages, image bytes) and
query texts into token embeddings: one float32 array of shape
``(n_tokens, dim)`` per item, rows L2-normalised, padding removed. A
single-vector model gives ``(1, dim)``.

Batching: items are grouped by an estimated token cost so that a batch holds
at most ``batch_tokens`` (padded) tokens, and never more than
``max_batch_items`` items. Items are sorted by cost before grouping (less
padding) and the results are put back in input order, so the output order is
always the input order.

Errors: a document that cannot be encoded (corrupt bytes, empty text, a
modality the model does not take, an image the processor rejects) gives an
:class:`ItemError` in its slot and the other items still encode: when a batch
fails, its items are retried one by one to find the culprit.
"""

from __future__ import annotations

import abc
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import PgmaxsimError
from .layout import Layout

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as PILImage

log = logging.getLogger(__name__)

DEFAULT_BATCH_TOKENS = 8192
DEFAULT_MAX_BATCH_ITEMS = 64


@dataclass
class ItemError:
    """A document that could not be encoded. ``item`` describes it briefly."""

    index: int
    item: str
    message: str

    def __str__(self) -> str:
        return f"item {self.index} ({self.item}): {self.message}"


def describe_item(item: object) -> str:
    """A short description naming an input item (for ItemError / messages)."""
    if isinstance(item, str):
        short = item if len(item) <= 40 else item[:37] + "..."
        return f"text {short!r} ({len(item)} chars)"
    if isinstance(item, (bytes, bytearray, memoryview)):
        return f"image bytes ({len(item)} bytes)"
    size = getattr(item, "size", None)
    mode = getattr(item, "mode", None)
    if size is not None and mode is not None:
        return f"image {size[0]}x{size[1]} {mode}"
    page = getattr(item, "page_number", None)
    if page is not None:
        return f"PDF page {page}"
    return f"<{type(item).__name__}>"


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (n, d) scaled to unit L2 norm (zero rows stay zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def resolve_device(device: str | None) -> str:
    """``None``/"auto" → "cuda" when torch sees a GPU, else "cpu"."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PgmaxsimError(f"device {device!r} requested but torch sees no CUDA device")
    return device


def resolve_dtype(dtype: str | None, device: str) -> Any:
    """``None``/"auto" → bfloat16 on CUDA, float32 on CPU; else a torch dtype by name."""
    import torch

    if dtype in (None, "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    names = {
        "float32": torch.float32, "fp32": torch.float32,
        "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
        "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    }
    if dtype not in names:
        raise PgmaxsimError(f"unknown dtype {dtype!r}; use one of float32, float16, bfloat16")
    return names[dtype]


def plan_batches(costs: Sequence[int], batch_tokens: int, max_items: int) -> list[list[int]]:
    """Group item indices into batches whose padded cost fits ``batch_tokens``.

    Items are sorted by cost (stable) so similar lengths share a batch; the
    padded cost of a batch is ``len(batch) * max(cost)``. An item costlier
    than the budget gets a batch of its own.

    >>> plan_batches([5, 1, 5, 1], batch_tokens=4, max_items=8)
    [[1, 3], [0], [2]]
    """
    order = sorted(range(len(costs)), key=lambda i: costs[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        c = max(1, int(costs[i]))
        if current and (len(current) + 1) * c > batch_tokens or len(current) >= max_items:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class Encoder(abc.ABC):
    """Base class: subclasses set the attributes and implement the ``_encode_*`` hooks."""

    name: str
    revision: str | None = None
    dim: int
    kind: Literal["multi", "single"] = "multi"
    modalities: frozenset[str] = frozenset({"text"})
    family: str = ""
    prompt_format: str = ""
    device: str = "cpu"
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    max_batch_items: int = DEFAULT_MAX_BATCH_ITEMS

    # ---- public API -----------------------------------------------------

    def encode_documents(self, items: Sequence[object]) -> list[np.ndarray | ItemError]:
        """Encode documents: ``str`` (text), PIL images, ``PdfPage``, image bytes.

        A ``PdfPage`` is encoded from its image by vision models and from its
        text layer by text-only models.

        Returns one entry per input, in input order: a float32 array
        ``(n_tokens, dim)`` with L2-normalised rows, or an :class:`ItemError`.
        """
        return [r if isinstance(r, ItemError) else r[0] for r in self.encode_documents_laid_out(items)]

    def encode_documents_laid_out(self, items: Sequence[object]) -> list[tuple[np.ndarray, Layout | None] | ItemError]:
        """:meth:`encode_documents`, each array with the :class:`~.layout.Layout` of its tokens
        (image patches on the processor's grid, or character spans of the text) when the
        family knows it, else None."""
        results: list[tuple[np.ndarray, Layout | None] | ItemError | None] = [None] * len(items)
        prepared: dict[int, object] = {}
        for i, item in enumerate(items):
            try:
                prepared[i] = self._prepare_document(item)
            except PgmaxsimError as exc:
                results[i] = ItemError(i, describe_item(item), str(exc))
        for modality in ("text", "image"):
            idx = [i for i, p in prepared.items() if _modality(p) == modality]
            if not idx:
                continue
            encode = self._laid_out_text_documents if modality == "text" else self._laid_out_images
            costs = [self._cost(prepared[i]) for i in idx]
            out = self._run_batched([prepared[i] for i in idx], costs, encode, items, idx)
            for i, r in zip(idx, out):
                results[i] = r
        return [r for r in results]  # type: ignore[misc]

    def encode_queries(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Encode query texts: one float32 ``(n_tokens, dim)`` array each.

        Raises PgmaxsimError naming the query when one is empty or not a string.
        """
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise PgmaxsimError(f"query {i} must be text, not {type(t).__name__}")
            if not t.strip():
                raise PgmaxsimError(f"query {i} is empty")
        texts = list(texts)
        costs = [self._cost(t) for t in texts]
        out: list[np.ndarray] = [np.empty(0)] * len(texts)
        for batch in plan_batches(costs, self.batch_tokens, self.max_batch_items):
            embs = self._encode_queries([texts[i] for i in batch])
            for i, e in zip(batch, embs):
                out[i] = self._finish(e, f"query {i}")
        return out

    def encode_query(self, text: str) -> np.ndarray:
        """One query → ``(n_tokens, dim)``."""
        return self.encode_queries([text])[0]

    def check_dim(self, expected: int, index: str | None = None) -> None:
        """Raise PgmaxsimError when this model's dim differs from an index's dim."""
        if int(expected) != int(self.dim):
            where = f"index {index!r}" if index else "the index"
            raise PgmaxsimError(
                f"model {self.name!r} gives {self.dim}-dimensional embeddings but {where} has dim {expected}"
            )

    def info(self) -> dict[str, object]:
        """What an index records about its encoder."""
        return {
            "model": self.name, "revision": self.revision, "dim": self.dim, "kind": self.kind,
            "modalities": sorted(self.modalities), "family": self.family,
            "prompt_format": self.prompt_format,
        }

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.name!r} family={self.family} dim={self.dim} "
                f"kind={self.kind} device={self.device}>")

    # ---- hooks ----------------------------------------------------------

    def _encode_text_documents(self, texts: list[str]) -> list[np.ndarray]:
        raise PgmaxsimError(f"model {self.name!r} does not encode text documents")

    def _laid_out_text_documents(self, texts: list[str]) -> list[tuple[np.ndarray, Layout | None]]:
        """Text documents with their token layouts; families that know them override this."""
        return [(e, None) for e in self._encode_text_documents(texts)]

    def _laid_out_images(self, images: list[PILImage.Image]) -> list[tuple[np.ndarray, Layout | None]]:
        """Images with their token layouts; families that know them override this."""
        return [(e, None) for e in self._encode_images(images)]

    def query_token_strings(self, text: str) -> list[str] | None:
        """The query's tokens as text, one per vector :meth:`encode_query` gives, when the
        family can tell (explain shows them); else None."""
        return None

    def _encode_images(self, images: list[PILImage.Image]) -> list[np.ndarray]:
        raise PgmaxsimError(f"model {self.name!r} does not encode images")

    @abc.abstractmethod
    def _encode_queries(self, texts: list[str]) -> list[np.ndarray]:
        """Raw per-query embeddings (padding already removed)."""

    def _text_cost(self, text: str) -> int:
        return max(1, len(text) // 4 + 2)

    def _image_cost(self, image: PILImage.Image) -> int:
        return max(1, image.width * image.height // (28 * 28))

    # ---- internals ------------------------------------------------------

    def _cost(self, item: object) -> int:
        if isinstance(item, str):
            return self._text_cost(item)
        return self._image_cost(item)  # type: ignore[arg-type]

    def _prepare_document(self, item: object) -> object:
        from .inputs import PdfPage, load_image

        if isinstance(item, PdfPage):
            # A page is its image for vision models, its text layer for text-only ones.
            if "image" in self.modalities:
                item = item.image
            elif not item.text.strip():
                raise PgmaxsimError(f"PDF page {item.page_number} has no text layer (scanned?) "
                                    f"and model {self.name!r} takes text only")
            else:
                item = item.text
        if isinstance(item, str):
            if "text" not in self.modalities:
                raise PgmaxsimError(f"model {self.name!r} takes images only, not text documents")
            if not item.strip():
                raise PgmaxsimError("empty text")
            return item
        if isinstance(item, (bytes, bytearray, memoryview)):
            item = load_image(item)
        if _is_pil(item):
            if "image" not in self.modalities:
                raise PgmaxsimError(f"model {self.name!r} takes text only, not images")
            from .inputs import to_rgb

            return to_rgb(item)  # type: ignore[arg-type]
        if isinstance(item, os.PathLike):
            raise PgmaxsimError("a path is not a document: load it with pgmaxsim.encoders.inputs.load_image")
        raise PgmaxsimError(f"cannot encode an object of type {type(item).__name__}")

    def _finish(self, emb: Any, what: str = "") -> np.ndarray:
        """Check shape/finiteness and L2-normalise one item's (n, dim) embeddings."""
        pre = f"{what}: " if what else ""
        arr = np.asarray(emb, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise PgmaxsimError(f"{pre}model gave shape {arr.shape}, expected (n, {self.dim})")
        if arr.shape[0] == 0:
            raise PgmaxsimError(f"{pre}model gave no tokens")
        if not np.isfinite(arr).all():
            raise PgmaxsimError(f"{pre}model gave non-finite values")
        return l2_normalise(arr)

    def _finish_laid_out(self, emb: Any, layout: Layout | None) -> tuple[np.ndarray, Layout | None]:
        """:meth:`_finish`, and the layout kept only when it describes every token."""
        arr = self._finish(emb)
        if layout is not None and layout.n_tokens != arr.shape[0]:
            log.warning("%s: layout of %d tokens for %d token vectors: not kept", self.name, layout.n_tokens,
                        arr.shape[0])
            layout = None
        return arr, layout

    def _run_batched(
        self,
        prepared: list[Any],
        costs: list[int],
        encode: Callable[[list[Any]], list[tuple[np.ndarray, Layout | None]]],
        originals: Sequence[object],
        idx: list[int],
    ) -> list[tuple[np.ndarray, Layout | None] | ItemError]:
        out: list[tuple[np.ndarray, Layout | None] | ItemError | None] = [None] * len(prepared)
        for batch in plan_batches(costs, self.batch_tokens, self.max_batch_items):
            try:
                embs = encode([prepared[j] for j in batch])
                for j, (e, lay) in zip(batch, embs):
                    out[j] = self._finish_laid_out(e, lay)
                continue
            except Exception as exc:  # noqa: BLE001 - retried one by one below
                log.debug("batch of %d failed (%s); retrying one by one", len(batch), exc)
            for j in batch:  # isolate the bad item(s); the others still encode
                try:
                    out[j] = self._finish_laid_out(*encode([prepared[j]])[0])
                except Exception as exc:  # noqa: BLE001 - reported per item
                    msg = str(exc).strip().splitlines()
                    out[j] = ItemError(idx[j], describe_item(originals[idx[j]]),
                                       msg[0] if msg else type(exc).__name__)
        return out  # type: ignore[return-value]


def _modality(item: object) -> str:
    return "text" if isinstance(item, str) else "image"


def _is_pil(item: object) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(item, Image.Image)
