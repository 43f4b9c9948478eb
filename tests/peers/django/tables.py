"""Each ported test class on its own table, on SQLite, PostgreSQL or MariaDB, dropped afterwards."""

from __future__ import annotations

import tempfile
from typing import Any

import sqlalchemy as sa
from django.test import override_settings

from conftest import LIVE_URLS, SECRET, unique_table_name
from wsgi_dbsession import django as dbsession_django
from wsgi_dbsession.prune import LEASE_TABLE_SUFFIX


def dbsession(backend: str, **options: Any) -> dict[str, Any]:
    """A ``DBSESSION`` setting on a new table of ``backend`` (SQLite: a new file)."""
    url = f"sqlite:///{tempfile.mkdtemp(prefix='wsgi_dbsession_django_')}/sessions.sqlite"
    return {
        "url": LIVE_URLS.get(backend, url),
        "table_name": unique_table_name(),
        "secret": SECRET,
        **options,
    }


def on(backend: str, **options: Any) -> Any:
    """A class decorator: the class's tests use a new table on ``backend``."""
    return override_settings(DBSESSION=dbsession(backend, **options))


class DropsTable:
    """Drops the class's session and lease tables after its tests (the settings still apply then)."""

    @classmethod
    def tearDownClass(cls) -> None:
        store = dbsession_django.get_store()
        dbsession_django.close()  # the prune job stops and gives its lease back first
        lease = sa.Table(store.table.name + LEASE_TABLE_SUFFIX, sa.MetaData(), schema=store.table.schema)
        for table in (store.table, lease):
            table.drop(store.engine, checkfirst=True)
        store.engine.dispose()
        super().tearDownClass()  # type: ignore[misc]
