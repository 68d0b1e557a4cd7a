"""A row's codes under an index's codebook first stage, inside the backend (``maxsim._fs_assign``).

The codebook of one generation never changes once written (pgmaxsim.codebook), so each backend
keeps the last one it read, by index, generation and codebook table (a re-embedding's switch
renames the tables: a new oid).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pgmaxsim import firststage as fs
from pgmaxsim.db.codec import decode_halfvec_array
from pgmaxsim.plpy.tokens import decode_query

_cache: dict[tuple[int, int, int, str], fs.Codebook] = {}


def _codebook(plpy: Any, index_id: int, gen: int) -> fs.Codebook | None:
    slot = int(gen) % 2
    # the writing transaction of the slot's codebook, beside the table: a training that failed and
    # ran again (maxsim.train_first_stage) rewrites a generation that is not live yet
    fine_table = f"maxsim.fs_fine_{int(index_id)}"
    got = plpy.execute(
        f"SELECT pg_catalog.to_regclass({plpy.quote_literal(fine_table)})::oid AS o,"
        f" (SELECT c.xmin::text FROM maxsim.fs_coarse_{int(index_id)} c WHERE c.slot = {slot} AND c.cell = 0) AS x")[0]
    key = (int(index_id), int(gen), int(got["o"] or 0), str(got["x"]))
    if key in _cache:
        return _cache[key]
    row = plpy.execute(
        f"SELECT (SELECT pg_catalog.array_send(pg_catalog.array_agg(c.vec ORDER BY c.cell))"
        f" FROM maxsim.fs_coarse_{int(index_id)} c WHERE c.slot = {slot}) AS coarse,"
        f" (SELECT pg_catalog.array_send(pg_catalog.array_agg(f.vec ORDER BY f.code))"
        f" FROM maxsim.fs_fine_{int(index_id)} f WHERE f.slot = {slot}) AS fine")[0]
    if row["coarse"] is None or row["fine"] is None:
        return None
    coarse = decode_halfvec_array(row["coarse"]).astype(np.float32)
    fine = decode_halfvec_array(row["fine"]).astype(np.float32)
    _cache.clear()
    _cache[key] = fs.Codebook(coarse, fine.reshape(len(coarse), len(fine) // len(coarse), -1))
    return _cache[key]


def assign(plpy: Any, index_id: int, gen: int | None, tokens: bytes) -> list[int] | None:
    """The distinct codes (sorted) of ``array_send(tokens)`` under generation ``gen``; None when
    there is none (not trained)."""
    if gen is None:
        return None
    cb = _codebook(plpy, index_id, gen)
    if cb is None:
        return None
    return np.unique(fs.assign(cb, decode_query(tokens).astype(np.float32))).tolist()


def batch(plpy: Any, index_id: int, gen: int, blobs: list[bytes], ns: list[int], dim: int,
          storage: str) -> dict[str, list[int]]:
    """Stored rows' distinct codes under generation ``gen``, flattened (a training's fill,
    ``maxsim._fs_codes_py``; pgmaxsim.fs_train.batch_codes)."""
    from pgmaxsim import fs_train

    cb = _codebook(plpy, index_id, gen)
    if cb is None:
        plpy.error(f"pgmaxsim: generation {gen} of the first stage of index {index_id} has no codebook")
    flat, lens = fs_train.batch_codes(cb, blobs, ns, dim, storage)
    return {"flat": flat, "lens": lens}


def _int4_array(blob: bytes) -> np.ndarray:
    """``array_send(int4[])`` (one dimension, no NULLs) -> int64 values."""
    buf = memoryview(blob)
    if len(buf) < 20:
        return np.zeros(0, dtype=np.int64)
    return np.frombuffer(buf, dtype=">i4", offset=20).reshape(-1, 2)[:, 1].astype(np.int64)


def rescore(plpy: Any, index: dict[str, Any], q: np.ndarray, keys: list[str], n: int) -> list[str]:
    """The best ``n`` of rows ``keys``: first the (up to option ``sketch_top``) rows the residual
    sketch lists rank highest (pgmaxsim.plpy.sketch: near-copies of query tokens, which centroids
    cannot tell apart), then the rest by PLAID's centroid interaction (MaxSim with each token
    replaced by its code's centroid, over all of a row's codes: pgmaxsim.firststage), then every
    row without live codes (never dropped: nothing is known about them).

    Rows written since the lists' last merge (unmerged) have no sketch score: when the sketch's
    rows leave them fewer than ceil(n / 4) slots (budgets at or near ``sketch_top``), the sketch's
    lowest kept rows contest the difference with them by centroid interaction (``_contested``)."""
    from pgmaxsim.plpy import sketch

    gen = index["options"].get("fs_gen")
    cb = None if gen is None else _codebook(plpy, int(index["id"]), int(gen))
    if cb is None:
        return keys
    col = f"codes_{int(gen) % 2}"
    plan = plpy.prepare(
        f"SELECT t.id::text AS id, pg_catalog.array_send(t.{col}) AS codes, t.version"
        f" FROM maxsim.{plpy.quote_ident(index['token_table'])} t WHERE t.id = ANY ($1::{index['id_type']}[])",
        ["text[]"])
    coded: list[tuple[str, np.ndarray]] = []
    uncoded: list[str] = []
    version_of: dict[str, int] = {}
    for r in plpy.execute(plan, [keys]):
        (uncoded.append(r["id"]) if r["codes"] is None else coded.append((r["id"], _int4_array(r["codes"]))))
        version_of[r["id"]] = int(r["version"])
    if len(coded) <= n:
        return [k for k, _ in coded] + uncoded
    kept = sketch.first(plpy, index, q, {k: version_of[k] for k, _ in coded}, min(n, sketch.sketch_top(index)))
    kept, contested = _contested(plpy, index, kept, [k for k, _ in coded], version_of, n)
    if kept:
        taken = set(kept)
        coded = [(k, c) for k, c in coded if k not in taken]
        if not coded or len(kept) >= n:
            return kept + [k for k, _ in coded][:n - len(kept)] + uncoded
    per_row = fs.InvertedLists(np.concatenate([[0], np.cumsum([len(c) for _, c in coded])]).astype(np.int64),
                               np.concatenate([c for _, c in coded]).astype(np.int32))
    score = fs.centroid_interaction(cb, q, per_row, np.arange(len(coded)))
    if contested:
        slots, pool = contested
        at = {k: i for i, (k, _) in enumerate(coded)}
        pool_at = np.array([at[k] for k in pool], dtype=np.int64)
        won = pool_at[np.lexsort((pool_at, -score[pool_at]))[:slots]]
        kept = kept + [coded[int(i)][0] for i in won]
        score[won] = -np.inf   # placed: out of the fill below
    best = np.argsort(-score, kind="stable")[:n - len(kept)]
    return kept + [coded[int(i)][0] for i in best] + uncoded


def _contested(plpy: Any, index: dict[str, Any], kept: list[str], coded: list[str], version_of: dict[str, int],
               n: int) -> tuple[list[str], tuple[int, list[str]] | None]:
    """The sketch's rows that keep their slots, and (slots, rows) to fill by centroid interaction
    from rows: the sketch's lowest kept rows and the unmerged candidates.

    Why: the lists rank merged rows only, so a row written since the last merge (pending until the
    worker's trainer merges it) can reach exact scoring only through the centroid-interaction fill,
    and when the sketch's rows take the whole budget (``n`` <= ``sketch_top``, as in
    maxsim.search(name, q, 10, 10)) the fill has no slot: the row just written, even the query's
    exact best match, would not be found. A user expects it to be. So the unmerged candidates are
    owed ceil(n / 4) slots (at most one per unmerged row): the slots the fill already has count,
    the rest are taken from the sketch's lowest kept rows, which contest them with the unmerged rows
    on the one score both have. An unmerged row that centroid interaction ranks above the sketch's
    row takes its slot; one ranked below (a row that does not match: most writes, for most queries)
    leaves it, so the sketch's budget is only given up for a likelier match. The sketch's top ranks,
    where near-copies of query tokens land (what centroids cannot tell apart), stay its own, its
    best row always (with one slot, the finer score decides). Larger budgets, whose fill has the
    owed slots, are unchanged: there unmerged rows compete by centroid interaction with every
    candidate, as before."""
    owed = -(-n // 4)
    most = min(owed - (n - len(kept)), len(kept) - 1)
    if most <= 0:
        return kept, None
    from pgmaxsim.plpy import sketch

    taken = set(kept)
    rest = [k for k in coded if k not in taken]
    new = sketch.unmerged(plpy, index, [version_of[k] for k in rest])
    fresh = [k for k in rest if version_of[k] in new]
    slots = min(most, len(fresh) - (n - len(kept)))
    if slots <= 0:
        return kept, None
    return kept[:len(kept) - slots], (slots, kept[len(kept) - slots:] + fresh)
