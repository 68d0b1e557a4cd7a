"""``pgmaxsim worker``: embed queued rows (the ingestion worker)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from pgmaxsim.worker import queue

EPILOG = """\
examples:
  pgmaxsim worker                          # serve every index with a model, until SIGTERM/Ctrl-C
  pgmaxsim worker --once                   # drain the queue (waiting for retries) and exit
  pgmaxsim worker --index docs --index pages --batch-size 16 --device cuda

Run as many workers as you like, on one machine or many: each row is encoded by
one worker at a time. SIGTERM (or Ctrl-C) finishes the current batch and exits;
a second Ctrl-C aborts it (nothing is lost: the batch is rolled back and redone).
A lost connection or a PostgreSQL restart is retried with backoff.
Re-embedding an index under a new model: pgmaxsim index reindex NAME --model M.
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "worker",
        help="embed queued rows (run one or many; --once drains and exits)",
        description="Claim queued rows, encode them with their index's model, write the embeddings.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--index", action="append", metavar="NAME", dest="indexes",
                   help="serve only this index (repeatable; default: every index with a model)")
    p.add_argument("--once", action="store_true", help="drain the queue and exit")
    p.add_argument("--batch-size", type=int, default=queue.DEFAULT_BATCH_SIZE, metavar="N",
                   help=f"rows per batch (default {queue.DEFAULT_BATCH_SIZE})")
    p.add_argument("--token-budget", type=int, default=queue.DEFAULT_TOKEN_BUDGET, metavar="T",
                   help="estimated tokens per batch; an image counts 1024 "
                        f"(default {queue.DEFAULT_TOKEN_BUDGET})")
    p.add_argument("--max-attempts", type=int, default=queue.DEFAULT_MAX_ATTEMPTS, metavar="N",
                   help=f"attempts before a row goes to maxsim.failed (default {queue.DEFAULT_MAX_ATTEMPTS})")
    p.add_argument("--retry-delay", type=float, default=queue.DEFAULT_RETRY_BASE_S, metavar="S",
                   help="first retry delay in seconds, x4 per attempt (default %(default)s)")
    p.add_argument("--exit-on-error", action="store_true",
                   help="stop at the first row error (the batch is rolled back, nothing is recorded)")
    p.add_argument("--poll", type=float, default=2.0, metavar="S", help="idle poll interval (default 2 s)")
    p.add_argument("--image-root", metavar="DIR",
                   help="image paths in rows resolve against DIR and may not leave it (default: any local path)")
    p.add_argument("--max-pixels", type=int, metavar="N",
                   help="downscale each image or PDF page to at most N pixels (default 2048x2048)")
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--dtype", help="float32, float16, bfloat16 (default: bf16 on CUDA, fp32 on CPU)")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="show a progress bar (default: when stderr is a terminal)")
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pgmaxsim.errors import PgmaxsimError
    from pgmaxsim.worker.loop import run_worker

    for name in ("batch_size", "token_budget", "max_attempts"):
        if getattr(args, name) < 1:
            raise PgmaxsimError(f"--{name.replace('_', '-')} must be at least 1")
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    level = logging.WARNING if args.quiet or progress else logging.INFO
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", 0) > 1 else level,
                        format="%(asctime)s %(message)s", stream=sys.stderr)
    stats = run_worker(
        args.dsn, indexes=args.indexes, once=args.once, batch_size=args.batch_size,
        token_budget=args.token_budget, max_attempts=args.max_attempts, retry_base=args.retry_delay,
        exit_on_error=args.exit_on_error, poll_interval=args.poll, progress=progress,
        device=args.device, dtype=args.dtype, image_root=args.image_root, max_pixels=args.max_pixels,
        max_downtime=300.0 if args.once else None)
    print(summary(stats))
    if args.once and stats.failed:
        raise PgmaxsimError(f"{stats.failed} row(s) failed and are recorded in maxsim.failed"
                            " (`pgmaxsim status` shows why)")
    return 0


def summary(stats: Any) -> str:
    """The worker's last line: each row counted once, by where it ended up."""
    parts = [f"{stats.done} row(s) embedded", f"{stats.skipped} unchanged", f"{stats.missing} gone",
             f"{stats.failed} failed"]
    if stats.waiting:
        parts.append(f"{stats.waiting} still queued for a retry")
    line = f"worker {stats.worker_id}: " + ", ".join(parts)
    if stats.reembeds_finished:
        line += f"; switched over: {', '.join(stats.reembeds_finished)}"
    return line
