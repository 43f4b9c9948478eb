"""The session object's API through real requests: Pyramid's ISession names and the extras."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import webtest

from conftest import SECRET, StatementLog
from tests.test_middleware import MakeApp, set_cookies, sid_in
from wsgi_dbsession import sign
from wsgi_dbsession.cookies import encode_value, generate_sid


def app_doing(action: Callable[[Any], Any]) -> Callable[..., list[bytes]]:
    """A WSGI app that runs ``action(session)`` and answers with its JSON result."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        result = action(environ["dbsession"])
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(result).encode()]

    return app


def test_flash_messages_queue_peek_and_pop(make_app: MakeApp) -> None:
    def action(session: Any) -> Any:
        if session.new:
            session.flash("saved")
            session.flash("saved", allow_duplicate=False)
            session.flash("careful", queue="warn")
            return None
        return [session.peek_flash(), session.pop_flash(), session.pop_flash(), session.pop_flash("warn")]

    app, _ = make_app(app_doing(action))
    app.get("/")
    assert app.get("/").json == [["saved"], ["saved"], [], ["careful"]]
    assert app.get("/").json == [[], [], [], []]


def test_csrf_token_is_stable_and_checked(make_app: MakeApp) -> None:
    def action(session: Any) -> Any:
        token = session.get_csrf_token()
        return [token, session.check_csrf_token(token), session.check_csrf_token(token[:-1] + "x")]

    app, _ = make_app(app_doing(action))
    first, ok, forged = app.get("/").json
    assert len(first) == 40 and ok and not forged
    assert app.get("/").json[0] == first  # stored, not recreated


def test_new_created_and_id_of_a_session(make_app: MakeApp) -> None:
    def action(session: Any) -> Any:
        session["seen"] = True
        return [session.new, session.created, session.id]

    app, middleware = make_app(app_doing(action))
    response = app.get("/")
    new, created, sid = response.json
    assert new is True and sid == sid_in(response)
    assert abs(created - dt.datetime.now(dt.timezone.utc).timestamp()) < 60
    again = app.get("/").json
    assert again == [False, created, sid]
    assert middleware.store.get(sid)["seen"] is True


def test_changed_forces_a_write_of_an_unchanged_session(make_app: MakeApp) -> None:
    app, middleware = make_app(app_doing(lambda s: s.setdefault("n", 1) and s.changed()))
    app.get("/")
    log = StatementLog(middleware.store.engine)
    app.get("/")
    assert [sql.lstrip().split()[0].upper() for sql in log.statements] == ["SELECT", "UPDATE"]


def test_data_written_after_invalidate_gets_a_new_id(make_app: MakeApp) -> None:
    def action(session: Any) -> Any:
        if session.get("user"):
            session.invalidate()
            session["notice"] = "logged out"
        else:
            session["user"] = "alice"
        return dict(session)

    app, middleware = make_app(app_doing(action))
    old = sid_in(app.get("/"))
    response = app.get("/")
    new = sid_in(response)
    assert new != old
    assert middleware.store.load(old) is None
    assert middleware.store.get(new) == {**middleware.store.get(new), "notice": "logged out"}
    assert "user" not in middleware.store.get(new)


def test_regenerate_on_a_new_session_just_saves_under_the_new_id(make_app: MakeApp) -> None:
    def action(session: Any) -> Any:
        session.regenerate()
        session["x"] = 1
        return session.id

    app, middleware = make_app(app_doing(action))
    response = app.get("/")
    assert sid_in(response) == response.json
    assert middleware.store.count() == 1


def test_browser_session_cookie_has_no_max_age_and_a_one_day_row(make_app: MakeApp) -> None:
    app, middleware = make_app(app_doing(lambda s: s.update(x=1)), max_age=None)
    response = app.get("/")
    header = set_cookies(response)[0]
    assert "Max-Age" not in header and "expires" not in header.lower()
    stored = middleware.store.load(sid_in(response))
    assert stored is not None
    cookie = json.loads(stored.text)["cookie"]
    assert cookie["originalMaxAge"] is None and cookie["expires"] is None
    remaining = stored.expires - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(hours=23, minutes=59) < remaining <= dt.timedelta(days=1)


def test_repr_does_not_load_the_session(make_app: MakeApp) -> None:
    reprs: list[str] = []
    app, middleware = make_app(app_doing(lambda s: reprs.append(repr(s))))
    app.get("/")
    log = StatementLog(middleware.store.engine)
    app.get("/")
    assert reprs == ["<Session (not loaded)>"] * 2
    assert len(log) == 0


def test_changes_made_while_the_body_streams_are_saved_when_it_closes(make_app: MakeApp) -> None:
    def streaming(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        session = environ["dbsession"]
        session["before"] = 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first chunk"
        session["cart"] = ["added while streaming"]
        yield b"second chunk"

    app, middleware = make_app(streaming)
    response = app.get("/")
    assert response.text == "first chunksecond chunk"
    stored = middleware.store.get(sid_in(response))
    assert stored is not None
    assert stored["before"] == 1
    assert stored["cart"] == ["added while streaming"]


def test_session_works_in_an_app_that_starts_the_response_lazily(make_app: MakeApp) -> None:
    def lazy(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        environ["dbsession"]["n"] = 1
        start_response("200 OK", [])
        yield b"ok"

    app, _ = make_app(lazy)
    response: webtest.TestResponse = app.get("/")
    assert response.text == "ok"
    assert len(set_cookies(response)) == 1


def test_a_session_first_used_while_the_body_streams_is_saved_only_if_the_client_has_it(
    make_app: MakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    def streaming(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"headers are gone; "
        session = environ["dbsession"]
        session["late"] = session.get("late", 0) + 1
        yield b"done"

    app, middleware = make_app(streaming)
    assert app.get("/").text == "headers are gone; done"
    # A new session's cookie cannot follow the headers: storing it would only orphan a row.
    assert middleware.store.count() == 0
    assert "not stored" in caplog.text
    sid = generate_sid()
    middleware.store.set(sid, {"late": 10}, dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    app.set_cookie("connect.sid", encode_value(sign(sid, SECRET)))
    app.get("/")
    assert middleware.store.get(sid)["late"] == 11


def test_an_app_that_calls_save_itself_still_gets_its_cookie(make_app: MakeApp) -> None:
    def beaker_habit(session: Any) -> Any:
        session["n"] = session.get("n", 0) + 1
        session.save()
        return session["n"]

    app, middleware = make_app(app_doing(beaker_habit))
    response = app.get("/")
    sid = sid_in(response)
    assert middleware.store.get(sid)["n"] == 1
    assert app.get("/").json == 2
    assert middleware.store.get(sid)["n"] == 2
