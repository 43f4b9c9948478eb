"""Security guarantees, through real requests on every live database (docs/security.md names each test).

Session fixation, secret rotation, cookie flags, constant-time comparisons,
and no secret or session id in logs (at DEBUG, error paths included) or in
the repr of any object the package hands out.
"""

from __future__ import annotations

import ast
import hmac
import importlib.util
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import sqlalchemy as sa
import webtest

from conftest import SECRET, StatementLog, drop_table
from tests.apps import session_app
from tests.webtest_helpers import MakeApp, sid_in
from wsgi_dbsession import SessionMiddleware, SessionStore, sign
from wsgi_dbsession.cookies import encode_value, generate_sid
from wsgi_dbsession.session import CookieUpdate

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "wsgi_dbsession"
OLD_SECRET = "the-retired-secret-0123456789abcdefghijklmn"


# -- session fixation ----------------------------------------------------------


def test_a_planted_id_is_never_adopted_even_when_validly_signed(make_app: MakeApp) -> None:
    app, middleware = make_app(session_app)
    planted = generate_sid()  # what an attacker would put in a victim's browser
    app.set_cookie("connect.sid", encode_value(sign(planted, SECRET)))
    issued = sid_in(app.get("/login?user=victim"))
    assert issued != planted
    assert middleware.store.load(planted) is None, "nothing was ever stored under the planted id"
    assert middleware.store.get(issued)["user"] == "victim"  # type: ignore[index]


def test_a_validly_signed_id_with_no_row_is_not_adopted_by_a_write_without_regenerate(
    make_app: MakeApp,
) -> None:
    # The app never calls regenerate(): only the middleware stands between the
    # planted id and the row the app's write creates.
    app, middleware = make_app(session_app)
    planted = generate_sid()
    app.set_cookie("connect.sid", encode_value(sign(planted, SECRET)))
    response = app.get("/incr")
    issued = sid_in(response)
    assert issued != planted
    assert middleware.store.load(planted) is None, "nothing was stored under the planted id"
    assert middleware.store.get(issued)["count"] == 1  # type: ignore[index]
    assert middleware.store.count() == 1


def privileged_app(environ: dict[str, Any], start_response: Any) -> Any:
    """``session_app``, plus the login and logout flows that call regenerate() twice or with invalidate()."""
    session = environ["dbsession"]
    if environ["PATH_INFO"] == "/login-twice":  # e.g. a login, then a sudo step, in one request
        session.regenerate()
        session["user"] = "victim"
        session.regenerate()
        session["sudo"] = True
    elif environ["PATH_INFO"] == "/login-then-logout":  # e.g. a login refused after regenerate()
        session.regenerate()
        session["user"] = "victim"
        session.invalidate()
    else:
        return session_app(environ, start_response)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done"]


def test_regenerating_twice_in_one_request_still_retires_the_id_known_before_login(
    make_app: MakeApp,
) -> None:
    app, middleware = make_app(privileged_app)
    before_login = sid_in(app.get("/incr"))
    attacker = webtest.TestApp(middleware)
    attacker.set_cookie("connect.sid", app.cookies["connect.sid"])
    after_login = sid_in(app.get("/login-twice"))
    assert after_login != before_login
    assert middleware.store.load(before_login) is None
    assert attacker.get("/read").json["data"] == {}, "the old id opens nothing"
    assert app.get("/read").json["data"] == {"count": 1, "user": "victim", "sudo": True}
    assert middleware.store.count() == 1


def test_logout_right_after_regenerate_in_one_request_deletes_the_id_known_before_login(
    make_app: MakeApp,
) -> None:
    app, middleware = make_app(privileged_app)
    before_login = sid_in(app.get("/incr"))
    attacker = webtest.TestApp(middleware)
    attacker.set_cookie("connect.sid", app.cookies["connect.sid"])
    (header,) = app.get("/login-then-logout").headers.getall("Set-Cookie")
    assert header.startswith("connect.sid=;") and "Max-Age=0" in header
    assert middleware.store.load(before_login) is None
    assert attacker.get("/read").json["data"] == {}, "the old id opens nothing"
    assert middleware.store.count() == 0


