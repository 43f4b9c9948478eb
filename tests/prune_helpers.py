"""For the prune tests and benchmark: tables of expired and live rows, database connection ids."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from typing import Any

import sqlalchemy as sa

from wsgi_dbsession import SessionStore, generate_sid
from wsgi_dbsession.express import to_iso_z
from wsgi_dbsession.prune import PruneLease
from wsgi_dbsession.store import utcnow

DAY = dt.timedelta(days=1)


def session_text(expires: dt.datetime, number: int) -> str:
    """An express-session row: its ``cookie`` object plus one value of the app's."""
    cookie = {"originalMaxAge": 86400000, "expires": to_iso_z(expires), "httpOnly": True, "path": "/"}
    return json.dumps({"cookie": cookie, "n": number}, separators=(",", ":"))


def seed(store: SessionStore, *, expired: int, live: int, chunk: int = 5000) -> dict[str, str]:
    """Insert ``expired`` rows that expired a day ago and ``live`` ones due in a day.

    Returns the live rows, sid to ``sess`` text.
    """
    sid_column = store.table.primary_key.columns.values()[0].name
    now = utcnow()
    rows = [
        {sid_column: generate_sid(), "sess": session_text(now - DAY, n), "expired": now - DAY}
        for n in range(expired)
    ]
    live_rows = {generate_sid(): session_text(now + DAY, n) for n in range(live)}
    rows += [{sid_column: sid, "sess": text, "expired": now + DAY} for sid, text in live_rows.items()]
    store.create_table()
    with store.engine.connect() as conn:
        for start in range(0, len(rows), chunk):
            conn.execute(store.table.insert(), rows[start : start + chunk])
            conn.commit()
    return live_rows


def live_rows(store: SessionStore) -> dict[str, str]:
    """Every row still in the table that has not expired, sid to ``sess`` text."""
    table = store.table
    sid, sess = table.primary_key.columns.values()[0], store.dialect.sess_text(table.c.sess)
    with store.engine.connect() as conn:
        found = conn.execute(table.select().with_only_columns(sid, sess).where(table.c.expired >= utcnow()))
        return {row[0]: row[1] for row in found}


_CONNECTION_ID = {
    "postgresql": "SELECT pg_backend_pid()",
    "mysql": "SELECT CONNECTION_ID()",
    "mariadb": "SELECT CONNECTION_ID()",
}


def connection_id(store: SessionStore) -> int | None:
    """The server's id of the connection ``store``'s pool hands out next (None on SQLite)."""
    sql = _CONNECTION_ID.get(store.engine.dialect.name)
    if sql is None:
        return None
    return int(store.run(lambda conn: conn.execute(sa.text(sql)).scalar_one()))


def lease_of_another_process(store: SessionStore) -> PruneLease:
    """A prune lease on ``store`` that names another holder: one test process plays two."""
    return PruneLease(store, holder="another process")


def hold_the_first_delete(store: SessionStore, hold: float) -> tuple[threading.Event, threading.Event]:
    """Hold the first DELETE on ``store``'s table for up to ``hold`` seconds.

    Returns (in_batch, finish_batch): the first is set once the DELETE is held,
    setting the second lets it go.
    """
    table = store.table.name
    in_batch, finish_batch = threading.Event(), threading.Event()

    def hold_it(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        deleting = statement.lstrip().upper().startswith("DELETE") and re.search(rf"\b{table}\b", statement)
        if deleting and not in_batch.is_set():
            in_batch.set()
            finish_batch.wait(hold)

    sa.event.listen(store.engine, "before_cursor_execute", hold_it)
    return in_batch, finish_batch
