"""Rotating the secret logs nobody out (issue 23, item 5).

With ``secret=[new, old]`` a cookie that only the old secret verifies is
signed again with the new one on the first response whose request loaded
the session: a ``Set-Cookie`` header only, no extra statement, no write, and
an unused session is not loaded for it. Once every active browser has been
back, the old secret can go; a "remember me" session (``set_expiry`` longer
than ``max_age``) keeps its lifetime.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from flask import Flask, session

from conftest import SECRET, StatementLog, drop_table
from tests.webtest_helpers import MakeApp, set_cookies, sid_in
from wsgi_dbsession.flask import DBSession

OLD = SECRET
NEW = "the-new-secret-0123456789abcdefghijklmnopqrstuvwxyz"


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    session = environ["dbsession"]
    path = environ["PATH_INFO"]
    if path == "/login":
        session["user"] = "ada"
        session.set_expiry(30 * 86400)  # remember me: longer than max_age
    body: Any = None if path == "/unused" else session.get("user")
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]


def test_a_cookie_signed_with_an_old_secret_is_signed_again_with_the_new_one(make_app: MakeApp) -> None:
    before, old_app = make_app(app, secret=OLD, max_age=3600)
    sid = sid_in(before.get("/login"))
    table = old_app.store.table.name

    rotated, middleware = make_app(app, secret=[NEW, OLD], max_age=3600, table_name=table)
    rotated.cookiejar = before.cookiejar
    assert set_cookies(rotated.get("/unused")) == [], "an unused session is not loaded to re-sign it"
    statements = StatementLog(middleware.store)
    response = rotated.get("/")
    assert response.json == "ada"
    assert len(statements) == 1, "the read, and no write"
    (header,) = set_cookies(response)
    assert sid_in(response, NEW) == sid
    max_age = int(header.split("Max-Age=")[1].split(";")[0])
    assert 29 * 86400 < max_age <= 30 * 86400, "the remember-me lifetime the row still has"
    statements.clear()
    assert set_cookies(rotated.get("/")) == [], "signed with the new secret: nothing more to do"
    assert len(statements) == 1

    after, _ = make_app(app, secret=NEW, max_age=3600, table_name=table)
    after.cookiejar = rotated.cookiejar
    assert after.get("/").json == "ada", "the old secret is gone and the user is still signed in"


def test_a_cookie_signed_with_the_first_secret_gets_no_new_header(make_app: MakeApp) -> None:
    client, _ = make_app(app, secret=[NEW, OLD])
    client.get("/login")
    assert set_cookies(client.get("/")) == []


def test_without_rotation_a_user_is_logged_out_when_the_old_secret_goes(make_app: MakeApp) -> None:
    """Why the re-signing matters: a cookie no configured secret verifies is a new session."""
    before, old_app = make_app(app, secret=OLD)
    before.get("/login")
    after, _ = make_app(app, secret=NEW, table_name=old_app.store.table.name)
    after.cookiejar = before.cookiejar
    assert after.get("/").json is None


def test_flask_signs_a_cookie_verified_by_a_fallback_key_again_with_secret_key(
    db_url: str, table_name: str
) -> None:
    def flask_app(**config: Any) -> Flask:
        flask = Flask(__name__)
        flask.config.update(
            DBSESSION_URL=db_url, DBSESSION_TABLE_NAME=table_name, DBSESSION_CLEANUP_INTERVAL=0, **config
        )
        DBSession(flask)

        @flask.route("/login")
        def login() -> str:
            session["user"] = "ada"
            return "ok"

        @flask.route("/")
        def home() -> str:
            return str(session.get("user"))

        return flask

    before = flask_app(SECRET_KEY=OLD)
    rotated = flask_app(SECRET_KEY=NEW, SECRET_KEY_FALLBACKS=[OLD])
    after = flask_app(SECRET_KEY=NEW)
    try:
        client = before.test_client()
        client.get("/login")
        client.application = rotated
        response = client.get("/")
        assert response.text == "ada"
        assert len(response.headers.getlist("Set-Cookie")) == 1, "signed again with SECRET_KEY"
        client.application = after
        assert client.get("/").text == "ada", "the fallback key is gone and the user is still signed in"
    finally:
        store = before.extensions["dbsession"].store
        drop_table(store.engine, store.table)
        for flask in (before, rotated, after):
            flask.extensions["dbsession"].close()
