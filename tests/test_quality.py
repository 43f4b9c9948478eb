"""The package stays ruff-clean and passes mypy --strict."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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


def package_imports(path: Path) -> set[str]:
    """The package's modules that ``path`` imports, ``TYPE_CHECKING`` blocks and function bodies included."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            imported.update([node.module] if node.module else [alias.name for alias in node.names])
    return imported


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
        for other in sorted(package_imports(path))
        if layer_of[other] >= layer_of[name]
    ]
    assert upward == []
