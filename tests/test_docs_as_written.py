"""Commands the docs and examples give, run as written (only the port and the secret filled in)."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

from conftest import SECRET
from tests.example_helpers import EXAMPLES, serving

pytestmark = pytest.mark.slow

ROOT = EXAMPLES.parent
PYRAMID_APP_DOC = ast.get_docstring(ast.parse((EXAMPLES / "pyramid_app.py").read_text())) or ""


def docstring_commands(module_doc: str, program: str) -> list[list[str]]:
    """The command lines of a docstring that start with ``program``, split as a shell would."""
    commands = []
    for line in module_doc.splitlines():
        words = line.split()
        if program in words:
            words = shlex.split(line.replace("$SECRET", SECRET))
            commands.append(words[words.index(program) :])
    return commands


def absolute(words: list[str]) -> list[str]:
    """The words with paths under examples/ made absolute, so the command runs from any directory."""
    return [str(ROOT / word) if word.startswith("examples/") else word for word in words]


def test_the_pyramid_ini_commands_give_every_variable_the_ini_uses() -> None:
    settings = [
        line for line in (EXAMPLES / "pyramid.ini").read_text().splitlines() if not line.startswith("format")
    ]
    used = set(re.findall(r"%\((\w+)\)s", "\n".join(settings))) - {"here", "__file__"}  # not a log format's
    assert used == {"session_secret", "http_port"}
    (pserve,) = docstring_commands(PYRAMID_APP_DOC, "pserve")
    assert {word.split("=", 1)[0] for word in pserve if "=" in word} == used
    (gunicorn,) = docstring_commands(PYRAMID_APP_DOC, "gunicorn")
    assert gunicorn[gunicorn.index("--paste-global") + 1].startswith(
        "session_secret="
    )  # gunicorn binds itself


def test_the_pyramid_app_s_pserve_command_serves(tmp_path: Path) -> None:
    (pserve,) = docstring_commands(PYRAMID_APP_DOC, "pserve")
    args = ["-m", "pyramid.scripts.pserve", *absolute(pserve[1:])]
    args = [("http_port=0" if word.startswith("http_port=") else word) for word in args]
    with serving(args, r"Serving on (http://\S+)", tmp_path) as base:
        assert base.startswith("http://127.0.0.1:")
