"""Flask through ``DBSession(app)``, with real Flask, Flask-Login and Flask-WTF, on every live database."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import urllib.error
import uuid
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import sqlalchemy as sa
from flask import Flask
from markupsafe import Markup

from conftest import LIVE_URLS, SECRET, StatementLog, checked_out, drop_table, unique_table_name
from tests.example_helpers import EXAMPLES, Browser, serving
from tests.flask_apps import build_app
from tests.prune_helpers import live_rows, seed
from wsgi_dbsession import (
    ConfigurationError,
    SerializationError,
    Session,
    SessionMiddleware,
    SessionStore,
    sign,
)
from wsgi_dbsession.cookies import encode_value, generate_sid, unsign
from wsgi_dbsession.flask import PLAIN_JSON, TAGGED_JSON, DBSession, FlaskSession, options_from_config
from wsgi_dbsession.options import option_types

PARAMETERS = option_types()

ROOT = Path(__file__).resolve().parent.parent
OTHER_SECRET = "another-secret-0123456789abcdefghijklmnopqrstuvwxyz"
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/test"
CSRF_INPUT = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


# -- helpers ----------------------------------------------------------------------------


def set_cookies(response: Any) -> list[str]:
    return list(response.headers.getlist("Set-Cookie"))


def sid_in(response: Any, secret: str = SECRET) -> str:
    (header,) = set_cookies(response)
    sid = unsign(unquote(header.split(";", 1)[0].split("=", 1)[1]), [secret.encode()])
    assert sid is not None, header
    return sid


def attributes(header: str) -> dict[str, str]:
    """A Set-Cookie header's attributes, lower-cased names to values."""
    parts = [part.strip() for part in header.split(";")[1:]]
    return {name.lower(): value for name, _, value in (part.partition("=") for part in parts)}


def manager_of(app: Flask) -> Any:
    return app.extensions["dbsession"]


MakeFlask = Callable[..., Flask]


def app_factory(url: str, table_name: str) -> Iterator[MakeFlask]:
    apps: list[Flask] = []

    def make(*, login: bool = True, csrf: bool = True, **config: Any) -> Flask:
        settings = {
            "SECRET_KEY": SECRET,
            "DBSESSION_URL": url,
            "DBSESSION_TABLE_NAME": table_name,
            "DBSESSION_CLEANUP_INTERVAL": 0,
            **config,
        }
        app = build_app(settings, login=login, csrf=csrf)
        apps.append(app)
        return app

    yield make
    for app in apps:
        manager = manager_of(app)
        drop_table(manager.store.engine, manager.store.table)
        assert checked_out(manager.store) == 0, "a connection was left checked out"
        manager.close()


@pytest.fixture
def make_flask(db_url: str, table_name: str) -> Iterator[MakeFlask]:
    """Flask apps on this test's table of the backend under test."""
    yield from app_factory(db_url, table_name)


@pytest.fixture
def make_sqlite_flask(tmp_path: Path) -> Iterator[MakeFlask]:
    """Flask apps on an SQLite file, for what does not depend on the database."""
    yield from app_factory(f"sqlite:///{tmp_path / 'sessions.sqlite'}", "sessions")


# -- the acceptance tests, on every backend ----------------------------------------------


def test_session_counts_and_its_row_is_in_the_configured_table(
    make_flask: MakeFlask, table_name: str
) -> None:
    app = make_flask()
    client = app.test_client()
    first = client.get("/incr")
    assert first.json == {"n": 1}
    assert first.headers["Vary"] == "Cookie"
    assert first.headers["Cache-Control"] == "private"  # it sets the session cookie
    second = client.get("/incr")
    assert second.json == {"n": 2}
    assert second.headers["Vary"] == "Cookie"
    sid = unsign(unquote(client.get_cookie("session").value), [SECRET.encode()])
    assert sid is not None
    store = manager_of(app).store
    assert store.table.name == table_name
    with store.engine.connect() as conn:
        (text,) = conn.execute(sa.text(f"SELECT sess FROM {table_name} WHERE sid = :sid"), {"sid": sid}).one()
    stored = json.loads(text) if isinstance(text, str) else text
    assert next(iter(stored)) == "cookie" and stored["n"] == 2
    assert store.count() == 1


def test_flash_is_read_on_the_next_request(make_flask: MakeFlask) -> None:
    client = make_flask().test_client()
    assert client.get("/flash", query_string={"message": "saved"}).text == "flashed"
    # Flask's (category, message) tuple comes back as a JSON list.
    assert client.get("/messages").json == {"messages": [["info", "saved"]]}
    assert client.get("/messages").json == {"messages": []}


