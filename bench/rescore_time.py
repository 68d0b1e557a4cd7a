"""Codebook rescoring (pgmaxsim.plpy.codes.rescore) of two trees on the same inputs, standalone and in the server.

    .venv/bin/python bench/rescore_time.py --dsn DSN --base REV

Runs over a database that bench/firststage_pg.py built (index ``fs_codebook`` over the needle corpus of
bench/needle.py). Inputs: the needle queries of bench/firststage_pg.py (same sources and seed) and, per
query, its ``--keys`` best rows by the probe score over every row's stored codes (options nprobe and
coarse_probe; pgmaxsim.firststage in NumPy), the sizes maxsim.search(name, q, 10, 64) hands rescoring
(option rescore 4 x 64). Prints, for git revision ``--base`` and for this tree:

1. standalone, one BLAS thread (the backend's): ``firststage.centroid_interaction`` on each query's rows
   (the first 1, 3, 10, 40 and all but the sketch's 10): p50 over the queries of the best of 7, and
   whether the two trees' scores are bitwise equal;
2. inside the server: each tree's pgmaxsim imported in a fresh backend from a copy under /tmp (a DO
   block in a read-only transaction: a superuser's connection, a server on this machine), then per query
   ``codes.rescore(index, q, keys, 64)`` (a first call caches the query's sketch scores, then the best of 5),
   the codes read alone (best of 5) and ``centroid_interaction`` alone (best of 5), p50 over the queries;
   the trees alternate twice (their backends run one after the other: on a loaded machine, compare
   each pair), and their returned keys are compared.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # before NumPy: the backend's single thread

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "plugin"))

from firststage_pg import pick_sources
from needle import NeedleCorpus
from pgmaxsim import firststage as fs
from pgmaxsim.db.codec import decode_halfvec_array

#: codes.rescore's own timing inside a backend; LIB, QUERIES, KEYS, INDEX_ID, N are prepended.
IN_SERVER = r"""
import sys, time
sys.path.insert(0, LIB)
import pgmaxsim.plpy   # first: caps BLAS at one thread
import numpy as np
import pgmaxsim
assert pgmaxsim.__file__.startswith(LIB), pgmaxsim.__file__
from pgmaxsim import firststage as fs
from pgmaxsim.plpy import api, codes
index = api.index_by_id(plpy, INDEX_ID)
gen = int(index["options"]["fs_gen"])
cb = codes._codebook(plpy, INDEX_ID, gen)
col = "codes_%d" % (gen % 2)
def best_of(k, f):
    t = []
    for _ in range(k):
        t0 = time.perf_counter(); got = f(); t.append(time.perf_counter() - t0)
    return min(t), got
def read(keys):   # the tree's codes read: codes._coded_rows, or what rescore did before it (bb4adb2 and older)
    if hasattr(codes, "_coded_rows"):
        ids, per_row, _, _ = codes._coded_rows(plpy, index, col, keys)
        return per_row, np.arange(len(ids))
    tok = plpy.quote_ident(index["token_table"])
    plan = plpy.prepare("SELECT t.id::text AS id, pg_catalog.array_send(t.%s) AS codes, t.version FROM maxsim.%s t"
                        " WHERE t.id = ANY ($1::%s[])" % (col, tok, index["id_type"]), ["text[]"])
    coded = [(r["id"], codes._int4_array(r["codes"])) for r in plpy.execute(plan, [keys]) if r["codes"] is not None]
    ptr = np.concatenate([[0], np.cumsum([len(c) for _, c in coded])]).astype(np.int64)
    return fs.InvertedLists(ptr, np.concatenate([c for _, c in coded]).astype(np.int32)), np.arange(len(coded))
out, t_all, t_read, t_ci = [], [], [], []
for q, keys in zip(QUERIES, KEYS):
    q = np.asarray(q, dtype=np.float32)
    out.append(codes.rescore(plpy, index, q, keys, N))
    t_all.append(best_of(5, lambda: codes.rescore(plpy, index, q, keys, N))[0])
    t, (per_row, rows) = best_of(5, lambda: read(keys))
    t_read.append(t)
    t_ci.append(best_of(5, lambda: fs.centroid_interaction(cb, q, per_row, rows))[0])
plpy.notice(json.dumps({"out": out, "rescore": 1e3 * float(np.median(t_all)), "read": 1e3 * float(np.median(t_read)),
                        "ci": 1e3 * float(np.median(t_ci))}))
"""


def base_tree(rev: str, dest: Path) -> Path:
    """``plugin/pgmaxsim`` of git revision ``rev``, extracted under ``dest``."""
    subprocess.run(f"git -C {ROOT} archive {rev} plugin/pgmaxsim | tar -x -C {dest}", shell=True, check=True)
    return dest / "plugin" / "pgmaxsim"


def readable_copy(pkg: Path, dest: Path) -> Path:
    """A copy of package ``pkg`` the server's OS user can import (dest/pgmaxsim); returns dest."""
    shutil.copytree(pkg, dest / "pgmaxsim", ignore=shutil.ignore_patterns("__pycache__", "_migrations", "_sql"))
    for root, _, files in os.walk(dest):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    return dest


