"""The write path's client cost per page, without a server: what ``writes.write_rows`` computes for each
row before the COPY sends it (validation, pooling, quantizing, the pooled vector, the first stage's codes).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/storage_encode.py --pages 64 --reps 3

bench/search.py's synthetic ColQwen-shaped pages (600-1,400 tokens, d=128), int8 and fp16, in batches
of 32 rows (bench/tiers.py's), with a codebook trained as the index would be at 1M tokens
(``fs_train.sizing``: 223 x 225) and without one. Wall time per page of ``writes.encode_rows``: with a
codebook the codes are assigned on a helper thread, so on two cores this is below the CPU spent.
Compare two trees by running this file with each one's ``PYTHONPATH`` in turn, interleaved.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pgmaxsim import codebook, fs_train, writes
from pgmaxsim import firststage as fs
from pgmaxsim.registry import IndexSpec
from search import Corpus


def spec(storage: str) -> IndexSpec:
    return IndexSpec(id=1, name="bench", source=None, source_schema=None, source_table=None, id_column="id",
                     id_type="integer", text_column=None, image_column=None, model=None, model_revision=None,
                     dim=128, pooling="codebook", options={"storage": storage, "fs_gen": 1}, token_table="tok_1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    corpus = Corpus(1000, seed=0)
    sample = np.concatenate([corpus.page(i) for i in range(300)]).astype(np.float32)
    sample = sample[np.random.default_rng(0).random(len(sample)) < 0.3]
    cb = fs_train.rounded(fs.train(sample, *fs_train.sizing(1_000_000, {}), rounds=3))
    pages = [corpus.page(i) for i in range(600, 600 + args.pages)]
    print(f"{writes.__file__}: {args.pages} pages, codebook {cb.n_coarse} x {cb.n_fine}, load {os.getloadavg()[0]:.1f}")
    for storage in ("int8", "fp16"):
        for book in (codebook.Live(1, cb), None):
            times = []
            for _ in range(args.reps):
                t = time.perf_counter()
                for a in range(0, len(pages), args.batch):
                    part = pages[a:a + args.batch]
                    writes.encode_rows(spec(storage), {str(i): i for i in range(len(part))}, part,
                                       None, None, None, None, book)
                times.append((time.perf_counter() - t) / len(pages) * 1e3)
            print(f"{storage}, {'with codes' if book else 'no codes  '}: ms/page " + " ".join(f"{x:.2f}" for x in times))
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
