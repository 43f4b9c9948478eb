"""Session ids and the signed cookie, in express-session's exact format (no database)."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from typing import Any

import pytest

from wsgi_dbsession import ConfigurationError, SessionMiddleware
from wsgi_dbsession.cookies import (
    SessionCookie,
    encode_value,
    generate_sid,
    is_valid_sid,
    parse_secrets,
    sign,
    unsign,
)
from wsgi_dbsession.options import option_defaults

# The test vector of ANCHORS.md, computed by express-session (cookie-signature).
EXPRESS_SID = "DJW_JaSWR-41-zW3df0G0g7HB8t5bwK4"
EXPRESS_SIGNED = "s:DJW_JaSWR-41-zW3df0G0g7HB8t5bwK4.Mlxlz9E4Fec+zWdLz/1GwBnUpo9w1vQ2H2FDxz1GAOY"
EXPRESS_COOKIE = "s%3ADJW_JaSWR-41-zW3df0G0g7HB8t5bwK4.Mlxlz9E4Fec%2BzWdLz%2F1GwBnUpo9w1vQ2H2FDxz1GAOY"
NEW_SECRET = "n" * 32
OLD_SECRET = "o" * 32


def make_cookie(name: str, secrets: tuple[bytes, ...], **attributes: Any) -> SessionCookie:
    """A cookie with the middleware's defaults for every attribute not given."""
    defaults = option_defaults()
    for option in ("path", "domain", "secure", "httponly", "samesite"):
        attributes.setdefault(option, defaults[option])
    return SessionCookie(name=name, secrets=secrets, **attributes)


def test_signature_matches_express_session() -> None:
    assert sign(EXPRESS_SID, "keyboard cat") == EXPRESS_SIGNED
    assert encode_value(EXPRESS_SIGNED) == EXPRESS_COOKIE
    assert unsign(EXPRESS_SIGNED, [b"keyboard cat"]) == EXPRESS_SID


def test_express_cookie_is_read() -> None:
    cookie = make_cookie("connect.sid", (b"keyboard cat",))
    assert cookie.read(f"theme=dark; connect.sid={EXPRESS_COOKIE}; other=1") == EXPRESS_SID
    assert cookie.read(f'connect.sid="{EXPRESS_COOKIE}"') == EXPRESS_SID


def test_set_cookie_header_carries_the_express_value_and_flags() -> None:
    cookie = make_cookie("connect.sid", (b"keyboard cat",), domain="example.org", samesite="strict")
    name, value = cookie.set_header(EXPRESS_SID, 3600, secure=True)
    assert name == "Set-Cookie"
    assert value.startswith(f"connect.sid={EXPRESS_COOKIE};")
    for part in ("Max-Age=3600", "Path=/", "Domain=example.org", "secure", "HttpOnly", "SameSite=strict"):
        assert part in value
    browser_session = cookie.set_header(EXPRESS_SID, None, secure=False)[1]
    assert "Max-Age" not in browser_session and "expires" not in browser_session.lower()


def test_rotation_signs_with_the_first_secret_and_verifies_with_each() -> None:
    secrets = parse_secrets([NEW_SECRET, OLD_SECRET])
    sid = generate_sid()
    assert unsign(sign(sid, OLD_SECRET), secrets) == sid
    assert unsign(sign(sid, NEW_SECRET), secrets) == sid
    assert unsign(sign(sid, "x" * 32), secrets) is None
    cookie = make_cookie("s", secrets)
    assert encode_value(sign(sid, NEW_SECRET)) in cookie.set_header(sid, 60, secure=False)[1]


def test_a_cookie_value_with_every_character_escaped_verifies_as_decodeURIComponent_reads_it() -> None:
    # A browser sends back what it was given, but a client may escape more than
    # encodeURIComponent does (%2E for a dot): express-session decodes it all.
    secrets = parse_secrets([NEW_SECRET])
    sid = generate_sid()
    escaped = "".join(f"%{byte:02X}" for byte in sign(sid, NEW_SECRET).encode())
    assert make_cookie("s", secrets).read(f"s={escaped}") == sid
    assert make_cookie("s", secrets).read(f"s={escaped.lower()}") == sid


def test_an_id_outside_the_alphabet_is_fully_escaped_in_the_set_cookie_header() -> None:
    # set_header escapes a generated id with three replacements; any other id
    # goes through the general encoder, so no ';', space or quote reaches the header.
    cookie = make_cookie("s", parse_secrets([NEW_SECRET]))
    odd = 'an id; with spaces, quotes" and commas'
    header = cookie.set_header(odd, 60, secure=False)[1]
    value = header.split(";", 1)[0].removeprefix("s=")
    assert value == encode_value(sign(odd, NEW_SECRET))
    assert not set(value) & set(' ;,"\\')


@pytest.mark.parametrize("option", ["path", "domain"])
def test_an_attribute_value_with_a_semicolon_is_refused_naming_its_option(option: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"^{option} 'a;b' may not hold"):
        make_cookie("s", parse_secrets([NEW_SECRET]), **{option: "a;b"})


