"""PasteDeploy entry points, for ``[filter:dbsession]`` sections with ``use = egg:wsgi_dbsession``.

The section's settings are SessionMiddleware's options by name, as strings
(parsed by :mod:`wsgi_dbsession.settings`)::

    [filter:dbsession]
    use = egg:wsgi_dbsession
    secret = %(session_secret)s
    url = postgresql://app@db/app
    max_age = 3600
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .middleware import SessionMiddleware
from .settings import parse_settings

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication


def filter_factory(
    global_conf: dict[str, Any], **local_conf: str
) -> Callable[[WSGIApplication], SessionMiddleware]:
    """``paste.filter_factory``: the section's settings, checked now, wrapping the next app later.

    ``global_conf`` (the ``[DEFAULT]`` section, ``here``, ``__file__``) is
    not read: only the section's own settings configure the middleware.
    """
    return functools.partial(SessionMiddleware, **parse_settings(local_conf))


def filter_app_factory(
    app: WSGIApplication, global_conf: dict[str, Any], **local_conf: str
) -> SessionMiddleware:
    """``paste.filter_app_factory``: ``app`` wrapped in a middleware configured by the section."""
    return filter_factory(global_conf, **local_conf)(app)
