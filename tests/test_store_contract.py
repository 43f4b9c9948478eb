"""The store's API, the same on every live database (conftest's ``backend``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from wsgi_dbsession import SessionStore, StoreError
from wsgi_dbsession.cookies import generate_sid
from wsgi_dbsession.express import UTC


def at(seconds: float) -> dt.datetime:
    """Now plus ``seconds``, in whole seconds (every column keeps those exactly)."""
    return (dt.datetime.now(UTC) + dt.timedelta(seconds=seconds)).replace(microsecond=0)


def test_missing_session_is_none(store: SessionStore) -> None:
    assert store.get(generate_sid()) is None
    assert store.load(generate_sid()) is None


def test_set_then_get_returns_the_data_and_set_overwrites(store: SessionStore) -> None:
    sid = generate_sid()
    store.set(sid, {"user": "ann", "roles": ["a", "b"], "n": 1.5, "ok": True, "none": None}, at(60))
    assert store.get(sid) == {"user": "ann", "roles": ["a", "b"], "n": 1.5, "ok": True, "none": None}
    store.set(sid, {"user": "bob"}, at(120))
    assert store.get(sid) == {"user": "bob"}
    stored = store.load(sid)
    assert stored is not None
    assert stored.expires == at(120) or stored.expires == at(120) - dt.timedelta(seconds=1)
    assert stored.expires.tzinfo is not None
    assert store.count() == 1


def test_expiry_comes_back_exactly_as_written(store: SessionStore) -> None:
    sid, expires = generate_sid(), at(3600)
    store.set(sid, {}, expires)
    stored = store.load(sid)
    assert stored is not None
    assert stored.expires == expires
    assert stored.expires.utcoffset() == dt.timedelta(0)


def test_an_expired_row_is_never_returned(store: SessionStore) -> None:
    live, dead, edge = generate_sid(), generate_sid(), generate_sid()
    now = at(0)
    store.set(live, {"x": 1}, now + dt.timedelta(seconds=60))
    store.set(dead, {"x": 2}, now - dt.timedelta(seconds=1))
    store.set(edge, {"x": 3}, now)
    assert store.get(dead) is None
    assert store.load(dead, now) is None
    assert store.load(edge, now) is not None, "a row expiring this very second is still live"
    assert store.load(edge, now + dt.timedelta(seconds=1)) is None
    assert store.load(live, now + dt.timedelta(seconds=61)) is None
    assert store.count(now=now) == 2
    assert store.count(expired=True, now=now) == 1


def test_a_session_never_loads_after_its_expiry_even_within_its_last_second(store: SessionStore) -> None:
    """On a whole-second column (MySQL/MariaDB DATETIME) too: up to a second early, never late.

    The expiry here ends at .7 of a second: stored as that second, it loaded
    until the next one began when ``now`` was rounded down as well.
    """
    sid = generate_sid()
    expires = at(3600) + dt.timedelta(milliseconds=700)
    store.set(sid, {"x": 1}, expires)
    after = expires + dt.timedelta(milliseconds=100)
    assert store.load(sid, after) is None
    assert (store.count(now=after), store.count(expired=True, now=after)) == (0, 1)
    assert store.load(sid, expires - dt.timedelta(seconds=1)) is not None, "live a second before its end"
    assert store.prune(after) == 1, "what no longer loads is pruned"


def test_naive_expiry_is_refused_rather_than_read_as_local_time(store: SessionStore) -> None:
    naive = dt.datetime.now(UTC).replace(tzinfo=None) + dt.timedelta(hours=1)
    with pytest.raises(sa.exc.StatementError, match="timezone-aware"):
        store.set(generate_sid(), {}, naive)
    assert store.count() == 0


def test_touch_moves_the_expiry_of_an_existing_row_only(store: SessionStore) -> None:
    sid = generate_sid()
    store.set(sid, {"keep": "me"}, at(60))
    assert store.touch(sid, at(7200))
    stored = store.load(sid)
    assert stored is not None
    assert stored.expires == at(7200) or stored.expires == at(7200) - dt.timedelta(seconds=1)
    assert store.get(sid) == {"keep": "me"}
    assert not store.touch(generate_sid(), at(60))
    assert store.count() == 1


def test_destroy_deletes_the_row_and_ignores_a_missing_one(store: SessionStore) -> None:
    sid, other = generate_sid(), generate_sid()
    store.set(sid, {}, at(60))
    store.set(other, {}, at(60))
    store.destroy(sid)
    store.destroy(sid)
    assert store.get(sid) is None
    assert store.get(other) == {}


def test_clear_deletes_live_and_expired_rows(store: SessionStore) -> None:
    store.set(generate_sid(), {}, at(60))
    store.set(generate_sid(), {}, at(-60))
    store.clear()
    assert store.count() == 0
    assert store.count(expired=True) == 0


def test_load_returns_the_exact_text_written(store: SessionStore) -> None:
    # Compare-and-set compares this text, so the database must not rewrite it.
    sid, text = generate_sid(), '{"b": 2,  "a":[1, 2.50],"c":{"z":null}}'
    store.write(sid, text, at(60))
    stored = store.load(sid)
    assert stored is not None
    assert stored.text == text


def test_replace_is_a_compare_and_set(store: SessionStore) -> None:
    sid = generate_sid()
    store.write(sid, '{"v":1}', at(60))
    assert store.replace(sid, '{"v":2}', at(120), expected='{"v":1}')
    assert not store.replace(sid, '{"v":3}', at(120), expected='{"v":1}'), "a stale expected text loses"
    assert store.get(sid) == {"v": 2}
    assert not store.replace(generate_sid(), '{"v":4}', at(60), expected='{"v":1}')
    assert store.count() == 1


def test_replace_compares_unicode_text_exactly(store: SessionStore) -> None:
    sid, text = generate_sid(), '{"name":"Zoë 名前 🙂"}'
    store.write(sid, text, at(60))
    assert not store.replace(sid, '{"v":1}', at(60), expected='{"name":"Zoe 名前 🙂"}')
    assert store.replace(sid, '{"v":2}', at(60), expected=text)


def test_rename_moves_the_row_to_a_new_id_with_new_contents(store: SessionStore) -> None:
    old, new = generate_sid(), generate_sid()
    store.write(old, '{"v":1}', at(60))
    assert store.rename(old, new, '{"v":2}', at(120))
    assert store.load(old) is None
    assert store.get(new) == {"v": 2}
    assert not store.rename(old, generate_sid(), '{"v":3}', at(60)), "nothing left to rename"
    assert store.count() == 1


@pytest.mark.parametrize(
    "value",
    [
        "Zoë, 名前, مرحبا, 🙂🚀 (outside the BMP)",
        "quotes ' \" \\ and a NUL \x00 and a newline \n",
        "x" * 1_000_000,
        {"deep": [[[[{"k": list(range(100))}]]]]},
    ],
    ids=["unicode", "escapes", "one-megabyte", "nested"],
)
def test_values_round_trip_unchanged(store: SessionStore, value: Any) -> None:
    sid = generate_sid()
    store.set(sid, {"value": value, "ключ 🔑": 1}, at(60))
    assert store.get(sid) == {"value": value, "ключ 🔑": 1}


def test_the_longest_session_id_fits(store: SessionStore) -> None:
    sid = "s" * 255
    store.set(sid, {"long": True}, at(60))
    assert store.get(sid) == {"long": True}


def test_table_is_created_on_first_use(make_store: Callable[..., SessionStore]) -> None:
    store = make_store()
    assert not sa.inspect(store.engine).has_table(store.table.name)
    assert store.get(generate_sid()) is None
    assert sa.inspect(store.engine).has_table(store.table.name)


def test_no_table_is_created_when_told_not_to(make_store: Callable[..., SessionStore]) -> None:
    store = make_store(create_table=False)
    with pytest.raises(StoreError, match=r"(?i)exist|no such table"):
        store.get(generate_sid())
    assert not sa.inspect(store.engine).has_table(store.table.name)


def test_a_store_on_an_engine_you_built_leaves_it_open(
    make_store: Callable[..., SessionStore], db_url: str, engine_for: Callable[[str], sa.Engine]
) -> None:
    engine = engine_for(db_url)
    first = make_store()
    store = SessionStore(engine=engine, table_name=first.table.name)
    store.set("shared", {"n": 1}, at(60))
    store.dispose()
    assert first.get("shared") == {"n": 1}
    with engine.connect() as conn:  # still usable: dispose() closed only what the store owns
        assert conn.execute(sa.select(sa.func.count()).select_from(store.table)).scalar_one() == 1
