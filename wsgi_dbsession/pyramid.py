"""Pyramid integration: ``config.include("wsgi_dbsession.pyramid")``.

Reads the ``dbsession.*`` settings (every option of SessionMiddleware, as
strings: ``dbsession.secret``, ``dbsession.url``, ``dbsession.max_age =
3600``, ``dbsession.secure = auto``, …) and installs a session factory, so
``request.session`` is this package's :class:`~wsgi_dbsession.session.Session`,
a Pyramid ``ISession``. Pyramid's default CSRF storage keeps its token in it.

The session is opened on the first use of ``request.session`` and saved by
a response callback, before the response leaves Pyramid. When the app is
also wrapped by a SessionMiddleware with the same ``environ_key``,
``request.session`` is that middleware's session (the very same object) and
the middleware saves it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pyramid.interfaces import ISession, ISessionFactory
from zope.interface import classImplements, implementer

from .manager import SessionManager
from .middleware import cache_headers
from .session import Session
from .settings import parse_settings

if TYPE_CHECKING:
    from pyramid.config import Configurator
    from pyramid.request import Request
    from pyramid.response import Response

SETTINGS_PREFIX = "dbsession."

# Declared here rather than in session.py so the core does not need zope.
classImplements(Session, ISession)


def includeme(config: Configurator) -> None:
    """Install the session factory configured by the ``dbsession.*`` settings."""
    config.set_session_factory(session_factory_from_settings(config.get_settings()))


def session_factory_from_settings(settings: Mapping[str, Any]) -> DBSessionFactory:
    """A session factory from Pyramid settings; only the ``dbsession.*`` ones are read."""
    return DBSessionFactory(**parse_settings(settings, SETTINGS_PREFIX))


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
        cookies = self.manager.save_session(session, request.environ)
        response.headerlist[:] = cache_headers(response.headerlist, set_cookie=bool(cookies))
        response.headerlist.extend(cookies)

    def close(self) -> None:
        """Stop the prune job and close the pool (call it at shutdown)."""
        self.manager.close()
