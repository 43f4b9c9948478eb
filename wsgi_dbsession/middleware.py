"""WSGI glue: the cookie in, the session into the environ, writes and Set-Cookie out."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import URL, Engine

from .cleanup import PruneScheduler
from .cookies import SameSite, Secure, SessionCookie, parse_secrets
from .exceptions import ConfigurationError, SessionError, StoreUnavailable
from .session import CookieUpdate, Session, SessionFactory
from .store import PRUNE_BATCH_SIZE, Serializer, SessionStore

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)


class SessionMiddleware:
    """Wrap a WSGI app so every request has a session at ``environ[environ_key]``.

    Only ``secret`` is required; with no ``url`` and no ``engine`` the
    sessions live in the SQLite file ``wsgi_dbsession.sqlite`` in the
    working directory.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        secret: str | Sequence[str] | None = None,  # required: >= 32 chars each; the first signs, all verify
        url: str | URL | None = None,  # SQLAlchemy URL of the session database
        engine: Engine | None = None,  # or an Engine you built (then url must be None)
        environ_key: str = "dbsession",  # where the session is put in the WSGI environ
        cookie_name: str = "connect.sid",  # express-session's default name
        max_age: int | None = 86400,  # seconds a session lives; None: browser-session cookie
        rolling: bool = False,  # extend the expiry on every request, not only on writes
        touch_after: int = 60,  # seconds; with rolling, at most one expiry update per this interval
        secure: Secure = "auto",  # Secure flag: True, False, or "auto" (when wsgi.url_scheme is https)
        httponly: bool = True,  # HttpOnly flag: the cookie is hidden from JavaScript
        samesite: SameSite | None = "lax",  # SameSite attribute; None leaves it out
        domain: str | None = None,  # Domain attribute; None: the host that answered
        path: str = "/",  # Path attribute
        table_name: str = "sessions",  # may be "schema.table"
        sid_column: str = "sid",  # name of the session id column
        schema: str | None = None,  # schema of the table, where the database has schemas
        create_table: bool = True,  # create the table and its index on first use when missing
        cleanup_interval: float = 60,  # seconds between prunes of expired rows; 0 disables
        cleanup_batch_size: int = PRUNE_BATCH_SIZE,  # rows per delete statement of a prune
        serializer: Serializer | None = None,  # dumps/loads to and from JSON text; default json
        max_size: int | None = None,  # bytes; a larger serialized session is an error
        unavailable_status: int = 503,  # HTTP status when the session database is unreachable
        override_app_errors: bool = True,  # after an outage hit the session load, unavailable_status
        # replaces the app's own 5xx answer or exception (a framework's error page)
    ) -> None:
        if cleanup_interval < 0:
            raise ConfigurationError("cleanup_interval must be 0 (disabled) or a number of seconds")
        if samesite is not None and samesite not in ("lax", "strict", "none"):
            raise ConfigurationError('samesite must be "lax", "strict", "none" or None')
        if secure not in (True, False, "auto"):
            raise ConfigurationError('secure must be True, False or "auto"')
        self.app = app
        self.environ_key = environ_key
        self.unavailable_status = unavailable_status
        self.override_app_errors = override_app_errors
        self.store = SessionStore(
            url=url,
            engine=engine,
            table_name=table_name,
            sid_column=sid_column,
            schema=schema,
            create_table=create_table,
            serializer=serializer,
        )
        self.cookie = SessionCookie(
            name=cookie_name,
            secrets=parse_secrets(secret),
            path=path,
            domain=domain,
            secure=secure,
            httponly=httponly,
            samesite=samesite,
        )
        self.factory = SessionFactory(
            store=self.store,
            cookie=self.cookie,
            max_age=max_age,
            rolling=rolling,
            touch_after=touch_after,
            max_size=max_size,
        )
        self.cleanup = (
            PruneScheduler(self.store, interval=cleanup_interval, batch_size=cleanup_batch_size)
            if cleanup_interval
            else None
        )

    def __repr__(self) -> str:
        return f"<SessionMiddleware {self.environ_key!r} {self.store!r}>"

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        session = self.open_session(environ)
        started = False
        # Set once the app's own response must not go out: the session could
        # not be saved, or an outage explains the app's error page.
        failure: SessionError | None = None

        def session_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
        ) -> Any:
            nonlocal started, failure
            started = True  # not a generator app: its body is built, nothing to prime
            if failure is None and self._outage_explains(session, status):
                failure = session.load_error
            if failure is not None:
                raise failure  # again, if the app swallowed it and tries another answer
            try:
                cookies = self.save_session(session, environ)
            except SessionError as exc:
                failure = exc
                raise
            return start_response(status, [*headers, *cookies], exc_info)

        try:
            app_iter = self.app(environ, session_start_response)
            streaming = not started  # a generator app calls start_response on its first item
            if streaming:
                app_iter = _prime(app_iter)
        except SessionError as exc:
            return self.error_response(exc, start_response)
        except Exception:
            outage = session.load_error
            if outage is None or not self.override_app_errors:
                raise
            log.error("the application failed after the session store was found unreachable", exc_info=True)
            return self.error_response(outage, start_response)
        if failure is not None:  # the app caught the error and returned a body anyway
            _close(app_iter)
            return self.error_response(failure, start_response)
        if not session.loaded and not streaming:
            return app_iter  # the body is already computed: the session can no longer change
        return _ClosingIterable(app_iter, lambda: self._save_late(session, environ))

    def open_session(self, environ: WSGIEnvironment) -> Session:
        """The request's session, put at ``environ[environ_key]``; nothing is read yet.

        Also starts the prune job in this process on its first request. With
        :meth:`save_session`, this is the middleware's whole request cycle,
        for frameworks that hook into a request rather than wrap an app.
        """
        if self.cleanup is not None:
            self.cleanup.ensure_started()
        session = self.factory.open(environ.get("HTTP_COOKIE"))
        environ[self.environ_key] = session
        return session

    def save_session(self, session: Session, environ: WSGIEnvironment) -> list[tuple[str, str]]:
        """Write what the request changed; the ``Set-Cookie`` headers the response must carry.

        Call it before the response headers are sent. Raises a
        :class:`SessionError` when the session cannot be saved.
        """
        if not session.loaded:
            return []
        return self.cookie_headers(session.save(secure=self._secure(environ)), environ)

    def _outage_explains(self, session: Session, status: str) -> bool:
        return self.override_app_errors and session.load_error is not None and status.startswith("5")

    def _secure(self, environ: WSGIEnvironment) -> bool:
        return self.cookie.is_secure(environ.get("wsgi.url_scheme", "http"))

    def cookie_headers(self, update: CookieUpdate | None, environ: WSGIEnvironment) -> list[tuple[str, str]]:
        """The ``Set-Cookie`` headers that carry out a session's cookie update."""
        if update is None:
            return []
        secure = self._secure(environ)
        if update.sid is None:
            return [self.cookie.expire_header(secure=secure)]
        return [self.cookie.set_header(update.sid, update.max_age, secure=secure)]

    def _save_late(self, session: Session, environ: WSGIEnvironment) -> None:
        # Changes made while the body was produced: the headers are gone, so
        # a write is still possible but a new cookie is not.
        try:
            session.save(secure=self._secure(environ), headers_sent=True)
        except Exception:
            log.exception("a session change made after the response started could not be saved")

    def error_response(self, exc: SessionError, start_response: StartResponse) -> list[bytes]:
        """The response for a request whose session could not be loaded or saved."""
        if isinstance(exc, StoreUnavailable):
            status, text = self.unavailable_status, "The session store is unavailable; try again shortly.\n"
        else:
            status, text = 500, "The session could not be saved.\n"
        log.error("session error, answering %d", status, exc_info=exc)
        body = text.encode()
        handling = sys.exc_info()
        start_response(
            f"{status} {_REASONS.get(status, 'Error')}",
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
            handling if handling[0] is not None else None,
        )
        return [body]

    def close(self) -> None:
        """Stop the prune job and close the pool (call it at shutdown)."""
        if self.cleanup is not None:
            self.cleanup.shutdown()
        self.store.dispose()


