"""Encoders for the worker: one loaded model per (model, revision), rows in, token matrices out."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pgmaxsim.encoders.layout import Layout
from pgmaxsim.errors import PgmaxsimError
from pgmaxsim.registry import IndexSpec
from pgmaxsim.worker.load import Loaded

# A model that failed to load is not tried again for this long (each batch would pay for it).
LOAD_FAILURE_TTL_S = 60.0

EncoderFactory = Callable[[IndexSpec], Any]


# Loaded models shared by every worker loop of this process (a model is loaded once).
_SHARED: dict[tuple[Any, ...], Any] = {}


def default_factory(device: str | None = None, dtype: str | None = None) -> EncoderFactory:
    """Load an index's model through :func:`pgmaxsim.encoders.load_encoder` (once per process)."""

    def make(spec: IndexSpec) -> Any:
        from pgmaxsim.encoders import load_encoder

        key = (spec.model, spec.model_revision, device, dtype)
        if key not in _SHARED:
            _SHARED[key] = load_encoder(spec.model, revision=spec.model_revision, device=device, dtype=dtype)
        return _SHARED[key]

    return make


class EncoderCache:
    """Encoders by ``(model, revision)``, loaded on first use and kept for the worker's life."""

    def __init__(self, factory: EncoderFactory | None = None) -> None:
        self.factory = factory or default_factory()
        self._encoders: dict[tuple[str, str | None], Any] = {}
        self._failed: dict[tuple[str, str | None], tuple[float, str]] = {}

    def get(self, spec: IndexSpec) -> Any:
        """The encoder of ``spec``'s model; PgmaxsimError (one line) when it cannot be loaded."""
        key = spec.model_key
        enc = self._encoders.get(key)
        if enc is not None:
            return enc
        failed = self._failed.get(key)
        if failed and time.monotonic() - failed[0] < LOAD_FAILURE_TTL_S:
            raise PgmaxsimError(failed[1])
        try:
            enc = self.factory(spec)
        except Exception as e:  # any load failure becomes one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            msg = f"cannot load model {spec.model!r}: {first}"
            self._failed[key] = (time.monotonic(), msg)
            raise PgmaxsimError(msg) from e
        self._failed.pop(key, None)
        self._encoders[key] = enc
        return enc


@dataclass
class Encoded:
    row: Loaded
    tokens: np.ndarray | None = None  # (n_tokens, dim) float32
    error: str | None = None
    layout: Layout | None = None      # where the tokens came from (one-item rows whose encoder tells)


def encode_rows(encoder: Any, spec: IndexSpec, rows: list[Loaded]) -> list[Encoded]:
    """Encode every row's items in one call; a row's token matrix is its items' matrices stacked.

    Per-item errors of the encoder (and a dim that disagrees with the index)
    become that row's error; the other rows are unaffected. A row of one item keeps
    the item's layout when the encoder gives one (``encode_documents_laid_out``); the
    tokens of a several-item row (a PDF's pages) have none.
    """
    flat: list[Any] = []
    owner: list[int] = []
    for i, r in enumerate(rows):
        flat.extend(r.items)
        owner.extend([i] * len(r.items))
    laid_out = getattr(encoder, "encode_documents_laid_out", None)
    results = (laid_out(flat) if laid_out else encoder.encode_documents(flat)) if flat else []
    parts: list[list[np.ndarray]] = [[] for _ in rows]
    layouts: list[Layout | None] = [None] * len(rows)
    errors: list[str | None] = [None] * len(rows)
    for i, res in zip(owner, results):
        if errors[i] is not None:
            continue
        if isinstance(res, tuple):
            res, layouts[i] = res
        if isinstance(res, np.ndarray):
            parts[i].append(res)
        else:
            errors[i] = getattr(res, "message", None) or str(res)
    out: list[Encoded] = []
    for r, p, err, lay in zip(rows, parts, errors, layouts):
        if err is None and not p:
            err = "the model gave no tokens"
        if err is not None:
            out.append(Encoded(r, error=err))
            continue
        tokens = p[0] if len(p) == 1 else np.concatenate(p, axis=0)
        if tokens.ndim != 2 or tokens.shape[1] != spec.dim:
            out.append(Encoded(r, error=(
                f"model {spec.model!r} gave shape {tuple(tokens.shape)} but index {spec.name!r} has dim {spec.dim}")))
            continue
        if not np.isfinite(tokens).all():
            out.append(Encoded(r, error="the model gave non-finite values"))
            continue
        out.append(Encoded(r, tokens=tokens, layout=lay if len(p) == 1 else None))
    return out
