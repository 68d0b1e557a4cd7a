"""Modules renamed for clarity keep their old import paths, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import sys

import pytest


@pytest.mark.parametrize(("old", "new", "name"), [("pgmaxsim.query", "pgmaxsim.search", "cache_query"),
                                                  ("pgmaxsim.storage", "pgmaxsim.writes", "write_rows")])
def test_old_module_names_alias_the_new_ones(old: str, new: str, name: str) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} is now {new}"):
        mod = importlib.import_module(old)
    assert mod is importlib.import_module(new)
    assert getattr(mod, name) is getattr(importlib.import_module(new), name)
