"""Random and hostile ``Cookie`` headers against the middleware, on every live database (hypothesis).

Whatever the header holds (random bytes, huge values, hundreds of cookies,
broken percent-escapes, forged or foreign signatures, properly signed ids
that were never issued or that break the id rules), the request:

- never ends in a 500;
- costs no query unless the header carries a value signed with the secret
  over a well-formed id (an oracle computed here, independently of the
  package's own reader);
- never adopts an id the server did not issue: the session is either the
  one issued earlier, or a fresh one whose id appears nowhere in the header.

Signatures are computed here with :mod:`hmac` from express-session's
format, so the oracle does not trust the code under test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote
from wsgiref.util import setup_testing_defaults

import pytest
import webtest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from conftest import SECRET, StatementLog
from tests.apps import session_app
from wsgi_dbsession import SessionMiddleware

MakeApp = Callable[..., tuple[webtest.TestApp, SessionMiddleware]]
ROOT = Path(__file__).resolve().parent.parent
# A failing example is saved in .hypothesis/examples (gitignored) and tried first on the
# next run here; a failure also reports its run's seed, and
# WSGI_DBSESSION_HYPOTHESIS_SEED=<seed> replays that run elsewhere (a CI log's failure).
SEED = int(os.environ.get("WSGI_DBSESSION_HYPOTHESIS_SEED") or random.SystemRandom().getrandbits(64))
FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=DirectoryBasedExampleDatabase(ROOT / ".hypothesis" / "examples"),
    derandomize=False,
    print_blob=True,  # and the @reproduce_failure blob of the shrunk example
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
WELL_FORMED_SID = re.compile(r"[A-Za-z0-9_-]{16,255}")
SID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


def express_value(sid: str, secret: str = SECRET) -> str:
    """The cookie value express-session would send for ``sid``, made from scratch."""
    digest = hmac.new(secret.encode(), sid.encode(), hashlib.sha256).digest()
    signed = f"s:{sid}." + base64.b64encode(digest).decode().rstrip("=")
    return quote(signed, safe="-_.!~*'()")


@dataclass(frozen=True)
class Part:
    """One piece of the header; ``verifies``: it is ``connect.sid`` signed with the secret over a valid id."""

    text: str
    verifies: bool = False
    sid: str | None = None


def reader_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    session = environ["dbsession"]
    body = json.dumps({"id": session.id, "new": session.new, "data": dict(session)}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


latin1_text = st.text(st.characters(max_codepoint=255), max_size=120)
cookie_name = st.sampled_from(["connect.sid", " connect.sid", "connect.sid ", "other", "connect.sidx", ""])
good_sid = st.text(SID_ALPHABET, min_size=16, max_size=64)
bad_sid = st.one_of(
    st.text(SID_ALPHABET, max_size=15),  # too short
    st.text(SID_ALPHABET, min_size=256, max_size=400),  # too long
    st.text(st.characters(max_codepoint=0x2FF, exclude_characters="."), min_size=16, max_size=40).filter(
        lambda sid: WELL_FORMED_SID.fullmatch(sid) is None
    ),  # wrong alphabet: quotes, spaces, semicolons, non-ASCII
)


@st.composite
def cookie_part(draw: st.DrawFn, issued_value: str, issued_sid: str) -> Part:
    kind = draw(st.sampled_from(["junk", "pair", "signed", "bad-sid", "forged", "issued", "escape"]))
    if kind == "junk":
        return Part(draw(latin1_text))
    if kind == "escape":
        return Part("connect.sid=" + draw(st.sampled_from(["%", "%E0%A4%A", "%ZZ", "%FF%FE", "s%3A%C0%AF"])))
    name = draw(cookie_name)
    if kind == "pair":
        return Part(f"{name}={draw(latin1_text)}")
    if kind == "issued":
        quoted = draw(st.booleans())
        value = f'"{issued_value}"' if quoted else issued_value
        return Part(f"{name}={value}", verifies=name.strip() == "connect.sid", sid=issued_sid)
    if kind == "signed":  # properly signed, never issued
        sid = draw(good_sid)
        return Part(f"{name}={express_value(sid)}", verifies=name.strip() == "connect.sid", sid=sid)
    if kind == "bad-sid":  # properly signed, but not an id this server could have made
        sid = draw(bad_sid)
        return Part(f"{name}={express_value(sid)}", sid=sid)
    sid = draw(good_sid)  # forged: another secret, or a tampered signature
    value = draw(
        st.sampled_from(
            [
                express_value(sid, "another-secret-of-at-least-32-characters!"),
                express_value(sid)[:-2] + "AA",
                f"s:{sid}",
                sid,
            ]
        )
    )
    return Part(f"{name}={value}", sid=sid)


@st.composite
def cookie_header(draw: st.DrawFn, issued_value: str, issued_sid: str) -> tuple[str, list[Part]]:
    shape = draw(st.sampled_from(["parts", "parts", "parts", "bytes", "huge", "many"]))
    if shape == "bytes":
        return draw(st.binary(max_size=600)).decode("latin-1"), []
    if shape == "huge":  # one enormous value, or a valid cookie behind one
        size = draw(st.integers(8_000, 200_000))
        parts = [Part("connect.sid=" + draw(st.sampled_from(["A", "s:", "%41", ";"])) * size)]
    elif shape == "many":
        parts = [Part(f"c{i}={i}") for i in range(draw(st.integers(50, 400)))]
    else:
        parts = []
    parts += draw(st.lists(cookie_part(issued_value, issued_sid), max_size=12))
    separator = draw(st.sampled_from(["; ", ";", " ;", ";;", "; ; "]))
    return separator.join(part.text for part in parts), parts


def request(middleware: SessionMiddleware, header: str) -> tuple[str, dict[str, Any]]:
    environ: dict[str, Any] = {"HTTP_COOKIE": header}
    setup_testing_defaults(environ)
    status: list[str] = []

    def start_response(line: str, _headers: list[tuple[str, str]], _exc_info: Any = None) -> Any:
        status.append(line)
        return lambda _data: None

    result = middleware(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return status[0], json.loads(body)


def test_hostile_cookie_headers_never_500_never_query_unverified_never_adopt(make_app: MakeApp) -> None:
    client, middleware = make_app(session_app)
    client.get("/incr")
    issued_value = client.cookies["connect.sid"]
    issued_sid = middleware.manager.cookie.read(f"connect.sid={issued_value}")
    assert issued_sid is not None
    middleware.app = reader_app
    log = StatementLog(middleware.store)
    seen = {"queried": 0, "adopted": 0}

    @FUZZ
    @seed(SEED)
    @given(cookie_header(issued_value, issued_sid))
    def check(generated: tuple[str, list[Part]]) -> None:
        header, parts = generated
        log.clear()
        status, body = request(middleware, header)
        assert status == "200 OK"
        statements = [statement.lstrip().split(None, 1)[0].upper() for statement in log.statements]
        assert statements in ([], ["SELECT"]), statements
        if not any(part.verifies for part in parts):
            assert statements == [], "a header with no verifiable cookie cost a query"
        seen["queried"] += bool(statements)
        if not body["new"]:
            assert body["id"] == issued_sid and any(part.sid == issued_sid for part in parts)
            assert body["data"] == {"count": 1}
            seen["adopted"] += 1
        else:
            assert body["id"] != issued_sid
            assert body["id"] not in header, "a client-chosen id was adopted"
            assert all(body["id"] != part.sid for part in parts)
            assert body["data"] == {}

    try:
        check()
    except BaseException as exc:
        exc.add_note(f"Hypothesis seed {SEED}: rerun with WSGI_DBSESSION_HYPOTHESIS_SEED={SEED}")
        raise
    # The strategies did reach both the query path and the adoption of the issued session.
    assert seen["queried"] > 0 and seen["adopted"] > 0, seen
    assert middleware.store.count() == 1, "reading never stored anything"


@pytest.mark.parametrize(
    "header",
    [
        "connect.sid=" + express_value("a" * 15),
        "connect.sid=" + express_value("a" * 256),
        "connect.sid=" + express_value("abcdefghijklmnop'; DROP TABLE x;--"),
        "connect.sid=" + express_value("abcdefghijklmnop\u00e9"),
        "connect.sid=" + express_value("abcdefghijklmnop qrst"),
    ],
    ids=["short", "long", "sql", "non-ascii", "space"],
)
def test_a_validly_signed_malformed_id_costs_no_query(make_app: MakeApp, header: str) -> None:
    _, middleware = make_app(reader_app)
    log = StatementLog(middleware.store)
    status, body = request(middleware, header)
    assert status == "200 OK" and body["new"]
    assert log.statements == []


def test_max_size_refuses_a_larger_session_with_a_clear_error(
    make_app: MakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    app, middleware = make_app(session_app, max_size=1000)
    app.get("/set", params={"key": "note", "value": json.dumps("x" * 100)})
    sid = middleware.manager.cookie.read(f"connect.sid={app.cookies['connect.sid']}")
    assert sid is not None
    before = middleware.store.load(sid)
    response = app.get("/set", params={"key": "note", "value": json.dumps("y" * 5000)}, status=500)
    assert response.headers.getall("Set-Cookie") == []
    assert "more than max_size=1000" in caplog.text
    assert middleware.store.load(sid) == before, "the stored session is untouched"
    assert app.get("/read").json["data"] == {"note": "x" * 100}