def test_post_needs_the_csrf_token(make_flask: MakeFlask) -> None:
    client = make_flask().test_client()
    token = client.get("/csrf").json["token"]
    assert client.post("/submit").status_code == 400
    assert client.post("/submit", data={"csrf_token": "x" + token}).status_code == 400
    assert client.post("/submit", data={"csrf_token": token}).status_code == 200
    assert client.post("/submit", headers={"X-CSRFToken": token}).status_code == 200
    stranger = make_flask().test_client()  # the same token, another session: refused
    assert stranger.post("/submit", data={"csrf_token": token}).status_code == 400


def test_login_and_logout_persist(make_flask: MakeFlask) -> None:
    app = make_flask()
    store = manager_of(app).store
    client = app.test_client()
    first = client.get("/csrf")  # Flask-WTF's raw token makes the session worth storing
    token, anonymous = first.json["token"], sid_in(first)
    client.get("/incr")

    logged_in = client.post("/login", data={"user": "alice", "csrf_token": token})
    assert logged_in.json == {"user": "alice"}
    after = sid_in(logged_in)
    assert after != anonymous, "Flask-Login's login must give the session a new id"
    assert store.get(anonymous) is None
    assert store.get(after)["_user_id"] == "alice"
    assert store.get(after)["n"] == 1  # the data moved with the session
    assert client.get("/me").json == {"user": "alice"}

    assert client.post("/logout", data={"csrf_token": token}).json == {"user": None}
    assert "_user_id" not in store.get(after)
    assert client.get("/me").json == {"user": None}


def test_an_untouched_session_costs_nothing(make_flask: MakeFlask) -> None:
    app = make_flask(login=False, csrf=False)
    client = app.test_client()
    client.get("/incr")
    statements = StatementLog(manager_of(app).store)
    try:
        response = client.get("/plain")  # with the session cookie
        assert len(statements) == 0, statements.statements
        assert set_cookies(response) == []
        assert "Vary" not in response.headers
        response = app.test_client().get("/plain")  # without one
        assert len(statements) == 0
        assert set_cookies(response) == []

        # Flask-Login reads the session after every request: without a cookie
        # that is still no statement and no cookie, but the answer varies on Cookie.
        with_login = make_flask(csrf=False)
        login_statements = StatementLog(manager_of(with_login).store)
        try:
            response = with_login.test_client().get("/plain")
            assert len(login_statements) == 0
            assert set_cookies(response) == []
            assert response.headers["Vary"] == "Cookie"
        finally:
            login_statements.remove()
    finally:
        statements.remove()


def test_flask_session_is_the_dbsession_in_the_environ(make_flask: MakeFlask) -> None:
    app = make_flask()
    app.test_client().get("/seen")
    ((session, in_environ),) = app.config["SEEN_SESSIONS"]
    assert isinstance(session, FlaskSession)
    assert isinstance(in_environ, Session)
    assert session.dbsession is in_environ


# -- lifetimes: session.permanent and PERMANENT_SESSION_LIFETIME --------------------------


def test_a_session_is_a_browser_session_until_it_is_made_permanent(make_sqlite_flask: MakeFlask) -> None:
    app = make_sqlite_flask(PERMANENT_SESSION_LIFETIME=dt.timedelta(days=7))
    store = manager_of(app).store
    client = app.test_client()
    first = client.get("/incr")
    cookie = attributes(set_cookies(first)[0])
    assert "max-age" not in cookie and "expires" not in cookie
    assert client.get("/state").json["permanent"] is False

    permanent = client.get("/permanent/1")
    assert permanent.json == {"permanent": True}
    assert attributes(set_cookies(permanent)[0])["max-age"] == str(7 * 86400)
    sid = sid_in(permanent)
    raw = json.loads(store.load(sid).text)
    assert raw["cookie"]["originalMaxAge"] == 7 * 86400 * 1000

    statements = StatementLog(store)
    try:
        again = client.get("/permanent/1")  # the before_request idiom: no write, no cookie
        assert again.json == {"permanent": True}
        assert set_cookies(again) == []
        assert len(statements) == 1  # the read
    finally:
        statements.remove()

    back = client.get("/permanent/0")
    assert back.json == {"permanent": False}
    cookie = attributes(set_cookies(back)[0])
    assert "max-age" not in cookie and "expires" not in cookie
    assert json.loads(store.load(sid).text)["cookie"]["originalMaxAge"] is None


def test_dbsession_max_age_makes_every_session_permanent(make_sqlite_flask: MakeFlask) -> None:
    app = make_sqlite_flask(DBSESSION_MAX_AGE=dt.timedelta(hours=1))
    client = app.test_client()
    assert attributes(set_cookies(client.get("/incr"))[0])["max-age"] == "3600"
    assert client.get("/state").json["permanent"] is True
    # permanent = True always means PERMANENT_SESSION_LIFETIME (31 days by default).
    assert attributes(set_cookies(client.get("/permanent/1"))[0])["max-age"] == str(31 * 86400)


