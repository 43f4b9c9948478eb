"""Each option the middleware takes reaches the part that acts on it, and what the app
hands to ``start_response`` reaches the server.

Written for survivors of the mutation run of the request path (docs/reliability.md):
a dropped keyword left the store on its defaults, and no test looked where the rows went.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import webtest

from conftest import LIVE_URLS, SECRET, StatementLog, drop_table
from tests.apps import session_app
from tests.prune_helpers import seed
from tests.schema_helpers import scratch_schema
from wsgi_dbsession import SessionMiddleware


def test_table_name_sid_column_and_schema_reach_the_store(engine_for: Any) -> None:
    engine = engine_for(LIVE_URLS["postgresql"])
    table = f"opts_{secrets.token_hex(4)}"
    with scratch_schema(engine) as schema:
        middleware = SessionMiddleware(
            session_app,
            secret=SECRET,
            engine=engine,
            table_name=table,
            sid_column="session_key",
            schema=schema,
            cleanup_interval=0,
        )
        webtest.TestApp(middleware).get("/set", params={"key": "k", "value": '"v"'})
        quoted = engine.dialect.identifier_preparer
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                f"SELECT session_key FROM {quoted.quote(schema)}.{quoted.quote(table)}"
            ).all()
        assert len(rows) == 1
        middleware.close()


def test_create_table_false_never_creates_the_table(db_url: str) -> None:
    table = f"missing_{secrets.token_hex(4)}"
    middleware = SessionMiddleware(
        session_app, secret=SECRET, url=db_url, table_name=table, create_table=False, cleanup_interval=0
    )
    try:
        client = webtest.TestApp(middleware)
        answer = client.get("/set", params={"key": "k", "value": '"v"'}, expect_errors=True)
        assert answer.status_int >= 500, "the missing table is an error, not created on the fly"
        assert not middleware.store.has_table()
    finally:
        middleware.close()


def test_cleanup_batch_size_reaches_the_prune_job(make_app: Any) -> None:
    _client, middleware = make_app(session_app, cleanup_interval=3600, cleanup_batch_size=7)
    seed(middleware.store, expired=20, live=1)
    log = StatementLog(middleware.store)
    assert middleware.manager.pruner is not None
    assert middleware.manager.pruner.run_once() == 20
    deletes = [sql for sql in log.statements if sql.lstrip().upper().startswith("DELETE")]
    assert len(deletes) == 3, "batches of 7, 7 and 6 rows"


def test_the_exc_info_of_the_app_reaches_the_server(db_url: str) -> None:
    # PEP 3333: a second start_response (an error page after a failure) must pass
    # exc_info through, or the server refuses it: the middleware hands it on as given.
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ["dbsession"]["seen"] = True
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise RuntimeError("the app failed after starting its answer")
        except RuntimeError:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"failed"]

    calls: list[tuple[str, Any]] = []

    def server_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        if calls and exc_info is None:
            raise AssertionError("start_response called again without exc_info")
        calls.append((status, exc_info))

    table = f"excinfo_{secrets.token_hex(4)}"
    middleware = SessionMiddleware(app, secret=SECRET, url=db_url, table_name=table, cleanup_interval=0)
    try:
        body = middleware(
            {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}, server_start_response
        )
        assert list(body) == [b"failed"]
        getattr(body, "close", lambda: None)()
        assert [status for status, _ in calls] == ["200 OK", "500 Internal Server Error"]
        assert calls[1][1] is not None and calls[1][1][0] is RuntimeError
    finally:
        drop_table(middleware.store.engine, middleware.store.table)
        middleware.close()


@pytest.fixture
def backend() -> str:
    return "sqlite"
