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
import math
import secrets
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field, replace
from typing import Any

from . import express
from .cookies import SessionCookie, generate_sid
from .exceptions import SerializationError, SessionTooLarge, StoreUnavailable
from .express import RESERVED_KEYS, Record
from .store import JSONSerializer, SessionStore, utcnow

log = logging.getLogger(__name__)

# Pyramid's storage keys, so a Pyramid app's sessions look the same here.
FLASH_PREFIX = "_f_"
CSRF_KEY = "_csrft_"
# Compare-and-set merges tried before a contended save takes a row lock.
OPTIMISTIC_MERGES = 3
# Values the app cannot change in place: handing them out needs no snapshot.
_IMMUTABLE = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class StoredRow:
    """The session's row as this request last read or wrote it."""

    sid: str = field(repr=False)  # a session id is a credential: never in a repr
    text: str = field(repr=False)  # the exact stored JSON: what compare-and-set compares
    expires: dt.datetime
    max_age: int | None  # the lifetime it was stored with (seconds; None: browser session)


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
    max_age: int | None  # seconds; None: browser-session cookie
    rolling: bool  # extend the expiry on activity, not only on writes
    touch_after: int  # seconds between two expiry touches of an unchanged session
    max_size: int | None  # bytes of serialized session; None: no limit
    absolute_max_age: int | None = None  # seconds from creation a session may live; None: no limit

    def open(self, cookie_header: str | None) -> Session:
        """The session of a request with this ``Cookie`` header; loads nothing yet."""
        return Session(self, cookie_header)


