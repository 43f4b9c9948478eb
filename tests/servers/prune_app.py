"""The app gunicorn serves for tests/test_gunicorn_prune.py and benchmarks/prune_latency.py.

``PRUNE_APP_URL`` and ``PRUNE_APP_TABLE`` name the sessions table,
``PRUNE_APP_SECRET`` is the cookie secret,
``PRUNE_APP_INTERVAL`` is the ``cleanup_interval`` in seconds (0: no job), and every
process appends its log lines to the file ``PRUNE_APP_LOG``.

- ``/``: reads the session of the request's cookie; answers its data (null without one);
- ``/incr``: the same, after adding 1 to the session's ``n`` (a read and a write);
- ``/db``: answers this process's pid and the database's id of the connection it uses.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from typing import Any

from tests.prune_helpers import connection_id
from wsgi_dbsession import SessionMiddleware

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
        body["connection"] = connection_id(app.store)
    else:
        session = environ["dbsession"]
        if environ["PATH_INFO"] == "/incr":
            session["n"] = session.get("n", 0) + 1
        body["data"] = dict(session) if not session.new else None
    payload = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return [payload]


app = SessionMiddleware(
    _app,
    secret=os.environ["PRUNE_APP_SECRET"],
    url=os.environ["PRUNE_APP_URL"],
    table_name=os.environ["PRUNE_APP_TABLE"],
    cleanup_interval=float(os.environ["PRUNE_APP_INTERVAL"]),
)


# With --preload this runs in the master, so its pool holds a connection when
# it forks the workers: they must not use it.
_logger.info("app imported, database connection %s", connection_id(app.store))
