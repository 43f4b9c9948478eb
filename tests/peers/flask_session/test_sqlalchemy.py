"""Port of Flask-Session's ``tests/test_sqlalchemy.py``: ``test_default`` and
``test_lifetime`` at 14d2f7cc, ``test_use_signer`` at 450a7c06 (``main``).

Changed, and why:

- the config: ``SQLALCHEMY_DATABASE_URI = "sqlite:///"`` is gone; the
  conftest's ``create_app`` points ``DBSESSION_URL`` at each live database
  (SQLite, PostgreSQL, MariaDB). ``SESSION_TYPE = "sqlalchemy"`` stays: this
  package names it in its warning and ignores it.
- ``setup_sqlalchemy`` empties this package's table (upstream: ``DELETE
  FROM sessions`` through Flask-SQLAlchemy's session). As upstream writes
  ``with a and b and c``, only the request context is entered.
- ``retrieve_stored_session``: Flask-Session's key is ``session:<id>`` and
  its row holds JSON bytes; here the row's key is the bare id, and the
  cookie's value is signed: it reads this package's live row for the id
  behind the key (``SessionStore.get``: ``None`` once expired, as
  Flask-Session's query filters expired rows) and returns its data.
- ``isinstance(flask.session, SqlAlchemySession)`` is ``FlaskSession``.
- ``test_lifetime`` runs: upstream skips it for SQLAlchemy ("TODO FIX").
  It sleeps 5 seconds, so it is marked slow; ``datetime.utcnow``'s
  deprecation warning (Python 3.12) is not the port's to fix.
- ``test_use_signer`` (main) decodes the stored bytes with ``json.loads``;
  here the stored data is already decoded, so that step is gone. Main's
  conftest sets ``SESSION_PERMANENT = False``, so its config does.
"""

from contextlib import contextmanager
from datetime import timedelta

import flask
import pytest

from tests.peers.flask_session.abs_test import ABSTestSession
from tests.peers.flask_session.conftest import unsigned_id
from tests.peers.flask_session.utils import session_permanent, session_refresh_each_request
from wsgi_dbsession.flask import FlaskSession


class TestSQLAlchemy(ABSTestSession):
    """This requires package: sqlalchemy"""

    @contextmanager
    def setup_sqlalchemy(self, app):
        store = app.extensions["dbsession"].store  # changed: this package's table
        store.create_table()
        try:
            store.clear()
            yield
        finally:
            store.clear()

    def retrieve_stored_session(self, key, app):
        # changed: the row of the id behind Flask-Session's "session:<id>" key
        value = key.removeprefix("session:")
        sid = unsigned_id(value) or value  # a cookie's value, or /get-session-id's bare id
        data = app.extensions["dbsession"].store.get(sid)
        return data if data is not None else {}

    @session_permanent
    @session_refresh_each_request
    def test_default(self, app_utils, _session_permanent, _session_refresh_each_request):
        app = app_utils.create_app(
            {
                "SESSION_TYPE": "sqlalchemy",
                "SESSION_PERMANENT": _session_permanent,
                "SESSION_REFRESH_EACH_REQUEST": _session_refresh_each_request,
            }
        )
        with app.app_context() and self.setup_sqlalchemy(app) and app.test_request_context():
            assert isinstance(
                flask.session,
                FlaskSession,
            )
            self._default_test(app_utils, app)

    @pytest.mark.slow
    @pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")
    @session_permanent
    @session_refresh_each_request
    def test_lifetime(self, app_utils, _session_permanent, _session_refresh_each_request):
        app = app_utils.create_app(
            {
                "SESSION_TYPE": "sqlalchemy",
                "SESSION_PERMANENT": _session_permanent,
                "SESSION_REFRESH_EACH_REQUEST": _session_refresh_each_request,
                "PERMANENT_SESSION_LIFETIME": timedelta(seconds=4),
            }
        )
        with app.app_context() and self.setup_sqlalchemy(app) and app.test_request_context():
            assert isinstance(
                flask.session,
                FlaskSession,
            )
            self._test_lifetime(app, _session_permanent)

    def test_use_signer(self, app_utils):
        app = app_utils.create_app(
            {
                "SESSION_TYPE": "sqlalchemy",
                "SESSION_PERMANENT": False,  # changed: main's conftest sets it
            }
        )
        with app.app_context() and self.setup_sqlalchemy(app) and app.test_request_context():
            assert isinstance(
                flask.session,
                FlaskSession,
            )
            app_utils.test_session(app)

            # Check if the session is stored in SQLAlchemy
            cookie = app_utils.test_session_with_cookie(app)
            session_id = cookie.split(";")[0].split("=")[1]
            stored_session = self.retrieve_stored_session(f"session:{session_id}", app)
            assert stored_session.get("value") == "44"
