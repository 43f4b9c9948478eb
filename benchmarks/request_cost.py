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
from .django_sessions import DjangoSessions

SCENARIOS = ("unused", "read", "write", "new")
SCENARIO_LABELS = {
    "unused": "session unused",
    "read": "read",
    "write": "read and write",
    "new": "new session",
}
BARE, RAW, MIN, OURS, DJANGO, BEAKER = "bare app", "raw", "min", "wsgi_dbsession", "Django", "Beaker"
# Row order of the tables and bar order of the chart.
SYSTEMS = (RAW, MIN, OURS, DJANGO, BEAKER)
# Django's SessionMiddleware with two more session engines, on the same requests
# (a table of their own: render_django): Django's cached_db, and this package's.
DJANGO_CACHED, DJANGO_OURS = "Django cached_db", "wsgi_dbsession.django"
DJANGO_ENGINES = {DJANGO_CACHED: "cached_db", DJANGO_OURS: "wsgi_dbsession"}
# The systems measured with an unused session: raw and min are no middleware
# (they query whatever the handler does), the bare app is their baseline.
UNUSED_SYSTEMS = (BARE, OURS, DJANGO, BEAKER, *DJANGO_ENGINES)
Key = tuple[str, str]  # (scenario, system)


class Contestants:
    """Every system on one database, each on its own fresh table, with a live session each."""

    def __init__(self, backend: str, workdir: Path) -> None:
        self.backend = backend
        self.url = database_url(backend, workdir)
        self.tables = {name: unique_table_name(f"bench_{name}") for name in ("raw", "min", "beaker", "ours")}
        self.django_table = unique_table_name("bench_django")
        systems.create_session_table(self.url, self.tables["raw"])
        systems.create_session_table(self.url, self.tables["min"])
        self.raw = systems.Raw(backend, self.url, self.tables["raw"])
        self.min = systems.Min(backend, self.url, self.tables["min"])
        self.ours = systems.ours(self.url, self.tables["ours"])
        self.beaker = systems.beaker(self.url, self.tables["beaker"], workdir / "beaker-locks")
        self.django = DjangoSessions(backend, workdir, self.django_table)
        self.djangos = {DJANGO: self.django}
        for system, engine in DJANGO_ENGINES.items():
            self.tables[engine] = unique_table_name(f"bench_django_{engine}")
            self.djangos[system] = DjangoSessions(backend, workdir, self.tables[engine], engine)
        self.apps: dict[str, systems.App] = {
            BARE: systems.bare_app,
            RAW: self.raw,
            MIN: self.min,
            OURS: self.ours,
            DJANGO: self.django.app,
            BEAKER: self.beaker,
            **{system: sessions.app for system, sessions in self.djangos.items()},
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
        keys: list[Key] = [("unused", system) for system in UNUSED_SYSTEMS]
        keys += [(scenario, system) for scenario in SCENARIOS[1:] for system in (*SYSTEMS, *DJANGO_ENGINES)]
        return keys

    def statements(self, scenario: str, system: str) -> int:
        """SQL statements one request sends, counted where the driver's cursor executes them.

        Transaction control is not counted (only SQLite's driver gets
        Django's BEGIN as a statement); MariaDB's server-side count has it.
        """
        run = self.request(scenario, system)
        if system == BARE:
            run()
            return 0
        if system in (RAW, MIN):
            counted = self.raw if system == RAW else self.min
            before = counted.statements
            run()
            return counted.statements - before
        if system in self.djangos:
            with self.djangos[system].counting() as sent:
                run()
            return sum(1 for sql in sent if sql.strip().upper() not in ("BEGIN", "COMMIT"))
        seen: list[str] = []
        if system == OURS:
            # The store's own hook sees both of its statement paths.
            stop = self.ours.store.on_statement(lambda statement, _parameters: seen.append(statement))
            try:
                run()
            finally:
                stop()
            return len(seen)
        engine = systems.beaker_engine(self.url)

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

        This includes what statement counts cannot see, such as BEGIN,
        COMMIT, ``SET autocommit`` and the pool's ROLLBACK. None on the
        other databases.
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
        if system in (RAW, MIN, DJANGO, DJANGO_CACHED):
            cursor = {RAW: self.raw.connection.cursor, MIN: self.min.connection.cursor}.get(
                system, self.django.cursor
            )()

            def read_cursor() -> int:
                cursor.execute(sql)
                return int(cursor.fetchone()[1])

            return read_cursor
        stores = {OURS: self.ours.store, DJANGO_OURS: self.djangos[DJANGO_OURS].store}
        if system in stores:
            connections = stores[system].runner.connections

            def read_kept() -> int:
                # The connection this thread keeps for the store's statements (driver.py).
                pooled, kept = connections.connection()
                assert kept, "the store's engine keeps a connection per thread"
                cursor = pooled.cursor()
                cursor.execute(sql)
                value = int(cursor.fetchone()[1])
                cursor.close()
                return value

            return read_kept
        # A single-threaded caller always gets the pool's one connection back.
        engine = systems.beaker_engine(self.url)

        def read_pooled() -> int:
            with engine.connect() as conn:
                return int(conn.exec_driver_sql(sql).one()[1])

        return read_pooled

    def close(self) -> None:
        self.raw.close()
        self.min.close()
        self.ours.close()
        for sessions in self.djangos.values():
            sessions.close()
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
    runs: dict[Key, Callable[[], object]],
    *,
    rounds: int,
    batch_seconds: float,
    cpu: dict[Key, list[float]] | None = None,
) -> dict[Key, list[float]]:
    """Microseconds per call of each run: one sample per round, rounds in shuffled order.

    ``cpu``, when given, receives the same samples in this process's CPU time.
    """
    batches = {key: calibrate(run, batch_seconds) for key, run in runs.items()}
    samples: dict[Key, list[float]] = {key: [] for key in runs}
    if cpu is not None:
        cpu.update({key: [] for key in runs})
    order = list(runs)
    for _ in range(rounds):
        random.shuffle(order)
        for key in order:
            run, calls = runs[key], batches[key]
            start, start_cpu = time.perf_counter_ns(), time.process_time_ns()
            for _ in range(calls):
                run()
            samples[key].append((time.perf_counter_ns() - start) / calls / 1000)
            if cpu is not None:
                cpu[key].append((time.process_time_ns() - start_cpu) / calls / 1000)
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
    # Medians of this process's CPU time per request: the session layer and the driver,
    # without the database server's work or the wait for it (a commit's flush).
    cpu: dict[Key, float] = field(default_factory=dict)

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
        cpu: dict[Key, list[float]] = {}
        samples = interleave(runs, rounds=rounds, batch_seconds=batch_seconds, cpu=cpu)
    finally:
        contestants.close()
    return BackendResult(
        backend=backend,
        micros={key: median(values) for key, values in samples.items()},
        statements=statements,
        round_trips=round_trips,
        rounds=rounds,
        spread={key: (min(values), max(values)) for key, values in samples.items()},
        cpu={key: median(values) for key, values in cpu.items()},
    )


