"""The app tests/test_gunicorn_counters.py serves with gunicorn, configured by environment variables.

``COUNTER_APP_URL`` and ``COUNTER_APP_TABLE`` name the sessions table (the
workers create it on their first request, racing each other). Every request
increments the session's ``count`` and answers it with the worker's pid;
``/pid`` answers the pid alone, without touching the session.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from conftest import SECRET
from wsgi_dbsession import SessionMiddleware


def _app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    answer: dict[str, Any] = {"pid": os.getpid()}
    if environ["PATH_INFO"] != "/pid":
        session = environ["dbsession"]
        session["count"] = answer["count"] = session.get("count", 0) + 1
    payload = json.dumps(answer).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return [payload]


app = SessionMiddleware(
    _app,
    secret=SECRET,
    url=os.environ["COUNTER_APP_URL"],
    table_name=os.environ["COUNTER_APP_TABLE"],
    cleanup_interval=0,
)
