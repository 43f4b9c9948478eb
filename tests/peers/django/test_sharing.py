"""The sharing mode: a Django site and another app on one table, one cookie, one login.

The Django site (``site.py``) runs behind ``wsgi_dbsession.django.SessionMiddleware``
and Django's ``AuthenticationMiddleware``. The other app answers the same
routes (``/read``, ``/set``, ``/login``, ``/logout``) two ways: ``plain``,
``tests/apps.py``'s ``session_app`` behind the package's WSGI
``SessionMiddleware`` with the same options, and ``flask``,
``tests/flask_apps.py``'s ``interop_app`` with ``DBSession(app)`` and the
same options as ``DBSESSION_*`` keys. One cookie jar serves both apps, as a
browser's does for two apps on one host. Each test runs on SQLite,
PostgreSQL and MariaDB.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import pytest
import webtest
from django.contrib.auth.models import User
from django.core.handlers.wsgi import WSGIHandler
from django.core.management import call_command
from django.test import override_settings

from tests.apps import session_app
from tests.flask_apps import interop_app
from tests.peers.django.tables import dbsession
from wsgi_dbsession import SessionMiddleware
from wsgi_dbsession import django as dbsession_django
from wsgi_dbsession.cookies import unsign
from wsgi_dbsession.django import SessionStore, get_store
from wsgi_dbsession.prune import LEASE_TABLE_SUFFIX

PASSWORD = "alice's password"
AUTH_BACKEND = "django.contrib.auth.backends.ModelBackend"
SITE = {
    "ROOT_URLCONF": "tests.peers.django.site",
    "MIDDLEWARE": [
        "wsgi_dbsession.django.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
    ],
    "ALLOWED_HOSTS": ["localhost"],
}


@pytest.fixture(scope="module")
def alice() -> User:
    """A Django user, in Django's own database (auth's tables)."""
    call_command("migrate", verbosity=0)
    user, created = User.objects.get_or_create(username="alice")
    if created:
        user.set_password(PASSWORD)
        user.save()
    return user


class Shared:
    """The Django site and the other app on one table, and browsers with one jar for both."""

    def __init__(self, options: dict[str, Any], other: str) -> None:
        self.options = options
        if other == "flask":
            self.flask = interop_app({f"DBSESSION_{name.upper()}": value for name, value in options.items()})
            self.plain: Any = self.flask
            self.close_other = self.flask.extensions["dbsession"].close
        else:
            self.plain = SessionMiddleware(session_app, **options)
            self.close_other = self.plain.close
        self.django = WSGIHandler()

    def browser(self) -> tuple[webtest.TestApp, webtest.TestApp]:
        """A new browser: its view of the Django site and of the plain app, sharing cookies."""
        django_app = webtest.TestApp(self.django)
        plain_app = webtest.TestApp(self.plain)
        plain_app.cookiejar = django_app.cookiejar
        return django_app, plain_app

    def sid(self, app: webtest.TestApp) -> str | None:
        values = [cookie.value for cookie in app.cookiejar if cookie.name == "connect.sid"]
        if not values:
            return None
        return unsign(unquote(values[0]), [self.secret])

    @property
    def secret(self) -> bytes:
        return str(self.options["secret"]).encode()


@pytest.fixture(
    params=itertools.product(["sqlite", "postgresql", "mariadb"], ["plain", "flask"]), ids="-".join
)
def shared(request: pytest.FixtureRequest, alice: User) -> Iterator[Shared]:
    backend, other = request.param
    options = dbsession(backend, user_key="_auth_user_id", cleanup_interval=0)
    with override_settings(DBSESSION=options, **SITE):
        pair = Shared(options, other)
        try:
            yield pair
        finally:
            store = get_store()
            dbsession_django.close()
            pair.close_other()
            lease = store.table.name + LEASE_TABLE_SUFFIX
            store.table.drop(store.engine, checkfirst=True)
            with store.engine.connect() as conn:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {lease}")
            store.engine.dispose()


def log_in_on_django(django_app: webtest.TestApp, user: User) -> Any:
    return django_app.get("/login", {"username": user.username, "password": PASSWORD}).json


def log_in_on_plain(plain_app: webtest.TestApp, user: User) -> None:
    """What another app writes to log a user in for Django: Django's three auth keys."""
    plain_app.get("/login")  # a new session id, as at any login
    for key, value in (
        ("_auth_user_id", str(user.pk)),
        ("_auth_user_backend", AUTH_BACKEND),
        ("_auth_user_hash", user.get_session_auth_hash()),
    ):
        plain_app.get("/set", {"key": key, "value": json.dumps(value)})


def test_a_django_login_is_the_plain_apps_and_its_logout_is_djangos(shared: Shared, alice: User) -> None:
    django_app, plain_app = shared.browser()
    assert log_in_on_django(django_app, alice)["user"] == alice.pk
    assert plain_app.get("/read").json["data"]["_auth_user_id"] == str(alice.pk)

    plain_app.get("/logout")
    assert django_app.get("/whoami").json == {"user": None, "data": {}}


