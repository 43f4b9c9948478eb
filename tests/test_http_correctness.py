"""HTTP correctness (issue 13): caches, streamed bodies, expiry, error pages and configuration mistakes.

Each test names the behaviour it holds; the database matters for the ones
parametrized over ``backend``. The server tests (marked slow) run real
waitress and gunicorn processes against a store nobody listens for.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import webob
import webtest

from conftest import LIVE_URLS, SECRET, drop_table, stop_process, unique_table_name
from tests import process_helpers
from tests.topology import Server, free_port, get, start_gunicorn, wait_for
from wsgi_dbsession import (
    ConfigurationError,
    SerializationError,
    SessionMiddleware,
    generate_sid,
    sign,
)
from wsgi_dbsession.cookies import encode_value
from wsgi_dbsession.pyramid import session_factory_from_settings
from wsgi_dbsession.settings import parse_settings
from wsgi_dbsession.store import utcnow

ROOT = Path(__file__).resolve().parent.parent
MakeApp = Callable[..., tuple[webtest.TestApp, SessionMiddleware]]
OTHER_SECRET = "another-apps-secret-0123456789abcdefghijklmnop"


def closed_port_url() -> str:
    """A PostgreSQL URL nothing listens on: every connection is refused."""
    return f"postgresql://postgres@127.0.0.1:{free_port()}/test"


def foreign_cookie(secret: str = SECRET) -> str:
    return f"connect.sid={encode_value(sign(generate_sid(), secret))}"


def session_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """``/none`` never touches the session; ``/read`` reads it; ``/write`` counts; ``/expiry/<n|none>``.

    ``?cache=<Cache-Control>`` and ``?vary=<Vary>`` add the app's own headers.
    """
    request = webob.Request(environ)
    session = environ["dbsession"]
    path = request.path_info
    body: Any = "ok"
    if path == "/read":
        body = dict(session)
    elif path == "/write":
        session["count"] = session.get("count", 0) + 1
        body = session["count"]
    elif path.startswith("/expiry/"):
        seconds = path.rsplit("/", 1)[1]
        session.set_expiry(None if seconds == "none" else int(seconds))
    elif path.startswith("/put/"):
        kind = path.rsplit("/", 1)[1]
        session[kind] = {"tuple": (1, 2), "int-key": {1: "a"}, "nested": [{"n": {2: 3}}]}[kind]
    payload = json.dumps(body).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
    for name, value in (("Cache-Control", request.GET.get("cache")), ("Vary", request.GET.get("vary"))):
        if value is not None:
            headers.append((name, value))
    start_response("200 OK", headers)
    return [payload]


# -- 1. caches ----------------------------------------------------------------------


def vary_tokens(response: webtest.TestResponse) -> list[str]:
    return [token.strip().lower() for value in response.headers.getall("Vary") for token in value.split(",")]


def test_every_response_that_accessed_the_session_varies_on_cookie_and_no_other(
    backend: str, make_app: MakeApp
) -> None:
    app, _ = make_app(session_app)
    created = app.get("/write")  # a new session
    assert "cookie" in vary_tokens(created)
    for path in ("/read", "/write", "/expiry/600"):  # an existing session read, changed, given a lifetime
        assert "cookie" in vary_tokens(app.get(path)), path
    merged = app.get("/read", {"vary": "Accept-Encoding"})
    assert merged.headers.getall("Vary") == ["Accept-Encoding, Cookie"]
    assert vary_tokens(app.get("/read", {"vary": "Cookie"})) == ["cookie"]  # not twice
    untouched = app.get("/none")  # with the session cookie, but the app never used the session
    assert "connect.sid" in untouched.request.headers.get("Cookie", "")
    assert "cookie" not in vary_tokens(untouched)
    assert "Cache-Control" not in untouched.headers
    assert "cookie" not in vary_tokens(webtest.TestApp(app.app).get("/none"))  # nor without a cookie


def test_every_header_of_the_app_is_kept_around_the_ones_the_session_changes() -> None:
    from wsgi_dbsession.middleware import cache_headers

    headers = [
        ("Vary", "Accept-Encoding"),
        ("X-After-Vary", "1"),
        ("Cache-Control", "max-age=60"),
        ("X-Last", "2"),
    ]
    assert cache_headers(headers, set_cookie=True) == [
        ("Vary", "Accept-Encoding, Cookie"),
        ("X-After-Vary", "1"),
        ("Cache-Control", "max-age=60, private"),
        ("X-Last", "2"),
    ]


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    ("app_says", "sent"),
    [
        (None, "private"),
        ("no-store", "no-store"),
        ("private, max-age=60", "private, max-age=60"),
        ("no-cache, no-store, must-revalidate", "no-cache, no-store, must-revalidate"),
        ("public, max-age=60, s-maxage=600", "max-age=60, private"),
    ],
)
def test_a_response_setting_the_session_cookie_is_never_stored_by_a_shared_cache(
    backend: str, make_app: MakeApp, app_says: str | None, sent: str
) -> None:
    app, _ = make_app(session_app)
    query = {} if app_says is None else {"cache": app_says}
    response = app.get("/write", query)
    assert response.headers.getall("Set-Cookie")
    assert response.headers.getall("Cache-Control") == [sent]
    # A read that sends no cookie leaves the app's caching alone (it still varies on Cookie).
    read = app.get("/read", query)
    assert not read.headers.getall("Set-Cookie")
    assert read.headers.getall("Cache-Control") == ([] if app_says is None else [app_says])


# -- 2. a change made while a streamed body is produced -----------------------------


class CountingBody:
    """A body that is not a list: the session is used only while it is iterated."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def __iter__(self) -> Iterator[bytes]:
        yield b"counting..."
        self.session["count"] = self.session.get("count", 0) + 1
        yield b"done"


