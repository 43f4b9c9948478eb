"""The benchmark command runs end to end (tiny counts; its numbers are not checked, only its tables)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_benchmarks(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


# DESIGN.md's round-trip budget for wsgi_dbsession, per scenario label.
BUDGET = {"session unused (floor = bare app)": 0, "read": 1, "read and write": 2, "new session": 1}


def test_request_cost_and_table_size_tables_cover_every_database() -> None:
    out = run_benchmarks("--only", "request", "rows")
    counted = 0
    for line in out.splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        if cells and cells[0] in BUDGET:
            # statements (and on MariaDB the server's own count) for floor / Beaker / ours
            for column in cells[6:]:
                assert int(column.split(" / ")[-1]) == BUDGET[cells[0]], line
            counted += 1
    assert counted == 3 * len(BUDGET), out
    assert out.count("server commands") == 1, "MariaDB's server-side count is missing"
    assert "### Targets" in out
    assert "### Read latency by table size" in out


@pytest.mark.slow
def test_load_benchmark_serves_both_apps_under_gunicorn_without_errors() -> None:
    out = run_benchmarks("--only", "load", "--databases", "sqlite")
    rows = [line for line in out.splitlines() if line.startswith("| sqlite")]
    assert [row.split("|")[2].strip() for row in rows] == ["floor", "wsgi_dbsession"]
    assert all(row.split("|")[6].strip() == "0" for row in rows), rows
