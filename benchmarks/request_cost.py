"""Per-request cost of each system, measured in one process.

The WSGI apps are called directly (an environ dict and a no-op
start_response, the body consumed and closed as a server would), so the
numbers are the session machinery and the database, not HTTP parsing. Every
measurement is a batch of identical requests; the batches of all systems
and scenarios run in a freshly shuffled order in each round, so machine
noise lands on all of them alike, and each figure is the median over rounds.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from . import systems
from .common import (
    database_url,
    drop_tables,
    fmt_ratio,
    fmt_us,
    markdown_table,
    median,
    unique_table_name,
)

SCENARIOS = ("unused", "read", "write", "new")
SCENARIO_LABELS = {
    "unused": "session unused",
    "read": "read",
    "write": "read and write",
    "new": "new session",
}
OURS, FLOOR, BEAKER, BARE = "wsgi_dbsession", "floor", "beaker", "bare"
Key = tuple[str, str]  # (scenario, system)


class Contestants:
    """The four systems on one database, each on its own fresh table, with a live session each."""

    def __init__(self, backend: str, workdir: Path) -> None:
        self.backend = backend
        self.url = database_url(backend, workdir)
        self.tables = {name: unique_table_name(f"bench_{name}") for name in (FLOOR, BEAKER, "ours")}
        systems.create_session_table(self.url, self.tables[FLOOR])
        self.floor = systems.Floor(backend, self.url, self.tables[FLOOR])
        self.ours = systems.ours(self.url, self.tables["ours"])
        self.beaker = systems.beaker(self.url, self.tables[BEAKER], workdir / "beaker-locks")
        self.apps: dict[str, systems.App] = {
            BARE: systems.bare_app,
            FLOOR: self.floor,
            BEAKER: self.beaker,
            OURS: self.ours,
        }
        self.cookies = {
            name: systems.cookie_of(systems.call(app, "/new"))
            for name, app in self.apps.items()
            if name != BARE
        }

    def request(self, scenario: str, system: str) -> Callable[[], object]:
        """One request of ``scenario`` to ``system``, as a call with no arguments."""
        cookie = None if scenario == "new" or system == BARE else self.cookies[system]
        return functools.partial(systems.call, self.apps[system], systems.PATHS[scenario], cookie)

    def keys(self) -> list[Key]:
        keys: list[Key] = [("unused", BARE), ("unused", BEAKER), ("unused", OURS)]
        keys += [(scenario, system) for scenario in SCENARIOS[1:] for system in (FLOOR, BEAKER, OURS)]
        return keys

    def statements(self, scenario: str, system: str) -> int:
        """SQL statements one request sends, counted where the driver's cursor executes them."""
        run = self.request(scenario, system)
        if system == BARE:
            run()
            return 0
        if system == FLOOR:
            before = self.floor.statements
            run()
            return self.floor.statements - before
        engine = self.ours.store.engine if system == OURS else systems.beaker_engine(self.url)
        seen: list[str] = []

        def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            seen.append(statement)

        sa.event.listen(engine, "before_cursor_execute", record)
        try:
            run()
        finally:
            sa.event.remove(engine, "before_cursor_execute", record)
        return len(seen)

    def server_round_trips(self, scenario: str, system: str) -> int | None:
        """Commands the MariaDB server received for one request (its ``Questions`` counter).

        This includes what SQLAlchemy's statement events cannot see, such
        as COMMIT and the pool's ROLLBACK. None on the other databases.
        """
        if self.backend != "mariadb" or system == BARE:
            return None
        read = self._questions_reader(system)
        first, second = read(), read()
        overhead = second - first  # what reading the counter itself costs
        run = self.request(scenario, system)
        before = read()
        run()
        return read() - before - overhead

    def _questions_reader(self, system: str) -> Callable[[], int]:
        sql = "SHOW SESSION STATUS LIKE 'Questions'"
        if system == FLOOR:
            cursor = self.floor.connection.cursor()

            def read_floor() -> int:
                cursor.execute(sql)
                return int(cursor.fetchone()[1])

            return read_floor
        # A single-threaded caller always gets the pool's one connection back.
        engine = self.ours.store.engine if system == OURS else systems.beaker_engine(self.url)

        def read_pooled() -> int:
            with engine.connect() as conn:
                return int(conn.exec_driver_sql(sql).one()[1])

        return read_pooled

    def close(self) -> None:
        self.floor.close()
        self.ours.close()
        systems.dispose_beaker(self.url)
        drop_tables(self.url, list(self.tables.values()))


def calibrate(run: Callable[[], object], target_seconds: float) -> int:
    """How many calls of ``run`` take about ``target_seconds`` (at least 1)."""
    calls, elapsed = 1, 0.0
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            run()
        elapsed = time.perf_counter() - start
        if elapsed >= target_seconds / 4 or calls >= 1 << 20:
            break
        calls *= 4
    return max(1, round(calls * target_seconds / max(elapsed, 1e-9)))


