"""``absolute_max_age`` on a session a real Express app created (issue 29).

express-session and connect-session-knex know nothing of the limit: their
rows have no ``_created`` and every Node write moves ``expired`` a whole
``maxAge`` ahead. The middleware gives such a row its creation time the
first time it loads it, and ends the session once the limit has passed even
though Node moved the expiry; Node then sees a new session, not an error.
"""

from __future__ import annotations

import time

import pytest

from tests.node_helpers import (  # noqa: F401 - the fixtures `interop` and `node`
    MAX_AGE,
    Browser,
    Interop,
    get_with_cookie,
    interop_fixture,
    node_fixture,
)

pytestmark = pytest.mark.slow

ABSOLUTE = 3  # seconds: long enough for the Node request in between on a loaded machine


def test_a_session_node_created_is_given_a_creation_time_and_ends_at_the_absolute_limit(
    interop: Interop,
) -> None:
    node_url = interop.start_node()  # Node first: connect-session-knex creates the table
    python_url = interop.start_python(absolute_max_age=ABSOLUTE)
    browser = Browser()

    assert browser.get(node_url + "/incr")[0]["data"] == {"count": 1}
    sid = browser.sid
    stored, _ = interop.row(sid) or pytest.fail("the row is gone")
    assert "_created" not in stored  # Node's row: no creation time

    before = time.time()
    assert browser.get(python_url + "/read")[0]["data"] == {"count": 1}
    stored, expires = interop.row(sid) or pytest.fail("the row is gone")
    created = stored["_created"]
    assert created == pytest.approx(before, abs=5), "the middleware did not give Node's row a creation time"
    assert expires.timestamp() <= created + ABSOLUTE + 1e-3
    assert stored["cookie"]["originalMaxAge"] == MAX_AGE * 1000  # express's cookie object kept valid

    # Node reads and writes the row as before, keeps _created, and moves the expiry past the limit.
    body, _ = browser.get(node_url + "/incr")
    assert body["data"] == {"count": 2, "_created": created}
    stored, expires = interop.row(sid) or pytest.fail("the row is gone")
    assert stored["_created"] == created and expires.timestamp() > created + ABSOLUTE + 60

    time.sleep(max(0.0, created + ABSOLUTE + 0.2 - time.time()))
    old_cookie = browser.cookie
    assert old_cookie is not None
    body, cookies = browser.get(python_url + "/read")
    assert body["data"] == {}, "a session past its absolute limit loaded"
    assert any("Max-Age=0" in header for header in cookies), "the ended session's cookie was not expired"
    assert browser.cookie is None
    assert interop.row(sid) is None, "the ended session's row was kept"
    # Node is not broken by it: the old cookie opens a new, empty session there too.
    assert get_with_cookie(node_url + "/read", old_cookie)["data"] == {}
    assert browser.get(node_url + "/incr")[0]["data"] == {"count": 1}
