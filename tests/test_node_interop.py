"""One sessions table, one cookie, two apps: a real Express app and the middleware.

The Node side is express 4 + express-session + connect-session-knex (knex
with pg or sqlite3), installed from the npm registry by ``npm ci`` on
tests/node's lock file and run as a subprocess on loopback. The Python side
is the middleware behind a real wsgiref server. One cookie jar plays the
browser that talks to both, as two apps on one host share cookies.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.node_helpers import (  # noqa: F401 - the fixtures `interop` and `node`
    ISO_Z,
    MAX_AGE,
    NODE_DIR,
    NODE_ORIGINAL_MAX_AGE,
    SECRET_A,
    SECRET_B,
    Browser,
    Interop,
    cookie_value,
    get_with_cookie,
    interop_fixture,
    node_fixture,
    utcnow,
)
from wsgi_dbsession import sign
from wsgi_dbsession.cookies import encode_value, generate_sid
from wsgi_dbsession.express import from_iso

pytestmark = pytest.mark.slow


# -- the tests ------------------------------------------------------------------


def test_node_session_is_read_and_changed_in_python_and_node_sees_the_change(interop: Interop) -> None:
    node_url = interop.start_node()  # Node first: connect-session-knex creates the table
    python_url = interop.start_python()
    browser = Browser()

    body, node_cookies = browser.get(node_url + "/incr")
    assert body["data"] == {"count": 1}
    browser.get(node_url + "/set?key=passport&value=" + quote('{"user":"alice"}'))

    body, python_cookies = browser.get(python_url + "/incr")
    assert body["data"] == {"count": 2, "passport": {"user": "alice"}}
    # Same sid, same first secret: the middleware sends express-session's exact value.
    assert cookie_value(python_cookies[0]) == cookie_value(node_cookies[0])

    body, _ = browser.get(node_url + "/read")
    assert body["data"] == {
        "count": 2,
        "passport": {"user": "alice"},
        "_created": pytest.approx(time.time(), abs=60),
    }
    stored, _ = interop.row(browser.sid) or pytest.fail("the row is gone")
    assert next(iter(stored)) == "cookie"


def test_python_session_is_read_and_changed_in_node_and_python_sees_the_change(interop: Interop) -> None:
    python_url = interop.start_python()  # Python first: the middleware creates the table
    node_url = interop.start_node()
    browser = Browser()

    body, _ = browser.get(python_url + "/set?key=cart&value=" + quote('["book"]'))
    assert body["data"] == {"cart": ["book"]}

    body, _ = browser.get(node_url + "/incr")
    assert body["data"]["cart"] == ["book"] and body["data"]["count"] == 1
    assert body["cookie"]["originalMaxAge"] == NODE_ORIGINAL_MAX_AGE
    assert body["cookie"]["httpOnly"] is True and body["cookie"]["path"] == "/"
    assert body["cookie"]["sameSite"] == "lax"

    body, _ = browser.get(python_url + "/incr")
    assert body["data"] == {"cart": ["book"], "count": 2}
    body, _ = browser.get(node_url + "/read")
    assert body["data"]["count"] == 2


def test_expired_is_written_as_connect_session_knex_writes_it(interop: Interop) -> None:
    node_url = interop.start_node()
    python_url = interop.start_python()
    node_browser, python_browser = Browser(), Browser()
    node_browser.get(node_url + "/incr")
    python_browser.get(python_url + "/incr")

    for sid in (node_browser.sid, python_browser.sid):
        raw = interop.raw_expired(sid)
        stored, expires = interop.row(sid) or pytest.fail("the row is gone")
        if interop.kind == "sqlite":
            # Date.toISOString() text on both sides, so text comparison orders rows.
            assert isinstance(raw, str) and ISO_Z.fullmatch(raw), raw
        else:
            assert isinstance(raw, dt.datetime) and raw.utcoffset() is not None
        # The row's expiry is the cookie's: the same instant to the millisecond.
        assert abs(expires - from_iso(stored["cookie"]["expires"])) <= dt.timedelta(milliseconds=2)
        assert abs(expires - (utcnow() + dt.timedelta(seconds=MAX_AGE))) < dt.timedelta(seconds=10)


@pytest.mark.parametrize(("login_on", "logout_on"), [("node", "python"), ("python", "node")])
def test_a_logout_on_one_side_logs_out_the_other(interop: Interop, login_on: str, logout_on: str) -> None:
    urls = {"node": interop.start_node(), "python": interop.start_python()}
    browser = Browser()

    browser.get(urls[login_on] + "/login?user=alice")
    assert browser.get(urls[logout_on] + "/read")[0]["data"]["user"] == "alice"
    old_cookie, sid = browser.cookie, browser.sid
    assert old_cookie is not None

    browser.get(urls[logout_on] + "/logout")
    assert browser.cookie is None
    assert interop.row(sid) is None
    assert browser.get(urls[login_on] + "/read")[0]["data"] == {}
    assert get_with_cookie(urls[login_on] + "/read", old_cookie)["data"] == {}


def test_both_sides_agree_when_a_session_expires(interop: Interop) -> None:
    node_url = interop.start_node()
    python_url = interop.start_python()
    from_node, from_python = Browser(), Browser()
    from_node.get(node_url + "/incr")
    from_python.get(python_url + "/incr")
    node_sid, python_sid = from_node.sid, from_python.sid
    assert node_sid != python_sid

    # Moved into the past (written in the package's format): neither side loads it.
    interop.store.touch(python_sid, utcnow() - dt.timedelta(seconds=2))
    interop.store.touch(node_sid, utcnow() - dt.timedelta(seconds=2))
    for sid in (node_sid, python_sid):
        cookie = encode_value(sign(sid, SECRET_A))
        assert get_with_cookie(node_url + "/read", cookie)["data"] == {}
        assert get_with_cookie(python_url + "/read", cookie)["data"] == {}

    # A minute ahead (room for a loaded machine): both load it (Python first: Node's
    # read touches the row).
    interop.store.touch(python_sid, utcnow() + dt.timedelta(seconds=60))
    assert from_python.get(python_url + "/read")[0]["data"] == {"count": 1}
    assert from_python.get(node_url + "/read")[0]["data"]["count"] == 1
    # express-session touches the row on every request: now + the stored originalMaxAge.
    _, expires = interop.row(python_sid) or pytest.fail("the row is gone")
    assert abs(expires - (utcnow() + dt.timedelta(seconds=MAX_AGE))) < dt.timedelta(seconds=10)


def test_each_side_prunes_what_the_other_wrote_and_only_what_expired(interop: Interop) -> None:
    # maxAge -1 s makes express-session and connect-session-knex write a row
    # that is already expired, in Node's own format.
    expired_node_url = interop.start_node(max_age_ms=-1000)
    node_url = interop.start_node()
    python_url = interop.start_python()
    dead_node, live_node, dead_python, live_python = Browser(), Browser(), Browser(), Browser()
    dead_node.get(expired_node_url + "/incr")
    assert dead_node.cookie is None  # the browser dropped a cookie that expired on arrival
    live_node.get(node_url + "/incr")
    live_python.get(python_url + "/incr")
    assert (interop.store.count(), interop.store.count(expired=True)) == (2, 1)
    assert interop.store.prune() == 1  # Python prunes the row Node wrote expired

    dead_python.get(python_url + "/incr")
    interop.store.touch(dead_python.sid, utcnow() - dt.timedelta(seconds=2))
    assert (interop.store.count(), interop.store.count(expired=True)) == (2, 1)
    assert Browser().get(node_url + "/cleanup")[0] == {"ok": True}  # Node prunes Python's
    assert (interop.store.count(), interop.store.count(expired=True)) == (2, 0)
    assert interop.row(live_node.sid) is not None and interop.row(live_python.sid) is not None


def test_browser_session_cookies_keep_a_one_day_row_on_both_sides(interop: Interop) -> None:
    node_url = interop.start_node(max_age_ms=None)
    python_url = interop.start_python(max_age=None)
    browser = Browser()

    body, cookies = browser.get(python_url + "/incr")
    assert "expires" not in cookies[0].lower() and "max-age" not in cookies[0].lower()
    body, _ = browser.get(node_url + "/incr")
    assert body["cookie"]["originalMaxAge"] is None and body["cookie"].get("expires") is None
    stored, expires = interop.row(browser.sid) or pytest.fail("the row is gone")
    assert stored["cookie"]["originalMaxAge"] is None
    assert abs(expires - (utcnow() + dt.timedelta(days=1))) < dt.timedelta(seconds=10)

    browser.get(python_url + "/incr")
    stored, expires = interop.row(browser.sid) or pytest.fail("the row is gone")
    assert stored["cookie"] == {
        "originalMaxAge": None,
        "expires": None,
        "httpOnly": True,
        "path": "/",
        "sameSite": "lax",
    }
    assert stored["count"] == 3
    assert abs(expires - (utcnow() + dt.timedelta(days=1))) < dt.timedelta(seconds=10)


def test_rotated_secrets_verify_on_both_sides(interop: Interop) -> None:
    # Node signs with A and still accepts B; Python signs with B and still accepts A.
    node_url = interop.start_node(secrets=(SECRET_A, SECRET_B))
    python_url = interop.start_python(secret=[SECRET_B, SECRET_A])
    browser = Browser()

    browser.get(node_url + "/incr")
    signed_by_node = browser.cookie
    assert signed_by_node == encode_value(sign(browser.sid, SECRET_A))
    assert browser.get(python_url + "/incr")[0]["data"] == {"count": 2}
    assert browser.cookie == encode_value(sign(browser.sid, SECRET_B))
    assert browser.get(node_url + "/incr")[0]["data"]["count"] == 3


def test_cookie_values_match_express_session_byte_for_byte(node: str) -> None:
    sids = ["DJW_JaSWR-41-zW3df0G0g7HB8t5bwK4", *(generate_sid() for _ in range(20))]
    secrets = ["keyboard cat", SECRET_A, "sécret with ünïcode and spaces"]
    script = """
        const signature = require("cookie-signature");
        const cookie = require("cookie");
        const [sids, secrets] = JSON.parse(process.argv[1]);
        const out = [];
        for (const secret of secrets) for (const sid of sids)
          out.push(cookie.serialize("connect.sid", "s:" + signature.sign(sid, secret)));
        process.stdout.write(JSON.stringify(out));
    """
    # express-session's own modules, resolved from its node_modules.
    result = subprocess.run(
        [node, "-e", script, json.dumps([sids, secrets])],
        cwd=NODE_DIR / "node_modules" / "express-session",
        capture_output=True,
        text=True,
        check=True,
    )
    expected = json.loads(result.stdout)
    ours = [f"connect.sid={encode_value(sign(sid, secret))}" for secret in secrets for sid in sids]
    assert ours == expected
    assert any("%2B" in value or "%2F" in value for value in ours)


def test_cookie_options_only_express_knows_survive_a_python_write(interop: Interop) -> None:
    node_url = interop.start_node(cookie={"priority": "high", "partitioned": True})
    python_url = interop.start_python()
    browser = Browser()

    _, cookies = browser.get(node_url + "/incr")
    assert "Priority=High" in cookies[0] and "Partitioned" in cookies[0]
    browser.get(python_url + "/incr")
    stored, _ = interop.row(browser.sid) or pytest.fail("the row is gone")
    assert stored["cookie"]["priority"] == "high" and stored["cookie"]["partitioned"] is True
    # express-session rebuilds its Set-Cookie from the stored cookie object.
    body, cookies = browser.get(node_url + "/incr")
    assert body["data"]["count"] == 3
    assert "Priority=High" in cookies[0] and "Partitioned" in cookies[0]


def code_block(text: str, language: str) -> str:
    (block,) = re.findall(rf"^```{language}\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    return str(block)


@pytest.mark.parametrize("interop", ["postgresql"], indirect=True)
def test_the_worked_example_shares_a_login(interop: Interop, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/interop.md's two apps, run as written, on a table of their own."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "interop.md").read_text()
    js, py = code_block(doc, "js"), code_block(doc, "python")
    assert js.count('tableName: "sessions"') == 1 and py.count('table_name="sessions"') == 1
    script = interop.tmp_path / "server.js"
    script.write_text(js.replace('tableName: "sessions"', f'tableName: "{interop.table_name}"'))
    env = {"DATABASE_URL": interop.url, "SESSION_SECRETS": f"{SECRET_A} {SECRET_B}", "PORT": "0"}
    node_url = interop.start_node(script=script, env=env)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    namespace: dict[str, Any] = {}
    exec(py.replace('table_name="sessions"', f'table_name="{interop.table_name}"'), namespace)
    python_url = interop.serve(namespace["app"])
    browser = Browser()

    def text(url: str) -> str:
        with browser.opener.open(url, timeout=10) as response:
            return str(response.read().decode())

    assert text(node_url + "/login?user=alice") == "logged in as alice"
    assert text(python_url + "/") == "hello alice, visit 1"
    assert text(node_url + "/") == "hello alice, visit 2"
    assert text(python_url + "/logout") == "logged out"
    assert text(node_url + "/") == "hello stranger, visit 1"


# -- a Flask app (wsgi_dbsession.flask) instead of the middleware -----------------------


class FlaskServed:
    """A Flask app on DBSession as Interop.serve takes an app: a WSGI callable with close()."""

    def __init__(self, config: dict[str, Any]) -> None:
        from tests.flask_apps import interop_app

        self.app = interop_app(config)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self.app(environ, start_response)

    def close(self) -> None:
        self.app.extensions["dbsession"].close()


@pytest.mark.parametrize(("login_on", "logout_on"), [("node", "flask"), ("flask", "node")])
def test_a_flask_app_shares_a_login_with_node(interop: Interop, login_on: str, logout_on: str) -> None:
    node_url = interop.start_node()  # Node first: connect-session-knex creates the table
    flask = FlaskServed(
        {
            "SECRET_KEY": SECRET_A,
            "DBSESSION_URL": interop.url,
            "DBSESSION_TABLE_NAME": interop.table_name,
            "DBSESSION_MAX_AGE": MAX_AGE,
            "DBSESSION_CLEANUP_INTERVAL": 0,
        }
    )
    urls = {"node": node_url, "flask": interop.serve(flask)}  # type: ignore[arg-type]
    other = "flask" if login_on == "node" else "node"
    browser = Browser()

    _, login_cookies = browser.get(urls[login_on] + "/login?user=alice")
    body, other_cookies = browser.get(urls[other] + "/incr")
    assert body["data"]["user"] == "alice" and body["data"]["count"] == 1
    if other == "flask":
        assert body["permanent"] is True  # Node's cookie.maxAge is a lifetime: a permanent session
    # Same sid, same secret: both send express-session's exact cookie value.
    assert cookie_value(other_cookies[0]) == cookie_value(login_cookies[0])
    stored, _ = interop.row(browser.sid) or pytest.fail("the row is gone")
    written_by_node = other == "node"  # the last write was the other app's /incr
    original_max_age = NODE_ORIGINAL_MAX_AGE if written_by_node else MAX_AGE * 1000
    assert next(iter(stored)) == "cookie" and stored["cookie"]["originalMaxAge"] == original_max_age
    assert stored["user"] == "alice" and stored["count"] == 1

    old_cookie, sid = browser.cookie, browser.sid
    assert old_cookie is not None
    browser.get(urls[logout_on] + "/logout")
    assert browser.cookie is None
    assert interop.row(sid) is None
    for side in ("node", "flask"):
        assert browser.get(urls[side] + "/read")[0]["data"] == {}
        assert get_with_cookie(urls[side] + "/read", old_cookie)["data"] == {}
