"""duraflow benchmarks: each prints a table and writes JSON (see benchmarks/__main__.py)."""
