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
contention (measured 2x slower with two threads on a 2-core machine).
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
