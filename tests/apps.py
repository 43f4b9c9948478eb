"""Small WSGI apps the tests wrap in the middleware."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl


def session_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """Each path does one thing to ``environ["dbsession"]`` and answers with its contents as JSON."""
    session = environ["dbsession"]
    path = environ["PATH_INFO"]
    query = dict(parse_qsl(environ.get("QUERY_STRING", "")))
    status = "200 OK"
    if path == "/unused":
        body: Any = None
    else:
        if path == "/incr":
            session["count"] = session.get("count", 0) + 1
        elif path == "/set":
            session[query["key"]] = json.loads(query["value"])
        elif path == "/append":
            session.setdefault("cart", []).append(query.get("item", "x"))
        elif path == "/nested":
            session.setdefault("profile", {"tags": []})["tags"].append(query.get("tag", "t"))
        elif path == "/login":
            session.regenerate()
            session["user"] = query.get("user", "alice")
        elif path == "/logout":
            session.invalidate()
        elif path == "/remember":
            session.set_expiry(int(query["seconds"]))
        if path == "/unserializable":
            session["when"] = object()
            body = {}
        else:
            body = {"data": dict(session)}
    payload = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return [payload]
