"""Whether a sessions table is what this package expects, item by item.

Used by the ``check`` command (``wsgi-dbsession check``, ``flask dbsession
check``), which reports every item OK or what is wrong and the one command
or SQL that fixes it, and by the store's first use (:func:`unusable_columns`),
which names a table of another package (Flask-Session, Beaker, Django)
reused by mistake once, clearly, instead of a "column sid does not exist"
on every request.

Everything here reads the schema; nothing changes it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .dialects import USER_COLUMN, SessionColumns, SessionDialect, user_index_name

# The columns other session packages give their tables: a table holding one
# of these sets is another package's, reused by mistake (the same table name).
FOREIGN_TABLES: dict[str, frozenset[str]] = {
    "Flask-Session": frozenset(("session_id", "data", "expiry")),
    "Beaker": frozenset(("namespace", "accessed", "created", "data")),
    "Django": frozenset(("session_key", "session_data", "expire_date")),
}


@dataclass(frozen=True)
class Finding:
    """One item of a check: OK when ``problem`` is None, else what is wrong and its ``fix``."""

    item: str
    problem: str | None = None
    fix: str | None = None  # the one command or SQL that fixes it

    @property
    def ok(self) -> bool:
        return self.problem is None

    def as_dict(self) -> dict[str, Any]:
        return {"item": self.item, "ok": self.ok, "problem": self.problem, "fix": self.fix}

    def line(self) -> str:
        if self.ok:
            return f"OK    {self.item}"
        return f"FAIL  {self.item}: {self.problem}\n      fix: {self.fix}"


@dataclass(frozen=True)
class Report:
    """Every finding about one table; ``ok`` only when all are."""

    table: str
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return all(finding.ok for finding in self.findings)

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.table, "ok": self.ok, "items": [finding.as_dict() for finding in self.findings]}


def inspect_table(
    conn: Connection,
    columns: SessionColumns,
    dialect: SessionDialect,
    *,
    lease: sa.Table | None,  # the prune lease's table (PruneLease(store).table), None: not checked
    user_key: str | None,  # the user_key whose index to look for, None: not checked
    create_command: str,  # the command that creates what is missing, as the user would type it
) -> Report:
    """Read the sessions table of ``columns`` (and its lease table) on ``conn`` and report each item."""
    table = columns.table
    located = locate(conn, table, create_command)
    if located is not None:
        return Report(table.fullname, (located,))
    findings = [Finding("table")]
    present = _columns(conn, table)
    findings += column_findings(present, table, columns.sid.name, dialect)
    if not findings[-1].ok and findings[-1].item == "columns":
        return Report(table.fullname, tuple(findings))  # another shape altogether: the rest would repeat it
    indexes = dialect.index_names(conn, table)
    findings.append(_expiry_index(conn, table, create_command))
    if lease is not None:
        findings.append(_lease_table(conn, lease, create_command))
    if user_key is not None:
        findings.append(_user_index(table, user_key, present, indexes, create_command))
    return Report(table.fullname, tuple(findings))


def locate(conn: Connection, table: sa.Table, create_command: str) -> Finding | None:
    """None when ``table`` exists; else the finding that says which of its schema or itself is missing."""
    inspector = sa.inspect(conn)
    # The schema first: SQLite answers a table in a schema never attached with an error, not False.
    if table.schema is not None and not inspector.has_schema(table.schema):
        return Finding(
            "schema",
            f"there is no schema {table.schema!r}",
            "create it, or name the schema that holds the table (schema, --schema)",
        )
    if not inspector.has_table(table.name, schema=table.schema):
        return Finding("table", f"there is no table {table.fullname!r}", create_command)
    return None


def column_findings(
    columns: dict[str, dict[str, Any]], table: sa.Table, sid_column: str, dialect: SessionDialect
) -> list[Finding]:
    """The ``columns`` finding (each column there, ``sid`` the primary key), then one per column type."""
    missing = [name for name in (sid_column, "sess", "expired") if name not in columns]
    if missing:
        return [
            Finding(
                "columns", _columns_problem(table, missing, set(columns)), _columns_fix(missing, sid_column)
            )
        ]
    if not columns[sid_column].get("primary_key"):
        problem = f"{sid_column!r} is not the primary key: the upsert needs it unique"
        return [
            Finding(
                "columns", problem, "recreate the table with: wsgi-dbsession create-table (after renaming it)"
            )
        ]
    findings = [Finding("columns")]
    for name, label in (("sess", "sess type (JSON)"), ("expired", "expired type")):
        fix = dialect.column_type_fix(table, name, columns[name]["type"])
        wrong = None if fix is None else f"{name!r} is {columns[name]['type']!r}"
        findings.append(Finding(label, wrong, fix))
    return findings


def unusable_columns(conn: Connection, columns: SessionColumns, dialect: SessionDialect) -> str | None:
    """Why the existing table of ``columns`` cannot be this package's (None: it can, or is not there).

    For the store's first use of a table it may not have created: a table of
    another package under the same name is a 500 that says so, not a
    "column sid does not exist" on every statement.
    """
    table = columns.table
    present = _columns(conn, table)
    for finding in column_findings(present, table, columns.sid.name, dialect)[:1] if present else []:
        if not finding.ok:
            return f"the session table {table.fullname!r} is not usable: {finding.problem}; {finding.fix}"
    return None


def _columns(conn: Connection, table: sa.Table) -> dict[str, dict[str, Any]]:
    inspector = sa.inspect(conn)
    if not inspector.has_table(table.name, schema=table.schema):
        return {}
    primary = set(inspector.get_pk_constraint(table.name, schema=table.schema)["constrained_columns"])
    return {
        str(column["name"]): {**column, "primary_key": column["name"] in primary}
        for column in inspector.get_columns(table.name, schema=table.schema)
    }


def _columns_problem(table: sa.Table, missing: list[str], present: set[str]) -> str:
    named = ", ".join(repr(name) for name in missing)
    owner = next((name for name, marks in FOREIGN_TABLES.items() if marks <= present), None)
    if owner is not None:
        return (
            f"it has no column {named}: it is a {owner} table (columns {', '.join(sorted(present))}), "
            "not a wsgi_dbsession one"
        )
    return f"it has no column {named} (it has {', '.join(sorted(present))})"


def _columns_fix(missing: list[str], sid_column: str) -> str:
    own_table = "give wsgi_dbsession a table of its own: another table name (table_name, --table)"
    if missing == [sid_column]:
        return f"name the session id column in the sid_column option (--sid-column), or {own_table}"
    return own_table


def _expiry_index(conn: Connection, table: sa.Table, create_command: str) -> Finding:
    # Any index whose first column is expired serves the prune's range scan, whatever its name.
    with warnings.catch_warnings():
        # SQLite's reflection skips an expression index (the user index) with a warning; not this one.
        warnings.simplefilter("ignore", sa.exc.SAWarning)
        indexes = sa.inspect(conn).get_indexes(table.name, schema=table.schema)
    if any(index["column_names"][:1] == ["expired"] for index in indexes):
        return Finding("expiry index")
    problem = "no index on 'expired': every prune reads the whole table"
    return Finding("expiry index", problem, create_command)


def _lease_table(conn: Connection, lease: sa.Table, create_command: str) -> Finding:
    item = f"lease table {lease.name!r}"
    columns = _columns(conn, lease)
    if not columns:
        return Finding(
            item, "missing: a prune must create it first, which needs CREATE rights", create_command
        )
    missing = [column.name for column in lease.columns if column.name not in columns]
    if missing:
        problem = f"it has no column {', '.join(repr(name) for name in missing)}"
        return Finding(item, problem, f"drop it (it holds only the prune lock), then: {create_command}")
    return Finding(item)


def _user_index(
    table: sa.Table, user_key: str, columns: dict[str, Any], indexes: set[str], create_command: str
) -> Finding:
    item = f"user index ({user_key})"
    name = user_index_name(table)
    if name in indexes:
        return Finding(item)
    # MySQL and MSSQL index a generated column, which may be there while its index is not.
    detail = f" (its column {USER_COLUMN!r} is there)" if USER_COLUMN in columns else ""
    problem = f"no index {name!r}{detail}: finding a user's sessions reads the whole table"
    return Finding(item, problem, create_command)
