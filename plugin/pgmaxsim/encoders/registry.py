"""Model name → family, and :func:`load_encoder`.

A model is named in one of three ways:

1. ``None`` or ``"default"`` (or ``"sentence-transformers/all-MiniLM-L6-v2"``):
   the bundled offline MiniLM.
2. A Hugging Face repository id matched against the known patterns below,
   e.g. ``vidore/colqwen2.5-v0.2`` → ``colqwen2_5``.
3. An explicit family prefix, ``"<family>:<repo id or local path>"``, e.g.
   ``"text:BAAI/bge-small-en-v1.5"`` or ``"colqwen2_5:/models/my-finetune"``.
   This is how any Hugging Face text encoder is used.

A local directory without a prefix is recognised from its files:
``adapter_config.json`` (a PEFT adapter: the family of its base),
``config.json``'s ``architectures``/``model_type``/``auto_map``.
Anything else is an error naming the known families.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import PgmaxsimError
from .base import Encoder

FAMILIES: dict[str, str] = {
    "text": "any Hugging Face text encoder's token embeddings (default: all-MiniLM-L6-v2, offline)",
    "colqwen2_5": "ColQwen2.5 / colnomic (colpali-engine ColQwen2_5)",
    "colqwen2": "ColQwen2 (colpali-engine ColQwen2)",
    "colpali": "ColPali / PaliGemma (colpali-engine ColPali)",
    "colidefics3": "ColIdefics3 / colSmol (colpali-engine ColIdefics3)",
    "biqwen2_5": "BiQwen2.5 / nomic-embed-multimodal, single-vector (colpali-engine BiQwen2_5)",
    "nemoretriever": "NVIDIA llama-nemoretriever-colembed (remote code; CUDA + flash_attn)",
}

DEFAULT_ALIASES = {
    "default", "minilm", "all-minilm-l6-v2",
    "sentence-transformers/all-minilm-l6-v2",
}

# (pattern on the lower-cased repo id, family); first match wins.
_PATTERNS: list[tuple[str, str]] = [
    (r"^nvidia/llama-nemoretriever-colembed-", "nemoretriever"),
    (r"^nomic-ai/colnomic-embed-multimodal-", "colqwen2_5"),
    (r"^nomic-ai/nomic-embed-multimodal-", "biqwen2_5"),
    (r"^vidore/colqwen2\.5", "colqwen2_5"),
    (r"^vidore/colqwen2_5", "colqwen2_5"),
    (r"^vidore/biqwen2\.5", "biqwen2_5"),
    (r"^vidore/colqwen2", "colqwen2"),
    (r"^vidore/colpali", "colpali"),
    (r"^vidore/colsmol", "colidefics3"),
    (r"^vidore/colsmolvlm", "colidefics3"),
    (r"^vidore/colidefics3", "colidefics3"),
]

_ARCHITECTURES = {
    "ColQwen2_5": "colqwen2_5", "BiQwen2_5": "biqwen2_5", "ColQwen2": "colqwen2",
    "ColPali": "colpali", "ColIdefics3": "colidefics3",
}
_MODEL_TYPES = {
    "qwen2_5_vl": "colqwen2_5", "qwen2_vl": "colqwen2", "paligemma": "colpali",
    "idefics3": "colidefics3",
}


# Embedding size of the models whose size is known without loading them (lower-cased names).
# The SQL side's maxsim._known_model_dim holds the same table (create_index without dim).
KNOWN_DIMS: dict[str, int] = {
    "sentence-transformers/all-minilm-l6-v2": 384, "all-minilm-l6-v2": 384, "minilm": 384,
    "vidore/colqwen2.5-v0.2": 128, "vidore/colqwen2-v1.0": 128, "vidore/colpali-v1.3": 128,
    "vidore/colpali-v1.2": 128, "nomic-ai/colnomic-embed-multimodal-3b": 128,
    "nomic-ai/colnomic-embed-multimodal-7b": 128,
    "nvidia/llama-nemoretriever-colembed-3b-v1": 3072, "nvidia/llama-nemoretriever-colembed-1b-v1": 2048,
}


def model_dim(model: str, revision: str | None = None) -> int:
    """The embedding size of ``model``: :data:`KNOWN_DIMS`, else load the model and ask it.

    >>> model_dim("vidore/colqwen2.5-v0.2")
    128
    """
    known = KNOWN_DIMS.get(model.strip().lower())
    if known is not None:
        return known
    try:
        return int(load_encoder(model, revision=revision).dim)
    except PgmaxsimError as e:
        raise PgmaxsimError(f"cannot tell the dim of model {model!r} ({e}); pass --dim") from None


def known_families() -> str:
    return ", ".join(FAMILIES)


def _family_from_dir(path: Path) -> str | None:
    adapter = path / "adapter_config.json"
    if adapter.is_file():
        try:
            base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        except ValueError:
            base = None
        if base:
            fam = _family_from_dir(Path(base)) if Path(base).is_dir() else _family_from_repo(base)
            if fam:
                return fam
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        return None
    try:
        cfg = json.loads(cfg_file.read_text())
    except ValueError:
        return None
    auto_map = json.dumps(cfg.get("auto_map", {})).lower()
    if "nemoretriever" in auto_map or "colembed" in auto_map:
        return "nemoretriever"
    for arch in cfg.get("architectures") or []:
        if arch in _ARCHITECTURES:
            return _ARCHITECTURES[arch]
    model_type = cfg.get("model_type", "")
    if model_type in _MODEL_TYPES:
        return _MODEL_TYPES[model_type]
    if "hidden_size" in cfg and (path / "tokenizer_config.json").is_file():
        return "text"  # any other transformers encoder folder
    return None


def _family_from_repo(repo: str) -> str | None:
    low = repo.lower()
    for pattern, fam in _PATTERNS:
        if re.search(pattern, low):
            return fam
    return None


def resolve_family(model: str | None) -> tuple[str, str]:
    """Return ``(family, model_id_or_path)`` for a model name (see module doc)."""
    if model is None or model.strip().lower() in DEFAULT_ALIASES:
        return "text", "default"
    model = model.strip()
    head, sep, rest = model.partition(":")
    if sep and head in FAMILIES and rest:
        return head, rest
    path = Path(model).expanduser()
    if path.is_dir():
        fam = _family_from_dir(path)
        if fam:
            return fam, str(path)
        raise PgmaxsimError(
            f"cannot tell the model family of folder {model!r}; prefix it with one of: "
            f"{known_families()} (e.g. 'text:{model}')"
        )
    fam = _family_from_repo(model)
    if fam:
        return fam, model
    raise PgmaxsimError(
        f"unknown model {model!r}; known families: {known_families()}; "
        f"use 'text:<repo>' for any Hugging Face text encoder"
    )


def load_encoder(
    model: str | None = None,
    *,
    revision: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    batch_tokens: int | None = None,
    **options: Any,
) -> Encoder:
    """Load an encoder by model name (see module doc for the naming rules).

    ``device``: "cuda", "cuda:1", "cpu" or None (auto). ``dtype``: "float32",
    "float16", "bfloat16" or None (bfloat16 on CUDA, float32 on CPU).
    ``batch_tokens``: the padded-token budget of one forward batch.
    Family-specific ``options`` (e.g. ``prompt_format``, ``max_input_tiles``,
    ``max_length``, ``local_files_only``) are passed on.
    """
    family, target = resolve_family(model)
    common: dict[str, Any] = {"revision": revision, "device": device, "dtype": dtype, "batch_tokens": batch_tokens}
    if family == "text":
        from .text import (
            DEFAULT_MODEL_NAME,
            TextEncoder,
            default_model_path,
            load_default,
        )

        if target == "default":
            if revision is not None:
                raise PgmaxsimError("the bundled default model has no revisions; leave revision unset")
            common.pop("revision")
            return load_default(**common, **options)
        if target.lower() == DEFAULT_MODEL_NAME.lower():
            return TextEncoder(DEFAULT_MODEL_NAME, str(default_model_path()), local_files_only=True,
                               **common, **options)
        return TextEncoder(target, target, **common, **options)
    if family == "nemoretriever":
        from .nemoretriever import NemoRetrieverEncoder

        return NemoRetrieverEncoder(target, **common, **options)
    from .colpali import ColVisionEncoder

    return ColVisionEncoder(target, family=family, **common, **options)
