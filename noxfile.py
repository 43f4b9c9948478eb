"""The version matrix: what CI runs after the main suite (``.ci/matrix.sh``).

Sessions (``nox -l`` lists them; ``docs/support.md`` is the policy they test):

- ``tests-3.10`` … ``tests-3.13``: the fast tests on every Python the
  classifiers in pyproject.toml name, each with the newest release of every
  dependency that installs there (``tests-3.13`` is the newest combination);
- ``lowest``: the oldest supported Python with the lowest version
  pyproject.toml allows of SQLAlchemy, psycopg, PyMySQL, pymssql,
  APScheduler, Pyramid and Flask, each pinned;
- ``django_lts``: Django's own session tests (``tests/peers/django``) on the
  newest Python with Django 5.2 LTS (the ``tests-*`` sessions take 6.x on 3.12+);
- ``release``: build the sdist and the wheel, ``twine check`` them, check
  what each carries (LICENSE and CHANGELOG included), install the sdist,
  collect every fast test from its unpacked directory (each test module
  imports: no helper, data file or conftest left out) and run a few files
  there (RELEASE_TESTS: ruff and mypy on the unpacked tree, the docs'
  checks, the store contract and the middleware). Not the whole fast
  suite: that runs in ``tests-3.13`` on the same Python with the same
  dependencies, from the same files (check_sdist proves the sdist carries
  every file git tracks there), so a second full run would find nothing new.

``.ci/run`` sets ``WSGI_DBSESSION_WHOLE_SUITE_PYTHON`` to the Python its
whole-suite run used (the README's command, newest dependencies): the
``tests-X.Y`` session of that Python is then skipped, its fast tests being
a subset of that run. Run by hand (``.ci/matrix.sh``), every session runs.

The fast tests are ``-m "not slow"``: no real gunicorn, uWSGI or Node
servers, no examples started as processes, no benchmarks, no PgBouncer or
Galera; they still need PostgreSQL and MariaDB, as the whole suite does.
``nox -s lowest -- -k store`` passes arguments on to pytest.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import nox
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

nox.options.default_venv_backend = "virtualenv"
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).resolve().parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
PYTHONS = nox.project.python_versions(PYPROJECT)
FAST_TESTS = ("-m", "not slow", "--ignore=tests/test_node_interop.py", "-x", "-q")
# The dependencies whose lowest supported version the ``lowest`` session installs.
LOWEST = ("sqlalchemy", "psycopg", "pymysql", "pymssql", "apscheduler", "pyramid", "flask", "django")
SHOW_VERSIONS = (
    "import importlib.metadata as m, platform, sys; "
    "print('Python', platform.python_version(), *(f'{n} {m.version(n)}' for n in sys.argv[1:]), sep=', ')"
)


def show_versions(session: nox.Session) -> None:
    """Print what the session runs on, so a log says which versions passed or failed."""
    versions = session.run("python", "-c", SHOW_VERSIONS, *LOWEST, silent=True)
    session.log(str(versions).strip())


def run_fast_tests(session: nox.Session, *extra: str) -> None:
    show_versions(session)
    session.run("python", "-m", "pytest", *FAST_TESTS, *extra, *session.posargs)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The fast tests with the newest release of every dependency."""
    if session.python == os.environ.get("WSGI_DBSESSION_WHOLE_SUITE_PYTHON"):
        session.skip(f"the whole suite ran on Python {session.python} with the newest dependencies (.ci/run)")
    session.install(".[test]")
    run_fast_tests(session)


@nox.session(python=PYTHONS[-1])
def django_lts(session: nox.Session) -> None:
    """Django's own session tests on the newest Python with Django 5.2 LTS.

    ``tests-3.12`` and ``tests-3.13`` install the newest Django (6.x there), the
    older Pythons 5.2: this session gives 5.2 LTS the newest Python too.
    """
    session.install(".[test]", "django>=5.2.14,<5.3")
    run_fast_tests(session, "tests/peers/django")


def lowest_pins() -> dict[str, str]:
    """``name==version`` for each LOWEST dependency, from its floor in pyproject.toml."""
    project = PYPROJECT["project"]
    requirements = itertools.chain(
        project["dependencies"], *project.get("optional-dependencies", {}).values()
    )
    pins = {}
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        floors = [spec.version for spec in requirement.specifier if spec.operator in (">=", "~=", "==")]
        if name in LOWEST and floors:
            pins[name] = f"{name}=={floors[0]}"
    missing = sorted(set(LOWEST) - set(pins))
    if missing:
        raise ValueError(f"pyproject.toml gives no lower bound (>=) for {missing}")
    return pins


@nox.session(python=PYTHONS[0])
def lowest(session: nox.Session) -> None:
    """The fast tests on the oldest Python with the lowest supported dependencies."""
    constraints = Path(session.create_tmp()) / "lowest.txt"
    constraints.write_text("\n".join(lowest_pins().values()) + "\n")
    session.log("pinned: " + ", ".join(lowest_pins().values()))
    session.install("-c", str(constraints), ".[test]")
    # ruff and mypy judge the code, not the dependencies: they run against the
    # newest releases everywhere else (mypy fails on old stubs, such as Flask
    # 3.0.0's untyped CLI decorators, that change nothing at run time).
    run_fast_tests(session, "--deselect=tests/test_quality.py")


