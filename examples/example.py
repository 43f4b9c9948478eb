"""A visit counter with login and logout, on the embedded SQLite default.

Run it with ``python examples/example.py [--port 8000]`` and open the URL it
prints. Sessions are stored in ``wsgi_dbsession.sqlite`` in the working
directory. Set ``WSGI_DBSESSION_SECRET`` to keep sessions valid across
restarts (otherwise a random secret is made at each start).
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import secrets
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl
from wsgiref.simple_server import make_server

from wsgi_dbsession import SessionMiddleware

PAGE = """<!doctype html>
<title>wsgi_dbsession demo</title>
<p>Visits: {visits}</p>
<p>{who}</p>
<form method="post" action="{action}">{fields}<button>{button}</button>
<input type="hidden" name="csrf_token" value="{csrf}"></form>
"""


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    session = environ["dbsession"]
    path, method = environ.get("PATH_INFO", "/"), environ["REQUEST_METHOD"]
    if path == "/favicon.ico":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    if method == "POST":
        size = int(environ.get("CONTENT_LENGTH") or 0)
        form = dict(parse_qsl(environ["wsgi.input"].read(size).decode()))
        if not session.check_csrf_token(form.get("csrf_token")):
            start_response("403 Forbidden", [("Content-Type", "text/plain")])
            return [b"bad CSRF token"]
        if path == "/login" and form.get("user"):
            session.regenerate()  # a new id at every change of privilege
            session["user"] = form["user"][:64]
        elif path == "/logout":
            session.invalidate()
        start_response("303 See Other", [("Location", "/")])
        return [b""]
    session["visits"] = session.get("visits", 0) + 1
    page = render_page(session["visits"], session.get("user"), session.get_csrf_token())
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
    return [page.encode()]


def render_page(visits: int, user: str | None, csrf_token: str) -> str:
    """The page: the visit count, and a login or logout form carrying the CSRF token."""
    return PAGE.format(
        visits=visits,
        who=f"Logged in as {html.escape(user)}." if user else "Not logged in.",
        action="/logout" if user else "/login",
        fields="" if user else '<input name="user" placeholder="name"> ',
        button="Log out" if user else "Log in",
        csrf=csrf_token,
    )


def app_factory(global_conf: dict[str, str], **settings: str) -> Any:
    """PasteDeploy's app factory, for ``app.ini``: the session comes from its filter."""
    return app


def secret_from_env() -> str:
    """``WSGI_DBSESSION_SECRET``, or a random secret (sessions then end at each restart)."""
    return os.environ.get("WSGI_DBSESSION_SECRET") or secrets.token_urlsafe(32)


def serve(wsgi_app: Any, description: str, close: Callable[[], None], port: int = 8000) -> None:
    """Read ``--host``/``--port``, serve until Ctrl-C, then call ``close``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port, help="0 picks a free port")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    with make_server(args.host, args.port, wsgi_app) as server:
        print(f"Serving on http://{args.host}:{server.server_port}/", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            close()


def main() -> None:
    wrapped = SessionMiddleware(app, secret=secret_from_env())
    serve(wrapped, __doc__.splitlines()[0], wrapped.close)


if __name__ == "__main__":
    main()
