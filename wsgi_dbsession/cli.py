"""The ``wsgi-dbsession`` command (also ``python -m wsgi_dbsession``).

- ``prune``: delete the expired sessions now, under the same lease the
  middleware's scheduler takes (for cron, with ``cleanup_interval=0``);
- ``create-table``: create the table and its expiry index when missing;
- ``stats``: how many sessions are live and how many expired;
- ``sessions --user U``: a user's live sessions, one line each (a hash of
  the session id, never the id: it is a credential);
- ``logout-user U``: delete every session of a user.

The last two need ``--user-key`` (the dotted path of the user id in the
session data, as the ``user_key`` option); with it, ``create-table`` also
adds the user index, to a table that exists already too.

Each takes ``--url`` (or the ``WSGI_DBSESSION_URL`` environment variable,
which keeps a password out of the process list), ``--table``,
``--sid-column`` and ``--schema``. Exit status: 0 done, 1 the database
failed (unreachable, no table), 2 a usage error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Sequence

import sqlalchemy as sa

from .dialects import dialect_class, user_path
from .exceptions import ConfigurationError, SessionError
from .prune import prune_once
from .store import PRUNE_BATCH_SIZE, SessionStore

URL_VARIABLE = "WSGI_DBSESSION_URL"


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get(URL_VARIABLE),
        help=f"SQLAlchemy URL of the session database (default: ${URL_VARIABLE})",
    )
    common.add_argument("--table", default="sessions", help='table name, may be "schema.table"')
    common.add_argument("--sid-column", default="sid", help="name of the session id column")
    common.add_argument("--schema", help="schema of the table, where the database has schemas")
    common.add_argument(
        "--user-key", help='dotted path of the user id in the session data (e.g. "passport.user")'
    )

    parser = argparse.ArgumentParser(prog="wsgi-dbsession", description="Manage a wsgi_dbsession table.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    prune = commands.add_parser(
        "prune", parents=[common], help="delete expired sessions (for cron; takes the prune lock)"
    )
    prune.add_argument(
        "--batch-size",
        type=int,
        default=PRUNE_BATCH_SIZE,
        help=f"rows per delete statement, each its own transaction (default {PRUNE_BATCH_SIZE})",
    )
    commands.add_parser("create-table", parents=[common], help="create the table and its index if missing")
    stats = commands.add_parser("stats", parents=[common], help="count live and expired sessions")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    sessions = commands.add_parser(
        "sessions", parents=[common], help="list a user's live sessions (needs --user-key)"
    )
    sessions.add_argument("--user", required=True, help="the user id, compared as text")
    logout = commands.add_parser(
        "logout-user", parents=[common], help="delete every session of a user (needs --user-key)"
    )
    logout.add_argument("user", help="the user id, compared as text")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.url:
        parser.error(f"give --url or set {URL_VARIABLE}")
    if args.command == "prune" and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.command in USER_COMMANDS and not args.user_key:
        parser.error(f"{args.command} needs --user-key (the path of the user id, e.g. passport.user)")
    if args.user_key is not None:
        try:
            user_path(args.user_key)
        except ConfigurationError as exc:
            parser.error(f"--user-key: {exc}")
    missing = _missing_sqlite_file(args.url) if args.command != "create-table" else None
    if missing is not None:  # opening it would create it
        return _fail(f"no such database file: {missing}; create it with: wsgi-dbsession create-table")
    try:
        store = SessionStore(
            url=args.url,
            table_name=args.table,
            sid_column=args.sid_column,
            schema=args.schema,
            create_table=False,
            user_key=args.user_key,
        )
    except (sa.exc.ArgumentError, SessionError) as exc:
        parser.error(f"--url/--table: {exc}")
    except ImportError as exc:
        return _fail(f"the database driver is not installed ({exc}); install the matching extra")
    try:
        return _run(args, store)
    except (SessionError, sa.exc.SQLAlchemyError) as exc:
        return _fail(str(getattr(exc, "orig", None) or exc))
    finally:
        store.dispose()


COMMANDS = ("create-table", "stats", "prune")


def run_command(
    store: SessionStore, command: str, *, batch_size: int = PRUNE_BATCH_SIZE, as_json: bool = False
) -> int:
    """Run one command on a store already built; returns the exit status.

    For framework command lines (``flask dbsession prune``): the same work,
    output and exit status as ``wsgi-dbsession COMMAND``, on the table the
    application is configured with.
    """
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {COMMANDS}, not {command!r}")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    args = argparse.Namespace(command=command, batch_size=batch_size, json=as_json)
    try:
        return _run(args, store)
    except (SessionError, sa.exc.SQLAlchemyError) as exc:
        return _fail(str(getattr(exc, "orig", None) or exc))


def _run(args: argparse.Namespace, store: SessionStore) -> int:
    table = store.table.fullname
    if args.command == "create-table":
        store.create_table()  # with --user-key, also the user index (on an existing table too)
        print(f"table {table!r} is ready")
        return 0
    if not store.has_table():
        return _fail(f"there is no table {table!r}; create it with: wsgi-dbsession create-table")
    if args.command in USER_COMMANDS:
        return _run_user_command(args, store)
    if args.command == "stats":
        stats = store.stats()
        if args.json:
            print(json.dumps({"table": table, "live": stats.live, "expired": stats.expired}))
        else:
            print(f"live {stats.live}\nexpired {stats.expired}")
        return 0
    started = time.perf_counter()
    deleted = prune_once(store, batch_size=args.batch_size)
    if deleted is None:
        print(f"another process holds the prune lock of {table!r} and prunes it; nothing done")
    else:
        print(f"deleted {deleted} expired sessions from {table!r} in {time.perf_counter() - started:.3f} s")
    return 0


def _missing_sqlite_file(url: str) -> str | None:
    """The absolute path of an SQLite URL's database file when that file does not exist."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        return None  # the store reports it
    path = dialect_class(parsed.get_backend_name()).database_file(parsed)
    return None if path is None or os.path.exists(path) else path


USER_COMMANDS = ("sessions", "logout-user")


def _run_user_command(args: argparse.Namespace, store: SessionStore) -> int:
    if args.command == "logout-user":
        deleted = store.destroy_user_sessions(args.user)
        print(f"deleted {deleted} sessions of user {args.user!r} from {store.table.fullname!r}")
        return 0
    for session in store.user_sessions(args.user):
        print(
            f"{session.handle}  expires {_when(session.expires)}  "
            f"created {_when(session.created)}  last-active {_when(session.last_active)}"
        )
    return 0


def _when(moment: dt.datetime | None) -> str:
    return "-" if moment is None else moment.isoformat(timespec="seconds")


def _fail(message: str) -> int:
    print(f"wsgi-dbsession: error: {message}", file=sys.stderr)
    return 1
