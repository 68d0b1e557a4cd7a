"""The ingestion worker: queued source rows → token embeddings, crash-safe and concurrent.

- :func:`run_worker` — the loop behind ``pgmaxsim worker`` (``once=True`` drains and returns).
- :func:`status` / :func:`render_status` — what ``pgmaxsim status`` shows.
- :func:`start_reembed` / :func:`cancel_reembed` / :func:`reembed_status` — re-embed an index
  under a new model alongside the old one; workers switch over when it is complete.

Modules: ``queue`` (claim / dequeue / retry / failed), ``load`` (source rows → encoder
inputs), ``encoding`` (encoder cache), ``batch`` (one transaction per batch), ``loop``,
``progress``, ``reembed``, ``report`` (status).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "WorkerStats",
    "cancel_reembed",
    "reembed_status",
    "render_status",
    "run_worker",
    "start_reembed",
    "status",
]


def __getattr__(name: str) -> Any:
    if name in ("run_worker", "WorkerStats"):
        from pgmaxsim.worker import loop

        return getattr(loop, name)
    if name in ("start_reembed", "cancel_reembed", "reembed_status"):
        from pgmaxsim.worker import reembed

        return getattr(reembed, name)
    if name == "status":
        from pgmaxsim.worker.report import status

        return status
    if name == "render_status":
        from pgmaxsim.worker.report import render

        return render
    raise AttributeError(f"module 'pgmaxsim.worker' has no attribute {name!r}")
