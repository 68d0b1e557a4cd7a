"""GPU MaxSim benchmark: one command builds, checks and times every variant.

    python bench/gpu.py                       # 1K/10K/50K/100K pages
    python bench/gpu.py --sizes 1000,10000    # fewer sizes
    OUT=/some/dir python bench/gpu.py         # also writes results.json there

Measures, on identical data in one run: device-to-device copy bandwidth (the
HBM floor is bytes of the scored doc tokens / that bandwidth, bytes read +
written counted like the copy), our CuPy kernels (fp16, int8; one query;
32 queries batched), flash-maxsim (pip ``flash-maxsim``, if importable) and
colpali-engine-style padded einsum in torch. ColQwen-shaped pages: d = 128,
600-1400 tokens (uniform), unit-norm tokens clustered by topic; queries of 24
tokens. Prints ms (median of CUDA-event timings), % of the HBM floor, ratio to
flash-maxsim, and relative error against a float64 reference on sampled pages.
Exits 0 with a message when there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin"))

from pgmaxsim.kernels import cupy_maxsim as gpu  # noqa: E402
from pgmaxsim.kernels.numpy_maxsim import topk  # noqa: E402
from pgmaxsim.kernels.reference import maxsim_reference  # noqa: E402

D = 128
NQ = 24
BATCH = 32


def median_ms(fn, cp, reps: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn(0)
    cp.cuda.Device().synchronize()
    times = []
    for r in range(reps):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn(r)
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end))
    return float(np.median(times))


def copy_bandwidth(cp) -> float:
    n = 2 << 30
    a = cp.empty(n, dtype=cp.uint8)
    a[:] = 1
    b = cp.empty_like(a)
    ms = median_ms(lambda r: b.__setitem__(slice(None), a), cp, reps=10)
    return 2 * n / (ms / 1e3) / 1e9


def make_corpus(cp, n_docs: int, rng: np.random.Generator, topics: int = 256):
    lengths = rng.integers(600, 1401, size=n_docs).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    total = int(offsets[-1])
    centers = cp.asarray(rng.standard_normal((topics, D)).astype(np.float32))
    tokens = cp.empty((total, D), dtype=cp.float16)
    step = 1 << 22
    g = cp.random.default_rng(1)
    for a in range(0, total, step):
        b = min(total, a + step)
        t = centers[g.integers(0, topics, b - a)] + 0.7 * g.standard_normal((b - a, D), dtype=cp.float32)
        t /= cp.linalg.norm(t, axis=1, keepdims=True)
        tokens[a:b] = t.astype(cp.float16)
    doc_topic = rng.integers(0, topics, size=n_docs)
    return tokens, offsets, centers, doc_topic


def make_queries(cp, centers, rng: np.random.Generator, n: int) -> list[np.ndarray]:
    c = cp.asnumpy(centers)
    out = []
    for _ in range(n):
        tpc = rng.integers(0, len(c), size=3)
        q = c[rng.choice(tpc, size=NQ)] + 0.8 * rng.standard_normal((NQ, D))
        out.append((q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32))
    return out


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    if np.isnan(got).any():
        return float("nan")
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def find_flash_maxsim():
    try:
        import flash_maxsim as fm  # type: ignore[import-not-found]
    except Exception as exc:  # not installed (the GPU machine has no registry): say so
        return None, f"not importable ({type(exc).__name__}: {exc})"
    for name in ("flash_maxsim_varlen", "flash_maxsim_packed", "flash_maxsim_rerank_direct"):
        if hasattr(fm, name):
            return (name, getattr(fm, name)), f"flash_maxsim {getattr(fm, '__version__', '?')}.{name}"
    if hasattr(fm, "flash_maxsim"):
        return ("flash_maxsim", fm.flash_maxsim), f"flash_maxsim {getattr(fm, '__version__', '?')}.flash_maxsim (padded)"
    return None, "flash_maxsim has no known entry point"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,50000,100000")
    ap.add_argument("--queries", type=int, default=100, help="queries for int8 fidelity")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)
    if not gpu.available():
        print("bench/gpu.py: no CUDA GPU (or CuPy: pip install 'pgmaxsim[gpu]') on this machine; nothing measured.")
        return 0
    cp = gpu.cupy()
    torch = None
    try:
        import torch as _torch

        torch = _torch if _torch.cuda.is_available() else None
    except Exception:
        pass
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(0)
    props = cp.cuda.runtime.getDeviceProperties(0)
    print(f"device: {props['name'].decode()}  SMs: {props['multiProcessorCount']}")
    bw = copy_bandwidth(cp)
    print(f"device-to-device copy: {bw:.0f} GB/s (bytes read + written)")
    t0 = time.time()
    tokens, offsets, centers, _ = make_corpus(cp, max(sizes), rng)
    print(f"corpus: {len(offsets) - 1} pages, {tokens.shape[0]} tokens, {tokens.nbytes / 1e9:.1f} GB fp16 "
          f"(built in {time.time() - t0:.1f} s)")
    dev16 = gpu.DeviceTokens(tokens, None, D)
    # int8 copy, quantized on the device in chunks (per-token scales)
    q8 = cp.empty(tokens.shape, dtype=cp.int8)
    sc8 = cp.empty(tokens.shape[0], dtype=cp.float32)
    for a in range(0, tokens.shape[0], 1 << 22):
        t = tokens[a:a + (1 << 22)].astype(cp.float32)
        s = cp.abs(t).max(axis=1) / 127.0
        sc8[a:a + len(t)] = s
        q8[a:a + len(t)] = cp.clip(cp.rint(t / cp.where(s > 0, s, 1)[:, None]), -127, 127).astype(cp.int8)
    dev8 = gpu.DeviceTokens(q8, sc8, D)
    queries = make_queries(cp, centers, rng, max(args.queries, BATCH))
    fm, fm_desc = find_flash_maxsim()
    print(f"flash-maxsim: {fm_desc}")
    rows: list[dict] = []

    for n in sizes:
        starts, lengths = gpu.items_from_offsets(offsets[: n + 1])
        nbytes16 = int(offsets[n]) * D * 2
        floor16 = nbytes16 / (bw * 1e9) * 1e3
        floor8 = (int(offsets[n]) * (D + 4)) / (bw * 1e9) * 1e3
        sample = rng.choice(n, size=min(n, 64), replace=False)
        host_tok = {int(i): cp.asnumpy(tokens[offsets[i]:offsets[i + 1]]).astype(np.float64) for i in sample}

        def ref_scores(q: np.ndarray) -> np.ndarray:
            qq = q.astype(np.float16).astype(np.float64)
            return np.array([maxsim_reference(qq, host_tok[int(i)]) for i in sample])

        res: dict[str, dict] = {}
        s16 = cp.asnumpy(gpu.maxsim_items(queries[0], dev16, starts, lengths))
        res["ours fp16"] = {"ms": median_ms(lambda r: gpu.maxsim_items(queries[r % 3], dev16, starts, lengths), cp, args.reps),
                            "floor": floor16, "err": rel_err(s16[sample], ref_scores(queries[0]))}
        s8 = cp.asnumpy(gpu.maxsim_items(queries[0], dev8, starts, lengths))
        res["ours int8"] = {"ms": median_ms(lambda r: gpu.maxsim_items(queries[r % 3], dev8, starts, lengths), cp, args.reps),
                            "floor": floor8, "err": rel_err(s8[sample], ref_scores(queries[0]))}
        # int8 fidelity against fp16 over many queries
        top1, mass = [], []
        for q in queries[: args.queries]:
            a = cp.asnumpy(gpu.maxsim_items(q, dev16, starts, lengths))
            b = cp.asnumpy(gpu.maxsim_items(q, dev8, starts, lengths))
            ia, _ = topk(a, 10)
            ib, _ = topk(b, 10)
            top1.append(ia[0] == ib[0])
            mass.append(a[ib].sum() / a[ia].sum())
        res["ours int8"].update(top1=float(np.mean(top1)), mass10=float(np.min(mass)))
        # batched 32 queries
        qb = queries[:BATCH]
        sb = cp.asnumpy(gpu.maxsim_batch_items(qb, dev16, starts, lengths))
        res["ours fp16 x32 batched"] = {
            "ms": median_ms(lambda r: gpu.maxsim_batch_items(qb, dev16, starts, lengths), cp, max(3, args.reps // 4)),
            "floor": floor16, "err": rel_err(sb[0][sample], ref_scores(qb[0]))}
        res["ours fp16 x32 batched"]["x_vs_32_single"] = 32 * res["ours fp16"]["ms"] / res["ours fp16 x32 batched"]["ms"]
        sb8 = cp.asnumpy(gpu.maxsim_batch_items(qb, dev8, starts, lengths))
        res["ours int8 x32 batched"] = {
            "ms": median_ms(lambda r: gpu.maxsim_batch_items(qb, dev8, starts, lengths), cp, max(3, args.reps // 4)),
            "floor": floor8, "err": rel_err(sb8[0][sample], ref_scores(qb[0]))}
        res["ours int8 x32 batched"]["x_vs_32_single"] = 32 * res["ours int8"]["ms"] / res["ours int8 x32 batched"]["ms"]

        if torch is not None:
            tt = torch.from_dlpack(tokens)
            tq = [torch.from_dlpack(cp.asarray(q.astype(np.float16))) for q in queries[:3]]
            off_t = torch.from_dlpack(cp.asarray(offsets[:n].astype(np.int64)))
            len_t = torch.from_dlpack(cp.asarray(np.diff(offsets[: n + 1]).astype(np.int64)))
            if fm is not None:
                name, fn = fm
                try:
                    if name == "flash_maxsim":
                        raise RuntimeError("padded API only")
                    call = (lambda r: fn(tq[r % 3], tt, off_t, len_t, 1400)) if name == "flash_maxsim_rerank_direct" \
                        else (lambda r: fn(tq[r % 3], tt, off_t, len_t))
                    out = call(0)
                    got = out.float().cpu().numpy().reshape(-1)
                    res["flash-maxsim"] = {"ms": median_ms(call, cp, args.reps), "floor": floor16,
                                           "err": rel_err(got[sample], ref_scores(queries[0]))}
                except Exception as exc:
                    res["flash-maxsim"] = {"error": f"{type(exc).__name__}: {exc}"[:120]}
            pad_bytes = n * 1400 * D * 2 + n * NQ * 1400 * 4
            if pad_bytes < 0.45 * cp.cuda.Device().mem_info[0]:
                ar = torch.arange(1400, device="cuda")
                mask = ar[None, :] < len_t[:, None]
                pos = off_t[:, None] + torch.minimum(ar[None, :], len_t[:, None] - 1)
                padded = tt[pos]                        # one-time packing (not timed)
                padded[~mask] = 0
                del pos

                def einsum(r: int):
                    sim = torch.einsum("qd,nld->nql", tq[r % 3], padded).float()
                    sim = sim.masked_fill(~mask[:, None, :], float("-inf"))
                    return sim.max(dim=2).values.sum(dim=1)

                got = einsum(0).cpu().numpy()
                res["torch padded einsum"] = {"ms": median_ms(einsum, cp, max(3, args.reps // 4)), "floor": floor16,
                                              "err": rel_err(got[sample], ref_scores(queries[0]))}
                del padded
                torch.cuda.empty_cache()
            else:
                res["torch padded einsum"] = {"error": "skipped: padded copy does not fit next to the packed corpus"}
        fm_ms = res.get("flash-maxsim", {}).get("ms")
        for name, r in res.items():
            r.update(size=n, variant=name)
            if "ms" in r:
                r["pct_floor"] = 100 * r["floor"] / r["ms"]
                r["x_flash"] = fm_ms / r["ms"] if fm_ms else None
            rows.append(r)

    print()
    print(f"{'pages':>7} {'variant':<24} {'ms':>9} {'%floor':>7} {'x flash':>8} {'rel.err':>9}  notes")
    for r in rows:
        if "ms" not in r:
            print(f"{r['size']:>7} {r['variant']:<24} {'-':>9} {'-':>7} {'-':>8} {'-':>9}  {r['error']}")
            continue
        notes = []
        if "top1" in r:
            notes.append(f"top1=fp16 {100 * r['top1']:.1f}%  min mass@10 {r['mass10']:.5f}")
        if "x_vs_32_single" in r:
            notes.append(f"{r['x_vs_32_single']:.1f}x throughput of 32 single")
        xf = f"{r['x_flash']:.2f}" if r.get("x_flash") else "-"
        print(f"{r['size']:>7} {r['variant']:<24} {r['ms']:>9.3f} {r['pct_floor']:>6.1f}% {xf:>8} {r['err']:>9.2e}  {'; '.join(notes)}")
    out = os.environ.get("OUT")
    if out:
        Path(out, "results.json").write_text(json.dumps({"copy_gbps": bw, "rows": rows}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
