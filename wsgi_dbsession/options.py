"""Every option of the package: its one default, its unit, and its one check.

:class:`Options` is what :class:`~wsgi_dbsession.manager.SessionManager`
takes; ``SessionMiddleware``, the Pyramid factory, the Paste filter and the
Flask extension pass their options through to it, and
:mod:`wsgi_dbsession.settings` reads the types of string settings from it.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
from collections.abc import Sequence
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from sqlalchemy.engine import URL, Engine

from .cookies import SameSite, Secure
from .dialects import user_path
from .exceptions import ConfigurationError
from .store import PRUNE_BATCH_SIZE, Serializer


def option(default: Any, part: str | None = None, keyword: str | None = None) -> Any:
    """An option's field: its default, and the part it configures under which keyword.

    ``part`` is ``store`` (:class:`~wsgi_dbsession.store.SessionStore`), ``cookie``
    (:class:`~wsgi_dbsession.cookies.SessionCookie`), ``session`` (the session
    factory) or ``prune`` (the prune job); ``keyword`` is the part's name for it
    where that is not the option's. :meth:`Options.arguments` hands them over,
    so a new option is a field here and a parameter there, and no one copies it.
    """
    return dataclasses.field(default=default, metadata={"part": part, "keyword": keyword})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    """The options of a session manager, each checked at construction."""

    # -- the manager's own ---------------------------------------------------------
    secret: str | Sequence[str] | None = None  # required: >= 32 chars each; the first signs, all verify
    environ_key: str = "dbsession"  # where the session is put in the WSGI environ
    unavailable_status: int = 503  # HTTP status when the session database is unreachable
    # after an outage hit the session load, unavailable_status replaces the app's own
    # 5xx answer or exception (a framework's error page)
    override_app_errors: bool = True

    # -- the store: the table and its database ---------------------------------------
    url: str | URL | None = option(None, "store")  # SQLAlchemy URL of the session database
    engine: Engine | None = option(None, "store")  # or an Engine you built (then url must be None)
    table_name: str = option("sessions", "store")  # may be "schema.table"
    sid_column: str = option("sid", "store")  # name of the session id column
    schema: str | None = option(None, "store")  # schema of the table, where the database has schemas
    create_table: bool = option(True, "store")  # create the table and its index on first use when missing
    serializer: Serializer | None = option(None, "store")  # dumps/loads to and from JSON text; default json
    user_key: str | None = option(None, "store")  # dotted path of the user id in the data; None: off

    # -- the cookie -----------------------------------------------------------------
    cookie_name: str = option("connect.sid", "cookie", "name")  # express-session's default name
    secure: Secure = option("auto", "cookie")  # True, False, or "auto" (when wsgi.url_scheme is https)
    httponly: bool = option(True, "cookie")  # HttpOnly flag: the cookie is hidden from JavaScript
    samesite: SameSite | None = option("lax", "cookie")  # SameSite attribute; None leaves it out
    domain: str | None = option(None, "cookie")  # Domain attribute; None: the host that answered
    path: str = option("/", "cookie")  # Path attribute
    partitioned: bool = option(False, "cookie")  # CHIPS' Partitioned attribute (cross-site embeds)

    # -- a session's lifetime and size ----------------------------------------------
    max_age: int | None = option(86400, "session")  # seconds a session lives; None: browser-session
    rolling: bool = option(False, "session")  # extend the expiry on every request, not only on writes
    touch_after: int = option(60, "session")  # seconds; with rolling, at most one touch per this interval
    max_size: int | None = option(None, "session")  # bytes; a larger serialized session is an error
    # seconds from a session's creation after which it ends whatever its activity (ASVS V3.3.2)
    absolute_max_age: int | None = option(None, "session")

    # -- the prune job --------------------------------------------------------------
    cleanup_interval: float = option(60, "prune", "interval")  # seconds between prunes; 0 disables
    cleanup_batch_size: int = option(PRUNE_BATCH_SIZE, "prune", "batch_size")  # rows per delete statement

    def __post_init__(self) -> None:
        hints = option_types()
        for field in dataclasses.fields(self):
            _check_type(field.name, getattr(self, field.name), hints[field.name])
        # url and engine together: SessionStore refuses them (it is built from these options).
        _positive("max_age", self.max_age, "seconds, or None for a browser-session cookie")
        _positive("max_size", self.max_size, "bytes, or None for no limit")
        _positive("absolute_max_age", self.absolute_max_age, "seconds, or None for no absolute limit")
        _positive("cleanup_batch_size", self.cleanup_batch_size, "rows")
        if self.touch_after < 0:
            raise ConfigurationError("touch_after must be zero or more seconds")
        if self.cleanup_interval < 0:
            raise ConfigurationError("cleanup_interval must be 0 (disabled) or a number of seconds")
        if not 500 <= self.unavailable_status <= 599:
            raise ConfigurationError("unavailable_status must be a 5xx HTTP status")
        if self.user_key is not None:
            user_path(self.user_key)

    def arguments(self, part: str) -> dict[str, Any]:
        """The keyword arguments these options give a part: ``store``, ``cookie``, ``session``, ``prune``."""
        return {
            field.metadata["keyword"] or field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.metadata.get("part") == part
        }

    @classmethod
    def check(cls, option: str, value: Any) -> Any:
        """``value`` if ``option`` takes it, else the option's own ConfigurationError.

        For an entry point that takes one option its own way (a command-line flag).
        """
        cls.from_keywords({option: value})
        return value

    @classmethod
    def from_keywords(cls, options: dict[str, Any]) -> Options:
        """Options from keyword arguments, naming the nearest option for a misspelt one."""
        return cls(**_known(options))


def _known(options: dict[str, Any]) -> dict[str, Any]:
    for name in options:
        if name not in option_types():
            close = nearest_option(name)
            hint = f"; did you mean {close!r}?" if close else ""
            raise ConfigurationError(f"unknown option {name!r}{hint}")
    return options


def nearest_option(name: str) -> str | None:
    """The option a misspelt ``name`` most likely meant, or None.

    The cookie's attributes have no ``cookie_`` prefix here (``secure``, not
    ``cookie_secure``, which spelling alone would take for ``cookie_name``).
    """
    known = option_types()
    unprefixed = name.removeprefix("session_").removeprefix("cookie_")
    if unprefixed in known:
        return unprefixed
    close = difflib.get_close_matches(name, known, n=1)
    return close[0] if close else None


def _positive(name: str, value: int | None, unit: str) -> None:
    if value is not None and value <= 0:
        raise ConfigurationError(f"{name} must be a positive number of {unit}")


_OPTION_TYPES: dict[str, Any] = {}


def option_types() -> dict[str, Any]:
    """Every option's name and type, in the order :class:`Options` declares them."""
    if not _OPTION_TYPES:
        hints = get_type_hints(Options)
        _OPTION_TYPES.update({option.name: hints[option.name] for option in dataclasses.fields(Options)})
    return _OPTION_TYPES