# -- configuration -------------------------------------------------------------------------


def flask_app(**config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(config)
    return app


def test_options_come_from_dbsession_keys_then_flask_keys() -> None:
    options = options_from_config(flask_app(SECRET_KEY=SECRET))
    # SESSION_COOKIE_PARTITIONED is one of Flask's keys from Flask 3.1 on.
    partitioned = {"partitioned": False} if "SESSION_COOKIE_PARTITIONED" in Flask.default_config else {}
    assert options == {
        "secret": [SECRET],
        "max_age": None,
        "rolling": True,
        "serializer": TAGGED_JSON,
        "cookie_name": "session",
        "httponly": True,
        **partitioned,
    }
    options = options_from_config(
        flask_app(
            SECRET_KEY=SECRET,
            SECRET_KEY_FALLBACKS=[OTHER_SECRET.encode()],
            SESSION_REFRESH_EACH_REQUEST=False,
            SESSION_COOKIE_NAME="flask.sid",
            SESSION_COOKIE_SECURE=True,
            SESSION_COOKIE_SAMESITE="Strict",
            SESSION_COOKIE_HTTPONLY=False,
            SESSION_COOKIE_DOMAIN="example.test",
            SESSION_COOKIE_PARTITIONED=True,
            APPLICATION_ROOT="/app",
        )
    )
    assert options == {
        "secret": [SECRET, OTHER_SECRET],
        "max_age": None,
        "rolling": False,
        "serializer": TAGGED_JSON,
        "cookie_name": "flask.sid",
        "secure": True,
        "samesite": "strict",
        "httponly": False,
        "domain": "example.test",
        "path": "/app",
        "partitioned": True,
    }
    options = options_from_config(
        flask_app(
            SECRET_KEY="short",
            SESSION_COOKIE_NAME="flask.sid",
            SESSION_COOKIE_SECURE=True,
            DBSESSION_SECRET=OTHER_SECRET,
            DBSESSION_COOKIE_NAME="app.sid",
            DBSESSION_SECURE="auto",
            DBSESSION_MAX_AGE="3600",
            DBSESSION_ROLLING="off",
            DBSESSION_CLEANUP_INTERVAL=dt.timedelta(minutes=5),
            DBSESSION_SERIALIZER="wsgi_dbsession.flask:PLAIN_JSON",
        )
    )
    assert options == {
        "secret": OTHER_SECRET,
        "cookie_name": "app.sid",
        "secure": "auto",
        "max_age": 3600,
        "rolling": False,
        "cleanup_interval": 300,
        "serializer": PLAIN_JSON,
        "httponly": True,
        **partitioned,
    }


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"SECRET_KEY": "dev"}, r"SECRET_KEY has 3 characters; use at least 32 .*DBSESSION_SECRET"),
        (
            {"SECRET_KEY": SECRET, "SECRET_KEY_FALLBACKS": ["old"]},
            r"SECRET_KEY_FALLBACKS\[0\] has 3 characters",
        ),
        ({"SECRET_KEY": b"\xff" * 40}, r"SECRET_KEY is bytes that are not UTF-8 text"),
        ({"DBSESSION_SECRET": "dev"}, r"^DBSESSION_SECRET has 3 characters"),
        (
            {"SECRET_KEY": SECRET, "DBSESSION_MAXAGE": 60},
            r"unknown setting 'DBSESSION_MAXAGE'; did you mean DBSESSION_MAX_AGE\?",
        ),
        ({"SECRET_KEY": SECRET, "DBSESSION_MAX_AGE": "soon"}, r"^DBSESSION_MAX_AGE = 'soon' is not valid"),
        ({"SECRET_KEY": SECRET, "DBSESSION_MAX_AGE": 0}, r"^DBSESSION_MAX_AGE must be"),
        (
            {"SECRET_KEY": SECRET, "SESSION_COOKIE_SAMESITE": "sometimes"},
            r"SESSION_COOKIE_SAMESITE = 'sometimes'",
        ),
        (
            {"SECRET_KEY": SECRET, "SESSION_COOKIE_PARTITIONED": True, "DBSESSION_SECURE": False},
            r"^SESSION_COOKIE_PARTITIONED = True needs a Secure cookie, but DBSESSION_SECURE is False",
        ),
        (
            {"SECRET_KEY": SECRET, "DBSESSION_PARTITIONED": True, "DBSESSION_SECURE": False},
            r"^partitioned=True needs secure=True",
        ),
        ({"SECRET_KEY": SECRET, "PERMANENT_SESSION_LIFETIME": 0}, r"PERMANENT_SESSION_LIFETIME"),
    ],
)
def test_a_bad_setting_stops_init_app(config: dict[str, Any], message: str) -> None:
    app = flask_app(DBSESSION_CLEANUP_INTERVAL=0, **config)
    with pytest.raises(ConfigurationError, match=message):
        DBSession(app)