# The ratio rows of a database's table: (label, system, baseline).
RATIOS = (
    (f"{OURS} ÷ {MIN}", OURS, MIN),
    (f"{OURS} ÷ {RAW}", OURS, RAW),
    (f"{DJANGO} ÷ {OURS}", DJANGO, OURS),
    (f"{BEAKER} ÷ {OURS}", BEAKER, OURS),
)
# Ceilings of wsgi_dbsession ÷ min, wall clock (issue 27): SQLite, and the network databases.
MIN_RATIO_TARGET = {"sqlite": 1.6, "postgresql": 1.15, "mariadb": 1.15}
# Ceilings of wsgi_dbsession's CPU over min's, µs for read / write / new (issue 27): half of
# what the run of record at 9cd148a measured (+14/+24/+16, +20/+38/+46, +34/+42/+58).
CPU_OVER_MIN_TARGET = {"sqlite": (7, 12, 8), "postgresql": (10, 19, 23), "mariadb": (17, 21, 29)}
UNUSED_TARGET = 1.0  # µs an unused session may add to a request
NONE = "-"


def render(result: BackendResult) -> str:
    """The Markdown table of one database's results: a row per system, then the ratios."""
    headers = ["system", *(f"{SCENARIO_LABELS[scenario]} µs" for scenario in SCENARIOS)]
    headers.append("statements: " + " / ".join(SCENARIOS))
    if result.backend == "mariadb":
        headers.append("server commands: " + " / ".join(SCENARIOS))
    rows: list[list[str]] = []
    for system in (BARE, *SYSTEMS):
        keys = [(scenario, system) for scenario in SCENARIOS]
        row = [system, *(fmt_us(result.micros[key]) if key in result.micros else NONE for key in keys)]
        row.append(" / ".join(str(result.statements.get(key, NONE)) for key in keys))
        if result.backend == "mariadb":
            row.append(" / ".join(_count(result.round_trips.get(key, NONE)) for key in keys))
        rows.append(row)
    for label, system, baseline in RATIOS:
        row = [f"**{label}**"]
        for scenario in SCENARIOS:
            measured = (scenario, system) in result.micros and (scenario, baseline) in result.micros
            row.append(fmt_ratio(result.ratio(scenario, system, baseline)) if measured else NONE)
        rows.append(row + [""] * (len(headers) - len(row)))
    return markdown_table(headers, rows)


def _count(value: object) -> str:
    return "0" if value is None else str(value)


