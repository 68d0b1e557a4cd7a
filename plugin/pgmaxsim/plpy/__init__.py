"""Code behind the PL/Python functions of sql/0002_scoring_plpython.sql.

It runs inside PostgreSQL backends, so it imports only the standard library,
NumPy and pgmaxsim modules that do the same (db.codec, pooling, scorer client).

- :mod:`.api`: the entry points the SQL functions call (``score``, ``maxsim``, ``pool``)
- :mod:`.tokens`: ``array_send(tokens)`` blobs → one packed float32 matrix
- :mod:`.cpu`: exact MaxSim of a query against packed documents (NumPy)
- :mod:`.remote`: the scorer-service hook tried before the CPU path
"""
