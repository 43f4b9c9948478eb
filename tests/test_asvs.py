"""The two OWASP ASVS session requirements issue 29 added (docs/security.md names each test).

An absolute session lifetime (ASVS 4.0.3 V3.3.2): ``absolute_max_age`` ends a
session a fixed time after its creation whatever its activity, on every live
database. Cookie name prefixes (V3.4.4): a ``__Host-`` or ``__Secure-`` name
whose attributes break the prefix's rule is refused when any adapter is built.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import pytest
import webtest
from flask import Flask
from pyramid.config import Configurator

from conftest import SECRET, StatementLog
from tests.apps import session_app
from tests.webtest_helpers import MakeApp, set_cookies, sid_in
from wsgi_dbsession import ConfigurationError, SessionMiddleware
from wsgi_dbsession.cookies import encode_value, generate_sid, sign
from wsgi_dbsession.express import to_iso_z
from wsgi_dbsession.flask import DBSession
from wsgi_dbsession.paste import filter_factory
from wsgi_dbsession.pyramid import session_factory_from_settings
from wsgi_dbsession.store import utcnow

HOUR = 3600  # seconds
ABSOLUTE = 3  # seconds: the absolute lifetime of the tests that wait it out (slack for a loaded machine)


# -- the absolute session lifetime ---------------------------------------------------------


def stored(middleware: SessionMiddleware, sid: str) -> dict[str, Any]:
    row = middleware.store.load(sid)
    assert row is not None, "the row is gone"
    return dict(json.loads(row.text))


def max_age_of(header: str) -> int:
    (value,) = [part.split("=", 1)[1] for part in header.split("; ") if part.startswith("Max-Age=")]
    return int(value)


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/sessions.sqlite"


def wait_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def replay(app: webtest.TestApp, sid: str, path: str = "/read") -> webtest.TestResponse:
    """A request carrying this session's cookie, as an attacker who copied it would send it
    (an id that is not a session's: a request without a session)."""
    app.reset()
    return app.get(path, headers={"Cookie": f"connect.sid={encode_value(sign(sid, SECRET))}"})


def test_the_row_and_the_cookie_never_outlive_the_absolute_limit(make_app: MakeApp) -> None:
    app, middleware = make_app(session_app, max_age=HOUR, absolute_max_age=600, rolling=True, touch_after=0)
    response = app.get("/incr")
    sid = sid_in(response)
    created = stored(middleware, sid)["_created"]
    limit = created + 600
    assert max_age_of(set_cookies(response)[0]) <= 600  # the browser forgets it at the limit
    row = middleware.store.load(sid)
    assert row is not None and row.expires.timestamp() == pytest.approx(limit, abs=1)
    # Activity moves nothing past the limit: neither a write nor a rolling touch.
    assert app.get("/incr").json["data"] == {"count": 2}
    app.get("/read")
    row = middleware.store.load(sid)
    assert row is not None and row.expires.timestamp() <= limit + 1e-3
    assert stored(middleware, sid)["cookie"]["expires"] is not None  # express's cookie object stays valid


@pytest.mark.slow
def test_an_active_session_ends_at_the_absolute_limit_and_its_row_is_pruned(make_app: MakeApp) -> None:
    app, middleware = make_app(
        session_app, max_age=HOUR, absolute_max_age=ABSOLUTE, rolling=True, touch_after=0
    )
    used, idle = sid_in(app.get("/incr")), sid_in(replay(app, "no-session", "/incr"))
    created = stored(middleware, used)["_created"]
    wait_until(created + ABSOLUTE / 2)
    assert replay(app, used, "/incr").json["data"] == {"count": 2}  # used well within max_age
    wait_until(created + ABSOLUTE + 0.2)

    assert replay(app, used).json["data"] == {}, "a session past its absolute limit loaded"
    assert middleware.store.load(used) is None
    # The other session's row, which nothing has read since, goes at the ordinary prune:
    # its stored expiry is the limit (a second later on a whole-second DATETIME column).
    wait_until(created + ABSOLUTE + 1.1)
    assert middleware.store.count(expired=True) >= 1
    assert middleware.store.prune() >= 1
    assert middleware.store.count() == 0 and middleware.store.load(idle) is None


@pytest.mark.slow
def test_a_session_whose_expiry_a_writer_moved_past_the_limit_still_ends_and_is_deleted(
    make_app: MakeApp,
) -> None:
    app, middleware = make_app(session_app, max_age=HOUR, absolute_max_age=ABSOLUTE)
    sid = sid_in(app.get("/incr"))
    created = stored(middleware, sid)["_created"]
    # What express-session's touch does (it knows no absolute limit): now + maxAge.
    assert middleware.store.touch(sid, utcnow() + dt.timedelta(seconds=HOUR))
    wait_until(created + ABSOLUTE + 0.2)

    response = replay(app, sid)
    assert response.json["data"] == {}
    (header,) = set_cookies(response)
    assert "Max-Age=0" in header, "the cookie of the ended session was not expired"
    assert middleware.store.count() == 0, "the ended session's row was kept"
    # The app that writes gets a new session under a new id.
    response = replay(app, sid, "/incr")
    assert response.json["data"] == {"count": 1} and sid_in(response) != sid


def write_node_row(middleware: SessionMiddleware) -> str:
    """A row as express-session and connect-session-knex write it: no ``_created``."""
    sid = generate_sid()
    node_row = {
        "cookie": {
            "originalMaxAge": HOUR * 1000,
            "expires": to_iso_z(utcnow() + dt.timedelta(hours=1)),
            "httpOnly": True,
            "path": "/",
        },
        "passport": {"user": "alice"},
    }
    middleware.store.write(sid, json.dumps(node_row), utcnow() + dt.timedelta(hours=1))
    return sid


def test_a_row_without_created_gets_one_at_its_first_load_and_the_limit_counts_from_there(
    make_app: MakeApp,
) -> None:
    app, middleware = make_app(session_app, max_age=HOUR, absolute_max_age=600)
    sid = write_node_row(middleware)
    before = time.time()
    assert replay(app, sid).json["data"] == {"passport": {"user": "alice"}}  # a read: the app changed nothing
    row = stored(middleware, sid)
    assert row["_created"] == pytest.approx(before, abs=5), "the row was not given a creation time"
    assert row["passport"] == {"user": "alice"} and row["cookie"]["originalMaxAge"] == HOUR * 1000
    loaded = middleware.store.load(sid)
    assert loaded is not None and loaded.expires.timestamp() <= row["_created"] + 600 + 1e-3


def test_without_the_option_a_row_without_created_is_read_without_a_write(make_app: MakeApp) -> None:
    app, middleware = make_app(session_app, max_age=HOUR)
    sid = write_node_row(middleware)
    statements = StatementLog(middleware.store)
    assert replay(app, sid).json["data"] == {"passport": {"user": "alice"}}
    assert len(statements) == 1  # the SELECT: the round-trip budget of a read is unchanged
    assert "_created" not in stored(middleware, sid)


def test_flask_does_not_load_a_session_past_the_limit(tmp_path: Path) -> None:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=SECRET,
        DBSESSION_URL=sqlite_url(tmp_path),
        DBSESSION_CLEANUP_INTERVAL=0,
        DBSESSION_ABSOLUTE_MAX_AGE=600,
    )
    DBSession(app)

    @app.get("/read")
    def read() -> dict[str, Any]:
        from flask import session

        return dict(session)

    manager = app.extensions["dbsession"]
    try:
        manager.store.create_table()
        sid, old = generate_sid(), time.time() - 601
        # Created 601 s ago; its expiry moved an hour ahead by a writer that knows no limit.
        row = {"cookie": {"originalMaxAge": None, "expires": None}, "_created": old, "user": "alice"}
        manager.store.write(sid, json.dumps(row), utcnow() + dt.timedelta(hours=1))
        client = app.test_client()
        client.set_cookie(manager.cookie.name, encode_value(sign(sid, SECRET)))
        response = client.get("/read")
        assert response.json == {}, "Flask loaded a session past its absolute limit"
        assert any("Max-Age=0" in header for header in response.headers.getlist("Set-Cookie"))
        assert manager.store.load(sid) is None
    finally:
        manager.close()


