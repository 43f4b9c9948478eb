"""A lost race is retried for a budget of time, then answered as retryable (issue 22, item 2).

A real lost race on SQLite: another connection holds the database's write
lock, and the app's engine gives up waiting after 10 ms ("database is
locked", which the package treats as a lost race). The package retries with
growing jittered pauses for ``CONFLICT_BUDGET`` seconds: a race that ends
within it is a 200; one that outlasts it is ``unavailable_status`` with
``Retry-After``, never a 500. (The count of tries it used to have, 12, ran
out after about a second whatever the machine's load.)
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import webtest

from conftest import SECRET, unique_table_name
from wsgi_dbsession import SessionMiddleware
from wsgi_dbsession.statements import CONFLICT_BUDGET

pytestmark = pytest.mark.slow


def counter(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    session = environ["dbsession"]
    session["n"] = session.get("n", 0) + 1
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(session["n"]).encode()]


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[webtest.TestApp, Path]]:
    path = tmp_path / "sessions.sqlite"
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.01})
    middleware = SessionMiddleware(
        counter, secret=SECRET, engine=engine, table_name=unique_table_name(), cleanup_interval=0
    )
    middleware.store.create_table()
    yield webtest.TestApp(middleware), path
    middleware.close()
    engine.dispose()


def hold_write_lock(path: Path, seconds: float) -> threading.Thread:
    """Another process's long write: the database's write lock held for ``seconds``."""
    taken = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        taken.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(10)
    return thread


def test_a_race_lost_for_seconds_is_retried_until_it_is_won(app: tuple[webtest.TestApp, Path]) -> None:
    client, path = app
    assert client.get("/").text == "1"
    holder = hold_write_lock(path, CONFLICT_BUDGET / 2)
    started = time.monotonic()
    response = client.get("/")
    holder.join()
    assert response.status_int == 200 and response.text == "2"
    assert time.monotonic() - started >= CONFLICT_BUDGET / 2 - 0.1, "it waited for the lock to go"


def test_a_race_lost_past_the_budget_is_unavailable_with_retry_after(
    app: tuple[webtest.TestApp, Path],
) -> None:
    client, path = app
    assert client.get("/").text == "1"
    holder = hold_write_lock(path, CONFLICT_BUDGET + 2)
    started = time.monotonic()
    response = client.get("/", expect_errors=True)
    elapsed = time.monotonic() - started
    holder.join()
    assert response.status_int == 503, response.text
    assert response.headers["Retry-After"] == "1"
    assert CONFLICT_BUDGET - 0.5 <= elapsed <= CONFLICT_BUDGET + 1.5, elapsed
    assert client.get("/").text == "2", "the session was kept as it was"
