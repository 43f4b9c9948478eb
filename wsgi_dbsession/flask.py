"""Flask integration: ``DBSession(app)`` makes ``flask.session`` a wsgi_dbsession session.

The extension installs a :class:`flask.sessions.SessionInterface`, so
``flask.session``, ``flash()``, Flask-Login and Flask-WTF's CSRF protection
all keep their data in the session table. Configuration is Flask's:

- ``DBSESSION_<OPTION>`` keys, one for each option of the package
  (``DBSESSION_URL``, ``DBSESSION_TABLE_NAME``, ``DBSESSION_MAX_AGE``, …),
  read by :func:`wsgi_dbsession.settings.parse_settings`, so text (from
  ``app.config.from_prefixed_env()`` or a file) and Python objects both work;
  an unknown ``DBSESSION_`` key is an error that suggests the nearest name;
- ``SECRET_KEY`` (and ``SECRET_KEY_FALLBACKS``, which still verify) signs
  the cookie when ``DBSESSION_SECRET`` is absent;
- the lifetimes are Flask's: a session is a browser-session cookie until
  ``session.permanent = True`` gives it ``PERMANENT_SESSION_LIFETIME``;
  ``SESSION_REFRESH_EACH_REQUEST`` is the default of ``DBSESSION_ROLLING``;
  Flask-Session's ``SESSION_PERMANENT``, when set, makes every new session
  permanent (or not); Flask-Session's other keys have no meaning here and
  are named in one warning at init, with the ``DBSESSION_`` key replacing each;
- the cookie is Flask's: ``SESSION_COOKIE_NAME`` (``session``),
  ``_DOMAIN``, ``_PATH``, ``_HTTPONLY`` and ``_PARTITIONED`` are the
  defaults of the matching cookie options, and ``_SECURE`` and
  ``_SAMESITE`` too when they differ from Flask's defaults (left there,
  the package's safer ``"auto"`` and ``"lax"`` apply);
- the values are Flask's: the session is stored in Flask's tagged JSON
  (tuples, bytes, datetimes, UUIDs and ``Markup`` come back as they were
  stored); ``DBSESSION_SERIALIZER = "wsgi_dbsession.flask:PLAIN_JSON"``
  stores plain JSON, for sessions shared with Node, Django or WSGI apps.

The session is opened (not read) for each request, read when the app first
touches it, and saved before the response leaves Flask. ``flask dbsession
prune``, ``create-table`` and ``stats`` manage the table. See docs/flask.md.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import re
import secrets
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click
from flask import Flask, Response, current_app
from flask import request as current_request
from flask.cli import AppGroup
from flask.json.tag import TaggedJSONSerializer
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.datastructures import Headers

from .cli import run_command
from .cookies import MIN_SECRET_LENGTH, parse_secrets
from .exceptions import ConfigurationError, SessionError, StoreUnavailable
from .manager import SessionManager
from .middleware import cache_headers
from .options import Options
from .session import MappingOver, Session
from .settings import parse_settings
from .store import JSONSerializer

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

log = logging.getLogger(__name__)

CONFIG_PREFIX = "DBSESSION_"
EXTENSION_KEY = "dbsession"
# Where the request's FlaskSession is kept in the WSGI environ.
ENVIRON_KEY = "wsgi_dbsession.flask"
# Flask-Session's keys that mean nothing here, and what replaces each.
_FLASK_SESSION_KEYS = {
    "SESSION_TYPE": "DBSESSION_URL or DBSESSION_ENGINE (this package is the store)",
    "SESSION_USE_SIGNER": "nothing: the cookie is always signed, with DBSESSION_SECRET or SECRET_KEY",
    "SESSION_KEY_PREFIX": "DBSESSION_TABLE_NAME (a table per app; rows are keyed by the bare id)",
    "SESSION_ID_LENGTH": "nothing: ids are 192 random bits",
    "SESSION_SERIALIZATION_FORMAT": "DBSESSION_SERIALIZER",
    "SESSION_CLEANUP_N_REQUESTS": "DBSESSION_CLEANUP_INTERVAL",
    "SESSION_SQLALCHEMY": "DBSESSION_ENGINE (db.engine)",
    "SESSION_SQLALCHEMY_BIND_KEY": "DBSESSION_ENGINE (db.engines[bind_key])",
    "SESSION_SQLALCHEMY_TABLE": "DBSESSION_TABLE_NAME (a new table: Flask-Session's columns differ)",
    "SESSION_SQLALCHEMY_SCHEMA": "DBSESSION_SCHEMA",
    "SESSION_SQLALCHEMY_SEQUENCE": "nothing: the session id is the key",
}


class TaggedJSON:
    """Flask's tagged JSON, the format of Flask's own session: tuples, bytes,
    datetimes, UUIDs and ``Markup`` come back as they went in.

    Written by the package's strict encoder (compact, NaN refused: the JSON
    column rejects it), the same text with or without an app context. Data
    of plain JSON types only, the common case, skips Flask's tagging walk
    (ten times the encoder's cost); the text is the same either way.
    """

    def __init__(self) -> None:
        self._tags = TaggedJSONSerializer()
        self._json = JSONSerializer()

    def dumps(self, value: Any) -> str:
        return self._json.dumps(value if self._untagged(value) else self._tags.tag(value))

    def loads(self, text: str) -> Any:
        # Every tag is a one-key object whose key starts with a space: without one, no tags.
        return self._json.loads(text) if '{" ' not in text else self._tags.loads(text)

    def _untagged(self, value: Any) -> bool:
        """Whether Flask's tagging would leave ``value`` as it is (exact JSON types, no tag-like dict)."""
        kind = type(value)
        if kind in _PLAIN_SCALARS:
            return True
        if kind is list:
            return all(self._untagged(item) for item in value)
        if kind is dict:
            if len(value) == 1 and next(iter(value)) in self._tags.tags:
                return False
            return all(type(key) is str and self._untagged(item) for key, item in value.items())
        return False


_PLAIN_SCALARS = frozenset((str, int, float, bool, type(None)))


# The Flask adapter's default, and the plain JSON other apps read (``DBSESSION_SERIALIZER``).
TAGGED_JSON = TaggedJSON()
PLAIN_JSON = JSONSerializer()


_UNSET = object()  # a Flask default that leaves the package's own (options.py)


@dataclass(frozen=True)
class _FromFlask:
    """An option's default read from one of Flask's keys, where the app or Flask sets it;
    with ``unless_default``, only where the app moved it from Flask's own default."""

    key: str
    convert: Callable[[Any], Any] = lambda value: value
    unless_default: bool = False

    def __call__(self, app: Flask) -> Any:
        config, defaults = app.config, app.default_config
        if self.key not in config and self.key not in defaults:
            return _UNSET  # a key of a later Flask (SESSION_COOKIE_PARTITIONED: 3.1)
        value = config.get(self.key, defaults.get(self.key))
        if self.unless_default and value == defaults.get(self.key):
            return _UNSET
        return self.convert(value)


def _cookie_path(app: Flask) -> Any:
    path = app.config.get("SESSION_COOKIE_PATH") or app.config.get("APPLICATION_ROOT") or "/"
    return path if path != "/" else _UNSET


# The Flask adapter's defaults, the one place Flask's meaning is mapped: each option no
# DBSESSION_ key sets takes its value from here. The values are read as settings are
# (parse_settings: "Strict" is "strict") and checked by Options, an error naming the
# Flask key; a row of _FromFlask names its key, any other reader is a fixed rule.
FLASK_DEFAULTS: dict[str, Callable[[Flask], Any]] = {
    # Flask's browser-session cookie; Flask-Session's SESSION_PERMANENT = True: every session permanent
    "max_age": lambda app: _permanent_lifetime(app) if app.config.get("SESSION_PERMANENT", False) else None,
    "rolling": _FromFlask("SESSION_REFRESH_EACH_REQUEST", bool),
    "serializer": lambda app: TAGGED_JSON,  # Flask's own session format
    "cookie_name": _FromFlask("SESSION_COOKIE_NAME"),
    "domain": _FromFlask("SESSION_COOKIE_DOMAIN", unless_default=True),  # Flask's None: the package's
    "httponly": _FromFlask("SESSION_COOKIE_HTTPONLY", bool),
    "partitioned": _FromFlask("SESSION_COOKIE_PARTITIONED", bool),
    # Flask's defaults (False, None) are less safe than the package's ("auto", "lax"): left there,
    # the package's apply.
    "secure": _FromFlask("SESSION_COOKIE_SECURE", bool, unless_default=True),
    "samesite": _FromFlask("SESSION_COOKIE_SAMESITE", lambda value: value or None, unless_default=True),
    "path": _cookie_path,  # SESSION_COOKIE_PATH, else APPLICATION_ROOT
}


class DBSession:
    """The Flask extension: ``DBSession(app)``, or ``DBSession()`` then ``init_app(app)``.

    ``regenerate_on_login`` (default True): when Flask-Login logs a user in
    (its ``user_logged_in`` signal), the session gets a new id, so an id
    planted before the login is worthless after it.
    """

    def __init__(self, app: Flask | None = None, *, regenerate_on_login: bool = True) -> None:
        self.regenerate_on_login = regenerate_on_login
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read the app's configuration and install the session interface and the CLI group.

        Raises :class:`ConfigurationError` at once for a bad or unknown setting.
        Without any secret (``SECRET_KEY``, ``DBSESSION_SECRET``) the app starts,
        as with Flask's own session, and each request fails with a
        ``ConfigurationError`` that says so; the ``flask dbsession`` commands work.
        ``app.extensions["dbsession"]`` is then the session manager: its
        ``store`` is the table, and ``close()`` stops the prune job and
        closes the pool at shutdown.
        """
        options = options_from_config(app)
        permanent_lifetime = _permanent_lifetime(app)
        _warn_flask_session_keys(app.config)
        refused = None
        if "secret" not in options:
            # Flask's own session starts without SECRET_KEY and fails when used: so does
            # this one, and the `flask dbsession` commands, which sign nothing, still work.
            refused = ConfigurationError(_UNSIGNED_HINT)
            options["secret"] = secrets.token_urlsafe(32)  # never signs: every request is refused first
        try:
            manager = SessionManager(**options)
        except ConfigurationError as exc:
            raise ConfigurationError(_config_message(str(exc), _option_keys(app.config))) from exc
        interface = DBSessionInterface(manager, permanent_lifetime=permanent_lifetime, refused=refused)
        app.session_interface = interface
        app.extensions[EXTENSION_KEY] = interface.manager
        app.cli.add_command(dbsession_cli)
        handlers = app.error_handler_spec[None][None]
        if not any(cls in handlers for cls in StoreUnavailable.__mro__ if issubclass(cls, SessionError)):
            app.register_error_handler(StoreUnavailable, _answer_outage)
        if self.regenerate_on_login:
            _connect_login_signal(app)


def options_from_config(app: Flask) -> dict[str, Any]:
    """The session manager's keyword options from ``app.config``.

    ``DBSESSION_<OPTION>`` keys first; then, where no ``DBSESSION_`` key
    was given, ``SECRET_KEY`` and ``SECRET_KEY_FALLBACKS`` for ``secret``
    (left out when neither is set) and the Flask adapter's defaults,
    :data:`FLASK_DEFAULTS`.
    """
    config = app.config
    keys = _config_keys(config)
    given = {name: _seconds(config[key]) for name, key in keys.items()}
    if given.get("secret") is None:
        given.pop("secret", None)
    try:
        options = parse_settings(given, "")
    except ConfigurationError as exc:
        raise ConfigurationError(_config_message(str(exc), keys)) from exc
    if "secret" not in options and config.get("SECRET_KEY"):
        options["secret"] = _secrets_from_flask(config)
    for option, value in _flask_defaults(app).items():
        options.setdefault(option, value)
    if options.get("partitioned") and options.get("secure") is False and "partitioned" not in keys:
        raise ConfigurationError(
            f"SESSION_COOKIE_PARTITIONED = True needs a Secure cookie, but {keys['secure']} is False: "
            "browsers refuse a Partitioned cookie without the Secure flag"
        )
    return options


def _config_keys(config: Mapping[str, Any]) -> dict[str, str]:
    """Option name to ``DBSESSION_`` key, for each such key the config has."""
    return {key[len(CONFIG_PREFIX) :].lower(): key for key in config if key.startswith(CONFIG_PREFIX)}


def _option_keys(config: Mapping[str, Any]) -> dict[str, str]:
    """Option name to the key it came from: its ``DBSESSION_`` key, else its Flask key."""
    flask_keys = {option: row.key for option, row in FLASK_DEFAULTS.items() if isinstance(row, _FromFlask)}
    return {**flask_keys, **_config_keys(config)}


def _seconds(value: Any) -> Any:
    """A ``timedelta`` as seconds (Flask configurations like them); anything else unchanged."""
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
        return int(seconds) if seconds.is_integer() else seconds
    return value


def _config_message(message: str, keys: dict[str, str]) -> str:
    """A settings error, with the option names written as the config keys they came from."""
    unknown = re.fullmatch(r"unknown setting '(\w+)'(?:; did you mean (\w+)\?)?", message)
    if unknown:
        hint = f"; did you mean {CONFIG_PREFIX}{unknown[2].upper()}?" if unknown[2] else ""
        return f"unknown setting {keys.get(unknown[1], unknown[1])!r}{hint}"
    name, space, rest = message.partition(" ")
    return f"{keys[name]} {rest}" if space and name in keys else message


_UNSIGNED_HINT = "set SECRET_KEY (or DBSESSION_SECRET): wsgi_dbsession signs the session cookie with it"


def _secrets_from_flask(config: Any) -> list[str]:
    """``[SECRET_KEY, *SECRET_KEY_FALLBACKS]``: the first signs, every one verifies.

    Flask allows bytes keys: they are decoded here. The secrets' own check is
    :func:`~wsgi_dbsession.cookies.parse_secrets`', its message naming the key.
    """
    fallbacks = config.get("SECRET_KEY_FALLBACKS") or []
    names = ["SECRET_KEY", *(f"SECRET_KEY_FALLBACKS[{index}]" for index in range(len(fallbacks)))]
    secrets = []
    for name, given in zip(names, [config["SECRET_KEY"], *fallbacks], strict=True):
        key = given
        if isinstance(given, bytes):
            try:
                key = given.decode("utf-8")
            except UnicodeDecodeError:
                raise ConfigurationError(
                    f"{name} is bytes that are not UTF-8 text; wsgi_dbsession signs its cookie with "
                    "text secrets (as express-session does): set DBSESSION_SECRET to a string of at "
                    f"least {MIN_SECRET_LENGTH} random characters"
                ) from None
        secrets.append(key)
    try:
        parse_secrets(secrets)
    except ConfigurationError as exc:
        message = re.sub(r"secret #(\d+)", lambda found: names[int(found[1])], str(exc))
        raise ConfigurationError(f"{message}, or give the session its own DBSESSION_SECRET") from None
    return secrets


def _flask_defaults(app: Flask) -> dict[str, Any]:
    """The options :data:`FLASK_DEFAULTS` reads from ``app``, each checked as a setting."""
    read = {option: default(app) for option, default in FLASK_DEFAULTS.items()}
    given = {option: value for option, value in read.items() if value is not _UNSET}
    try:
        return parse_settings(given, "")
    except ConfigurationError as exc:
        raise ConfigurationError(_config_message(str(exc), _option_keys({}))) from exc


def _warn_flask_session_keys(config: Mapping[str, Any]) -> None:
    """One warning naming each of Flask-Session's keys the app sets, and what replaces it."""
    found = [f"{key} (use {instead})" for key, instead in _FLASK_SESSION_KEYS.items() if key in config]
    if found:
        log.warning(
            "these Flask-Session settings have no effect with wsgi_dbsession: %s. "
            "SESSION_PERMANENT is honoured (see docs/flask.md)",
            "; ".join(found),
        )


def _permanent_lifetime(app: Flask) -> int:
    seconds = int(app.permanent_session_lifetime.total_seconds())
    if seconds < 1:
        raise ConfigurationError("PERMANENT_SESSION_LIFETIME must be at least one second")
    return seconds


class DBSessionInterface(SessionInterface):
    """Flask's session interface, opening and saving wsgi_dbsession sessions.

    When the app is also wrapped by a :class:`SessionMiddleware` with the
    same ``environ_key``, ``flask.session`` is that middleware's session and
    the middleware saves it.
    """

    def __init__(
        self,
        manager: SessionManager,
        *,
        permanent_lifetime: int = 31 * 86400,
        refused: ConfigurationError | None = None,
    ) -> None:
        self.manager = manager
        self.permanent_lifetime = permanent_lifetime  # seconds
        self.refused = refused  # a configuration every request is refused for (no secret)

    def open_session(self, app: Flask, request: Any) -> FlaskSession:
        if self.refused is not None:
            raise self.refused
        environ = request.environ
        opened = environ.get(ENVIRON_KEY)
        if isinstance(opened, FlaskSession):
            return opened  # the request context was pushed again (stream_with_context, a copy)
        outer = environ.get(self.manager.options.environ_key)
        if isinstance(outer, Session):
            session = FlaskSession(outer, environ, self.permanent_lifetime, owned=False)
        else:
            session = FlaskSession(self.manager.open_session(environ), environ, self.permanent_lifetime)
        environ[ENVIRON_KEY] = session
        return session

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        cookies: list[tuple[str, str]] = []
        if isinstance(session, FlaskSession) and session.saves:
            if session.emptied():
                session.invalidate()  # as Flask and Flask-Session do: the row goes, the cookie expires
            try:
                cookies = self.manager.save_session(session.dbsession, session.environ)
            except StoreUnavailable as exc:
                # An outage while saving is an outage, as when loading: the same answer,
                # given here because Flask would turn an error raised now into its 500.
                session.after_outage()
                _answer_outage_in(response, self.manager, exc)
                return
            except SessionError:
                # Flask answers 500 and calls save_session again for that answer:
                # the stored session stays as it was, and that answer sets no cookie.
                session.saves = False
                raise
        if session.accessed:
            # Vary: Cookie, as Flask does; Cache-Control: private when the cookie is set.
            headers = cache_headers(response.headers.to_wsgi_list(), set_cookie=bool(cookies))
            response.headers.clear()
            response.headers.extend([*headers, *cookies])

    def regenerate(self, session: SessionMixin) -> None:
        """Flask-Session's ``app.session_interface.regenerate(session)``: ``session.regenerate()``."""
        if isinstance(session, FlaskSession):
            session.regenerate()


class FlaskSession(MappingOver, SessionMixin):
    """``flask.session``: a wsgi_dbsession :class:`Session` with Flask's session attributes.

    Reads and writes go to ``dbsession`` (the package's session, also at
    ``environ[environ_key]``), which loads on first use and saves what
    changed, nested changes included. ``permanent`` is whether the cookie
    outlives the browser: setting it True gives the session
    ``PERMANENT_SESSION_LIFETIME``, False makes it a browser-session cookie.
    """

    def __init__(
        self, dbsession: Session, environ: WSGIEnvironment, permanent_lifetime: int, *, owned: bool = True
    ) -> None:
        self.dbsession = dbsession
        self.environ = environ
        self.permanent_lifetime = permanent_lifetime
        self.saves = owned  # False: a wrapping SessionMiddleware saves it
        self._accessed = False
        self._modified = False
        # After the outage answer: an empty stand-in, so after_request hooks run.
        self._stand_in: dict[str, Any] | None = None

    def _session(self) -> Session:
        session = self.dbsession
        if session.load_error is not None and not session.loaded:
            raise session.load_error  # once per request is enough: no second connection attempt
        return session

    def _mapping(self) -> MutableMapping[str, Any]:
        return self._stand_in if self._stand_in is not None else self._session()

    def emptied(self) -> bool:
        """Whether this request emptied a stored session (Flask then deletes the cookie)."""
        session = self.dbsession
        return session.loaded and self._stand_in is None and not session.new and not session and self.modified

    def after_outage(self) -> None:
        """The request is answered with the outage status: from now on the session is empty and unsaved."""
        self._stand_in = {}
        self.saves = False

    # -- the mapping: MappingOver's methods over _mapping() ---------------------------

    def _written(self) -> None:
        self._modified = True

    def __repr__(self) -> str:
        return f"<FlaskSession {self.dbsession!r}>"

    # -- what Flask and its extensions use ------------------------------------------

    @property
    def accessed(self) -> bool:
        """Whether the request used the session (Flask then adds ``Vary: Cookie``)."""
        return self._accessed or self.dbsession.loaded

    @accessed.setter
    def accessed(self, value: bool) -> None:
        self._accessed = value

    @property
    def modified(self) -> bool:
        """Whether the session will be saved: the app changed it, nested changes
        (``session["cart"].append(x)``) included, as Flask means it.

        Setting it True forces a write, as ``session.changed()`` does.
        """
        return self._modified or (self._stand_in is None and self.dbsession.modified)

    @modified.setter
    def modified(self, value: bool) -> None:
        if value and self._stand_in is None:
            self._session().changed()
        self._modified = bool(value)

    @property
    def new(self) -> bool:  # type: ignore[override]
        """True when this request started the session (no stored one was loaded)."""
        return True if self._stand_in is not None else self._session().new

    @property
    def permanent(self) -> bool:
        """Whether the cookie outlives the browser (the session has a lifetime)."""
        return self._stand_in is None and self._session().get_expiry() is not None

    @permanent.setter
    def permanent(self, value: bool) -> None:
        if self._stand_in is not None:
            return
        session = self._session()
        lifetime = self.permanent_lifetime if value else None
        if session.get_expiry() != lifetime:  # setting it every request costs no write
            session.set_expiry(lifetime)
            self._modified = True

    # -- the package's session API ----------------------------------------------------

    @property
    def id(self) -> str:
        """The session id; a new session gets one the first time it is asked."""
        return self._session().id

    @property
    def sid(self) -> str:
        """Flask-Session's name for :attr:`id` (unsigned; the cookie holds it signed)."""
        return self.id

    @property
    def created(self) -> float:
        """When the session was created, in seconds since the epoch."""
        return self._session().created

    @property
    def loaded(self) -> bool:
        """Whether the session was read in this request."""
        return self.dbsession.loaded

    def regenerate(self) -> None:
        """A new id, the same data, the old row deleted: call it at login (DBSession does for Flask-Login)."""
        self._session().regenerate()
        self._modified = True

    def invalidate(self) -> None:
        """Delete the stored session and expire its cookie (logout); the object starts empty."""
        self._session().invalidate()
        self._modified = True

    def set_expiry(self, seconds: int | None) -> None:
        """This session's own lifetime in seconds; None: until the browser closes."""
        self._session().set_expiry(seconds)
        self._modified = True

    def get_expiry(self) -> int | None:
        """This session's lifetime in seconds (None: a browser-session cookie)."""
        return self._session().get_expiry()

    def changed(self) -> None:
        """Mark the session changed, so it is saved even if no change was seen."""
        self.modified = True


def _answer_outage(error: StoreUnavailable) -> Response:
    """The middleware's answer when the session database cannot be reached while a view reads the session."""
    session = current_request.environ.get(ENVIRON_KEY)
    if isinstance(session, FlaskSession):
        session.after_outage()
    response = Response()
    _answer_outage_in(response, _interface().manager, error)
    return response


def _answer_outage_in(response: Response, manager: SessionManager, error: StoreUnavailable) -> None:
    """Make ``response`` the middleware's outage answer (``unavailable_status``, ``Retry-After``…)."""
    status, headers, body = manager.error_page(error)
    response.status = status
    response.headers = Headers(headers)
    response.set_data(body)


def _connect_login_signal(app: Flask) -> None:
    """Regenerate the session id when Flask-Login logs a user in, if Flask-Login is installed."""
    try:
        signals = importlib.import_module("flask_login.signals")
    except ImportError:
        return

    def regenerate(sender: Flask, **extra: Any) -> None:
        session = current_request.environ.get(ENVIRON_KEY)
        if isinstance(session, FlaskSession):
            session.regenerate()

    signals.user_logged_in.connect(regenerate, sender=app, weak=False)


# -- flask dbsession ... ----------------------------------------------------------------

dbsession_cli = AppGroup(
    "dbsession", help="Manage the table of the app's sessions (configured by the DBSESSION_* keys)."
)


def _checked_option(option: str, value: Any) -> Any:
    """A command's flag, checked as its option is (``Options.check``), else click's usage error."""
    if value is None:
        return None
    try:
        return Options.check(option, value)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc)) from None


