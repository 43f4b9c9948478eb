"""Port of Flask-Session's ``tests/test_basic.py`` at 14d2f7cc (the same at 450a7c06).

Changed, and why: ``flask_session.Session(app)`` is ``DBSession(app)``.
The scenario holds for another reason: Flask-Session raises ``ValueError``
because no ``SESSION_TYPE`` is set (its null session); this package has
one store and raises ``ConfigurationError`` (a ``ValueError``) because the
14-character key cannot sign a cookie safely (at least 32 are needed).
"""

import flask
import pytest

from wsgi_dbsession.flask import DBSession


def test_null_session() -> None:
    """Invalid session should fail to get/set the flask session"""
    with pytest.raises(ValueError):
        app = flask.Flask(__name__)
        app.secret_key = "alsdkfjaldkjsf"
        DBSession(app)  # changed: flask_session.Session(app)
