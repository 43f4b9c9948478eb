"""The app of the deployment tests (tests/test_uwsgi.py, test_galera.py, test_contention.py).

Configured by environment variables:

- ``TOPOLOGY_APP_URL``, ``TOPOLOGY_APP_TABLE``: the sessions table;
- ``TOPOLOGY_APP_ENGINE=user``: the app passes ``engine=sqlalchemy.create_engine(url)``
  (SQLAlchemy's defaults, as a user's own engine) instead of ``url=``;
- ``TOPOLOGY_APP_INTERVAL``: ``cleanup_interval`` in seconds (0, the default: no prune job);
- ``TOPOLOGY_APP_LOG``: a file every process appends the package's log lines to
  (tests/topology.py's ``LOG_FORMAT``, DEBUG and up), one write per line;
- ``TOPOLOGY_APP_AT_IMPORT=1``: use the database at import, as an app that
  creates its table and reads a session when it loads; under a pre-forking
  server (uWSGI, gunicorn ``--preload``) that is in the parent, before the fork.

Routes:

- ``/pid``: this process's pid, without touching the session;
- ``/count``: adds 1 to the session's ``count``; answers ``{"pid", "count"}``;
- ``/key/<name>``: adds 1 to the session's ``<name>``; answers ``{"pid", "value"}``;
- ``/read``: answers ``{"pid", "data"}``, the session's data (null for a new session).
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
from wsgi_dbsession.store import normalize_url

if os.environ.get("TOPOLOGY_APP_LOG"):
    _handler = logging.FileHandler(os.environ["TOPOLOGY_APP_LOG"])
    _handler.setFormatter(logging.Formatter("%(created).6f %(process)d %(levelname)s %(message)s"))
    _logger = logging.getLogger("wsgi_dbsession")
    _logger.addHandler(_handler)
    _logger.setLevel(logging.DEBUG)


def _app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    body: dict[str, Any] = {"pid": os.getpid()}
    if path == "/count":
        session = environ["dbsession"]
        session["count"] = body["count"] = session.get("count", 0) + 1
    elif path.startswith("/key/"):
        session, key = environ["dbsession"], path[len("/key/") :]
        session[key] = body["value"] = session.get(key, 0) + 1
    elif path == "/read":
        session = environ["dbsession"]
        body["data"] = None if session.new else dict(session)
    elif path != "/pid":
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return [b""]
    payload = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return [payload]


# TOPOLOGY_APP_ENGINE=user: an engine built as a user would, with plain
# sqlalchemy.create_engine() and its defaults, instead of the package's url=.
_url = os.environ["TOPOLOGY_APP_URL"]
_engine = (
    {"engine": sa.create_engine(normalize_url(_url))}
    if os.environ.get("TOPOLOGY_APP_ENGINE") == "user"
    else {"url": _url}
)

app = SessionMiddleware(
    _app,
    secret=SECRET,
    **_engine,
    table_name=os.environ["TOPOLOGY_APP_TABLE"],
    cleanup_interval=float(os.environ.get("TOPOLOGY_APP_INTERVAL", "0")),
)

if os.environ.get("TOPOLOGY_APP_AT_IMPORT") == "1":
    app.store.create_table()
    app.store.get("no-such-session")
    logging.getLogger("wsgi_dbsession").info("app imported, used the database (pid %d)", os.getpid())
