"""A Flask app whose ``flask.session`` lives in the database.

``DBSession(app)`` stores the session; Flask-Login keeps who is logged in
in it (and the session gets a new id at each login), ``flash()`` queues its
messages in it, and Flask-WTF's ``CSRFProtect`` keeps its token in it and
requires that token on every POST.

It needs Flask-Login and Flask-WTF: ``pip install "wsgi_dbsession[flask-example]"``.
Run it with Flask's server or gunicorn (sessions in ``wsgi_dbsession.sqlite``
in the working directory unless ``FLASK_DBSESSION_URL`` says otherwise)::

    flask --app examples/flask_app.py run
    gunicorn --chdir examples --workers 2 flask_app:app
    flask --app examples/flask_app.py dbsession stats

Configuration comes from the environment, Flask's way:
``app.config.from_prefixed_env()`` reads ``FLASK_SECRET_KEY``,
``FLASK_DBSESSION_URL``, ``FLASK_DBSESSION_TABLE_NAME``, … (any
``FLASK_DBSESSION_<OPTION>``). ``WSGI_DBSESSION_SECRET`` is also accepted for
the secret; without either, a random secret is made at each start, which
only suits a single process.
"""

from __future__ import annotations

from typing import Any

from example import secret_from_env
from flask import Flask, flash, redirect, render_template_string, request, session
from flask_login import LoginManager, UserMixin, login_user, logout_user
from flask_wtf.csrf import CSRFProtect
from werkzeug.wrappers import Response

from wsgi_dbsession.flask import DBSession

PAGE = """<!doctype html>
<title>wsgi_dbsession Flask demo</title>
{% for message in get_flashed_messages() %}<p class="flash">{{ message }}</p>
{% endfor %}<p>Visits: {{ session["visits"] }}</p>
{% if current_user.is_authenticated %}<p>Logged in as {{ current_user.id }}.</p>
<form method="post" action="/logout"><button>Log out</button>
{% else %}<p>Not logged in.</p>
<form method="post" action="/login"><input name="user" placeholder="name"> <button>Log in</button>
{% endif %}<input name="csrf_token" type="hidden" value="{{ csrf_token() }}"></form>
"""


class User(UserMixin):
    """Anyone may log in under any name: this is a demo of the session, not of passwords."""

    def __init__(self, name: str) -> None:
        self.id = name


def create_app(**config: Any) -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = secret_from_env()
    app.config.from_prefixed_env()  # FLASK_SECRET_KEY, FLASK_DBSESSION_URL, …
    app.config.update(config)
    DBSession(app)
    login_manager = LoginManager(app)
    login_manager.user_loader(User)
    CSRFProtect(app)  # every POST needs the token; the raw token is kept in the session

    @app.get("/")
    def home() -> str:
        session["visits"] = session.get("visits", 0) + 1
        return render_template_string(PAGE)

    @app.post("/login")
    def login() -> Response:
        name = request.form.get("user", "").strip()[:64]
        if name:
            login_user(User(name))  # DBSession gives the session a new id here
            flash(f"Welcome, {name}!")
        return redirect("/", code=303)

    @app.post("/logout")
    def logout() -> Response:
        logout_user()
        session.invalidate()  # type: ignore[attr-defined]  # the row is deleted and the cookie expired
        flash("You are logged out.")  # kept in the new session that starts now
        return redirect("/", code=303)

    return app


app = create_app()
