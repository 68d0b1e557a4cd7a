"""The computing part of training a codebook first stage (NumPy only, no database).

The training is one flow of SQL steps (sql/idempotent/038_fs_train.sql); what they need computed
is here, shared by the two drivers of that flow: a client (:func:`pgmaxsim.codebook.train`: the
worker, ``pgmaxsim index reindex NAME --first-stage``) and the server
(``maxsim.train_first_stage``, through ``maxsim._fs_kmeans_py`` / ``maxsim._fs_codes_py``).

- :func:`build`: the codebook of a sample of stored rows, sized by :func:`sizing`, its centroids
  rounded to half precision as the ``halfvec`` tables store them (so the codes the trainer assigns
  are the codes a writer assigns later from the stored codebook);
- :func:`batch_codes`: rows' distinct codes, flattened as the fill step takes them.

HOOK: per-row data of a new slot beside the codes (e.g. residual sketches) is computed in
:func:`batch_codes`'s caller from the same decoded tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from pgmaxsim import firststage as fs
from pgmaxsim.kernels import quantize


def sizing(n_tokens: int, options: dict[str, Any]) -> tuple[int, int]:
    """``(n_coarse, n_fine)`` for an index of ``n_tokens`` tokens: ~``tokens_per_code`` tokens per
    code but no more codes than PLAID's rule gives (the power of two at or below 16 sqrt(n_tokens),
    as ColBERTv2 / PLAID / WARP size their centroids) where that is over 4,096 (a smaller codebook
    costs little; the per-code sizing stays, as tuned), 256 coarse cells at most, and no more fine
    centroids per cell than the training sample can place (4 sample tokens per centroid) or
    ``max_fine``.

    Why PLAID's cap: every code costs its centroid row and, per segment of the sketch lists, a list
    row (~460 bytes together); at 10K pages (10M tokens) ~20 tokens per code meant 48-110K codes
    after k-means, 1.10-1.11x the raw fp16 bytes in all, where 32K codes gave 1.097x with the same
    needle recall and a faster search and training (bench/STORAGE.md section 10). From ~60M tokens
    the training sample's cap binds first, as before.

    >>> sizing(10_000_000, {}), sizing(130_000, {}), sizing(1_000, {}), sizing(100_000_000, {})
    ((181, 182), (64, 64), (7, 8), (256, 488))
    """
    per_code = int(options.get("tokens_per_code", 20))
    sample = min(n_tokens, int(options.get("train_sample", 500_000)))
    plaid = max(4096, 2 ** math.floor(math.log2(16 * math.sqrt(max(1, n_tokens)))))
    codes = max(1, min(n_tokens // per_code, plaid))
    n_coarse = max(1, min(256, math.isqrt(codes)))
    n_fine = max(1, min(int(options.get("max_fine", 2048)), math.ceil(codes / n_coarse),
                        sample // (4 * n_coarse)))
    return n_coarse, n_fine


def stored_tokens(blob: bytes, n: int, dim: int, storage: str) -> np.ndarray:
    """A row's stored tokens as float32 (its tier told by its length, as the scorer does)."""
    from pgmaxsim.plpy.api import row_storage

    tier = row_storage(len(blob), int(n), dim, storage)
    return quantize.dequantize(*quantize.decode_tokens(bytes(blob), dim, tier)).astype(np.float32)


def rounded(cb: fs.Codebook) -> fs.Codebook:
    """``cb`` with its centroids as ``halfvec`` stores them (float16, read back as float32)."""
    return fs.Codebook(cb.coarse.astype(np.float16).astype(np.float32),
                       cb.fine.astype(np.float16).astype(np.float32))


def build(blobs: Sequence[bytes], ns: Sequence[int], dim: int, storage: str, n_tokens: int,
          options: dict[str, Any], seed: int = 0) -> tuple[fs.Codebook, int]:
    """The codebook of an index of ``n_tokens`` tokens from the stored rows ``blobs`` (``ns``
    tokens each; a random sample of the index): about half of each row's tokens, at most option
    ``train_sample`` tokens in all. Returns it (rounded) and the number of sample tokens used."""
    rng = np.random.default_rng(seed)
    parts = []
    for blob, n in zip(blobs, ns):
        x = stored_tokens(blob, n, dim, storage)
        parts.append(x[rng.random(len(x)) < 0.5] if len(x) > 1 else x)
    x = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
    want = min(int(n_tokens), int(options.get("train_sample", 500_000)))
    if len(x) > want:
        x = x[rng.choice(len(x), size=want, replace=False)]
    if not len(x):
        raise ValueError("no tokens to train a first-stage codebook on")
    n_coarse, n_fine = sizing(int(n_tokens), options)
    return rounded(fs.train(x, n_coarse, n_fine, seed=seed)), len(x)


def batch_codes(cb: fs.Codebook, blobs: Sequence[bytes], ns: Sequence[int], dim: int,
                storage: str) -> tuple[list[int], list[int]]:
    """Rows' distinct codes (sorted) under ``cb``, flattened: ``(codes, per-row counts)``."""
    codes = fs.distinct_codes(cb, [stored_tokens(blob, n, dim, storage) for blob, n in zip(blobs, ns)])
    return np.concatenate(codes).astype(int).tolist() if codes else [], [len(c) for c in codes]
