"""``python -m wsgi_dbsession``: the ``wsgi-dbsession`` command."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
