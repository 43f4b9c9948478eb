"""The example Django project (examples/django_app) served by gunicorn, and a browser for it.

A helper of the Django tests that need a real Django process: the test
process cannot host a second Django configuration.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import queue
import re
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from conftest import stop_process

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "django_app"
STARTUP_TIMEOUT = 30  # seconds; two cores shared with the rest of the suite
USERNAME, PASSWORD = "alice", "alice's password 0123456789"
_TOKEN = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
_LINE = re.compile(r"<p>(user|visits|sessions): ([^<]*)</p>")


class DjangoExample:
    """examples/django_app with its users' database in ``workdir``; ``start()`` serves it."""

    def __init__(
        self, workdir: Path, *, url: str, table_name: str, secret: str, cookie_age: int, **env: str
    ) -> None:
        self.workdir = workdir
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join((str(ROOT), str(EXAMPLE))),
            "XDG_RUNTIME_DIR": str(workdir),  # gunicorn's control socket, away from other runs
            "WSGI_DBSESSION_SECRET": secret,
            "DJANGO_DATABASE": str(workdir / "django.sqlite"),
            "DBSESSION_URL": url,
            "DBSESSION_TABLE_NAME": table_name,
            "SESSION_COOKIE_AGE": str(cookie_age),
            "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
            **env,
        }
        self.process: subprocess.Popen[str] | None = None

    def manage(self, *args: str) -> str:
        """Run ``manage.py`` with ``args``; its output (a failure fails the test)."""
        result = subprocess.run(
            [sys.executable, str(EXAMPLE / "manage.py"), *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout + result.stderr

    def start(self) -> str:
        """Migrate, add the user, serve with gunicorn; the base URL once it listens."""
        self.manage("migrate", "--verbosity", "0")
        self.manage("createsuperuser", "--noinput", "--username", USERNAME, "--email", "alice@example.com")
        self.process = process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", "--workers", "1", "project.wsgi"],
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def drain() -> None:  # keeps reading, so the server never blocks on a full pipe
            assert process.stdout is not None
            for line in process.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=drain, daemon=True).start()
        output: list[str] = []
        while True:
            line = lines.get(timeout=STARTUP_TIMEOUT)
            assert line is not None, f"gunicorn exited with {process.wait()}:\n{''.join(output)}"
            output.append(line)
            listening = re.search(r"Listening at: (http://\S+)", line)
            if listening:
                return listening.group(1).rstrip("/")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=15)


class DjangoBrowser:
    """A cookie jar and the example's pages: ``home()`` is what it shows."""

    def __init__(self, base: str, jar: http.cookiejar.CookieJar | None = None) -> None:
        self.base = base
        self.jar = jar if jar is not None else http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def _open(self, path: str, form: dict[str, str] | None = None) -> str:
        data = None if form is None else urllib.parse.urlencode(form).encode()
        with self.opener.open(self.base + path, data=data, timeout=10) as response:
            return str(response.read().decode())

    def home(self) -> dict[str, Any]:
        """``user``, ``visits`` and ``sessions`` as the home page shows them (one visit more)."""
        return dict(_LINE.findall(self._open("/")))

    def post(self, path: str, **form: str) -> dict[str, Any]:
        """POST a form with the CSRF token of the page ``path`` (GET), then the home page it leads to."""
        page = self._open(path if path == "/login" else "/")
        token = _TOKEN.search(page)
        assert token is not None, page
        answer = self._open(path, {**form, "csrfmiddlewaretoken": token.group(1)})
        return dict(_LINE.findall(answer))

    def json(self, url: str) -> Any:
        """The JSON answer of another app on the host (an Express app), with this browser's cookies."""
        with self.opener.open(url, timeout=10) as response:
            return json.loads(response.read())

    def log_in(self) -> dict[str, Any]:
        return self.post("/login", username=USERNAME, password=PASSWORD)
