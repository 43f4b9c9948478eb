"""Code the deployment tests run in other processes (spawned: they import the package, not pytest)."""

from __future__ import annotations

import contextlib
import io
import logging
import traceback
from collections.abc import Iterable, Iterator
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


@contextlib.contextmanager
def _errors_logged() -> Iterator[list[str]]:
    """The package's ERROR log records while the block runs, each with the exceptions of its traceback."""
    found: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            chain, exc = [], record.exc_info[1] if record.exc_info else None
            while exc is not None:
                chain.append(f"{type(exc).__name__}: {exc}")
                exc = exc.__cause__ or exc.__context__
            found.append(" <- ".join([record.getMessage(), *chain]))

    handler = Collect(logging.ERROR)
    logger = logging.getLogger("wsgi_dbsession")
    logger.addHandler(handler)
    try:
        yield found
    finally:
        logger.removeHandler(handler)


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
                with _errors_logged() as logged:
                    status, body = _request(middleware)
                if status != ["200 OK"]:
                    errors.append(f"{table}: {status} {body[:200]!r}; logged: {logged}")
            except BaseException:
                errors.append(f"{table}: {traceback.format_exc()}")
            finally:
                middleware.close()
        barrier.wait(timeout=60)  # done: the test checks the table on every node
        barrier.wait(timeout=60)  # checked: next round
    results.put(errors)
