"""Exact MaxSim of ``maxsim.search``'s candidates in this process, for servers without plpython3u.

There the SQL functions score in SQL arithmetic, one stored half at a time: seconds for
the quickstart's 41 rows. ``maxsim.search_tokens`` returns the rows ``maxsim.search``
would score for this caller (the same checks, prefilter, row-level security and
pending-rows NOTICE) with their stored bytes; they are scored here with the kernels that
PL/Python uses (:func:`pgmaxsim.plpy.scoring.maxsim_stored`) and ranked as
``maxsim.search`` ranks: score descending, then id.

The query is scored as the server would see it: rounded to fp16 (it travels as
``halfvec[]``). Scores agree with the SQL ones to float32 rounding (the sums run in
another order), so a tie between two rows' scores may break the other way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg

from pgmaxsim.db.adapters import Tokens, tokens_cursor
from pgmaxsim.errors import PgmaxsimError, one_line
from pgmaxsim.registry import IndexSpec

#: True when scoring here pays: no plpython3u (SQL arithmetic) and a schema that has search_tokens.
WANTED_SQL = ("SELECT NOT maxsim.has_plpython() AND EXISTS (SELECT 1 FROM pg_catalog.pg_proc p"
              " WHERE p.pronamespace = 'maxsim'::regnamespace AND p.proname = 'search_tokens')")


def wanted(conn: psycopg.Connection[Any]) -> bool:
    """Whether searches on ``conn``'s server score faster here than in SQL."""
    row = conn.execute(WANTED_SQL).fetchone()
    return bool(row and row[0])


def search_pairs(conn: psycopg.Connection[Any], info: IndexSpec, q: np.ndarray, k: int,
                 candidates: int | None) -> list[tuple[str, float]]:
    """``maxsim.search(info.name, q, k, candidates)``'s ``(id, score)`` pairs, scored here."""
    try:
        with tokens_cursor(conn, info.halfvec_oid, info.halfvec_array_oid or None, what="query") as cur:
            cur.execute("SELECT id, tokens, n_tokens FROM maxsim.search_tokens(%s, %s, %s, %s)",
                        (info.name, Tokens(q), k, candidates), binary=True)
            rows = cur.fetchall()
    except psycopg.Error as e:
        raise PgmaxsimError(one_line(e)) from None
    return rank(score_rows(info, q, rows), k)


def score_rows(info: IndexSpec, q: np.ndarray, rows: list[tuple[str, bytes, int]]) -> dict[str, float]:
    """MaxSim of ``q`` against rows ``(id, stored bytes, n_tokens)``; each row in the tier its length says."""
    from pgmaxsim.kernels.quantize import StoredTokensError
    from pgmaxsim.plpy.api import row_storage
    from pgmaxsim.plpy.scoring import maxsim_stored

    query = np.asarray(q, dtype=np.float32).astype(np.float16).astype(np.float32)
    groups: dict[str, list[tuple[str, bytes, int]]] = {}
    for row in rows:
        groups.setdefault(row_storage(len(row[1]), int(row[2]), info.dim, info.storage), []).append(row)
    out: dict[str, float] = {}
    for storage, part in groups.items():
        try:
            scores = maxsim_stored(query, [bytes(r[1]) for r in part], info.dim, storage)
        except StoredTokensError as e:
            raise PgmaxsimError(f"stored tokens of index {info.name!r} are malformed: {e}") from None
        out.update(zip((r[0] for r in part), scores.tolist()))
    return out


def rank(scores: dict[str, float], k: int) -> list[tuple[str, float]]:
    """The best ``k`` as ``maxsim.search`` orders them: score descending, then id.

    >>> rank({"b": 1.0, "a": 1.0, "c": 2.0}, 2)
    [('c', 2.0), ('a', 1.0)]
    """
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