def test_every_option_has_a_dbsession_key_in_the_docs() -> None:
    doc = (ROOT / "docs" / "flask.md").read_text()
    missing = [name for name in PARAMETERS if f"`DBSESSION_{name.upper()}`" not in doc]
    assert missing == [], f"docs/flask.md does not list {missing}"
    app = flask_app(SECRET_KEY=SECRET, **{f"DBSESSION_{name.upper()}": None for name in PARAMETERS})
    accepted = options_from_config(app)
    assert set(PARAMETERS) <= set(accepted)


def test_cookie_settings_shape_the_cookie(make_sqlite_flask: MakeFlask) -> None:
    app = make_sqlite_flask(
        DBSESSION_COOKIE_NAME="app.sid",
        DBSESSION_MAX_AGE="120",
        DBSESSION_SECURE="true",
        DBSESSION_HTTPONLY="off",
        DBSESSION_SAMESITE="Strict",
    )
    (header,) = set_cookies(app.test_client().get("/incr"))
    cookie = attributes(header)
    assert header.startswith("app.sid=s%3A")
    assert cookie["max-age"] == "120"
    assert "secure" in cookie and "httponly" not in cookie
    assert cookie["samesite"].lower() == "strict"


def test_secret_key_fallbacks_still_verify(make_sqlite_flask: MakeFlask) -> None:
    old = make_sqlite_flask(SECRET_KEY=OTHER_SECRET, DBSESSION_MAX_AGE=3600)
    client = old.test_client()
    client.get("/incr")
    new = make_sqlite_flask(SECRET_KEY=SECRET, SECRET_KEY_FALLBACKS=[OTHER_SECRET], DBSESSION_MAX_AGE=3600)
    client.application = new  # the same browser, after the deploy that rotated the key
    response = client.get("/incr")
    assert response.json == {"n": 2}
    sid_in(response, SECRET)  # re-signed with the new key


# -- behaviour under failure, and beside the middleware -------------------------------------


def test_a_session_that_cannot_be_saved_answers_500(make_sqlite_flask: MakeFlask) -> None:
    app = make_sqlite_flask(login=False)
    response = app.test_client().get("/unsavable")
    assert response.status_code == 500
    assert set_cookies(response) == []
    assert manager_of(app).store.count() == 0
    app.testing = True  # Flask then lets the error through, naming the key
    with pytest.raises(SerializationError, match="'when'"):
        app.test_client().get("/unsavable")


def test_an_unreachable_database_answers_503() -> None:
    app = build_app(
        {"SECRET_KEY": SECRET, "DBSESSION_URL": UNREACHABLE, "DBSESSION_CLEANUP_INTERVAL": 0}, csrf=False
    )
    try:
        client = app.test_client()
        assert client.get("/plain").status_code == 200  # no cookie: the database is not needed
        client.set_cookie("session", encode_value(sign(generate_sid(), SECRET)))
        attempts: list[object] = []
        sa.event.listen(manager_of(app).store.engine, "do_connect", lambda *args: attempts.append(args))
        # Flask-Login reads the session in the view and again after it: the
        # outage is answered once, and the after_request hook sees an empty session.
        response = client.get("/me")
        assert len(attempts) <= 2, "one load (retried once on a fresh connection), not one per read"
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert response.text == "The session store is unavailable; try again shortly.\n"
        assert set_cookies(response) == []
    finally:
        manager_of(app).close()


def test_an_unreachable_database_is_503_for_a_new_visitor_whose_view_writes() -> None:
    # Issue 23 item 3: the write is the first use of the database, in save_session,
    # where Flask would make any error its 500; the plain middleware answers 503.
    app = build_app(
        {"SECRET_KEY": SECRET, "DBSESSION_URL": UNREACHABLE, "DBSESSION_CLEANUP_INTERVAL": 0}, csrf=False
    )
    try:
        response = app.test_client().get("/incr")  # no cookie: no read, the write fails
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "5"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.text == "The session store is unavailable; try again shortly.\n"
        assert set_cookies(response) == []
    finally:
        manager_of(app).close()