def test_a_plain_app_login_is_djangos_and_djangos_logout_is_the_plain_apps(
    shared: Shared, alice: User
) -> None:
    django_app, plain_app = shared.browser()
    log_in_on_plain(plain_app, alice)
    before = shared.sid(plain_app)
    assert django_app.get("/whoami").json["user"] == alice.pk

    django_app.get("/logout")
    assert plain_app.get("/read").json["data"] == {}
    assert get_store().get(str(before)) is None  # the row went, not only the keys


def test_login_gives_a_new_id_and_the_old_row_goes(shared: Shared, alice: User) -> None:
    django_app, plain_app = shared.browser()
    plain_app.get("/set", {"key": "theme", "value": '"dark"'})
    planted = shared.sid(plain_app)
    assert log_in_on_django(django_app, alice)["data"]["theme"] == "dark"
    assert shared.sid(django_app) not in (None, planted)
    assert get_store().get(str(planted)) is None


def test_the_cookie_is_the_packages_and_the_row_is_express_sessions(shared: Shared, alice: User) -> None:
    django_app, _ = shared.browser()
    response = django_app.get("/login", {"username": alice.username, "password": PASSWORD})
    header = response.headers["Set-Cookie"].strip()  # Django's handler puts a space first
    assert header.startswith("connect.sid=s%3A")
    assert "HttpOnly" in header
    assert "SameSite=lax" in header
    assert response.headers["Cache-Control"] == "private"
    assert response.headers["Vary"] == "Cookie"
    sid = shared.sid(django_app)
    assert sid is not None
    stored = get_store().load(sid)
    assert stored is not None
    row = json.loads(stored.text)
    age = 1209600  # SESSION_COOKIE_AGE, Django's default: two weeks
    assert row["cookie"]["originalMaxAge"] == age * 1000
    assert row["_auth_user_id"] == str(alice.pk)
    lifetime = stored.expires - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(seconds=age - 60) < lifetime <= dt.timedelta(seconds=age)


def test_a_nested_change_made_in_django_is_saved(shared: Shared) -> None:
    django_app, plain_app = shared.browser()
    plain_app.get("/set", {"key": "cart", "value": '["apple"]'})
    assert django_app.get("/cart", {"item": "pear"}).json["data"]["cart"] == ["apple", "pear"]
    assert plain_app.get("/read").json["data"]["cart"] == ["apple", "pear"]


def test_concurrent_writes_from_both_apps_merge_key_by_key(shared: Shared) -> None:
    _, plain_app = shared.browser()
    plain_app.get("/set", {"key": "a", "value": "1"})
    session = SessionStore(shared.sid(plain_app))
    assert session["a"] == 1  # a Django request has read the session...
    plain_app.get("/set", {"key": "b", "value": "2"})  # ...when the plain app writes it
    session["c"] = 3
    session.save()
    assert plain_app.get("/read").json["data"] == {"a": 1, "b": 2, "c": 3}
    assert session["b"] == 2  # the Django side sees the merged row too


def test_a_user_is_logged_out_everywhere_from_django(shared: Shared, alice: User) -> None:
    browsers = [shared.browser() for _ in range(3)]
    log_in_on_django(browsers[0][0], alice)
    log_in_on_django(browsers[1][0], alice)
    log_in_on_plain(browsers[2][1], alice)
    assert len(get_store().user_sessions(alice.pk)) == 3

    assert browsers[0][0].get("/logout-everywhere").json["ended"] == 3
    for django_app, plain_app in browsers:
        assert django_app.get("/whoami").json["user"] is None
        assert "_auth_user_id" not in plain_app.get("/read").json["data"]


def test_a_read_costs_one_statement_and_writes_nothing(shared: Shared, alice: User) -> None:
    django_app, _ = shared.browser()
    log_in_on_django(django_app, alice)
    sent: list[str] = []
    remove = get_store().on_statement(lambda sql, _params: sent.append(sql))
    try:
        response = django_app.get("/whoami")
    finally:
        remove()
    assert response.json["user"] == alice.pk
    assert len(sent) == 1
    assert sent[0].lstrip().upper().startswith("SELECT")
    assert "Set-Cookie" not in response.headers


def test_expire_at_browser_close_gives_a_browser_session_cookie_and_row(shared: Shared, alice: User) -> None:
    django_app, _ = shared.browser()
    with override_settings(SESSION_EXPIRE_AT_BROWSER_CLOSE=True):
        response = django_app.get("/login", {"username": alice.username, "password": PASSWORD})
    assert "Max-Age" not in response.headers["Set-Cookie"]
    assert "expires" not in response.headers["Set-Cookie"]
    stored = get_store().load(str(shared.sid(django_app)))
    assert stored is not None
    assert json.loads(stored.text)["cookie"]["originalMaxAge"] is None  # express-session's browser session


def test_save_every_request_renews_the_cookie_and_the_rows_expiry(shared: Shared, alice: User) -> None:
    django_app, _ = shared.browser()
    log_in_on_django(django_app, alice)
    sid = str(shared.sid(django_app))
    get_store().touch(sid, dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=60))
    with override_settings(SESSION_SAVE_EVERY_REQUEST=True):
        response = django_app.get("/whoami")
    assert "Max-Age=1209600" in response.headers["Set-Cookie"]
    stored = get_store().load(sid)
    assert stored is not None
    assert stored.expires - dt.datetime.now(dt.timezone.utc) > dt.timedelta(days=13)
