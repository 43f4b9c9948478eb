"""The ``wsgi-dbsession`` command (also ``python -m wsgi_dbsession``).

- ``prune``: delete the expired sessions now, under the same lease the
  middleware's scheduler takes (for cron, with ``cleanup_interval=0``);
- ``create-table``: create the table, its expiry index and the prune's
  lease table when missing, and add them to a table that lacks them;
- ``check``: whether the table is what the package expects, item by item,
  with the command or SQL that fixes each problem;
- ``stats``: how many sessions are live and how many expired;
- ``sessions --user U``: a user's live sessions, one line each (a hash of
  the session id, never the id: it is a credential);
- ``logout-user --user U``: delete every session of a user.

The last two need ``--user-key`` (the dotted path of the user id in the
session data, as the ``user_key`` option); with it, ``create-table`` also
adds the user index and ``check`` checks it.

Each takes ``--url`` (or ``$WSGI_DBSESSION_URL``, which keeps a password out
of the process list), ``--table`` (or ``$WSGI_DBSESSION_TABLE``),
``--sid-column``, ``--schema`` and ``--json``. The exit status is one of
:class:`ExitStatus`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import enum
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import sqlalchemy as sa

from .check import Report, inspect_table, locate
from .dialects import dialect_class
from .exceptions import ConfigurationError, SessionError, StoreUnavailable
from .options import Options, option_defaults
from .prune import PruneLease, prune_once
from .store import SessionStore

URL_VARIABLE = "WSGI_DBSESSION_URL"
TABLE_VARIABLE = "WSGI_DBSESSION_TABLE"
DEFAULTS = option_defaults()


class ExitStatus(enum.IntEnum):
    """What the command's exit status means (docs/pruning.md has the same table)."""

    OK = 0  # done; for check: every item is as expected
    TABLE = 1  # the table is missing or not as expected; the message gives the fix
    USAGE = 2  # the command line is wrong (an option, the URL's syntax)
    UNREACHABLE = 3  # the database server cannot be reached: an outage, try again later
    REFUSED = 4  # the server refused the configuration (credentials, database, schema), or no driver