# What the release session runs from the unpacked sdist, after collecting every
# fast test there: the files that read the tree itself (ruff, mypy, the docs'
# links and options) and one store and one middleware file (the package runs
# against the live databases from there). The rest runs in tests-3.13.
RELEASE_TESTS = (
    "tests/test_quality.py",
    "tests/test_docs.py",
    "tests/test_store_contract.py",
    "tests/test_middleware.py",
)

# Files the sdist must carry for its tests to run, beyond what git tracks under
# these folders (checked when git is there).
SDIST_FILES = (
    "LICENSE",
    "CHANGELOG.md",
    "README.md",
    "pyproject.toml",
    "conftest.py",
    "noxfile.py",
    "tests/servers/__init__.py",
    "tests/node/package.json",
    "tests/node/package-lock.json",
    "tests/node/server.js",
)
SDIST_FOLDERS = ("wsgi_dbsession/", "tests/", "docs/", "examples/", "benchmarks/")
NEVER_SHIPPED = ("node_modules", "__pycache__", ".pyc", ".sqlite", ".sqlite-wal", ".sqlite-shm")


def tracked_files(session: nox.Session) -> set[str] | None:
    """The files git tracks in SDIST_FOLDERS, or None outside a git checkout."""
    try:
        listing = session.run("git", "-C", str(ROOT), "ls-files", *SDIST_FOLDERS, external=True, silent=True)
    except nox.command.CommandFailed:
        return None
    return set(str(listing).split())


def check_sdist(session: nox.Session, sdist: Path, changelog: str) -> None:
    with tarfile.open(sdist) as archive:
        top = sdist.name.removesuffix(".tar.gz")
        names = {name.removeprefix(f"{top}/") for name in archive.getnames()}
        pkg_info = archive.extractfile(f"{top}/PKG-INFO")
        assert pkg_info is not None
        metadata = pkg_info.read().decode()
    wanted = set(SDIST_FILES) | (tracked_files(session) or set())
    missing = sorted(wanted - names)
    shipped_junk = sorted(name for name in names if any(junk in name for junk in NEVER_SHIPPED))
    if missing or shipped_junk:
        session.error(f"{sdist.name}: missing {missing}; should not ship {shipped_junk}")
    if changelog not in metadata:
        session.error(f"{sdist.name}: PKG-INFO's description lacks CHANGELOG.md")
    session.log(f"{sdist.name}: {len(names)} entries, LICENSE, CHANGELOG.md and the test suite included")


def check_wheel(session: nox.Session, wheel: Path, changelog: str) -> None:
    dist_info = "-".join(wheel.name.split("-")[:2]) + ".dist-info"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"{dist_info}/METADATA").decode()
    stray = sorted(name for name in names if not name.startswith(("wsgi_dbsession/", f"{dist_info}/")))
    problems = [
        *(f"not ours to install: {name}" for name in stray),
        *(
            f"missing {name}"
            for name in (f"{dist_info}/licenses/LICENSE", "wsgi_dbsession/py.typed")
            if name not in names
        ),
        *(
            f"METADATA lacks {line!r}"
            for line in ("License-Expression: MIT", "License-File: LICENSE")
            if line not in metadata.splitlines()
        ),
    ]
    if changelog not in metadata:
        problems.append("METADATA's description lacks CHANGELOG.md")
    if problems:
        session.error(f"{wheel.name}: " + "; ".join(problems))
    session.log(f"{wheel.name}: LICENSE in {dist_info}/licenses, CHANGELOG.md in METADATA")


@nox.session(python=PYTHONS[-1])
def release(session: nox.Session) -> None:
    """Build the sdist and the wheel as a release would, check them, and test from the sdist."""
    session.install("build", "twine", "trove-classifiers")
    tmp = Path(session.create_tmp())
    dist = tmp / "dist"
    for old in dist.glob("*"):
        old.unlink()
    session.run("python", "-m", "build", "--outdir", str(dist), str(ROOT))
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    session.run("python", "-m", "twine", "check", "--strict", str(sdist), str(wheel))
    # PyPI refuses an upload with a classifier it does not know; twine check does not look.
    session.run(
        "python",
        "-c",
        "import sys, trove_classifiers; "
        "bad = [c for c in sys.argv[1:] if c not in trove_classifiers.classifiers]; "
        "sys.exit(f'unknown classifiers: {bad}' if bad else None)",
        *PYPROJECT["project"]["classifiers"],
    )
    changelog = (ROOT / "CHANGELOG.md").read_text().strip()
    check_sdist(session, sdist, changelog)
    check_wheel(session, wheel, changelog)

    # The acceptance a packager would do: pip install the sdist, run its tests.
    unpacked = tmp / "unpacked"
    shutil.rmtree(unpacked, ignore_errors=True)
    with tarfile.open(sdist) as archive:
        archive.extractall(unpacked, filter="data")
    (source,) = unpacked.iterdir()
    session.install(f"{sdist}[test]")
    session.chdir(source)
    show_versions(session)
    session.run("python", "-m", "pytest", "--collect-only", "-qq", *FAST_TESTS)
    session.run("python", "-m", "pytest", *FAST_TESTS, *RELEASE_TESTS, *session.posargs)
