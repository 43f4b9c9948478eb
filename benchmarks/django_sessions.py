"""Django 5's sessions as a WSGI app, on the benchmarks' databases: three session engines.

Django's ``db`` backend, its ``cached_db`` backend (the same table behind
Django's default local-memory cache) and ``wsgi_dbsession.django`` (the
package's table, configured by ``DBSESSION``), each behind Django's own
``SessionMiddleware`` and the same view, so the rows compare engines alone.

Django is configured in-process (``settings.configure``) with one database
alias per backend: PostgreSQL through psycopg 3, MariaDB through Django's
MySQL backend on PyMySQL (``pymysql.install_as_MySQLdb()``: mysqlclient
needs the MariaDB client headers to build), SQLite on the benchmarks' file
with ``synchronous=NORMAL`` as raw and wsgi_dbsession use. Connections
persist (``CONN_MAX_AGE=None``), ``DEBUG`` is off.

The app is the least Django serves a request with: a ``WSGIRequest``,
``django.contrib.sessions.middleware.SessionMiddleware`` around a view
that does what the other handlers do with ``request.session``, and the
``HttpResponse`` turned into ``start_response`` as Django's ``WSGIHandler``
does; no URL resolver, no other middleware, no request signals. So the
``unused`` scenario shows what the request and response objects cost
without a session. Each backend gets its own session model (Django's
``AbstractBaseSession`` with a fresh table name) and a router sends it to
that backend's alias.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from . import systems
from .common import BACKENDS, SECRET, database_url

MAX_AGE = 86400  # seconds, as the other systems


def _database(backend: str, url: sa.URL) -> dict[str, Any]:
    if backend == "sqlite":
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": url.database,
            "OPTIONS": {"init_command": "PRAGMA synchronous=NORMAL", "timeout": 5},
        }
    return {
        "ENGINE": "django.db.backends." + ("postgresql" if backend == "postgresql" else "mysql"),
        "NAME": url.database,
        "USER": url.username or "",
        "PASSWORD": url.password or "",
        "HOST": url.host or "",
        "PORT": str(url.port or ""),
        "CONN_MAX_AGE": None,
    }


class _Router:
    """Each benchmark session model goes to the alias it was made for."""

    def db_for_read(self, model: Any, **_hints: Any) -> str | None:
        return getattr(model, "bench_alias", None)

    db_for_write = db_for_read


def configure(workdir: Path) -> None:
    """Configure Django once per process, with an alias per backend (connecting to none yet)."""
    from django.conf import settings

    if settings.configured:
        return
    import pymysql

    pymysql.install_as_MySQLdb()  # Django 5 accepts PyMySQL's version_info (2, 2, x)
    import django

    databases = {"default": {"ENGINE": "django.db.backends.dummy"}}
    for backend in BACKENDS:
        databases[backend] = _database(backend, database_url(backend, workdir))
    settings.configure(
        SECRET_KEY=SECRET,
        USE_TZ=True,
        INSTALLED_APPS=["django.contrib.sessions"],
        DATABASES=databases,
        DATABASE_ROUTERS=[_Router()],
        SESSION_ENGINE="django.contrib.sessions.backends.db",
        SESSION_COOKIE_AGE=MAX_AGE,
        SESSION_COOKIE_NAME="sessionid",
    )
    django.setup()


class DjangoSessions:
    """Django's SessionMiddleware on ``backend`` with one session engine, its table ``table`` (created here).

    ``engine``: ``"db"`` (Django's database backend), ``"cached_db"`` (the
    same behind Django's default local-memory cache) or ``"wsgi_dbsession"``
    (``wsgi_dbsession.django``, on the package's table through ``DBSESSION``).
    """

    def __init__(self, backend: str, workdir: Path, table: str, engine: str = "db") -> None:
        configure(workdir)
        from django.contrib.sessions.middleware import SessionMiddleware
        from django.core.handlers.wsgi import WSGIRequest
        from django.db import connections
        from django.http import HttpResponse

        self.backend, self.table, self.engine = backend, table, engine
        self.connection = connections[backend]
        self.model: Any = None
        self.override: Any = None
        if engine == "wsgi_dbsession":
            store = self._dbsession_store(database_url(backend, workdir))
        else:
            store = self._django_store(engine)

        def view(request: Any) -> Any:
            path = request.path_info
            if path != "/unused":
                count = request.session.get("count", 0)
                if path != "/read":
                    request.session["count"] = count + 1
            return HttpResponse(b"ok", content_type="text/plain")

        middleware = SessionMiddleware(view)
        middleware.SessionStore = store

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            response = middleware(WSGIRequest(environ))
            headers = [
                *response.items(),
                *(("Set-Cookie", cookie.output(header="")) for cookie in response.cookies.values()),
            ]
            start_response(f"{response.status_code} {response.reason_phrase}", headers)
            return [response.content]

        self.app: systems.App = app

    def _django_store(self, engine: str) -> Any:
        """A session model of its own (Django's ``AbstractBaseSession``) and a store class using it."""
        from django.contrib.sessions.backends.cached_db import SessionStore as CachedDBStore
        from django.contrib.sessions.backends.db import SessionStore as DBStore
        from django.contrib.sessions.base_session import AbstractBaseSession

        meta = type("Meta", (), {"app_label": "sessions", "db_table": self.table})
        self.model = type(
            f"Bench_{self.table}", (AbstractBaseSession,), {"__module__": __name__, "Meta": meta}
        )
        self.model.bench_alias = self.backend
        model = self.model
        base = CachedDBStore if engine == "cached_db" else DBStore
        with self.connection.schema_editor() as editor:
            editor.create_model(self.model)
        return type(f"Store_{self.table}", (base,), {"get_model_class": classmethod(lambda _cls: model)})

    def _dbsession_store(self, url: sa.URL) -> Any:
        """wsgi_dbsession.django on ``url``: ``DBSESSION`` overridden until :meth:`close`."""
        from django.test.utils import override_settings

        from wsgi_dbsession.django import SessionStore, get_store

        options = {"url": url.render_as_string(False), "table_name": self.table, "secret": SECRET}
        self.override = override_settings(DBSESSION=options)
        self.override.enable()
        self.store = get_store()
        self.store.create_table()
        return SessionStore

    @contextmanager
    def counting(self) -> Iterator[list[str]]:
        """The statements the sessions send to the database while the block runs."""
        seen: list[str] = []
        if self.override is not None:  # the package's store sees both of its statement paths
            stop = self.store.on_statement(lambda statement, _parameters: seen.append(statement))
            try:
                yield seen
            finally:
                stop()
            return

        def record(execute: Callable[..., Any], sql: str, *args: Any) -> Any:
            seen.append(sql)
            return execute(sql, *args)

        with self.connection.execute_wrapper(record):
            yield seen

    def cursor(self) -> Any:
        """A cursor on the connection the sessions use (to read MariaDB's counters)."""
        return self.connection.cursor()

    def close(self) -> None:
        if self.override is not None:
            self.override.disable()  # wsgi_dbsession.django closes its manager
            return  # the caller drops the package's table with the other systems' tables
        with self.connection.schema_editor() as editor:
            editor.delete_model(self.model)
        self.connection.close()
