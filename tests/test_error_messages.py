"""Messages that send the user to the right place (issue 23, item 6)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest
from flask import Flask
from pyramid.config import Configurator

from conftest import SECRET
from tests.webtest_helpers import MakeApp
from wsgi_dbsession import ConfigurationError, SessionMiddleware
from wsgi_dbsession.flask import DBSession


def no_app(environ: Any, start_response: Any) -> list[bytes]:
    return []


def test_a_single_short_secret_is_the_secret_not_secret_number_zero() -> None:
    with pytest.raises(ConfigurationError, match=r"^secret has 5 characters; use at least 32") as caught:
        SessionMiddleware(no_app, secret="short")
    assert "#" not in str(caught.value)
    with pytest.raises(ConfigurationError, match=r"^secret #1 has 5 characters"):
        SessionMiddleware(no_app, secret=[SECRET, "short"])


def test_pyramid_names_its_setting_in_an_option_s_error() -> None:
    settings = {"dbsession.secret": "short", "dbsession.cleanup_interval": "0"}
    with (
        pytest.raises(ConfigurationError, match=r"^dbsession\.secret has 5 characters"),
        Configurator(settings=settings) as config,
    ):
        config.include("wsgi_dbsession.pyramid")


def test_flask_names_secret_key_for_a_short_key() -> None:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="short", DBSESSION_URL="sqlite://", DBSESSION_CLEANUP_INTERVAL=0)
    with pytest.raises(ConfigurationError, match=r"^SECRET_KEY has 5 characters"):
        DBSession(app)


@pytest.mark.parametrize("spelling", ["cookie_secure", "cookie_samesite", "session_cookie_httponly"])
def test_a_cookie_prefixed_option_suggests_the_option_without_the_prefix(spelling: str) -> None:
    meant = spelling.rsplit("_", 1)[1]
    with pytest.raises(ConfigurationError, match=rf"did you mean '{meant}'\?"):
        SessionMiddleware(no_app, secret=SECRET, **{spelling: True})
    settings = {"dbsession.secret": SECRET, f"dbsession.{spelling}": "true"}
    with (
        pytest.raises(ConfigurationError, match=rf"did you mean dbsession\.{meant}\?"),
        Configurator(settings=settings) as config,
    ):
        config.include("wsgi_dbsession.pyramid")


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (
            {"ok": [1, 2], "when": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)},
            "['a']['when'] holds a datetime",
        ),
        ([{"sku": 1}, {"sku": 2, "added": {1.5}}], "['a'][1]['added'] holds a set"),
        (object(), "['a'] holds a object"),
    ],
)
def test_a_value_that_cannot_be_stored_is_named_by_its_path_and_type(
    make_app: MakeApp, caplog: pytest.LogCaptureFixture, value: Any, named: str
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["dbsession"]["a"] = value
        start_response("200 OK", [])
        return [b""]

    client, _ = make_app(app)
    with caplog.at_level(logging.ERROR, logger="wsgi_dbsession"):
        client.get("/", status=500)
    (record,) = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert record.exc_info is not None
    assert str(record.exc_info[1]).startswith(f"session{named} that the session serializer cannot store")
