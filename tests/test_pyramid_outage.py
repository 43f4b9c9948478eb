"""Pyramid apps answer a database outage with ``unavailable_status`` and ``Retry-After`` (issue 23, item 4).

Through ``config.include("wsgi_dbsession.pyramid")`` alone: when a view
loads the session (the tween), and when the response callback saves it (the
callback turns the response into the error page); an exception view the app
registers for the outage still answers first. The outage is real: a TCP
proxy between the store and PostgreSQL or MariaDB is cut.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import webtest
from pyramid.config import Configurator
from pyramid.interfaces import ISessionFactory
from pyramid.request import Request
from pyramid.response import Response

from conftest import SECRET, drop_table
from tests.tcp_proxy import TCPProxy
from wsgi_dbsession import StoreUnavailable
from wsgi_dbsession.pyramid import DBSessionFactory

pytestmark = pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)

UNAVAILABLE = "The session store is unavailable; try again shortly.\n"


def read(request: Request) -> dict[str, Any]:
    return {"n": request.session.get("n")}


def write(request: Request) -> dict[str, Any]:
    request.session["n"] = 1
    return {"saved": True}


def own_outage_page(exc: StoreUnavailable, request: Request) -> Response:
    response = Response("come back soon", status=503)
    response.headers["Retry-After"] = "30"
    return response


@pytest.fixture
def make_app(db_url: str, table_name: str) -> Iterator[Callable[..., tuple[webtest.TestApp, TCPProxy]]]:
    built: list[tuple[DBSessionFactory, TCPProxy]] = []

    def make(*, own_view: bool = False) -> tuple[webtest.TestApp, TCPProxy]:
        proxy = TCPProxy.for_url(db_url).__enter__()
        settings = {
            "dbsession.secret": SECRET,
            "dbsession.url": str(proxy.route(db_url).render_as_string(hide_password=False)),
            "dbsession.table_name": table_name,
            "dbsession.cleanup_interval": "0",
        }
        with Configurator(settings=settings) as config:
            config.include("wsgi_dbsession.pyramid")
            for view in (read, write):
                config.add_route(view.__name__, f"/{view.__name__}")
                config.add_view(view, route_name=view.__name__, renderer="json")
            if own_view:
                config.add_exception_view(own_outage_page, context=StoreUnavailable)
            router = config.make_wsgi_app()
        built.append((router.registry.getUtility(ISessionFactory), proxy))
        return webtest.TestApp(router), proxy

    yield make
    for factory, proxy in built:
        proxy.restore()
        store = factory.manager.store
        store.engine.dispose()
        drop_table(store.engine, store.table)
        factory.close()
        proxy.close()


def test_an_outage_when_a_view_loads_the_session_is_unavailable_with_retry_after(
    make_app: Callable[..., tuple[webtest.TestApp, TCPProxy]],
) -> None:
    app, proxy = make_app()
    app.get("/write")  # a returning visitor: the next request loads the row
    proxy.cut()
    response = app.get("/read", expect_errors=True)
    assert (response.status_int, response.text) == (503, UNAVAILABLE)
    assert response.headers["Retry-After"] == "5"
    proxy.restore()
    assert app.get("/read").json == {"n": 1}, "works again without a restart"


def test_an_outage_when_the_callback_saves_the_session_is_unavailable_with_retry_after(
    make_app: Callable[..., tuple[webtest.TestApp, TCPProxy]],
) -> None:
    app, proxy = make_app()
    proxy.cut()
    response = app.get("/write", expect_errors=True)  # a new visitor: nothing to load, the save fails
    assert (response.status_int, response.text) == (503, UNAVAILABLE)
    assert response.headers["Retry-After"] == "5"
    assert "Set-Cookie" not in response.headers
    assert response.headers["Content-Type"].startswith("text/plain")


def test_an_exception_view_of_the_app_answers_the_outage_its_own_way(
    make_app: Callable[..., tuple[webtest.TestApp, TCPProxy]],
) -> None:
    app, proxy = make_app(own_view=True)
    app.get("/write")
    proxy.cut()
    response = app.get("/read", expect_errors=True)
    assert (response.status_int, response.text, response.headers["Retry-After"]) == (
        503,
        "come back soon",
        "30",
    )