def test_an_app_wrapped_by_the_middleware_uses_its_session(make_flask: MakeFlask, table_name: str) -> None:
    app = make_flask(csrf=False)
    store = manager_of(app).store
    app.wsgi_app = SessionMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, secret=SECRET, engine=store.engine, table_name=table_name, cleanup_interval=0
    )
    app.wsgi_app.store.create_table()
    client = app.test_client()
    client.get("/seen")
    ((session, in_environ),) = app.config["SEEN_SESSIONS"]
    assert session.dbsession is in_environ
    statements = StatementLog(app.wsgi_app.store)  # the middleware's store runs them
    try:
        response = client.get("/incr")
        assert len(statements) == 1, statements.statements  # one owner saves it: one write
    finally:
        statements.remove()
    assert len(set_cookies(response)) == 1
    assert client.get("/incr").json == {"n": 2}
    assert store.get(sid_in(response))["n"] == 1 + 1


def test_nested_changes_are_saved(make_sqlite_flask: MakeFlask) -> None:
    client = make_sqlite_flask().test_client()
    client.get("/nested", query_string={"item": "book"})
    assert client.get("/nested", query_string={"item": "pen"}).json == {"cart": ["book", "pen"]}
    assert client.get("/state").json["data"]["cart"] == ["book", "pen"]


def test_flask_tagged_json_keeps_markup_and_datetimes(make_sqlite_flask: MakeFlask) -> None:
    app = make_sqlite_flask(DBSESSION_SERIALIZER="flask.sessions:session_json_serializer")
    when = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)

    @app.get("/typed")
    def typed() -> str:
        from flask import flash, session

        session["when"] = when
        flash(Markup("<b>saved</b>"))
        return "ok"

    @app.get("/typed/read")
    def typed_read() -> str:
        from flask import get_flashed_messages, session

        (message,) = get_flashed_messages()
        assert session["when"] == when and isinstance(message, Markup)
        return str(message)

    client = app.test_client()
    client.get("/typed")
    assert client.get("/typed/read").text == "<b>saved</b>"


# -- as Flask's own session does (issue 24) ------------------------------------------------


@pytest.mark.parametrize("path", ["/forget/n", "/clear"])
def test_an_emptied_session_deletes_its_row_and_expires_the_cookie(make_flask: MakeFlask, path: str) -> None:
    app = make_flask(login=False, csrf=False)
    store = manager_of(app).store
    client = app.test_client()
    sid = sid_in(client.get("/incr"))
    assert store.load(sid) is not None
    response = client.get(path)
    (header,) = set_cookies(response)
    assert header.startswith("session=;") and attributes(header)["max-age"] == "0"
    assert store.load(sid) is None
    assert client.get_cookie("session") is None
    # Emptied and then refilled in one request is a session like any other.
    assert client.get("/incr").json == {"n": 1}


def test_a_session_only_read_while_empty_keeps_its_row(make_sqlite_flask: MakeFlask) -> None:
    app = make_sqlite_flask(login=False, csrf=False)
    store = manager_of(app).store
    client = app.test_client()
    sid = sid_in(client.get("/incr"))
    store.set(sid, {}, dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))  # a Node app emptied it
    assert not [header for header in set_cookies(client.get("/state")) if "Max-Age=0" in header]
    assert store.load(sid) is not None  # not emptied by this request: Flask keeps the cookie too


def test_the_cookie_is_flasks_by_default(make_sqlite_flask: MakeFlask) -> None:
    app = make_sqlite_flask(login=False, csrf=False)
    header = set_cookies(app.test_client().get("/incr"))[0]
    assert header.startswith("session=s%3A")
    cookie = attributes(header)
    # Flask's defaults SECURE=False and SAMESITE=None leave the package's safer ones.
    assert "secure" not in cookie and cookie["samesite"] == "lax" and "httponly" in cookie
    secure = attributes(set_cookies(app.test_client().get("/incr", base_url="https://localhost"))[0])
    assert "secure" in secure


def test_flask_cookie_keys_are_honoured_and_dbsession_keys_override_them(
    make_sqlite_flask: MakeFlask,
) -> None:
    app = make_sqlite_flask(
        login=False,
        csrf=False,
        SESSION_COOKIE_NAME="session",  # Flask's default, given explicitly
        SESSION_COOKIE_DOMAIN="example.test",
        SESSION_COOKIE_PATH="/shop",
        SESSION_COOKIE_HTTPONLY=False,
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_SAMESITE="Strict",
    )
    header = set_cookies(app.test_client().get("/incr", base_url="http://example.test"))[0]
    cookie = attributes(header)
    assert header.startswith("session=")
    assert cookie["domain"] == "example.test" and cookie["path"] == "/shop"
    assert "httponly" not in cookie and "secure" in cookie and cookie["samesite"] == "strict"

    shared = make_sqlite_flask(
        login=False,
        csrf=False,
        SESSION_COOKIE_NAME="flask.sid",
        SESSION_COOKIE_SAMESITE="Strict",
        DBSESSION_COOKIE_NAME="connect.sid",
        DBSESSION_SAMESITE="lax",
    )
    header = set_cookies(shared.test_client().get("/incr"))[0]
    assert header.startswith("connect.sid=") and attributes(header)["samesite"] == "lax"


