"""A Django user logged out everywhere: the Django app's sessions and an Express app's, on one table.

The Django side is examples/django_app served by gunicorn (``SESSION_ENGINE =
"wsgi_dbsession.django"`` behind ``wsgi_dbsession.django.SessionMiddleware``,
``user_key = "_auth_user_id"``); the Express side is tests/node's app
(express-session and connect-session-knex), started as the Node interop tests
start it. One browser's cookie jar serves both apps, as for two apps on one host.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.django_served import DjangoBrowser, DjangoExample
from tests.node_helpers import (  # noqa: F401 - the fixtures `interop` and `node`
    MAX_AGE,
    SECRET_A,
    Interop,
    interop_fixture,
    node_fixture,
)
from wsgi_dbsession import SessionStore

pytestmark = pytest.mark.slow


@pytest.fixture
def apps(interop: Interop, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The Express app and the Django app on the interop table: their base URLs."""
    express = interop.start_node(secrets=(SECRET_A,), max_age_ms=MAX_AGE * 1000)
    django = DjangoExample(
        tmp_path,
        url=interop.url,
        table_name=interop.table_name,
        secret=SECRET_A,
        cookie_age=MAX_AGE,
        DBSESSION_CLEANUP_INTERVAL="0",
    )
    try:
        yield express, django.start()
    finally:
        django.stop()


def test_destroy_user_sessions_ends_a_django_users_sessions_in_django_and_in_express(
    interop: Interop,
    apps: tuple[str, str],
) -> None:
    express, django = apps
    on_django = DjangoBrowser(django)
    assert on_django.log_in()["user"] == "alice"
    # The Django login is the Express app's too: same cookie, same row.
    user_id = on_django.json(express + "/read")["data"]["_auth_user_id"]

    # Another browser: alice logs in on the Express app, which records her Django user id.
    on_express = DjangoBrowser(django)
    on_express.json(express + "/login?user=alice")
    on_express.json(express + "/set?" + urlencode({"key": "_auth_user_id", "value": json.dumps(user_id)}))

    store = SessionStore(url=interop.url, table_name=interop.table_name, user_key="_auth_user_id")
    try:
        assert len(store.user_sessions(user_id)) == 2
        assert on_django.home()["sessions"] == "2"

        # Django's "log out everywhere": get_store().destroy_user_sessions(user.pk).
        assert on_django.post("/logout-everywhere")["user"] == "nobody"
        assert store.user_sessions(user_id) == []
        assert "_auth_user_id" not in on_django.json(express + "/read")["data"]
        assert on_express.json(express + "/read")["data"] == {}
        assert on_express.home()["user"] == "nobody"
    finally:
        store.dispose()
