"""Session ids and the session cookie, in express-session's signed format.

Everything here is pure: no database, no WSGI environ. The value of the
cookie is ``"s:" + sid + "." + signature`` where the signature is the
unpadded standard base64 of HMAC-SHA256(secret, sid), URL-encoded as
JavaScript's ``encodeURIComponent`` does, so a Node app using
express-session with the same secret reads the same cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets as _secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, unquote

from webob.cookies import make_cookie

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


def _decode_uri_component(value: str) -> str | None:
    """``decodeURIComponent``; None where it would throw (bad UTF-8 escapes)."""
    if "%" not in value:
        return value
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError:
        return None
