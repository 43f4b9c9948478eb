"""Does a read cost more when the table holds a million sessions than when it holds a thousand?

Two tables of live sessions with random-looking ids (md5 hex, as spread over
the primary key as real ids), bulk-loaded in one statement each; every
request reads a different session, picked at random, through wsgi_dbsession
and through raw (the statements alone, see systems.py). The tables are dropped afterwards.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from wsgi_dbsession import SessionMiddleware, sign
from wsgi_dbsession.cookies import encode_value

from . import systems
from .common import (
    SECRET,
    database_url,
    drop_tables,
    fmt_ratio,
    fmt_us,
    markdown_table,
    median,
    unique_table_name,
)
from .request_cost import interleave

SESS = (
    '{"cookie":{"originalMaxAge":86400000,"expires":"2030-01-01T00:00:00.000Z","httpOnly":true,'
    '"path":"/","sameSite":"lax"},"_created":1700000000.0,"count":1}'
)
SAMPLE = 2000  # distinct sessions each measurement cycles through


def sid_of(row: int) -> str:
    """The id of bulk-loaded row ``row`` (1-based): what md5(row) gives in SQL."""
    return hashlib.md5(str(row).encode(), usedforsecurity=False).hexdigest()


def bulk_load(backend: str, url: sa.URL, table: str, rows: int) -> None:
    """Fill ``table`` with ``rows`` live sessions in one statement (SQLite: one executemany)."""
    connection = systems.connect(backend, url)
    try:
        cursor = connection.cursor()
        count = int(rows)  # only an int reaches the SQL text
        if backend == "postgresql":
            cursor.execute(
                f"INSERT INTO {table} (sid, sess, expired) "
                "SELECT md5(g::text), %s::json, now() + interval '1 day' "
                f"FROM generate_series(1, {count}) AS g",
                (SESS,),
            )
            cursor.execute(f"ANALYZE {table}")
        elif backend == "mariadb":
            cursor.execute(
                f"INSERT INTO {table} (sid, sess, expired) "
                "SELECT MD5(seq), %s, UTC_TIMESTAMP() + INTERVAL 1 DAY "
                f"FROM seq_1_to_{count}",
                (SESS,),
            )
            cursor.execute(f"ANALYZE TABLE {table}")
            cursor.fetchall()
        else:
            expires = systems.iso_z(dt.datetime.now(systems.UTC) + dt.timedelta(days=1))
            cursor.execute("BEGIN")
            cursor.executemany(
                f"INSERT INTO {table} (sid, sess, expired) VALUES (?, ?, ?)",
                ((sid_of(row), SESS, expires) for row in range(1, count + 1)),
            )
            cursor.execute("COMMIT")
    finally:
        connection.close()


@dataclass
class SizeResult:
    """Median µs per read, by (system, rows in the table)."""

    backend: str
    small: int
    big: int
    micros: dict[tuple[str, int], float]

    def ratio(self, system: str) -> float:
        return self.micros[(system, self.big)] / self.micros[(system, self.small)]


def _cycling_reads(app: systems.App, cookies: list[str]) -> Callable[[], object]:
    cycle = itertools.cycle(cookies)
    return lambda: systems.call(app, "/read", next(cycle))


def measure(
    backend: str, workdir: Path, *, small: int, big: int, rounds: int, batch_seconds: float
) -> SizeResult:
    url = database_url(backend, workdir)
    tables = {rows: unique_table_name(f"bench_rows{rows}") for rows in (small, big)}
    opened: list[SessionMiddleware | systems.Raw] = []
    try:
        runs: dict[tuple[str, int], Callable[[], object]] = {}
        for rows, table in tables.items():
            systems.create_session_table(url, table)
            bulk_load(backend, url, table, rows)
            picked = [sid_of(random.randint(1, rows)) for _ in range(SAMPLE)]
            ours = systems.ours(url, table)
            raw = systems.Raw(backend, url, table)
            opened += [ours, raw]
            signed = [f"connect.sid={encode_value(sign(sid, SECRET))}" for sid in picked]
            runs[("wsgi_dbsession", rows)] = _cycling_reads(ours, signed)
            runs[("raw", rows)] = _cycling_reads(raw, [f"{systems.RAW_COOKIE}={sid}" for sid in picked])
        samples = interleave(runs, rounds=rounds, batch_seconds=batch_seconds)
    finally:
        for system in opened:
            system.close()
        drop_tables(url, list(tables.values()))
    return SizeResult(backend, small, big, {key: median(values) for key, values in samples.items()})


def render(results: list[SizeResult]) -> str:
    rows = []
    for result in results:
        for system in ("raw", "wsgi_dbsession"):
            rows.append(
                [
                    result.backend,
                    system,
                    fmt_us(result.micros[(system, result.small)]),
                    fmt_us(result.micros[(system, result.big)]),
                    fmt_ratio(result.ratio(system)),
                ]
            )
    small, big = results[0].small, results[0].big
    return markdown_table(
        ["database", "system", f"read µs, {small:,} rows", f"read µs, {big:,} rows", "ratio"], rows
    )
