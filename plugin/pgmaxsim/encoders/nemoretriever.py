"""NVIDIA llama-nemoretriever-colembed (1B: dim 2048, 3B: dim 3072) via its remote code.

The model ships its own modeling code (``trust_remote_code=True``, passed
for this family only; pin ``revision`` to a commit you have reviewed). Its
API: ``forward_queries(list[str], batch_size)`` and
``forward_passages(list[PIL.Image], batch_size)`` return zero-padded
``(batch, tokens, dim)`` tensors (or lists of ``(tokens, dim)``);
``get_scores`` is MaxSim over them. pgmaxsim drops the all-zero padding rows
(a zero row would score 0, beating negative similarities) and L2-normalises
each token.

Requirements of the v1 remote code: its modeling file imports ``flash_attn``
at module top and it runs with ``attn_implementation="flash_attention_2"`` on
a CUDA device in bfloat16. For the NVIDIA repositories pgmaxsim checks both
*before* loading anything and raises a PgmaxsimError naming what is missing;
for any other remote-code model with this API, an ImportError of
``flash_attn`` while loading gives the same clear error.

Documents: page images only (text passages are not part of the v1 API).
Option ``max_input_tiles`` (the model's image tiling limit: more tiles, more
tokens per page) is set on the loaded model and its config.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any

import numpy as np

from ..errors import MissingExtraError, PgmaxsimError, one_line
from .base import Encoder, resolve_device, resolve_dtype

NVIDIA_PATTERN = re.compile(r"^nvidia/llama-nemoretriever-colembed-", re.IGNORECASE)
KNOWN_DIMS = {"1b": 2048, "3b": 3072}
_PAD_EPS = 1e-6


def check_requirements(model: str, device: str) -> None:
    """Raise PgmaxsimError when an NVIDIA colembed model cannot run here."""
    if not NVIDIA_PATTERN.match(model):
        return
    missing = []
    if not device.startswith("cuda"):
        missing.append(f"a CUDA GPU (device is {device!r})")
    if importlib.util.find_spec("flash_attn") is None:
        missing.append("flash_attn (pip install flash-attn --no-build-isolation)")
    if missing:
        raise PgmaxsimError(f"model {model!r} (remote code) needs " + " and ".join(missing))


def strip_padding(emb: np.ndarray) -> np.ndarray:
    """Drop all-zero rows of a (tokens, dim) array (the model's padding)."""
    emb = np.asarray(emb, dtype=np.float32)
    keep = np.linalg.norm(emb, axis=-1) > _PAD_EPS
    return emb[keep]


class NemoRetrieverEncoder(Encoder):
    """llama-nemoretriever-colembed (or any remote-code model with its API)."""

    family = "nemoretriever"
    kind = "multi"
    modalities = frozenset({"image"})
    prompt_format = "remote-code"

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_tokens: int | None = None,
        max_input_tiles: int | None = None,
        local_files_only: bool = False,
    ) -> None:
        try:
            import torch
            import transformers
        except ImportError as exc:
            raise MissingExtraError("torch/transformers", "models") from exc
        self._torch = torch
        self.name = model
        self.revision = revision
        self.device = resolve_device(device)
        check_requirements(model, self.device)
        self._dtype = resolve_dtype(dtype, self.device)
        if batch_tokens:
            self.batch_tokens = int(batch_tokens)
        kw: dict[str, Any] = {"trust_remote_code": True, "revision": revision, "dtype": self._dtype,
                              "local_files_only": local_files_only}
        if NVIDIA_PATTERN.match(model):
            kw["attn_implementation"] = "flash_attention_2"
        try:
            net = transformers.AutoModel.from_pretrained(model, **kw)
        except ImportError as exc:
            if "flash_attn" in str(exc) or getattr(exc, "name", "") == "flash_attn":
                raise PgmaxsimError(
                    f"model {model!r} (remote code) needs flash_attn and a CUDA GPU: "
                    "pip install flash-attn --no-build-isolation"
                ) from None
            raise PgmaxsimError(f"model {model!r} (remote code) needs a missing package: "
                                f"{one_line(exc)}") from None
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise PgmaxsimError(f"could not load model {model!r}: {one_line(exc)}") from None
        for attr in ("forward_queries", "forward_passages"):
            if not callable(getattr(net, attr, None)):
                raise PgmaxsimError(f"model {model!r} has no {attr}(): not a colembed-style model")
        if max_input_tiles is not None:
            net.config.max_input_tiles = int(max_input_tiles)
            if hasattr(net, "max_input_tiles"):
                net.max_input_tiles = int(max_input_tiles)
        self._model = net.to(self.device).eval()
        self.max_input_tiles = getattr(net.config, "max_input_tiles", None)
        self.dim = self._probe_dim()

    def _probe_dim(self) -> int:
        out = self._model_call("forward_queries", ["dimension probe"])
        return int(out[0].shape[-1])

    def _model_call(self, method: str, items: list[Any]) -> list[np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            out = getattr(self._model, method)(items, batch_size=max(1, len(items)))
        if isinstance(out, torch.Tensor):
            if out.ndim == 2:  # a single item without the batch axis
                out = out[None]
            seqs = [out[i] for i in range(out.shape[0])]
        else:
            seqs = list(out)
        if len(seqs) != len(items):
            raise PgmaxsimError(f"{self.name!r}.{method} returned {len(seqs)} results for {len(items)} inputs")
        return [strip_padding(s.float().cpu().numpy() if hasattr(s, "cpu") else np.asarray(s)) for s in seqs]

    def _image_cost(self, image: Any) -> int:
        tiles = int(self.max_input_tiles or 6) + 1
        return 256 * tiles

    def _encode_images(self, images: list[Any]) -> list[np.ndarray]:
        return self._model_call("forward_passages", images)

    def _encode_queries(self, texts: list[str]) -> list[np.ndarray]:
        return self._model_call("forward_queries", texts)
