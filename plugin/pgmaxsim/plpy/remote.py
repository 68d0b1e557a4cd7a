"""Hook to the scorer service (issue 4), tried before the in-backend CPU path.

This is the minimal version: no scorer is configured, so both functions return
None and the SQL functions score on the CPU. The scorer's engineer replaces this
module, keeping these two signatures:

- ``score_ids(plpy, index, query, ids)`` → ``{id: score}`` for the ids the
  scorer holds at the version the caller's snapshot sees (a subset is fine: the
  caller scores the rest on the CPU), or None when no scorer is usable.
- ``search_all(plpy, index, query, k)`` → exhaustive exact top-k as a list of
  ``(id, score)`` best first, correct for the caller's snapshot, or None.

``index`` is a dict with keys id, name, token_table, dim, id_type, pooling,
options; ``query`` an ``(nq, d)`` float32 array; ids are text keys. When a
scorer is configured but down or overloaded, these functions emit the NOTICE
themselves (``plpy.notice``) and return None.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def score_ids(plpy: Any, index: dict[str, Any], query: np.ndarray, ids: list[str]) -> dict[str, float] | None:
    return None


def search_all(plpy: Any, index: dict[str, Any], query: np.ndarray, k: int | None) -> list[tuple[str, float]] | None:
    return None
