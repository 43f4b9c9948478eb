"""examples/django_app, started as a real process: login, a session across requests, logout, clearsessions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import SECRET, unique_table_name
from tests.django_served import DjangoBrowser, DjangoExample
from wsgi_dbsession import SessionStore

pytestmark = pytest.mark.slow


@pytest.fixture
def example(tmp_path: Path) -> Iterator[tuple[DjangoExample, str]]:
    served = DjangoExample(
        tmp_path,
        url=f"sqlite:///{tmp_path / 'sessions.sqlite'}",
        table_name=unique_table_name(),
        secret=SECRET,
        cookie_age=3600,
        DBSESSION_CLEANUP_INTERVAL="0",  # pruned by manage.py clearsessions, as from cron
    )
    try:
        yield served, served.start()
    finally:
        served.stop()


def test_the_django_example_logs_in_keeps_the_session_and_logs_out(
    example: tuple[DjangoExample, str],
) -> None:
    _, base = example
    browser = DjangoBrowser(base)
    assert browser.home() == {"user": "nobody", "visits": "1", "sessions": "0"}
    assert browser.log_in() == {"user": "alice", "visits": "2", "sessions": "1"}  # the data kept its new id
    assert browser.home()["visits"] == "3"
    cookies = [cookie.value for cookie in browser.jar if cookie.name == "connect.sid"]
    assert len(cookies) == 1
    assert cookies[0].startswith("s%3A")  # the package's signed cookie, as express-session's

    assert browser.post("/logout") == {"user": "nobody", "visits": "1", "sessions": "0"}


def test_manage_py_clearsessions_deletes_the_expired_rows(example: tuple[DjangoExample, str]) -> None:
    served, base = example
    DjangoBrowser(base).home()
    store = SessionStore(url=served.env["DBSESSION_URL"], table_name=served.env["DBSESSION_TABLE_NAME"])
    try:
        yesterday = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
        store.set("expired-session-id-0123456789", {"x": 1}, yesterday)
        assert store.count(expired=True) == 1
        served.manage("clearsessions")
        assert store.count(expired=True) == 0
        assert store.count() == 1  # the live session stays
    finally:
        store.dispose()
