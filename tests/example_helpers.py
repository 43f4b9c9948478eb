"""For tests that run the examples as real processes: start one until it serves, browse it with cookies."""

from __future__ import annotations

import http.cookiejar
import os
import queue
import re
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import SECRET, stop_process

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
STARTUP_TIMEOUT = 30  # seconds; two cores shared with the rest of the suite


@contextmanager
def serving(args: list[str], ready: str, cwd: Path, **env: str) -> Iterator[str]:
    """Run ``python <args>`` until its output matches ``ready``; yield the URL it captured."""
    environment = {
        **os.environ,
        "PYTHONPATH": str(EXAMPLES),  # the examples import one another, as their docstrings say
        "XDG_RUNTIME_DIR": str(cwd),  # gunicorn's control socket, away from other runs
        "WSGI_DBSESSION_SECRET": SECRET,
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def drain() -> None:  # keeps reading, so a chatty server never blocks on a full pipe
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        while True:
            try:
                line = lines.get(timeout=STARTUP_TIMEOUT)
            except queue.Empty:
                pytest.fail(f"{args} did not start in {STARTUP_TIMEOUT} s:\n{''.join(output)}")
            if line is None:
                pytest.fail(f"{args} exited with {proc.wait()}:\n{''.join(output)}")
            output.append(line)
            match = re.search(ready, line)
            if match:
                break
        yield match.group(1).rstrip("/")
    finally:
        proc.terminate()
        reader.join(timeout=15)  # the reader ends when the process closes its output
        stop_process(proc, timeout=15)


class Browser:
    """A client with a cookie jar, as a browser would visit the example's page."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, path: str = "/") -> str:
        with self.opener.open(self.base + path, timeout=10) as response:
            return str(response.read().decode())

    def post(self, path: str, **form: str) -> str:
        data = urllib.parse.urlencode(form).encode()
        with self.opener.open(self.base + path, data=data, timeout=10) as response:
            return str(response.read().decode())

    def cookie(self) -> str:
        (cookie,) = self.jar
        return f"{cookie.name}={cookie.value}"
