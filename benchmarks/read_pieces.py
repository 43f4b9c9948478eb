"""Where a read's extra µs over min go: each piece of a session read timed alone, beside min's.

``python -m benchmarks.read_pieces --database postgresql`` times, in this
process's CPU time (best of ``--rounds`` batches), a whole read request
through wsgi_dbsession and through min, then the pieces of wsgi_dbsession's
read one by one: the cookie check, the pool checkout and return, building
the statement's parameters, the driver's execute and fetch, the row's type
processing, the rest of the statement path (retries, fork check, observers),
and decoding the stored record; min's cookie check, statement and
``json.loads`` beside them. What the pieces do not add up to is the Session
object, the express-session record and the WSGI cycle. A diagnostic: it
reaches into the store's prepared statement and min's cursor.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from wsgi_dbsession import cookies, express

from . import systems
from .common import BACKENDS, database_url, drop_tables, markdown_table, unique_table_name


def cpu_us(work: Callable[[], object], *, calls: int, rounds: int) -> float:
    """The best per-call CPU µs of ``work`` over ``rounds`` batches of ``calls`` calls."""
    for _ in range(calls // 10):
        work()
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(calls):
            work()
        best = min(best, (time.process_time() - started) / calls * 1e6)
    return best


def measure(backend: str, workdir: Path, *, calls: int, rounds: int) -> list[tuple[str, float, str]]:
    url = database_url(backend, workdir)
    tables = [unique_table_name("bench_pieces"), unique_table_name("bench_pieces_min")]
    systems.create_session_table(url, tables[1])
    app = systems.ours(url, tables[0], cleanup_interval=0)
    reference = systems.Min(backend, url, tables[1])
    try:
        return _pieces(backend, app, reference, calls=calls, rounds=rounds)
    finally:
        app.close()
        reference.close()
        drop_tables(url, tables)


def _pieces(
    backend: str, app: systems.App, reference: systems.Min, *, calls: int, rounds: int
) -> list[tuple[str, float, str]]:
    def timed(work: Callable[[], object]) -> float:
        return cpu_us(work, calls=calls, rounds=rounds)

    ours_cookie = systems.cookie_of(systems.call(app, "/new"))
    min_cookie = systems.cookie_of(systems.call(reference, "/new"))
    manager = app.manager  # type: ignore[attr-defined]
    store, cookie = manager.store, manager.cookie
    sid = cookie.read(ours_cookie)
    min_sid = reference._verified_sid(min_cookie)
    assert sid is not None and min_sid is not None
    now = dt.datetime.now(dt.timezone.utc)
    stored = store.load(sid, now)
    assert stored is not None
    prepared = store._select  # the read's statement
    compiled = prepared.compiled(store.engine.dialect)
    params = {"sid": sid, "now": now}
    parameters = compiled.parameters(params)
    pooled = store.engine.raw_connection()
    cursor = pooled.cursor()  # the driver's cursor, as driver.py keeps one per connection
    pooled.close()
    cursor.execute(compiled.sql, parameters)
    row = cursor.fetchall()[0]

    def execute() -> None:
        cursor.execute(compiled.sql, parameters)
        cursor.fetchall()

    def checkout() -> None:
        store.engine.raw_connection().close()

    def kept_connection() -> None:
        store.runner.connections.connection()  # this thread's, kept since the first load

    def decode() -> None:
        express.decode(store.serializer.loads(stored.text), None, now)

    min_params = (min_sid, systems.db_timestamp(backend, now))

    def min_select() -> None:
        reference._execute(reference._select, min_params)
        reference._cursor.fetchone()

    request = timed(lambda: systems.call(app, "/read", ours_cookie))
    min_request = timed(lambda: systems.call(reference, "/read", min_cookie))
    load = timed(lambda: store.load(sid, now))
    pieces = {
        "kept": timed(kept_connection),
        "parameters": timed(lambda: compiled.parameters(params)),
        "execute": timed(execute),
        "row": timed(lambda: compiled.row(row)),
    }
    pool_checkout = timed(checkout)  # what the kept connection saves, beside the pieces
    verify = timed(lambda: cookie.read(ours_cookie))
    hmac_uncached = timed(lambda: cookies._signature.__wrapped__(sid, cookie.secrets[0]))
    decoding = timed(decode)
    min_verify = timed(lambda: reference._verified_sid(min_cookie))
    min_statement = timed(min_select)
    min_loads = timed(lambda: json.loads(stored.text))
    wrappers = load - sum(pieces.values())
    rest = request - load - verify - decoding
    min_rest = min_request - min_verify - min_statement - min_loads
    return [
        ("the whole read request", request, f"{min_request:.1f}"),
        ("cookie check (signature cached)", verify, f"{min_verify:.1f}"),
        ("  its HMAC and base64, when not cached", hmac_uncached, ""),
        ("store.load: the SELECT in all", load, f"{min_statement:.1f}"),
        ("  the thread's kept connection (driver.HeldConnections)", pieces["kept"], ""),
        ("  the statement's parameters", pieces["parameters"], ""),
        ("  the driver's execute and fetch", pieces["execute"], f"{min_statement:.1f}"),
        ("  the row's type processing", pieces["row"], ""),
        ("  retries, fork check, observers (the rest of load)", wrappers, ""),
        ("decoding the record (json.loads, express fields)", decoding, f"{min_loads:.1f}"),
        ("Session object, record, WSGI cycle (the rest)", rest, f"{min_rest:.1f}"),
        ("a pool checkout and return, alone (the kept connection saves it)", pool_checkout, ""),
    ]


def render(backend: str, pieces: list[tuple[str, float, str]]) -> str:
    rows = [[name, f"{value:.1f}", reference] for name, value, reference in pieces]
    table = markdown_table(["piece of a read", "wsgi_dbsession CPU µs", "min CPU µs"], rows)
    return f"**{backend}**\n\n{table}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.read_pieces", description=__doc__)
    parser.add_argument("--databases", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--calls", type=int, default=3000, help="calls per batch")
    parser.add_argument("--rounds", type=int, default=7, help="batches per piece (the best counts)")
    args = parser.parse_args(argv)
    for backend in args.databases:
        with tempfile.TemporaryDirectory(prefix="wsgi_dbsession-pieces-") as tmp:
            pieces = measure(backend, Path(tmp), calls=args.calls, rounds=args.rounds)
        print(render(backend, pieces) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
