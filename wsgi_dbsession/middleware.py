"""WSGI glue: the cookie in, the session into the environ, writes and Set-Cookie out."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .exceptions import SessionError
from .manager import SessionManager
from .session import Session
from .store import SessionStore

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)


class SessionMiddleware:
    """Wrap a WSGI app so every request has a session at ``environ[environ_key]``.

    The keyword options are :class:`~wsgi_dbsession.options.Options`' (only
    ``secret`` is required); see ``docs/configuration.md``.
    """

    def __init__(self, app: WSGIApplication, **options: Any) -> None:
        self.app = app
        self.manager = SessionManager(**options)

    @property
    def store(self) -> SessionStore:
        """The session table's store."""
        return self.manager.store

    def __repr__(self) -> str:
        return f"<SessionMiddleware {self.manager.options.environ_key!r} {self.store!r}>"

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        manager = self.manager
        session = manager.open_session(environ)
        cycle = _Cycle(manager, session, environ, start_response)
        try:
            app_iter = self.app(environ, cycle.start_response)
            streaming = not cycle.called  # a generator app calls start_response on its first item
            if streaming:
                app_iter = _prime(app_iter)
        except SessionError as exc:
            return cycle.error_response(exc)
        except Exception:
            outage = session.load_error
            if outage is None or not manager.options.override_app_errors:
                raise
            log.error("the application failed after the session store was found unreachable", exc_info=True)
            return cycle.error_response(outage)
        if cycle.failure is not None:  # the app caught the error and returned a body anyway
            _close(app_iter)
            return cycle.error_response(cycle.failure)
        if isinstance(app_iter, (list, tuple)):
            # The body is already built: no app code runs from here on, so what
            # changed after start_response is saved now, not when the server closes it.
            if session.loaded:
                manager.save_late(session, environ)
            return app_iter
        return _ClosingIterable(app_iter, lambda: manager.save_late(session, environ))

    def close(self) -> None:
        """Stop the prune job and close the pool (call it at shutdown)."""
        self.manager.close()


class _Cycle:
    """One request's response side: the wrapped start_response and what it learned."""

    __slots__ = ("called", "environ", "failure", "manager", "sent", "server_start_response", "session")

    def __init__(
        self,
        manager: SessionManager,
        session: Session,
        environ: WSGIEnvironment,
        start_response: StartResponse,
    ) -> None:
        self.manager, self.session, self.environ = manager, session, environ
        self.server_start_response = start_response
        self.called = False  # the app called start_response
        self.sent = False  # the server's start_response was called
        # Set once the app's own response must not go out: the session could
        # not be saved, or an outage explains the app's error page.
        self.failure: SessionError | None = None

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
    ) -> Any:
        self.called = True
        session = self.session
        if not session.loaded and session.load_error is None:  # unused: nothing to save, no header to add
            self.sent = True
            return self.server_start_response(status, headers, exc_info)
        manager = self.manager
        if self.failure is None and manager.outage_explains(session, status):
            self.failure = session.load_error
        if self.failure is not None:
            raise self.failure  # again, if the app swallowed it and tries another answer
        try:
            cookies = manager.save_session(session, self.environ)
        except SessionError as exc:
            self.failure = exc
            raise
        if session.loaded:
            headers = cache_headers(headers, set_cookie=bool(cookies))
        self.sent = True
        return self.server_start_response(status, [*headers, *cookies], exc_info)

    def error_response(self, exc: SessionError) -> list[bytes]:
        status, headers, body = self.manager.error_page(exc)
        # exc_info only where headers already went out: then the server must
        # re-raise; before that, passing it makes some servers fail instead.
        handling = sys.exc_info() if self.sent else None
        self.server_start_response(
            status, headers, handling if handling and handling[0] is not None else None
        )
        return [body]


def cache_headers(headers: list[tuple[str, str]], *, set_cookie: bool) -> list[tuple[str, str]]:
    """The app's headers, for a response that depends on the session.

    It varies on ``Cookie`` (merged into an existing ``Vary``); one that sets
    the session cookie is never stored by a shared cache: ``private`` is
    added unless the app said ``private`` or ``no-store`` already.
    """
    result: list[tuple[str, str]] = []
    vary_done = cache_done = False
    for name, value in headers:
        lower = name.lower()
        if lower == "vary":
            tokens = [token.strip().lower() for token in value.split(",")]
            vary_done = True
            if "cookie" not in tokens and "*" not in tokens:
                result.append((name, f"{value}, Cookie"))
                continue
        elif lower == "cache-control" and set_cookie:
            cache_done = True
            result.append((name, _private(value)))
            continue
        result.append((name, value))
    if not vary_done:
        result.append(("Vary", "Cookie"))
    if set_cookie and not cache_done:
        result.append(("Cache-Control", "private"))
    return result


def _private(cache_control: str) -> str:
    directives = [part.strip() for part in cache_control.split(",") if part.strip()]
    names = {part.split("=", 1)[0].lower() for part in directives}
    if "private" in names or "no-store" in names:
        return cache_control
    kept = [part for part in directives if part.split("=", 1)[0].lower() not in ("public", "s-maxage")]
    return ", ".join([*kept, "private"])


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
