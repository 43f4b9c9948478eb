"""The middleware behind a real HTTP server, driven by a real HTTP client with a cookie jar."""

from __future__ import annotations

import http.cookiejar
import json
import threading
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import make_server

import pytest

from conftest import StatementLog
from tests.apps import session_app
from tests.http_helpers import QuietHandler


@pytest.fixture
def served(make_app: Callable[..., Any]) -> Iterator[tuple[str, StatementLog]]:
    _, middleware = make_app(session_app)
    server = make_server("127.0.0.1", 0, middleware, handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", StatementLog(middleware.store)
    finally:
        server.shutdown()
        server.server_close()


def test_counter_persists_across_real_http_requests(served: tuple[str, StatementLog]) -> None:
    base, log = served
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

    def get(path: str) -> Any:
        with opener.open(base + path, timeout=10) as response:
            return json.loads(response.read())

    assert get("/unused") is None
    assert len(log) == 0 and len(jar) == 0
    assert get("/incr")["data"] == {"count": 1}
    assert len(log) == 1 and len(jar) == 1
    (cookie,) = jar
    assert cookie.name == "connect.sid" and cookie.has_nonstandard_attr("HttpOnly")
    log.clear()
    assert get("/incr")["data"] == {"count": 2}
    assert len(log) == 2
    log.clear()
    assert get("/read")["data"] == {"count": 2}
    assert len(log) == 1