def streaming_app(environ: dict[str, Any], start_response: Any) -> Any:
    if environ["PATH_INFO"] == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return CountingBody(environ["dbsession"])
    return session_app(environ, start_response)


def test_a_change_made_while_a_streamed_body_is_produced_is_saved(backend: str, make_app: MakeApp) -> None:
    app, _ = make_app(streaming_app)
    assert app.get("/write").json == 1
    streamed = app.get("/stream")
    assert streamed.body == b"counting...done"
    assert not streamed.headers.getall("Set-Cookie")  # the headers went before the change
    assert app.get("/read").json == {"count": 2}


def test_a_change_saved_as_the_body_streams_over_https_keeps_the_secure_flag(
    backend: str, make_app: MakeApp
) -> None:
    app, middleware = make_app(streaming_app)
    https = {"wsgi.url_scheme": "https"}
    assert app.get("/write", extra_environ=https).json == 1
    sid = middleware.manager.cookie.read(f"connect.sid={app.cookies['connect.sid']}")
    assert sid is not None
    assert app.get("/stream", extra_environ=https).body == b"counting...done"
    stored = middleware.store.load(sid)
    assert stored is not None
    record = json.loads(stored.text)
    assert record["count"] == 2 and record["cookie"].get("secure") is True


# -- 3. lifetimes ---------------------------------------------------------------------


def session_cookie_of(response: webtest.TestResponse) -> str:
    (cookie,) = [value for value in response.headers.getall("Set-Cookie") if value.startswith("connect.sid=")]
    return cookie


def test_every_change_of_lifetime_sends_the_matching_cookie(backend: str, make_app: MakeApp) -> None:
    app, _ = make_app(session_app)
    assert "Max-Age=86400" in session_cookie_of(app.get("/write"))
    browser_session = session_cookie_of(app.get("/expiry/none"))
    assert "Max-Age" not in browser_session and "expires" not in browser_session.lower()
    assert "Max-Age=3600" in session_cookie_of(app.get("/expiry/3600"))
    browser_session = session_cookie_of(app.get("/expiry/none"))
    assert "Max-Age" not in browser_session and "expires" not in browser_session.lower()


# -- 4. cookie attributes browsers reject --------------------------------------------


def test_samesite_none_without_secure_is_refused_at_construction() -> None:
    with pytest.raises(ConfigurationError, match=r'samesite="none" needs secure=True'):
        SessionMiddleware(session_app, secret=SECRET, url="sqlite://", samesite="none", secure=False)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_samesite_none_with_secure_auto_never_fails_a_request_over_http(
    backend: str, make_app: MakeApp
) -> None:
    app, _ = make_app(session_app, samesite="none", secure="auto")
    http = session_cookie_of(app.get("/write"))
    assert "samesite" not in http.lower() and "secure" not in http.lower()
    https = session_cookie_of(app.get("/write", extra_environ={"wsgi.url_scheme": "https"}))
    assert "; secure" in https and "SameSite=none" in https


