"""Django: ``SESSION_ENGINE = "wsgi_dbsession.django"``, and a middleware that shares logins.

The engine is a :class:`django.contrib.sessions.backends.base.SessionBase`
over this package's table, so ``request.session`` keeps Django's API
(``cycle_key()``, ``flush()``, ``set_expiry()``, ``get_expiry_age()``,
``SESSION_SAVE_EVERY_REQUEST``, ``clearsessions`` …) and gains the
package's: a row in express-session's shape, nested changes saved without
``modified = True``, a compare-and-set save merged key by key with a
concurrent request's, and the prune job (one process at a time).

Configuration is one Django setting, ``DBSESSION = {...}``, whose keys are
the package's option names (``url``, ``table_name``, ``user_key`` …), read by
:func:`wsgi_dbsession.settings.parse_settings`; ``secret`` defaults to
``SECRET_KEY`` followed by ``SECRET_KEY_FALLBACKS``. One
:class:`~wsgi_dbsession.manager.SessionManager` per process is built from it
on first use (:func:`get_manager`), and built again when a test overrides
one of those settings.

Lifetimes are Django's: ``SESSION_COOKIE_AGE``,
``SESSION_EXPIRE_AT_BROWSER_CLOSE`` and ``set_expiry()`` decide the row's
expiry. With Django's own ``SessionMiddleware`` the cookie is Django's
(``sessionid``, the bare session key); with :class:`SessionMiddleware` of
this module it is the package's signed cookie, and a Flask, Pyramid,
plain-WSGI or Express app on the same table shares the login. See
docs/django.md.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase, UpdateError
from django.contrib.sessions.exceptions import SessionInterrupted
from django.core.signals import setting_changed
from django.http import HttpRequest, HttpResponse
from django.utils.cache import patch_cache_control, patch_vary_headers
from django.utils.deprecation import MiddlewareMixin

from . import express
from .cookies import encode_value, generate_sid, sign
from .exceptions import SerializationError, SessionTooLarge
from .manager import SessionManager
from .prune import prune_once
from .saving import KeyChanges, explain
from .settings import parse_settings
from .store import SessionStore as Store
from .store import utcnow

log = logging.getLogger(__name__)

SETTING = "DBSESSION"
# Settings the manager is built from: a test that overrides one gets a new manager.
_MANAGER_SETTINGS = frozenset((SETTING, "SECRET_KEY", "SECRET_KEY_FALLBACKS"))

_lock = threading.Lock()
_manager: SessionManager | None = None


def options_from_settings() -> dict[str, Any]:
    """The manager's keyword options: ``DBSESSION``, with ``secret`` from ``SECRET_KEY`` when absent."""
    options = parse_settings(getattr(settings, SETTING, {}))
    if options.get("secret") is None:
        options["secret"] = [settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS]
    return options


def get_manager() -> SessionManager:
    """This process's session manager, built from the settings on first use."""
    global _manager  # noqa: PLW0603 - one manager per process, built lazily
    manager = _manager
    if manager is None:
        with _lock:
            if _manager is None:
                _manager = SessionManager(**options_from_settings())
            manager = _manager
    return manager


def get_store() -> Store:
    """The sessions table: ``user_sessions(user)``, ``destroy_user_sessions(user)``, ``stats()`` …

    With ``DBSESSION["user_key"] = "_auth_user_id"``, ``get_store().user_sessions(user.pk)``
    lists a Django user's sessions, those of the other apps on the table included.
    """
    return get_manager().store


def close() -> None:
    """Stop the prune job and close the pool; the next use builds a new manager."""
    global _manager
    with _lock:
        manager, _manager = _manager, None
    if manager is not None:
        manager.close()


def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in _MANAGER_SETTINGS:
        close()


setting_changed.connect(_settings_changed)


@dataclasses.dataclass(frozen=True)
class _Row:
    """The row as this object last read or wrote it: what compare-and-set compares."""

    sid: str = dataclasses.field(repr=False)  # a credential
    text: str = dataclasses.field(repr=False)


