"""Pyramid through ``config.include("wsgi_dbsession.pyramid")``, on every live database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import webtest
from pyramid.config import Configurator
from pyramid.csrf import get_csrf_token, new_csrf_token
from pyramid.interfaces import ISession, ISessionFactory
from pyramid.request import Request
from zope.interface.verify import verifyObject

from conftest import SECRET, StatementLog, checked_out, drop_table
from tests.webtest_helpers import set_cookies, sid_in
from wsgi_dbsession import ConfigurationError, SerializationError, Session, SessionMiddleware
from wsgi_dbsession.pyramid import DBSessionFactory


def state(request: Request) -> dict[str, Any]:
    return {"user": request.session.get("user"), "csrf": get_csrf_token(request)}


def login(request: Request) -> dict[str, Any]:
    request.session.regenerate()
    request.session["user"] = request.POST["user"]
    return {"user": request.session["user"], "csrf": new_csrf_token(request)}


def logout(request: Request) -> dict[str, Any]:
    request.session.invalidate()
    return {}


def incr(request: Request) -> dict[str, Any]:
    request.session["count"] = request.session.get("count", 0) + 1
    return {"count": request.session["count"]}


def plain(request: Request) -> dict[str, Any]:
    return {}


def unsavable(request: Request) -> dict[str, Any]:
    request.session["when"] = object()
    return {"saved": True}


def build(settings: dict[str, str], sessions: list[Any] | None = None) -> Any:
    """A Pyramid app with CSRF required on POST; ``/seen`` adds its session to ``sessions``."""

    def seen(request: Request) -> dict[str, Any]:
        assert sessions is not None
        sessions.append(request.session)
        sessions.append(request.environ.get("dbsession"))
        return {}

    with Configurator(settings=settings) as config:
        config.include("wsgi_dbsession.pyramid")
        config.set_default_csrf_options(require_csrf=True)
        for view in [state, login, logout, incr, plain, unsavable, seen]:
            name = view.__name__
            config.add_route(name, f"/{name}")
            config.add_view(view, route_name=name, renderer="json")
        return config.make_wsgi_app()


@pytest.fixture
def make_pyramid(
    db_url: str, table_name: str
) -> Iterator[Callable[..., tuple[webtest.TestApp, DBSessionFactory]]]:
    """Pyramid apps configured by string settings, as an ini file gives them."""
    factories: list[DBSessionFactory] = []

    def make(sessions: list[Any] | None = None, **extra: str) -> tuple[webtest.TestApp, DBSessionFactory]:
        settings = {
            "dbsession.secret": SECRET,
            "dbsession.url": db_url,
            "dbsession.table_name": table_name,
            "dbsession.cleanup_interval": "0",
            **{f"dbsession.{key}": value for key, value in extra.items()},
        }
        router = build(settings, sessions)
        factory = router.registry.getUtility(ISessionFactory)
        factories.append(factory)
        return webtest.TestApp(router), factory

    yield make
    for factory in factories:
        store = factory.manager.store
        drop_table(store.engine, store.table)
        assert checked_out(store) == 0, "a connection was left checked out"
        factory.close()


def test_login_regenerates_the_id_and_logout_ends_the_session(make_pyramid: Any) -> None:
    app, factory = make_pyramid()
    store = factory.manager.store
    anonymous = app.get("/state")
    before = sid_in(anonymous)
    token = anonymous.json["csrf"]
    assert store.get(before) is not None  # the CSRF token made the session worth storing

    logged_in = app.post("/login", {"user": "alice", "csrf_token": token})
    after = sid_in(logged_in)
    assert after != before
    assert store.get(before) is None, "the pre-login id must be worthless"
    assert store.get(after)["user"] == "alice"
    assert app.get("/state").json["user"] == "alice"

    planted = webtest.TestApp(app.app)
    planted.set_cookie("connect.sid", anonymous.headers["Set-Cookie"].split(";")[0].split("=", 1)[1])
    assert planted.get("/state").json["user"] is None

    logged_out = app.post("/logout", {"csrf_token": logged_in.json["csrf"]})
    (expired,) = set_cookies(logged_out)
    assert "Max-Age=0" in expired
    assert store.get(after) is None
    assert app.get("/state").json["user"] is None


def test_post_needs_the_session_csrf_token(make_pyramid: Any) -> None:
    app, factory = make_pyramid()
    token = app.get("/state").json["csrf"]
    app.post("/incr", status=400)
    app.post("/incr", {"csrf_token": "0" * len(token)}, status=400)
    assert app.post("/incr", {"csrf_token": token}).json == {"count": 1}
    assert app.post("/incr", headers={"X-CSRF-Token": token}).json == {"count": 2}
    assert factory.manager.store.count() == 1


def test_request_session_provides_isession(make_pyramid: Any) -> None:
    sessions: list[Any] = []
    app, _ = make_pyramid(sessions=sessions)
    app.get("/seen")
    session, in_environ = sessions
    assert isinstance(session, Session)
    assert verifyObject(ISession, session)
    assert session is in_environ


def test_unused_session_costs_nothing(make_pyramid: Any) -> None:
    app, factory = make_pyramid()
    app.post("/incr", status=400)  # reads the session to look for a token; nothing to store
    log = StatementLog(factory.manager.store)
    response = app.get("/plain")
    assert len(log) == 0
    assert set_cookies(response) == []


def test_a_session_that_cannot_be_saved_fails_the_response(make_pyramid: Any) -> None:
    app, factory = make_pyramid()
    with pytest.raises(SerializationError, match="'when'"):
        app.get("/unsavable")  # the error leaves Pyramid: the server answers 500, not the view's page
    assert factory.manager.store.count() == 0


def test_an_app_wrapped_by_the_middleware_uses_its_session(make_pyramid: Any, table_name: str) -> None:
    sessions: list[Any] = []
    app, factory = make_pyramid(sessions=sessions)
    store = factory.manager.store
    middleware = SessionMiddleware(
        app.app, secret=SECRET, engine=store.engine, table_name=table_name, cleanup_interval=0
    )
    middleware.store.create_table()
    wrapped = webtest.TestApp(middleware)
    wrapped.get("/seen")
    session, in_environ = sessions
    assert session is in_environ
    log = StatementLog(middleware.store)
    response = wrapped.get("/state")
    # One owner saves it: a single write and a single cookie, not one each.
    assert len(log) == 1, log.statements
    assert len(set_cookies(response)) == 1
    assert wrapped.post("/incr", headers={"X-CSRF-Token": response.json["csrf"]}).json == {"count": 1}
    assert store.get(sid_in(response))["count"] == 1


def test_string_settings_shape_the_cookie(make_pyramid: Any) -> None:
    app, _ = make_pyramid(
        cookie_name="app.sid",
        max_age="120",
        secure="true",
        httponly="off",
        samesite="Strict",
        path="/",
    )
    (header,) = set_cookies(app.get("/state"))
    attributes = {part.strip().split("=")[0].lower(): part for part in header.split(";")}
    assert header.startswith("app.sid=s%3A")
    assert "Max-Age=120" in header
    assert "secure" in attributes
    assert "httponly" not in attributes
    assert attributes["samesite"].strip().lower() == "samesite=strict"


def test_a_misspelt_or_malformed_setting_is_an_error_at_startup() -> None:
    with pytest.raises(ConfigurationError, match=r"did you mean dbsession\.max_age"):
        build({"dbsession.secret": SECRET, "dbsession.maxage": "60"})
    with pytest.raises(ConfigurationError, match=r"dbsession\.max_age = 'soon'"):
        build({"dbsession.secret": SECRET, "dbsession.max_age": "soon"})
