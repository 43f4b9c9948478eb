"""The save policy: what the end of a request writes for its session, and the cookie it sends.

:class:`SavePolicy` is the half of :class:`~wsgi_dbsession.session.Session`
that runs in ``save()``: a new row, a rename (regeneration), a
compare-and-set update of a changed one (merged key by key with a
concurrent request's change when the compare fails, under a row lock when
it keeps failing), a throttled expiry touch, a delete (invalidation), and
the absolute limit's cut of the cookie. The serialization checks and the
error that names a value no serializer can store live here too, and
Django's engine merges and explains with the same functions.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from . import express
from .cookies import SessionCookie
from .exceptions import SerializationError, SessionTooLarge
from .express import Record
from .store import JSONSerializer, SessionStore, utcnow

# The session's logger, as before the split: docs/operations.md names it.
log = logging.getLogger("wsgi_dbsession.session")

# Compare-and-set merges tried before a contended save takes a row lock.
OPTIMISTIC_MERGES = 3
# Values the app cannot change in place: handing them out needs no snapshot.
IMMUTABLE = (str, int, float, bool, type(None))


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
class SessionRules:
    """What every request's session obeys (``SessionFactory`` adds ``open``)."""

    store: SessionStore
    cookie: SessionCookie
    max_age: int | None  # seconds; None: browser-session cookie
    rolling: bool  # extend the expiry on activity, not only on writes
    touch_after: int  # seconds between two expiry touches of an unchanged session
    max_size: int | None  # bytes of serialized session; None: no limit
    absolute_max_age: int | None = None  # seconds from creation a session may live; None: no limit


@dataclass(frozen=True)
class KeyChanges:
    """One request's changes, key by key, against the row it read: what a merge applies
    on top of the row another request wrote meanwhile."""

    updated: dict[str, Any]
    removed: list[str]

    @classmethod
    def between(
        cls, stored: str, data: dict[str, Any], loads: Callable[[str], Any], dumps: Callable[[Any], str]
    ) -> KeyChanges:
        """The keys ``data`` set (to a value that serializes differently) or removed since ``stored``."""
        base = express.strip_reserved(loads(stored))
        updated = {k: v for k, v in data.items() if k not in base or dumps(v) != dumps(base[k])}
        return cls(updated, [k for k in base if k not in data])

    def applied_to(self, current: str, loads: Callable[[str], Any]) -> dict[str, Any]:
        """The data of the row now stored as ``current``, with these changes made to it."""
        merged = express.strip_reserved(loads(current))
        merged.update(self.updated)
        for key in self.removed:
            merged.pop(key, None)
        return merged


class SavePolicy:
    """``save()`` and its rules, over the state :class:`~wsgi_dbsession.session.Session` keeps.

    Each kind of write is one ``_save_*`` method; :meth:`_write` picks one.
    """

    # The session's state, read and written by both halves (Session loads it).
    __slots__ = (
        "_changed",
        "_cookie_update",
        "_data",
        "_doomed_sid",
        "_expire_cookie",
        "_factory",
        "_loaded",
        "_record",
        "_row",
        "_sid",
        "_snapshots",
    )
    _factory: SessionRules
    _loaded: bool
    _data: dict[str, Any]
    _record: Record
    _sid: str | None
    _row: StoredRow | None
    _changed: bool
    _snapshots: dict[str, str]
    _doomed_sid: str | None
    _expire_cookie: bool
    _cookie_update: CookieUpdate | None

    @property
    def id(self) -> str:
        raise NotImplementedError  # Session's: the id, generated for a new session

    def _start_fresh(self, now: dt.datetime) -> None:
        raise NotImplementedError  # Session's: an empty new session

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
        loads = self._factory.store.serializer.loads
        changes = KeyChanges.between(row.text, self._data, loads, self._dumps)
        merged: dict[str, Any] = {}
        text = ""

        def rewrite(current: str) -> tuple[str, dt.datetime]:
            nonlocal merged, text
            merged = changes.applied_to(current, loads)
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
            if not isinstance(value, IMMUTABLE)
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
            raise explain(self._factory.store.serializer, data, exc) from exc

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
            raise explain(self._factory.store.serializer, data, exc) from exc
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
    if all(isinstance(value, IMMUTABLE) for value in data.values()):
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


def explain(serializer: Any, data: dict[str, Any], exc: Exception) -> SerializationError:
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
