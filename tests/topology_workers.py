"""Code the deployment tests run in other processes (spawned: they import the package, not pytest)."""

from __future__ import annotations

import io
import traceback
from collections.abc import Iterable
from typing import Any

from wsgi_dbsession import SessionMiddleware


def _count(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    session = environ["dbsession"]
    session["count"] = session.get("count", 0) + 1
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def _request(middleware: SessionMiddleware) -> tuple[list[str], bytes]:
    """A GET of a new visitor: the status lines the middleware gave and the body."""
    status: list[str] = []
    environ = {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(),
    }  # fmt: skip
    body = b"".join(middleware(environ, lambda line, headers, exc_info=None: status.append(line)))
    return status, body


def first_use(url: str, secret: str, tables: list[str], barrier: Any, results: Any) -> None:
    """For each table in turn, at the same moment as the other processes: a first request on it.

    Each table is fresh: the request finds no table and creates it. The
    process connects first, so only the first use races. Reports each error
    a caller saw: a status other than 200, or an exception out of the middleware.
    """
    errors: list[str] = []
    for table in tables:
        middleware = None
        try:
            middleware = SessionMiddleware(
                _count, secret=secret, url=url, table_name=table, cleanup_interval=0
            )
            with middleware.store.engine.connect():
                pass
        except BaseException:
            errors.append(f"{table}, before the request: {traceback.format_exc()}")
        barrier.wait(timeout=60)  # every process at once
        if middleware is not None:
            try:
                status, body = _request(middleware)
                if status != ["200 OK"]:
                    errors.append(f"{table}: {status} {body[:200]!r}")
            except BaseException:
                errors.append(f"{table}: {traceback.format_exc()}")
            finally:
                middleware.close()
        barrier.wait(timeout=60)  # done: the test checks the table on every node
        barrier.wait(timeout=60)  # checked: next round
    results.put(errors)
