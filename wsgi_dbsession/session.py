"""The per-request session: a lazily loaded mapping that tracks its own changes.

Nothing is read until the application touches the session. At the end of the
request :meth:`Session.save` decides what, if anything, to write: a new row,
a compare-and-set update of a changed one (merged key by key with a
concurrent request's change when the compare fails), a throttled expiry
touch, a rename (regeneration) or a delete (invalidation). It returns the
cookie the response must carry, and never sees WSGI itself.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import secrets
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from .cookies import SessionCookie, foreign_cookie_fields, generate_sid, stored_max_age
from .exceptions import (
    ConcurrentUpdateError,
    ConfigurationError,
    SerializationError,
    SessionTooLarge,
    StoreUnavailable,
)
from .store import SessionStore, StoredSession, utcnow

log = logging.getLogger(__name__)

# How long the row of a browser-session cookie (max_age=None) lives without
# activity: connect-session-knex's one day.
BROWSER_SESSION_ROW_LIFETIME = 86400  # seconds
# Keys of the stored JSON that belong to the session machinery, not the app:
# express-session's cookie object, and the creation time (epoch seconds).
COOKIE_KEY = "cookie"
CREATED_KEY = "_created"
RESERVED_KEYS = frozenset((COOKIE_KEY, CREATED_KEY))
# Pyramid's storage keys, so a Pyramid app's sessions look the same here.
FLASH_PREFIX = "_f_"
CSRF_KEY = "_csrft_"
MAX_MERGE_ATTEMPTS = 5


@dataclass(frozen=True)
class CookieUpdate:
    """What the response must do with the session cookie.

    ``sid`` set: send it with ``max_age`` (None: a browser-session cookie).
    ``sid`` None: expire the cookie.
    """

    sid: str | None = field(repr=False)  # a session id is a credential: never in a repr
    max_age: int | None = None


@dataclass(frozen=True, kw_only=True)
class SessionFactory:
    """Everything a request's session needs, shared by all requests."""

    store: SessionStore
    cookie: SessionCookie
    max_age: int | None = 86400  # seconds; None: browser-session cookie
    rolling: bool = False  # extend the expiry on activity, not only on writes
    touch_after: int = 60  # seconds between two expiry touches of an unchanged session
    max_size: int | None = None  # bytes of serialized session; None: no limit

    def __post_init__(self) -> None:
        if self.max_age is not None and self.max_age <= 0:
            raise ConfigurationError("max_age must be a positive number of seconds, or None")
        if self.touch_after < 0:
            raise ConfigurationError("touch_after must be zero or more seconds")
        if self.max_size is not None and self.max_size <= 0:
            raise ConfigurationError("max_size must be a positive number of bytes, or None")

    def open(self, cookie_header: str | None) -> Session:
        """The session of a request with this ``Cookie`` header; loads nothing yet."""
        return Session(self, cookie_header)


