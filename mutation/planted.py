"""The hand-planted bugs of issue 18, each with the tests that must catch it.

Run on demand (not in CI): ``.venv/bin/python mutation/planted.py [NAME ...]``.

For each bug, a scratch copy of the project is made (the working tree's
tracked and untracked, not ignored, files; or ``--source DIR``), the bug is
planted there by replacing one exact snippet of the package, and the named
tests are run in that copy. The bug is *killed* when they fail. The shared
working tree is never modified. A snippet that no longer occurs (the code was
refactored) is reported as ``STALE``: update the snippet, not the test.

``--check-clean`` also runs every named test on the unmodified copy first
(they must pass there, or a "kill" proves nothing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Planted:
    name: str
    file: str  # inside wsgi_dbsession/
    old: str  # an exact snippet of the package, occurring once
    new: str  # the bug
    tests: tuple[str, ...]  # node ids that must each fail with the bug planted
    seen_as: str  # what a user would see


PLANTED = [
    Planted(
        "rolling-never-extends",
        "saving.py",
        "        if not headers_sent and self._factory.rolling and self._touch_due(row, now := utcnow()):\n"
        "            expires = self._record.expiry(now, self._factory.absolute_max_age)\n",
        "        if not headers_sent and self._factory.rolling and self._touch_due(row, now := utcnow()):\n"
        "            expires = row.expires\n",
        (
            "tests/test_middleware.py::"
            "test_rolling_moves_the_expiry_of_a_read_only_request_a_whole_lifetime_ahead[sqlite]",
        ),
        "logged out despite activity",
    ),
    Planted(
        "merge-drops-deletions",
        "saving.py",
        "        for key in self.removed:\n            merged.pop(key, None)\n",
        "",
        (
            "tests/test_concurrency.py::"
            "test_a_key_deleted_by_the_request_that_saves_last_stays_deleted[sqlite]",
            "tests/test_concurrency.py::"
            "test_a_flash_consumed_by_the_request_that_saves_last_does_not_come_back[sqlite]",
        ),
        "a deleted key or a consumed flash comes back",
    ),
    Planted(
        "regenerate-twice",
        "session.py",
        # The row to rename is derived (``_row.sid`` while ``_sid`` differs); the bug
        # records the current id as the stored row's before generating a new one, so
        # a second regenerate() renames the first new id, never stored.
        "        self._mapping()\n        self._sid = generate_sid()\n        self._changed = True\n",
        "        self._mapping()\n"
        "        if self._row is not None and self._sid is not None:\n"
        "            self._row = replace(self._row, sid=self._sid)\n"
        "        self._sid = generate_sid()\n"
        "        self._changed = True\n",
        (
            "tests/test_security.py::"
            "test_regenerating_twice_in_one_request_still_retires_the_id_known_before_login[sqlite]",
        ),
        "the pre-login id stays live (fixation)",
    ),
    Planted(
        "regenerate-then-invalidate",
        "session.py",
        "self._doomed_sid = self._row.sid  # the stored id, even after a regenerate()",
        "self._doomed_sid = self._sid",
        (
            "tests/test_security.py::"
            "test_logout_right_after_regenerate_in_one_request_deletes_the_id_known_before_login[sqlite]",
        ),
        "the pre-login id stays live",
    ),
    Planted(
        "rename-of-a-vanished-row-writes-nothing",
        "saving.py",
        "        if not store.rename(row.sid, self._sid, text, expires):\n"
        "            store.write(self._sid, text, expires)",
        "        if not store.rename(row.sid, self._sid, text, expires):\n            pass",
        (
            "tests/test_concurrency.py::"
            "test_a_login_whose_old_row_vanished_meanwhile_is_saved_under_the_new_id[sqlite]",
        ),
        "the login is silently dropped",
    ),
    Planted(
        "failed-save-not-sticky",
        "middleware.py",
        "        if self.failure is not None:\n"
        "            raise self.failure  # again, if the app swallowed it and tries another answer\n",
        "",
        (
            "tests/test_middleware.py::"
            "test_a_failed_save_sticks_even_when_the_app_retries_with_a_session_that_would_save[sqlite]",
            "tests/test_faults.py::"
            "test_app_that_swallows_a_failed_save_never_gets_its_success_page_out[postgresql]",
        ),
        "the row is written and the answer is still a 500, start_response called twice",
    ),
    Planted(
        "planted-id-adopted",
        "session.py",
        "        if record is None or sid is None or stored is None:\n            self._start_fresh(now)\n",
        "        if record is None or sid is None or stored is None:\n"
        "            self._start_fresh(now)\n"
        "            self._sid = sid\n",
        (
            "tests/test_security.py::"
            "test_a_validly_signed_id_with_no_row_is_not_adopted_by_a_write_without_regenerate[sqlite]",
        ),
        "fixation",
    ),
    Planted(
        "merge-keeps-reserved-keys",
        "saving.py",
        "        merged = express.strip_reserved(loads(current))\n",
        "        merged = loads(current)\n",
        (
            "tests/test_concurrency.py::"
            "test_a_merged_save_keeps_the_machinery_s_keys_out_of_the_session[sqlite]",
        ),
        "reserved keys appear in the session",
    ),
    Planted(
        "prune-ignores-stop",
        "prune.py",
        '            if stop is not None and stop.is_set():\n                outcome = "stopped"\n'
        "                break\n",
        "",
        (
            "tests/test_cleanup.py::"
            "test_shutdown_during_a_long_prune_returns_and_stops_it_after_the_current_batch[sqlite-core]",
        ),
        "shutdown waits for a whole prune",
    ),
    # Issue 22's three, which no test caught when they were planted.
    Planted(
        "saved-session-forgets-held-values",
        "saving.py",
        "        self._snapshots = {\n"
        "            key: self._dumps({key: value})\n"
        "            for key, value in self._data.items()\n"
        "            if not isinstance(value, IMMUTABLE)\n"
        "        }\n",
        "        self._snapshots = {}\n",
        (
            "tests/test_session.py::"
            "test_a_value_read_before_an_explicit_save_and_changed_after_it_is_saved[sqlite]",
            "tests/test_session.py::"
            "test_a_value_read_before_start_response_and_changed_after_a_write_is_saved[sqlite]",
        ),
        "an append after save() or after start_response is lost",
    ),
    Planted(
        "failed-prune-keeps-the-lease",
        "prune.py",
        "    try:\n        return prune_held(store, lease, batch_size=batch_size, progress=progress)\n"
        "    finally:\n        lease.release()\n",
        "    deleted = prune_held(store, lease, batch_size=batch_size, progress=progress)\n"
        "    lease.release()\n    return deleted\n",
        ("tests/test_prune_once.py::test_a_failed_prune_gives_its_lease_back[sqlite-core]",),
        "a retry right after a failed CLI prune is told another process holds the lease",
    ),
    Planted(
        "prune-command-ignores-batch-size",
        "cli.py",
        "prune_once(store, batch_size=args.batch_size, ",
        "prune_once(store, ",
        (
            "tests/test_prune_once.py::"
            "test_the_prune_command_deletes_in_batches_of_the_size_given[sqlite-core]",
            "tests/test_prune_once.py::"
            "test_the_flask_prune_command_deletes_in_batches_of_the_size_given[sqlite-core]",
        ),
        "--batch-size N is ignored: one long DELETE holds up live requests",
    ),
]


def copy_project(source: Path | None, into: Path) -> None:
    """The files of the project (not .venv, caches or ignored files) into ``into``."""
    if source is not None:
        shutil.copytree(source, into, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", ".nox"))
        return
    command = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    listed = subprocess.run(  # noqa: S603
        command,
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (item.decode() for item in listed)):
        path = ROOT / name
        if path.is_file():
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def run_tests(tree: Path, tests: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(  # noqa: S603
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "console_output_style=classic",
            *tests,
        ],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="only these planted bugs (default: all)")
    parser.add_argument("--source", type=Path, help="copy this directory instead of the working tree")
    parser.add_argument("--check-clean", action="store_true", help="first run the tests unmodified")
    args = parser.parse_args()
    chosen = [bug for bug in PLANTED if not args.names or bug.name in args.names]
    survivors = 0
    with tempfile.TemporaryDirectory(prefix="wsgi-dbsession-planted-") as scratch:
        clean = Path(scratch) / "clean"
        copy_project(args.source, clean)
        if args.check_clean:
            tests = tuple(test for bug in chosen for test in bug.tests)
            done = run_tests(clean, tests)
            if done.returncode != 0:
                print(done.stdout[-3000:], done.stderr[-2000:])
                print("the named tests fail on the unmodified code: fix that first")
                return 2
            print(f"clean: {len(tests)} named tests pass")
        for bug in chosen:
            tree = Path(scratch) / bug.name
            shutil.copytree(clean, tree)
            path = tree / "wsgi_dbsession" / bug.file
            text = path.read_text()
            if text.count(bug.old) != 1:
                print(f"STALE     {bug.name}: its snippet is not in wsgi_dbsession/{bug.file} once")
                survivors += 1
                continue
            path.write_text(text.replace(bug.old, bug.new))
            done = run_tests(tree, bug.tests)
            failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
            # Killed: every test named for it fails (exit code 1 is "tests failed", not an error).
            killed = done.returncode == 1 and len(failed) == len(bug.tests)
            verdict = "KILLED" if killed else "SURVIVED"
            print(f"{verdict:9} {bug.name}: {bug.seen_as}")
            for line in failed:
                print(f"          {line}")
            if not killed:
                survivors += 1
                print(done.stdout[-3000:], done.stderr[-2000:])
            shutil.rmtree(tree)
    print(f"{len(chosen) - survivors} of {len(chosen)} planted bugs killed")
    return 0 if survivors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
