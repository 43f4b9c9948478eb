"""For tests about where the table lives and what it is built with: a scratch schema, the user index."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator

import sqlalchemy as sa

from wsgi_dbsession import SessionStore
from wsgi_dbsession.dialects import USER_COLUMN, user_index_name


@contextlib.contextmanager
def scratch_schema(engine: sa.Engine) -> Iterator[str]:
    """A schema (a database, on MariaDB) that only this test uses, dropped afterwards."""
    name = f"Wsgi-Schema-{secrets.token_hex(4)}"
    quoted = engine.dialect.identifier_preparer.quote(name)
    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE {'SCHEMA' if postgres else 'DATABASE'} {quoted}")
    try:
        yield name
    finally:
        with engine.connect() as conn:
            conn.exec_driver_sql(
                f"DROP {'SCHEMA' if postgres else 'DATABASE'} {quoted}{' CASCADE' if postgres else ''}"
            )


def index_exists(store: SessionStore) -> bool:
    """Whether the table's user index is in the database's catalog."""
    name = user_index_name(store.table)
    with store.engine.connect() as conn:
        if store.engine.dialect.name == "postgresql":
            definition = conn.execute(
                sa.text("SELECT indexdef FROM pg_indexes WHERE tablename = :t AND indexname = :i"),
                {"t": store.table.name, "i": name},
            ).scalar()
            return definition is not None and "#>>" in definition
        if store.engine.dialect.name == "sqlite":
            sql = conn.execute(
                sa.text("SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = :t AND name = :i"),
                {"t": store.table.name, "i": name},
            ).scalar()
            return sql is not None and "json_extract" in sql
        generated = conn.execute(
            sa.text(
                "SELECT generation_expression FROM information_schema.columns "
                "WHERE table_schema = DATABASE() AND table_name = :t AND column_name = :c"
            ),
            {"t": store.table.name, "c": USER_COLUMN},
        ).scalar()
        indexed = conn.execute(
            sa.text(
                "SELECT column_name FROM information_schema.statistics "
                "WHERE table_schema = DATABASE() AND table_name = :t AND index_name = :i"
            ),
            {"t": store.table.name, "i": name},
        ).scalar()
        return generated is not None and "json_extract" in generated.lower() and indexed == USER_COLUMN
