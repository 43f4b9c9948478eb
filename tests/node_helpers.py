"""The Node side of the interop tests: a real Express app, the middleware beside it, one browser.

``node`` installs tests/node's packages (express 4 + express-session +
connect-session-knex, knex with pg or sqlite3) by ``npm ci`` on its lock file;
:class:`Interop` runs that app as a subprocess and the middleware behind a
real wsgiref server on one table; :class:`Browser` is one cookie jar for both,
as a browser has for two apps on one host. A test module takes the fixtures
by importing ``interop_fixture`` and ``node_fixture``
(pytest registers them as ``interop`` and ``node``).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import http.cookiejar
import json
import os
import re
import select
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote
from wsgiref.simple_server import make_server

import pytest
import sqlalchemy as sa

from conftest import backend_url, drop_table, stop_process, unique_table_name
from tests.apps import session_app
from tests.http_helpers import QuietHandler
from wsgi_dbsession import SessionMiddleware, SessionStore, unsign

NODE_DIR = Path(__file__).resolve().parent / "node"
SERVER_JS = NODE_DIR / "server.js"
NODE_START_TIMEOUT = 20  # seconds
NPM_TIMEOUT = 600  # seconds; building sqlite3 from source takes about a minute on 2 cores
# Two secrets of the length the middleware requires; express accepts any.
SECRET_A = "interop-secret-A-0123456789abcdefghijklmnop"
SECRET_B = "interop-secret-B-0123456789abcdefghijklmnop"
MAX_AGE = 3600  # seconds
# express-session records originalMaxAge as the expiry it just set minus the clock read
# again (cookie.js, `set expires`): short by the milliseconds that passed in between,
# which a loaded machine makes more than one.
NODE_ORIGINAL_MAX_AGE = pytest.approx(MAX_AGE * 1000 - 500, abs=500)
ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


# -- installing the Node packages -------------------------------------------------


def _install_digest(node: str) -> str:
    """What an installed node_modules must match: the manifests and the Node version."""
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    digest = hashlib.sha256(version.encode())
    for name in ("package.json", "package-lock.json"):
        digest.update((NODE_DIR / name).read_bytes())
    return digest.hexdigest()


def _npm_env(node: str) -> dict[str, str]:
    env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false"}
    # sqlite3's prebuilt binary and node-gyp's header tarball both come from
    # outside the npm registry; with the headers Node installed beside itself
    # node-gyp builds sqlite3 from source without downloading anything.
    prefix = Path(os.path.realpath(node)).parent.parent
    if (prefix / "include" / "node" / "node.h").is_file():
        env.setdefault("npm_config_nodedir", str(prefix))
    return env


def _cache_dir(digest: str) -> Path:
    """Where node_modules for this digest is built: outside the checkout, so a
    fresh clone on the same machine reuses it instead of compiling sqlite3 again."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "wsgi_dbsession" / f"node-{digest[:16]}"