# -- 5. the error page through test clients and servers --------------------------------


def unreachable_app(**options: Any) -> SessionMiddleware:
    return SessionMiddleware(session_app, secret=SECRET, url=closed_port_url(), cleanup_interval=0, **options)


def test_an_unreachable_store_answers_503_through_webob_get_response() -> None:
    middleware = unreachable_app()
    try:
        for path, cookie in (("/write", None), ("/read", foreign_cookie())):
            request = webob.Request.blank(path, headers={"Cookie": cookie} if cookie else {})
            response = request.get_response(middleware)
            assert response.status_int == 503, response.text
            assert "unavailable" in response.text
    finally:
        middleware.close()


def test_an_unreachable_store_answers_503_through_flasks_test_client() -> None:
    flask = pytest.importorskip("flask")
    app = flask.Flask(__name__)

    @app.route("/write")
    def write() -> str:
        flask.request.environ["dbsession"]["n"] = 1
        return "written"

    @app.route("/read")
    def read() -> str:
        return json.dumps(dict(flask.request.environ["dbsession"]))

    middleware = SessionMiddleware(app.wsgi_app, secret=SECRET, url=closed_port_url(), cleanup_interval=0)
    app.wsgi_app = middleware  # type: ignore[method-assign]
    try:
        client = app.test_client()
        for path, cookie in (("/write", None), ("/read", foreign_cookie())):
            if cookie is not None:  # the client's jar, not a header: it would replace the header
                client.set_cookie(*cookie.split("=", 1))
            response = client.get(path)
            assert response.status_code == 503, response.text
            assert "unavailable" in response.text
    finally:
        middleware.close()


def start_waitress(app: str, env: dict[str, str], log: Path) -> Server:
    port = free_port()
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", app],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "Serving on" in log.read_text(errors="replace"), process, "waitress start")
    except BaseException:
        stop_process(process)
        raise
    return Server(process, port, log)


@pytest.mark.slow
@pytest.mark.parametrize("server_name", ["waitress", "gunicorn"])
def test_an_unreachable_store_answers_a_complete_503_through_a_real_server(
    server_name: str, tmp_path: Path
) -> None:
    env = {"TOPOLOGY_APP_URL": closed_port_url(), "TOPOLOGY_APP_TABLE": unique_table_name("http")}
    log = tmp_path / f"{server_name}.log"
    app = "tests.servers.topology_app:app"
    server = (
        start_waitress(app, env, log)
        if server_name == "waitress"
        else start_gunicorn(app, env, log, workers=1)
    )
    try:
        # A new visitor (the save fails), then a returning one (the load fails).
        responses = [get(server.port, "/count"), get(server.port, "/read", foreign_cookie())]
    finally:
        server.stop()
    for response in responses:
        assert response.status == 503, (response.status, response.body, server.log_text()[-2000:])
        assert response.body == b"The session store is unavailable; try again shortly.\n"
        assert response.headers["Content-Length"] == str(len(response.body))
    assert "SystemError" not in server.log_text()


# -- 6. configuration mistakes ------------------------------------------------------------


def misconfigured_url(backend: str, mistake: str) -> str:
    if backend == "sqlite":
        return "sqlite:////no-such-directory-here/sessions.sqlite"
    url = sa.make_url(LIVE_URLS[backend])
    if mistake == "database":
        return url.set(database="no_such_database_13").render_as_string(hide_password=False)
    return url.set(username="no_such_user_13").render_as_string(hide_password=False)


