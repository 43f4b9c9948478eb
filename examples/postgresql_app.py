"""The demo app (example.py) with its sessions in PostgreSQL.

    WSGI_DBSESSION_URL=postgresql://user@db/app python examples/postgresql_app.py [--port 8000]

``WSGI_DBSESSION_URL`` defaults to ``postgresql://postgres@127.0.0.1:5432/test``
(a bare ``postgresql://`` URL uses psycopg 3: ``pip install
'wsgi_dbsession[postgresql]'``), ``WSGI_DBSESSION_TABLE`` to ``sessions``.
The table and its index are created on the first request.
"""

from __future__ import annotations

import os

from example import app, secret_from_env, serve

from wsgi_dbsession import SessionMiddleware, create_engine

URL = os.environ.get("WSGI_DBSESSION_URL", "postgresql://postgres@127.0.0.1:5432/test")


def main() -> None:
    # The package's engine defaults (autocommit, no pre-ping, a connect
    # timeout) with the pool sized for this process: one connection per
    # thread that serves requests is enough, each request holds one only
    # for the duration of a statement.
    engine = create_engine(URL, pool_size=4, max_overflow=4)
    wrapped = SessionMiddleware(
        app,
        secret=secret_from_env(),
        engine=engine,
        table_name=os.environ.get("WSGI_DBSESSION_TABLE", "sessions"),
        max_age=7 * 86400,  # a week
        rolling=True,  # each visit pushes the expiry a week ahead (at most one touch a minute)
        secure="auto",  # Secure cookie when served over https (behind a proxy: see docs/deployment.md)
        cleanup_interval=300,  # prune expired rows every five minutes, one process at a time
    )

    def close() -> None:
        wrapped.close()
        engine.dispose()  # the middleware leaves an engine it did not create open

    serve(wrapped, __doc__.splitlines()[0], close)


if __name__ == "__main__":
    main()
