"""For tests that drive the middleware through WebTest: the ``make_app`` fixture's type,
and the ``Set-Cookie`` headers and session id of a response."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import unquote

import webtest

from conftest import SECRET
from wsgi_dbsession import SessionMiddleware, unsign

MakeApp = Callable[..., tuple[webtest.TestApp, SessionMiddleware]]


def set_cookies(response: webtest.TestResponse) -> list[str]:
    return response.headers.getall("Set-Cookie")


def sid_in(response: webtest.TestResponse, secret: str = SECRET) -> str:
    """The session id the response's one ``Set-Cookie`` carries, its signature checked with ``secret``."""
    (header,) = set_cookies(response)
    value = header.split(";", 1)[0].split("=", 1)[1]
    sid = unsign(unquote(value), [secret.encode()])
    assert sid is not None
    return sid