@pytest.mark.parametrize(
    ("backend", "mistake", "said"),
    [
        ("postgresql", "database", 'database "no_such_database_13" does not exist'),
        ("postgresql", "user", "refused the configured credentials"),
        ("mariadb", "database", "Unknown database 'no_such_database_13'"),
        ("mariadb", "user", "refused the configured credentials"),
        ("sqlite", "database", "the session database does not exist"),
    ],
)
def test_a_misconfigured_database_is_a_500_with_an_error_log_saying_which(
    backend: str, mistake: str, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    middleware = SessionMiddleware(
        session_app, secret=SECRET, url=misconfigured_url(backend, mistake), cleanup_interval=0
    )
    try:
        app = webtest.TestApp(middleware)
        with caplog.at_level(logging.ERROR, logger="wsgi_dbsession"):
            app.get("/write", status=500)
            app.get("/read", headers={"Cookie": foreign_cookie()}, status=500)
    finally:
        middleware.close()
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 2
    for record in errors:
        assert record.exc_info is not None
        message = str(record.exc_info[1])
        assert said in message, message
        assert "check the url" in message, message


@pytest.mark.parametrize(
    ("url", "extra"),
    [
        ("postgresql+psycopg2://postgres@127.0.0.1/test", "postgresql"),
        ("mysql+mysqldb://root@127.0.0.1/test", "mysql"),
    ],
)
def test_a_missing_driver_is_a_configuration_error_naming_the_extra(url: str, extra: str) -> None:
    driver_module = {"postgresql": "psycopg2", "mysql": "MySQLdb"}[extra]
    with pytest.raises(ImportError):
        __import__(driver_module)  # the premise: that driver is not installed here
    with pytest.raises(ConfigurationError, match=rf"pip install 'wsgi_dbsession\[{extra}\]'"):
        SessionMiddleware(session_app, secret=SECRET, url=url)


@pytest.mark.parametrize("url", ["not a url", "nosuchdatabase://somewhere/db"])
def test_an_unparseable_or_unknown_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="url"):
        SessionMiddleware(session_app, secret=SECRET, url=url)


def test_a_postgres_url_is_read_as_postgresql() -> None:
    url = LIVE_URLS["postgresql"].replace("postgresql://", "postgres://", 1)
    assert url.startswith("postgres://")
    middleware = SessionMiddleware(session_app, secret=SECRET, url=url, table_name=unique_table_name())
    try:
        assert middleware.store.engine.dialect.name == "postgresql"
        app = webtest.TestApp(middleware)
        assert app.get("/write").json == 1
        assert app.get("/write").json == 2
    finally:
        drop_table(middleware.store.engine, middleware.store.table)
        middleware.close()


def test_an_option_given_as_text_is_refused_naming_it_and_parse_settings() -> None:
    with pytest.raises(ConfigurationError, match=r"max_age = '3600'.*parse_settings"):
        SessionMiddleware(session_app, secret=SECRET, url="sqlite://", max_age="3600")


def test_settings_text_is_still_coerced() -> None:
    options = parse_settings(
        {"dbsession.max_age": "3600", "dbsession.secure": "auto", "dbsession.rolling": "true"}, "dbsession."
    )
    assert options == {"max_age": 3600, "secure": "auto", "rolling": True}
    middleware = SessionMiddleware(session_app, secret=SECRET, url="sqlite://", **options)
    middleware.close()


