"""Engines the user built with plain ``sqlalchemy.create_engine()`` (issue 22, item 1).

docs/configuration.md invites ``engine=`` (Flask-SQLAlchemy's ``db.engine``,
an app's own engine): SQLAlchemy's defaults there, not the package's
autocommit engine. The package takes the connection behaviour it needs per
use, so every acknowledged write is kept on them too. With many writers on
one session through gunicorn (threads and processes), tests/test_contention.py
runs the same check with such engines.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from conftest import drop_table
from wsgi_dbsession import SessionStore
from wsgi_dbsession.store import normalize_url, utcnow

HOLD = 1.0  # seconds the locked save keeps its lock while another request tries to write


@pytest.fixture
def user_store(db_url: str, table_name: str) -> Iterator[SessionStore]:
    engine = sa.create_engine(normalize_url(db_url))  # SQLAlchemy's defaults: no autocommit
    store = SessionStore(engine=engine, table_name=table_name)
    store.create_table()
    yield store
    drop_table(engine, store.table)
    assert engine.pool.checkedout() == 0
    engine.dispose()


def test_a_write_during_a_locked_save_on_a_user_engine_waits_for_it(
    user_store: SessionStore, db_url: str, table_name: str
) -> None:
    """The contended save's read and write are one transaction holding the row.

    Another request writing meanwhile waits for its commit, so neither
    overwrites the other unseen. pysqlite's own transactions begin only
    before the first write: the locking read ran outside them, and the
    other write slipped in between, to be overwritten (lost) at once.
    """
    other = SessionStore(url=db_url, table_name=table_name)
    expires = utcnow() + dt.timedelta(hours=1)
    user_store.write("s1", '{"a":1}', expires)
    written = threading.Event()
    seen_inside: list[bool] = []

    def other_request() -> None:
        other.write("s1", '{"b":2}', expires)
        written.set()

    writer = threading.Thread(target=other_request)

    def rewrite(current: str) -> tuple[str, dt.datetime]:
        assert current == '{"a":1}'
        writer.start()
        written.wait(HOLD)  # with the row held, the other write cannot land now
        seen_inside.append(written.is_set())
        return '{"a":2}', expires

    try:
        assert user_store.replace_locked("s1", utcnow(), rewrite)
        writer.join(timeout=30)
        assert seen_inside == [False], "another write landed inside the locked save: it was overwritten"
        stored = other.load("s1")
        assert stored is not None and stored.text == '{"b":2}', "the later write is the one kept"
    finally:
        other.dispose()


def test_every_statement_on_a_user_engine_is_committed(user_store: SessionStore) -> None:
    """Writes through a non-autocommit engine are committed, whatever ran first on the runner."""
    expires = utcnow() + dt.timedelta(hours=1)
    user_store.write("s1", '{"a":1}', expires)
    user_store.replace_locked("s1", utcnow(), lambda _text: ('{"a":2}', expires))
    user_store.write("s2", '{"c":3}', expires)  # after a locked save switched its connection
    assert user_store.replace("s2", '{"c":4}', expires, expected='{"c":3}')
    user_store.engine.dispose()  # nothing left open to hide an uncommitted write
    assert (user_store.get("s1"), user_store.get("s2")) == ({"a": 2}, {"c": 4})
