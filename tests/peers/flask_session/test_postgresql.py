"""Port of Flask-Session's ``tests/test_postgresql.py`` at 14d2f7cc.

Changed, and why: upstream's ``PostgreSqlSession`` store (a psycopg2 pool
on ``localhost:5433``) is ``DBSession`` on this test's table of each live
database, PostgreSQL among them; ``setup_postgresql`` builds the app
(upstream also makes its pool there) and the conftest's fixture drops the
table (upstream: ``_drop_table()``); ``retrieve_stored_session`` reads this
package's live row for the id behind Flask-Session's ``session:`` key and
returns its data, so the ``json.loads`` of upstream's bytes is gone;
``isinstance(flask.session, PostgreSqlSession)`` is ``FlaskSession``.
"""

from contextlib import contextmanager

import flask

from tests.peers.flask_session.conftest import unsigned_id
from wsgi_dbsession.flask import FlaskSession


class TestPostgreSql:
    """This requires package: sqlalchemy"""

    @contextmanager
    def setup_postgresql(self, app_utils):
        self.app = app_utils.create_app({"SESSION_TYPE": "postgresql"})  # changed: no pool to give

        yield

    def retrieve_stored_session(self, key):
        # changed: this package's row, already decoded
        return self.app.extensions["dbsession"].store.get(unsigned_id(key.removeprefix("session:")))

    def test_postgresql(self, app_utils):
        with self.setup_postgresql(app_utils), self.app.test_request_context():
            assert isinstance(flask.session, FlaskSession)
            app_utils.test_session(self.app)

            # Check if the session is stored in MongoDB
            cookie = app_utils.test_session_with_cookie(self.app)
            session_id = cookie.split(";")[0].split("=")[1]
            stored_session = self.retrieve_stored_session(f"session:{session_id}") or {}  # changed: decoded
            assert stored_session.get("value") == "44"
