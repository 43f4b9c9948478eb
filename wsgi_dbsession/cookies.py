"""Session ids and the session cookie, in express-session's signed format.

Everything here is pure: no database, no WSGI environ. The value of the
cookie is ``"s:" + sid + "." + signature`` where the signature is the
unpadded standard base64 of HMAC-SHA256(secret, sid), URL-encoded as
JavaScript's ``encodeURIComponent`` does, so a Node app using
express-session with the same secret reads the same cookie.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
import re
import secrets as _secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Literal
from urllib.parse import quote, unquote

from .exceptions import ConfigurationError
from .express import CookieAttributes

log = logging.getLogger(__name__)

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
# RFC 6265: a cookie name is a token; attribute values hold no ';' or control characters.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_ATTRIBUTE_VALUE = re.compile(r"[^;\x00-\x1f\x7f]*")
_EPOCH = "Thu, 01 Jan 1970 00:00:00 GMT"


def generate_sid() -> str:
    """A new session id: 24 random bytes (192 bits) from :mod:`secrets`, base64url."""
    return _secrets.token_urlsafe(24)


def is_valid_sid(sid: str) -> bool:
    """True when ``sid`` has the length and alphabet of an id this package accepts."""
    return _SID_PATTERN.fullmatch(sid) is not None


@functools.lru_cache(maxsize=1024)
def _signature(sid: str, secret: bytes) -> str:
    # Cached: a session's cookie is verified on each of its requests and signed
    # again for each response that changes it; HMAC and base64 cost 2-3 µs.
    digest = hmac.digest(secret, sid.encode("ascii"), hashlib.sha256)
    return base64.b64encode(digest).decode("ascii").rstrip("=")


def sign(sid: str, secret: str | bytes) -> str:
    """``s:<sid>.<signature>``, the signed value express-session puts in its cookie."""
    key = secret.encode() if isinstance(secret, str) else secret
    return f"s:{sid}.{_signature(sid, key)}"


def unsign(value: str, secrets: Sequence[bytes]) -> str | None:
    """The session id inside a signed value, or None when no secret verifies it."""
    return _verify(value, secrets)[0]


def _verify(value: str, secrets: Sequence[bytes]) -> tuple[str | None, int]:
    """The session id inside a signed value and the position of the secret that verified it."""
    if not value.startswith("s:"):
        return None, -1
    sid, dot, signature = value[2:].rpartition(".")
    if not dot or not is_valid_sid(sid):
        return None, -1
    for position, secret in enumerate(secrets):
        if hmac.compare_digest(_signature(sid, secret), signature):
            return sid, position
    return None, -1


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
        # One secret is "secret" (an adapter names its setting in its place); a list's are numbered.
        name = "secret" if isinstance(secret, str) else f"secret #{position}"
        if not isinstance(value, str):
            raise ConfigurationError(f"{name} is not a string")
        if len(value) < MIN_SECRET_LENGTH:
            raise ConfigurationError(
                f"{name} has {len(value)} characters; use at least "
                f"{MIN_SECRET_LENGTH} random characters so the signature cannot be guessed"
            )
    return tuple(value.encode() for value in values)


@dataclass(frozen=True)
class SessionCookie:
    """How the session cookie is named, signed, read and written.

    Every attribute is checked here, once: a combination browsers reject
    is a :class:`ConfigurationError` at construction, never a failing request.
    """

    name: str
    secrets: tuple[bytes, ...] = field(repr=False)
    path: str
    domain: str | None
    secure: Secure  # True, False, or "auto": when the request came over https
    httponly: bool
    samesite: SameSite | None
    partitioned: bool = False  # CHIPS: the Partitioned attribute, only on a Secure cookie
    attributes: CookieAttributes = field(init=False, repr=False, compare=False)
    _before_expiry: str = field(init=False, repr=False, compare=False)
    _tails: dict[bool, str] = field(init=False, repr=False, compare=False)  # by the Secure flag

    def __post_init__(self) -> None:
        if not _TOKEN.fullmatch(self.name):
            raise ConfigurationError(
                f"cookie_name {self.name!r} is not a valid cookie name (letters, digits, .-_)"
            )
        for option, value in (("path", self.path), ("domain", self.domain or "")):
            if not _ATTRIBUTE_VALUE.fullmatch(value):
                raise ConfigurationError(f"{option} {value!r} may not hold ';' or control characters")
        if self.samesite not in ("lax", "strict", "none", None):
            raise ConfigurationError('samesite must be "lax", "strict", "none" or None')
        if self.secure not in (True, False, "auto"):
            raise ConfigurationError('secure must be True, False or "auto"')
        _check_name_prefix(self.name, self.secure, self.path, self.domain)
        if self.samesite == "none" and self.secure is False:
            raise ConfigurationError(
                'samesite="none" needs secure=True (or "auto" behind https): browsers refuse '
                "SameSite=None cookies without the Secure flag"
            )
        if self.partitioned and self.secure is False:
            raise ConfigurationError(
                'partitioned=True needs secure=True (or "auto" behind https): browsers refuse '
                "a Partitioned cookie without the Secure flag"
            )
        attributes = CookieAttributes(
            httponly=self.httponly,
            path=self.path,
            domain=self.domain,
            samesite=self.samesite,
            partitioned=self.partitioned,
        )
        object.__setattr__(self, "attributes", attributes)
        # The header's constant parts, built once.
        object.__setattr__(self, "_before_expiry", f"; Domain={self.domain}" if self.domain else "")
        tail = {True: f"; Path={self.path}; secure", False: f"; Path={self.path}"}
        flags = "; HttpOnly" if self.httponly else ""
        same_site = f"; SameSite={self.samesite}" if self.samesite else ""
        # SameSite=None and Partitioned without Secure (secure="auto" on plain http) make
        # browsers drop the cookie: leave them out there, so the browser's defaults apply.
        insecure_same_site = "" if self.samesite == "none" else same_site
        partitioned = "; Partitioned" if self.partitioned else ""
        object.__setattr__(
            self,
            "_tails",
            {
                True: tail[True] + flags + same_site + partitioned,
                False: tail[False] + flags + insecure_same_site,
            },
        )

    def read(self, cookie_header: str | None) -> str | None:
        """The verified session id in a ``Cookie`` header, or None. Never raises."""
        return self.verify(cookie_header)[0]

    def verify(self, cookie_header: str | None) -> tuple[str | None, bool]:
        """The verified session id in a ``Cookie`` header (or None), and whether it is signed
        with an older secret than the first: then the response should sign it again. Never raises.
        """
        if not cookie_header or self.name not in cookie_header:
            return None, False
        tried = 0
        for part in cookie_header.split(";"):
            name, eq, value = part.partition("=")
            if not eq or name.strip() != self.name:
                continue
            value = value.strip()
            if len(value) > 1 and value[0] == value[-1] == '"':
                value = value[1:-1]
            decoded = _decode_uri_component(value)
            sid, position = _verify(decoded, self.secrets) if decoded is not None else (None, -1)
            if sid is not None:
                return sid, position > 0
            tried += 1
            if tried >= _MAX_CANDIDATES:
                break
        if tried:
            # Never the value: it may be another app's credential. Only why it was refused.
            log.debug(
                "a %r cookie was sent but does not verify (another app's cookie, a secret no longer "
                "configured, or a malformed value); the request gets a new session",
                self.name,
            )
        return None, False

    def is_secure(self, url_scheme: str) -> bool:
        """Whether the cookie gets the Secure flag on a request with this scheme."""
        return url_scheme == "https" if self.secure == "auto" else bool(self.secure)

    def set_header(self, sid: str, max_age: int | None, *, secure: bool) -> tuple[str, str]:
        """A ``Set-Cookie`` header giving the browser this session id (``max_age`` None: until it closes)."""
        signed = sign(sid, self.secrets[0])
        # An id of the accepted alphabet escapes to three sequences only: no general encoder needed.
        value = _encode_signed(signed) if is_valid_sid(sid) else encode_value(signed)
        start = f"{self.name}={value}{self._before_expiry}"
        if max_age is None:
            return ("Set-Cookie", f"{start}{self._tails[secure]}")
        expires = _http_date(int(time.time()) + max_age)
        return ("Set-Cookie", f"{start}; expires={expires}; Max-Age={max_age}{self._tails[secure]}")

    def expire_header(self, *, secure: bool) -> tuple[str, str]:
        """A ``Set-Cookie`` header that removes the session cookie from the browser."""
        return (
            "Set-Cookie",
            f"{self.name}={self._before_expiry}; expires={_EPOCH}; Max-Age=0{self._tails[secure]}",
        )


def _check_name_prefix(name: str, secure: Secure, path: str, domain: str | None) -> None:
    """Refuse a ``__Host-`` or ``__Secure-`` name whose attributes break its prefix's rule
    (RFC 6265bis, "Cookie Name Prefixes"): browsers drop such a cookie without a word, so
    every session would be forgotten. Browsers match the prefixes case-insensitively."""
    host = name.lower().startswith("__host-")
    if not host and not name.lower().startswith("__secure-"):
        return
    broken = [] if secure is True else [f"secure={secure!r}"]
    if secure == "auto":
        broken[0] += " (a request over plain http would get no Secure flag)"
    if host and path != "/":
        broken.append(f"path={path!r}")
    if host and domain is not None:
        broken.append(f"domain={domain!r}")
    if broken:
        prefix, rule = (
            ("__Host-", 'secure=True, path="/" and no domain') if host else ("__Secure-", "secure=True")
        )
        raise ConfigurationError(
            f"cookie_name {name!r}: a {prefix} cookie needs {rule}, or browsers drop it and every "
            f"session is forgotten; got {', '.join(broken)}"
        )


def _encode_signed(signed: str) -> str:
    """``encodeURIComponent`` of ``s:<id>.<base64 signature>`` for an id of ``[A-Za-z0-9_-]``."""
    return signed.replace(":", "%3A").replace("+", "%2B").replace("/", "%2F")


@functools.lru_cache(maxsize=8)
def _http_date(seconds: int) -> str:
    # Every cookie set within one second expires at the same second: format it once.
    return formatdate(seconds, usegmt=True)


def _decode_uri_component(value: str) -> str | None:
    """``decodeURIComponent``; None where it would throw (bad UTF-8 escapes)."""
    if "%" not in value:
        return value
    # A signed id escapes only these three: decode them without the general decoder.
    decoded = value.replace("%3A", ":").replace("%2B", "+").replace("%2F", "/")
    if "%" not in decoded:
        return decoded
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError:
        return None
