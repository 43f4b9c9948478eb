"""Every example, started as a real process, keeps a session across requests from a cookie-jar client."""

from __future__ import annotations

import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import LIVE_URLS, SECRET, drop_table, unique_table_name
from tests.example_helpers import EXAMPLES, ROOT, Browser, serving
from wsgi_dbsession import SessionStore

pytestmark = pytest.mark.slow

CSRF_FIELD = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')


def check_session_persists(base: str) -> Browser:
    browser = Browser(base)
    assert "Visits: 1" in browser.get()
    assert len(browser.jar) == 1
    assert "Visits: 2" in browser.get()
    return browser


def check_login_with_csrf(browser: Browser, refused_status: int) -> None:
    """Login needs the page's CSRF token, gives a new session id, and logout ends the session."""
    page = browser.get()
    match = CSRF_FIELD.search(page)
    assert match, page
    before = browser.cookie()
    with pytest.raises(urllib.error.HTTPError) as refused:
        browser.post("/login", user="mallory")
    refused.value.close()
    assert refused.value.code == refused_status
    page = browser.post("/login", user="alice", csrf_token=match.group(1))
    assert "Logged in as alice." in page
    assert browser.cookie() != before
    token = CSRF_FIELD.search(page)
    assert token, page
    page = browser.post("/logout", csrf_token=token.group(1))
    assert "Not logged in." in page and "Visits: 1" in page


def test_sqlite_demo_keeps_its_sessions_in_the_default_file(tmp_path: Path) -> None:
    with serving([str(EXAMPLES / "example.py"), "--port", "0"], r"Serving on (\S+)", tmp_path) as base:
        check_login_with_csrf(check_session_persists(base), 403)
    assert (tmp_path / "wsgi_dbsession.sqlite").stat().st_size > 0


def test_postgresql_app_stores_sessions_in_the_given_table(tmp_path: Path) -> None:
    table = unique_table_name("example")
    url = LIVE_URLS["postgresql"]
    store = SessionStore(url=url, table_name=table, create_table=False)
    try:
        with serving(
            [str(EXAMPLES / "postgresql_app.py"), "--port", "0"],
            r"Serving on (\S+)",
            tmp_path,
            WSGI_DBSESSION_URL=url,
            WSGI_DBSESSION_TABLE=table,
        ) as base:
            check_session_persists(base)
            assert store.count() == 1
    finally:
        drop_table(store.engine, store.table)
        store.dispose()


def test_pyramid_app_runs_on_its_own(tmp_path: Path) -> None:
    with serving([str(EXAMPLES / "pyramid_app.py"), "--port", "0"], r"Serving on (\S+)", tmp_path) as base:
        check_login_with_csrf(check_session_persists(base), 400)  # Pyramid's BadCSRFToken


def test_ini_pipeline_under_pserve(tmp_path: Path) -> None:
    args = [
        "-m",
        "pyramid.scripts.pserve",
        str(EXAMPLES / "app.ini"),
        "http_port=0",
        f"session_secret={SECRET}",
    ]
    with serving(args, r"Serving on (http://\S+)", tmp_path) as base:
        browser = check_session_persists(base)
        assert browser.cookie().startswith("demo.sid=")  # cookie_name from the ini
    assert _expiry_seconds(tmp_path / "wsgi_dbsession.sqlite") == pytest.approx(3600, abs=60)


def test_pyramid_ini_under_gunicorn_with_the_example_config(tmp_path: Path) -> None:
    args = [
        "-m",
        "gunicorn",
        "-c",
        str(EXAMPLES / "gunicorn.conf.py"),
        "--paste",
        str(EXAMPLES / "pyramid.ini"),
        "--paste-global",
        f"session_secret={SECRET}",
        "--bind",
        "127.0.0.1:0",
    ]
    with serving(args, r"Listening at: (http://\S+)", tmp_path) as base:
        browser = check_session_persists(base)
        assert browser.cookie().startswith("pyramid.sid=")
        check_login_with_csrf(browser, 400)


def _expiry_seconds(path: Path) -> float:
    """Seconds from now to the expiry of the one row in an example's SQLite file."""
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            (seconds,) = conn.execute(
                sa.text("SELECT (julianday(expired) - julianday('now')) * 86400 FROM sessions")
            ).one()
        return float(seconds)
    finally:
        engine.dispose()


# The distribution each module examples/flask_app.py imports comes from (werkzeug: with Flask).
FLASK_EXAMPLE_IMPORTS = {
    "flask": "flask",
    "werkzeug": "flask",
    "flask_login": "flask-login",
    "flask_wtf": "flask-wtf",
}


def extra_requirements(extra: str) -> set[str]:
    """The distributions pyproject.toml's ``extra`` installs, its own extras included."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    line = re.search(rf"^{re.escape(extra)} = \[(.*)\]", pyproject, re.MULTILINE)
    assert line, f"pyproject.toml has no extra {extra!r}"
    required: set[str] = set()
    for item in re.findall(r'"([^"]+)"', line.group(1)):
        nested = re.fullmatch(r"wsgi_dbsession\[([\w,-]+)\]", item)
        if nested:
            for name in nested.group(1).split(","):
                required |= extra_requirements(name)
        else:
            required.add(re.split(r"[<>=!~\[; ]", item, maxsplit=1)[0].lower())
    return required


def test_the_flask_example_needs_only_what_the_install_line_of_its_docs_installs() -> None:
    """docs/flask.md's install line for examples/flask_app.py (which the tests above run)
    names an extra that installs every distribution the example imports (issue 24)."""
    doc = (ROOT / "docs" / "flask.md").read_text()
    (extra,) = re.findall(
        r'^pip install "wsgi_dbsession\[([\w-]+)\]"\nflask --app examples/flask_app.py', doc, re.M
    )
    source = (EXAMPLES / "flask_app.py").read_text()
    imported = set(re.findall(r"^(?:from|import) (\w+)", source, re.MULTILINE))
    third_party = imported - {"__future__", "typing", "example", "wsgi_dbsession"}
    assert third_party <= FLASK_EXAMPLE_IMPORTS.keys(), f"map {third_party - FLASK_EXAMPLE_IMPORTS.keys()}"
    needed = {FLASK_EXAMPLE_IMPORTS[module] for module in third_party}
    assert needed == {"flask", "flask-login", "flask-wtf"}
    assert needed <= extra_requirements(extra)