@pytest.fixture(scope="session", name="node")
def node_fixture() -> str:
    """The ``node`` executable, with tests/node's packages installed by ``npm ci``.

    The install runs once per change of the lock file or of Node, in a cache
    directory that tests/node/node_modules then links to, guarded by a file
    lock so concurrent test runs do not install over each other.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("the interop tests need Node.js 20+ and npm on PATH")
    digest = _install_digest(node)
    cache = _cache_dir(digest)
    cache.mkdir(parents=True, exist_ok=True)
    stamp = cache / "node_modules" / ".wsgi-dbsession-installed"
    with open(cache / "install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (stamp.is_file() and stamp.read_text() == digest):
            for name in ("package.json", "package-lock.json"):
                shutil.copyfile(NODE_DIR / name, cache / name)
            result = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=cache,
                env=_npm_env(node),
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT,
                check=False,
            )
            if result.returncode != 0:
                pytest.fail(
                    f"npm ci for {NODE_DIR} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
                )
            stamp.write_text(digest)
        link = NODE_DIR / "node_modules"
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)  # an install from before the cache existed
        link.symlink_to(cache / "node_modules", target_is_directory=True)
    return node


# -- the two apps and the browser ------------------------------------------------


class Browser:
    """One cookie jar for both apps, as a browser has for two apps on one host."""

    def __init__(self) -> None:
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, url: str) -> tuple[Any, list[str]]:
        """The JSON body and the Set-Cookie headers of a GET."""
        with self.opener.open(url, timeout=10) as response:
            return json.loads(response.read()), response.headers.get_all("Set-Cookie") or []

    @property
    def cookie(self) -> str | None:
        """The raw (URL-encoded) value of the session cookie in the jar."""
        values = [c.value for c in self.jar if c.name == "connect.sid"]
        assert len(values) <= 1
        return values[0] if values else None

    @property
    def sid(self) -> str:
        assert self.cookie is not None
        sid = unsign(unquote(self.cookie), [SECRET_A.encode(), SECRET_B.encode()])
        assert sid is not None
        return sid


def get_with_cookie(url: str, cookie: str) -> Any:
    """A GET carrying this session cookie, outside any jar (an old cookie replayed)."""
    request = urllib.request.Request(url, headers={"Cookie": f"connect.sid={cookie}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def cookie_value(header: str) -> str:
    return header.split(";", 1)[0].split("=", 1)[1]


class Interop:
    """A Node app and a Python app on one table of one database."""

    def __init__(
        self, kind: str, node: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        self.kind = kind
        self.node = node
        self.tmp_path = tmp_path
        self.url = backend_url(kind, tmp_path_factory)
        self.table_name = unique_table_name("interop")
        self.processes: list[subprocess.Popen[str]] = []
        self.servers: list[Any] = []
        self.middlewares: list[SessionMiddleware] = []
        # Reads rows straight from the table; never creates it.
        self.store = SessionStore(url=self.url, table_name=self.table_name, create_table=False)

    def start_node(
        self,
        *,
        secrets: tuple[str, ...] = (SECRET_A,),
        max_age_ms: int | None = MAX_AGE * 1000,
        cookie: dict[str, Any] | None = None,
        script: Path = SERVER_JS,
        env: dict[str, str] | None = None,
    ) -> str:
        """Start an Express app (server.js) on this table; returns its base URL once it listens."""
        database = sa.make_url(self.url).database if self.kind == "sqlite" else self.url
        env = {
            **os.environ,
            "NODE_PATH": str(NODE_DIR / "node_modules"),  # for a script outside tests/node
            **(env or {}),
            "WDS_DB_CLIENT": "sqlite3" if self.kind == "sqlite" else "pg",
            "WDS_DB_CONNECTION": str(database),
            "WDS_TABLE": self.table_name,
            "WDS_SECRETS": json.dumps(list(secrets)),
            "WDS_MAX_AGE_MS": json.dumps(max_age_ms),
            "WDS_COOKIE": json.dumps(cookie or {}),
        }
        log_path = self.tmp_path / f"node-{len(self.processes)}.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [self.node, str(script)], env=env, stdout=subprocess.PIPE, stderr=log, text=True
            )
        self.processes.append(process)
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], NODE_START_TIMEOUT)
        listening = re.fullmatch(r"listening on (\d+)\n", process.stdout.readline() if ready else "")
        if listening is None:
            pytest.fail(f"the Express app did not start:\n{log_path.read_text()}")
        return f"http://127.0.0.1:{listening.group(1)}"

    def start_python(self, *, secret: str | list[str] = SECRET_A, **options: Any) -> str:
        """Serve the middleware (on tests/apps.py's session_app) on this table; returns its base URL."""
        options.setdefault("max_age", MAX_AGE)
        middleware = SessionMiddleware(
            session_app,
            secret=secret,
            url=self.url,
            table_name=self.table_name,
            cleanup_interval=0,
            **options,
        )
        return self.serve(middleware)

    def serve(self, middleware: SessionMiddleware) -> str:
        """Serve a middleware-wrapped app with wsgiref; returns its base URL."""
        self.middlewares.append(middleware)
        server = make_server("127.0.0.1", 0, middleware, handler_class=QuietHandler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    def row(self, sid: str) -> tuple[dict[str, Any], dt.datetime] | None:
        """The stored JSON (cookie object included) and expiry of a live row."""
        stored = self.store.load(sid)
        return None if stored is None else (json.loads(stored.text), stored.expires)

    def raw_expired(self, sid: str) -> Any:
        """The ``expired`` value of a row exactly as the database driver returns it."""
        table = sa.table(self.table_name, sa.column("sid"), sa.column("expired"))
        with self.store.engine.connect() as conn:
            return conn.execute(sa.select(table.c.expired).where(table.c.sid == sid)).scalar_one()

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()
        for process in self.processes:
            stop_process(process, timeout=5)
        for middleware in self.middlewares:
            middleware.close()
        if sa.inspect(self.store.engine).has_table(self.table_name):
            drop_table(self.store.engine, self.store.table)
        self.store.dispose()


@pytest.fixture(params=["sqlite", "postgresql"], name="interop")
def interop_fixture(
    request: pytest.FixtureRequest, node: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Interop]:
    pair = Interop(str(request.param), node, tmp_path, tmp_path_factory)
    try:
        yield pair
    finally:
        pair.close()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
