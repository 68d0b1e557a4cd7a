"""Quality of the stored tiers: int8, and int8 + token pooling, against exact fp16 MaxSim.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/storage_quality.py              # ~5 min on 2 cores
    HF_HUB_OFFLINE=1 .venv/bin/python bench/storage_quality.py --pages 200 --queries 40

Two corpora, every document scored (exhaustive search, no prefilter), so the numbers are the
storage's alone:

- synthetic: bench/search.py's ColQwen-shaped pages (600-1400 tokens, d=128) and its queries
  (24 tokens aimed at a page);
- text: the bundled corpus (data/corpus: field-notes.txt and the Northwind report's text)
  cut into sentences, embedded with the bundled MiniLM (encoders/text.py, d=384); queries are
  the field notes' headings plus, for every 4th sentence, its words 3-10.

Exact = float64 MaxSim of the fp16 tokens (today's storage). Stored tiers, scored with
pgmaxsim.kernels.numpy_maxsim.maxsim_docs on the decoded bytes (pgmaxsim.kernels.quantize): ``int8``
(one float32 scale per token) and ``int8 + pool_factor N`` (pgmaxsim.pooling.pool_tokens at
ingest, then int8). Reported: top-1 agreement with exact, recall@10 of exact's top 10,
score-mass@10 (exact score of the tier's top 10 / exact score of the true top 10), and bytes
per row against raw fp16 (n x d x 2).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from pgmaxsim import pooling
from pgmaxsim.kernels import numpy_maxsim as cpu
from pgmaxsim.kernels.quantize import decode_tokens, encode_tokens
from search import Corpus, exact_scores


def fidelity(exact: np.ndarray, got: np.ndarray, k: int = 10) -> tuple[float, float, float]:
    """exact, got: (n_queries, n_docs) -> (top-1 agreement, recall@k, score-mass@k)."""
    top1 = recall = mass = 0.0
    for e, g in zip(exact, got):
        ref = cpu.topk(e, k)[0]
        found = cpu.topk(g, k)[0]
        top1 += found[0] == ref[0]
        recall += len(set(found.tolist()) & set(ref.tolist())) / len(ref)
        mass += e[found].sum() / e[ref].sum()
    n = len(exact)
    return top1 / n, recall / n, mass / n


def tier_scores(docs: list[np.ndarray], queries: list[np.ndarray], storage: str,
                pool_factor: int) -> tuple[np.ndarray, float, float]:
    """(n_queries, n_docs) scores of what the tier stores, bytes per row, pooling seconds per row."""
    t = time.perf_counter()
    pooled = [pooling.pool_tokens(d, pool_factor) for d in docs]
    pool_s = (time.perf_counter() - t) / len(docs)
    blobs = [encode_tokens(p, storage) for p in pooled]
    dim = docs[0].shape[1]
    decoded = [decode_tokens(b, dim, storage) for b in blobs]
    toks = [a for a, _ in decoded]
    scales = None if storage == "fp16" else [s for _, s in decoded]
    scores = np.stack([cpu.maxsim_docs(q, toks, scales) for q in queries])  # type: ignore[arg-type]
    return scores, sum(len(b) for b in blobs) / len(docs), pool_s


def synthetic(n_pages: int, n_queries: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    corpus = Corpus(n_pages, seed=0)
    pages = [corpus.page(i) for i in range(n_pages)]
    rng = np.random.default_rng(3)
    targets = rng.choice(n_pages, size=min(n_queries, n_pages), replace=False)
    return pages, [corpus.query(int(t), 24, seed=1) for t in targets]


def text_corpus() -> tuple[list[np.ndarray], list[np.ndarray], int]:
    from pgmaxsim.encoders.text import load_default

    data = ROOT.parent / "plugin" / "pgmaxsim" / "data" / "corpus"
    paras = [p.strip() for p in (data / "field-notes.txt").read_text().split("\n\n") if p.strip()]
    headings = [p for p in paras if not p.endswith(".")]
    body = [p for p in paras if p.endswith(".")]
    try:
        import pypdfium2 as pdfium

        pdf = pdfium.PdfDocument(str(data / "northwind-annual-report-2025.pdf"))
        body += [" ".join(pg.get_textpage().get_text_range().split()) for pg in pdf]
    except ImportError:
        pass
    sentences = [s for p in body for s in re.split(r"(?<=[.!?])\s+", p) if len(s.split()) >= 5]
    queries = headings + [" ".join(s.split()[2:10]) for s in sentences[::4]]
    enc = load_default(device="cpu")
    docs = [d.astype(np.float16) for d in enc.encode_documents(sentences)]
    qs = [q.astype(np.float32) for q in enc.encode_queries(queries)]
    return docs, qs, len(headings)


def report(name: str, docs: list[np.ndarray], queries: list[np.ndarray], pool_factors: list[int]) -> None:
    exact = exact_scores(docs, queries)
    raw = sum(len(d) for d in docs) * docs[0].shape[1] * 2 / len(docs)
    n_tok = sum(len(d) for d in docs) / len(docs)
    print(f"\n{name}: {len(docs)} docs ({n_tok:.0f} tokens mean, d={docs[0].shape[1]}), {len(queries)} queries\n")
    print("| stored | top-1 | recall@10 | score-mass@10 | bytes/row | x raw fp16 | pooling ms/row |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = [("fp16", 1)] + [("int8", 1)] + [("int8", f) for f in pool_factors]
    for storage, pf in rows:
        got, nbytes, pool_s = tier_scores(docs, queries, storage, pf)
        t1, r10, m10 = fidelity(exact, got)
        label = storage if pf == 1 else f"{storage} + pool_factor {pf}"
        print(f"| {label} | {t1:.3f} | {r10:.3f} | {m10:.4f} | {nbytes / 1024:.1f} KiB | {nbytes / raw:.3f} "
              f"| {pool_s * 1e3:.0f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=400)
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--pool-factors", default="2,3,4")
    ap.add_argument("--skip-text", action="store_true")
    args = ap.parse_args()
    factors = [int(f) for f in args.pool_factors.split(",")]
    pages, queries = synthetic(args.pages, args.queries)
    report("synthetic ColQwen-shaped pages", pages, queries, factors)
    if not args.skip_text:
        docs, qs, _ = text_corpus()
        report("text (bundled corpus, MiniLM)", docs, qs, factors)


if __name__ == "__main__":
    main()
