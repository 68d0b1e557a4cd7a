"""A progress bar for long backfills: rows handled / rows queued, with rate and ETA (tqdm).

The total grows when rows are queued while the worker runs (it is re-read
whenever the worker polls the queue), so the ETA stays honest.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO


class Progress:
    """Wraps a tqdm bar; a no-op when disabled."""

    def __init__(self, enabled: bool, *, stream: TextIO | None = None, desc: str = "embedding") -> None:
        self.bar: Any = None
        self.done = 0
        if enabled:
            from tqdm import tqdm  # type: ignore[import-untyped]

            self.bar = tqdm(total=0, desc=desc, unit="row", file=stream or sys.stderr, dynamic_ncols=True,
                            smoothing=0.1, mininterval=0.5)

    def set_pending(self, pending: int) -> None:
        """The queue holds ``pending`` more rows: total = handled so far + pending."""
        if self.bar is not None:
            total = self.done + max(0, pending)
            if total != self.bar.total:
                self.bar.total = total
                self.bar.refresh()

    def advance(self, rows: int, *, failed: int = 0, index: str | None = None) -> None:
        self.done += rows
        if self.bar is not None:
            if self.done > (self.bar.total or 0):
                self.bar.total = self.done
            if failed or index:
                self.bar.set_postfix_str(f"{index or ''}{' failed ' + str(failed) if failed else ''}",
                                         refresh=False)
            self.bar.update(rows)

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
