"""Every option has one default and one check, whichever adapter reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyramid.config import Configurator
from pyramid.interfaces import ISessionFactory

from conftest import SECRET
from wsgi_dbsession import ConfigurationError, Options, SessionMiddleware
from wsgi_dbsession.flask import DBSession
from wsgi_dbsession.manager import SessionManager
from wsgi_dbsession.options import option_defaults
from wsgi_dbsession.paste import filter_app_factory
from wsgi_dbsession.pyramid import DBSessionFactory, session_factory_from_settings


def no_app(environ: object, start_response: object) -> list[bytes]:
    return []


def resolved(manager: SessionManager) -> dict[str, Any]:
    """What a manager ended up with for every option, as it uses them."""
    return {
        name: getattr(manager.options, name) for name in option_defaults() if name not in ("secret", "url")
    }


def test_the_middleware_pyramid_paste_and_flask_resolve_the_same_defaults(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.sqlite"
    middleware = SessionMiddleware(no_app, secret=SECRET, url=url)
    pyramid = session_factory_from_settings({"dbsession.secret": SECRET, "dbsession.url": url})
    paste = filter_app_factory(no_app, {}, secret=SECRET, url=url)
    config = Configurator(settings={"dbsession.secret": SECRET, "dbsession.url": url})
    config.include("wsgi_dbsession.pyramid")
    config.commit()
    included = config.registry.queryUtility(ISessionFactory)
    managers = [middleware.manager, pyramid.manager, paste.manager, included.manager]
    try:
        expected = resolved(middleware.manager)
        assert expected == {name: value for name, value in option_defaults().items() if name in expected}
        for manager in managers[1:]:
            assert resolved(manager) == expected
    finally:
        for manager in managers:
            manager.close()
    assert isinstance(pyramid, DBSessionFactory)


def test_flask_differs_from_the_defaults_only_where_its_docs_say(tmp_path: Path) -> None:
    flask = pytest.importorskip("flask")
    app = flask.Flask(__name__)
    app.config.update(SECRET_KEY=SECRET, DBSESSION_URL=f"sqlite:///{tmp_path}/s.sqlite")
    extension = DBSession(app)
    manager = app.extensions["dbsession"]
    try:
        differing = {name for name, value in resolved(manager).items() if value != option_defaults()[name]}
        # docs/flask.md: browser-session cookies unless session.permanent,
        # SESSION_REFRESH_EACH_REQUEST (True by default) is `rolling`, Flask's
        # cookie name (`session`) and Flask's tagged JSON.
        assert differing == {"max_age", "rolling", "cookie_name", "serializer"}
    finally:
        manager.close()
    assert extension is not None


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("max_age", "3600", "max_age = '3600' is a str"),
        ("max_age", 0, "max_age must be a positive number of seconds"),
        ("cleanup_batch_size", 0, "cleanup_batch_size must be a positive number of rows"),
        ("samesite", "loose", "samesite"),
        ("unavailable_status", 404, "unavailable_status must be a 5xx"),
        ("rolling", "yes", "rolling = 'yes' is a str"),
    ],
)
def test_a_bad_option_is_refused_once_with_the_same_message_everywhere(
    option: str, value: Any, message: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/s.sqlite"
    with pytest.raises(ConfigurationError, match=message):
        Options(secret=SECRET, url=url, **{option: value})
    with pytest.raises(ConfigurationError, match=message):
        SessionMiddleware(no_app, secret=SECRET, url=url, **{option: value})
    with pytest.raises(ConfigurationError, match=message):
        DBSessionFactory(secret=SECRET, url=url, **{option: value})


def test_a_misspelt_option_names_the_nearest_one() -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'max_age'"):
        SessionMiddleware(no_app, secret=SECRET, max_agee=10)
