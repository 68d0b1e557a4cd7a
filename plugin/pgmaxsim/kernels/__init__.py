"""MaxSim scoring as pure functions over arrays.

- :mod:`reference`: float64 ground truth every backend is tested against.
- :mod:`cpu`: fast NumPy over *packed* documents.
- :mod:`quantize`: int8 tokens with per-token scales (and binary signs).
- :mod:`gpu`: CuPy kernels (``pip install 'pgmaxsim[gpu]'``), imported lazily.

Packed layout (shared by every backend): all documents' tokens in one
``tokens`` array of shape ``(total_tokens, d)`` and ``offsets`` of shape
``(n_docs + 1,)`` (int64, non-decreasing, ``offsets[0] == 0``); document ``i``
is ``tokens[offsets[i]:offsets[i + 1]]``.

MaxSim (dot-product form): ``score(q, D) = sum_i max_j <q_i, D_j>``. A document
with no tokens scores ``-inf``. Padding is never scored as zero: the packed
layout has none, and padded inputs are masked with ``-inf`` before the max.
"""

from pgmaxsim.kernels.numpy_maxsim import (
    maxsim,
    maxsim_batch,
    maxsim_packed,
    pack,
    topk,
)
from pgmaxsim.kernels.reference import maxsim_reference, maxsim_reference_many

__all__ = [
    "maxsim",
    "maxsim_batch",
    "maxsim_packed",
    "maxsim_reference",
    "maxsim_reference_many",
    "pack",
    "topk",
]
