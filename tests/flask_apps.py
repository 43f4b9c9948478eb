"""Flask apps the tests drive: one with Flask-Login and Flask-WTF, one shaped like tests/node/server.js."""

from __future__ import annotations

import json
from typing import Any

from flask import Flask, flash, get_flashed_messages, request, session
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from flask_wtf.csrf import CSRFProtect, generate_csrf

from wsgi_dbsession.flask import PLAIN_JSON, DBSession


class User(UserMixin):
    def __init__(self, name: str) -> None:
        self.id = name


def build_app(config: dict[str, Any], *, login: bool = True, csrf: bool = True) -> Flask:
    """A Flask app on wsgi_dbsession; with Flask-Login and CSRFProtect unless told otherwise."""
    app = Flask(__name__)
    app.config.update(config)
    DBSession(app)
    if login:
        LoginManager(app).user_loader(User)
    if csrf:
        CSRFProtect(app)

    @app.get("/plain")
    def plain() -> str:
        return "plain"

    @app.get("/incr")
    def incr() -> dict[str, Any]:
        session["n"] = session.get("n", 0) + 1
        return {"n": session["n"]}

    @app.get("/nested")
    def nested() -> dict[str, Any]:
        session.setdefault("cart", []).append(request.args["item"])
        return {"cart": session["cart"]}

    @app.get("/forget/<key>")
    def forget(key: str) -> str:
        del session[key]
        return "forgotten"

    @app.get("/clear")
    def clear() -> str:
        session.clear()
        return "cleared"

    @app.get("/flags")
    def flags() -> dict[str, Any]:
        """Flask's session flags before and after what ``?do=`` asks: read, nested, id or nothing."""
        before = {"accessed": session.accessed, "modified": session.modified}
        if request.args.get("do") == "read":
            session.get("cart")
        elif request.args.get("do") == "nested":
            session["cart"].append("more")
        elif request.args.get("do") == "id":
            assert session.sid  # type: ignore[attr-defined]
        after = {"accessed": session.accessed, "modified": session.modified, "new": session.new}
        return {"before": before, "after": after}

    @app.get("/state")
    def state() -> dict[str, Any]:
        return {"data": dict(session), "permanent": session.permanent, "new": session.new}

    @app.get("/permanent/<int:on>")
    def permanent(on: int) -> dict[str, Any]:
        session.permanent = bool(on)
        return {"permanent": session.permanent}

    @app.get("/flash")
    def flash_message() -> str:
        flash(request.args["message"], "info")
        return "flashed"

    @app.get("/messages")
    def messages() -> dict[str, Any]:
        return {"messages": get_flashed_messages(with_categories=True)}

    @app.get("/csrf")
    def csrf_token() -> dict[str, Any]:
        return {"token": generate_csrf()}

    @app.post("/submit")
    def submit() -> str:
        return "accepted"

    @app.post("/login")
    def login() -> dict[str, Any]:
        login_user(User(request.form["user"]))
        return {"user": current_user.get_id()}

    @app.post("/logout")
    def logout() -> dict[str, Any]:
        logout_user()
        return {"user": None}

    @app.get("/me")
    def me() -> dict[str, Any]:
        return {"user": current_user.get_id() if current_user.is_authenticated else None}

    @app.get("/unsavable")
    def unsavable() -> str:
        session["when"] = object()
        return "saved?"

    @app.get("/seen")
    def seen() -> dict[str, Any]:
        seen_sessions.append((session._get_current_object(), request.environ.get("dbsession")))  # type: ignore[attr-defined]
        return {}

    seen_sessions: list[Any] = []
    app.config["SEEN_SESSIONS"] = seen_sessions
    return app


def interop_app(config: dict[str, Any]) -> Flask:
    """The routes of tests/node/server.js, on ``flask.session``: each answers with the session as JSON.

    Set up for sharing as docs/flask.md says: express-session's cookie name and plain JSON.
    """
    app = Flask(__name__)
    app.config.update({"DBSESSION_COOKIE_NAME": "connect.sid", "DBSESSION_SERIALIZER": PLAIN_JSON, **config})
    DBSession(app)

    def describe() -> dict[str, Any]:
        return {"data": dict(session), "permanent": session.permanent}

    @app.get("/read")
    def read() -> dict[str, Any]:
        return describe()

    @app.get("/incr")
    def incr() -> dict[str, Any]:
        session["count"] = session.get("count", 0) + 1
        return describe()

    @app.get("/set")
    def set_value() -> dict[str, Any]:
        session[request.args["key"]] = json.loads(request.args["value"])
        return describe()

    @app.get("/login")
    def login() -> dict[str, Any]:
        session.regenerate()  # type: ignore[attr-defined]
        session["user"] = request.args.get("user", "alice")
        return describe()

    @app.get("/logout")
    def logout() -> dict[str, Any]:
        session.invalidate()  # type: ignore[attr-defined]
        return {"data": None}

    return app