@pytest.mark.parametrize("value", [0, -1])
def test_absolute_max_age_must_be_a_positive_number_of_seconds(value: int, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="absolute_max_age must be a positive number of seconds"):
        SessionMiddleware(session_app, secret=SECRET, url=sqlite_url(tmp_path), absolute_max_age=value)


# -- where the session id travels ------------------------------------------------------------


def test_a_session_id_in_the_url_or_another_header_is_never_read(make_app: MakeApp) -> None:
    app, _ = make_app(session_app)
    sid = sid_in(app.get("/incr"))
    app.reset()
    signed = encode_value(sign(sid, SECRET))
    for query in (f"connect.sid={signed}", f"sid={sid}", f"connect.sid={sid}"):
        assert app.get(f"/read?{query}").json["data"] == {}
    headers = {"Authorization": f"Bearer {signed}", "X-Session-Id": sid, "Cookie2": f"connect.sid={signed}"}
    assert app.get("/read", headers=headers).json["data"] == {}
    assert replay(app, sid).json["data"] == {"count": 1}  # the cookie, and only the cookie, opens it


# -- cookie name prefixes -------------------------------------------------------------------

HOST_RULE = r'a __Host- cookie needs secure=True, path="/" and no domain'
SECURE_RULE = r"a __Secure- cookie needs secure=True"
# Options (as keywords) that break a prefix's rule, and what the refusal must say.
BROKEN_PREFIXES = [
    ({"cookie_name": "__Host-sid"}, HOST_RULE + r".*got secure='auto' \(a request over plain http"),
    ({"cookie_name": "__Host-sid", "secure": True, "path": "/app"}, HOST_RULE + r".*got path='/app'$"),
    ({"cookie_name": "__Host-sid", "secure": True, "domain": "example.test"}, r"got domain='example.test'$"),
    ({"cookie_name": "__host-sid", "secure": False}, HOST_RULE + r".*got secure=False$"),
    ({"cookie_name": "__Secure-sid"}, SECURE_RULE + r".*got secure='auto'"),
    ({"cookie_name": "__SECURE-sid", "secure": False, "path": "/app"}, SECURE_RULE + r".*got secure=False$"),
]
BROKEN_IDS = ["host-auto", "host-path", "host-domain", "host-lowercase", "secure-auto", "secure-uppercase"]


