"""Habits of the libraries users migrate from (docs/migrating.md), through real WSGI requests."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import webtest

from wsgi_dbsession import SessionMiddleware

MakeApp = Callable[..., tuple[webtest.TestApp, SessionMiddleware]]


def beaker_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """A Beaker app's views, unchanged but for ``environ_key = beaker.session``."""
    session = environ["beaker.session"]
    if environ["PATH_INFO"] == "/login":
        session["user"] = "ann"
        session.persist()
    elif environ["PATH_INFO"] == "/logout":
        session.delete()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"user": session.get("user")}).encode()]


def test_beaker_s_persist_saves_and_delete_logs_out(make_app: MakeApp) -> None:
    app, middleware = make_app(beaker_app, environ_key="beaker.session")
    login = app.get("/login")
    assert login.json == {"user": "ann"}
    (cookie,) = login.headers.getall("Set-Cookie")
    assert middleware.store.count() == 1
    assert app.get("/").json == {"user": "ann"}

    logout = app.get("/logout")
    assert logout.json == {"user": None}
    assert (
        "Expires=Thu, 01 Jan 1970" in logout.headers["Set-Cookie"]
        or "Max-Age=0" in logout.headers["Set-Cookie"]
    )
    assert middleware.store.count() == 0
    assert cookie and app.get("/").json == {"user": None}