def inputs(conn: psycopg.Connection[Any], name: str, pages: int, queries: int, seed: int, keys: int
           ) -> tuple[int, fs.Codebook, list[np.ndarray], list[np.ndarray], fs.InvertedLists, np.ndarray]:
    """(index id, live codebook, queries, per query its ``keys`` best rows by the probe score, every row's
    stored codes, every row's id): rows are numbered in id order."""
    iid, tok, opts = conn.execute("SELECT id, token_table, options FROM maxsim.indexes WHERE name = %s",
                                  (name,)).fetchone()
    slot = int(opts["fs_gen"]) % 2
    with conn.cursor(binary=True) as cur:
        coarse, fine = cur.execute(
            f"SELECT (SELECT array_send(array_agg(c.vec ORDER BY c.cell)) FROM maxsim.fs_coarse_{iid} c"
            f" WHERE c.slot = %s), (SELECT array_send(array_agg(f.vec ORDER BY f.code)) FROM maxsim.fs_fine_{iid} f"
            f" WHERE f.slot = %s)",
            (slot, slot)).fetchone()
        stored = cur.execute(f"SELECT id, codes_{slot} FROM maxsim.{tok} ORDER BY id").fetchall()
    coarse = decode_halfvec_array(coarse).astype(np.float32)
    fine = decode_halfvec_array(fine).astype(np.float32)
    cb = fs.Codebook(coarse, fine.reshape(len(coarse), len(fine) // len(coarse), -1))
    lens = [0 if c is None else len(c) for _, c in stored]
    per_row = fs.InvertedLists(np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
                               np.concatenate([np.asarray(c or [], np.int32) for _, c in stored]))
    lists = fs.InvertedLists.build(per_row.rows, np.repeat(np.arange(len(stored)), lens), cb.n_codes)
    _, qs = pick_sources(NeedleCorpus(pages), pages, queries, seed)
    qs = [q.astype(np.float32) for q in qs]
    best = [fs.candidates(lists, *fs.probe(cb, q, int(opts["nprobe"]), int(opts["coarse_probe"])), len(stored), keys)
            for q in qs]
    return int(iid), cb, qs, best, per_row, np.array([k for k, _ in stored])


def standalone(base_fs: Any, cb: fs.Codebook, qs: list[np.ndarray], best: list[np.ndarray],
               per_row: fs.InvertedLists, sizes: list[int]) -> None:
    for m in sizes:
        t: dict[str, list[float]] = {"base": [], "this": []}
        equal = True
        for q, b in zip(qs, best):
            # the rows' codes stored one after another, as codes.rescore reads them
            parts = [per_row.rows[per_row.ptr[r]:per_row.ptr[r + 1]] for r in b[:m]]
            own = fs.InvertedLists(np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64),
                                   np.concatenate(parts))
            got = {}
            for side, f in (("base", base_fs.centroid_interaction), ("this", fs.centroid_interaction)):
                runs = []
                for _ in range(7):
                    t0 = time.perf_counter()
                    got[side] = f(cb, q, own, np.arange(len(parts)))
                    runs.append(time.perf_counter() - t0)
                t[side].append(min(runs))
            equal &= bool(np.array_equal(got["base"], got["this"]))
        held = int(np.median([np.diff(per_row.ptr)[b[:m]].sum() for b in best]))
        print(f"standalone centroid_interaction, {m} rows (~{held:,} codes): p50 base"
              f" {1e3 * np.median(t['base']):.2f} ms, this tree {1e3 * np.median(t['this']):.2f} ms;"
              f" scores bitwise equal: {equal}", flush=True)


def in_server(dsn: str, libs: dict[str, Path], iid: int, qs: list[np.ndarray], keys: list[list[str]], n: int) -> None:
    outs = {}
    for side in ("base", "this", "base", "this"):
        got: dict[str, Any] = {}
        with psycopg.connect(dsn) as conn:
            conn.add_notice_handler(lambda d: got.update(json.loads(d.message_primary)))
            src = (f"import json\nLIB = {str(libs[side])!r}\nINDEX_ID = {iid}\nN = {n}\n"
                   f"QUERIES = {json.dumps([q.tolist() for q in qs])}\n"
                   f"KEYS = {json.dumps(keys)}\n") + IN_SERVER
            with conn.transaction():
                conn.execute("SET TRANSACTION READ ONLY")
                conn.execute("DO $body$" + src + "$body$ LANGUAGE plpython3u")
        outs[side] = got["out"]
        print(f"in the server, {side:4s}: codes.rescore p50 {got['rescore']:.2f} ms (codes read {got['read']:.2f} ms,"
              f" centroid_interaction {got['ci']:.2f} ms)", flush=True)
    print(f"same keys from both trees for all {len(qs)} queries: {outs['base'] == outs['this']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--base", required=True, help="git revision to compare this tree with")
    ap.add_argument("--name", default="fs_codebook")
    ap.add_argument("--pages", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keys", type=int, default=256, help="rows handed to rescoring (option rescore x candidates)")
    ap.add_argument("--n", type=int, default=64, help="rows rescoring keeps (candidates)")
    ap.add_argument("--no-server", action="store_true", help="standalone timings only")
    args = ap.parse_args()
    with psycopg.connect(args.dsn) as conn:
        iid, cb, qs, best, per_row, ids = inputs(conn, args.name, args.pages, args.queries, args.seed, args.keys)
    with tempfile.TemporaryDirectory(prefix="rescore-time-") as tmp:
        base_pkg = base_tree(args.base, Path(tmp))
        spec = importlib.util.spec_from_file_location("base_firststage", base_pkg / "firststage.py")
        base_fs = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(base_fs)
        standalone(base_fs, cb, qs, best, per_row, [1, 3, 10, 40, args.keys - 10])
        if not args.no_server:
            libs = {"base": readable_copy(base_pkg, Path(tmp) / "lib-base"),
                    "this": readable_copy(ROOT / "plugin" / "pgmaxsim", Path(tmp) / "lib-this")}
            os.chmod(tmp, 0o755)
            in_server(args.dsn, libs, iid, qs, [[str(k) for k in ids[b].tolist()] for b in best], args.n)


if __name__ == "__main__":
    main()
