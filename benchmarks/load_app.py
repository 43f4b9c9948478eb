"""The app gunicorn serves in the load benchmark, chosen by environment variables.

``BENCH_SYSTEM`` (``raw``, ``min`` or ``wsgi_dbsession``), ``BENCH_BACKEND``,
``BENCH_URL`` and ``BENCH_TABLE`` (an existing sessions table). Each worker
imports this module after the fork, so each has its own connections.
"""

from __future__ import annotations

import os

import sqlalchemy as sa

from . import systems

_url = sa.make_url(os.environ["BENCH_URL"])
_table = os.environ["BENCH_TABLE"]
_system = os.environ["BENCH_SYSTEM"]
if _system == "raw":
    app: systems.App = systems.Raw(os.environ["BENCH_BACKEND"], _url, _table)
elif _system == "min":
    app = systems.Min(os.environ["BENCH_BACKEND"], _url, _table)
else:
    app = systems.ours(_url, _table)
