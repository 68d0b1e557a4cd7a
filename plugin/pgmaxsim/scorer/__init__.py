"""The scorer service: one long-lived process per GPU (CPU NumPy backend without one).

Kept import-light on purpose: ``protocol`` and ``client`` import only the
standard library and NumPy (PL/Python uses them inside PostgreSQL); ``store``,
``sync`` and ``server`` (psycopg, CuPy) are imported only by the service.
"""