def test_login_regenerates_so_an_id_known_before_login_is_worthless(make_app: MakeApp) -> None:
    app, middleware = make_app(session_app)
    before_login = sid_in(app.get("/incr"))
    attacker = webtest.TestApp(middleware)
    attacker.set_cookie("connect.sid", app.cookies["connect.sid"])  # the id was fixed or sniffed pre-login
    after_login = sid_in(app.get("/login?user=victim"))
    assert after_login != before_login
    assert middleware.store.load(before_login) is None
    assert attacker.get("/read").json["data"] == {}, "the old id opens nothing"
    assert app.get("/read").json["data"] == {"count": 1, "user": "victim"}


def test_logout_deletes_the_row_so_a_replayed_cookie_is_worthless(make_app: MakeApp) -> None:
    app, _ = make_app(session_app)
    app.get("/login?user=victim")
    stolen = app.cookies["connect.sid"]
    app.get("/logout")
    replay = webtest.TestApp(app.app)
    replay.set_cookie("connect.sid", stolen)
    assert replay.get("/read").json["data"] == {}


# -- secret rotation -------------------------------------------------------------


def test_a_cookie_signed_with_a_retired_secret_opens_nothing_and_costs_no_query(make_app: MakeApp) -> None:
    old_app, old = make_app(session_app, secret=OLD_SECRET)
    old_app.get("/incr")
    cookie = old_app.cookies["connect.sid"]
    rotated, middleware = make_app(session_app, secret=[SECRET, OLD_SECRET])
    rotated.set_cookie("connect.sid", cookie)
    assert rotated.get("/read").json["data"] == {"count": 1}, "during rotation the old secret verifies"
    retired, middleware = make_app(session_app, secret=SECRET)
    retired.set_cookie("connect.sid", cookie)
    log = StatementLog(middleware.store)
    assert retired.get("/read").json["data"] == {}
    assert log.statements == [], "an unverifiable cookie costs no query"
    assert old.store.count() == 1, "the old row is not touched; it expires and is pruned"


# -- cookie flags --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected", "absent"),
    [
        ({}, ["HttpOnly", "SameSite=lax", "Path=/", "Max-Age=86400"], ["secure", "Domain"]),
        (
            {"secure": True, "samesite": "strict", "domain": "example.com", "path": "/app"},
            ["HttpOnly", "secure", "SameSite=strict", "Domain=example.com", "Path=/app"],
            [],
        ),
        ({"samesite": "none", "secure": True}, ["SameSite=none", "secure"], []),
        ({"httponly": False, "samesite": None}, ["Path=/"], ["HttpOnly", "SameSite"]),
        ({"max_age": None}, ["HttpOnly"], ["Max-Age", "expires"]),
    ],
    ids=["defaults", "strict-domain-path", "samesite-none", "no-httponly-no-samesite", "browser-session"],
)
def test_cookie_flags_follow_the_options_on_set_and_on_expire(
    make_app: MakeApp, options: dict[str, Any], expected: list[str], absent: list[str]
) -> None:
    app, _ = make_app(session_app, **options)
    set_header = app.get("/incr").headers["Set-Cookie"]
    expire_header = app.get("/logout").headers["Set-Cookie"]
    for header in (set_header, expire_header):
        attributes = [part.strip() for part in header.split(";")[1:]]
        for flag in expected:
            if header is expire_header and flag.startswith("Max-Age"):
                continue
            assert flag in attributes, (flag, header)
        for flag in absent:
            if header is expire_header and flag in ("Max-Age", "expires"):
                continue
            assert not any(part.lower().startswith(flag.lower()) for part in attributes), (flag, header)
    assert "Max-Age=0" in expire_header


# -- constant-time comparisons -------------------------------------------------------


def test_csrf_tokens_and_cookie_signatures_are_compared_with_compare_digest(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ["dbsession"]
        token = session.get_csrf_token()
        checks = [session.check_csrf_token(guess) for guess in (token, "0" * 40, None)]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"token": token, "checks": checks}).encode()]

    client, _ = make_app(app)
    client.get("/")  # the session and its token exist from now on
    monkeypatch.setattr(hmac, "compare_digest", spy)
    answer = client.get("/").json
    token = answer["token"]
    assert answer["checks"] == [True, False, False]
    assert (token.encode(), token.encode()) in compared, "the CSRF token went through compare_digest"
    assert (token.encode(), b"0" * 40) in compared
    signature = unquote(client.cookies["connect.sid"]).rpartition(".")[2]
    assert any(b == signature for _, b in compared), "the cookie signature went through compare_digest"