def option_defaults() -> dict[str, Any]:
    """Every option's default."""
    return {option.name: option.default for option in dataclasses.fields(Options)}


def members(hint: Any) -> list[Any]:
    """A type as a flat list: classes, ``None``'s type, literal values, generic aliases."""
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        return [member for arg in get_args(hint) for member in members(arg)]
    if origin is Literal:
        return list(get_args(hint))
    return [hint]


def _accepts(member: Any, value: Any) -> bool:
    if not isinstance(member, type) and get_origin(member) is None:
        return bool(value == member and type(value) is type(member))  # a literal
    if member is type(None):
        return value is None
    if member is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if member is int:
        return isinstance(value, int) and not isinstance(value, bool)
    origin = get_origin(member)
    if origin is not None:  # Sequence[str]
        return isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value)
    if getattr(member, "_is_protocol", False):
        return all(callable(getattr(value, name, None)) for name in ("dumps", "loads"))
    return isinstance(value, member)


def _check_type(name: str, value: Any, hint: Any) -> None:
    if any(_accepts(member, value) for member in members(hint)):
        return
    wanted = " or ".join(
        repr(member) if get_origin(member) is None and not isinstance(member, type) else _describe(member)
        for member in members(hint)
    )
    hint_text = " (settings from a file or the environment: use wsgi_dbsession.settings.parse_settings)"
    raise ConfigurationError(
        f"{name} = {value!r} is a {type(value).__name__}; expected {wanted}"
        + (hint_text if isinstance(value, str) else "")
    )


def _describe(member: Any) -> str:
    if member is type(None):
        return "None"
    if get_origin(member) is not None:
        return "a list of str"
    return str(getattr(member, "__name__", member))
