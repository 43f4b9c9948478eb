"""The benchmark command runs end to end (tiny counts; its numbers are not checked, only its tables).

No timing is asserted here: the ratios are the benchmark's to report, a
smoke run's numbers mean nothing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.process_helpers import run_module

DATABASES = ("sqlite", "postgresql", "mariadb")
SYSTEMS = ("raw", "min", "wsgi_dbsession", "Django", "Beaker")
# The round-trip budget of wsgi_dbsession (README, docs/benchmarks.md):
# unused / read / read and write / new session.
BUDGET = "0 / 1 / 2 / 1"


def run_benchmarks(*args: str) -> str:
    return run_module("benchmarks", "--quick", *args)


def tables(out: str) -> dict[str, list[dict[str, str]]]:
    """Each ``###`` section's Markdown table, as rows keyed by the header's cells."""
    found: dict[str, list[dict[str, str]]] = {}
    heading, headers = "", None
    for line in out.splitlines():
        if line.startswith("### "):
            heading, headers = line[4:], None
            found[heading] = []
        elif line.startswith("|") and heading:
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if headers is None:
                headers = cells
            elif not set(line) <= set("|- "):
                found[heading].append(dict(zip(headers, cells, strict=True)))
    return found


def by_first_column(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {next(iter(row.values())).strip("*"): row for row in rows}


def test_request_cost_tables_have_every_system_on_every_database(tmp_path: Path) -> None:
    chart = tmp_path / "chart.svg"
    out = run_benchmarks("--only", "request", "rows", "--chart", str(chart))
    found = tables(out)
    scenarios = ("read µs", "read and write µs", "new session µs")
    for database in DATABASES:
        [heading] = [name for name in found if name.startswith(f"Per-request cost: {database} ")]
        rows = by_first_column(found[heading])
        for system in SYSTEMS:
            for scenario in scenarios:
                float(rows[system][scenario])  # a number in every scenario, Django's and min's included
        for system in ("bare app", "wsgi_dbsession", "Django", "Beaker"):
            float(rows[system]["session unused µs"])
        assert rows["wsgi_dbsession"]["statements: unused / read / write / new"] == BUDGET, heading
        if database == "mariadb":
            # the server's own count: nothing beyond the statements
            assert rows["wsgi_dbsession"]["server commands: unused / read / write / new"] == BUDGET
        for ratio in ("wsgi_dbsession ÷ min", "wsgi_dbsession ÷ raw", "Django ÷ wsgi_dbsession"):
            assert all(rows[ratio][scenario].endswith("x") for scenario in scenarios), rows[ratio]
    summary = by_first_column(found["Summary (median µs over 2 interleaved rounds)"])
    assert set(summary) == {*SYSTEMS, "wsgi_dbsession ÷ min"}
    assert all(len(cell.split(" / ")) == 3 for cell in list(summary["Django"].values())[1:])
    cpu = by_first_column(found["CPU time of the benchmark process (median µs over 2 interleaved rounds)"])
    assert set(cpu) == {*SYSTEMS, "wsgi_dbsession - min"}
    targets = found["Targets"]
    assert len(targets) == 10 * len(DATABASES)  # ratio and CPU of 3 scenarios, unused, Beaker x3
    assert any(row["target"] == "unused session ≤ +1 µs" for row in targets)
    assert any(row["target"] == "read: CPU over min ≤ +7 µs" for row in targets)
    assert "Read latency by table size (median µs over 2 interleaved rounds)" in found
    if importlib.util.find_spec("matplotlib") is not None:
        assert f"chart written to {chart}" in out
        assert "<svg" in chart.read_text()
    else:
        assert "matplotlib is not installed" in out
        assert not chart.exists()


def test_quick_run_draws_no_chart_unless_asked() -> None:
    out = run_benchmarks("--only", "request", "--databases", "sqlite")
    assert "chart" not in out
    rows = by_first_column(tables(out)["Per-request cost: sqlite (median µs over 2 interleaved rounds)"])
    assert {"min", "Django"} <= set(rows)


@pytest.mark.slow
def test_load_benchmark_serves_every_app_under_gunicorn_without_errors() -> None:
    out = run_benchmarks("--only", "load", "--databases", "sqlite")
    found = tables(out)
    [heading] = [name for name in found if name.startswith("Session-writing endpoint under gunicorn")]
    rows = found[heading]
    assert [row["app"] for row in rows] == ["raw", "min", "wsgi_dbsession"]
    assert all(row["errors"] == "0" for row in rows), rows
    assert all(row["vs min"].endswith("x") for row in rows), rows
    [target] = found["Load targets"]
    assert target["database"] == "sqlite"
    assert target["measured"].endswith(", 0 failed")


def test_read_pieces_times_every_piece_of_a_read_on_every_database() -> None:
    out = run_module("benchmarks.read_pieces", "--calls", "20", "--rounds", "1")
    for database in DATABASES:
        assert f"**{database}**" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "µs" not in line]
    pieces = {line.split("|")[1].strip() for line in rows}
    assert {
        "the whole read request",
        "the thread's kept connection (driver.HeldConnections)",
        "the driver's execute and fetch",
    } <= pieces
    assert all(_number(line.split("|")[2]) for line in rows), rows


def _number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def test_statement_cost_sends_the_same_read_every_way_on_every_database() -> None:
    out = run_module("benchmarks.statement_cost", "--rounds", "1", "--reads", "5")
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| ") and "µs" not in line]
    assert {(row[1].strip(), row[2].strip()) for row in rows} == {
        (database, way)
        for database in DATABASES
        for way in (
            "hot path (driver.py)",
            "hot path, checkout each time",
            "Connection.execute (Core)",
            "Connection.exec_driver_sql",
        )
    }
    assert all(_number(row[3]) and _number(row[5]) for row in rows), rows
