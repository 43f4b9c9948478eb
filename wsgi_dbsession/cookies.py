"""Session ids and the session cookie, in express-session's signed format.

Everything here is pure: no database, no WSGI environ. The value of the
cookie is ``"s:" + sid + "." + signature`` where the signature is the
unpadded standard base64 of HMAC-SHA256(secret, sid), URL-encoded as
JavaScript's ``encodeURIComponent`` does, so a Node app using
express-session with the same secret reads the same cookie.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import secrets as _secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, unquote

from webob.cookies import make_cookie

from .dialects import to_iso_z
from .exceptions import ConfigurationError

SameSite = Literal["lax", "strict", "none"]
Secure = bool | Literal["auto"]

MIN_SECRET_LENGTH = 32
# express-session's uid-safe ids are 32 characters of the base64url alphabet;
# accept any such id from 16 to 255 characters (the column is varchar(255)).
_SID_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,255}")
# encodeURIComponent leaves these unescaped (letters and digits always are).
_URI_COMPONENT_SAFE = "-_.!~*'()"
# A request carrying more same-named cookies than this is not worth more HMACs.
_MAX_CANDIDATES = 4


def generate_sid() -> str:
    """A new session id: 24 random bytes (192 bits) from :mod:`secrets`, base64url."""
    return _secrets.token_urlsafe(24)


def is_valid_sid(sid: str) -> bool:
    """True when ``sid`` has the length and alphabet of an id this package accepts."""
    return _SID_PATTERN.fullmatch(sid) is not None


def _signature(sid: str, secret: bytes) -> str:
    digest = hmac.new(secret, sid.encode("ascii"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii").rstrip("=")


def sign(sid: str, secret: str | bytes) -> str:
    """``s:<sid>.<signature>``, the signed value express-session puts in its cookie."""
    key = secret.encode() if isinstance(secret, str) else secret
    return f"s:{sid}.{_signature(sid, key)}"


def unsign(value: str, secrets: Sequence[bytes]) -> str | None:
    """The session id inside a signed value, or None when no secret verifies it."""
    if not value.startswith("s:"):
        return None
    sid, dot, signature = value[2:].rpartition(".")
    if not dot or not is_valid_sid(sid):
        return None
    for secret in secrets:
        if hmac.compare_digest(_signature(sid, secret), signature):
            return sid
    return None


def encode_value(signed: str) -> str:
    """URL-encode a signed value exactly as ``encodeURIComponent`` does."""
    return quote(signed, safe=_URI_COMPONENT_SAFE)


def parse_secrets(secret: str | Sequence[str] | None) -> tuple[bytes, ...]:
    """Validate the ``secret`` option: the first signs, every one verifies."""
    if secret is None:
        raise ConfigurationError(
            "secret is required: pass secret='…' (at least 32 random characters, "
            "for example from `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    values = [secret] if isinstance(secret, str) else list(secret)
    if not values:
        raise ConfigurationError("secret is an empty list: give at least one secret")
    for position, value in enumerate(values):
        if not isinstance(value, str):
            raise ConfigurationError(f"secret #{position} is not a string")
        if len(value) < MIN_SECRET_LENGTH:
            raise ConfigurationError(
                f"secret #{position} has {len(value)} characters; use at least "
                f"{MIN_SECRET_LENGTH} random characters so the signature cannot be guessed"
            )
    return tuple(value.encode() for value in values)


@dataclass(frozen=True)
class SessionCookie:
    """How the session cookie is named, signed, read and written."""

    name: str
    secrets: tuple[bytes, ...] = field(repr=False)
    path: str = "/"
    domain: str | None = None
    secure: Secure = False
    httponly: bool = True
    samesite: SameSite | None = "lax"

    def read(self, cookie_header: str | None) -> str | None:
        """The verified session id in a ``Cookie`` header, or None. Never raises."""
        if not cookie_header or self.name not in cookie_header:
            return None
        tried = 0
        for part in cookie_header.split(";"):
            name, eq, value = part.partition("=")
            if not eq or name.strip() != self.name:
                continue
            value = value.strip()
            if len(value) > 1 and value[0] == value[-1] == '"':
                value = value[1:-1]
            decoded = _decode_uri_component(value)
            sid = unsign(decoded, self.secrets) if decoded is not None else None
            if sid is not None:
                return sid
            tried += 1
            if tried >= _MAX_CANDIDATES:
                break
        return None

    def is_secure(self, url_scheme: str) -> bool:
        """Whether the cookie gets the Secure flag on a request with this scheme."""
        return url_scheme == "https" if self.secure == "auto" else bool(self.secure)

    def set_header(self, sid: str, max_age: int | None, *, secure: bool) -> tuple[str, str]:
        """A ``Set-Cookie`` header that gives the browser this session id."""
        value = encode_value(sign(sid, self.secrets[0]))
        return self._header(value, max_age, secure)

    def expire_header(self, *, secure: bool) -> tuple[str, str]:
        """A ``Set-Cookie`` header that removes the session cookie from the browser."""
        return self._header(None, 0, secure)

    def express_json(
        self, *, max_age: int | None, expires: dt.datetime, secure: bool, extra: Mapping[str, Any]
    ) -> dict[str, Any]:
        """express-session's ``cookie`` object, as it stores it beside the session data.

        Field order and formats are express-session's: ``originalMaxAge`` in
        milliseconds, ``expires`` as ``Date.toISOString()`` (both null for a
        browser-session cookie), optional fields only when set. ``extra`` are
        fields express-session wrote that this package keeps as they were.
        """
        json: dict[str, Any] = {
            "originalMaxAge": None if max_age is None else max_age * 1000,
            **extra,  # where express-session puts partitioned and priority
            "expires": None if max_age is None else to_iso_z(expires),
        }
        if secure:
            json["secure"] = True
        json["httpOnly"] = self.httponly
        if self.domain is not None:
            json["domain"] = self.domain
        json["path"] = self.path
        if self.samesite is not None:
            json["sameSite"] = self.samesite
        return json

    def _header(self, value: str | None, max_age: int | None, secure: bool) -> tuple[str, str]:
        cookie = make_cookie(
            self.name,
            value,
            max_age=max_age,
            path=self.path,
            domain=self.domain,
            secure=secure,
            httponly=self.httponly,
            samesite=self.samesite,
        )
        return ("Set-Cookie", cookie)


# The cookie-object fields written from this package's settings; any other
# (express-session's ``priority``, ``partitioned``) is kept as stored,
# because express-session builds its Set-Cookie from the stored object.
OWN_COOKIE_FIELDS = frozenset(
    ("originalMaxAge", "expires", "secure", "httpOnly", "domain", "path", "sameSite")
)


def foreign_cookie_fields(cookie_json: Any) -> dict[str, Any]:
    """The fields of a stored cookie object that this package does not write itself."""
    if not isinstance(cookie_json, dict):
        return {}
    return {key: value for key, value in cookie_json.items() if key not in OWN_COOKIE_FIELDS}


def stored_max_age(cookie_json: Any, default: int | None) -> int | None:
    """The lifetime (seconds) recorded in express-session's cookie object, else ``default``."""
    if isinstance(cookie_json, dict) and "originalMaxAge" in cookie_json:
        original = cookie_json["originalMaxAge"]
        if original is None:
            return None
        if isinstance(original, (int, float)) and original > 0:
            return max(1, int(original) // 1000)
    return default


def _decode_uri_component(value: str) -> str | None:
    """``decodeURIComponent``; None where it would throw (bad UTF-8 escapes)."""
    if "%" not in value:
        return value
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError:
        return None