@pytest.fixture
def default_file_warning(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """In an empty working directory, with the once-per-process warning not given yet."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("wsgi_dbsession.manager._warned_default_file", False)
    return tmp_path / "wsgi_dbsession.sqlite"


def test_the_default_sqlite_file_is_named_in_a_warning_once_per_process(
    default_file_warning: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="wsgi_dbsession"):
        # A misspelt prefix: the url is not read, so the default file is used.
        factory = session_factory_from_settings({"dbsession.secret": SECRET, "dbsesion.url": "sqlite://"})
        second = SessionMiddleware(session_app, secret=SECRET, cleanup_interval=0)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings == [
        f"no url or engine given: sessions are stored in the SQLite file {default_file_warning}"
    ]
    second.close()
    del factory


def test_no_warning_when_a_url_is_given(default_file_warning: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="wsgi_dbsession"):
        SessionMiddleware(session_app, secret=SECRET, url="sqlite://", cleanup_interval=0).close()
    assert not caplog.records


# -- 7. a cookie that does not verify ----------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_session_cookie_that_does_not_verify_is_logged_at_debug_without_its_value(
    backend: str, make_app: MakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = make_app(session_app)
    cookie = foreign_cookie(OTHER_SECRET)  # a rotated-out secret, or another app's cookie
    value = cookie.split("=", 1)[1]
    with caplog.at_level(logging.DEBUG, logger="wsgi_dbsession"):
        assert app.get("/read", headers={"Cookie": cookie}).json == {}
        app.get("/read", headers={"Cookie": "connect.sid=garbage-from-elsewhere"})
    lines = [record.getMessage() for record in caplog.records]
    assert sum("does not verify" in line for line in lines) == 2, lines
    text = "\n".join(lines)
    for secret_part in (value, value.split(".")[0], "garbage-from-elsewhere", SECRET, OTHER_SECRET):
        assert secret_part not in text
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="wsgi_dbsession"):
        app.get("/read", headers={"Cookie": "other=1"})  # no cookie of ours: nothing to say
    assert not any("does not verify" in record.getMessage() for record in caplog.records)


# -- 8. prune log lines ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"])
def test_prune_runs_log_at_info_only_when_they_deleted_something(
    backend: str, make_app: MakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    app, middleware = make_app(session_app, cleanup_interval=0.2)
    store = middleware.store
    store.set("expired-one-0123456789", {"n": 1}, utcnow() - dt.timedelta(hours=1))
    prunes = threading.Semaphore(0)

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE") and "_lease" not in statement:
            prunes.release()

    sa.event.listen(store.engine, "before_cursor_execute", count)
    try:
        # The job's own lines at DEBUG too: each run ends with one ("pruned 0 ..." at DEBUG).
        with caplog.at_level(logging.INFO), caplog.at_level(logging.DEBUG, logger="wsgi_dbsession.prune"):
            app.get("/none")  # the first request starts the prune job
            for _ in range(3):  # the run that deletes the expired row, then at least two that delete none
                assert prunes.acquire(timeout=20), "the prune job did not run"
            process_helpers.wait_for(  # the last run's log line
                lambda: sum(record.getMessage().startswith("pruned ") for record in caplog.records) >= 3
            )
            middleware.close()
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", count)
    info = [(record.name, record.getMessage()) for record in caplog.records if record.levelno >= logging.INFO]
    assert not [entry for entry in info if entry[0].startswith("apscheduler")], info
    pruned = [message for _, message in info if message.startswith("pruned ")]
    assert len(pruned) == 1 and pruned[0].startswith("pruned 1 expired session"), info
    assert store.count(expired=True) == 0


# -- 9. what the examples need ----------------------------------------------------------------


def test_the_pyramid_extra_installs_the_server_the_example_ini_files_use() -> None:
    # tomllib is Python 3.11+; the extra is one line of pyproject.toml.
    (line,) = [
        line for line in (ROOT / "pyproject.toml").read_text().splitlines() if line.startswith("pyramid = [")
    ]
    assert '"waitress' in line, line
    assert "use = egg:waitress" in (ROOT / "examples" / "app.ini").read_text()


# -- 10. values JSON would change --------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_non_string_key_at_the_top_is_refused(backend: str, make_app: MakeApp) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with pytest.raises(SerializationError) as refused:
            environ["dbsession"][1] = "x"
        assert refused.value.key == "1"  # the key's repr
        start_response("204 No Content", [])
        return []

    client, _ = make_app(app)
    assert not client.get("/", status=204).headers.getall("Set-Cookie")


@pytest.mark.parametrize("kind", ["int-key", "nested"])
def test_a_dict_with_a_non_string_key_is_an_error_naming_the_key_and_the_row_is_untouched(
    backend: str, make_app: MakeApp, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = make_app(session_app)
    assert app.get("/write").json == 1
    with caplog.at_level(logging.ERROR, logger="wsgi_dbsession"):
        refused = app.get(f"/put/{kind}", status=500)
    assert refused.text == "The session could not be saved.\n"
    (record,) = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert record.exc_info is not None
    error = record.exc_info[1]
    assert isinstance(error, SerializationError)
    assert error.key == kind
    assert f"session[{kind!r}]" in str(error)
    assert app.get("/read").json == {"count": 1}


def test_a_tuple_is_stored_as_a_list(backend: str, make_app: MakeApp) -> None:
    # As JSON has no tuple (and Flask's flash() stores tuples): documented, not an error.
    app, _ = make_app(session_app)
    app.get("/put/tuple")
    assert app.get("/read").json == {"tuple": [1, 2]}
