"""Port of Flask-Session's ``tests/conftest.py`` at 14d2f7cc.

Changed, and why:

- ``flask_session.Session(app)`` is ``DBSession(app)``, on this test's table
  of the backend under test (the ``db_url`` and ``table_name`` fixtures of
  the project's conftest): ``create_app`` adds ``SECRET_KEY`` (this package
  always signs its cookie), ``DBSESSION_URL``, ``DBSESSION_TABLE_NAME`` and
  ``DBSESSION_CLEANUP_INTERVAL = 0`` to the config; the fixture closes the
  apps and drops the table afterwards (upstream's ``sys.path`` line, for
  its ``src`` layout, is gone).
- ``test_session_with_cookie`` compares the cookie's *unsigned* id with
  ``/get-session-id`` (upstream compares the raw value: its cookie is
  unsigned unless ``SESSION_USE_SIGNER``; this one is express-session's
  signed ``s:<id>.<signature>``, URL-encoded).

Everything else (the routes, ``SESSION_SERIALIZATION_FORMAT = "json"``,
the requests and the assertions) is upstream's.
"""

from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import flask
import pytest

from conftest import SECRET, drop_table
from wsgi_dbsession.cookies import unsign
from wsgi_dbsession.flask import DBSession


def unsigned_id(cookie_value: str) -> str | None:
    """The session id in this package's cookie value (None when it does not verify)."""
    return unsign(unquote(cookie_value), [SECRET.encode()])


@pytest.fixture(scope="function")
def app_utils(db_url: str, table_name: str) -> Iterator[Any]:
    apps: list[flask.Flask] = []

    class Utils:
        def create_app(self, config_dict=None):
            app = flask.Flask(__name__)
            app.config.update(  # changed: this package's setup
                SECRET_KEY=SECRET,
                DBSESSION_URL=db_url,
                DBSESSION_TABLE_NAME=table_name,
                DBSESSION_CLEANUP_INTERVAL=0,
            )
            if config_dict:
                app.config.update(config_dict)
            app.config["SESSION_SERIALIZATION_FORMAT"] = "json"
            # app.config["SESSION_PERMANENT"] = False

            @app.route("/", methods=["GET"])
            def app_hello():
                return "hello world"

            @app.route("/set", methods=["POST"])
            def app_set():
                flask.session["value"] = flask.request.form["value"]
                return "value set"

            @app.route("/modify", methods=["POST"])
            def app_modify():
                flask.session["value"] = flask.request.form["value"]
                return "value set"

            @app.route("/delete", methods=["POST"])
            def app_del():
                del flask.session["value"]
                return "value deleted"

            @app.route("/regenerate", methods=["POST"])
            def app_regenerate():
                app.session_interface.regenerate(flask.session)
                return "value regenerated"

            @app.route("/get")
            def app_get():
                return flask.session.get("value", "no value set")

            @app.route("/get-session-id")
            def app_get_session():
                return flask.session.sid

            DBSession(app)  # changed: flask_session.Session(app)
            apps.append(app)
            return app

        def test_session(self, app):
            client = app.test_client()

            # Check no value is set from previous tests
            assert client.get("/get").data not in [b"42", b"43", b"44"]

            # Check if the Vary header is not set
            rv = client.get("/")
            assert "Vary" not in rv.headers
            assert client.get("/get-session-id").data != client.get("/get-session-id").data

            # Set a value and check it

            assert client.post("/set", data={"value": "42"}).data == b"value set"
            assert client.get("/get").data == b"42"

            # Check if the Vary header is set
            rv = client.get("/get")
            assert rv.headers["Vary"] == "Cookie"
            assert client.get("/get-session-id").data == client.get("/get-session-id").data

            # Modify and delete the value
            assert client.post("/modify", data={"value": "43"}).data == b"value set"
            assert client.get("/get").data == b"43"
            assert client.post("/delete").data == b"value deleted"
            assert client.get("/get").data == b"no value set"

        def test_regenerate_session(self, app):
            client = app.test_client()
            assert client.get("/get-session-id").data != client.get("/get-session-id").data
            assert client.post("/set", data={"value": "42"}).data == b"value set"
            assert client.get("/get").data == b"42"
            assert client.get("/get-session-id").data == client.get("/get-session-id").data
            original = client.get("/get-session-id").data
            rg = client.post("/regenerate").data  # noqa: F841 (upstream's unused name)

            assert client.get("/get-session-id").data != original

        def test_session_with_cookie(self, app):
            client = app.test_client()

            # Access cookies from the response to cross check with the stored session
            response = client.post("/set", data={"value": "44"})
            session_cookie = None
            for cookie in response.headers.getlist("Set-Cookie"):
                if app.config["SESSION_COOKIE_NAME"] + "=" in cookie:
                    session_cookie = cookie
                    break
            # changed: the unsigned id of the cookie's value, not the value itself
            assert unsigned_id(
                session_cookie.split("; ")[0].replace(app.config["SESSION_COOKIE_NAME"] + "=", "")
            ) == client.get("/get-session-id").data.decode("utf-8")
            assert session_cookie is not None, "Session cookie was not set."
            return session_cookie

    yield Utils()
    for app in apps:  # changed: this package's teardown
        manager = app.extensions["dbsession"]
        drop_table(manager.store.engine, manager.store.table)
        manager.close()
