"""Django's settings for the ported session tests and the sharing tests, configured once.

Django reads its settings from one place per process, so they are set here,
before any test module of this directory imports Django's test machinery.
``SESSION_ENGINE`` is this package's; ``DBSESSION`` starts on a fresh SQLite
file (``tables.py`` moves a test class to PostgreSQL or MariaDB). Django's
own database (auth's users, for the sharing tests) is another SQLite file.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import django
from django.conf import settings

from conftest import SECRET, unique_table_name

_FILES = Path(tempfile.mkdtemp(prefix="wsgi_dbsession_django_"))

if not settings.configured:
    settings.configure(
        SECRET_KEY=SECRET + "-django",  # Django's own signing (not the session cookie's secret)
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
        ],
        DATABASES={
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(_FILES / "django.sqlite")}
        },
        SESSION_ENGINE="wsgi_dbsession.django",
        DBSESSION={
            "url": f"sqlite:///{_FILES / 'sessions.sqlite'}",
            "table_name": unique_table_name(),
            "secret": SECRET,
        },
        USE_TZ=False,  # the upstream suite's *WithTimeZoneTests classes turn it on
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],  # fast test users
    )
    django.setup()
