"""Peers' own test suites, ported to run against this package (see docs/flask.md)."""