def test_session_cookie_partitioned_sends_partitioned_cookies(make_sqlite_flask: MakeFlask) -> None:
    app = make_sqlite_flask(login=False, csrf=False, SESSION_COOKIE_PARTITIONED=True)
    client = app.test_client()
    response = client.get("/incr", base_url="https://localhost")
    cookie = attributes(set_cookies(response)[0])
    assert "partitioned" in cookie and "secure" in cookie
    stored = json.loads(manager_of(app).store.load(sid_in(response)).text)
    assert stored["cookie"]["partitioned"] is True  # as express-session records it
    # Over plain http (secure="auto") the cookie goes without it: browsers would drop it.
    plain = attributes(set_cookies(app.test_client().get("/incr"))[0])
    assert "partitioned" not in plain


def test_flask_values_come_back_as_flask_stores_them(make_flask: MakeFlask) -> None:
    app = make_flask(login=False, csrf=False)
    values = {
        "tuple": (1, "two"),
        "bytes": b"\x00\xffraw",
        "when": dt.datetime(2024, 5, 1, 12, 0, 7, tzinfo=dt.timezone.utc),
        "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "markup": Markup("<b>bold</b>"),
        "nested": {"pair": ("a", b"b")},
    }
    seen: dict[str, Any] = {}

    @app.get("/typed")
    def typed() -> str:
        from flask import flash, session

        session.update(values)
        flash(Markup("<b>saved</b>"), "info")
        return "ok"

    @app.get("/typed/read")
    def typed_read() -> str:
        from flask import get_flashed_messages, session

        seen.update({key: session[key] for key in values})
        seen["flashes"] = get_flashed_messages(with_categories=True)
        return "ok"

    client = app.test_client()
    client.get("/typed")
    assert client.get("/typed/read").status_code == 200
    flashes = seen.pop("flashes")
    assert seen == values
    assert {key: type(value) for key, value in seen.items()} == {
        key: type(value) for key, value in values.items()
    }
    assert flashes == [("info", Markup("<b>saved</b>"))] and isinstance(flashes[0][1], Markup)


@pytest.mark.parametrize(
    "value",
    [
        {"n": 1, "cart": ["a", "b"], "user": {"id": "7", "admin": False}, "none": None, "pi": 3.5},
        {"tags": [(1, 2), [b"x", {"when": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)}]]},
        {"looks_tagged": {" t": [1, 2]}, "markup": {"m": Markup("<i>x</i>")}, "uuid": [uuid.UUID(int=5)]},
        {"text": "caf\u00e9 \u2603", "empty": {}, "nested": [[[]]]},
        {"only_plain_but_tag_like": {" t": [1, 2]}, "n": 1},
    ],
)
def test_tagged_json_reads_and_writes_flasks_own_format(value: dict[str, Any]) -> None:
    from flask.sessions import session_json_serializer as flasks

    ours = TAGGED_JSON.dumps(value)
    assert flasks.loads(ours) == value and TAGGED_JSON.loads(ours) == value
    assert TAGGED_JSON.loads(flasks.dumps(value)) == value
    assert json.loads(ours) == json.loads(flasks.dumps(value))  # the same JSON, tags included


def test_tagged_json_refuses_what_the_json_column_refuses() -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        TAGGED_JSON.dumps({"x": float("nan")})
    with pytest.raises(TypeError):
        TAGGED_JSON.dumps({"x": object()})


def test_plain_json_is_one_setting_away(make_sqlite_flask: MakeFlask) -> None:
    app = make_sqlite_flask(login=False, csrf=False, DBSESSION_SERIALIZER="wsgi_dbsession.flask:PLAIN_JSON")

    @app.get("/pair")
    def pair() -> str:
        from flask import session

        session["pair"] = ("a", 1)
        return "ok"

    client = app.test_client()
    sid = sid_in(client.get("/pair"))
    stored = json.loads(manager_of(app).store.load(sid).text)
    assert stored["pair"] == ["a", 1]  # what a Node app reads: no Flask tags
    app.testing = True
    with pytest.raises(SerializationError, match="'when'"):
        client.get("/unsavable")


def test_a_value_no_serializer_can_store_is_still_refused(make_sqlite_flask: MakeFlask) -> None:
    app = make_sqlite_flask(login=False)
    app.testing = True
    with pytest.raises(SerializationError, match="'when'"):
        app.test_client().get("/unsavable")