def _interface() -> DBSessionInterface:
    interface = current_app.session_interface
    if not isinstance(interface, DBSessionInterface):
        raise click.UsageError("this app does not use wsgi_dbsession: call DBSession(app) first")
    return interface


@dbsession_cli.command("prune")
@click.option(
    "--batch-size",
    type=int,
    callback=lambda _ctx, _param, value: _checked_option("cleanup_batch_size", value),
    help="rows per delete statement, each its own transaction (default: DBSESSION_CLEANUP_BATCH_SIZE)",
)
def prune_command(batch_size: int | None) -> None:
    """Delete the expired sessions now (takes the same lock as the background prune)."""
    manager = _interface().manager
    batch_size = batch_size or manager.options.cleanup_batch_size
    raise SystemExit(run_command(manager.store, "prune", batch_size=batch_size))


@dbsession_cli.command("create-table")
def create_table_command() -> None:
    """Create the sessions table and its expiry index when missing."""
    raise SystemExit(run_command(_interface().manager.store, "create-table"))


@dbsession_cli.command("stats")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def stats_command(as_json: bool) -> None:
    """Count the live and the expired sessions."""
    raise SystemExit(run_command(_interface().manager.store, "stats", as_json=as_json))


@dbsession_cli.command("check")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def check_command(as_json: bool) -> None:
    """Check the sessions table, its indexes and the lease table; print the fix of each problem."""
    raise SystemExit(run_command(_interface().manager.store, "check", as_json=as_json))