class Session(MutableMapping[str, Any]):
    """A dict-like session: Pyramid's ``ISession``, plus ``regenerate`` and ``set_expiry``.

    Loaded on first use. Any change is saved at the end of the request,
    including changes deep inside nested values; no ``save()`` call is needed.
    """

    __slots__ = (
        "_baseline",
        "_changed",
        "_cookie_extra",
        "_cookie_header",
        "_cookie_update",
        "_created",
        "_data",
        "_doomed_sid",
        "_expire_cookie",
        "_expires",
        "_factory",
        "_load_error",
        "_loaded",
        "_max_age",
        "_new",
        "_renamed_from",
        "_sid",
        "_stored",
        "_text",
    )

    def __init__(self, factory: SessionFactory, cookie_header: str | None) -> None:
        self._factory = factory
        self._cookie_header = cookie_header
        self._loaded = False
        self._load_error: StoreUnavailable | None = None

    # -- loading --------------------------------------------------------------

    def _mapping(self) -> dict[str, Any]:
        if not self._loaded:
            self._load()
        return self._data

    def _load(self) -> None:
        factory = self._factory
        now = utcnow()
        sid = factory.cookie.read(self._cookie_header)
        try:
            stored = factory.store.load(sid, now) if sid is not None else None
        except StoreUnavailable as exc:
            self._load_error = exc  # kept for the middleware, even if the app swallows it
            raise
        self._doomed_sid: str | None = None
        self._renamed_from: str | None = None
        self._expire_cookie = False
        self._cookie_update: CookieUpdate | None = None
        self._loaded = True
        if stored is None or not self._adopt(sid, stored):
            self._start_fresh(now)

    def _adopt(self, sid: str | None, stored: StoredSession) -> bool:
        try:
            payload = self._factory.store.serializer.loads(stored.text)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            log.warning("a stored session could not be decoded; starting a fresh one")
            return False
        cookie = payload.pop(COOKIE_KEY, None)
        created = payload.pop(CREATED_KEY, None)
        self._data = payload
        self._sid = sid
        self._stored = True
        self._new = False
        self._text: str | None = stored.text
        self._baseline: str | None = self._dumps(payload)
        self._created = float(created) if isinstance(created, (int, float)) else time.time()
        self._expires = stored.expires
        self._max_age = stored_max_age(cookie, self._factory.max_age)
        self._cookie_extra: dict[str, Any] = foreign_cookie_fields(cookie)
        self._changed = False
        return True

    def _start_fresh(self, now: dt.datetime) -> None:
        self._data = {}
        self._sid = None
        self._stored = False
        self._new = True
        self._text = None
        self._baseline = None
        self._created = now.timestamp()
        self._expires = now
        self._max_age = self._factory.max_age
        self._cookie_extra = {}
        self._changed = False

    # -- the mapping ------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._mapping()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key in RESERVED_KEYS:
            raise KeyError(f"{key!r} is reserved for the session machinery; choose another key")
        self._mapping()[key] = value
        self._changed = True

    def __delitem__(self, key: str) -> None:
        del self._mapping()[key]
        self._changed = True

    def __iter__(self) -> Iterator[str]:
        return iter(self._mapping())

    def __len__(self) -> int:
        return len(self._mapping())

    def __contains__(self, key: object) -> bool:
        return key in self._mapping()

    def __repr__(self) -> str:
        if not self._loaded:
            return "<Session (not loaded)>"
        return f"<Session new={self._new} keys={sorted(self._data)!r}>"

    # -- Pyramid's ISession and friends ---------------------------------------

    @property
    def id(self) -> str:
        """The session id; a new session gets one the first time it is asked."""
        self._mapping()
        if self._sid is None:
            self._sid = generate_sid()
        return self._sid

    @property
    def new(self) -> bool:
        """True when this request started the session (no row was loaded)."""
        self._mapping()
        return self._new

    @property
    def created(self) -> float:
        """When the session was created, in seconds since the epoch."""
        self._mapping()
        return self._created

    @property
    def load_error(self) -> StoreUnavailable | None:
        """The outage that made loading this session fail during this request, if any."""
        return self._load_error

    @property
    def loaded(self) -> bool:
        """Whether the application has used the session in this request."""
        return self._loaded

    def changed(self) -> None:
        """Mark the session changed, so it is saved even if no change was seen."""
        self._mapping()
        self._changed = True

    def invalidate(self) -> None:
        """Delete the stored session and expire its cookie (logout).

        The object becomes a new, empty session: data set on it afterwards is
        saved under a new id.
        """
        self._mapping()
        if self._stored and self._doomed_sid is None:
            self._doomed_sid = self._renamed_from or self._sid
        self._start_fresh(utcnow())
        self._renamed_from = None
        self._expire_cookie = True

    def regenerate(self) -> None:
        """Give the session a new id, keep its data, delete the old id (login).

        Call it whenever the privilege level changes, so an id planted by an
        attacker before login is worthless after it.
        """
        self._mapping()
        if self._stored and self._renamed_from is None:
            self._renamed_from = self._sid
        self._sid = generate_sid()
        self._changed = True

    def set_expiry(self, seconds: int | None) -> None:
        """Give this session its own lifetime ("remember me"); None: until the browser closes."""
        if seconds is not None and seconds <= 0:
            raise ValueError("seconds must be positive, or None")
        self._mapping()
        self._max_age = seconds
        self._changed = True

    def get_expiry(self) -> int | None:
        """This session's lifetime in seconds (None: a browser-session cookie)."""
        self._mapping()
        return self._max_age

    def flash(self, msg: Any, queue: str = "", allow_duplicate: bool = True) -> None:
        """Queue a message for a later request (Pyramid's flash API)."""
        storage = self.setdefault(FLASH_PREFIX + queue, [])
        if allow_duplicate or msg not in storage:
            storage.append(msg)
            self._changed = True

    def pop_flash(self, queue: str = "") -> list[Any]:
        """Remove and return the queued messages."""
        return list(self.pop(FLASH_PREFIX + queue, []))

    def peek_flash(self, queue: str = "") -> list[Any]:
        """Return the queued messages without removing them."""
        return list(self.get(FLASH_PREFIX + queue, []))

    def new_csrf_token(self) -> str:
        """Create, store and return a new CSRF token (40 hex characters)."""
        token = secrets.token_hex(20)
        self[CSRF_KEY] = token
        return token

    def get_csrf_token(self) -> str:
        """The session's CSRF token, created when there is none."""
        token = self.get(CSRF_KEY)
        return token if isinstance(token, str) else self.new_csrf_token()

    def check_csrf_token(self, supplied: str | None) -> bool:
        """Whether ``supplied`` is the session's CSRF token (compared in constant time)."""
        expected = self.get(CSRF_KEY)
        if not isinstance(expected, str) or not isinstance(supplied, str):
            return False
        return hmac.compare_digest(expected.encode(), supplied.encode())

    # -- saving -------------------------------------------------------------------

    def save(self, *, secure: bool = False, headers_sent: bool = False) -> CookieUpdate | None:
        """Write what changed; return what the response must do with the cookie.

        ``secure`` is whether the cookie goes out with the Secure flag (it is
        recorded in express-session's cookie object). ``headers_sent``: the
        response has started, so no cookie can follow; a new session is then
        not stored (its id could never reach the client) and no rolling touch
        is made. Safe to call again: a second call writes only what changed
        since the first, and still returns the cookie change of the first, so
        an app that calls ``save()`` itself (a Beaker habit) loses nothing.
        """
        if not self._loaded:
            return None
        update = self._write(secure, headers_sent)
        if update is not None:
            self._cookie_update = update
        return self._cookie_update

    def _write(self, secure: bool, headers_sent: bool) -> CookieUpdate | None:
        store = self._factory.store
        if self._doomed_sid is not None:
            store.destroy(self._doomed_sid)
            self._doomed_sid = None
        now = utcnow()
        if not self._stored:
            if headers_sent and self._data:
                log.warning(
                    "a session created after the response started was not stored: no cookie could carry it"
                )
                return None
            return self._save_new(now, secure)
        assert self._sid is not None
        if self._renamed_from is not None:
            return self._save_renamed(now, secure)
        if self._changed or self._dumps(self._data) != self._baseline:
            return self._save_changed(now, secure)
        if not headers_sent and self._factory.rolling and self._touch_due(now):
            expires = now + dt.timedelta(seconds=self._lifetime())
            if store.touch(self._sid, expires):
                self._expires = expires
                return CookieUpdate(self._sid, self._max_age)
        return None

    def _save_new(self, now: dt.datetime, secure: bool) -> CookieUpdate | None:
        if not self._data:
            # An empty new session is not stored (express's saveUninitialized=false).
            expire, self._expire_cookie = self._expire_cookie, False
            return CookieUpdate(None) if expire else None
        sid = self.id
        text, expires = self._serialize(self._data, now, secure)
        self._factory.store.write(sid, text, expires)
        self._mark_saved(text, expires)
        return CookieUpdate(sid, self._max_age)

    def _save_renamed(self, now: dt.datetime, secure: bool) -> CookieUpdate:
        assert self._sid is not None and self._renamed_from is not None
        store = self._factory.store
        text, expires = self._serialize(self._data, now, secure)
        if not store.rename(self._renamed_from, self._sid, text, expires):
            store.write(self._sid, text, expires)  # the old row was gone; the app asked for a session
        self._renamed_from = None
        self._mark_saved(text, expires)
        return CookieUpdate(self._sid, self._max_age)

    def _save_changed(self, now: dt.datetime, secure: bool) -> CookieUpdate | None:
        assert self._sid is not None and self._text is not None
        text, expires = self._serialize(self._data, now, secure)
        if self._factory.store.replace(self._sid, text, expires, expected=self._text):
            self._mark_saved(text, expires)
        elif not self._merge(now, secure, expires):
            self._start_fresh(now)  # ended by another request (logout wins): nothing left to save
            return None
        return CookieUpdate(self._sid, self._max_age) if self._max_age is not None else None

    def _merge(self, now: dt.datetime, secure: bool, expires: dt.datetime) -> bool:
        """Another request wrote the row since it was loaded: apply this request's
        key-level changes on top of what is stored now (compare-and-set, retried).

        Returns False when the row is gone (the session was invalidated or
        expired meanwhile): it is not brought back.
        """
        assert self._sid is not None and self._baseline is not None
        store, serializer = self._factory.store, self._factory.store.serializer
        base = serializer.loads(self._baseline)
        dumps = self._dumps
        updated = {k: v for k, v in self._data.items() if k not in base or dumps(v) != dumps(base[k])}
        removed = [k for k in base if k not in self._data]
        for _ in range(MAX_MERGE_ATTEMPTS):
            current = store.load(self._sid, now)
            if current is None:
                log.info("a session was deleted by another request while this one changed it")
                return False
            merged = serializer.loads(current.text)
            for key in RESERVED_KEYS:
                merged.pop(key, None)
            merged.update(updated)
            for key in removed:
                merged.pop(key, None)
            text, _ = self._serialize(merged, now, secure)
            if store.replace(self._sid, text, expires, expected=current.text):
                self._data = merged
                self._mark_saved(text, expires)
                return True
        raise ConcurrentUpdateError(
            f"the session kept changing under {MAX_MERGE_ATTEMPTS} attempts to save it; try the request again"
        )

    def _mark_saved(self, text: str, expires: dt.datetime) -> None:
        self._stored = True
        self._text = text
        self._baseline = self._dumps(self._data)
        self._expires = expires
        self._changed = False

    def _lifetime(self) -> int:
        return self._max_age if self._max_age is not None else BROWSER_SESSION_ROW_LIFETIME

    def _touch_due(self, now: dt.datetime) -> bool:
        remaining = (self._expires - now).total_seconds()
        return self._lifetime() - remaining >= self._factory.touch_after

    def _dumps(self, data: dict[str, Any]) -> str:
        try:
            return self._factory.store.serializer.dumps(data)
        except (TypeError, ValueError) as exc:
            raise _explain(self._factory.store.serializer, data, exc) from exc

    def _serialize(self, data: dict[str, Any], now: dt.datetime, secure: bool) -> tuple[str, dt.datetime]:
        """The stored text (express's cookie object first) and the new expiry."""
        expires = now + dt.timedelta(seconds=self._lifetime())
        meta = self._factory.cookie.express_json(
            max_age=self._max_age, expires=expires, secure=secure, extra=self._cookie_extra
        )
        text = self._dumps({COOKIE_KEY: meta, CREATED_KEY: self._created, **data})
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as exc:  # a lone surrogate: no database can store it
            raise _explain(self._factory.store.serializer, data, exc) from exc
        limit = self._factory.max_size
        if limit is not None and size > limit:
            raise SessionTooLarge(size, limit)
        return text, expires


def _explain(serializer: Any, data: dict[str, Any], exc: Exception) -> SerializationError:
    """Name the top-level key whose value cannot be stored."""
    for key, value in data.items():
        try:
            serializer.dumps({key: value}).encode("utf-8")
        except (TypeError, ValueError):
            return SerializationError(
                f"session[{key!r}] holds a {type(value).__name__} that the session serializer "
                f"cannot store ({exc}); store JSON types (str, int, float, bool, None, list, dict)",
                key,
            )
    return SerializationError(f"the session cannot be serialized: {exc}")