# -- no secret or session id in logs or reprs -------------------------------------------


def test_no_secret_or_session_id_in_logs_at_debug_level(
    make_app: MakeApp, db_url: str, table_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: the package's, and the drivers'
    caplog.set_level(
        logging.DEBUG, logger="sqlalchemy"
    )  # SQLAlchemy sets its own to WARN: its statements, pool
    app, middleware = make_app(session_app)
    sids: set[str | None] = set()
    for path, status in [
        ("/incr", 200),
        ("/nested", 200),
        ("/login?user=alice", 200),
        ("/read", 200),
        ("/unserializable", 500),
        ("/logout", 200),
        ("/incr", 200),
    ]:
        for header in app.get(path, status=status).headers.getall("Set-Cookie"):
            sids.add(middleware.manager.cookie.read(header.split(";", 1)[0]))
    assert len(sids - {None}) == 3, "the first session, the one login made, the one after logout"
    tampered = encode_value(sign(generate_sid(), SECRET))[:-4] + "AAAA"
    webtest.TestApp(middleware).get("/read", headers={"Cookie": f"connect.sid={tampered}"})

    # A statement that fails with its parameters bound: the table vanishes under a live cookie.
    broken = SessionMiddleware(
        session_app, secret=SECRET, url=db_url, table_name=f"{table_name}_gone", cleanup_interval=0
    )
    try:
        broken_app = webtest.TestApp(broken)
        sids.add(broken.manager.cookie.read(broken_app.get("/incr").headers["Set-Cookie"].split(";", 1)[0]))
        drop_table(broken.store.engine, broken.store.table)
        broken_app.get("/incr", status=[500, 503])  # SQLite reports a missing table as operational
    finally:
        broken.close()
    # An unreachable database.
    down = SessionMiddleware(session_app, secret=SECRET, url=_unreachable(db_url), cleanup_interval=0)
    try:
        down_app = webtest.TestApp(down)
        down_app.set_cookie("connect.sid", app.cookies["connect.sid"])
        # SQLite's "unable to open database file" is a misconfiguration (a 500), not an outage.
        down_app.get("/read", status=500 if db_url.startswith("sqlite") else 503)
    finally:
        down.close()

    sids.discard(None)
    assert len(sids) == 4
    assert "SELECT" in caplog.text, "SQLAlchemy's statement log was on"
    leaks = [sid for sid in sids if sid in caplog.text]
    assert leaks == [], caplog.text
    assert SECRET not in caplog.text
    assert not re.search(r"s%3A|s:[A-Za-z0-9_-]{16,}\.", caplog.text), "no signed cookie value in logs"
    assert "SQL parameters hidden" in caplog.text or db_url.startswith("sqlite"), (
        "the failed statement was logged, without its parameters"
    )


def test_no_secret_or_session_id_in_reprs(make_app: MakeApp) -> None:
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ["dbsession"]
        seen["unloaded"] = repr(session)
        session["user"] = "alice"
        seen["sid"] = session.id
        seen["loaded"] = repr(session)
        start_response("200 OK", [])
        return [b""]

    client, middleware = make_app(app)
    client.get("/")
    sid = seen["sid"]
    stored = middleware.store.load(sid)
    password_store = SessionStore(
        url="postgresql://app:hunter2-very-secret@db.invalid/app", create_table=False
    )
    texts = [
        seen["unloaded"],
        seen["loaded"],
        repr(middleware),
        repr(middleware.store),
        repr(middleware.manager.cookie),
        repr(middleware.manager.factory),
        repr(CookieUpdate(sid, 60)),
        repr(stored),
        repr(password_store),
    ]
    password_store.dispose()
    for text in texts:
        assert sid not in text, text
        assert SECRET not in text and SECRET.encode().hex() not in text, text
        assert repr(SECRET.encode()) not in text, text
        assert "hunter2" not in text, text


def _unreachable(url: str) -> str:
    """The same database kind at a closed port (SQLite: a file in a missing directory)."""
    if url.startswith("sqlite"):
        return "sqlite:////nonexistent-directory/sessions.sqlite"
    return str(sa.make_url(url).set(port=1).render_as_string(hide_password=False))


def test_the_package_never_imports_pickle() -> None:
    unsafe = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "jsonpickle"}
    found = []
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            found += [f"{path.name}: {name}" for name in names if name.split(".")[0] in unsafe]
    assert found == []


