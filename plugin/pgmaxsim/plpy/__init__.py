"""Code behind the PL/Python functions of sql/0002_scoring_plpython.sql.

It runs inside PostgreSQL backends, so it imports only the standard library,
NumPy and pgmaxsim modules that do the same (db.codec, pooling, scorer client).

- :mod:`.api`: the entry points the SQL functions call (``score``, ``maxsim``, ``pool``)
- :mod:`.tokens`: ``array_send(tokens)`` blobs → one packed float32 matrix
- :mod:`.cpu`: exact MaxSim of a query against packed documents (NumPy)
- :mod:`.remote`: the scorer-service hook tried before the CPU path

Importing this package caps BLAS at one thread in the backend (unless the server's
environment says otherwise): a database serves many connections at once, each a
process, and the products here are small enough that BLAS threads only add
contention (measured 2x slower with two threads on a 2-core machine, 10x under load).

It also tunes glibc's malloc in the backend (allocations under 4 MB from the heap,
heap trimmed only past 64 MB free): each fetched row's tokens are a few 256 KB
buffers (PostgreSQL's detoasted copy, Python's bytes), which glibc would otherwise
map and unmap one by one, page-faulting on every row (measured 2.3x slower
fetches). The cost is up to ~64 MB of freed memory a backend may keep.
"""

import os
import sys

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _tune_malloc() -> None:
    if not sys.platform.startswith("linux"):
        return
    import platform

    if platform.libc_ver()[0] != "glibc":
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)
        libc.mallopt(_M_MMAP_THRESHOLD, 4 << 20)
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        pass


_tune_malloc()
