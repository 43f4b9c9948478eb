"""Running the ``wsgi-dbsession`` and ``flask dbsession`` commands as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSOLE_SCRIPT = Path(sys.executable).with_name("wsgi-dbsession")
FLASK_EXAMPLE = ROOT / "examples" / "flask_app.py"
SECRET = "test-secret-0123456789abcdefghijklmnopqrstuvwxyz"
# Variables of the calling shell that would change what the command does.
_SETTINGS = ("WSGI_DBSESSION_URL", "WSGI_DBSESSION_TABLE")


def cli(
    *args: str, script: bool = False, flask: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``wsgi-dbsession ARGS``; ``script``: as the console script; ``flask``: ``flask dbsession ARGS``.

    ``flask dbsession`` runs on the Flask example (examples/flask_app.py).
    """
    if flask:
        command = [sys.executable, "-m", "flask", "--app", str(FLASK_EXAMPLE), "dbsession"]
    else:
        command = [str(CONSOLE_SCRIPT)] if script else [sys.executable, "-m", "wsgi_dbsession"]
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in _SETTINGS and not key.startswith("FLASK_")
    }
    return subprocess.run(
        [*command, *args],
        cwd=ROOT,
        env={**environment, "WSGI_DBSESSION_SECRET": SECRET, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