def render_summary(results: list[BackendResult]) -> str:
    """Every database at a glance: µs per request, read / read and write / new session."""
    headers = ["per request, µs"] + [f"{result.backend} read / write / new" for result in results]
    rows: list[list[str]] = []
    for system in SYSTEMS:
        cells = [
            " / ".join(fmt_us(result.micros[(scenario, system)]) for scenario in SCENARIOS[1:])
            for result in results
        ]
        rows.append([system, *cells])
    for label, system, baseline in RATIOS[:1]:
        cells = [
            " / ".join(f"{result.ratio(scenario, system, baseline):.2f}" for scenario in SCENARIOS[1:])
            for result in results
        ]
        rows.append([f"**{label}**", *cells])
    return markdown_table(headers, rows)


def render_django(results: list[BackendResult]) -> str:
    """Django's SessionMiddleware with its db and cached_db engines and with wsgi_dbsession.django."""
    engines = (DJANGO, DJANGO_CACHED, DJANGO_OURS)
    headers = ["Django engine, µs per request"] + [
        f"{result.backend} {' / '.join(SCENARIOS)} (statements)" for result in results
    ]
    rows: list[list[str]] = []
    for system in engines:
        cells = [
            " / ".join(fmt_us(result.micros[(scenario, system)]) for scenario in SCENARIOS)
            + " ("
            + " / ".join(str(result.statements[(scenario, system)]) for scenario in SCENARIOS)
            + ")"
            for result in results
        ]
        rows.append([system, *cells])
    for system in (DJANGO, DJANGO_CACHED):
        cells = [
            " / ".join(fmt_ratio(result.ratio(scenario, system, DJANGO_OURS)) for scenario in SCENARIOS)
            for result in results
        ]
        rows.append([f"**{system} ÷ {DJANGO_OURS}**", *cells])
    return markdown_table(headers, rows)


def render_cpu(results: list[BackendResult]) -> str:
    """The benchmark process's CPU time per request: what each system itself costs, without the database.

    On a shared machine the wall-clock figures of writes follow the disk's
    flush latency; CPU time does not, so it shows the session layer's own
    cost (the driver's client side included) even then.
    """
    headers = ["CPU per request, µs"] + [f"{result.backend} read / write / new" for result in results]
    rows: list[list[str]] = []
    for system in SYSTEMS:
        cells = [
            " / ".join(fmt_us(result.cpu[(scenario, system)]) for scenario in SCENARIOS[1:])
            for result in results
        ]
        rows.append([system, *cells])
    cells = [
        " / ".join(
            f"{result.cpu[(scenario, OURS)] - result.cpu[(scenario, MIN)]:+.0f}" for scenario in SCENARIOS[1:]
        )
        for result in results
    ]
    rows.append([f"**{OURS} - {MIN}**", *cells])
    return markdown_table(headers, rows)


def render_targets(results: list[BackendResult]) -> str:
    """The issue's targets, measured, with a verdict per database."""
    rows: list[list[str]] = []
    for result in results:
        db = result.backend
        ceiling = MIN_RATIO_TARGET[db]
        for scenario in ("read", "write", "new"):
            ratio = result.ratio(scenario, OURS, MIN)
            rows.append(
                [
                    db,
                    f"{SCENARIO_LABELS[scenario]}: {OURS} ÷ {MIN} ≤ {ceiling:g}",
                    fmt_ratio(ratio),
                    _verdict(ratio <= ceiling),
                ]
            )
        for scenario, ceiling_us in zip(("read", "write", "new"), CPU_OVER_MIN_TARGET[db], strict=True):
            over = result.cpu[(scenario, OURS)] - result.cpu[(scenario, MIN)]
            rows.append(
                [
                    db,
                    f"{SCENARIO_LABELS[scenario]}: CPU over {MIN} ≤ +{ceiling_us} µs",
                    f"{over:+.1f} µs",
                    _verdict(over <= ceiling_us),
                ]
            )
        overhead = result.unused_overhead()
        rows.append(
            [
                db,
                f"unused session ≤ +{UNUSED_TARGET:g} µs",
                f"+{overhead:.2f} µs",
                _verdict(overhead <= UNUSED_TARGET),
            ]
        )
        read_speedup = result.ratio("read", BEAKER, OURS)
        rows.append([db, "Beaker ≥ 5x slower on reads", fmt_ratio(read_speedup), _verdict(read_speedup >= 5)])
        for scenario in ("write", "new"):
            speedup = result.ratio(scenario, BEAKER, OURS)
            rows.append(
                [
                    db,
                    f"Beaker ≥ 2x slower on writes ({SCENARIO_LABELS[scenario]})",
                    fmt_ratio(speedup),
                    _verdict(speedup >= 2),
                ]
            )
    return markdown_table(["database", "target", "measured", "met"], rows)


def _verdict(met: bool) -> str:
    return "yes" if met else "**no**"
