"""The app tests/test_gunicorn_prune.py serves with gunicorn, configured by environment variables.

``PRUNE_APP_URL`` and ``PRUNE_APP_TABLE`` name the sessions table,
``PRUNE_APP_INTERVAL`` is the ``cleanup_interval`` in seconds, and every
process appends its log lines to the file ``PRUNE_APP_LOG``.

- ``/``: reads the session of the request's cookie; answers its data (null without one);
- ``/db``: answers this process's pid and the database's id of the connection it uses.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from conftest import SECRET
from wsgi_dbsession import SessionMiddleware

_CONNECTION_ID = {
    "postgresql": "SELECT pg_backend_pid()",
    "mysql": "SELECT CONNECTION_ID()",
    "mariadb": "SELECT CONNECTION_ID()",
}

# One write per line to a file opened for appending: the lines of several
# processes never mix.
_handler = logging.FileHandler(os.environ["PRUNE_APP_LOG"])
_handler.setFormatter(logging.Formatter("%(created).6f %(process)d %(levelname)s %(message)s"))
_logger = logging.getLogger("wsgi_dbsession")
_logger.addHandler(_handler)
_logger.setLevel(logging.DEBUG)


def _app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    body: dict[str, Any] = {"pid": os.getpid()}
    if environ["PATH_INFO"] == "/db":
        body["connection"] = connection_id()
    else:
        session = environ["dbsession"]
        body["data"] = dict(session) if not session.new else None
    payload = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return [payload]


app = SessionMiddleware(
    _app,
    secret=SECRET,
    url=os.environ["PRUNE_APP_URL"],
    table_name=os.environ["PRUNE_APP_TABLE"],
    cleanup_interval=float(os.environ["PRUNE_APP_INTERVAL"]),
)


def connection_id() -> int | None:
    """The database's id for the connection this process's pool hands out (None on SQLite)."""
    sql = _CONNECTION_ID.get(app.store.engine.dialect.name)
    if sql is None:
        return None
    return int(app.store.run(lambda conn: conn.execute(sa.text(sql)).scalar_one()))


# With --preload this runs in the master, so its pool holds a connection when
# it forks the workers: they must not use it.
_logger.info("app imported, database connection %s", connection_id())