class SessionStore(SessionBase):  # type: ignore[misc]  # Django has no type hints
    """Django's session API over the package's table (``SESSION_ENGINE = "wsgi_dbsession.django"``)."""

    _session_key: str | None  # SessionBase's property: a key shorter than 8 characters reads as None

    def __init__(self, session_key: str | None = None) -> None:
        self._manager: SessionManager = get_manager()
        manager = self._manager
        if manager.pruner is not None:
            manager.pruner.ensure_started()
        self._row: _Row | None = None
        self._record: express.Record | None = None
        self._baseline: str | None = None  # the data as loaded or saved: nested changes show against it
        self._modified = False
        self.secure = settings.SESSION_COOKIE_SECURE  # recorded in the row's cookie object
        super().__init__(session_key)

    # Django's flag, plus a change made inside a value (session["cart"].append(x)).
    @property
    def modified(self) -> bool:
        if self._modified:
            return True
        data = self.__dict__.get("_session_cache")
        return data is not None and self._baseline is not None and self._dumps(data) != self._baseline

    @modified.setter
    def modified(self, value: bool) -> None:
        self._modified = value
        if not value:  # "not modified" from here on: nested changes count from now
            data = self.__dict__.get("_session_cache")
            try:
                self._baseline = self._dumps(data) if data else None
            except SerializationError:
                self._baseline = None  # the save names the value

    # -- SessionBase's storage methods ---------------------------------------

    def _get_new_session_key(self) -> str:
        # 192 random bits: no lookup for a collision, and an id express-session accepts.
        return generate_sid()

    def load(self) -> dict[str, Any]:
        sid = self.session_key
        stored = self._manager.store.load(sid) if sid is not None else None
        record = None if stored is None else self._decode(stored.text)
        if sid is None or stored is None or record is None:
            self._session_key = None
            self._row = self._record = self._baseline = None
            return {}
        self._row = _Row(sid, stored.text)
        self._record = record
        self._baseline = self._dumps(record.data)
        return record.data

    def exists(self, session_key: str | None) -> bool:
        return session_key is not None and self._manager.store.load(session_key) is not None

    def create(self) -> None:
        self._session_key = self._get_new_session_key()
        self.save(must_create=True)
        self.modified = True

    def save(self, must_create: bool = False) -> None:
        """Write the session: ``must_create``, a new row; else only the live row.

        A row that is gone (a logout elsewhere) is an :class:`UpdateError`.
        """
        if self.session_key is None:
            return self.create()
        data = self._get_session(no_load=must_create)
        sid = self.session_key
        if sid is None:  # loading found no live row: nothing to update
            raise UpdateError
        store, now = self._manager.store, utcnow()
        expires = self._expires()
        text = self._serialize(data, now, expires)
        row = self._row
        if must_create:
            store.write(sid, text, expires)
        elif row is None or row.sid != sid:
            if not store.replace_locked(sid, now, lambda _current: (text, expires)):
                raise UpdateError
        elif not store.replace(sid, text, expires, expected=row.text):
            text = self._merge(row, data, now, expires)
        self._row = _Row(sid, text)
        self._baseline = self._dumps(data)
        return None

    def _merge(self, row: _Row, data: dict[str, Any], now: dt.datetime, expires: dt.datetime) -> str:
        """Another request wrote the row since it was read: apply this one's key-level changes to it.

        Under a row lock (a short transaction), so it always makes progress;
        the row gone (a logout elsewhere) is an :class:`UpdateError`, as
        Django's own database backend raises.
        """
        loads = self._manager.store.serializer.loads
        changes = KeyChanges.between(row.text, data, loads, self._dumps)  # the package's merge
        merged: dict[str, Any] = {}
        text = ""

        def rewrite(current: str) -> tuple[str, dt.datetime]:
            nonlocal merged, text
            merged = changes.applied_to(current, loads)
            text = self._serialize(merged, now, expires)
            return text, expires

        if not self._manager.store.replace_locked(row.sid, now, rewrite):
            raise UpdateError
        data.clear()
        data.update(merged)  # the same dict: request.session sees the other request's keys
        return text

    def delete(self, session_key: str | None = None) -> None:
        if session_key is None:
            if self.session_key is None:
                return
            session_key = self.session_key
        self._manager.store.destroy(session_key)
        if self._row is not None and self._row.sid == session_key:
            self._row = None

    def cycle_key(self) -> None:
        """A new key for the same data, in one statement (the row is renamed)."""
        data = self._session
        row = self._row
        if row is None or row.sid != self.session_key:
            super().cycle_key()
            return
        new_sid, now = self._get_new_session_key(), utcnow()
        expires = self._expires()
        text = self._serialize(data, now, expires)
        if not self._manager.store.rename(row.sid, new_sid, text, expires):
            super().cycle_key()  # the row was gone: a new one, as Django's backends do
            return
        self._session_key = new_sid
        self._row = _Row(new_sid, text)
        self._modified = True  # the middleware sends the new key

    async def acycle_key(self) -> None:
        await sync_to_async(self.cycle_key)()  # Django's own runs two statements: create, then delete

    @classmethod
    def clear_expired(cls) -> None:
        """Delete expired rows (``manage.py clearsessions``) under the prune lease.

        In a process whose prune job runs, the job prunes now; elsewhere one
        prune under the lease, which does nothing while an app's job holds it
        (that app prunes the table).
        """
        manager = get_manager()
        if manager.pruner is not None and manager.pruner.started:
            manager.pruner.run_once()
        else:
            prune_once(manager.store, batch_size=manager.options.cleanup_batch_size)

    # -- the row's shape ------------------------------------------------------

    def _expires(self) -> dt.datetime:
        """Django's expiry date of this session, as an aware UTC datetime."""
        expiry: dt.datetime = self.get_expiry_date()
        # Naive with USE_TZ = False: the process's local time, as timezone.now() gives it then.
        return expiry.astimezone(express.UTC)

    def _serialize(self, data: dict[str, Any], now: dt.datetime, expires: dt.datetime) -> str:
        """The row's text: express-session's cookie object and ``_created``, then Django's keys."""
        for key in express.RESERVED_KEYS.intersection(data):
            raise SerializationError(
                f"{key!r} is reserved for the session machinery; choose another key", key
            )
        max_age = None if self.get_expire_at_browser_close() else max(1, int(self.get_expiry_age()))
        record = self._record
        if record is None:
            record = self._record = express.Record(data=data, created=now.timestamp(), max_age=max_age)
        elif record.max_age != max_age:
            record = self._record = dataclasses.replace(record, max_age=max_age)
        cookie = self._manager.cookie.attributes
        text = self._dumps(record.to_json(data, expires=expires, secure=self.secure, cookie=cookie))
        limit = self._manager.options.max_size
        if limit is not None and len(text.encode("utf-8")) > limit:
            raise SessionTooLarge(len(text.encode("utf-8")), limit)
        return text

    def _decode(self, text: str) -> express.Record | None:
        try:
            record = express.decode(self._manager.store.serializer.loads(text), None, utcnow())
        except ValueError:
            record = None
        if record is None:
            logging.getLogger("django.security.SuspiciousSession").warning(
                "Session data corrupted: a stored session is not a JSON object; starting a new one"
            )
        return record

    def _dumps(self, value: dict[str, Any]) -> str:
        serializer = self._manager.store.serializer
        try:
            return serializer.dumps(value)
        except (TypeError, ValueError) as exc:
            raise explain(serializer, value, exc) from exc  # the package's message, naming the path


