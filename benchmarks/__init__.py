"""Benchmarks of wsgi_dbsession against the raw-driver floor, a hand-written minimal middleware,
Django's database sessions and Beaker.

Run them all with ``python -m benchmarks`` from the repository root (see
docs/benchmarks.md for what each table means and the numbers of the last run).
"""
