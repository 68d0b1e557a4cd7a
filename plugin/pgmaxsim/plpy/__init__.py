"""Code behind the PL/Python SQL functions (runs inside PostgreSQL: stdlib + NumPy only)."""
