"""One prune from the command line: its lease and its batches (issue 22, item 6).

- A prune that fails gives its lease back, so a retry right away prunes
  instead of being told another process holds it.
- ``--batch-size N`` is obeyed, by ``wsgi-dbsession prune`` and ``flask
  dbsession prune``: 5 expired rows in batches of 2 take 3 DELETE statements.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from conftest import SECRET, drop_table
from tests.prune_helpers import lease_of_another_process, seed
from wsgi_dbsession import SessionStore, StoreError
from wsgi_dbsession.cli import main
from wsgi_dbsession.flask import DBSession
from wsgi_dbsession.prune import PruneLease, prune_once


def test_a_failed_prune_gives_its_lease_back(make_store: Callable[..., SessionStore]) -> None:
    store = make_store(create_table=False)
    seed(store, expired=3, live=1)
    assert prune_once(store) == 3  # the lease table exists from here on
    drop_table(store.engine, store.table)
    with pytest.raises(StoreError):
        prune_once(store)  # the DELETE fails on the missing table, the lease held
    seed(store, expired=2, live=0)
    assert prune_once(store) == 2, "a retry right after the failure was refused the lease"


@pytest.fixture
def deletes(db_url: str) -> Iterator[list[str]]:
    """The DELETE statements any engine of this process sends to the sessions table (the command's own)."""
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE") and "_lease" not in statement:
            sent.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    yield sent
    sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)


def test_the_prune_command_deletes_in_batches_of_the_size_given(
    make_store: Callable[..., SessionStore], db_url: str, table_name: str, deletes: list[str]
) -> None:
    store = make_store()
    seed(store, expired=5, live=1)
    assert main(["prune", "--url", db_url, "--table", table_name, "--batch-size", "2"]) == 0
    assert len(deletes) == 3, deletes
    assert store.stats().expired == 0


def test_the_flask_prune_command_deletes_in_batches_of_the_size_given(
    make_store: Callable[..., SessionStore], db_url: str, table_name: str, deletes: list[str]
) -> None:
    store = make_store()
    seed(store, expired=5, live=1)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=SECRET, DBSESSION_URL=db_url, DBSESSION_TABLE_NAME=table_name, DBSESSION_CLEANUP_INTERVAL=0
    )
    DBSession(app)
    try:
        result = app.test_cli_runner().invoke(args=["dbsession", "prune", "--batch-size", "2"])
        assert result.exit_code == 0, result.output
    finally:
        app.extensions["dbsession"].close()
    assert len(deletes) == 3, deletes
    assert store.stats().expired == 0


def test_a_lease_held_elsewhere_is_refused_without_an_error_on_the_server(
    make_store: Callable[..., SessionStore],
) -> None:
    """Processes that find the lease held send no statement the server fails (issue 22, item 5).

    Each failed statement is an ERROR line in the server's log (PostgreSQL
    logged 499 duplicate-key errors in 10 s of 4 gunicorn workers), and DBAs
    alert on those. SQLAlchemy's ``handle_error`` event sees every error the
    database returns.
    """
    store = make_store()
    holder = lease_of_another_process(store)
    assert holder.try_acquire()
    errors: list[str] = []
    sa.event.listen(
        store.engine, "handle_error", lambda context: errors.append(repr(context.original_exception))
    )
    for _ in range(5):
        assert prune_once(store) is None, "the lease is held by another process"
        assert not PruneLease(store).try_acquire()
    assert errors == []
    holder.release()
    assert prune_once(store) == 0
