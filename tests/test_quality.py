"""The package stays ruff-clean and passes mypy --strict; no test module imports another."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Imports of a test module still to be moved by another branch, each (importer, imported).
# An entry whose import is gone fails the test below: delete the entry then.
# Imports of a test module by another that are allowed for now, each with its reason (none left).
PENDING_TEST_MODULE_IMPORTS: set[tuple[str, str]] = set()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_ruff_lint_is_clean() -> None:
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    result = run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def imported_modules(path: Path) -> set[str]:
    """The dotted names of the modules that the Python file at ``path`` imports, relative ones resolved."""
    package = ".".join(path.relative_to(ROOT).parent.parts)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            found.add(base)
            # ``from tests import test_x`` imports the module test_x itself.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_no_test_module_imports_another() -> None:
    # What several test modules need lives in a helper module named by what it holds
    # (tests/*_helpers.py), so that each test module can change or go on its own.
    found = set()
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if "node_modules" in path.parts:
            continue
        for module in imported_modules(path):
            if module.startswith("tests.") and module.rsplit(".", 1)[-1].startswith("test_"):
                found.add((str(path.relative_to(ROOT)), module))
    assert found - PENDING_TEST_MODULE_IMPORTS == set(), "move what they import into a helper module"
    assert PENDING_TEST_MODULE_IMPORTS - found == set(), "moved: delete the entry"


def test_each_module_imports_only_lower_layers() -> None:
    table = (ROOT / "docs" / "architecture.md").read_text()
    layer_of = {
        module: int(layer)
        for layer, modules in re.findall(r"^\| (\d+) \| (.*) \|$", table, re.MULTILINE)
        for module in re.findall(r"`(\w+)`", modules)
    }
    modules = {path.stem: path for path in (ROOT / "wsgi_dbsession").glob("*.py")}
    assert sorted(set(modules) - set(layer_of)) == [], "docs/architecture.md's layer table lacks these"
    upward = [
        f"{name} (layer {layer_of[name]}) imports {other} (layer {layer_of[other]})"
        for name, path in sorted(modules.items())
        for other in sorted(
            {
                module.split(".")[1]
                for module in imported_modules(path)
                if module.startswith("wsgi_dbsession.")
            }
            & set(modules)
        )
        if layer_of[other] >= layer_of[name]
    ]
    assert upward == []
