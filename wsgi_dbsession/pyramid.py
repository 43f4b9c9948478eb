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
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pyramid.interfaces import ISession, ISessionFactory
from zope.interface import classImplements, implementer

from .middleware import SessionMiddleware
from .session import Session
from .settings import parse_settings

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment
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
    """Pyramid's session factory, taking SessionMiddleware's keyword options.

    ``close()`` stops the prune job and closes the pool at shutdown; the
    factory is ``registry.getUtility(ISessionFactory)``.
    """

    def __init__(self, **options: Any) -> None:
        # The middleware's request cycle without its WSGI side: Pyramid opens
        # the session through open_session and saves it through save_session.
        self.middleware = SessionMiddleware(_not_wrapped, **options)

    def __repr__(self) -> str:
        return f"<DBSessionFactory {self.middleware.store!r}>"

    def __call__(self, request: Request) -> Session:
        environ = request.environ
        wrapped = environ.get(self.middleware.environ_key)
        if isinstance(wrapped, Session):
            return wrapped  # an enclosing SessionMiddleware opened it and will save it
        session = self.middleware.open_session(environ)
        request.add_response_callback(functools.partial(self._save, session))
        return session

    def _save(self, session: Session, request: Request, response: Response) -> None:
        response.headerlist.extend(self.middleware.save_session(session, request.environ))

    def close(self) -> None:
        """Stop the prune job and close the pool (call it at shutdown)."""
        self.middleware.close()


def _not_wrapped(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    raise TypeError("a DBSessionFactory's middleware wraps no app; wrap yours in a SessionMiddleware")