@pytest.mark.parametrize(("permanent", "max_age"), [(True, "600"), (False, None), (None, None)])
def test_session_permanent_from_flask_session_is_honoured(
    make_sqlite_flask: MakeFlask, permanent: bool | None, max_age: str | None
) -> None:
    config: dict[str, Any] = {"PERMANENT_SESSION_LIFETIME": 600}
    if permanent is not None:
        config["SESSION_PERMANENT"] = permanent
    client = make_sqlite_flask(login=False, csrf=False, **config).test_client()
    assert attributes(set_cookies(client.get("/incr"))[0]).get("max-age") == max_age
    assert client.get("/state").json["permanent"] is (permanent is True)


def test_flask_session_keys_without_a_meaning_here_are_named_in_one_warning(
    make_sqlite_flask: MakeFlask, caplog: pytest.LogCaptureFixture
) -> None:
    make_sqlite_flask(
        SESSION_TYPE="sqlalchemy",
        SESSION_USE_SIGNER=True,
        SESSION_KEY_PREFIX="app:",
        SESSION_SQLALCHEMY_TABLE="flask_sessions",
        SESSION_PERMANENT=True,
    )
    (record,) = [r for r in caplog.records if "Flask-Session settings" in r.getMessage()]
    message = record.getMessage()
    assert record.levelname == "WARNING"
    assert "SESSION_TYPE (use DBSESSION_URL or DBSESSION_ENGINE" in message
    assert "SESSION_USE_SIGNER (use nothing: the cookie is always signed" in message
    assert "SESSION_KEY_PREFIX (use DBSESSION_TABLE_NAME" in message
    assert "SESSION_SQLALCHEMY_TABLE (use DBSESSION_TABLE_NAME" in message
    assert "SESSION_PERMANENT (" not in message and "SESSION_PERMANENT is honoured" in message
    caplog.clear()
    make_sqlite_flask()
    assert not [r for r in caplog.records if "Flask-Session settings" in r.getMessage()]


def test_modified_accessed_and_new_mean_what_they_mean_in_flask(make_sqlite_flask: MakeFlask) -> None:
    client = make_sqlite_flask(login=False, csrf=False).test_client()
    fresh = client.get("/flags").json
    # From Flask 3.1 on, using flask.session at all is an access (and its answer varies on
    # Cookie); Flask 3.0 (the lowest supported) counts only reading or writing it.
    flask_31 = tuple(int(part) for part in metadata.version("flask").split(".")[:2]) >= (3, 1)
    assert fresh["before"] == {"accessed": flask_31, "modified": False}
    assert fresh["after"] == {"accessed": flask_31, "modified": False, "new": True}
    # A new session's id, asked for and never stored: nothing is saved, nothing modified.
    asked = client.get("/flags", query_string={"do": "id"})
    assert asked.json["after"] == {"accessed": True, "modified": False, "new": True}
    assert set_cookies(asked) == []
    client.get("/nested", query_string={"item": "book"})
    read = client.get("/flags", query_string={"do": "read"}).json
    assert read["after"] == {"accessed": True, "modified": False, "new": False}
    nested = client.get("/flags", query_string={"do": "nested"}).json
    assert nested["after"] == {"accessed": True, "modified": True, "new": False}  # and it is saved:
    assert client.get("/state").json["data"]["cart"] == ["book", "more"]


# -- flask dbsession ..., and the example, as real processes ---------------------------------