class SessionMiddleware(MiddlewareMixin):  # type: ignore[misc]  # Django has no type hints
    """Django's ``SessionMiddleware`` with the package's cookie: logins shared with the other apps.

    Replace ``django.contrib.sessions.middleware.SessionMiddleware`` by it
    (with ``SESSION_ENGINE = "wsgi_dbsession.django"``). The cookie is the
    signed express-session cookie the ``DBSESSION`` options describe
    (``cookie_name``, ``secret``, ``path``, ``domain``, ``secure``,
    ``httponly``, ``samesite``); what Django's middleware does with it
    (when it is set, renewed or deleted, ``Vary: Cookie``, no save on a 5xx)
    is unchanged. A response that sets it is also ``Cache-Control: private``.
    """

    def process_request(self, request: HttpRequest) -> None:
        manager = get_manager()
        session = SessionStore(manager.cookie.read(request.META.get("HTTP_COOKIE")))
        session.secure = manager.cookie.is_secure(request.scheme or "http")
        request.session = session

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        try:
            session: SessionStore = request.session
            accessed, modified, empty = session.accessed, session.modified, session.is_empty()
        except AttributeError:
            return response
        cookie = get_manager().cookie
        samesite = None if cookie.samesite == "none" and not session.secure else cookie.samesite
        if cookie.name in request.COOKIES and empty:
            response.delete_cookie(cookie.name, path=cookie.path, domain=cookie.domain, samesite=samesite)
            patch_vary_headers(response, ("Cookie",))
            return response
        if accessed:
            patch_vary_headers(response, ("Cookie",))
        if (modified or settings.SESSION_SAVE_EVERY_REQUEST) and not empty and response.status_code < 500:
            try:
                session.save()
            except UpdateError:
                raise SessionInterrupted(
                    "The request's session was deleted before the request completed. "
                    "The user may have logged out in a concurrent request, for example."
                ) from None
            max_age = None if session.get_expire_at_browser_close() else session.get_expiry_age()
            response.set_cookie(
                cookie.name,
                encode_value(sign(session.session_key, cookie.secrets[0])),
                max_age=max_age,
                domain=cookie.domain,
                path=cookie.path,
                secure=session.secure or None,
                httponly=cookie.httponly or None,
                samesite=samesite,
            )
            if "no-store" not in response.get("Cache-Control", ""):
                patch_cache_control(response, private=True)
        return response