class Session(MutableMapping[str, Any]):
    """A dict-like session: Pyramid's ``ISession``, plus ``regenerate`` and ``set_expiry``.

    Loaded on first use. Any change is saved at the end of the request,
    including changes deep inside nested values; no ``save()`` call is needed.
    """

    __slots__ = (
        "_changed",
        "_cookie_header",
        "_cookie_update",
        "_data",
        "_doomed_sid",
        "_expire_cookie",
        "_factory",
        "_load_error",
        "_loaded",
        "_record",
        "_row",
        "_sid",
        "_snapshots",
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
        sid, old_signature = factory.cookie.verify(self._cookie_header)
        try:
            stored = factory.store.load(sid, now) if sid is not None else None
        except StoreUnavailable as exc:
            self._load_error = exc  # kept for the middleware, even if the app swallows it
            raise
        self._doomed_sid: str | None = None
        self._expire_cookie = False
        self._cookie_update: CookieUpdate | None = None
        self._loaded = True
        record = self._decode(stored.text, now) if stored is not None else None
        if record is None or sid is None or stored is None:
            self._start_fresh(now)
            return
        if record.ended(now, self._factory.absolute_max_age):
            # Its capped expiry was moved on by a writer that does not know the limit
            # (express-session), or the limit is newer than the row: end it as a logout does.
            log.info("a session reached absolute_max_age; it is ended and the request gets a new one")
            self._start_fresh(now)
            self._doomed_sid, self._expire_cookie = sid, True
            return
        self._data = record.data
        self._record = record
        self._sid: str | None = sid
        self._row: StoredRow | None = StoredRow(sid, stored.text, stored.expires, record.max_age)
        if old_signature:
            # Signed with a secret being retired: the response carries the id signed with
            # the first, so the old secret can go without logging anyone out. A header only.
            remaining = max(1, int((stored.expires - now).total_seconds()))
            self._cookie_update = CookieUpdate(sid, None if record.max_age is None else remaining)
        # A row express-session wrote has no creation time: with an absolute limit,
        # store the one it was given now, so the limit counts from here.
        self._changed = not record.created_stored and self._factory.absolute_max_age is not None
        # Values handed to the app that it could change in place, as they
        # were serialized then: a nested change shows against them.
        self._snapshots: dict[str, str] = {}

    def _decode(self, text: str, now: dt.datetime) -> Record | None:
        try:
            record = express.decode(self._factory.store.serializer.loads(text), self._factory.max_age, now)
        except ValueError:
            record = None
        if record is None:
            log.warning("a stored session could not be decoded; starting a fresh one")
        return record

    def _start_fresh(self, now: dt.datetime) -> None:
        self._data = {}
        self._record = Record(data=self._data, created=now.timestamp(), max_age=self._factory.max_age)
        self._sid = None
        self._row = None
        self._changed = False
        self._snapshots = {}

    # -- the mapping ------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        value = self._mapping()[key]
        if not isinstance(value, _IMMUTABLE) and key not in self._snapshots:
            self._snapshots[key] = self._dumps({key: value})
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise SerializationError(f"session keys must be strings, not {key!r}", repr(key))
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
        return f"<Session new={self._row is None} keys={sorted(self._data)!r}>"

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
        return self._row is None

    @property
    def created(self) -> float:
        """When the session was created, in seconds since the epoch."""
        self._mapping()
        return self._record.created

    @property
    def load_error(self) -> StoreUnavailable | None:
        """The outage that made loading this session fail during this request, if any."""
        return self._load_error

    @property
    def loaded(self) -> bool:
        """Whether the application has used the session in this request."""
        return self._loaded

    @property
    def modified(self) -> bool:
        """Whether saving now would write the data: a change was seen, nested ones included."""
        if not self._loaded:
            return False
        row = self._row
        if row is None:
            return bool(self._data)  # a new session is stored when it holds something
        return self._changed or self._sid != row.sid or self._changed_in_place()

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
        if self._row is not None:
            self._doomed_sid = self._row.sid  # the stored id, even after a regenerate()
        self._start_fresh(utcnow())
        self._expire_cookie = True

    def delete(self) -> None:
        """Beaker's name for :meth:`invalidate`, so an app moved from Beaker keeps its logout."""
        self.invalidate()

    def regenerate(self) -> None:
        """Give the session a new id, keep its data, delete the old id (login).

        Call it whenever the privilege level changes, so an id planted by an
        attacker before login is worthless after it.
        """
        self._mapping()
        self._sid = generate_sid()
        self._changed = True

    def set_expiry(self, seconds: int | None) -> None:
        """Give this session its own lifetime ("remember me"); None: until the browser closes."""
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0
        ):
            raise ValueError("seconds must be a positive whole number of seconds, or None")
        self._mapping()
        self._record = replace(self._record, max_age=seconds)
        self._changed = True

    def get_expiry(self) -> int | None:
        """This session's lifetime in seconds (None: a browser-session cookie)."""
        self._mapping()
        return self._record.max_age

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
            self._cookie_update = self._within_absolute_limit(update)
        return self._cookie_update

    def persist(self) -> CookieUpdate | None:
        """Beaker's name for :meth:`save` (writing early is harmless: the response still saves)."""
        return self.save()

    def _write(self, secure: bool, headers_sent: bool) -> CookieUpdate | None:
        store = self._factory.store
        if self._doomed_sid is not None:
            store.destroy(self._doomed_sid)
            store.observers.count("save", "deleted")
            self._doomed_sid = None
        row = self._row
        if row is None:
            if headers_sent and self._data:
                log.error(
                    "a new session first used after the response started was not stored (keys %s): "
                    "no cookie could carry its id; use the session before start_response "
                    "(in a generator body: before its first yield)",
                    sorted(self._data),
                )
                return None
            return self._save_new(utcnow(), secure)
        if self._sid != row.sid:
            return self._save_renamed(row, utcnow(), secure)
        if self._changed or self._changed_in_place():
            return self._save_changed(row, utcnow(), secure)
        if not headers_sent and self._factory.rolling and self._touch_due(row, now := utcnow()):
            expires = self._record.expiry(now, self._factory.absolute_max_age)
            if store.touch(row.sid, expires):
                store.observers.count("save", "touched")
                self._row = replace(row, expires=expires)
                return CookieUpdate(row.sid, self._record.max_age)
        return None

    def _save_new(self, now: dt.datetime, secure: bool) -> CookieUpdate | None:
        if not self._data:
            # An empty new session is not stored (express's saveUninitialized=false).
            expire, self._expire_cookie = self._expire_cookie, False
            return CookieUpdate(None) if expire else None
        sid = self.id
        text, expires = self._serialize(self._data, now, secure)
        store = self._factory.store
        store.write(sid, text, expires)
        store.observers.count("save", "new")
        self._mark_saved(sid, text, expires)
        return CookieUpdate(sid, self._record.max_age)

    def _save_renamed(self, row: StoredRow, now: dt.datetime, secure: bool) -> CookieUpdate:
        assert self._sid is not None
        store = self._factory.store
        text, expires = self._serialize(self._data, now, secure)
        if not store.rename(row.sid, self._sid, text, expires):
            store.write(self._sid, text, expires)  # the old row was gone; the app asked for a session
        store.observers.count("save", "renamed")
        self._mark_saved(self._sid, text, expires)
        return CookieUpdate(self._sid, self._record.max_age)

    def _save_changed(self, row: StoredRow, now: dt.datetime, secure: bool) -> CookieUpdate | None:
        text, expires = self._serialize(self._data, now, secure)
        store = self._factory.store
        if store.replace(row.sid, text, expires, expected=row.text):
            self._mark_saved(row.sid, text, expires)
        elif not self._merge(row, now, secure, expires):
            self._start_fresh(now)  # ended by another request (logout wins): nothing left to save
            return None
        store.observers.count("save", "changed")
        max_age = self._record.max_age
        # A lifetime cookie moves its expiry on every write; any change of lifetime is sent.
        if max_age is not None or max_age != row.max_age:
            return CookieUpdate(row.sid, max_age)
        return None

    def _merge(self, row: StoredRow, now: dt.datetime, secure: bool, expires: dt.datetime) -> bool:
        """Another request wrote the row since it was loaded: apply this request's
        key-level changes on top of what is stored now.

        Optimistic compare-and-set first; when it keeps losing to other
        writers, a short row-locking transaction guarantees progress.
        Returns False when the row is gone (the session was invalidated or
        expired meanwhile): it is not brought back.
        """
        serializer, dumps = self._factory.store.serializer, self._dumps
        base = express.strip_reserved(serializer.loads(row.text))
        updated = {k: v for k, v in self._data.items() if k not in base or dumps(v) != dumps(base[k])}
        removed = [k for k in base if k not in self._data]
        merged: dict[str, Any] = {}
        text = ""

        def rewrite(current: str) -> tuple[str, dt.datetime]:
            nonlocal merged, text
            merged = express.strip_reserved(serializer.loads(current))
            merged.update(updated)
            for key in removed:
                merged.pop(key, None)
            text = self._serialize(merged, now, secure)[0]
            return text, expires

        store = self._factory.store
        saved: bool | None = None
        for _ in range(OPTIMISTIC_MERGES):
            current = store.load(row.sid, now)
            if current is None:
                saved = False
            elif store.replace(row.sid, rewrite(current.text)[0], expires, expected=current.text):
                saved = True
            if saved is not None:
                break
        if saved is None:
            log.debug("a contended session is saved under a row lock")
            saved = store.replace_locked(row.sid, now, rewrite)
            store.observers.count("locked_save", outcome="saved" if saved else "gone")
        store.observers.count("merge", outcome="saved" if saved else "gone")
        if not saved:
            log.info("a session was deleted by another request while this one changed it")
            return False
        self._data = merged
        self._mark_saved(row.sid, text, expires)
        return True

    def _within_absolute_limit(self, update: CookieUpdate) -> CookieUpdate:
        """The cookie's Max-Age cut to what the absolute limit leaves: the browser
        drops the cookie when the row ends. A browser-session cookie stays one."""
        limit = self._factory.absolute_max_age
        if limit is None or update.sid is None or update.max_age is None:
            return update
        remaining = math.ceil(self._record.created + limit - utcnow().timestamp())
        return replace(update, max_age=max(1, min(update.max_age, remaining)))

    def _mark_saved(self, sid: str, text: str, expires: dt.datetime) -> None:
        self._row = StoredRow(sid, text, expires, self._record.max_age)
        self._changed = False
        # Every value the app may still hold and change in place, not only those
        # it read: one it set (or got from setdefault) is as much in its hands.
        self._snapshots = {
            key: self._dumps({key: value})
            for key, value in self._data.items()
            if not isinstance(value, _IMMUTABLE)
        }

    def _changed_in_place(self) -> bool:
        data = self._data
        return any(
            key in data and self._dumps({key: data[key]}) != before for key, before in self._snapshots.items()
        )

    def _touch_due(self, row: StoredRow, now: dt.datetime) -> bool:
        extension = self._record.expiry(now, self._factory.absolute_max_age) - row.expires
        return extension.total_seconds() >= self._factory.touch_after

    def _dumps(self, data: dict[str, Any]) -> str:
        try:
            return self._factory.store.serializer.dumps(data)
        except (TypeError, ValueError) as exc:
            raise _explain(self._factory.store.serializer, data, exc) from exc

    def _serialize(self, data: dict[str, Any], now: dt.datetime, secure: bool) -> tuple[str, dt.datetime]:
        """The stored text (express's cookie object first) and the new expiry."""
        record = self._record
        expires = record.expiry(now, self._factory.absolute_max_age)
        text = self._dumps(
            record.to_json(data, expires=expires, secure=secure, cookie=self._factory.cookie.attributes)
        )
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as exc:  # a lone surrogate: no database can store it
            raise _explain(self._factory.store.serializer, data, exc) from exc
        limit = self._factory.max_size
        if limit is not None and size > limit:
            raise SessionTooLarge(size, limit)
        if type(self._factory.store.serializer) is JSONSerializer:
            _check_round_trip(text, data)
        return text, expires


