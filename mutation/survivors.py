"""Explain the survivors of a mutmut run (tools/mutate.sh's report), for docs/reliability.md.

    .venv/bin/python mutation/survivors.py [PART=]REPORT ... [--docs docs/reliability.md]

Each surviving mutant (and each one no selected test calls) gets the reason
of the first rule below that matches it: either it is equivalent (nothing a
user or a caller can observe changes), or it is checked by a test outside
the mutation run (named in the rule). A survivor no rule explains is listed
as unexplained and the exit status is 1: add a test that kills it, or a rule
that says why it cannot be killed. ``--docs`` rewrites the part of the page
between the ``<!-- mutation-survivors -->`` markers with the score and every
survivor, grouped by reason; a report given as ``PART=REPORT`` goes between
``<!-- mutation-survivors PART -->`` and ``<!-- /mutation-survivors PART -->``
instead (one part per run: the request path, the store and prune job), and
the parts not given stay as they are. Several reports of one PART are merged:
the later ones are re-checks of some of the first one's mutants, by name
(timeouts of a paused run), and their verdicts win; the score is counted
again from the list of statuses at the end of each report.
"""

# ruff: noqa: E501  # the reasons name tests, whose names are long

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

START, END = "<!-- mutation-survivors -->", "<!-- /mutation-survivors -->"
_STRING = re.compile(r"""[rbfu]*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")


@dataclass(frozen=True)
class Mutant:
    name: str  # mutmut's name: module.xǁClassǁmethod__mutmut_N or module.x_function__mutmut_N
    removed: tuple[str, ...]
    added: tuple[str, ...]

    @property
    def function(self) -> str:
        module, _, rest = self.name.partition(".x")
        rest = rest.rsplit("__mutmut_", 1)[0]
        rest = rest[1:] if rest.startswith(("_", "ǁ")) else rest  # mutmut's x_name or xǁClassǁmethod
        rest = rest.replace("ǁ", ".")
        return f"{module.removeprefix('wsgi_dbsession.')}.{rest}"

    @property
    def change(self) -> str:
        """The mutated line, before → after (the first changed line of the diff)."""
        before = self.removed[0] if self.removed else ""
        after = self.added[0] if self.added else "(removed)"
        return f"`{before}` → `{after}`"


@dataclass(frozen=True)
class Rule:
    reason: str
    function: str = ""  # regex on Mutant.function; empty: any
    removed: str = ""  # regex searched in the removed line(s)
    added: str = ""  # regex searched in the added line(s)
    message_only: bool = False  # only a string literal (or a message argument) changed
    removal: bool = False  # the mutation only removes lines (an argument dropped)

    def matches(self, mutant: Mutant) -> bool:
        if self.function and not re.search(self.function, mutant.function):
            return False
        if self.removed and not any(re.search(self.removed, line) for line in mutant.removed):
            return False
        if self.added and not any(re.search(self.added, line) for line in mutant.added):
            return False
        if self.removal and mutant.added:
            return False
        return not self.message_only or _message_only(mutant)


def _message_only(mutant: Mutant) -> bool:
    """Whether the mutation changes only the text of a log line or an error message."""
    if len(mutant.removed) != len(mutant.added) or not mutant.removed:
        return False
    for before, after in zip(mutant.removed, mutant.added, strict=True):
        if not re.search(r"\blog\.\w+\(|raise |Error\(|warn\(|^\"|^f\"", before):
            return False
        message_replaced = re.search(r"\(None[,)]|\(\s*\)", after) or after.count(",") < before.count(",")
        if _STRING.sub('""', before) != _STRING.sub('""', after) and not message_replaced:
            return False
    return True


WORDING = (
    "Equivalent: the wording of a log line or an error message. Tests match the fragments "
    "a user or an operator relies on (the key, the option, the cause), not every word."
)
SECOND_SAVE = (
    "Equivalent in every flow the package runs: what `_mark_saved` records is read only by a later "
    "save in the same request (the middleware's save when the body closes, an app's own `save()`), "
    "and its fallbacks give the same stored row (a compare-and-set against a wrong text goes to the "
    "merge; a rename of an unknown id writes the row); the save at the body's close makes no touch."
)
ADDED_SESSION = "Killed by a test added after this run (checked by planting the mutation by hand): "
ADDED_STORE = "Killed by a test added after the part of the run that left it (checked by planting the mutation by hand): "
STORE_TESTS = "`tests/test_store_statements.py::"
PRUNE_TESTS = "`tests/test_prune_job.py::"
# The store and the prune job (store.py, prune.py): first, as the wording rule below would
# otherwise take their log lines, which the tests added for them now check word for word.
STORE_RULES: list[Rule] = [
    Rule(
        "Equivalent: `prepare` is only tested for truth (None skips the table check as False does).",
        function=r"^store\.SessionStore\.(has_table|create|create_user_index)$",
        added=r"prepare=None(\)|$)",
    ),
    Rule(
        "Equivalent: a bind parameter without a type that is compared with, or assigned to, a column "
        "takes the column's type in SQLAlchemy, and the length of a bind parameter's type is never "
        "checked (checked by planting: the lease and count tests pass on SQLite and PostgreSQL).",
        function=r"^(prune\.PruneLease\.__init__|store\.SessionStore\.(__init__|count|user_sessions))$",
        removed=r"bindparam\(",
        added=r'bindparam\("\w+", (type_=(None|sa\.Unicode\((None|256)\)))?\)',
    ),
    Rule(
        "Equivalent: SQLAlchemy renders `NOT NULL` for a column whose `nullable` is None (only "
        "True, or leaving it unset, allows NULL); checked by compiling the DDL.",
        function=r"^(prune\.PruneLease|store\.SessionStore)\.__init__$",
        added=r"nullable=None\)",
    ),
    Rule(
        "Equivalent in practice: a lapsed lease is taken at its expiry instant rather than just "
        "after it; holders renew long before (a lease is at least 30 s, renewed at every batch).",
        function=r"^prune\.PruneLease\.__init__$",
        added=r"c\.expires <= ",
    ),
    Rule(
        "Killed by `tests/test_mssql.py::test_the_prune_lease_is_plain_rows_taken_by_one_conditional_update` "
        '(the run\'s `-k "not mssql"` leaves the whole file out; checked by planting). Behaviour '
        "does not change: every lease object has a holder name of its own (host, pid, random tag), "
        "so a holder only ever holds rows of its own lease name.",
        function=r"^prune\.PruneLease\.__init__$",
        added=r"self\._release = sa\.delete\(self\.table\)\.where\(c\.holder == me\)",
    ),
    Rule(
        "Equivalent: an initial state that is only tested for truth, compared with a process id "
        "(never None), or replaced before it is read (the holder name, at the first look at "
        "`holder`, since no process has the id 0).",
        function=r"^prune\.(PruneLease\.(__init__|release)|PruneScheduler\.(__init__|shutdown))$",
        removed=r"^self\._(ready|pid|holder|held|scheduler)(: Any)? = ",
        added=r'^self\._(ready = None|pid = None|holder = (None|"XXXX")|held = (None|True)|scheduler: Any = "")',
    ),
    Rule(
        "Equivalent: these are APScheduler's defaults (a daemon thread for BackgroundScheduler; "
        "`coalesce=True` and `max_instances=1` for a job); checked by planting.",
        function=r"^prune\.PruneScheduler\.ensure_started$",
        removed=r"^(daemon=True|coalesce=True|max_instances=1),$",
        removal=True,
    ),
    Rule(
        "Equivalent: the job's executor is APScheduler's DebugExecutor, which runs the job in the "
        "scheduler's own thread; there is no pool whose jobs `wait` would wait for.",
        function=r"^prune\.PruneScheduler\.shutdown$",
        added=r"scheduler\.shutdown\(wait=(None|True)\)",
    ),
    Rule(
        "Equivalent in practice: the scheduler object exists but was not started in this process "
        "only in a forked child, where shutting down the inherited copy touches nothing of the "
        "parent's (" + PRUNE_TESTS + "test_a_forked_child_can_shut_down_the_job_it_inherited`).",
        function=r"^prune\.PruneScheduler\.shutdown$",
        added=r"scheduler is not None or self\.started",
    ),
    Rule(
        ADDED_STORE
        + PRUNE_TESTS
        + "test_shutdown_during_a_batch_run_by_the_scheduler_itself_waits_its_timeout_"
        "then_returns[default-timeout-5]` (it waits out the 5 s).",
        function=r"^prune\.PruneScheduler\.shutdown$",
        removed=r"timeout: float = 5\.0",
    ),
    Rule(
        "Equivalent: `json.dumps` only tests `ensure_ascii` and `allow_nan` for truth (None is False).",
        function=r"^store\.JSONSerializer\.dumps$",
        added=r"(ensure_ascii|allow_nan)=None",
    ),
    Rule(
        ADDED_STORE + STORE_TESTS + "test_sessions_are_stored_as_compact_json_keeping_unicode_as_is` and "
        "`test_a_number_json_cannot_hold_is_refused_and_nothing_is_stored`.",
        function=r"^store\.JSONSerializer\.dumps$",
    ),
    Rule(
        ADDED_STORE + STORE_TESTS + "test_a_store_is_refused_both_a_url_and_an_engine_or_an_empty_name` and "
        "`test_a_dotted_table_name_is_split_at_its_first_dot_only`.",
        function=r"^store\.SessionStore\.__init__$",
        removed=r"give url or engine, not both|must not be empty|table_name\.split\(\"\.\", 1\)|"
        r"if url is not None and engine is not None|if not table_name or not sid_column|"
        r"if schema is None and \"\.\" in table_name",
    ),
    Rule(
        ADDED_STORE
        + STORE_TESTS
        + "test_hot_statements_run_on_the_driver_s_cursor_where_tested_unless_told_otherwise`.",
        function=r"^store\.SessionStore\.__init__$",
        removed=r"driver_cursor=dialect\.driver_cursor if driver_cursor is None else driver_cursor",
    ),
    Rule(
        "Equivalent: the expiry's bind parameters are only compared with, or assigned to, the "
        "`expired` column, whose type SQLAlchemy gives a bind parameter that has none (checked by "
        "planting: the store tests pass).",
        function=r"^store\.SessionStore\.__init__$",
        removed=r"^expiry = ExpiryTimestamp\(\)$",
    ),
    Rule(
        ADDED_STORE
        + STORE_TESTS
        + "test_a_bare_url_gets_its_tested_driver_and_postgres_is_read_as_postgresql` and "
        "`test_a_url_that_does_not_parse_is_a_configuration_error_naming_the_url_option`.",
        function=r"^store\.normalize_url$",
    ),
    Rule(
        "Equivalent: the load's row is read by position, so the label of its `sess` column is never used.",
        function=r"^store\.SessionStore\.__init__$",
        removed=r'\.label\("sess"\)',
    ),
    Rule(
        ADDED_STORE
        + STORE_TESTS
        + "test_an_engine_without_a_url_is_the_default_sqlite_file_in_the_working_directory`.",
        function=r"^store\.create_engine$",
        removed=r"DEFAULT_SQLITE_FILE",
    ),
    Rule(
        "Equivalent: a payload that could not be read is only tested for being a dict.",
        function=r"^store\.SessionStore\._user_session$",
        added=r'^payload = ""$',
    ),
    Rule(
        ADDED_STORE + STORE_TESTS + "test_has_table_says_whether_the_table_exists_without_creating_it` and "
        "`test_has_table_looks_in_the_store_s_schema`.",
        function=r"^store\.SessionStore\.has_table$",
    ),
    Rule(
        ADDED_STORE + PRUNE_TESTS + "test_renewing_the_lease_is_one_statement` (the lease table is "
        "made once, at the first try).",
        function=r"^prune\.PruneLease\.try_acquire$",
        removed=r"^self\._ready = True$",
    ),
    Rule(
        ADDED_STORE
        + STORE_TESTS
        + "test_replace_locked_rewrites_the_live_row_only` and `test_the_row_lock_of_a_contended_save_is_asked_for_the_sessions_table` "
        "(MSSQL's lock hint names the table).",
        function=r"^store\.SessionStore\.replace_locked$",
    ),
    Rule(
        ADDED_STORE + STORE_TESTS + "test_stats_counts_live_and_expired_rows_at_the_time_given`.",
        function=r"^store\.SessionStore\.stats$",
    ),
    Rule(
        ADDED_STORE + STORE_TESTS + "test_a_missing_driver_is_a_configuration_error_saying_what_to_install`.",
        function=r"^store\._install_hint$",
    ),
    Rule(
        ADDED_STORE
        + STORE_TESTS
        + "test_a_helper_table_the_database_refuses_to_create_is_an_error_beside_an_existing_sessions_table`.",
        function=r"^store\.SessionStore\.create$",
        added=r"has_table\(None\)",
    ),
    Rule(
        ADDED_STORE + STORE_TESTS + "test_the_repr_names_the_table_and_the_url_without_its_password`.",
        function=r"^store\.SessionStore\.__repr__$",
    ),
    Rule(
        ADDED_STORE
        + STORE_TESTS
        + "test_the_user_index_is_tried_again_once_after_a_refusal` and `test_a_user_index_refused_twice_is_an_error_naming_it` "
        "(and, on MariaDB, `test_adding_the_user_index_while_another_process_adds_it_succeeds_on_mariadb`, a real race).",
        function=r"^store\.SessionStore\.create_user_index$",
    ),
    Rule(
        ADDED_STORE
        + STORE_TESTS
        + "test_a_user_s_sessions_say_when_each_was_last_active_from_its_cookie_object`, "
        "`test_a_session_the_serializer_cannot_read_is_listed_with_its_id_and_expiry_only`, "
        "`test_a_user_s_session_expiring_this_very_second_is_still_listed`.",
        function=r"^store\.(_last_write|SessionStore\.(_user_session|user_sessions))$",
    ),
    Rule(
        ADDED_STORE + STORE_TESTS + "test_a_prune_in_batches_of_one_row_deletes_one_row_per_statement`.",
        function=r"^store\.SessionStore\.prune_batches$",
        added=r"batch_size < 2",
    ),
    Rule(
        ADDED_STORE
        + PRUNE_TESTS
        + "test_a_one_off_prune_deletes_in_batches_of_its_size_renewing_its_lease` and "
        "`test_a_one_off_prune_while_another_process_holds_the_lease_says_so_naming_the_table`.",
        function=r"^prune\.prune_once$",
    ),
    Rule(
        ADDED_STORE
        + PRUNE_TESTS
        + "test_a_prune_whose_lease_is_taken_during_it_stops_after_the_batch_and_says_so` and "
        "`test_a_prune_that_deletes_nothing_logs_at_debug_and_one_that_deletes_at_info`.",
        function=r"^prune\.prune_held$",
    ),
    Rule(
        ADDED_STORE
        + PRUNE_TESTS
        + "test_the_job_is_scheduled_every_interval_on_average_one_run_at_a_time_in_utc` and "
        "`test_the_job_runs_in_a_daemon_thread_and_adds_no_info_lines_of_apscheduler_s`.",
        function=r"^prune\.PruneScheduler\.ensure_started$",
    ),
    Rule(
        ADDED_STORE
        + PRUNE_TESTS
        + "test_the_lease_is_one_row_named_prune_in_a_table_beside_the_sessions_table`, "
        "`test_the_lease_table_is_in_the_schema_of_the_sessions_table`, "
        "`test_a_lease_lapses_after_its_duration_and_not_before` (a holder whose lease was taken "
        "over gives back nothing), `test_a_process_whose_id_is_1_starts_its_job_too` (its holder name).",
        function=r"^prune\.PruneLease\.__init__$",
    ),
    Rule(
        ADDED_STORE
        + PRUNE_TESTS
        + "test_the_job_holds_its_lease_for_three_intervals_and_at_least_thirty_seconds` and "
        "`test_a_process_whose_id_is_1_starts_its_job_too`.",
        function=r"^prune\.PruneScheduler\.(__init__|shutdown)$",
    ),
    Rule(
        ADDED_STORE + PRUNE_TESTS + "test_a_run_while_another_process_prunes_says_so_at_debug` and "
        "`test_a_failed_run_is_logged_with_its_traceback_naming_the_table`.",
        function=r"^prune\.PruneScheduler\.run_once$",
    ),
    Rule(
        ADDED_STORE
        + PRUNE_TESTS
        + "test_a_lease_that_cannot_be_given_back_is_left_to_lapse_with_a_warning` and "
        "`test_a_prune_that_deletes_nothing_logs_at_debug_and_one_that_deletes_at_info` (not held after it).",
        function=r"^prune\.PruneLease\.release$",
    ),
    Rule(
        ADDED_STORE + PRUNE_TESTS + "test_at_exit_a_running_prune_is_waited_for_one_second_at_most` "
        "(mutmut saw no test call this atexit hook: `test_the_process_exits_promptly_and_quietly_with_the_job_running` "
        "runs it in a child process).",
        function=r"^prune\._shutdown_all$",
    ),
]

RULES: list[Rule] = [
    Rule(
        ADDED_SESSION
        + "`tests/test_faults.py::test_the_callers_connect_args_are_added_to_the_packages_not_put_in_their_place`.",
        function=r"^store\._merge_options$",
        removed=r'connect_args = \{\*\*merged\.get\("connect_args", \{\}\)',
    ),
    Rule(
        "Killed by `tests/test_round_trips.py`'s MariaDB cases, which the run's `-k` leaves out: "
        "PyMySQL then sends a ROLLBACK when a Core connection closes, and the server counts it "
        "(checked by planting: 4 fail; psycopg sends nothing in autocommit, so PostgreSQL's pass).",
        function=r"^store\.create_engine$",
        added=r'"skip_autocommit_rollback": False',
    ),
    Rule(
        WORDING,
        function=r"^store\.create_engine$",
        removed=r"url names a database SQLAlchemy does not know",
    ),
    *STORE_RULES,
    Rule(WORDING, message_only=True),
    Rule(
        ADDED_SESSION
        + "`tests/test_manager_options.py` (`test_table_name_sid_column_and_schema_reach_the_store`, "
        "`test_create_table_false_never_creates_the_table`, `test_cleanup_batch_size_reaches_the_prune_job`): "
        "each option is looked for where it acts, in the database.",
        function=r"^manager\.SessionManager\.__init__$",
        removed=r"(schema|table_name|sid_column|create_table)=opts\.|batch_size=opts\.cleanup_batch_size",
    ),
    Rule(
        "Killed by `tests/test_http_correctness.py::test_the_default_sqlite_file_is_named_in_a_warning_once_per_process` "
        "and `::test_no_warning_when_a_url_is_given`, a file the run does not select (checked by planting each).",
        function=r"^manager\.SessionManager\.__init__$",
        removed=r"if opts\.url is None and opts\.engine is None",
    ),
    Rule(
        ADDED_SESSION + "`tests/test_manager_options.py::test_the_exc_info_of_the_app_reaches_the_server`.",
        function=r"^middleware\._Cycle\.start_response$",
        removed=r"\[\*headers, \*cookies\], exc_info\)",
    ),
    Rule(
        "Killed by `tests/test_http_correctness.py::test_a_response_setting_the_session_cookie_is_never_stored_by_a_shared_cache`, "
        "a file the run does not select (checked by planting).",
        function=r"^middleware\._Cycle\.start_response$",
        added=r"set_cookie=(None|bool\(None\))",
    ),
    Rule(
        "Equivalent: `called` only decides whether the body is primed (its first item pulled "
        "before it is returned); priming a body whose `start_response` already ran sends, saves "
        "and closes the same.",
        function=r"^middleware\._Cycle\.start_response$",
        added=r"self\.called = (None|False)",
    ),
    Rule(
        "Equivalent: `_loaded` is only tested for truth.",
        function=r"^session\.Session\.__init__$",
        added=r"self\._loaded = None",
    ),
    Rule(
        ADDED_SESSION
        + "`tests/test_cookies.py::test_an_attribute_value_with_a_semicolon_is_refused_naming_its_option`.",
        function=r"^cookies\.SessionCookie\.__post_init__$",
        added=r'\("(XXpathXX|PATH|XXdomainXX|DOMAIN)", ',
    ),
    Rule(
        "Equivalent: with no domain the check reads a constant of allowed characters instead of "
        "the empty string; both pass.",
        function=r"^cookies\.SessionCookie\.__post_init__$",
        added=r'self\.domain or "XXXX"',
    ),
    Rule(
        ADDED_SESSION
        + "`tests/test_cookies.py::test_secure_false_is_accepted_with_every_samesite_but_none`.",
        function=r"^cookies\.SessionCookie\.__post_init__$",
        added=r'\(True, True, "auto"\)|self\.samesite != "none" and self\.secure is False',
    ),
    Rule(
        "Killed by `tests/test_http_correctness.py::test_samesite_none_without_secure_is_refused_at_construction`, "
        "a file the run does not select (checked by planting).",
        function=r"^cookies\.SessionCookie\.__post_init__$",
        added=r'self\.samesite == "XXnoneXX" and self\.secure is False',
    ),
    Rule(
        WORDING,
        function=r"^cookies\.SessionCookie\.__post_init__$",
        removed=r'samesite="none" needs secure=True',
    ),
    Rule(
        ADDED_SESSION
        + "`tests/test_cookies.py::test_samesite_none_with_secure_auto_is_left_out_over_http_and_sent_over_https`.",
        function=r"^cookies\.SessionCookie\.__post_init__$",
        removed=r"insecure_same_site = ",
    ),
    Rule(
        "Equivalent: HTTP field names are case-insensitive (RFC 9110 section 5.1), and so are "
        "Python's codec names.",
        removed=r'"(Set-Cookie|utf-8|ascii)"',
        added=r'"(set-cookie|SET-COOKIE|UTF-8|ASCII)"',
    ),
    Rule(
        "Equivalent: the reason phrase of a status code the `http` module does not know; "
        "clients ignore reason phrases (RFC 9112 section 4).",
        function=r"^manager\._reason$",
    ),
    Rule(
        ADDED_SESSION
        + "`tests/test_middleware.py::test_the_error_page_of_a_failed_save_is_complete_and_never_cached` "
        "checks the exact status and headers the server gets.",
        function=r"^manager\.SessionManager\.error_page$",
    ),
    Rule(
        ADDED_SESSION
        + "`tests/test_middleware.py::test_a_session_outage_after_the_response_started_is_passed_to_the_server_with_exc_info`.",
        function=r"^middleware\._Cycle\.error_response$",
        removed=r"handling = sys\.exc_info\(\) if self\.sent else None|handling\[0\] is not None",
        added=r"handling = None|and False|\(self\.sent\) or True|handling\[0\] is None|headers, (None)?\)?$",
    ),
    Rule(
        "Equivalent: `handling` is None or a whole `sys.exc_info()` triple, whose three items are "
        "all set or all None, so these conditions never decide differently.",
        function=r"^middleware\._Cycle\.error_response$",
    ),
    Rule(
        ADDED_SESSION
        + "`tests/test_middleware.py::test_a_streamed_body_is_closed_however_its_first_item_ends`.",
        function=r"^middleware\.(_prime|_Chained\.close|_ClosingIterable\.close|_close)$",
    ),
    Rule(
        "Covered by `tests/test_http_correctness.py` (`test_a_response_setting_the_session_cookie_is_never_stored_by_a_shared_cache`, "
        "the non-string-key tests, `test_the_default_sqlite_file_is_named_in_a_warning_once_per_process`), "
        "a file the run does not select (its real-server tests are slow); checked by planting a "
        "sample of these mutations by hand.",
        function=r"^(middleware\._private|session\._non_string_keys|manager\._warn_default_file)$",
    ),
    Rule(
        "Killed by `tests/test_http_correctness.py::test_every_change_of_lifetime_sends_the_matching_cookie`, "
        "a file the run does not select (checked by planting the mutation by hand).",
        function=r"^session\.Session\._save_changed$",
        added=r"max_age == row\.max_age",
    ),
    Rule(
        ADDED_SESSION
        + "`tests/test_concurrency.py::test_a_key_both_requests_deleted_stays_deleted_and_the_merge_keeps_the_secure_flag`.",
        function=r"^session\.Session\.(_merge|_save_changed)$",
        added=r"merged\.pop\(key, \)|_serialize\(merged, now, None\)\[0\], expires|_merge\(row, now, None",
    ),
    Rule(
        ADDED_SESSION
        + "`tests/test_middleware.py::test_unserializable_value_is_a_500_naming_the_key_and_the_stored_session_is_unchanged` "
        "now checks `SerializationError.key`.",
        function=r"^session\._explain$",
        removed=r"^key,$",
    ),
    Rule(
        "Killed by `tests/test_http_correctness.py` (the `Vary`/`Cache-Control` tests, the new "
        "`test_every_header_of_the_app_is_kept_around_the_ones_the_session_changes`, the non-string-key "
        "tests, which now also check `SerializationError.key`), a file the run does not select; "
        "checked by planting a sample of these mutations by hand.",
        function=r"^(middleware\.cache_headers|session\._check_round_trip|session\.Session\.__setitem__)$",
    ),
    Rule(
        "Killed by `tests/test_http_correctness.py`'s non-string-key tests (checked by planting by hand): "
        "without the JSON round-trip check a dict with an int key is stored changed.",
        function=r"^session\.Session\._serialize$",
        removed=r"type\(self\._factory\.store\.serializer\) is JSONSerializer",
    ),
    Rule(
        ADDED_SESSION + "`tests/test_session.py::test_a_lone_surrogate_is_a_500_naming_the_key`.",
        function=r"^session\.Session\._serialize$",
        added=r"serializer, None, exc\)",
    ),
    Rule(
        "Equivalent: the cause's text in an error message (wording).",
        function=r"^session\.Session\.(_dumps|_serialize)$",
        added=r"data, (None)?\) from exc",
    ),
    Rule(
        "Equivalent: an id holds no `.` (base64url) and a signature none either (standard base64), "
        "so a value with more than one `.` never verifies, split at the first dot or the last.",
        function=r"^cookies\.unsign$",
        added=r"\.partition\(\"\.\"\)",
    ),
    Rule(
        "Equivalent: a fresh session has no row, and a save with no row writes a new one whatever "
        "`_changed` says; `Record.data` is read only when a row is decoded.",
        function=r"^session\.Session\._start_fresh$",
    ),
    Rule(
        SECOND_SAVE,
        function=r"^session\.Session\.(_save_new|_mark_saved)$",
        removed=r"_mark_saved\(|StoredRow\(|self\._changed = False",
    ),
    Rule(
        ADDED_SESSION
        + "`tests/test_save_edges.py::test_a_change_in_place_is_written_once_not_again_when_the_body_closes` "
        "counts the statements: with the snapshots taken of `null`, the save when the body closes "
        "wrote the unchanged data once more.",
        function=r"^session\.Session\._mark_saved$",
        added=r"_dumps\(None\)",
    ),
    Rule(
        ADDED_SESSION
        + "`tests/test_save_edges.py::test_a_session_of_exactly_max_size_bytes_is_saved_and_one_byte_more_is_refused` "
        "(the size of a loaded session is known to the byte: its `_created` is kept as stored, and "
        "the expiry's ISO date has a fixed length).",
        function=r"^session\.Session\._serialize$",
        added=r"size >= limit",
    ),
    Rule(
        "Equivalent: `rstrip` takes a set of characters, and the 43rd character of the base64 of a "
        "32-byte digest encodes 4 bits, so it is one of `AEIMQUYcgkosw048`, never `X`.",
        function=r"^cookies\._signature$",
        added=r'rstrip\("XX=XX"\)',
    ),
    Rule(
        "Killed by `tests/test_http_correctness.py::test_a_change_saved_as_the_body_streams_over_https_keeps_the_secure_flag` "
        "(added after this run; checked by planting the mutation by hand).",
        function=r"^manager\.SessionManager\.save_late$",
        removed=r"secure=self\.secure\(environ\)",
    ),
    Rule(
        "Equivalent: PEP 3333 requires `wsgi.url_scheme` in every environ, so the default is never used.",
        function=r"^manager\.SessionManager\.secure$",
        removed=r'environ\.get\("wsgi\.url_scheme", "http"\)',
    ),
    Rule(
        "Equivalent: `_expire_cookie` is only tested for truth, and None is false as False is.",
        function=r"^session\.Session\._load$",
        removed=r"self\._expire_cookie = False",
    ),
    Rule(
        "Equivalent: `stored` is None whenever `sid` is, and `record` is None whenever `stored` is, "
        "so `record is None` alone decides.",
        function=r"^session\.Session\._load$",
        removed=r"if record is None or sid is None or stored is None:",
    ),
    Rule(
        ADDED_SESSION + "`tests/test_cookies.py::test_up_to_four_same_named_cookies_are_tried`.",
        function=r"^cookies\.SessionCookie\.read$",
        removed=r"tried (= 0|\+= 1|>= _MAX_CANDIDATES)",
    ),
    Rule(
        "Equivalent: a signed value holds no `=` (the padding is stripped, and `encodeURIComponent` "
        "escapes it), so splitting a cookie at its first or its last `=` finds the same value for "
        "any cookie that can verify.",
        function=r"^cookies\.SessionCookie\.read$",
        added=r"rpartition\(\"=\"\)",
    ),
    Rule(
        "Killed by `tests/test_http_correctness.py::test_every_change_of_lifetime_sends_the_matching_cookie` "
        "(checked by planting by hand): `set_expiry(None)` on a row stored with a lifetime must send "
        "the browser-session cookie.",
        function=r"^session\.Session\._load$",
        added=r"stored\.expires, None\)",
    ),
    Rule(
        "Equivalent: `_changed` is only tested for truth.",
        function=r"^session\.Session\._load$",
        removed=r"self\._changed = False",
    ),
    Rule(
        ADDED_SESSION
        + "`tests/test_session.py::test_an_update_and_a_regenerate_keep_the_secure_flag_and_the_lifetime`.",
        function=r"^session\.Session\._write$",
        added=r"_save_(renamed|changed)\(row, now, None\)",
    ),
    Rule(
        'Equivalent: a destroy of the id `""`, which no row has, deletes nothing.',
        function=r"^session\.Session\._write$",
        added=r'self\._doomed_sid = ""',
    ),
    Rule(
        SECOND_SAVE,
        function=r"^session\.Session\._write$",
        removed=r"self\._row = replace\(row, expires=expires\)",
    ),
    Rule(
        ADDED_SESSION
        + "`tests/test_save_edges.py::test_an_app_s_own_save_over_http_records_a_cookie_without_the_secure_flag`.",
        function=r"^session\.Session\.save$",
        removed=r"secure: bool = False",
    ),
    Rule(
        'Equivalent: a value of one `"` or an empty quoted `""` never verifies, unquoted or not.',
        function=r"^cookies\.SessionCookie\.read$",
        removed=r"if len\(value\) > 1 and",
    ),
    Rule(
        "Equivalent: the debug line's text and arguments, or the line skipped after four refused "
        "candidates (the id is None either way).",
        function=r"^cookies\.SessionCookie\.read$",
        removed=r'^self\.name,$|^"a %r cookie|^break$',
    ),
    Rule(
        ADDED_SESSION
        + "`tests/test_middleware.py::test_a_generator_app_whose_save_fails_gets_the_error_page`.",
        function=r"^middleware\.(SessionMiddleware\.__call__|_Cycle\.__init__)$",
        removed=r"streaming = not cycle\.called|self\.called = False",
        added=r"streaming = cycle\.called|self\.called = True",
    ),
    Rule(
        ADDED_SESSION
        + "`tests/test_save_edges.py::test_the_app_error_an_outage_explains_is_logged_with_its_traceback` "
        "(the answer is the outage's 503, so the log line is the only place the app's traceback shows).",
        function=r"^middleware\.SessionMiddleware\.__call__$",
        removed=r"exc_info=True",
    ),
    Rule(
        "Equivalent: a list or tuple body returned whole leaves nothing to save at its close; "
        "wrapping it or not changes only the work done, not what is stored or sent.",
        function=r"^middleware\.SessionMiddleware\.__call__$",
        removed=r"if not session\.loaded and isinstance\(app_iter, \(list, tuple\)\):",
    ),
    Rule(
        ADDED_SESSION
        + "`tests/test_save_edges.py::test_a_body_returned_after_a_swallowed_failed_save_is_closed_before_the_error_page`.",
        function=r"^middleware\.SessionMiddleware\.__call__$",
        added=r"_close\(None\)",
    ),
    Rule(
        "Equivalent: `called`, `sent` and `streaming` are only tested for truth.",
        function=r"^middleware\.(SessionMiddleware\.__call__|_Cycle\.__init__)$",
        added=r"(streaming|self\.called|self\.sent) = None",
    ),
    Rule(
        ADDED_SESSION
        + "`tests/test_session.py::test_repr_of_a_loaded_session_says_whether_it_is_new_and_lists_its_keys`.",
        function=r"^session\.Session\.__repr__$",
    ),
    Rule(
        ADDED_SESSION
        + "`tests/test_cookies.py::test_a_lifetime_cookie_expires_max_age_ahead_in_http_date_format`.",
        function=r"^cookies\.SessionCookie\.set_header$",
        removed=r"formatdate",
    ),
    Rule(
        "Equivalent: with the default `errors` a bad escape decodes to U+FFFD instead of failing, "
        "and a value holding it never verifies (an id is base64url), so the cookie is refused either way.",
        function=r"^cookies\._decode_uri_component$",
        added=r"unquote\(value, \)|errors=None\)",
    ),
    Rule(
        ADDED_SESSION
        + "`tests/test_cookies.py::test_a_cookie_value_with_every_character_escaped_verifies_as_decodeURIComponent_reads_it`.",
        function=r"^cookies\._decode_uri_component$",
        removed=r'if "%" not in decoded:',
    ),
    Rule(
        "Equivalent: the three replacements are a fast path for the escapes of a signed id; an "
        "escape they leave sends the original value to the general decoder (`unquote`), which "
        "decodes it the same.",
        function=r"^cookies\._decode_uri_component$",
        removed=r'value\.replace\("%3A", ":"\)',
    ),
    Rule(
        "Equivalent: for an id of the accepted alphabet the general encoder gives what the three "
        "replacements give.",
        function=r"^cookies\.SessionCookie\.set_header$",
        added=r"is_valid_sid\(sid\)\) and False",
    ),
    Rule(
        ADDED_SESSION
        + "`tests/test_cookies.py::test_an_id_outside_the_alphabet_is_fully_escaped_in_the_set_cookie_header`.",
        function=r"^cookies\.SessionCookie\.set_header$",
        removed=r"if is_valid_sid\(sid\) else encode_value\(signed\)",
    ),
    Rule(
        ADDED_SESSION
        + "`tests/test_session.py::test_a_row_that_is_not_a_json_object_gives_a_fresh_session` (its `not-json` case).",
        function=r"^session\.Session\._decode$",
        removed=r"record = None",
    ),
    Rule(
        ADDED_SESSION
        + "`tests/test_session.py::test_reading_a_nested_value_without_changing_it_writes_nothing`.",
        function=r"^session\.Session\.(__getitem__|_changed_in_place)$",
    ),
    Rule(
        ADDED_SESSION
        + "`tests/test_session.py::test_set_expiry_takes_one_second_or_more_or_none` (now also refuses `True` and `1.5`).",
        function=r"^session\.Session\.set_expiry$",
        removed=r"isinstance\(seconds, bool\)",
    ),
    Rule(
        ADDED_SESSION
        + "`tests/test_session.py::test_an_update_and_a_regenerate_keep_the_secure_flag_and_the_lifetime`.",
        function=r"^session\.Session\.(_save_renamed|_save_changed)$",
        removed=r"self\._serialize\(self\._data, now, secure\)|CookieUpdate\(self\._sid, self\._record\.max_age\)",
        added=r"now, None\)|CookieUpdate\(self\._sid, (None)?\)",
    ),
    Rule(
        "Equivalent: `regenerate()` changes the id, and a changed id alone makes the save a rename "
        "(`self._sid != row.sid`); a flash appended to an existing queue is a change in place, "
        "which the snapshot of the list handed out shows.",
        function=r"^session\.Session\.(regenerate|flash)$",
        removed=r"self\._changed = True",
    ),
    Rule(
        SECOND_SAVE,
        function=r"^session\.Session\.(_save_renamed|_save_changed|_merge)$",
        added=r"_mark_saved\(",
    ),
    Rule(
        "Equivalent: `merged` and `text` are always bound by `rewrite` before they are read.",
        function=r"^session\.Session\._merge$",
        removed=r'merged: dict\[str, Any\] = \{\}|text = ""',
    ),
    Rule(
        "Equivalent: `store.load` without `now` (or with None) takes the current time itself.",
        function=r"^session\.Session\.(_merge|_load)$",
        removed=r"store\.load\((row\.)?sid, now\)",
    ),
    Rule(
        "Equivalent: the empty-session branch runs once per request with `_expire_cookie` set "
        "(after `invalidate()`); the flag left True only makes a second save return the same "
        "expire-cookie update the first one returned.",
        function=r"^session\.Session\._save_new$",
        removed=r"self\._expire_cookie, False",
    ),
    Rule(
        "Equivalent in practice: the touch is due at exactly `touch_after` seconds only when the "
        "stored expiry and the clock agree to the microsecond.",
        function=r"^session\.Session\._touch_due$",
        removed=r">= self\._factory\.touch_after",
    ),
    Rule(
        "Equivalent: the error message's type name (`NoneType` instead of the value's type) is wording; "
        "tests match the key and the cause.",
        function=r"^session\._explain$",
        removed=r"type\(value\)",
    ),
]


STATUSES = "## statuses"  # the report's last part: every mutant of the run and its status
KILLED = ("killed", "timeout", "caught by type check")
SURVIVING = ("survived", "no tests")


@dataclass
class Report:
    """One report of tools/mutate.sh: its header, every mutant's status, the survivors' diffs."""

    header: list[str]  # the run's lines (what, when, how long), without the counts
    counts: dict[str, int]  # the counts of the header (from mutmut's statuses)
    statuses: dict[str, str] | None  # mutant name to status; None in a report older than the list
    blocks: dict[str, str]  # survivor name to its block (the name line and the diff)

    @classmethod
    def read(cls, text: str) -> Report:
        text, _, statuses = text.partition(f"\n{STATUSES}\n")
        head = text.split("\n\n", 1)[0].splitlines()
        counts = {}
        header = []
        for line in head:
            count = re.fullmatch(r"  (\S.*?)\s+(\d+)", line)
            if count:
                counts[count[1]] = int(count[2])
            elif not line.startswith("score: "):
                header.append(line)
        blocks = {}
        for block in re.split(r"^== ", text, flags=re.MULTILINE)[1:]:
            blocks[block.splitlines()[0].strip()] = block
        found = None
        if statuses:
            found = {}
            for line in statuses.splitlines():
                name, _, status = line.strip().rpartition(": ")
                if name:
                    found[name] = status
        return cls(header, counts, found, blocks)

    def merged(self, later: Report) -> Report:
        """This run with ``later`` (a re-check of some of its mutants, by name) on top: its verdicts win."""
        if self.statuses is None or later.statuses is None:
            raise ValueError("reports without their list of statuses (## statuses) cannot be merged")
        statuses = {**self.statuses, **later.statuses}
        counts: dict[str, int] = defaultdict(int)
        for status in statuses.values():
            counts[status] += 1
        blocks = {
            name: block
            for name, block in {**self.blocks, **later.blocks}.items()
            if statuses.get(name) in SURVIVING
        }
        header = [
            *self.header,
            *(f"then, {line}" if i == 0 else line for i, line in enumerate(later.header)),
        ]
        return Report(header, dict(counts), statuses, blocks)

    def summary(self) -> str:
        """The header as tools/mutate.sh prints it: the run, each count, the score."""
        counts = self.counts
        total = sum(counts.values())
        killed = sum(counts.get(status, 0) for status in KILLED)
        checked = total - counts.get("not checked", 0) - counts.get("skipped", 0)
        score = 100 * killed / checked if checked else 0
        return "\n".join(
            [
                *self.header,
                *(f"  {status:<22} {count}" for status, count in counts.items()),
                f"score: {killed} killed of {checked} checked ({score:.1f}%); {total} mutants in all",
            ]
        )

    def mutants(self) -> list[Mutant]:
        return parse("".join(f"== {block.rstrip()}\n" for block in self.blocks.values()))


def parse(report: str) -> list[Mutant]:
    mutants = []
    for block in re.split(r"^== ", report, flags=re.MULTILINE)[1:]:
        lines = block.splitlines()
        removed = tuple(line[1:].strip() for line in lines[1:] if line.startswith("-"))
        added = tuple(line[1:].strip() for line in lines[1:] if line.startswith("+"))
        mutants.append(Mutant(lines[0].strip(), removed, added))
    return mutants


def explain(mutants: list[Mutant]) -> tuple[dict[str, list[Mutant]], list[Mutant]]:
    explained: dict[str, list[Mutant]] = defaultdict(list)
    unexplained = []
    for mutant in mutants:
        rule = next((rule for rule in RULES if rule.matches(mutant)), None)
        if rule is None:
            unexplained.append(mutant)
        else:
            explained[rule.reason].append(mutant)
    return explained, unexplained


def markdown(header: str, explained: dict[str, list[Mutant]], unexplained: list[Mutant]) -> str:
    out = [header.strip(), ""]
    groups = list(explained.items())
    if unexplained:
        groups.append(("**Unexplained: a test is missing, or a rule.**", unexplained))
    for reason, found in groups:
        out += [f"<details><summary>{len(found)}: {reason}</summary>", ""]
        out += [f"- `{mutant.name}`: {mutant.change}" for mutant in found]
        out += ["", "</details>", ""]
    return "\n".join(out)


def markers(part: str) -> tuple[str, str]:
    """The markers around a part of the page: the unnamed pair, or ``<!-- mutation-survivors PART -->``."""
    if not part:
        return START, END
    return f"<!-- mutation-survivors {part} -->", f"<!-- /mutation-survivors {part} -->"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "reports",
        nargs="+",
        metavar="[PART=]REPORT",
        help="a report of tools/mutate.sh; PART names the markers it goes between; "
        "reports of the same PART are merged, the later ones re-checks of the first",
    )
    parser.add_argument("--docs", type=Path, help="rewrite the survivors part(s) of this page")
    args = parser.parse_args()
    parts: dict[str, Report] = {}
    for argument in args.reports:
        part, _, path = argument.rpartition("=") if "=" in argument else ("", "", argument)
        report = Report.read(Path(path).read_text())
        try:
            parts[part] = parts[part].merged(report) if part in parts else report
        except ValueError as exc:
            print(f"{argument}: {exc}", file=sys.stderr)
            return 2
    doc = args.docs.read_text() if args.docs else ""
    failed = 0
    for part, report in parts.items():
        explained, unexplained = explain(report.mutants())
        page = markdown("```\n" + report.summary() + "\n```", explained, unexplained)
        if args.docs:
            start, end = markers(part)
            if start not in doc or end not in doc:
                print(f"{args.docs} has no {start} … {end} part", file=sys.stderr)
                return 2
            before, rest = doc.split(start, 1)
            doc = f"{before}{start}\n{page}\n{end}{rest.split(end, 1)[1]}"
        else:
            print(page)
        label = f"{part}: " if part else ""
        for mutant in unexplained:
            print(f"{label}unexplained: {mutant.name}: {mutant.change}", file=sys.stderr)
        print(
            f"{label}{sum(map(len, explained.values()))} survivors explained, {len(unexplained)} unexplained",
            file=sys.stderr,
        )
        failed = failed or bool(unexplained)
    if args.docs:
        args.docs.write_text(doc)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
