"""PasteDeploy: ``[filter:dbsession]`` with ``use = egg:wsgi_dbsession``, and the parsing of text settings."""

from __future__ import annotations

import inspect
import json
import textwrap
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import webtest
from paste.deploy import loadapp

from conftest import SECRET, drop_table
from tests.apps import session_app
from tests.webtest_helpers import sid_in
from wsgi_dbsession import ConfigurationError, SessionMiddleware, sign
from wsgi_dbsession.cookies import encode_value
from wsgi_dbsession.options import option_defaults, option_types
from wsgi_dbsession.settings import coerce, parse_settings

OLD_SECRET = "an-older-secret-still-accepted-0123456789"
# Two secrets, one a line: the first signs, the second still verifies.
SECRET_LINES = f"\n{SECRET}\n{OLD_SECRET}"


def app_factory(global_conf: dict[str, str], **local_conf: str) -> Any:
    """The ``[app:…]`` of the test ini files."""
    return session_app


def find_middleware(app: Any) -> SessionMiddleware:
    assert isinstance(app, SessionMiddleware), app
    return app


@pytest.fixture
def load_ini(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], SessionMiddleware]]:
    """Load an ini file as pserve does (``config:`` URI, PasteDeploy), dropping its table afterwards."""
    loaded: list[SessionMiddleware] = []

    def load(settings: dict[str, str]) -> SessionMiddleware:
        # A value with newlines becomes continuation lines, as a list is written in an ini file.
        section = "".join(
            f"{key} = {value.replace(chr(10), chr(10) + '    ')}\n" for key, value in settings.items()
        )
        path = tmp_path / "app.ini"
        path.write_text(
            textwrap.dedent(
                """\
                [pipeline:main]
                pipeline = dbsession app

                [app:app]
                use = call:tests.test_paste:app_factory

                [filter:dbsession]
                use = egg:wsgi_dbsession
                """
            )
            + section
        )
        middleware = find_middleware(loadapp(f"config:{path}"))
        loaded.append(middleware)
        return middleware

    yield load
    for middleware in loaded:
        drop_table(middleware.store.engine, middleware.store.table)
        middleware.close()


def test_ini_pipeline_keeps_the_session_across_requests(
    load_ini: Callable[[dict[str, str]], SessionMiddleware], db_url: str, table_name: str
) -> None:
    middleware = load_ini(
        {"secret": SECRET, "url": db_url, "table_name": table_name, "cleanup_interval": "0"}
    )
    app = webtest.TestApp(middleware)
    first = app.get("/incr")
    assert first.json["data"] == {"count": 1}
    assert app.get("/incr").json["data"] == {"count": 2}
    assert middleware.store.get(sid_in(first))["count"] == 2


def test_every_option_is_read_from_its_text(
    load_ini: Callable[[dict[str, str]], SessionMiddleware], tmp_path: Path
) -> None:
    middleware = load_ini(
        {
            "secret": SECRET_LINES,
            "url": f"sqlite:///{tmp_path}/sessions.sqlite",
            "engine": "",
            "environ_key": "my.session",
            "cookie_name": "app.sid",
            "max_age": "3600",
            "rolling": "yes",
            "touch_after": "30",
            "secure": "true",
            "httponly": "off",
            "samesite": "Strict",
            "domain": "example.org",
            "path": "/app",
            "table_name": "web_sessions",
            "sid_column": "session_id",
            "schema": "",
            "create_table": "false",
            "cleanup_interval": "300",
            "cleanup_batch_size": "50",
            "serializer": "json",
            "max_size": "4096",
            "unavailable_status": "502",
            "override_app_errors": "false",
        }
    )
    cookie, factory, store = middleware.manager.cookie, middleware.manager.factory, middleware.store
    assert cookie.secrets == (SECRET.encode(), OLD_SECRET.encode())
    assert middleware.manager.options.environ_key == "my.session"
    assert (cookie.name, cookie.secure, cookie.httponly, cookie.samesite) == (
        "app.sid",
        True,
        False,
        "strict",
    )
    assert (cookie.domain, cookie.path) == ("example.org", "/app")
    assert (factory.max_age, factory.rolling, factory.touch_after, factory.max_size) == (3600, True, 30, 4096)
    assert (store.table.name, store.table.schema, store.table.primary_key.columns.keys()) == (
        "web_sessions",
        None,
        ["session_id"],
    )
    assert store.serializer is json
    assert middleware.manager.pruner is not None
    assert (middleware.manager.pruner.interval, middleware.manager.pruner.batch_size) == (300, 50)
    options = middleware.manager.options
    assert (options.unavailable_status, options.override_app_errors) == (502, False)
    assert str(store.engine.url) == f"sqlite:///{tmp_path}/sessions.sqlite"


