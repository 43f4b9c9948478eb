"""The per-request session: a lazily loaded mapping that tracks its own changes.

Nothing is read until the application touches the session. What the end of
the request writes (a new row, a compare-and-set update merged with a
concurrent change, a touch, a rename or a delete) is the save policy of
:mod:`wsgi_dbsession.saving`, which :class:`Session` inherits its ``save()``
from; neither sees WSGI itself.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import secrets
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, replace
from typing import Any

from . import express
from .cookies import generate_sid
from .exceptions import SerializationError, StoreUnavailable
from .express import RESERVED_KEYS, Record
from .saving import IMMUTABLE, OPTIMISTIC_MERGES, CookieUpdate, SavePolicy, SessionRules, StoredRow
from .store import utcnow

__all__ = [
    "CSRF_KEY",
    "FLASH_PREFIX",
    "OPTIMISTIC_MERGES",
    "CookieUpdate",
    "MappingOver",
    "Session",
    "SessionFactory",
    "StoredRow",
]

log = logging.getLogger(__name__)

# Pyramid's storage keys, so a Pyramid app's sessions look the same here.
FLASH_PREFIX = "_f_"
CSRF_KEY = "_csrft_"


@dataclass(frozen=True, kw_only=True)
class SessionFactory(SessionRules):
    """Everything a request's session needs, shared by all requests."""

    def open(self, cookie_header: str | None) -> Session:
        """The session of a request with this ``Cookie`` header; loads nothing yet."""
        return Session(self, cookie_header)


class MappingOver(MutableMapping[str, Any]):
    """The mapping methods over the dict ``_mapping()`` returns; a set or a delete calls
    ``_written()``. :class:`Session` maps its loaded data, Flask's session a Session."""

    __slots__ = ()

    def _mapping(self) -> MutableMapping[str, Any]:
        raise NotImplementedError

    def _written(self) -> None:
        """A key was set or deleted."""

    def __getitem__(self, key: str) -> Any:
        return self._mapping()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._mapping()[key] = value
        self._written()

    def __delitem__(self, key: str) -> None:
        del self._mapping()[key]
        self._written()

    def __iter__(self) -> Iterator[str]:
        return iter(self._mapping())

    def __len__(self) -> int:
        return len(self._mapping())

    def __contains__(self, key: object) -> bool:
        return key in self._mapping()


class Session(SavePolicy, MappingOver):
    """A dict-like session: Pyramid's ``ISession``, plus ``regenerate`` and ``set_expiry``.

    Loaded on first use. Any change is saved at the end of the request,
    including changes deep inside nested values; no ``save()`` call is needed.
    """

    __slots__ = ("_cookie_header", "_load_error")  # the rest: SavePolicy.__slots__

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
        value = super().__getitem__(key)
        if not isinstance(value, IMMUTABLE) and key not in self._snapshots:
            self._snapshots[key] = self._dumps({key: value})
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise SerializationError(f"session keys must be strings, not {key!r}", repr(key))
        if key in RESERVED_KEYS:
            raise KeyError(f"{key!r} is reserved for the session machinery; choose another key")
        super().__setitem__(key, value)

    def _written(self) -> None:
        self._changed = True

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
