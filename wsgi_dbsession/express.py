"""express-session's stored record: the session JSON a Node app and this package share.

A row's ``sess`` column holds the app's keys beside two of the machinery's:
express-session's ``cookie`` object (which express-session needs to read the
row) and ``_created``, the creation time in epoch seconds. This module is the
one place that knows that shape; :class:`Record` is a loaded row as a value.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

UTC = dt.timezone.utc

COOKIE_KEY = "cookie"
CREATED_KEY = "_created"
RESERVED_KEYS = frozenset((COOKIE_KEY, CREATED_KEY))
# How long the row of a browser-session cookie (max_age=None) lives without
# activity: connect-session-knex's one day.
BROWSER_SESSION_ROW_LIFETIME = 86400  # seconds

# The cookie-object fields written from this package's settings; any other
# (express-session's ``priority``, ``partitioned``) is kept as stored,
# because express-session builds its Set-Cookie from the stored object.
# ``partitioned`` is also written, as true, when the ``partitioned`` option is on.
OWN_COOKIE_FIELDS = frozenset(
    ("originalMaxAge", "expires", "secure", "httpOnly", "domain", "path", "sameSite")
)


def to_iso_z(value: dt.datetime) -> str:
    """JavaScript's ``Date.toISOString()``: UTC, milliseconds, ``Z``."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    # Formatted by hand: twice as fast as isoformat(), and called on every statement.
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (  # noqa: UP031
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond // 1000,
    )


def from_iso(text: str) -> dt.datetime:
    """Parse the ISO text of ``Date.toISOString()`` (or Python's) as aware UTC."""
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T"))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


@dataclass(frozen=True)
class CookieAttributes:
    """The cookie settings express-session records in its ``cookie`` object."""

    httponly: bool
    path: str
    domain: str | None
    samesite: str | None
    partitioned: bool = False


@dataclass(frozen=True)
class Record:
    """One session as stored: the app's data and the machinery's fields around it.

    ``text`` is the exact stored JSON (compare-and-set compares it);
    ``max_age`` is the session's own lifetime in seconds (None: a
    browser-session cookie); ``cookie_extra`` are cookie-object fields
    express-session wrote that this package keeps as they were.
    """

    data: dict[str, Any]
    created: float  # seconds since the epoch
    max_age: int | None
    cookie_extra: Mapping[str, Any] = field(default_factory=dict)
    # False for a row without ``_created`` (written by express-session): ``created``
    # is then the time this package loaded it, stored at its next write.
    created_stored: bool = True

    def lifetime(self) -> int:
        """Seconds the row lives from its last write."""
        return self.max_age if self.max_age is not None else BROWSER_SESSION_ROW_LIFETIME

    def expiry(self, now: dt.datetime, absolute_max_age: int | None) -> dt.datetime:
        """The row's expiry when written at ``now``: its lifetime from now, never past
        ``created + absolute_max_age`` (seconds), so the ordinary prune removes a
        session the absolute limit ended."""
        expires = now + dt.timedelta(seconds=self.lifetime())
        if absolute_max_age is None:
            return expires
        return min(expires, dt.datetime.fromtimestamp(self.created + absolute_max_age, UTC))

    def ended(self, now: dt.datetime, absolute_max_age: int | None) -> bool:
        """Whether the absolute lifetime (seconds from ``created``; None: none) is over."""
        return absolute_max_age is not None and now.timestamp() >= self.created + absolute_max_age

    def to_json(
        self, data: Mapping[str, Any], *, expires: dt.datetime, secure: bool, cookie: CookieAttributes
    ) -> dict[str, Any]:
        """The object to serialize for ``data``: express's cookie object first, then ``_created``."""
        return {
            COOKIE_KEY: self.cookie_json(expires=expires, secure=secure, cookie=cookie),
            CREATED_KEY: self.created,
            **data,
        }

    def cookie_json(self, *, expires: dt.datetime, secure: bool, cookie: CookieAttributes) -> dict[str, Any]:
        """express-session's ``cookie`` object, its field order and formats.

        ``originalMaxAge`` in milliseconds, ``expires`` as
        ``Date.toISOString()`` (both null for a browser-session cookie),
        optional fields only when set.
        """
        json: dict[str, Any] = {
            "originalMaxAge": None if self.max_age is None else self.max_age * 1000,
            **self.cookie_extra,  # where express-session puts partitioned and priority
        }
        if cookie.partitioned and secure:  # off: a Node app's own value stays as it stored it
            json["partitioned"] = True
        json["expires"] = None if self.max_age is None else to_iso_z(expires)
        if secure:
            json["secure"] = True
        json["httpOnly"] = cookie.httponly
        if cookie.domain is not None:
            json["domain"] = cookie.domain
        json["path"] = cookie.path
        if cookie.samesite is not None:
            json["sameSite"] = cookie.samesite
        return json


def decode(payload: Any, default_max_age: int | None, now: dt.datetime) -> Record | None:
    """The record in a parsed ``sess`` value; None when it is not a session object."""
    if not isinstance(payload, dict):
        return None
    data = dict(payload)
    cookie = data.pop(COOKIE_KEY, None)
    created = data.pop(CREATED_KEY, None)
    stored = isinstance(created, (int, float)) and not isinstance(created, bool)
    return Record(
        data=data,
        created=float(created) if stored else now.timestamp(),
        max_age=_stored_max_age(cookie, default_max_age),
        cookie_extra=_foreign_cookie_fields(cookie),
        created_stored=stored,
    )


def strip_reserved(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` without the machinery's keys (the app's data of a stored record)."""
    return {key: value for key, value in payload.items() if key not in RESERVED_KEYS}


def _foreign_cookie_fields(cookie_json: Any) -> dict[str, Any]:
    if not isinstance(cookie_json, dict) or cookie_json.keys() <= OWN_COOKIE_FIELDS:
        return {}  # the common case, tested in C
    return {key: value for key, value in cookie_json.items() if key not in OWN_COOKIE_FIELDS}


def _stored_max_age(cookie_json: Any, default: int | None) -> int | None:
    if isinstance(cookie_json, dict) and "originalMaxAge" in cookie_json:
        original = cookie_json["originalMaxAge"]
        if original is None:
            return None
        if isinstance(original, (int, float)) and original > 0:
            # To the nearest second: express-session records its lifetime a few
            # milliseconds short (the clock is read twice), 3599999 for an hour.
            return max(1, int(original + 500) // 1000)
    return default
