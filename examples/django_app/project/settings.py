"""A minimal Django project whose sessions live in wsgi_dbsession's table, shared with other apps.

``request.session`` is ``wsgi_dbsession.django``'s engine, and the session
cookie is the package's signed ``connect.sid`` cookie
(``wsgi_dbsession.django.SessionMiddleware``), so a Flask, Pyramid,
plain-WSGI or Express app given the same table and secret shares the login.

Run it (README of the directory: docs/django.md)::

    export WSGI_DBSESSION_SECRET="$(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
    python manage.py migrate
    python manage.py createsuperuser --username alice --email alice@example.com
    python manage.py runserver
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ["WSGI_DBSESSION_SECRET"]  # also signs the session cookie (see DBSESSION)
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",  # for manage.py clearsessions; its model and table go unused
]
MIDDLEWARE = [
    "wsgi_dbsession.django.SessionMiddleware",  # in place of Django's: the shared cookie
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

# Django's own database: the users (auth's tables).
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DATABASE", BASE_DIR / "django.sqlite"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

SESSION_ENGINE = "wsgi_dbsession.django"
SESSION_COOKIE_AGE = int(os.environ.get("SESSION_COOKIE_AGE", "86400"))  # seconds: express's maxAge / 1000
DBSESSION = {
    "url": os.environ.get("DBSESSION_URL", "sqlite:///sessions.sqlite"),  # the other apps' database
    "table_name": os.environ.get("DBSESSION_TABLE_NAME", "sessions"),
    "user_key": "_auth_user_id",  # get_store().user_sessions(user.pk) and destroy_user_sessions
    # seconds between prunes of expired rows in the app; 0 when cron runs manage.py clearsessions
    "cleanup_interval": float(os.environ.get("DBSESSION_CLEANUP_INTERVAL", "60")),
    # "secret" defaults to SECRET_KEY: give the other apps the same secret
}