@pytest.mark.parametrize("page", ["security.md", "reliability.md"])
def test_every_test_named_in_the_docs_exists(page: str) -> None:
    named = set(re.findall(r"`(tests/\w+\.py)::(\w+)`", (ROOT / "docs" / page).read_text()))
    assert len(named) >= 10
    missing = [
        f"{module}::{name}"
        for module, name in sorted(named)
        if not re.search(rf"^def {name}\(", (ROOT / module).read_text(), re.MULTILINE)
    ]
    assert missing == [], f"docs/{page} names tests that do not exist"


# Where a planted bug is known to break a guarantee (mutation/planted.py), the
# guarantee's row must name the test that fails with that bug: a row that names
# only tests passing beside the bug (the fixation row once named a test whose
# login regenerate() hid adoption) promises more than the suite checks.
CATCHING_TESTS = [
    (
        "security.md",
        "No id the server did not issue is ever adopted",
        "tests/test_security.py::test_a_validly_signed_id_with_no_row_is_not_adopted_by_a_write_without_regenerate",
    ),
    (
        "security.md",
        "`regenerate()` at login makes an id known before login worthless",
        "tests/test_security.py::test_regenerating_twice_in_one_request_still_retires_the_id_known_before_login",
    ),
    (
        "security.md",
        "`regenerate()` at login makes an id known before login worthless",
        "tests/test_security.py::test_logout_right_after_regenerate_in_one_request_deletes_the_id_known_before_login",
    ),
    (
        "reliability.md",
        "A key removed by one request and another set by the other",
        "tests/test_concurrency.py::test_a_key_deleted_by_the_request_that_saves_last_stays_deleted",
    ),
    (
        "reliability.md",
        "An app that swallows a failed save never gets its success page out",
        "tests/test_faults.py::test_app_that_swallows_a_failed_save_never_gets_its_success_page_out",
    ),
    (
        "reliability.md",
        "An app that swallows a failed save never gets its success page out",
        "tests/test_middleware.py::test_a_failed_save_sticks_even_when_the_app_retries_with_a_session_that_would_save",
    ),
]


def guarantee_rows(page: str) -> dict[str, set[str]]:
    """The rows of a page's guarantees table: the guarantee's text, the tests it names."""
    rows = {}
    for line in (ROOT / "docs" / page).read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if line.startswith("| ") and len(cells) == 2:
            rows[cells[0]] = {f"{m}::{n}" for m, n in re.findall(r"`(tests/\w+\.py)::(\w+)`", cells[1])}
    return rows


@pytest.mark.parametrize(
    ("page", "guarantee", "test"),
    CATCHING_TESTS,
    ids=[test.rpartition("::")[2] for _, _, test in CATCHING_TESTS],
)
def test_a_guarantee_names_the_test_that_catches_its_planted_bug(
    page: str, guarantee: str, test: str
) -> None:
    rows = [tests for text, tests in guarantee_rows(page).items() if text.startswith(guarantee)]
    assert len(rows) == 1, f"docs/{page} has no single row for {guarantee!r}"
    assert test in rows[0], f"docs/{page}: the row {guarantee!r} does not name {test}"


def test_every_planted_bug_and_its_tests_are_in_the_docs() -> None:
    script = ROOT / "mutation" / "planted.py"
    if not script.exists() and not (ROOT / ".git").exists():
        pytest.skip("an sdist does not carry mutation/, the maintainers' tools")
    spec = importlib.util.spec_from_file_location("planted", script)
    assert spec is not None and spec.loader is not None
    planted = importlib.util.module_from_spec(spec)
    sys.modules["planted"] = planted  # its dataclasses look their module up
    try:
        spec.loader.exec_module(planted)
    finally:
        del sys.modules["planted"]
    page = (ROOT / "docs" / "reliability.md").read_text()
    named = set(re.findall(r"`(tests/\w+\.py::\w+)`", page))
    for bug in planted.PLANTED:
        assert f"`{bug.name}`" in page, f"docs/reliability.md does not list the planted bug {bug.name}"
        source = (ROOT / "wsgi_dbsession" / bug.file).read_text()
        assert source.count(bug.old) == 1, f"the planted bug {bug.name} no longer fits {bug.file}"
        for node in bug.tests:
            assert node.partition("[")[0] in named, f"docs/reliability.md does not name {node}"