class CommandError(Exception):
    """A failure the command reports in one line, with its exit status."""

    def __init__(self, status: ExitStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Invocation:
    """How the user called the command: what a hint repeats so it can be run as printed."""

    program: str  # "wsgi-dbsession" or "flask dbsession"
    options: tuple[str, ...] = ()  # the table's options as given (--url, --table, ...)

    def command(self, name: str) -> str:
        return " ".join((self.program, name, *self.options))


class _Formatter(argparse.HelpFormatter):
    """Shows each option's default, except where it has none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _batch_size(text: str) -> int:
    """``--batch-size``, checked as the ``cleanup_batch_size`` option is."""
    return int(_checked("cleanup_batch_size", int(text)))


def _checked(option: str, value: Any) -> Any:
    """``value`` if the option takes it (Options' own check), else a usage error."""
    try:
        Options.check(option, value)
    except ConfigurationError as exc:
        # argparse names the flag: "cleanup_batch_size must be …" is said "must be …".
        message = str(exc)
        if message.startswith(f"{option} must "):
            message = message.removeprefix(f"{option} ")
        raise argparse.ArgumentTypeError(message) from None
    return value


def _user_key(text: str) -> str:
    """``--user-key``, checked as the ``user_key`` option is."""
    return str(_checked("user_key", text))


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser, and each command's own (whose usage its errors print)."""
    table = argparse.ArgumentParser(add_help=False)
    table.add_argument("--url", help=f"SQLAlchemy URL of the session database (default: ${URL_VARIABLE})")
    table.add_argument(
        "--table",
        help=f'table name, may be "schema.table" (default: ${TABLE_VARIABLE}, else {DEFAULTS["table_name"]})',
    )
    table.add_argument("--sid-column", default=DEFAULTS["sid_column"], help="name of the session id column")
    table.add_argument("--schema", help="schema of the table, where the database has schemas")
    table.add_argument("--json", action="store_true", help="print one JSON object")
    user_key = argparse.ArgumentParser(add_help=False)
    user_key.add_argument(
        "--user-key",
        type=_user_key,
        help='dotted path of the user id in the session data, e.g. "passport.user"',
    )
    user = argparse.ArgumentParser(add_help=False)
    user.add_argument("--user", required=True, help="the user id, compared as text")
    user.add_argument(
        "--user-key",
        type=_user_key,
        required=True,
        help='dotted path of the user id in the session data, e.g. "passport.user"',
    )

    statuses = ", ".join(f"{status.value} {status.name.lower()}" for status in ExitStatus)
    parser = argparse.ArgumentParser(
        prog="wsgi-dbsession",
        description="Manage a wsgi_dbsession table.",
        epilog=f"exit status: {statuses} (docs/pruning.md#exit-status)",
    )
    # The installed distribution's version: the package's __init__ is a layer above this module.
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {metadata.version('wsgi_dbsession')}"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, parents=[table, *parents], help=help, description=help, formatter_class=_Formatter
        )

    prune = command("prune", "delete expired sessions (for cron; takes the prune lock)")
    prune.add_argument(
        "--batch-size",
        type=_batch_size,
        default=DEFAULTS["cleanup_batch_size"],
        help="rows per delete statement, each its own transaction",
    )
    command("create-table", "create the table, its indexes and the lease table where missing", user_key)
    command("check", "check the table, its indexes and the lease table; print each fix", user_key)
    command("stats", "count live and expired sessions")
    command("sessions", "list a user's live sessions", user)
    command("logout-user", "delete every session of a user", user)
    return parser, commands.choices


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    parser, subparsers = _parser()
    args, unknown = parser.parse_known_args(argv)
    usage = subparsers[args.command]  # a command's mistakes print that command's usage
    if unknown:
        usage.error(f"unrecognized arguments: {' '.join(unknown)}")
    url = args.url or os.environ.get(URL_VARIABLE)
    if not url:
        usage.error(f"give --url or set {URL_VARIABLE}")
    try:
        sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        usage.error(f"--url/--table: {exc}")
    table = args.table or os.environ.get(TABLE_VARIABLE) or DEFAULTS["table_name"]
    invocation = Invocation("wsgi-dbsession", _given_options(args))
    try:
        if args.command != "create-table":
            _refuse_missing_file(url, invocation)
        try:
            options = Options(
                url=url,
                table_name=table,
                sid_column=args.sid_column,
                schema=args.schema,
                create_table=False,
                user_key=getattr(args, "user_key", None),
            )
            store = SessionStore(**options.arguments("store"))
        except ConfigurationError as exc:
            if isinstance(exc.__cause__, ImportError):
                raise CommandError(ExitStatus.REFUSED, str(exc)) from None
            usage.error(f"--url/--table: {exc}")
    except CommandError as exc:
        return _fail(exc, args.json, invocation)
    try:
        return _run(args, store, invocation)
    finally:
        store.dispose()


def _given_options(args: argparse.Namespace) -> tuple[str, ...]:
    """The table's options the user typed (those from the environment stay there), password hidden."""
    options: list[str] = []
    if args.url:
        options += ["--url", sa.make_url(args.url).render_as_string(hide_password=True)]
    for flag, value, default in (
        ("--table", args.table, None),
        ("--schema", args.schema, None),
        ("--sid-column", args.sid_column, DEFAULTS["sid_column"]),
        ("--user-key", getattr(args, "user_key", None), None),
    ):
        if value is not None and value != default:
            options += [flag, value]
    return tuple(options)


def run_command(
    store: SessionStore,
    command: str,
    *,
    batch_size: int = DEFAULTS["cleanup_batch_size"],
    as_json: bool = False,
    program: str = "flask dbsession",  # what a hint names, as the user would type it
) -> int:
    """Run one command on a store already built; returns the exit status.

    For framework command lines (``flask dbsession prune``): the same work,
    output and exit status as ``wsgi-dbsession COMMAND``, on the table the
    application is configured with.
    """
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {COMMANDS}, not {command!r}")
    args = argparse.Namespace(command=command, batch_size=batch_size, json=as_json)
    return _run(args, store, Invocation(program))


COMMANDS = ("create-table", "check", "stats", "prune")


def _run(args: argparse.Namespace, store: SessionStore, invocation: Invocation) -> int:
    try:
        return _dispatch(args, store, invocation)
    except CommandError as exc:
        return _fail(exc, args.json, invocation)
    except (SessionError, sa.exc.SQLAlchemyError) as exc:
        return _fail(_failure(exc, store), args.json, invocation)


def _dispatch(args: argparse.Namespace, store: SessionStore, invocation: Invocation) -> int:
    table = store.table.fullname
    create = invocation.command("create-table")
    missing = store.runner.run(lambda conn: locate(conn, store.table, create), prepare=False)
    where = store.engine.url.render_as_string(hide_password=True)
    if missing is not None and (missing.item == "schema" or args.command not in ("create-table", "check")):
        if missing.item == "schema":
            raise CommandError(ExitStatus.REFUSED, f"{missing.problem} in {where}; {missing.fix}")
        raise CommandError(ExitStatus.TABLE, f"{missing.problem} in {where}; create it with: {create}")
    if args.command == "create-table":
        return _create_table(args, store, invocation)
    if args.command == "check":
        return _report(args, _check(store, invocation))
    store.require_columns()  # a table of another package: say so, not "column sid does not exist"
    if args.command == "sessions":
        return _sessions(args, store)
    if args.command == "logout-user":
        deleted = store.destroy_user_sessions(args.user)
        _print(
            args,
            {"table": table, "user": args.user, "deleted": deleted},
            f"deleted {deleted} sessions of user {args.user!r} from {table!r}",
        )
        return ExitStatus.OK
    if args.command == "stats":
        stats = store.stats()
        _print(
            args,
            {"table": table, "live": stats.live, "expired": stats.expired},
            f"live {stats.live}\nexpired {stats.expired}",
        )
        return ExitStatus.OK
    return _prune(args, store)


def _check(store: SessionStore, invocation: Invocation) -> Report:
    """The store's table, item by item; a database that cannot be asked raises (no finding)."""
    lease, create_command = PruneLease(store).table, invocation.command("create-table")
    return store.runner.run(
        lambda conn: inspect_table(
            conn,
            store.columns,
            store.dialect,
            lease=lease,
            user_key=store.user_key,
            create_command=create_command,
        ),
        prepare=False,
    )


def _create_table(args: argparse.Namespace, store: SessionStore, invocation: Invocation) -> int:
    before = _check(store, invocation)
    store.create_table()  # with --user-key, also the user index (on an existing table too)
    store.create(PruneLease(store).table)
    after = _check(store, invocation)
    # Items that failed on a table that was there, and pass now.
    existed = before.findings[0].ok
    failed = {finding.item for finding in before.findings if not finding.ok} if existed else set()
    repaired = [finding.item for finding in after.findings if finding.ok and finding.item in failed]
    if not after.ok:  # what create-table cannot change (a column's type): check's fixes
        return _report(args, after)
    text = f"table {store.table.fullname!r} is ready"
    _print(
        args,
        {"table": store.table.fullname, "ready": True, "repaired": repaired},
        text + (f" (added: {', '.join(repaired)})" if repaired else ""),
    )
    return ExitStatus.OK


def _report(args: argparse.Namespace, report: Report) -> int:
    _print(args, report.as_dict(), "\n".join(finding.line() for finding in report.findings))
    if report.ok:
        return ExitStatus.OK
    return ExitStatus.REFUSED if report.findings[0].item == "schema" else ExitStatus.TABLE


def _sessions(args: argparse.Namespace, store: SessionStore) -> int:
    found = store.user_sessions(args.user)
    rows = [
        {
            "handle": session.handle,
            "expires": _when(session.expires),
            "created": _when(session.created),
            "last_active": _when(session.last_active),
        }
        for session in found
    ]
    text = "\n".join(
        f"{row['handle']}  expires {row['expires'] or '-'}  created {row['created'] or '-'}  "
        f"last-active {row['last_active'] or '-'}"
        for row in rows
    )
    _print(args, {"table": store.table.fullname, "user": args.user, "sessions": rows}, text)
    return ExitStatus.OK


def _prune(args: argparse.Namespace, store: SessionStore) -> int:
    table = store.table.fullname
    started = time.perf_counter()
    # Progress for a person watching a long prune; a cron log gets the last line only.
    progress = _progress_line if sys.stderr.isatty() and not args.json else None
    deleted = prune_once(store, batch_size=args.batch_size, progress=progress)
    if progress is not None:
        print(file=sys.stderr)
    seconds = round(time.perf_counter() - started, 3)
    if deleted is None:
        text = f"another process holds the prune lock of {table!r} and prunes it; nothing done"
    else:
        text = f"deleted {deleted} expired sessions from {table!r} in {seconds:.3f} s"
    _print(
        args,
        {"table": table, "deleted": deleted, "seconds": seconds, "held_elsewhere": deleted is None},
        text,
    )
    return ExitStatus.OK


def _progress_line(deleted: int) -> None:
    print(f"\rdeleted {deleted} expired sessions so far", end="", file=sys.stderr, flush=True)


def _refuse_missing_file(url: str, invocation: Invocation) -> None:
    """An SQLite URL whose file does not exist: opening it would create it, so refuse."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        return  # the store reports it
    path = dialect_class(parsed.get_backend_name()).database_file(parsed)
    if path is not None and not os.path.exists(path):
        message = f"no such database file: {path}; create it with: {invocation.command('create-table')}"
        raise CommandError(ExitStatus.REFUSED, message)


def _failure(exc: Exception, store: SessionStore) -> CommandError:
    """The exit status and message of an error the database gave."""
    cause = exc.__cause__
    if isinstance(exc, StoreUnavailable):
        url = store.engine.url
        reason = str(getattr(cause, "orig", None) or exc).strip().splitlines()[0]
        return CommandError(
            ExitStatus.UNREACHABLE,
            f"cannot reach the database at {url.host or 'localhost'}:{url.port or 'its default port'} "
            f"({reason}); "
            "check that the server is running and the url's host and port, or try again later",
        )
    if isinstance(cause, sa.exc.DBAPIError) and store.dialect.is_misconfiguration(cause):
        return CommandError(ExitStatus.REFUSED, str(exc))
    return CommandError(ExitStatus.TABLE, str(getattr(exc, "orig", None) or exc))


def _print(args: argparse.Namespace, document: dict[str, Any], text: str) -> None:
    if args.json:
        print(json.dumps(document))
    elif text:
        print(text)


def _when(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="seconds")


def _fail(error: CommandError, as_json: bool, invocation: Invocation) -> int:
    if as_json:
        print(json.dumps({"ok": False, "error": str(error), "exit_status": int(error.status)}))
    print(f"{invocation.program}: error: {error}", file=sys.stderr)
    return error.status
