"""The session object's API through real requests: Pyramid's ISession names and the extras."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import webtest

from conftest import SECRET, StatementLog
from tests.webtest_helpers import MakeApp, set_cookies, sid_in
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
    log = StatementLog(middleware.store)
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
    log = StatementLog(middleware.store)
    app.get("/")
    assert reprs == ["<Session (not loaded)>"] * 2
    assert len(log) == 0


def test_repr_of_a_loaded_session_says_whether_it_is_new_and_lists_its_keys(make_app: MakeApp) -> None:
    reprs: list[str] = []

    def remember(session: Any) -> None:
        session["b"], session["a"] = 1, 2
        reprs.append(repr(session))

    app, _ = make_app(app_doing(remember))
    app.get("/")
    app.get("/")
    assert reprs == ["<Session new=True keys=['a', 'b']>", "<Session new=False keys=['a', 'b']>"]


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


def test_changes_made_after_start_response_by_an_app_returning_a_list_are_saved(make_app: MakeApp) -> None:
    # WSGI lets an app change state between start_response and its return; a list body
    # is saved before it is handed back, since no code of the app runs after that.
    def late_change(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ["dbsession"]
        session["n"] = session.get("n", 0) + 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        session["after_headers"] = session["n"]
        return [b"ok"]

    app, middleware = make_app(late_change)
    response = app.get("/")
    app.get("/")  # an existing session: its late change is an update of the row
    stored = middleware.store.get(sid_in(response))
    assert stored is not None and (stored["n"], stored.get("after_headers")) == (2, 2)


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


# -- the stored record, and the parts of the API only the app's own code reaches -------------


def stored_record(middleware: Any, sid: str) -> dict[str, Any]:
    stored = middleware.store.load(sid)
    assert stored is not None
    return dict(json.loads(stored.text))


def plant_row(middleware: Any, app: webtest.TestApp, record: Any) -> str:
    """A live row written by another app (``record``: its JSON, or its exact text); the client has its id."""
    sid = generate_sid()
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    text = record if isinstance(record, str) else json.dumps(record)
    middleware.store.write(sid, text, expires)
    app.set_cookie("connect.sid", encode_value(sign(sid, SECRET)))
    return sid


def test_in_tells_which_keys_the_session_has(make_app: MakeApp) -> None:
    app, _ = make_app(app_doing(lambda s: ["n" in s, "other" in s, s.setdefault("n", 1)]))
    assert app.get("/").json == [False, False, 1]
    assert app.get("/").json == [True, False, 1]


def test_flash_keeps_a_repeated_message_unless_told_not_to(make_app: MakeApp) -> None:
    def action(session: Any) -> Any:
        session.flash("saved")
        session.flash("saved")
        session.flash("careful", queue="warn", allow_duplicate=False)
        session.flash("careful", queue="warn", allow_duplicate=False)
        return None

    app, middleware = make_app(app_doing(action))
    record = stored_record(middleware, sid_in(app.get("/")))
    assert (record["_f_"], record["_f_warn"]) == (["saved", "saved"], ["careful"])


def test_set_expiry_takes_one_second_or_more_or_none(make_app: MakeApp) -> None:
    def action(session: Any) -> Any:
        refused = []
        for seconds in (0, -5, True, 1.5):
            with pytest.raises(ValueError, match="positive") as caught:
                session.set_expiry(seconds)
            refused.append(caught.type.__name__)
        session.set_expiry(1)
        session["n"] = 1  # an empty new session is not stored
        return [refused, session.get_expiry()]

    app, _ = make_app(app_doing(action))
    response = app.get("/")
    assert response.json == [["ValueError"] * 4, 1]
    assert "Max-Age=1" in set_cookies(response)[0]


@pytest.mark.parametrize(
    "text", ["[1, 2]", '"a string"', "null", "{not json"], ids=["list", "string", "null", "not-json"]
)
def test_a_row_that_is_not_a_json_object_gives_a_fresh_session(
    make_app: MakeApp, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    app, middleware = make_app(app_doing(lambda s: [s.new, dict(s)]))
    if text == "{not json" and middleware.store.engine.dialect.name != "sqlite":
        pytest.skip("a JSON column refuses text that is not JSON; SQLite's text column holds it")
    sid = plant_row(middleware, app, text)
    body = app.get("/").json
    assert body == [True, {}]
    assert "could not be decoded" in caplog.text
    assert sid not in caplog.text


@pytest.mark.parametrize(
    "cookie",
    [None, {"path": "/"}, {"originalMaxAge": 0, "path": "/"}, {"originalMaxAge": "1 hour", "path": "/"}],
    ids=["no-cookie-object", "no-original-max-age", "zero", "not-a-number"],
)
def test_a_row_without_a_usable_lifetime_gets_the_configured_one(
    make_app: MakeApp, cookie: dict[str, Any] | None
) -> None:
    app, middleware = make_app(app_doing(lambda s: s.update(n=s["n"] + 1)), max_age=7200)
    sid = plant_row(middleware, app, {"n": 1} if cookie is None else {"cookie": cookie, "n": 1})
    response = app.get("/")
    assert "Max-Age=7200" in set_cookies(response)[0]
    record = stored_record(middleware, sid)
    assert record["n"] == 2 and record["cookie"]["originalMaxAge"] == 7_200_000


@pytest.mark.parametrize(
    ("original_max_age", "max_age"), [(1, 1), (500, 1), (1499, 1), (1500, 2), (2000, 2), (3_599_999, 3600)]
)
def test_a_row_s_lifetime_in_milliseconds_is_rounded_to_the_nearest_second_at_least_one(
    make_app: MakeApp, original_max_age: int, max_age: int
) -> None:
    app, middleware = make_app(app_doing(lambda s: s.update(n=s["n"] + 1)))
    plant_row(middleware, app, {"cookie": {"originalMaxAge": original_max_age, "path": "/"}, "n": 1})
    assert f"Max-Age={max_age};" in set_cookies(app.get("/"))[0] + ";"


def test_the_stored_cookie_object_records_the_cookie_settings_as_express_session_does(
    make_app: MakeApp,
) -> None:
    app, middleware = make_app(app_doing(lambda s: s.update(n=1)), domain="example.com", samesite="strict")
    sid = sid_in(app.get("/"))
    cookie = stored_record(middleware, sid)["cookie"]
    assert list(cookie) == ["originalMaxAge", "expires", "httpOnly", "domain", "path", "sameSite"]
    assert cookie["originalMaxAge"] == 86_400_000 and cookie["httpOnly"] is True
    expires = dt.datetime.fromisoformat(cookie["expires"].replace("Z", "+00:00"))
    stored = middleware.store.load(sid)
    assert stored is not None and abs(expires - stored.expires) < dt.timedelta(seconds=1)
    assert (cookie["domain"], cookie["path"], cookie["sameSite"]) == ("example.com", "/", "strict")
    app.reset()
    secure = sid_in(app.get("/", extra_environ={"wsgi.url_scheme": "https"}))
    cookie = stored_record(middleware, secure)["cookie"]
    assert list(cookie) == ["originalMaxAge", "expires", "secure", "httpOnly", "domain", "path", "sameSite"]
    assert cookie["secure"] is True

    bare, middleware = make_app(app_doing(lambda s: s.update(n=1)), httponly=False, samesite=None)
    cookie = stored_record(middleware, sid_in(bare.get("/")))["cookie"]
    assert list(cookie) == ["originalMaxAge", "expires", "httpOnly", "path"]
    assert cookie["httpOnly"] is False


def test_an_update_and_a_regenerate_keep_the_secure_flag_and_the_lifetime(
    make_app: MakeApp,
) -> None:
    # express-session reads `secure` back from the stored cookie object, so every
    # kind of write records it, not only the first one.
    def action(session: Any) -> Any:
        if session.get("n") == 2:
            session.regenerate()
        session["n"] = session.get("n", 0) + 1
        return session.id

    app, middleware = make_app(app_doing(action))
    https = {"wsgi.url_scheme": "https"}
    first = app.get("/", extra_environ=https).json  # a new row: n=1
    assert app.get("/", extra_environ=https).json == first  # a changed row: n=2
    assert stored_record(middleware, first)["cookie"]["secure"] is True
    login = app.get("/", extra_environ=https)  # regenerate(): a renamed row, n=3
    renamed = login.json
    assert renamed != first
    assert "Max-Age=86400;" in set_cookies(login)[0]  # the new id keeps the session's lifetime
    record = stored_record(middleware, renamed)
    assert record["n"] == 3 and record["cookie"]["secure"] is True


def test_reading_a_nested_value_without_changing_it_writes_nothing(make_app: MakeApp) -> None:
    def action(session: Any) -> Any:
        if session.new:
            session["cart"] = {"items": [1, 2], "note": "x"}
        return len(session["cart"]["items"])  # read, never changed

    app, middleware = make_app(app_doing(action))
    sid = sid_in(app.get("/"))
    stored = middleware.store.load(sid)
    log = StatementLog(middleware.store)
    assert app.get("/").json == 2
    assert [sql.lstrip().split()[0].upper() for sql in log.statements] == ["SELECT"]  # no write, no touch
    log.remove()
    again = middleware.store.load(sid)
    assert stored is not None and again is not None
    assert (again.text, again.expires) == (stored.text, stored.expires)


def test_cookie_fields_only_express_session_writes_are_kept_by_a_python_write(make_app: MakeApp) -> None:
    app, middleware = make_app(app_doing(lambda s: s.update(n=s["n"] + 1)))
    node_cookie = {"originalMaxAge": 3_600_000, "priority": "high", "partitioned": True, "path": "/"}
    sid = plant_row(middleware, app, {"cookie": node_cookie, "n": 1})
    assert "Max-Age=3600" in set_cookies(app.get("/"))[0]
    record = stored_record(middleware, sid)
    assert record["n"] == 2
    assert record["cookie"]["priority"] == "high" and record["cookie"]["partitioned"] is True
    assert record["cookie"]["originalMaxAge"] == 3_600_000


def test_a_lone_surrogate_is_a_500_naming_the_key(
    make_app: MakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    # JSON text can hold it escaped, but no database stores it: refused before the write.
    app, _ = make_app(app_doing(lambda s: s.update(bad="\ud800")))
    app.get("/", status=500)
    assert "session['bad']" in caplog.text


def test_a_value_read_before_an_explicit_save_and_changed_after_it_is_saved(make_app: MakeApp) -> None:
    """``save()`` mid-request (a Beaker habit) keeps watching the values the app holds."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ["dbsession"]
        if environ["PATH_INFO"] == "/buy":
            cart = session.setdefault("cart", ["a"])
            session.save()
            cart.append("b")
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(session.get("cart")).encode()]

    client, _ = make_app(app)
    assert client.get("/buy").json == ["a", "b"]
    assert client.get("/").json == ["a", "b"], "the append after save() was saved"
    assert client.get("/buy").json == ["a", "b", "b"]
    assert client.get("/").json == ["a", "b", "b"]


def test_a_value_read_before_start_response_and_changed_after_a_write_is_saved(make_app: MakeApp) -> None:
    """The save in start_response wrote the session; a change in place after it is written too."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ["dbsession"]
        cart = session.setdefault("cart", [])
        session["visits"] = session.get("visits", 0) + 1  # so start_response writes
        start_response("200 OK", [("Content-Type", "application/json")])
        cart.append(session["visits"])
        return [json.dumps(session["cart"]).encode()]

    client, _ = make_app(app)
    assert client.get("/").json == [1]
    assert client.get("/").json == [1, 2]
    assert client.get("/").json == [1, 2, 3], "the appends after start_response were saved"


def test_a_new_session_left_empty_is_not_stored_and_sets_no_cookie(make_app: MakeApp) -> None:
    """express-session's saveUninitialized=false: a session the app only looked at costs no row."""

    def action(session: Any) -> Any:
        session["draft"] = 1
        del session["draft"]
        return session.get("draft")

    app, middleware = make_app(app_doing(action))
    response = app.get("/")
    assert set_cookies(response) == []
    assert middleware.store.count() == 0
