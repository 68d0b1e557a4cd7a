"""ColVision encoders through colpali-engine's own classes.

Families: ``colqwen2_5`` (ColQwen2.5, colnomic), ``colqwen2``, ``colpali``,
``colidefics3`` (colSmol) — multi-vector, dim 128 — and ``biqwen2_5``
(nomic-embed-multimodal), single-vector (dim = the language model's hidden
size, last-token pooled).

Loading: the public checkpoints are PEFT LoRA adapters. When the model folder
or repository has an ``adapter_config.json``, its ``base_model_name_or_path``
is loaded with the family's class, the adapter is applied with
``peft.PeftModel.from_pretrained`` and merged (``merge_and_unload``) for
inference speed. The processor is read from the adapter's folder when it
ships one, else from the base.

Tokens kept: every position the model's own attention mask marks as real —
prompt, image and augmentation tokens included, padding dropped — which is
what colpali-engine's ``score_multi_vector`` scores (it pads with zero
vectors). Prompts: see :mod:`.prompts` (pinned per family and library era;
option ``prompt_format``).

Compatibility: colpali-engine 0.3.18 pins ``torch<2.14``; install it with
``pip install --no-deps colpali-engine`` over ``pgmaxsim[models]``.
``BiQwen2_5.from_pretrained`` in 0.3.18 fails on transformers 5 (it reads a
removed class attribute); pgmaxsim passes the Qwen key mapping itself.

Options: ``prompt_format`` (era or recorded name, default the installed
library's), ``max_num_visual_tokens`` (Qwen families: caps image tokens),
``attn_implementation``, ``local_files_only``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PgmaxsimError, one_line
from .base import Encoder, resolve_device, resolve_dtype
from .layout import Layout, text_layout
from .patch_grids import idefics3_layout, paligemma_layout, qwen_layout
from .prompts import prompt_format as get_prompt_format

log = logging.getLogger(__name__)

_CLASSES = {
    "colqwen2_5": ("ColQwen2_5", "ColQwen2_5_Processor"),
    "colqwen2": ("ColQwen2", "ColQwen2Processor"),
    "colpali": ("ColPali", "ColPaliProcessor"),
    "colidefics3": ("ColIdefics3", "ColIdefics3Processor"),
    "biqwen2_5": ("BiQwen2_5", "BiQwen2_5_Processor"),
}
_QWEN_KEY_MAPPING = {
    r"^model\.layers": "language_model.layers",
    r"^model\.embed_tokens": "language_model.embed_tokens",
    r"^model\.norm": "language_model.norm",
}
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


class ColpaliEngineMissing(PgmaxsimError, ImportError):
    """colpali-engine is not importable (it pins torch<2.14: install it without deps)."""

    def __init__(self) -> None:
        super().__init__(
            "colpali-engine is not installed: pip install 'pgmaxsim[models]' "
            "&& pip install --no-deps 'colpali-engine>=0.3.18'"
        )


def _import_colpali() -> Any:
    try:
        import torch  # noqa: F401
        from colpali_engine import models
    except ImportError as exc:
        raise ColpaliEngineMissing() from exc
    return models


def read_adapter_config(target: str, revision: str | None, local_files_only: bool) -> dict[str, Any] | None:
    """The ``adapter_config.json`` of a folder or hub repository, or None."""
    path = Path(target)
    if path.is_dir():
        f = path / "adapter_config.json"
        return json.loads(f.read_text()) if f.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        downloaded = hf_hub_download(target, "adapter_config.json", revision=revision,
                                     local_files_only=local_files_only)
    except Exception:  # noqa: BLE001 - not an adapter, or not reachable: from_pretrained reports
        return None
    return json.loads(Path(downloaded).read_text())


def _has_processor(target: str) -> bool:
    path = Path(target)
    if path.is_dir():
        return any((path / f).is_file() for f in _PROCESSOR_FILES)
    return True  # hub repos: try, fall back to the base on failure


def _fix_meta_parameters(net: Any, model: str) -> None:
    """Tie an lm_head left on the meta device to the input embeddings.

    colpali-engine 0.3.18's ColPali on transformers 5 declares no tied weights,
    so PaliGemma's (unused) ``lm_head`` is never materialised; encoding never
    calls it, but moving the model to a device fails. Any other parameter left
    on the meta device is a broken checkpoint.
    """
    meta = [n for n, p in net.named_parameters() if p.is_meta]
    for name in meta:
        if name.endswith("lm_head.weight"):
            module = net.get_submodule(name.rsplit(".", 1)[0])
            module.weight = net.get_input_embeddings().weight
    left = [n for n, p in net.named_parameters() if p.is_meta]
    if left:
        raise PgmaxsimError(f"model {model!r} left weights uninitialised: {', '.join(left[:5])}")


class ColVisionEncoder(Encoder):
    """ColQwen2.5 / ColQwen2 / ColPali / ColIdefics3 / BiQwen2.5 via colpali-engine."""

    modalities = frozenset({"text", "image"})

    def __init__(
        self,
        model: str,
        *,
        family: str,
        revision: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_tokens: int | None = None,
        prompt_format: str | None = None,
        max_num_visual_tokens: int | None = None,
        attn_implementation: str | None = None,
        local_files_only: bool = False,
    ) -> None:
        if family not in _CLASSES:
            raise PgmaxsimError(f"unknown ColVision family {family!r}")
        models = _import_colpali()
        import torch

        self._torch = torch
        self.name = model
        self.revision = revision
        self.family = family
        self.kind = "single" if family == "biqwen2_5" else "multi"
        self.device = resolve_device(device)
        self._dtype = resolve_dtype(dtype, self.device)
        if batch_tokens:
            self.batch_tokens = int(batch_tokens)
        self.format = get_prompt_format(family, prompt_format)
        self.prompt_format = self.format.name
        model_cls = getattr(models, _CLASSES[family][0])
        proc_cls = getattr(models, _CLASSES[family][1])

        load_kw: dict[str, Any] = {"dtype": self._dtype, "local_files_only": local_files_only}
        if attn_implementation:
            load_kw["attn_implementation"] = attn_implementation
        if family == "biqwen2_5":
            load_kw["key_mapping"] = dict(_QWEN_KEY_MAPPING)
        adapter = read_adapter_config(model, revision, local_files_only)
        self.base_model = adapter.get("base_model_name_or_path") if adapter else None
        try:
            if adapter:
                if not self.base_model:
                    raise PgmaxsimError(f"adapter {model!r} names no base_model_name_or_path")
                net = model_cls.from_pretrained(self.base_model, **load_kw)
                from peft import PeftModel

                net = PeftModel.from_pretrained(net, model, revision=revision,
                                                local_files_only=local_files_only)
                net = net.merge_and_unload()
            else:
                net = model_cls.from_pretrained(model, revision=revision, **load_kw)
        except PgmaxsimError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            what = f"base {self.base_model!r} of adapter {model!r}" if adapter else f"model {model!r}"
            raise PgmaxsimError(f"could not load {what}: {one_line(exc)}") from None
        _fix_meta_parameters(net, model)
        self._model = net.to(self.device).eval()
        self._processor = self._load_processor(proc_cls, model, revision, local_files_only)
        if max_num_visual_tokens:
            self._cap_visual_tokens(int(max_num_visual_tokens))
        self._check_prompt_pin()
        # Pin the document image prompt on this processor instance.
        self._processor.visual_prompt_prefix = self.format.image_prompt
        self.dim = self._infer_dim()

    # ---- loading helpers --------------------------------------------------

    def _load_processor(self, proc_cls: Any, model: str, revision: str | None, local_files_only: bool) -> Any:
        candidates: list[tuple[str, str | None]] = []
        if _has_processor(model):
            candidates.append((model, revision))
        if self.base_model:
            candidates.append((self.base_model, None))
        errors = []
        for source, rev in candidates:
            try:
                return proc_cls.from_pretrained(source, revision=rev, local_files_only=local_files_only)
            except (OSError, ValueError, TypeError, KeyError) as exc:
                errors.append(f"{source}: {one_line(exc)}")
        raise PgmaxsimError(f"could not load the processor of {model!r}: " + "; ".join(errors or ["no files"]))

    def _cap_visual_tokens(self, n: int) -> None:
        """Qwen families: at most ``n`` image tokens per page (28x28 px each)."""
        if self.family not in ("colqwen2_5", "colqwen2", "biqwen2_5"):
            raise PgmaxsimError(f"max_num_visual_tokens applies to the Qwen families, not {self.family}")
        ip = self._processor.image_processor
        shortest = ip.size.get("shortest_edge") or 0
        if n * 28 * 28 < shortest:
            raise PgmaxsimError(f"max_num_visual_tokens={n} is below the processor's minimum "
                                f"({shortest // (28 * 28)} tokens)")
        ip.size["longest_edge"] = n * 28 * 28
        if hasattr(ip, "max_pixels"):
            ip.max_pixels = n * 28 * 28

    def _max_image_pixels(self) -> int:
        ip = self._processor.image_processor
        size = getattr(ip, "size", None) or {}
        value = getattr(ip, "max_pixels", None) or (size.get("longest_edge") if self.family != "colidefics3" else None)
        if self.family == "colidefics3" and size.get("longest_edge"):
            value = int(size["longest_edge"]) ** 2
        return int(value or 1024 * 1024)

    def _check_prompt_pin(self) -> None:
        lib_prompt = getattr(type(self._processor), "visual_prompt_prefix", None)
        if isinstance(lib_prompt, str) and lib_prompt != self.format.image_prompt:
            log.info("%s: using pinned image prompt %r (installed colpali-engine has %r)",
                     self.prompt_format, self.format.image_prompt, lib_prompt)

    def _infer_dim(self) -> int:
        if self.kind == "multi":
            return int(getattr(self._model, "dim", 128))
        cfg = self._model.config
        text_cfg = getattr(cfg, "text_config", None)
        hidden = getattr(text_cfg, "hidden_size", None) or getattr(cfg, "hidden_size", None)
        if not hidden:
            raise PgmaxsimError(f"cannot tell the embedding size of {self.name!r}")
        return int(hidden)

    # ---- costs ------------------------------------------------------------

    def _text_cost(self, text: str) -> int:
        return max(4, len(text) // 3 + 24)

    def _image_cost(self, image: Any) -> int:
        seq = getattr(self._processor, "image_seq_length", None)
        if self.family == "colpali" and seq:
            return int(seq) + 16
        return max(16, min(image.width * image.height, self._max_image_pixels()) // (28 * 28) + 24)

    # ---- encoding ---------------------------------------------------------

    def _tokenize(self, strings: list[str]) -> Any:
        if self.family == "colpali":
            batch = self._processor.tokenizer(strings, text_pair=None, return_token_type_ids=False,
                                              return_tensors="pt", padding="longest")
            # PaliGemma attends bidirectionally over its prefix at inference (as
            # the transformers 4.x versions ColPali was made with did for text
            # without token_type_ids). transformers 5 falls back to another mask
            # when token_type_ids is absent *and* the batch is padded, so a
            # padded batch differed from one-by-one; all-prefix ids fix that.
            batch["token_type_ids"] = self._torch.zeros_like(batch["input_ids"])
            return batch
        return self._processor(text=strings, return_tensors="pt", padding="longest")

    def _forward(self, batch: Any) -> list[np.ndarray]:
        torch = self._torch
        batch = dict(batch)
        batch.pop("labels", None)
        mask = batch["attention_mask"].bool()
        for k, v in list(batch.items()):
            if hasattr(v, "to"):
                v = v.to(self.device)
                if k == "pixel_values" and v.is_floating_point():
                    v = v.to(self._dtype)
                batch[k] = v
        with torch.inference_mode():
            out = self._model(**batch)
        out = out.float().cpu().numpy()
        if self.kind == "single":
            return [out[i][None, :] for i in range(out.shape[0])]
        mask_np = mask.numpy()
        return [out[i][mask_np[i]] for i in range(out.shape[0])]

    def _encode_images(self, images: list[Any]) -> list[np.ndarray]:
        return self._forward(self._processor.process_images(images))

    def _laid_out_images(self, images: list[Any]) -> list[tuple[np.ndarray, Layout | None]]:
        batch = self._processor.process_images(images)
        layouts = [self._page_layout(batch, i) for i in range(len(images))]
        return list(zip(self._forward(batch), layouts))

    def _page_layout(self, batch: Any, i: int) -> Layout | None:
        """Item ``i``'s patch grid (:mod:`.patch_grids`) over its kept positions; None for
        the single-vector family, whose one vector is no patch."""
        if self.kind == "single":
            return None
        keep = batch["attention_mask"][i].bool().numpy()
        ids = batch["input_ids"][i].numpy()[keep]
        proc, tok = self._processor, self._processor.tokenizer
        if self.family in ("colqwen2_5", "colqwen2"):
            return qwen_layout(ids, tok.convert_tokens_to_ids("<|image_pad|>"), batch["image_grid_thw"][i].tolist(),
                               int(proc.image_processor.merge_size))
        if self.family == "colpali":
            size = proc.image_processor.size
            patch = int(self._model.config.vision_config.patch_size)
            return paligemma_layout(ids, tok.convert_tokens_to_ids("<image>"), int(size["height"]) // patch,
                                    int(size["width"]) // patch)
        if self.family == "colidefics3":
            return idefics3_layout(tok.convert_ids_to_tokens(ids.tolist()), "<image>", int(proc.image_seq_len))
        return None

    def _text_batch(self, texts: list[str]) -> tuple[list[str], Any]:
        bos = self._processor.tokenizer.bos_token or ""
        strings = [self.format.document_text(t, bos=bos) for t in texts]
        return strings, self._tokenize(strings)

    def _encode_text_documents(self, texts: list[str]) -> list[np.ndarray]:
        return self._forward(self._text_batch(texts)[1])

    def _laid_out_text_documents(self, texts: list[str]) -> list[tuple[np.ndarray, Layout | None]]:
        strings, batch = self._text_batch(texts)
        spans = self._text_spans(texts, strings, batch)
        return list(zip(self._forward(batch), spans))

    def _text_spans(self, texts: list[str], strings: list[str], batch: Any) -> list[Layout | None]:
        """Character spans in each text of its kept tokens: the same strings tokenized again with
        offsets (the prompt around a text is cut off: its tokens get none)."""
        tok = self._processor.tokenizer
        if not getattr(tok, "is_fast", False):
            return [None] * len(texts)
        again = tok(strings, padding="longest", return_offsets_mapping=True, return_tensors="np")
        out: list[Layout | None] = []
        for i, (text, s) in enumerate(zip(texts, strings)):
            keep = batch["attention_mask"][i].bool().numpy()
            if not s.endswith(text) or not np.array_equal(again["input_ids"][i], batch["input_ids"][i].numpy()):
                out.append(None)
                continue
            start = len(s) - len(text)
            off = again["offset_mapping"][i][keep].astype(np.int64) - start
            none = (off[:, 0] < 0) | (off[:, 1] <= off[:, 0])
            off[none] = -1
            out.append(text_layout(off))
        return out

    def query_strings(self, texts: list[str]) -> list[str]:
        """The exact strings handed to the tokenizer for these queries."""
        tok = self._processor.tokenizer
        return [self.format.query(t, bos=tok.bos_token or "", pad=tok.pad_token or "") for t in texts]

    def query_token_strings(self, text: str) -> list[str] | None:
        """Each query vector's token, decoded (prompt and augmentation tokens included)."""
        if self.kind == "single":
            return None
        batch = self._tokenize(self.query_strings([text]))
        ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
        return [self._processor.tokenizer.decode([t]) for t in ids]

    def _encode_queries(self, texts: list[str]) -> list[np.ndarray]:
        return self._forward(self._tokenize(self.query_strings(texts)))
