"""CPU scoring of stored tokens, side by side in one run: fp32 arrays, the stored tiers, CPU peers.

    .venv/bin/python bench/scoring_cpu.py                  # 64 pages of ~1,000 tokens, d=128, 24-token query
    .venv/bin/python bench/scoring_cpu.py --pages 256 --rounds 60
    RAYON_NUM_THREADS=1 .venv/bin/python bench/scoring_cpu.py   # the peers on one thread, like a backend

The pages are bench/search.py's synthetic corpus. Every path gets the same pages and
query, and the paths run interleaved, round after round, so load from other processes hits
them alike; the table shows each path's best and median round. Our paths run on one BLAS
thread, as in a PostgreSQL backend (pgmaxsim.plpy caps it); the peers (``pip install
maxsim-cpu fast-maxsim``, bench only) use their own threads (all cores unless
RAYON_NUM_THREADS says otherwise). Scores are checked against the float64 reference of
the values each path reads.

Paths:
- fp32 arrays, per page: ``(page @ q.T).max(0).sum()`` over float32 arrays in memory
  (the old in-backend loop fed fp32: the target's yardstick).
- fp32 arrays, doc_maxes: pgmaxsim.kernels.numpy_maxsim.maxsim_docs over the same float32 arrays.
- fp16 bytes, table gather: the old in-backend path (plpy.tokens.row_words + 65,536-entry table).
- fp16 bytes / int8 bytes: pgmaxsim.plpy.scoring.maxsim_stored from the stored bytes (decoding included).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from pgmaxsim.kernels import numpy_maxsim as cpu
from pgmaxsim.kernels.quantize import decode_tokens, dequantize, encode_tokens
from pgmaxsim.kernels.reference import maxsim_reference_many
from pgmaxsim.plpy import scoring as plpy_cpu
from pgmaxsim.plpy.tokens import convert, row_words
from search import Corpus


def old_fp16_gather(q: np.ndarray, blobs: list[bytes], dim: int) -> np.ndarray:
    """The in-backend scorer before doc_maxes: table gather into one buffer, a product per row."""
    rows = [row_words(b, None, dim) for b in blobs]
    q_t = np.ascontiguousarray(q.T)
    buf = np.empty((max(w.shape[0] for w, _ in rows), dim), dtype=np.float32)
    out = np.empty(len(rows), dtype=np.float32)
    for i, (w, t) in enumerate(rows):
        out[i] = (convert(w, t, buf[: w.shape[0]]) @ q_t).max(axis=0).sum(dtype=np.float64)
    return out


def per_page_fp32(q: np.ndarray, pages: list[np.ndarray]) -> np.ndarray:
    q_t = np.ascontiguousarray(q.T)
    return np.array([(p @ q_t).max(axis=0).sum(dtype=np.float64) for p in pages], dtype=np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--query-tokens", type=int, default=24)
    args = ap.parse_args()

    corpus = Corpus(max(args.pages, 256), seed=0)
    pages16 = [corpus.page(i) for i in range(args.pages)]
    pages32 = [p.astype(np.float32) for p in pages16]
    q = corpus.query(0, args.query_tokens).astype(np.float32)
    dim = pages16[0].shape[1]
    fp16_blobs = [encode_tokens(p, "fp16") for p in pages16]
    int8_blobs = [encode_tokens(p, "int8") for p in pages16]
    n_tok = sum(len(p) for p in pages16)

    paths: dict[str, tuple[Callable[[], np.ndarray], list[np.ndarray]]] = {
        "fp32 arrays, per page": (lambda: per_page_fp32(q, pages32), pages32),
        "fp32 arrays, doc_maxes": (lambda: cpu.maxsim_docs(q, pages32), pages32),
        "fp16 bytes, table gather (old)": (lambda: old_fp16_gather(q, fp16_blobs, dim), pages16),
        "fp16 bytes, maxsim_stored": (lambda: plpy_cpu.maxsim_stored(q, fp16_blobs, dim, "fp16"), pages16),
        "int8 bytes, maxsim_stored": (lambda: plpy_cpu.maxsim_stored(q, int8_blobs, dim, "int8"),
                                      [dequantize(*decode_tokens(b, dim, "int8")) for b in int8_blobs]),
    }
    peers = {}
    for name, mod in (("maxsim-cpu (fp32)", "maxsim_cpu"), ("fast-maxsim (fp32)", "fast_maxsim")):
        try:
            m = __import__(mod)
        except ImportError as e:
            print(f"{name}: not installed ({e}); pip install {mod.replace('_', '-')} to compare")
            continue
        peers[name] = (lambda m=m: np.asarray(m.maxsim_scores_variable(q, pages32)), pages32)
    paths.update(peers)

    times: dict[str, list[float]] = {k: [] for k in paths}
    with threadpool_limits(1, user_api="blas"):
        for name, (fn, values) in paths.items():   # correctness first (and warm-up)
            ref = maxsim_reference_many(q, values)
            err = float(np.abs(np.asarray(fn(), dtype=np.float64) - ref).max())
            if err > 2e-3:
                raise SystemExit(f"{name}: max |score - float64 reference| = {err:.2e}")
        for _ in range(args.rounds):
            for name, (fn, _) in paths.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)

    base = min(times["fp32 arrays, per page"])
    print(f"\n{args.pages} pages, {n_tok} tokens (mean {n_tok / args.pages:.0f}), d={dim}, "
          f"{args.query_tokens}-token query; {args.rounds} interleaved rounds; ours on 1 BLAS thread\n")
    print("| path | best ms | median ms | best / fp32 per page |\n|---|---:|---:|---:|")
    for name, ts in times.items():
        print(f"| {name} | {min(ts) * 1e3:.2f} | {statistics.median(ts) * 1e3:.2f} | {min(ts) / base:.2f}x |")


if __name__ == "__main__":
    main()