def _check_round_trip(text: str, data: dict[str, Any]) -> None:
    """Refuse data JSON would store changed: a dict key that is not a string (``{1: "a"}``
    comes back as ``{"1": "a"}``). On writes only; a tuple comes back as a list and is
    accepted (Flask's flash() stores tuples), so only a round trip that differs is walked.
    """
    if all(isinstance(value, _IMMUTABLE) for value in data.values()):
        return  # the keys are strings (__setitem__ refuses others): nothing can come back changed
    if express.strip_reserved(JSONSerializer().loads(text)) == data:
        return
    for key, value in data.items():
        for bad in _non_string_keys(value):
            raise SerializationError(
                f"session[{key!r}] holds a dict with the key {bad!r}, which is not a string: "
                "JSON would store it as text and give back a different dict; use string keys",
                key,
            )


def _non_string_keys(value: Any) -> Iterator[Any]:
    """The dict keys inside ``value`` that are not strings."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, nested in item.items():
                if not isinstance(key, str):
                    yield key
                stack.append(nested)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def _explain(serializer: Any, data: dict[str, Any], exc: Exception) -> SerializationError:
    """Name the value that cannot be stored by its path: ``session['a']['when'] holds a datetime``."""
    for key, value in data.items():
        if not _storable(serializer, {key: value}):
            path, bad = _refused(serializer, f"[{key!r}]", value)
            return SerializationError(
                f"session{path} holds a {type(bad).__name__} that the session serializer "
                f"cannot store ({exc}); store JSON types (str, int, float, bool, None, list, dict)",
                key,
            )
    return SerializationError(f"the session cannot be serialized: {exc}")


def _storable(serializer: Any, value: Any) -> bool:
    try:
        serializer.dumps(value).encode("utf-8")
    except (TypeError, ValueError):
        return False
    return True


def _refused(serializer: Any, path: str, value: Any) -> tuple[str, Any]:
    """The innermost value inside ``value`` (at ``path``) that the serializer refuses, and its path."""
    while True:
        items = (
            value.items()
            if isinstance(value, dict)
            else enumerate(value)
            if isinstance(value, (list, tuple))
            else ()
        )
        for key, item in items:
            if not _storable(serializer, {"": item}):
                path, value = f"{path}[{key!r}]", item
                break
        else:
            return path, value
