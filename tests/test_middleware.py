"""The request path on every live database: round trips, cookies, change detection."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
import webtest

from conftest import SECRET, StatementLog
from tests.apps import session_app
from tests.webtest_helpers import MakeApp, set_cookies, sid_in
from wsgi_dbsession import SessionMiddleware, sign
from wsgi_dbsession.cookies import encode_value, generate_sid


@pytest.fixture
def client(make_app: MakeApp) -> tuple[webtest.TestApp, SessionMiddleware, StatementLog]:
    app, middleware = make_app(session_app)
    return app, middleware, StatementLog(middleware.store)


def test_unused_session_costs_no_statement_and_sets_no_cookie(client: Any) -> None:
    app, _, log = client
    app.get("/incr")
    log.clear()
    response = app.get("/unused")
    assert len(log) == 0
    assert set_cookies(response) == []


def test_first_write_of_a_new_session_is_one_statement(client: Any) -> None:
    app, middleware, log = client
    response = app.get("/incr")
    assert response.json["data"] == {"count": 1}
    assert len(log) == 1, log.statements
    assert middleware.store.get(sid_in(response))["count"] == 1


def test_read_is_one_statement_and_is_not_written_back(client: Any) -> None:
    app, middleware, log = client
    sid = sid_in(app.get("/incr"))
    before = middleware.store.load(sid)
    log.clear()
    response = app.get("/read")
    assert response.json["data"] == {"count": 1}
    assert len(log) == 1, log.statements
    assert log.statements[0].lstrip().upper().startswith("SELECT")
    assert set_cookies(response) == []
    assert middleware.store.load(sid) == before


def test_read_and_write_is_two_statements(client: Any) -> None:
    app, middleware, log = client
    sid = sid_in(app.get("/incr"))
    log.clear()
    response = app.get("/incr")
    assert response.json["data"] == {"count": 2}
    assert len(log) == 2, log.statements
    assert middleware.store.get(sid)["count"] == 2


def test_nested_mutation_is_saved(client: Any) -> None:
    app, middleware, _ = client
    sid = sid_in(app.get("/nested?tag=a"))
    app.get("/nested?tag=b")
    app.get("/append?item=x")
    app.get("/append?item=y")
    stored = middleware.store.get(sid)
    assert stored["profile"] == {"tags": ["a", "b"]}
    assert stored["cart"] == ["x", "y"]


@pytest.mark.parametrize(
    "forge",
    [
        lambda sid: encode_value(sign(sid, "another-secret-of-at-least-32-characters")),
        lambda sid: encode_value(sign(sid, SECRET))[:-3] + "AAA",
        lambda sid: sid,
        lambda sid: "s%3A" + sid,
        lambda sid: "%E0%A4%A",
        lambda sid: "",
    ],
    ids=["other-secret", "bad-signature", "unsigned", "no-signature", "bad-escape", "empty"],
)
def test_tampered_cookie_gives_a_new_session_without_a_query(
    client: Any, forge: Callable[[str], str]
) -> None:
    app, middleware, log = client
    sid = sid_in(app.get("/incr"))
    app.reset()
    app.set_cookie("connect.sid", forge(sid))
    log.clear()
    response = app.get("/read")
    assert response.json["data"] == {}
    assert len(log) == 0, log.statements
    assert middleware.store.get(sid)["count"] == 1


def test_invalidate_deletes_the_row_and_expires_the_cookie(client: Any) -> None:
    app, middleware, _ = client
    sid = sid_in(app.get("/incr"))
    response = app.get("/logout")
    (header,) = set_cookies(response)
    assert header.startswith("connect.sid=;")
    assert "Max-Age=0" in header
    assert middleware.store.load(sid) is None
    assert app.get("/read").json["data"] == {}


def test_regenerate_changes_the_id_keeps_the_data_and_deletes_the_old_row(client: Any) -> None:
    app, middleware, _ = client
    old = sid_in(app.get("/incr"))
    response = app.get("/login?user=bob")
    new = sid_in(response)
    assert new != old
    assert middleware.store.load(old) is None
    assert middleware.store.get(new) == {
        **middleware.store.get(new),
        "count": 1,
        "user": "bob",
    }
    assert app.get("/read").json["data"] == {"count": 1, "user": "bob"}


def test_an_expired_row_is_never_loaded(client: Any) -> None:
    app, middleware, log = client
    sid = generate_sid()
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    middleware.store.write(sid, json.dumps({"count": 41, "secret": "stale"}), past)
    app.set_cookie("connect.sid", encode_value(sign(sid, SECRET)))
    log.clear()
    response = app.get("/incr")
    assert response.json["data"] == {"count": 1}
    assert sid_in(response) != sid, "a client-presented id that is not live must not be adopted"
    # The stale row was not overwritten: it is still expired, holding its old data.
    assert middleware.store.count(expired=True) == 1
    assert middleware.store.load(sid) is None


def test_unserializable_value_is_a_500_naming_the_key_and_the_stored_session_is_unchanged(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app, middleware, _ = client
    sid = sid_in(app.get("/incr"))
    before = middleware.store.load(sid)
    response = app.get("/unserializable", status=500)
    assert set_cookies(response) == []
    assert "session['when']" in caplog.text
    assert "object" in caplog.text
    logged = [record.exc_info[1] for record in caplog.records if record.exc_info]
    assert "when" in [getattr(error, "key", None) for error in logged], "SerializationError.key names it"
    assert middleware.store.load(sid) == before


def test_set_expiry_gives_the_session_its_own_lifetime(client: Any) -> None:
    app, middleware, _ = client
    app.get("/incr")
    response = app.get("/remember?seconds=2592000")
    header = set_cookies(response)[0]
    assert "Max-Age=2592000" in header
    stored = middleware.store.load(sid_in(response))
    assert stored is not None
    remaining = stored.expires - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(days=29, hours=23) < remaining <= dt.timedelta(days=30)
    # The lifetime sticks: a later write keeps it.
    assert "Max-Age=2592000" in set_cookies(app.get("/incr"))[0]


def test_cookie_flags_are_secure_by_default(make_app: MakeApp) -> None:
    app, _ = make_app(session_app)
    header = set_cookies(app.get("/incr"))[0]
    assert "HttpOnly" in header
    assert "SameSite=lax" in header
    assert "secure" not in header.lower().split("samesite")[0], (
        "plain http: no Secure flag with secure='auto'"
    )
    https = set_cookies(app.get("/incr", extra_environ={"wsgi.url_scheme": "https"}))[0]
    assert "; secure" in https


def test_secret_rotation_reads_old_cookies_and_signs_with_the_new_secret(make_app: MakeApp) -> None:
    old_secret = "the-old-secret-0123456789abcdefghijklmnop"
    app, middleware = make_app(session_app, secret=old_secret)
    sid = sid_in(app.get("/incr"), old_secret)
    cookie = app.cookies["connect.sid"]
    rotated = SessionMiddleware(
        session_app,
        secret=[SECRET, old_secret],
        engine=middleware.store.engine,
        table_name=middleware.store.table.name,
        cleanup_interval=0,
    )
    rotated_app = webtest.TestApp(rotated)
    rotated_app.set_cookie("connect.sid", cookie)
    response = rotated_app.get("/incr")
    assert response.json["data"] == {"count": 2}
    assert sid_in(response) == sid  # the new cookie carries the same id, signed with the first secret


def test_rolling_touches_the_expiry_at_most_once_per_interval(make_app: MakeApp) -> None:
    app, middleware = make_app(session_app, rolling=True, touch_after=0, max_age=3600)
    log = StatementLog(middleware.store)
    sid = sid_in(app.get("/incr"))
    first = middleware.store.load(sid)
    log.clear()
    response = app.get("/read")
    assert len(log) == 2 and log.statements[1].lstrip().upper().startswith("UPDATE")
    assert sid_in(response) == sid
    assert middleware.store.load(sid).expires >= first.expires

    throttled, middleware2 = make_app(session_app, rolling=True, touch_after=600, max_age=3600)
    log2 = StatementLog(middleware2.store)
    throttled.get("/incr")
    log2.clear()
    assert set_cookies(throttled.get("/read")) == []
    assert len(log2) == 1


def test_reserved_cookie_key_cannot_be_clobbered(make_app: MakeApp) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with pytest.raises(KeyError, match="reserved"):
            environ["dbsession"]["cookie"] = "oops"
        start_response("200 OK", [])
        return [b""]

    make_app(app)[0].get("/")


def test_rolling_moves_the_expiry_of_a_read_only_request_a_whole_lifetime_ahead(make_app: MakeApp) -> None:
    app, middleware = make_app(session_app, rolling=True, touch_after=60, max_age=3600)
    sid = sid_in(app.get("/incr"))
    # As if the last activity was 20 minutes ago: 40 of the 60 minutes are left.
    assert middleware.store.touch(sid, dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=40))
    before = dt.datetime.now(dt.timezone.utc)
    response = app.get("/read")
    assert response.json["data"] == {"count": 1}
    assert sid_in(response) == sid and "Max-Age=3600" in set_cookies(response)[0]
    stored = middleware.store.load(sid)
    assert stored is not None
    # A whole lifetime from this request (less a second: MariaDB keeps whole seconds).
    assert stored.expires >= before + dt.timedelta(seconds=3599), stored.expires - before
    assert json.loads(stored.text)["count"] == 1, "a touch changes only the expiry"


def test_a_failed_save_sticks_even_when_the_app_retries_with_a_session_that_would_save(
    make_app: MakeApp,
) -> None:
    # The app catches the failed save, shrinks the session until it would save,
    # and answers again: neither the retried save nor the success page may happen.
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ["dbsession"]
        for note in ("x" * 5000, "small enough"):  # more than max_size, then less
            session["note"] = note
            try:
                start_response("200 OK", [("Content-Type", "text/plain")])
            except Exception:
                continue
        return [b"saved!"]

    client, middleware = make_app(session_app, max_size=1000)
    sid = sid_in(client.get("/set", params={"key": "note", "value": json.dumps("before")}))
    before = middleware.store.load(sid)
    middleware.app = app
    environ: dict[str, Any] = {"HTTP_COOKIE": f"connect.sid={client.cookies['connect.sid']}"}
    setup_testing_defaults(environ)
    started: list[str] = []

    def start_response(status: str, _headers: Any, _exc_info: Any = None) -> Any:
        started.append(status)
        return lambda _data: None

    body = b"".join(middleware(environ, start_response))
    assert started == ["500 Internal Server Error"], "one answer, the error"
    assert body == b"The session could not be saved.\n"
    assert middleware.store.load(sid) == before, "the retried save did not write"


def test_the_error_page_of_a_failed_save_is_complete_and_never_cached(make_app: MakeApp) -> None:
    _, middleware = make_app(session_app, max_size=100)
    environ: dict[str, Any] = {"PATH_INFO": "/set", "QUERY_STRING": f"key=note&value=%22{'x' * 500}%22"}
    setup_testing_defaults(environ)
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], _exc_info: Any = None) -> Any:
        started.append((status, headers))
        return lambda _data: None

    body = b"".join(middleware(environ, start_response))
    assert body == b"The session could not be saved.\n"
    # Exactly these headers, as the server gets them (a test client would add a length).
    assert started == [
        (
            "500 Internal Server Error",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
    ]


@pytest.mark.parametrize("items", [[b"streamed", b" body"], [], None], ids=["items", "empty", "failing"])
def test_a_streamed_body_is_closed_however_its_first_item_ends(
    make_app: MakeApp, items: list[bytes] | None
) -> None:
    # WSGI: the server closes what the app returned, and the middleware passes that on,
    # also when the body it pulled early was empty or failed.
    closed: list[bool] = []

    class Body:
        def __init__(self, start_response: Any) -> None:
            self.start_response = start_response

        def __iter__(self) -> Any:
            self.start_response("200 OK", [("Content-Type", "text/plain")])
            if items is None:
                raise RuntimeError("the app failed")
            yield from items

        def close(self) -> None:
            closed.append(True)

    client, _ = make_app(lambda _environ, start_response: Body(start_response))
    if items is None:
        with pytest.raises(RuntimeError, match="the app failed"):
            client.get("/")
    else:
        assert client.get("/").body == b"".join(items)
    assert closed == [True]


def test_a_session_outage_after_the_response_started_is_passed_to_the_server_with_exc_info(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # WSGI: an error answer after start_response was called goes out with exc_info
    # (the server then re-raises); an error answer before that goes out without it.
    from wsgi_dbsession.exceptions import StoreUnavailable

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        environ["dbsession"].get("n")  # the first use of the session: the store is down
        return [b"never"]

    def unreachable(*_args: Any) -> Any:
        raise StoreUnavailable("the store is down")

    _, middleware = make_app(app)
    monkeypatch.setattr(middleware.store, "load", unreachable)
    environ: dict[str, Any] = {"HTTP_COOKIE": f"connect.sid={encode_value(sign(generate_sid(), SECRET))}"}
    setup_testing_defaults(environ)
    started: list[tuple[str, Any]] = []

    def start_response(status: str, _headers: Any, exc_info: Any = None) -> Any:
        started.append((status, exc_info and exc_info[0]))
        return lambda _data: None

    body = b"".join(middleware(environ, start_response))
    assert body == b"The session store is unavailable; try again shortly.\n"
    assert started == [("200 OK", None), ("503 Service Unavailable", StoreUnavailable)]

    started.clear()
    middleware.app = session_app  # the outage is found before the app answers
    b"".join(middleware(dict(environ), start_response))
    assert started == [("503 Service Unavailable", None)]


def test_a_generator_app_whose_save_fails_gets_the_error_page(make_app: MakeApp) -> None:
    # The middleware pulls a generator's first item itself, so the failed save in its
    # start_response becomes the error page, not an exception in the server's loop.
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        environ["dbsession"]["note"] = "x" * 500  # more than max_size
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"saved!"

    client, _ = make_app(app, max_size=100)
    assert client.get("/", status=500).body == b"The session could not be saved.\n"