@pytest.mark.parametrize("samesite", ["lax", "strict", None])
def test_secure_false_is_accepted_with_every_samesite_but_none(samesite: str | None) -> None:
    cookie = make_cookie("s", parse_secrets([NEW_SECRET]), secure=False, samesite=samesite)
    assert "secure" not in cookie.set_header(generate_sid(), 60, secure=False)[1].lower()


def test_samesite_none_with_secure_auto_is_left_out_over_http_and_sent_over_https() -> None:
    cookie = make_cookie("s", parse_secrets([NEW_SECRET]), secure="auto", samesite="none")
    sid = generate_sid()
    over_http = cookie.set_header(sid, 60, secure=False)[1]
    assert over_http.endswith("; Path=/; HttpOnly"), over_http
    over_https = cookie.set_header(sid, 60, secure=True)[1]
    assert over_https.endswith("; Path=/; secure; HttpOnly; SameSite=none"), over_https


def test_a_signature_verified_under_one_secret_never_verifies_under_another() -> None:
    # Signatures are cached per id and secret: a cookie verified once under a
    # secret stays refused by a cookie reader that has only another.
    sid = generate_sid()
    old_only, new_only = parse_secrets([OLD_SECRET]), parse_secrets([NEW_SECRET])
    signed = sign(sid, OLD_SECRET)
    for _ in range(2):  # the second time from the cache
        assert unsign(signed, old_only) == sid
        assert unsign(signed, new_only) is None
        assert make_cookie("s", new_only).read(f"s={encode_value(signed)}") is None
    assert unsign(sign(sid, NEW_SECRET), new_only) == sid


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "connect.sid",
        "connect.sid=",
        "connect.sid=garbage",
        "connect.sid=s%3A",
        "connect.sid=s%3Ashort.sig",
        "connect.sid=%ZZ%",
        "connect.sid=%C3%28",
        f"connect.sid={EXPRESS_COOKIE[:-1]}",
        f"connect.sid=s%3A{'é' * 40}.sig",
        "connect.sid=" + "A" * 100_000,
    ],
)
def test_malformed_cookies_read_as_no_session(header: str | None) -> None:
    cookie = make_cookie("connect.sid", (b"keyboard cat",))
    assert cookie.read(header) is None


def test_generated_ids_are_long_random_and_valid() -> None:
    ids = {generate_sid() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(sid) == 32 and is_valid_sid(sid) for sid in ids)


@pytest.mark.parametrize(
    "sid", ["", "short", "a" * 256, "has space here..", "semi;colon-123456", "dot.in.the.middle.x"]
)
def test_ids_of_the_wrong_length_or_alphabet_are_refused(sid: str) -> None:
    assert not is_valid_sid(sid)
    assert unsign(sign(sid, NEW_SECRET), [NEW_SECRET.encode()]) is None


def test_secret_is_required_and_must_be_long() -> None:
    with pytest.raises(ConfigurationError, match="secret is required"):
        SessionMiddleware(lambda e, s: [], url="sqlite://", cleanup_interval=0)
    with pytest.raises(ConfigurationError, match="at least 32"):
        SessionMiddleware(lambda e, s: [], secret="keyboard cat", url="sqlite://", cleanup_interval=0)
    with pytest.raises(ConfigurationError, match=r"secret #1"):
        parse_secrets([NEW_SECRET, "short"])
    with pytest.raises(ConfigurationError, match="empty"):
        parse_secrets([])


def test_secrets_never_appear_in_reprs() -> None:
    cookie = make_cookie("connect.sid", parse_secrets(NEW_SECRET))
    assert NEW_SECRET not in repr(cookie)
    middleware = SessionMiddleware(lambda e, s: [], secret=NEW_SECRET, url="sqlite://", cleanup_interval=0)
    assert NEW_SECRET not in repr(middleware)
    middleware.close()


def test_a_lifetime_cookie_expires_max_age_ahead_in_http_date_format() -> None:
    # Max-Age wins where both are understood; clients that know only Expires need it right.
    cookie = make_cookie("connect.sid", (NEW_SECRET.encode(),))
    before = time.time()
    _, value = cookie.set_header(generate_sid(), 3600, secure=False)
    attributes = dict(part.strip().split("=", 1) for part in value.split(";")[1:] if "=" in part)
    assert attributes["Max-Age"] == "3600"
    assert attributes["expires"].endswith(" GMT")  # RFC 9110's IMF-fixdate
    expires = parsedate_to_datetime(attributes["expires"]).timestamp()
    assert before + 3600 - 1 <= expires <= time.time() + 3600 + 1


def test_up_to_four_same_named_cookies_are_tried() -> None:
    # Another app on a parent domain may set its own connect.sid: the request carries both.
    cookie = make_cookie("connect.sid", (NEW_SECRET.encode(),))
    sid = generate_sid()
    foreign = f"connect.sid={encode_value(sign(generate_sid(), OLD_SECRET))}"
    ours = f"connect.sid={encode_value(sign(sid, NEW_SECRET))}"
    assert cookie.read("; ".join([foreign] * 3 + [ours])) == sid
    assert cookie.read("; ".join([foreign] * 4 + [ours])) is None  # no more HMACs than that