def interleave(
    runs: dict[Key, Callable[[], object]], *, rounds: int, batch_seconds: float
) -> dict[Key, list[float]]:
    """Microseconds per call of each run: one sample per round, rounds in shuffled order."""
    batches = {key: calibrate(run, batch_seconds) for key, run in runs.items()}
    samples: dict[Key, list[float]] = {key: [] for key in runs}
    order = list(runs)
    for _ in range(rounds):
        random.shuffle(order)
        for key in order:
            run, calls = runs[key], batches[key]
            start = time.perf_counter_ns()
            for _ in range(calls):
                run()
            samples[key].append((time.perf_counter_ns() - start) / calls / 1000)
    return samples


@dataclass
class BackendResult:
    """One database's medians (µs per request) and statement counts."""

    backend: str
    micros: dict[Key, float]
    statements: dict[Key, int]
    round_trips: dict[Key, int | None]
    rounds: int
    spread: dict[Key, tuple[float, float]] = field(default_factory=dict)  # (min, max) over rounds

    def ratio(self, scenario: str, system: str, baseline: str) -> float:
        return self.micros[(scenario, system)] / self.micros[(scenario, baseline)]

    def unused_overhead(self) -> float:
        """Microseconds an unused session adds to a request (over the bare app)."""
        return self.micros[("unused", OURS)] - self.micros[("unused", BARE)]


def measure(backend: str, workdir: Path, *, rounds: int, batch_seconds: float) -> BackendResult:
    """Run every scenario for every system on ``backend``, interleaved."""
    contestants = Contestants(backend, workdir)
    try:
        keys = contestants.keys()
        statements = {key: contestants.statements(*key) for key in keys}
        round_trips = {key: contestants.server_round_trips(*key) for key in keys}
        runs = {key: contestants.request(*key) for key in keys}
        samples = interleave(runs, rounds=rounds, batch_seconds=batch_seconds)
    finally:
        contestants.close()
    return BackendResult(
        backend=backend,
        micros={key: median(values) for key, values in samples.items()},
        statements=statements,
        round_trips=round_trips,
        rounds=rounds,
        spread={key: (min(values), max(values)) for key, values in samples.items()},
    )


def render(result: BackendResult) -> str:
    """The Markdown table of one database's results."""
    headers = [
        "scenario",
        "floor µs",
        "Beaker µs",
        "wsgi_dbsession µs",
        "ours / floor",
        "Beaker / ours",
        "statements floor / Beaker / ours",
    ]
    if result.backend == "mariadb":
        headers.append("server commands floor / Beaker / ours")
    rows: list[list[str]] = []
    for scenario in SCENARIOS:
        baseline = BARE if scenario == "unused" else FLOOR
        micros = result.micros
        row = [
            SCENARIO_LABELS[scenario] + (" (floor = bare app)" if scenario == "unused" else ""),
            fmt_us(micros[(scenario, baseline)]),
            fmt_us(micros[(scenario, BEAKER)]),
            fmt_us(micros[(scenario, OURS)]),
            fmt_ratio(result.ratio(scenario, OURS, baseline)),
            fmt_ratio(result.ratio(scenario, BEAKER, OURS)),
            " / ".join(str(result.statements[(scenario, system)]) for system in (baseline, BEAKER, OURS)),
        ]
        if result.backend == "mariadb":
            row.append(
                " / ".join(
                    str(result.round_trips[(scenario, system)] or 0) for system in (baseline, BEAKER, OURS)
                )
            )
        rows.append(row)
    return markdown_table(headers, rows)


def render_targets(results: list[BackendResult]) -> str:
    """The issue's targets, measured, with a verdict per database."""
    rows: list[list[str]] = []
    for result in results:
        db = result.backend
        for scenario in ("read", "write", "new"):
            ratio = result.ratio(scenario, OURS, FLOOR)
            rows.append(
                [db, f"{SCENARIO_LABELS[scenario]} ≤ 1.3x floor", fmt_ratio(ratio), _verdict(ratio <= 1.3)]
            )
        overhead = result.unused_overhead()
        rows.append([db, "unused session ≤ +2 µs", f"+{overhead:.2f} µs", _verdict(overhead <= 2)])
        read_speedup = result.ratio("read", BEAKER, OURS)
        rows.append(
            [db, "≥ 5x faster than Beaker on reads", fmt_ratio(read_speedup), _verdict(read_speedup >= 5)]
        )
        for scenario in ("write", "new"):
            speedup = result.ratio(scenario, BEAKER, OURS)
            rows.append(
                [
                    db,
                    f"≥ 2x faster than Beaker on writes ({SCENARIO_LABELS[scenario]})",
                    fmt_ratio(speedup),
                    _verdict(speedup >= 2),
                ]
            )
    return markdown_table(["database", "target", "measured", "met"], rows)


def _verdict(met: bool) -> str:
    return "yes" if met else "**no**"
