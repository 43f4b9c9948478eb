"""What a body that streams (a generator app) cannot save is logged at ERROR with its fix (issue 22, item 4).

Once the headers are out no cookie can follow and no error page can replace
the answer: a new session first used while the body streams, or a value the
serializer refuses set then, is lost. Nothing is dropped silently: each is an
ERROR line saying what was lost and to use the session before
``start_response`` (before a generator's first yield).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
import webtest

from wsgi_dbsession import SessionMiddleware
from wsgi_dbsession.express import strip_reserved

Make = Callable[..., tuple[webtest.TestApp, SessionMiddleware]]
FIX = "before start_response (in a generator body: before its first yield)"


def streams_then_sets(key: str, value: Any) -> Callable[..., Iterator[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first part\n"
        environ["dbsession"][key] = value
        yield b"second part\n"

    return app


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


def test_a_new_session_first_used_while_the_body_streams_is_an_error_with_its_fix(
    make_app: Make, caplog: pytest.LogCaptureFixture
) -> None:
    client, middleware = make_app(streams_then_sets("cart", ["book"]))
    with caplog.at_level(logging.WARNING, logger="wsgi_dbsession"):
        response = client.get("/")
    assert response.status_int == 200 and "Set-Cookie" not in response.headers
    assert middleware.store.count() == 0
    (message,) = errors_logged(caplog)
    assert "was not stored (keys ['cart'])" in message and FIX in message


def test_a_value_refused_while_the_body_streams_is_an_error_with_its_fix(
    make_app: Make, caplog: pytest.LogCaptureFixture
) -> None:
    stream = streams_then_sets("when", object())

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/stream":
            return stream(environ, start_response)
        environ["dbsession"]["user"] = "ada"
        start_response("200 OK", [])
        return [b""]

    client, middleware = make_app(app)
    client.get("/login")
    with caplog.at_level(logging.WARNING, logger="wsgi_dbsession"):
        response = client.get("/stream")
    assert response.status_int == 200
    (record,) = [record for record in caplog.records if record.levelno >= logging.ERROR]
    message = record.getMessage()
    assert "was not saved (the client already has its answer)" in message
    assert "change the session before start_response (in a generator body: before its first yield)" in message
    assert record.exc_info is not None and "session['when'] holds" in str(record.exc_info[1])
    sid = middleware.manager.cookie.read(f"connect.sid={client.cookies['connect.sid']}")
    stored = middleware.store.get(sid) if sid is not None else None
    assert stored is not None and strip_reserved(stored) == {"user": "ada"}, "the stored session is untouched"
