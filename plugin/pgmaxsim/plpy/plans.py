"""Prepared statements kept for the backend's life, by their text and argument types.

Why: a search runs the same few statements every time (each names its index's tables, so the text is
the key), and preparing one costs a parse and a plan per call. A kept plan is replanned by
PostgreSQL itself when a table it reads changes (its plan cache), so keeping it is safe.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

_kept: dict[tuple[str, tuple[str, ...]], Any] = {}


def kept(plpy: Any, sql: str, types: Iterable[str] = ()) -> Any:
    """``plpy.prepare(sql, types)``, once per backend."""
    key = (sql, tuple(types))
    plan = _kept.get(key)
    if plan is None:
        plan = _kept[key] = plpy.prepare(sql, list(key[1]))
    return plan
