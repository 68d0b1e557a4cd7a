"""Reading ``python -X importtime`` reports: which packages a command really imported.

The CLI tests use it to check that a warm search stays a thin client (no NumPy, psycopg or torch).
"""

from __future__ import annotations


def imported(importtime_stderr: str) -> set[str]:
    """Top-level package names in a ``python -X importtime`` report."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.add(name.split(".")[0])
    return names
