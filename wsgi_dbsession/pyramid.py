"""Pyramid integration: ``config.include("wsgi_dbsession.pyramid")``.

Reads the ``dbsession.*`` settings (every option of SessionMiddleware, as
strings: ``dbsession.secret``, ``dbsession.url``, ``dbsession.max_age =
3600``, ``dbsession.secure = auto``, …) and installs a session factory, so
``request.session`` is this package's :class:`~wsgi_dbsession.session.Session`,
a Pyramid ``ISession``. Pyramid's default CSRF storage keeps its token in it.

The session is opened on the first use of ``request.session`` and saved by
a response callback, before the response leaves Pyramid. A database outage
(:class:`~wsgi_dbsession.exceptions.StoreUnavailable`) is answered with
``unavailable_status`` and ``Retry-After``: when a view loads the session,
by a tween over Pyramid's exception views (so an exception view the app
registers for it answers first, its own way); when the response callback
saves it, by that callback, which turns the response into the error page
(no exception view sees an error raised there). When the app is
also wrapped by a SessionMiddleware with the same ``environ_key``,
``request.session`` is that middleware's session (the very same object) and
the middleware saves it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pyramid.interfaces import ISession, ISessionFactory
from pyramid.response import Response
from pyramid.tweens import EXCVIEW
from zope.interface import classImplements, implementer

from .exceptions import ConfigurationError, StoreUnavailable
from .manager import SessionManager
from .middleware import cache_headers
from .session import Session
from .settings import parse_settings, setting_message

if TYPE_CHECKING:
    from pyramid.config import Configurator
    from pyramid.registry import Registry
    from pyramid.request import Request

SETTINGS_PREFIX = "dbsession."

# Declared here rather than in session.py so the core does not need zope.
classImplements(Session, ISession)


def includeme(config: Configurator) -> None:
    """Install the session factory configured by the ``dbsession.*`` settings, and the outage tween."""
    config.set_session_factory(session_factory_from_settings(config.get_settings()))
    config.add_tween("wsgi_dbsession.pyramid.outage_tween_factory", over=EXCVIEW)


def outage_tween_factory(handler: Callable[[Request], Response], registry: Registry) -> Callable[..., Any]:
    """A tween answering an outage no exception view of the app answered with ``unavailable_status``."""

    def outage_tween(request: Request) -> Response:
        try:
            return handler(request)
        except StoreUnavailable as exc:
            factory = registry.queryUtility(ISessionFactory)
            if not isinstance(factory, DBSessionFactory):
                raise
            return _error_response(factory.manager, exc)

    return outage_tween


def _error_response(manager: SessionManager, exc: StoreUnavailable) -> Response:
    status, headers, body = manager.error_page(exc)
    return Response(status=status, headerlist=headers, body=body)


def session_factory_from_settings(settings: Mapping[str, Any]) -> DBSessionFactory:
    """A session factory from Pyramid settings; only the ``dbsession.*`` ones are read."""
    options = parse_settings(settings, SETTINGS_PREFIX)
    try:
        return DBSessionFactory(**options)
    except ConfigurationError as exc:  # named as the app's settings name it
        raise ConfigurationError(setting_message(str(exc), SETTINGS_PREFIX)) from None


@implementer(ISessionFactory)
class DBSessionFactory:
    """Pyramid's session factory, taking the keyword options of :class:`~wsgi_dbsession.options.Options`.

    ``close()`` stops the prune job and closes the pool at shutdown; the
    factory is ``registry.getUtility(ISessionFactory)``.
    """

    def __init__(self, **options: Any) -> None:
        self.manager = SessionManager(**options)

    def __repr__(self) -> str:
        return f"<DBSessionFactory {self.manager.store!r}>"

    def __call__(self, request: Request) -> Session:
        environ = request.environ
        wrapped = environ.get(self.manager.options.environ_key)
        if isinstance(wrapped, Session):
            return wrapped  # an enclosing SessionMiddleware opened it and will save it
        session = self.manager.open_session(environ)
        request.add_response_callback(functools.partial(self._save, session))
        return session

    def _save(self, session: Session, request: Request, response: Response) -> None:
        try:
            cookies = self.manager.save_session(session, request.environ)
        except StoreUnavailable as exc:
            # Too late for a tween or an exception view: the response becomes the error page.
            page = _error_response(self.manager, exc)
            response.status = page.status
            response.headerlist[:] = page.headerlist
            response.app_iter = page.app_iter
            return
        response.headerlist[:] = cache_headers(response.headerlist, set_cookie=bool(cookies))
        response.headerlist.extend(cookies)

    def close(self) -> None:
        """Stop the prune job and close the pool (call it at shutdown)."""
        self.manager.close()
