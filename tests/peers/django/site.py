"""A small Django site for the sharing tests: login, logout, who is logged in, the session's keys.

``ROOT_URLCONF = "tests.peers.django.site"``. Each view answers JSON: the
logged-in user's id (or None) and the session's keys.
"""

from __future__ import annotations

from typing import Any

from django.contrib import auth
from django.http import HttpRequest, JsonResponse
from django.urls import path

from wsgi_dbsession.django import get_store


def answer(request: HttpRequest, **extra: Any) -> JsonResponse:
    user = request.user
    return JsonResponse(
        {"user": user.pk if user.is_authenticated else None, "data": dict(request.session), **extra}
    )


def whoami(request: HttpRequest) -> JsonResponse:
    return answer(request)


def login(request: HttpRequest) -> JsonResponse:
    user = auth.authenticate(request, username=request.GET["username"], password=request.GET["password"])
    assert user is not None, "the test user's credentials"
    auth.login(request, user)  # cycle_key(), then Django's three auth keys
    return answer(request)


def logout(request: HttpRequest) -> JsonResponse:
    auth.logout(request)  # flush()
    return answer(request)


def cart(request: HttpRequest) -> JsonResponse:
    """A nested change only: Django's ``modified`` flag is never set by the view."""
    request.session["cart"].append(request.GET["item"])
    return answer(request)


def logout_everywhere(request: HttpRequest) -> JsonResponse:
    """End every session of the logged-in user, on every app that shares the table."""
    ended = get_store().destroy_user_sessions(request.user.pk)
    return answer(request, ended=ended)


urlpatterns = [
    path("whoami", whoami),
    path("login", login),
    path("logout", logout),
    path("cart", cart),
    path("logout-everywhere", logout_everywhere),
]
