"""The app gunicorn serves in the load benchmark, chosen by environment variables.

``BENCH_SYSTEM`` (``floor`` or ``wsgi_dbsession``), ``BENCH_BACKEND``,
``BENCH_URL`` and ``BENCH_TABLE`` (an existing sessions table). Each worker
imports this module after the fork, so each has its own connections.
"""

from __future__ import annotations

import os

import sqlalchemy as sa

from . import systems

_url = sa.make_url(os.environ["BENCH_URL"])
_table = os.environ["BENCH_TABLE"]
if os.environ["BENCH_SYSTEM"] == "floor":
    app: systems.App = systems.Floor(os.environ["BENCH_BACKEND"], _url, _table)
else:
    app = systems.ours(_url, _table)