_REASONS = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _prime(app_iter: Iterable[bytes]) -> Iterable[bytes]:
    """Pull the first item now, so start_response (and the session write) happens here."""
    iterator = iter(app_iter)
    try:
        first = next(iterator)
    except StopIteration:
        _close(app_iter)
        return []
    except BaseException:
        _close(app_iter)
        raise
    return _Chained(first, iterator, app_iter)


class _Chained:
    __slots__ = ("_first", "_rest", "_source")

    def __init__(self, first: bytes, rest: Iterator[bytes], source: Iterable[bytes]) -> None:
        self._first, self._rest, self._source = first, rest, source

    def __iter__(self) -> Iterator[bytes]:
        yield self._first
        yield from self._rest

    def close(self) -> None:
        _close(self._source)


class _ClosingIterable:
    """The app's body, with the session saved once more when the server closes it."""

    __slots__ = ("_app_iter", "_on_close")

    def __init__(self, app_iter: Iterable[bytes], on_close: Callable[[], None]) -> None:
        self._app_iter, self._on_close = app_iter, on_close

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._app_iter)

    def close(self) -> None:
        try:
            _close(self._app_iter)
        finally:
            self._on_close()


def _close(app_iter: Iterable[bytes]) -> None:
    close = getattr(app_iter, "close", None)
    if close is not None:
        close()
