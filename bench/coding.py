"""Coding rows against a first-stage codebook: a training's fill (pgmaxsim.fs_train.batch_codes, as
the worker's trainer and maxsim.train_first_stage run it) of 256 int8 pages of 600-1,400 tokens, at
the codebook sizes of a 10K-page index (181 x 182) and a 100K-page one (256 x 488); best of 3.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/coding.py
    # the tree before, side by side:
    OPENBLAS_NUM_THREADS=1 PYTHONPATH=../old/plugin .venv/bin/python bench/coding.py
"""

from __future__ import annotations

import time

import numpy as np

from pgmaxsim import firststage as fs
from pgmaxsim import fs_train
from pgmaxsim.kernels import quantize

D = 128


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def main() -> None:
    rng = np.random.default_rng(0)
    rows = [unit(rng.standard_normal((int(rng.integers(600, 1400)), D))) for _ in range(256)]
    blobs = [quantize.encode_tokens(r, "int8") for r in rows]
    ns = [len(r) for r in rows]
    for nc, nf in ((181, 182), (256, 488)):
        cb = fs.Codebook(unit(rng.standard_normal((nc, D))), unit(rng.standard_normal((nc, nf, D))))
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            fs_train.batch_codes(cb, blobs, ns, D, "int8")
            best = min(best, time.perf_counter() - t)
        print(f"codebook {nc} x {nf}: fill of 256 pages {best:.2f} s = {best / 256 * 1e3:.2f} ms a page", flush=True)


if __name__ == "__main__":
    main()
