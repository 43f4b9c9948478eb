"""String settings (ini files, Pyramid and Flask settings) turned into keyword options.

The only place this package parses strings. Which type each option takes is
read from :class:`~wsgi_dbsession.options.Options`, so an option added
there is understood here at once. The rules,
in order:

- a value that is not a string (set from Python code) is kept as it is;
- a word the type lists as a literal (``auto``, ``lax``, ``strict``,
  ``none``) is that literal, case-insensitively;
- an empty value, ``none`` or ``null`` is None where None is allowed;
- ``true``/``yes``/``on``/``1`` and ``false``/``no``/``off``/``0`` are
  booleans; then integers, then numbers;
- a value on several lines is a list, one item a line (``secret``: the first
  line signs, every line verifies); a one-line value is text;
- an option that takes an object (``engine``, ``serializer``) takes a dotted
  name, ``package.module:attribute``, and gets the object it names.
"""

from __future__ import annotations

import collections.abc
import inspect
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any, get_origin

from .exceptions import ConfigurationError
from .options import members as option_members
from .options import nearest_option, option_types

_TRUE = frozenset(("true", "yes", "on", "1"))
_FALSE = frozenset(("false", "no", "off", "0"))
_NONE = frozenset(("", "none", "null"))
_SCALARS = (bool, int, float, str, type(None))


class _Unparsed(Exception):
    """The text is not a value of the type being tried."""


def _bool(text: str) -> bool:
    word = text.lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise _Unparsed


def _lines(text: str) -> list[str]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise _Unparsed  # one line: text, for the option's str member
    return lines


def _number(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise _Unparsed from None

    return parse


def _object(text: str) -> Any:
    try:
        return pkgutil.resolve_name(text)
    except (ImportError, AttributeError, ValueError) as exc:
        raise _Unparsed from exc


# The order in which the members of a union are tried, and how each is described in errors.
_PARSERS: list[tuple[Callable[[Any], bool], Callable[[str], Any], str]] = [
    (lambda member: member is bool, _bool, "true or false"),
    (lambda member: member is int, _number(int), "an integer"),
    (lambda member: member is float, _number(float), "a number"),
    (lambda member: get_origin(member) is collections.abc.Sequence, _lines, "several lines"),
    (lambda member: member is str, str, "text"),
    (
        lambda member: inspect.isclass(member) and member not in _SCALARS,
        _object,
        "a dotted name (package.module:attribute)",
    ),
]


def coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` of the setting ``name`` as the type ``hint`` wants it.

    Raises :class:`ConfigurationError` naming the setting when the text fits
    none of the type's members.
    """
    if not isinstance(value, str):
        return value
    members = option_members(hint)
    text = value.strip()
    word = text.lower()
    if word in [member for member in members if isinstance(member, str)]:
        return word
    if type(None) in members and word in _NONE:
        return None
    wanted = [f"{member!r}" for member in members if isinstance(member, str)]
    for accepts, parse, description in _PARSERS:
        if any(accepts(member) for member in members):
            try:
                return parse(text)
            except _Unparsed:
                wanted.append(description)
    if type(None) in members:
        wanted.append("none")
    raise ConfigurationError(f"{name} = {value!r} is not valid: expected {' or '.join(wanted)}")


def setting_message(message: str, prefix: str) -> str:
    """An option's error as its setting's: ``secret has 8 characters`` → ``dbsession.secret has …``."""
    name, space, rest = message.partition(" ")
    return f"{prefix}{name} {rest}" if space and prefix and name in option_types() else message


def parse_settings(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The keyword options from the settings whose names start with ``prefix``.

    Settings without the prefix are ignored; one with the prefix that names
    no option is an error (a typo would otherwise be silently ignored).
    """
    known = option_types()
    options: dict[str, Any] = {}
    for key, value in settings.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if name not in known:
            close = nearest_option(name)
            hint = f"; did you mean {prefix}{close}?" if close else ""
            raise ConfigurationError(f"unknown setting {key!r}{hint}")
        options[name] = coerce(key, value, known[name])
    return options
