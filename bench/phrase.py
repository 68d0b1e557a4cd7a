"""Phrase-query benchmark on real text: the bundled MiniLM over Python standard-library docs.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/phrase.py                 # ~1,300 sections
    HF_HUB_OFFLINE=1 .venv/bin/python bench/phrase.py --sections 600 --queries 100   # quicker

Corpus: the docstrings of the public functions, classes and methods of a fixed list of
standard-library modules (present wherever python3 is; real technical prose), one
section each, ``module.qualname: docstring``, the first 150 words (MiniLM reads 256 word
pieces). Encoded with the bundled all-MiniLM-L6-v2 (d=384, a token per word piece).

Queries:
- phrase (known item): 6 consecutive words copied from a section; the source section is
  known. Printed: source at top-1, and recall@10 / top-1 agreement / mass@10 vs exact.
- title (topic): the section's qualified name as words ("shutil copytree"); broad words
  that many sections share, judged against exact only (mass@10, top-1 = exact).

The first stages and columns are those of bench/needle.py (its module docstring).
Embeddings are cached under --cache (delete it after changing the corpus rules).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plugin"))

from needle import (
    Muvera,
    centroids_candidates,
    exact_pass,
    knn_candidates,
    row_centroids,
)
from pgmaxsim import firststage as fs
from search import percentile

MODULES = ("argparse", "asyncio.base_events", "asyncio.streams", "asyncio.tasks", "base64", "bisect", "calendar",
           "collections", "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses",
           "datetime", "decimal", "difflib", "email.message", "email.utils", "enum", "fileinput", "fnmatch",
           "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac",
           "html.parser", "http.client", "http.cookiejar", "http.server", "imaplib", "inspect", "ipaddress",
           "itertools", "json", "logging", "logging.handlers", "lzma", "mailbox", "mimetypes",
           "multiprocessing.pool", "netrc", "numbers", "operator", "optparse", "os", "pathlib", "pickle",
           "pkgutil", "platform", "plistlib", "poplib", "pprint", "queue", "random", "re", "sched", "secrets",
           "selectors", "shelve", "shlex", "shutil", "smtplib", "socket", "socketserver", "sqlite3", "ssl",
           "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading",
           "timeit", "tokenize", "traceback", "turtle", "typing", "unittest.case", "unittest.mock",
           "urllib.parse", "urllib.request", "uuid", "warnings", "weakref", "wave", "xml.dom.minidom",
           "xml.etree.ElementTree", "zipfile", "zoneinfo")
WORDS = 150
PHRASE = 6


SKIP = ("antigravity", "this", "idlelib", "tkinter", "turtledemo", "test", "lib2to3", "ensurepip", "venv")


def module_names() -> list[str]:
    """MODULES, then the rest of the standard library, sorted (deprecated/GUI/test ones skipped)."""
    rest = sorted(m for m in sys.stdlib_module_names if not m.startswith("_") and m not in SKIP)
    return list(MODULES) + [m for m in rest if m not in MODULES]


def sections(limit: int, min_words: int = 20) -> list[tuple[str, str]]:
    """``[(qualified name, text)]``: documented public objects of the standard library, in a fixed order."""
    import warnings

    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    warnings.simplefilter("ignore")
    for modname in module_names():
        try:
            mod = importlib.import_module(modname)
        except Exception:  # noqa: BLE001, S112 - a module that cannot import here is not in the corpus
            continue
        items: list[tuple[str, object]] = []
        for name, obj in sorted(vars(mod).items()):
            own = getattr(obj, "__module__", None) == mod.__name__ or inspect.isbuiltin(obj)
            if name.startswith("_") or not own:
                continue
            items.append((name, obj))
            if inspect.isclass(obj):
                items += [(f"{name}.{m}", f) for m, f in sorted(vars(obj).items())
                          if not m.startswith("_") and callable(f)]
        for qual, obj in items:
            doc = inspect.getdoc(obj)
            if not doc or doc in seen:  # re-exported objects share their docstring
                continue
            seen.add(doc)
            words = doc.split()
            if len(words) >= min_words:
                out.append((f"{modname}.{qual}", " ".join(words[:WORDS])))
    return out[:limit]


def title_words(qual: str) -> str:
    """``"shutil.copytree"`` -> ``"shutil copytree"``; CamelCase and snake_case split into words."""
    parts = re.split(r"[._]", qual)
    return " ".join(re.sub(r"(?<=[a-z])(?=[A-Z])", " ", p) for p in parts if p).lower()


def encode(texts: list[str], cache_dir: Path, kind: str) -> list[np.ndarray]:
    """MiniLM tokens of ``texts`` (fp16), cached under a hash of the texts."""
    import hashlib

    digest = hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]
    cache = cache_dir / f"{kind}-{len(texts)}-{digest}.npz"
    if cache.is_file():
        z = np.load(cache)
        return np.split(z["tokens"], z["offsets"][1:-1])
    from pgmaxsim.encoders.text import load_default

    enc = load_default()
    out = []
    for a in range(0, len(texts), 64):
        out += [np.asarray(t, dtype=np.float16) for t in enc.encode_queries(texts[a:a + 64])]
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in out])])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, tokens=np.concatenate(out), offsets=offsets)
    return out


def run(kind: str, pages: list[np.ndarray], queries: list[np.ndarray], sources: np.ndarray | None,
        budgets: list[int], args: argparse.Namespace, log) -> list[str]:
    n = len(pages)
    sizes = np.array([len(p) for p in pages])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    tokens = np.concatenate(pages)
    d = tokens.shape[1]
    ptm = exact_pass(tokens, offsets, np.concatenate(queries))
    qoff = np.cumsum([0] + [len(q) for q in queries])
    exact = np.stack([ptm[:, qoff[i]:qoff[i + 1]].astype(np.float64).sum(1) for i in range(len(queries))])
    ref_top = exact.argmax(1)

    t = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    sample = tokens[rng.choice(len(tokens), size=min(len(tokens), args.sample), replace=False)]
    cb = fs.train(sample, args.coarse, args.fine, seed=args.seed)
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    codes = fs.assign(cb, tokens)
    assign_ms = (time.perf_counter() - t) / n * 1e3
    lists = fs.InvertedLists.build(codes, np.repeat(np.arange(n), sizes), cb.n_codes)
    per_row = fs.row_codes(lists, n)
    t = time.perf_counter()
    cent, cent_row = row_centroids(pages)
    cent_ms = (time.perf_counter() - t) / n * 1e3
    mu = Muvera(d, seed=args.seed)
    t = time.perf_counter()
    fde = np.stack([mu.encode(p, query=False) for p in pages])
    mu_ms = (time.perf_counter() - t) / n * 1e3
    fp16_row = sizes.mean() * d * 2

    stages = {
        "centroids (today)": (lambda qi, q, k: centroids_candidates(cent, cent_row, q, k),
                              len(cent) / n * (d * 2 + 208), cent_ms),
        **{f"codebook nprobe={p}" + (f" +CI x{rs}" if rs else ""): (
            (lambda qi, q, k, p=p, rs=rs: fs.candidates(lists, *fs.probe(cb, q, p, args.coarse_probe), n, k,
                                                        rescore=None if rs is None else (cb, q, per_row, rs))),
            lists.postings() / n * 4 + sizes.mean() * 2, assign_ms)
           for p in (int(x) for x in args.nprobe.split(",")) for rs in (None, 4)},
        f"tokens-knn k={args.ktok}": ((lambda qi, q, k: knn_candidates(ptm, slice(qoff[qi], qoff[qi + 1]), k,
                                                                       args.ktok)),
                                      sizes.mean() * (d * 2 + 208), float("nan")),
        f"muvera {mu.dims} dims": (lambda qi, q, k: np.argsort(-(fde @ mu.encode(q, True)), kind="stable")[:k],
                                   mu.dims * 2, mu_ms),
    }
    out = [(f"\n### {kind} queries ({len(queries)}), {n} sections, mean {sizes.mean():.0f} tokens"
           f" ({fp16_row / 1024:.0f} KB fp16), codebook {args.coarse}x{args.fine} (trained {train_s:.0f} s),"
           f" {lists.postings() / n:.0f} postings per row"),
           "",
           ("| first stage | candidates | source top-1 | source in top-10 | top-1 = exact | recall@10 vs exact |"
            " mass@10 | stage-1 p50 ms | bytes/row (% fp16) | write ms/row |"),
           "|---|---|---|---|---|---|---|---|---|---|"]
    if sources is None:
        src = src10 = "-"
    else:
        src = f"{np.mean(ref_top == sources):.1%}"
        src10 = f"{np.mean([s in np.argsort(-e, kind='stable')[:10] for s, e in zip(sources, exact)]):.1%}"
    out.append(f"| exact | {n} | {src} | {src10} | 100% | 1.000 | 1.0000 | - | - | - |")
    for name, (fn, bytes_row, write_ms) in stages.items():
        for k in budgets:
            times, hit, hit10, agree, rec, mass = [], 0, 0, 0, [], []
            for qi, q in enumerate(queries):
                t0 = time.perf_counter()
                cand = np.asarray(fn(qi, q, k))
                times.append((time.perf_counter() - t0) * 1e3)
                got = cand[np.argsort(-exact[qi, cand], kind="stable")[:10]]
                ref = np.argsort(-exact[qi], kind="stable")[:10]
                hit += sources is not None and len(got) > 0 and got[0] == sources[qi]
                hit10 += sources is not None and sources[qi] in got
                agree += len(got) > 0 and got[0] == ref[0]
                rec.append(len(set(got.tolist()) & set(ref.tolist())) / 10)
                mass.append(exact[qi, got].sum() / exact[qi, ref].sum())
            src = "- | -" if sources is None else f"{hit / len(queries):.1%} | {hit10 / len(queries):.1%}"
            out.append(f"| {name} | {k} ({k / n:.1%}) | {src} | {agree / len(queries):.1%} | {np.mean(rec):.3f} |"
                       f" {np.mean(mass):.4f} | {percentile(times, 50):.1f} | {bytes_row:.0f}"
                       f" ({bytes_row / fp16_row:.1%}) | {write_ms:.2f} |")
            log(out[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", type=int, default=1300)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--budgets", default="13,26,64")
    ap.add_argument("--coarse", type=int, default=64)
    ap.add_argument("--fine", type=int, default=64)
    ap.add_argument("--nprobe", default="8,32")
    ap.add_argument("--coarse-probe", type=int, default=2)
    ap.add_argument("--sample", type=int, default=100_000)
    ap.add_argument("--ktok", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/pgmaxsim-bench-phrase"))
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    secs = sections(args.sections)
    texts = [f"{q}: {t}" for q, t in secs]
    t0 = time.perf_counter()
    pages = encode(texts, args.cache, "docs")
    log(f"{len(pages)} sections encoded in {time.perf_counter() - t0:.0f} s")
    rng = np.random.default_rng(args.seed + 1)
    sources = rng.choice(len(secs), size=min(args.queries, len(secs)), replace=False)
    phrases = []
    for i in sources:
        words = texts[i].split()
        a = int(rng.integers(0, max(1, min(len(words), 120) - PHRASE)))
        phrases.append(" ".join(words[a:a + PHRASE]))
    titles = [title_words(secs[i][0]) for i in sources]
    qp = encode(phrases, args.cache, "phrase")
    qt = encode(titles, args.cache, "title")
    budgets = [int(b) for b in args.budgets.split(",")]
    out = [(f"## phrase benchmark: all-MiniLM-L6-v2 over {len(pages)} stdlib doc sections"
           f" (e.g. {phrases[0]!r} from {secs[sources[0]][0]}; title {titles[0]!r})")]
    out += run("phrase (6 copied words)", pages, qp, sources, budgets, args, log)
    out += run("title", pages, qt, None, budgets, args, log)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
