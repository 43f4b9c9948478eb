"""The edges of saving a session: the exact size limit, saves that happen twice or are
swallowed, the log line of an outage that explains an app's error, an app's own ``save()``.

Each test was written for a mutant that survived the mutation run of the request
path (docs/reliability.md), and checked to fail with that mutant planted.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

import pytest
import webtest

from conftest import SECRET, StatementLog, drop_table
from tests.apps import session_app
from tests.tcp_proxy import TCPProxy
from wsgi_dbsession import SessionMiddleware, unsign

MakeApp = Callable[..., tuple[webtest.TestApp, SessionMiddleware]]
SAVE_FAILED = b"The session could not be saved.\n"


def sid_of(client: webtest.TestApp) -> str:
    sid = unsign(unquote(client.cookies["connect.sid"]), [SECRET.encode()])
    assert sid is not None
    return sid


def verbs(log: StatementLog) -> list[str]:
    return [sql.lstrip().split()[0].upper() for sql in log.statements]


def test_a_change_in_place_is_written_once_not_again_when_the_body_closes(make_app: MakeApp) -> None:
    # The save when the headers go out writes the appended item; the save when the
    # body closes finds nothing changed since, so the request costs a read and one write.
    client, middleware = make_app(session_app)
    client.get("/append", params={"item": "a"})
    log = StatementLog(middleware.store)
    assert client.get("/append", params={"item": "b"}).json["data"] == {"cart": ["a", "b"]}
    assert verbs(log) == ["SELECT", "UPDATE"], log.statements
    log.clear()
    assert client.get("/nested", params={"tag": "t"}).json["data"]["profile"] == {"tags": ["t"]}
    log.clear()
    client.get("/nested", params={"tag": "u"})
    assert verbs(log) == ["SELECT", "UPDATE"], log.statements
    stored = middleware.store.get(sid_of(client))
    assert stored is not None
    assert (stored["cart"], stored["profile"]) == (["a", "b"], {"tags": ["t", "u"]})


def test_a_session_of_exactly_max_size_bytes_is_saved_and_one_byte_more_is_refused(
    make_app: MakeApp,
) -> None:
    # Only the app's value changes length between the saves: the stored _created is
    # kept as loaded, and the cookie object's expiry is an ISO date of fixed length.
    unlimited, middleware = make_app(session_app)
    unlimited.get("/set", params={"key": "pad", "value": '""'})
    sid = sid_of(unlimited)
    stored = middleware.store.load(sid)
    assert stored is not None
    size = len(stored.text.encode("utf-8"))

    limited, _ = make_app(session_app, max_size=size + 5)
    limited.set_cookie("connect.sid", unlimited.cookies["connect.sid"])
    limited.get("/set", params={"key": "pad", "value": '"xxxxx"'}, status=200)
    stored = middleware.store.load(sid)
    assert stored is not None
    assert len(stored.text.encode("utf-8")) == size + 5, "the limit was met to the byte"
    assert json.loads(stored.text)["pad"] == "xxxxx"

    refused = limited.get("/set", params={"key": "pad", "value": '"xxxxxx"'}, status=500)
    assert refused.body == SAVE_FAILED
    assert middleware.store.load(sid) == stored, "the session one byte too large was not written"


def test_a_body_returned_after_a_swallowed_failed_save_is_closed_before_the_error_page(
    make_app: MakeApp,
) -> None:
    # WSGI: whoever drops an iterable the app returned must close it. The middleware
    # answers its error page instead of that body, so it closes the body itself.
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Any:
            yield b"saved!"

        def close(self) -> None:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        environ["dbsession"]["note"] = "x" * 500  # more than max_size
        with contextlib.suppress(Exception):  # the app swallows the failed save, and answers its body
            start_response("200 OK", [("Content-Type", "text/plain")])
        return Body()

    client, _ = make_app(app, max_size=100)
    assert client.get("/", status=500).body == SAVE_FAILED
    assert closed == [True]


@pytest.fixture
def proxied(db_url: str, table_name: str) -> Iterator[tuple[TCPProxy, Callable[..., SessionMiddleware]]]:
    """Middleware whose database connections go through a proxy the test can cut."""
    built: list[SessionMiddleware] = []
    with TCPProxy.for_url(db_url) as proxy:

        def make(app: Callable[..., Any], **options: Any) -> SessionMiddleware:
            middleware = SessionMiddleware(
                app,
                url=proxy.route(db_url),
                secret=SECRET,
                table_name=table_name,
                cleanup_interval=0,
                **options,
            )
            built.append(middleware)
            return middleware

        yield proxy, make
        proxy.restore()
        for middleware in built:
            middleware.store.engine.dispose()  # its pooled connections died in the cut
            drop_table(middleware.store.engine, middleware.store.table)
            middleware.close()
            middleware.store.engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
def test_the_app_error_an_outage_explains_is_logged_with_its_traceback(
    proxied: tuple[TCPProxy, Callable[..., SessionMiddleware]], caplog: pytest.LogCaptureFixture
) -> None:
    # The answer is the outage's 503, so the app's own error is seen only in this log line:
    # it must carry the app's traceback, for whoever debugs the app.
    proxy, make = proxied

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        try:
            data = dict(environ["dbsession"])
        except Exception as exc:
            raise RuntimeError("the view failed") from exc
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [repr(data).encode()]

    middleware = make(app)
    writer = webtest.TestApp(make(session_app))
    writer.get("/incr")
    client = webtest.TestApp(middleware)
    client.set_cookie("connect.sid", writer.cookies["connect.sid"])
    proxy.cut()
    with caplog.at_level(logging.ERROR, logger="wsgi_dbsession.middleware"):
        client.get("/", status=503)
    (record,) = [
        record
        for record in caplog.records
        if record.getMessage() == "the application failed after the session store was found unreachable"
    ]
    assert record.exc_info, "the app's traceback is in the log line"
    assert isinstance(record.exc_info[1], RuntimeError)
    assert str(record.exc_info[1]) == "the view failed"


def test_an_app_s_own_save_over_http_records_a_cookie_without_the_secure_flag(make_app: MakeApp) -> None:
    # Session.save() called by the app (a Beaker habit) before the response: its
    # ``secure`` defaults to False, which is what the middleware itself passes over http.
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ["dbsession"]
        session["n"] = 1
        session.save()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"saved"]

    client, middleware = make_app(app)
    client.get("/")
    stored = middleware.store.load(sid_of(client))
    assert stored is not None
    cookie = json.loads(stored.text)["cookie"]
    assert "secure" not in cookie, cookie
