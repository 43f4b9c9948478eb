"""gunicorn settings for an app that keeps its sessions with wsgi_dbsession.

    gunicorn -c examples/gunicorn.conf.py --paste examples/pyramid.ini --paste-global session_secret=...
    gunicorn -c examples/gunicorn.conf.py myproject.wsgi:application

Why each value: docs/deployment.md. Command-line options win over this file.
"""

from __future__ import annotations

import os

bind = os.environ.get("BIND", "127.0.0.1:8000")
# Processes. Each has its own connection pool and, from its first request,
# its own prune job; a database lock lets one prune at a time.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Threads per process. A session belongs to one request, and a request holds
# a pooled connection only while a statement runs, so SQLAlchemy's default
# pool (5 connections) serves 4 threads without waiting.
threads = 4
# Build the app, and the middleware with it, once in the master. Safe: the
# middleware opens no connection and starts no thread before a request.
preload_app = True
# Behind a proxy that terminates TLS, trust its X-Forwarded-Proto so
# wsgi.url_scheme is "https" and secure = auto sends Secure cookies.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
# The examples import one another without being installed; an installed
# project needs no pythonpath.
pythonpath = os.path.dirname(os.path.abspath(__file__))
accesslog = "-"
