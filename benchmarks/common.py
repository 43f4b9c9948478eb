"""What every benchmark shares: the databases, table names, statistics and tables of results."""

from __future__ import annotations

import os
import secrets
import statistics
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa

from wsgi_dbsession.store import normalize_url

SECRET = "benchmark-secret-0123456789abcdefghijklmnop"
BACKENDS = ("sqlite", "postgresql", "mariadb")
# The same live servers (and environment variables) as the test suite's conftest.
SERVER_URLS = {
    "postgresql": os.environ.get("WSGI_DBSESSION_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    "mariadb": os.environ.get("WSGI_DBSESSION_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
}


def database_url(backend: str, workdir: Path) -> sa.URL:
    """The SQLAlchemy URL of a backend, with its driver; SQLite is a file in ``workdir``."""
    if backend == "sqlite":
        return sa.make_url(f"sqlite:///{workdir / 'bench.sqlite'}")
    return normalize_url(SERVER_URLS[backend])


def unique_table_name(prefix: str) -> str:
    """A table name no other run (or concurrent test) uses."""
    return f"{prefix}_{secrets.token_hex(4)}"


def drop_tables(url: sa.URL, names: Sequence[str]) -> None:
    """Drop the tables a benchmark created (and only those)."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for name in names:
                sa.Table(name, sa.MetaData()).drop(conn, checkfirst=True)
    finally:
        engine.dispose()


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` 0.99 is p99)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))
    return ordered[rank]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table, columns padded so it also reads in a terminal."""
    cells = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def fmt_us(value: float) -> str:
    return f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}x"