def as_text(value: Any) -> str:
    """An option as an ini file or a Pyramid/Paste setting writes it."""
    return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize(("options", "message"), BROKEN_PREFIXES, ids=BROKEN_IDS)
def test_a_prefixed_cookie_name_that_breaks_its_rule_is_refused_by_the_middleware(
    options: dict[str, Any], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SessionMiddleware(session_app, secret=SECRET, url=sqlite_url(tmp_path), **options)


@pytest.mark.parametrize(("options", "message"), BROKEN_PREFIXES, ids=BROKEN_IDS)
def test_a_prefixed_cookie_name_that_breaks_its_rule_is_refused_by_pyramid_and_paste(
    options: dict[str, Any], message: str, tmp_path: Path
) -> None:
    settings = {"secret": SECRET, "url": sqlite_url(tmp_path), **options}
    with pytest.raises(ConfigurationError, match=message):
        session_factory_from_settings({f"dbsession.{k}": as_text(v) for k, v in settings.items()})
    with pytest.raises(ConfigurationError, match=message):
        Configurator(settings={f"dbsession.{k}": as_text(v) for k, v in settings.items()}).include(
            "wsgi_dbsession.pyramid"
        )
    with pytest.raises(ConfigurationError, match=message):
        filter_factory({}, **{k: as_text(v) for k, v in settings.items()})(session_app)


@pytest.mark.parametrize(("options", "message"), BROKEN_PREFIXES, ids=BROKEN_IDS)
def test_a_prefixed_cookie_name_that_breaks_its_rule_is_refused_by_flask(
    options: dict[str, Any], message: str, tmp_path: Path
) -> None:
    for name_key in ("DBSESSION_COOKIE_NAME", "SESSION_COOKIE_NAME"):
        app = Flask(__name__)
        app.config.update(SECRET_KEY=SECRET, DBSESSION_URL=sqlite_url(tmp_path))
        app.config.update({f"DBSESSION_{k.upper()}": v for k, v in options.items() if k != "cookie_name"})
        app.config[name_key] = options["cookie_name"]
        with pytest.raises(ConfigurationError, match=message.rstrip("$")):
            DBSession(app)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("__Host-sid", {"secure": True}),
        ("__Secure-sid", {"secure": True, "path": "/", "domain": "example.test"}),
        ("__Secure-sid", {"secure": True, "path": "/app"}),
        ("__Hostile-sid", {}),  # not a prefix: no rule
    ],
)
def test_a_prefixed_cookie_name_that_keeps_its_rule_is_set_with_its_attributes(
    name: str, options: dict[str, Any], tmp_path: Path
) -> None:
    middleware = SessionMiddleware(
        session_app, secret=SECRET, url=sqlite_url(tmp_path), cookie_name=name, **options
    )
    try:
        app = webtest.TestApp(middleware, extra_environ={"wsgi.url_scheme": "https"})
        (header,) = set_cookies(app.get("/incr"))
        assert header.startswith(f"{name}=s%3A")
        assert f"; Path={options.get('path', '/')};" in header
        assert "; secure" in header  # over https, every one of them
        assert ("Domain=" in header) is ("domain" in options)
    finally:
        middleware.close()


def test_flask_session_cookie_name_with_a_host_prefix_works_over_https(tmp_path: Path) -> None:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=SECRET,
        DBSESSION_URL=sqlite_url(tmp_path),
        DBSESSION_CLEANUP_INTERVAL=0,
        DBSESSION_COOKIE_NAME="__Host-sid",
        DBSESSION_SECURE=True,
    )
    DBSession(app)

    @app.get("/incr")
    def incr() -> dict[str, int]:
        from flask import session

        session["n"] = session.get("n", 0) + 1
        return {"n": session["n"]}

    try:
        client = app.test_client()
        response = client.get("/incr", base_url="https://localhost")
        (header,) = response.headers.getlist("Set-Cookie")
        assert header.startswith("__Host-sid=s%3A") and "; Path=/; secure" in header
        assert "Domain" not in header
        assert client.get("/incr", base_url="https://localhost").json == {"n": 2}
    finally:
        app.extensions["dbsession"].close()
