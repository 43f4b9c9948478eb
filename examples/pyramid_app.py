"""A Pyramid app whose ``request.session`` lives in the database.

``config.include("wsgi_dbsession.pyramid")`` reads the ``dbsession.*``
settings and installs the session factory; login is Pyramid's
SessionAuthenticationHelper, CSRF is Pyramid's own (the token is kept in the
session), required on every POST.

Run it on its own (settings from the environment, SQLite by default)::

    python examples/pyramid_app.py [--port 6543]

or from its ini file, as Pyramid projects do; the ini file keeps neither
the secret nor (for pserve) the port, so each command gives them::

    export SECRET=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')
    PYTHONPATH=examples pserve examples/pyramid.ini session_secret=$SECRET http_port=6543
    gunicorn -c examples/gunicorn.conf.py --paste examples/pyramid.ini --paste-global session_secret=$SECRET
"""

from __future__ import annotations

import os
from typing import Any

from example import render_page, secret_from_env, serve
from pyramid.authentication import SessionAuthenticationHelper
from pyramid.config import Configurator
from pyramid.csrf import get_csrf_token, new_csrf_token
from pyramid.httpexceptions import HTTPSeeOther
from pyramid.interfaces import ISessionFactory
from pyramid.request import Request
from pyramid.response import Response
from pyramid.security import forget, remember


class SecurityPolicy:
    """Who is logged in is a session key (Pyramid's SessionAuthenticationHelper)."""

    def __init__(self) -> None:
        self.helper = SessionAuthenticationHelper()

    def identity(self, request: Request) -> str | None:
        return self.authenticated_userid(request)

    def authenticated_userid(self, request: Request) -> str | None:
        userid = self.helper.authenticated_userid(request)
        return userid if isinstance(userid, str) else None

    def permits(self, request: Request, context: Any, permission: str) -> bool:
        return True

    def remember(self, request: Request, userid: str, **kw: Any) -> list[tuple[str, str]]:
        return list(self.helper.remember(request, userid, **kw))

    def forget(self, request: Request, **kw: Any) -> list[tuple[str, str]]:
        return list(self.helper.forget(request, **kw))


def home(request: Request) -> Response:
    session = request.session
    session["visits"] = session.get("visits", 0) + 1
    page = render_page(session["visits"], request.authenticated_userid, get_csrf_token(request))
    return Response(page, content_type="text/html")


def login(request: Request) -> HTTPSeeOther:
    # Pyramid has already checked the CSRF token (require_csrf below).
    user = request.POST.get("user", "")[:64]
    if not user:
        return HTTPSeeOther("/")
    request.session.regenerate()  # a new session id at every change of privilege
    headers = remember(request, user)
    new_csrf_token(request)
    return HTTPSeeOther("/", headers=headers)


def logout(request: Request) -> HTTPSeeOther:
    headers = forget(request)
    request.session.invalidate()  # the row is deleted and the cookie expired
    return HTTPSeeOther("/", headers=headers)


def main(global_config: dict[str, str] | None = None, **settings: Any) -> Any:
    """Pyramid's app factory: what pserve and ``gunicorn --paste`` call with the ini's settings."""
    with Configurator(settings=settings) as config:
        config.include("wsgi_dbsession.pyramid")
        config.set_security_policy(SecurityPolicy())
        config.set_default_csrf_options(require_csrf=True)
        config.add_route("home", "/")
        config.add_route("login", "/login")
        config.add_route("logout", "/logout")
        config.add_view(home, route_name="home", request_method="GET")
        config.add_view(login, route_name="login", request_method="POST")
        config.add_view(logout, route_name="logout", request_method="POST")
        return config.make_wsgi_app()


if __name__ == "__main__":
    settings = {"dbsession.secret": secret_from_env(), "dbsession.url": os.environ.get("WSGI_DBSESSION_URL")}
    router = main(**settings)
    serve(router, __doc__.splitlines()[0], router.registry.getUtility(ISessionFactory).close, port=6543)
