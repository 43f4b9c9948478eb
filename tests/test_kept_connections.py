"""Each thread keeps its pooled connection between hot statements (``driver.HeldConnections``).

On an engine the store made: a thread's next statement reuses the same
connection with no checkout; at most the pool's size less one threads keep
one; it goes back when its thread ends, after an error, after
``HOLD_SECONDS``, on ``release_connection()``; a disposed pool's connection
is closed, not returned; a forked child leaves its parent's alone. An
engine the application passed in never has one kept.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from conftest import checked_out, drop_table
from wsgi_dbsession import SessionStore, driver
from wsgi_dbsession.cookies import generate_sid
from wsgi_dbsession.express import UTC

MakeStore = Callable[..., SessionStore]


def later() -> dt.datetime:
    return dt.datetime.now(UTC) + dt.timedelta(hours=1)


@pytest.fixture
def checkouts() -> Iterator[Callable[[SessionStore], list[Any]]]:
    """The DBAPI connections a store's pool hands out, one entry per checkout."""
    listened: list[tuple[sa.Engine, Callable[..., None]]] = []

    def watch(store: SessionStore) -> list[Any]:
        seen: list[Any] = []

        def record(dbapi_connection: Any, *_args: Any) -> None:
            seen.append(dbapi_connection)

        sa.event.listen(store.engine, "checkout", record)
        listened.append((store.engine, record))
        return seen

    yield watch
    for engine, record in listened:
        sa.event.remove(engine, "checkout", record)


def test_a_thread_s_statements_share_one_checkout_until_it_gives_it_back(
    make_store: MakeStore, checkouts: Callable[[SessionStore], list[Any]]
) -> None:
    store = make_store()
    store.create_table()
    seen = checkouts(store)
    sid = generate_sid()
    store.set(sid, {"n": 1}, later())
    for _ in range(3):
        assert store.get(sid) == {"n": 1}
    assert len(seen) == 1, "one checkout for four statements"
    assert store.engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    store.release_connection()
    assert store.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert store.get(sid) == {"n": 1}
    assert len(seen) == 2


def test_at_most_the_pool_size_less_one_threads_keep_one_and_a_thread_s_end_gives_it_back(
    make_store: MakeStore,
) -> None:
    store = make_store()
    store.create_table()
    sid = generate_sid()
    store.set(sid, {"n": 1}, later())
    store.release_connection()
    size = store.engine.pool.size()  # type: ignore[attr-defined]
    threads = size + 3
    all_read = threading.Barrier(threads + 1)
    done = threading.Event()
    failures: list[BaseException] = []

    def reader() -> None:
        try:
            assert store.get(sid) == {"n": 1}
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)
        all_read.wait()
        done.wait()

    workers = [threading.Thread(target=reader) for _ in range(threads)]
    for worker in workers:
        worker.start()
    all_read.wait()
    try:
        assert not failures
        assert store.runner.connections.kept == size - 1
        assert store.engine.pool.checkedout() == size - 1  # type: ignore[attr-defined]
    finally:
        done.set()
        for worker in workers:
            worker.join()
    assert store.runner.connections.kept == 0
    assert checked_out(store) == 0


def test_an_engine_the_application_passed_in_never_has_a_connection_kept(
    db_url: str, table_name: str, engine_for: Callable[[str], sa.Engine]
) -> None:
    engine = engine_for(db_url)  # the package's tuned engine, but the application's
    store = SessionStore(engine=engine, table_name=table_name)
    try:
        store.create_table()
        sid = generate_sid()
        store.set(sid, {"n": 1}, later())
        assert store.get(sid) == {"n": 1}
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert store.runner.connections.kept == 0
    finally:
        drop_table(engine, store.table)


def test_after_an_error_the_connection_goes_back_to_the_pool(make_store: MakeStore) -> None:
    store = make_store()
    store.create_table()
    sid = generate_sid()
    store.set(sid, {"n": 1}, later())
    assert store.runner.connections.kept == 1
    drop_table(store.engine, store.table)
    with pytest.raises(Exception, match=r"does not exist|no such table|doesn't exist"):
        store.load(sid)
    assert store.runner.connections.kept == 0
    assert store.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_a_connection_is_kept_for_at_most_hold_seconds(
    make_store: MakeStore, checkouts: Callable[[SessionStore], list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(driver, "HOLD_SECONDS", 0.0)
    store = make_store()
    store.create_table()
    seen = checkouts(store)
    sid = generate_sid()
    store.set(sid, {"n": 1}, later())
    assert store.get(sid) == {"n": 1}
    assert len(seen) == 2, "held for no time: each statement checks one out"


def test_a_disposed_pool_s_kept_connection_is_closed_not_returned(make_store: MakeStore) -> None:
    store = make_store()
    store.create_table()
    sid = generate_sid()
    store.set(sid, {"n": 1}, later())
    pooled, kept = store.runner.connections.connection()
    assert kept
    dbapi_connection = pooled.dbapi_connection
    store.engine.dispose()  # as a failover's retry does
    assert store.get(sid) == {"n": 1}  # on a connection of the new pool
    assert store.runner.connections.connection()[0].dbapi_connection is not dbapi_connection
    with pytest.raises(Exception):  # noqa: B017, PT011  # each driver says "closed" its own way
        dbapi_connection.cursor().execute("SELECT 1")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork here")
def test_a_forked_child_leaves_its_parent_s_kept_connection_alone(make_store: MakeStore) -> None:
    store = make_store()
    store.create_table()
    sid = generate_sid()
    store.set(sid, {"n": 1}, later())
    assert store.runner.connections.kept == 1
    kept = store.runner.connections.connection()[0].dbapi_connection
    pid = os.fork()
    if pid == 0:  # the child: its own connection, then it ends (and its _Held with it)
        status = 1
        try:
            status = 0 if store.get(sid) == {"n": 1} else 2
            store.set(sid, {"n": 2}, later())
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's kept connection still works: the child neither used nor closed it.
    assert store.get(sid) == {"n": 2}
    assert store.runner.connections.connection()[0].dbapi_connection is kept, "no retry was needed"
