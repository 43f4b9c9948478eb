"""Flask-Session's tests (pallets-eco/flask-session ``tests/``), ported to ``DBSession``.

Upstream: https://github.com/pallets-eco/flask-session, two commits:

- ``14d2f7cc65815015d2b07fe2fadacf877a320111`` (pull request 238, the
  head of the branch that added ``abs_test.py``, ``utils.py``, the
  session-id and regenerate routes of ``conftest.py``, and the lifetime
  and regenerate tests): ``conftest.py``, ``abs_test.py``, ``utils.py``,
  ``test_sqlalchemy.py``, ``test_postgresql.py``, ``test_basic.py``;
- ``450a7c06d8c18b496786e7ffd3efdc764a4f57ed`` (``main``):
  ``test_sqlalchemy.py``'s ``test_use_signer``, which the pull request
  replaced by ``test_default``.

Each file names what it follows and every change. The rules of the port:
the same requests and the same assertions; only the setup changes
(``DBSession(app)`` on this test's table of each live database instead of
``flask_session.Session(app)``); an assertion on Flask-Session's storage
(its ``session:`` key prefix, its bytes) is the same assertion on this
package's row; the cookie value is always signed here, so it is compared
by its unsigned id. The scenarios that do not apply are listed, with the
reason, in docs/flask.md.
"""