def flask_command(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", str(EXAMPLES / "flask_app.py"), *args],
        cwd=cwd,
        env={
            **{name: value for name, value in os.environ.items() if not name.startswith("FLASK_")},
            "WSGI_DBSESSION_SECRET": SECRET,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_flask_dbsession_commands(db_url: str, table_name: str, tmp_path: Path) -> None:
    env = {"FLASK_DBSESSION_URL": db_url, "FLASK_DBSESSION_TABLE_NAME": table_name}
    store = SessionStore(url=db_url, table_name=table_name, create_table=False)
    try:
        created = flask_command("dbsession", "create-table", env=env, cwd=tmp_path)
        assert created.returncode == 0, created.stderr
        assert f"table {table_name!r} is ready" in created.stdout
        live = seed(store, expired=5, live=2)

        stats = flask_command("dbsession", "stats", "--json", env=env, cwd=tmp_path)
        assert stats.returncode == 0, stats.stderr
        assert json.loads(stats.stdout) == {"table": table_name, "live": 2, "expired": 5}

        pruned = flask_command("dbsession", "prune", "--batch-size", "2", env=env, cwd=tmp_path)
        assert pruned.returncode == 0, pruned.stderr
        assert pruned.stdout.startswith(f"deleted 5 expired sessions from {table_name!r} in ")
        assert live_rows(store) == live
        assert store.count(expired=True) == 0
    finally:
        drop_table(store.engine, store.table)
        store.dispose()


@pytest.mark.parametrize(("given", "code"), [("0", 2), ("-3", 2), ("2", 0)])
def test_flask_prune_checks_its_batch_size_as_the_option_is(
    make_sqlite_flask: MakeFlask, given: str, code: int
) -> None:
    app = make_sqlite_flask()
    runner = app.test_cli_runner()
    assert runner.invoke(args=["dbsession", "create-table"]).exit_code == 0
    result = runner.invoke(args=["dbsession", "prune", "--batch-size", given])
    assert result.exit_code == code, result.output
    refused = "cleanup_batch_size must be a positive number of rows" in result.output
    assert refused == (code == 2), result.output


def test_without_secret_key_the_app_starts_and_its_requests_are_refused(make_sqlite_flask: MakeFlask) -> None:
    app = make_sqlite_flask(
        SECRET_KEY=None, login=False, csrf=False
    )  # as Flask's own session: no key, no session
    assert app.test_client().get("/incr").status_code == 500
    app.testing = True
    with pytest.raises(ConfigurationError, match=r"set SECRET_KEY \(or DBSESSION_SECRET\)"):
        app.test_client().get("/plain")
    assert manager_of(app).store.count() == 0


@pytest.mark.slow
def test_flask_dbsession_commands_need_no_secret_key(db_url: str, table_name: str, tmp_path: Path) -> None:
    # Issue 23 item 6: prune, stats and create-table sign nothing.
    app = (
        f"tests.flask_apps:build_app({{'DBSESSION_URL': {db_url!r}, 'DBSESSION_TABLE_NAME': {table_name!r}}})"
    )
    env = {name: value for name, value in os.environ.items() if not name.startswith("FLASK_")}
    store = SessionStore(url=db_url, table_name=table_name, create_table=False)
    try:
        outputs = {}
        for args in (["create-table"], ["stats", "--json"], ["prune"]):
            result = subprocess.run(
                [sys.executable, "-m", "flask", "--app", app, "dbsession", *args],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert result.returncode == 0, (args, result.stderr)
            outputs[args[0]] = result.stdout
        assert json.loads(outputs["stats"]) == {"table": table_name, "live": 0, "expired": 0}
        assert outputs["prune"].startswith(f"deleted 0 expired sessions from {table_name!r}")
    finally:
        drop_table(store.engine, store.table)
        store.dispose()


def check_example(base: str) -> Browser:
    """Visits count; login needs the CSRF token, flashes a welcome and changes the id; logout ends it."""
    browser = Browser(base)
    assert "Visits: 1" in browser.get()
    page = browser.get()
    assert "Visits: 2" in page and "Not logged in." in page
    token = CSRF_INPUT.search(page)
    assert token, page
    before = browser.cookie()
    with pytest.raises(urllib.error.HTTPError) as refused:
        browser.post("/login", user="mallory")
    refused.value.close()
    assert refused.value.code == 400
    page = browser.post("/login", user="alice", csrf_token=token.group(1))
    assert "Logged in as alice." in page and "Welcome, alice!" in page and "Visits: 3" in page
    assert browser.cookie() != before
    page = browser.get()
    assert "Welcome, alice!" not in page and "Logged in as alice." in page
    token = CSRF_INPUT.search(page)
    assert token, page
    page = browser.post("/logout", csrf_token=token.group(1))
    assert "Not logged in." in page and "You are logged out." in page and "Visits: 1" in page
    return browser


@pytest.mark.slow
def test_the_example_under_flask_run(tmp_path: Path) -> None:
    args = ["-m", "flask", "--app", str(EXAMPLES / "flask_app.py"), "run", "--port", "0"]
    with serving(args, r"Running on (http://\S+)", tmp_path) as base:
        check_example(base)
    assert (tmp_path / "wsgi_dbsession.sqlite").stat().st_size > 0


@pytest.mark.slow
def test_the_example_under_gunicorn_on_postgresql(tmp_path: Path) -> None:
    table = unique_table_name("flask_example")
    url = LIVE_URLS["postgresql"]
    store = SessionStore(url=url, table_name=table, create_table=False)
    args = ["-m", "gunicorn", "--workers", "2", "--bind", "127.0.0.1:0", "flask_app:app"]
    try:
        with serving(
            args,
            r"Listening at: (http://\S+)",
            tmp_path,
            FLASK_DBSESSION_URL=url,
            FLASK_DBSESSION_TABLE_NAME=table,
        ) as base:
            check_example(base)
            assert store.count() == 1
    finally:
        drop_table(store.engine, store.table)
        store.dispose()
