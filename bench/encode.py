"""Encoder throughput: passages/s, pages/s, queries/s; prints a table.

    python bench/encode.py                      # MiniLM + every tiny family, CPU
    python bench/encode.py --device cuda        # same on a GPU
    python bench/encode.py --only minilm --n 512

Rows:
- ``minilm``: the bundled all-MiniLM-L6-v2 (the real default model) on
  English passages of ~45 words, and short queries.
- ``tiny-<family>``: random-init tiny models of each ColVision family built
  like the tests do (tests/encoders_tiny.py); page images are 448x448 noise,
  which the tiny processors downscale to at most 112x112. These measure the
  pipeline (processor, batching, padding removal), not a real model's speed.
- ``render_pdf``: pypdfium2 rendering at 144 dpi plus text extraction, per page.

Times are wall-clock after one warm-up batch; torch threads = all cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny-model builders live with the tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ["retrieval", "late", "interaction", "token", "embedding", "database", "index", "query", "page", "table", "figure", "chart", "revenue", "quarter", "growth", "model", "vision", "language", "document", "postgres", "vector", "score", "maximum", "similarity", "tensor", "batch", "memory", "throughput", "latency"]


def passages(n: int, words: int = 45, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=words)) + "." for _ in range(n)]


def images(n: int, size: int = 448, seed: int = 0) -> list:
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def timed(fn, items: list) -> tuple[float, int]:
    fn(items[: min(8, len(items))])  # warm-up
    if _cuda():
        import torch

        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn(items)
    if _cuda():
        import torch

        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tokens = sum(o.shape[0] for o in out if hasattr(o, "shape"))
    return dt, tokens


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def build_tiny(root: Path) -> dict[str, Path]:
    import encoders_tiny as tiny

    return {
        "colqwen2_5": tiny.build_colqwen2_5(root / "colqwen2_5"),
        "colqwen2": tiny.build_colqwen2(root / "colqwen2"),
        "biqwen2_5": tiny.build_colqwen2_5(root / "biqwen2_5", single_vector=True),
        "colpali": tiny.build_colpali(root / "colpali"),
        "colidefics3": tiny.build_colidefics3(root / "colidefics3"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu / cuda (default: auto)")
    ap.add_argument("--dtype", default=None, help="float32 / bfloat16 / float16 (default: auto)")
    ap.add_argument("--n", type=int, default=256, help="passages / pages per row")
    ap.add_argument("--batch-tokens", type=int, default=None)
    ap.add_argument("--only", default=None, help="comma list: minilm,tiny,pdf")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else {"minilm", "tiny", "pdf"}

    from pgmaxsim.encoders import load_encoder, render_pdf

    rows: list[tuple[str, str, int, float, float]] = []  # (model, what, n, seconds, tokens/item)
    common = {"device": args.device, "dtype": args.dtype, "batch_tokens": args.batch_tokens}

    if "minilm" in only:
        enc = load_encoder(**common)
        docs = passages(args.n)
        dt, tok = timed(enc.encode_documents, docs)
        rows.append(("minilm", "passages", len(docs), dt, tok / len(docs)))
        qs = [" ".join(p.split()[:6]) for p in passages(args.n, seed=1)]
        dt, tok = timed(enc.encode_queries, qs)
        rows.append(("minilm", "queries", len(qs), dt, tok / len(qs)))
        device = enc.device

    if "tiny" in only:
        with tempfile.TemporaryDirectory() as tmp:
            dirs = build_tiny(Path(tmp))
            pages = images(min(args.n, 128))
            for fam, path in dirs.items():
                enc = load_encoder(str(path), **common)
                device = enc.device
                dt, tok = timed(enc.encode_documents, pages)
                rows.append((f"tiny-{fam}", "pages", len(pages), dt, tok / len(pages)))
                qs = [" ".join(p.split()[:6]) for p in passages(len(pages), seed=2)]
                dt, tok = timed(enc.encode_queries, qs)
                rows.append((f"tiny-{fam}", "queries", len(qs), dt, tok / len(qs)))

    if "pdf" in only:
        pdf = ROOT / "tests" / "data" / "three_pages.pdf"
        reps = 20
        t0 = time.perf_counter()
        for _ in range(reps):
            render_pdf(pdf, dpi=144)
        dt = time.perf_counter() - t0
        rows.append(("render_pdf", "pages@144dpi", 3 * reps, dt, 0.0))

    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        threads = 0
    dev = locals().get("device", "cpu")
    gpu = ""
    if str(dev).startswith("cuda"):
        import torch

        gpu = f" ({torch.cuda.get_device_name(0)})"
    print(f"encoder throughput — device {dev}{gpu}, torch threads {threads}, cpus {os.cpu_count()}")
    print(f"{'model':<18} {'items':<13} {'n':>5} {'seconds':>8} {'items/s':>9} {'tokens/item':>12}")
    for model, what, n, dt, tpi in rows:
        print(f"{model:<18} {what:<13} {n:>5} {dt:>8.2f} {n / dt:>9.1f} {tpi:>12.1f}")


if __name__ == "__main__":
    main()
