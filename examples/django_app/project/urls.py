"""Home, login, logout, and logout everywhere (every app sharing the table)."""

from django.contrib import auth
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.middleware.csrf import get_token
from django.urls import path
from django.utils.html import escape
from django.views.decorators.http import require_POST

from wsgi_dbsession.django import get_store


def page(request: HttpRequest, body: str) -> HttpResponse:
    token = get_token(request)
    form = (
        '<form method="post" action="{}"><input type="hidden" name="csrfmiddlewaretoken" value="{}">{}</form>'
    )
    buttons = "".join(
        form.format(action, token, f'<button type="submit">{label}</button>')
        for action, label in (("/logout", "Log out"), ("/logout-everywhere", "Log out everywhere"))
    )
    return HttpResponse(f"<!doctype html><title>wsgi_dbsession and Django</title>{body}{buttons}")


def home(request: HttpRequest) -> HttpResponse:
    request.session["visits"] = request.session.get("visits", 0) + 1
    user = request.user
    who = escape(user.get_username()) if user.is_authenticated else "nobody"
    sessions = len(get_store().user_sessions(user.pk)) if user.is_authenticated else 0
    return page(
        request,
        f"<p>user: {who}</p><p>visits: {request.session['visits']}</p><p>sessions: {sessions}</p>"
        '<p><a href="/login">log in</a></p>',
    )


def login(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        user = auth.authenticate(
            request, username=request.POST["username"], password=request.POST["password"]
        )
        if user is not None:
            auth.login(request, user)  # a new session id (cycle_key) holding Django's auth keys
            return HttpResponseRedirect("/")
    token = get_token(request)
    return HttpResponse(
        '<!doctype html><title>Log in</title><form method="post">'
        f'<input type="hidden" name="csrfmiddlewaretoken" value="{token}">'
        '<input name="username"> <input name="password" type="password"> <button>Log in</button></form>'
    )


@require_POST
def logout(request: HttpRequest) -> HttpResponse:
    auth.logout(request)  # flush(): the row is deleted, the cookie expired
    return HttpResponseRedirect("/")


@require_POST
def logout_everywhere(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        get_store().destroy_user_sessions(request.user.pk)  # this app's sessions and the other apps'
    return HttpResponseRedirect("/")


urlpatterns = [
    path("", home),
    path("login", login),
    path("logout", logout),
    path("logout-everywhere", logout_everywhere),
]