def test_a_cookie_signed_with_a_later_secret_line_is_accepted(
    load_ini: Callable[[dict[str, str]], SessionMiddleware], tmp_path: Path
) -> None:
    middleware = load_ini(
        {"secret": SECRET_LINES, "url": f"sqlite:///{tmp_path}/rotation.sqlite", "cleanup_interval": "0"}
    )
    app = webtest.TestApp(middleware)
    sid = sid_in(app.get("/incr"), SECRET)
    old_cookie = encode_value(sign(sid, OLD_SECRET))
    fresh = webtest.TestApp(middleware, extra_environ={"HTTP_COOKIE": f"connect.sid={old_cookie}"})
    assert fresh.get("/read").json["data"] == {"count": 1}


def test_both_entry_points_build_the_middleware(tmp_path: Path) -> None:
    settings = {"secret": SECRET, "url": f"sqlite:///{tmp_path}/ep.sqlite", "cleanup_interval": "0"}
    (filter_factory,) = entry_points(group="paste.filter_factory", name="main").select(
        module="wsgi_dbsession.paste"
    )
    (filter_app_factory,) = entry_points(group="paste.filter_app_factory", name="main").select(
        module="wsgi_dbsession.paste"
    )
    built = [
        filter_factory.load()({"here": str(tmp_path)}, **settings)(session_app),
        filter_app_factory.load()(session_app, {"here": str(tmp_path)}, **settings),
    ]
    for middleware in built:
        assert webtest.TestApp(middleware).get("/incr").json["data"] == {"count": 1}
        middleware.close()


@pytest.mark.parametrize("name", sorted(option_types()))
def test_each_default_written_as_text_reads_back_as_itself(name: str) -> None:
    default = option_defaults()[name]
    if default is inspect.Parameter.empty or not isinstance(default, (str, int, float, bool, type(None))):
        pytest.fail(f"{name} has no default that an ini file could spell")
    text = "none" if default is None else str(default)  # str(True) is "True": any case is accepted
    assert coerce(name, text, option_types()[name]) == default


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("max_age", " None ", None),
        ("max_age", "", None),
        ("secure", "AUTO", "auto"),
        ("secure", "on", True),
        ("secure", "0", False),
        ("samesite", "none", "none"),  # SameSite=None, the attribute
        ("samesite", "", None),  # no SameSite attribute at all
        ("cleanup_interval", "2.5", 2.5),
        ("secret", "one-line secret with spaces", "one-line secret with spaces"),
        ("url", "postgresql://app@db/app", "postgresql://app@db/app"),
        ("engine", "", None),
        ("max_size", "4096", 4096),
    ],
)
def test_text_is_coerced_by_the_option_type(name: str, text: str, value: Any) -> None:
    assert coerce(name, text, option_types()[name]) == value


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_age": "1h"}, r"max_age = '1h' is not valid: expected an integer or none"),
        ({"rolling": "sometimes"}, r"rolling = 'sometimes' is not valid: expected true or false"),
        ({"secure": "maybe"}, r"expected 'auto' or true or false"),
        ({"samesite": "loose"}, r"expected 'lax' or 'strict' or 'none' or none"),
        (
            {"engine": "no_such_module:engine"},
            r"engine = 'no_such_module:engine' is not valid: expected a dotted",
        ),
        ({"max_agee": "60"}, r"unknown setting 'max_agee'; did you mean max_age\?"),
    ],
)
def test_bad_text_is_an_error_that_names_the_setting(settings: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_settings(settings)


def test_settings_outside_the_prefix_are_ignored_and_objects_kept() -> None:
    serializer = json
    assert parse_settings({"pyramid.reload": "true", "dbsession.serializer": serializer}, "dbsession.") == {
        "serializer": serializer
    }
