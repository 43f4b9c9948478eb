"""The request cycle without its WSGI side: open a session, save it, answer an outage.

:class:`SessionManager` owns the options and the parts built from them
(the store, the cookie, the session factory, the prune job). The WSGI
middleware and the framework adapters (Pyramid, Paste, Flask) are thin
layers over it.
"""

from __future__ import annotations

import logging
import os
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from .cookies import SessionCookie, parse_secrets
from .exceptions import ConcurrentUpdateError, SessionError, StoreUnavailable
from .options import Options
from .prune import PruneScheduler
from .session import CookieUpdate, Session, SessionFactory
from .store import DEFAULT_SQLITE_FILE, SessionStore

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

log = logging.getLogger(__name__)

# Seconds a client is told to wait before retrying an unavailable_status answer:
# an outage (a failover takes seconds), or a session other requests kept writing.
RETRY_AFTER = 5
RETRY_AFTER_CONFLICT = 1

_warned_default_file = False


class SessionManager:
    """Sessions for requests, configured by :class:`~wsgi_dbsession.options.Options` keywords.

    Only ``secret`` is required; with no ``url`` and no ``engine`` the
    sessions live in the SQLite file ``wsgi_dbsession.sqlite`` in the
    working directory (a warning says so once).
    """

    def __init__(self, **options: Any) -> None:
        self.options = opts = Options.from_keywords(options)
        if opts.url is None and opts.engine is None:
            _warn_default_file()
        self.store = SessionStore(**opts.arguments("store"))
        self.cookie = SessionCookie(secrets=parse_secrets(opts.secret), **opts.arguments("cookie"))
        self.factory = SessionFactory(store=self.store, cookie=self.cookie, **opts.arguments("session"))
        self.pruner = PruneScheduler(self.store, **opts.arguments("prune")) if opts.cleanup_interval else None

    def __repr__(self) -> str:
        return f"<SessionManager {self.options.environ_key!r} {self.store!r}>"

    def open_session(self, environ: WSGIEnvironment) -> Session:
        """The request's session, put at ``environ[environ_key]``; nothing is read yet.

        Also starts the prune job in this process on its first request.
        """
        if self.pruner is not None:
            self.pruner.ensure_started()
        session = self.factory.open(environ.get("HTTP_COOKIE"))
        environ[self.options.environ_key] = session
        return session

    def save_session(self, session: Session, environ: WSGIEnvironment) -> list[tuple[str, str]]:
        """Write what the request changed; the ``Set-Cookie`` headers the response must carry.

        Call it before the response headers are sent. Raises a
        :class:`SessionError` when the session cannot be saved.
        """
        if not session.loaded:
            return []
        secure = self.secure(environ)
        return self.cookie_headers(session.save(secure=secure), secure)

    def save_late(self, session: Session, environ: WSGIEnvironment) -> None:
        """Write changes made after the headers went out (a write needs no new cookie); never raises."""
        try:
            session.save(secure=self.secure(environ), headers_sent=True)
        except Exception:
            log.exception(
                "a session change made after the response started was not saved (the client already "
                "has its answer); change the session before start_response (in a generator body: "
                "before its first yield), where a failed save is an error page instead"
            )

    def secure(self, environ: WSGIEnvironment) -> bool:
        """Whether this request's cookie carries the Secure flag."""
        return self.cookie.is_secure(environ.get("wsgi.url_scheme", "http"))

    def cookie_headers(self, update: CookieUpdate | None, secure: bool) -> list[tuple[str, str]]:
        """The ``Set-Cookie`` headers that carry out a session's cookie update (``secure``: with the flag)."""
        if update is None:
            return []
        if update.sid is None:
            return [self.cookie.expire_header(secure=secure)]
        return [self.cookie.set_header(update.sid, update.max_age, secure=secure)]

    def outage_explains(self, session: Session, status: str) -> bool:
        """Whether the app's 5xx answer is better told as the session store's outage."""
        return self.options.override_app_errors and session.load_error is not None and status.startswith("5")

    def error_page(self, exc: SessionError) -> tuple[str, list[tuple[str, str]], bytes]:
        """Status, headers and body for a request whose session could not be loaded or saved."""
        retry_after = None
        if isinstance(exc, StoreUnavailable):
            status, text = (
                self.options.unavailable_status,
                "The session store is unavailable; try again shortly.\n",
            )
            retry_after = RETRY_AFTER_CONFLICT if isinstance(exc, ConcurrentUpdateError) else RETRY_AFTER
        else:
            status, text = 500, "The session could not be saved.\n"
        log.error("session error, answering %d", status, exc_info=exc)
        body = text.encode()
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ]
        if retry_after is not None:
            headers.append(("Retry-After", str(retry_after)))
        return f"{status} {_reason(status)}", headers, body

    def close(self) -> None:
        """Stop the prune job and close the pool (call it at shutdown)."""
        if self.pruner is not None:
            self.pruner.shutdown()
        self.store.dispose()


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _warn_default_file() -> None:
    global _warned_default_file  # noqa: PLW0603 - once per process
    if not _warned_default_file:
        _warned_default_file = True
        log.warning(
            "no url or engine given: sessions are stored in the SQLite file %s",
            os.path.abspath(DEFAULT_SQLITE_FILE),
        )
