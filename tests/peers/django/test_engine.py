"""What the engine adds to Django's session API, and what it refuses, with Django's own middleware."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.contrib.sessions.middleware import SessionMiddleware
from django.http import HttpRequest, HttpResponse
from django.test import Client, RequestFactory, override_settings

from tests.peers.django.tables import dbsession
from wsgi_dbsession import django as dbsession_django
from wsgi_dbsession.django import SessionStore, get_store
from wsgi_dbsession.exceptions import SerializationError, SessionTooLarge, StoreUnavailable


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def engine_on(request: pytest.FixtureRequest) -> Iterator[str]:
    with override_settings(DBSESSION=dbsession(str(request.param), cleanup_interval=0)):
        get_store().create_table()  # so that the statements counted are the requests' own
        try:
            yield str(request.param)
        finally:
            store = get_store()
            dbsession_django.close()
            store.table.drop(store.engine, checkfirst=True)
            store.engine.dispose()


def served(view: object, cookie: str | None = None) -> tuple[HttpRequest, HttpResponse]:
    """One request through Django's own SessionMiddleware."""
    request = RequestFactory().get("/")
    if cookie is not None:
        request.COOKIES[settings.SESSION_COOKIE_NAME] = cookie
    response = SessionMiddleware(view)(request)
    return request, response


def sent_during(action: object) -> list[str]:
    sent: list[str] = []
    remove = get_store().on_statement(lambda sql, _params: sent.append(sql))
    try:
        action()  # type: ignore[operator]
    finally:
        remove()
    return sent


def test_a_new_session_is_one_insert_without_an_exists_lookup(engine_on: str) -> None:
    def view(request: HttpRequest) -> HttpResponse:
        request.session["x"] = 1
        return HttpResponse()

    sent = sent_during(lambda: served(view))
    assert len(sent) == 1
    assert sent[0].lstrip().upper().startswith("INSERT")


def test_djangos_middleware_keeps_djangos_cookie_and_the_row_is_express_shaped(engine_on: str) -> None:
    def view(request: HttpRequest) -> HttpResponse:
        request.session["x"] = 1
        return HttpResponse()

    request, response = served(view)
    key = request.session.session_key
    assert response.cookies[settings.SESSION_COOKIE_NAME].value == key
    stored = get_store().load(key)
    assert stored is not None
    row = json.loads(stored.text)
    assert row["cookie"]["originalMaxAge"] == settings.SESSION_COOKIE_AGE * 1000
    assert row["x"] == 1


def test_a_nested_change_is_saved_by_djangos_middleware(engine_on: str) -> None:
    def start(request: HttpRequest) -> HttpResponse:
        request.session["cart"] = ["apple"]
        return HttpResponse()

    def add(request: HttpRequest) -> HttpResponse:
        request.session["cart"].append("pear")
        return HttpResponse()

    first, _ = served(start)
    served(add, first.session.session_key)
    assert SessionStore(first.session.session_key)["cart"] == ["apple", "pear"]


def test_an_unread_session_costs_nothing(engine_on: str) -> None:
    def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse()

    assert sent_during(lambda: served(view, "k" * 32)) == []


def test_a_value_json_cannot_hold_is_an_error_naming_its_key(engine_on: str) -> None:
    session = SessionStore()
    session["when"] = object()
    with pytest.raises(SerializationError, match=r"session\['when'\]"):
        session.save()


@pytest.mark.parametrize("key", ["cookie", "_created"])
def test_the_rows_own_keys_are_refused(engine_on: str, key: str) -> None:
    session = SessionStore()
    session[key] = 1
    with pytest.raises(SerializationError, match="reserved"):
        session.save()


def test_parallel_requests_of_one_session_keep_every_key(engine_on: str) -> None:
    """Eight requests read the session, then each saves its own key at once: none is lost."""
    first = SessionStore()
    first["seed"] = 0
    first.save()
    key = first.session_key
    ready = threading.Barrier(8)
    errors: list[BaseException] = []

    def request(number: int) -> None:
        try:
            session = SessionStore(key)
            assert session["seed"] == 0  # read before any of the others wrote
            ready.wait(timeout=10)
            session[f"k{number}"] = number
            session.save()
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert SessionStore(key).load() == {"seed": 0, **{f"k{number}": number for number in range(8)}}


@override_settings(
    ROOT_URLCONF="tests.peers.django.site",
    MIDDLEWARE=[
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
    ],
)
def test_an_unreachable_database_is_an_error_page_not_a_silent_loss() -> None:
    unreachable = {**dbsession("postgresql"), "url": "postgresql://postgres@127.0.0.1:1/test"}
    with override_settings(DBSESSION=unreachable):
        try:
            client = Client(raise_request_exception=False)
            client.cookies[settings.SESSION_COOKIE_NAME] = "k" * 32
            response = client.get("/whoami")
            assert response.status_code == 500
            assert isinstance(response.exc_info[1], StoreUnavailable)
        finally:
            dbsession_django.close()


def test_a_session_larger_than_max_size_is_refused_before_it_is_written(engine_on: str) -> None:
    with override_settings(DBSESSION={**settings.DBSESSION, "max_size": 200}):
        session = SessionStore()
        session["small"] = "x"
        session.save()
        session["big"] = "x" * 200
        with pytest.raises(SessionTooLarge):
            session.save()
        assert "big" not in SessionStore(session.session_key).load()
