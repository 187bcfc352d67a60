"""The store's write path: group commit, per-row outcomes, failures, counters and the schema."""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time

import pytest

from callhome.collector import store as store_module
from callhome.collector.store import Store

_ids = itertools.count()


def usage(**changes) -> dict:
    payload = {"activity_type": "CALL_HOME", "source": "TELEMETRY", "ip_addr": "192.0.2.7",
               "event_id": f"gc-{next(_ids)}", "event_at": int(time.time()), "product_id": "acme",
               "user_agent": "acme/1.0"}
    payload.update(changes)
    return payload


class Caller(threading.Thread):
    """One ``store.add()`` on its own thread; keeps what it returned or raised."""

    def __init__(self, store: Store, payload: dict) -> None:
        super().__init__(daemon=True)
        self.store, self.payload = store, payload
        self.result: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.store.add("usage", self.payload)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            self.error = exc


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def commits(store: Store) -> list:
    """Every COMMIT the store's connection runs from now on."""
    seen: list = []
    store._db.set_trace_callback(lambda sql: seen.append(sql) if sql.strip().upper() == "COMMIT" else None)
    return seen


def queued_behind_a_writer(store: Store, payloads: list[dict]) -> tuple[Caller, list[Caller]]:
    """A first caller stuck inside its commit (the test holds the connection's lock) and ``payloads``
    waiting behind it in the next batch. The caller must release ``store._lock``."""
    store._lock.acquire()
    first = Caller(store, usage())
    first.start()
    wait_until(lambda: store._writing and not store._batch.rows)  # first is writing its own batch
    waiting = [Caller(store, payload) for payload in payloads]
    for caller in waiting:
        caller.start()
    wait_until(lambda: len(store._batch.rows) == len(payloads))
    return first, waiting


def finish(*callers: Caller) -> None:
    for caller in callers:
        caller.join(timeout=10)
        assert not caller.is_alive(), "a caller never returned"


def test_concurrent_records_share_one_commit():
    store = Store()
    seen = commits(store)
    twin = usage()
    first, waiting = queued_behind_a_writer(store, [usage() for _ in range(5)] + [twin, dict(twin)])
    store._lock.release()
    finish(first, *waiting)
    assert len(seen) == 2  # the first caller's commit, then one for the seven that queued behind it
    assert first.result is True
    assert [caller.result for caller in waiting] == [True] * 6 + [False]  # the twin is a duplicate
    assert store.count() == 7 and store.stats()["duplicates"] == 1


def test_a_lone_caller_commits_at_once():
    store = Store()
    seen = commits(store)
    assert store.add("usage", usage()) is True
    assert store.add("usage", usage()) is True
    assert len(seen) == 2 and not store._writing


def test_a_bad_row_fails_alone_in_its_batch():
    store = Store()
    bad = usage(product_id={"not": "storable"})  # SQLite cannot bind a dict
    first, waiting = queued_behind_a_writer(store, [usage(), bad, usage()])
    store._lock.release()
    finish(first, *waiting)
    good1, broken, good2 = waiting
    assert (good1.result, good2.result, first.result) == (True, True, True)
    assert isinstance(broken.error, (sqlite3.InterfaceError, sqlite3.ProgrammingError))
    assert store.count() == 3
    with pytest.raises(OverflowError):  # alone too: the caller gets its own error
        store.add("usage", usage(event_at=1 << 70))
    assert store.add("usage", usage()) is True


def test_a_failed_commit_fails_every_caller_of_the_batch():
    store = Store()
    store.bump("rejected", 3)
    first, waiting = queued_behind_a_writer(store, [usage() for _ in range(3)])
    store._db.close()  # the commit in progress and the next one both fail
    store._lock.release()
    finish(first, *waiting)
    for caller in (first, *waiting):
        assert isinstance(caller.error, sqlite3.ProgrammingError), caller.error
    assert store._pending == {"rejected": 3}  # not lost: written with a later commit
    assert not store._writing  # the next caller would write at once


def test_counters_ride_on_a_commit_at_most_once_an_interval(tmp_path, monkeypatch):
    path = str(tmp_path / "events.sqlite3")
    store = Store(path)
    reader = sqlite3.connect(path)

    def on_disk(name: str) -> int:
        return reader.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0]

    store.bump("requests")
    store.add("usage", usage())
    assert on_disk("requests") == 1  # the first commit is due
    store.bump("requests")
    store.add("usage", usage())
    assert on_disk("requests") == 1  # within the interval: still in memory
    assert store.stats()["requests"] == 2  # reading writes them
    assert on_disk("requests") == 2
    monkeypatch.setattr(store_module, "COUNTERS_INTERVAL", 0.0)
    store._counters_due = 0.0
    store.bump("requests")
    store.add("usage", usage())
    assert on_disk("requests") == 3
    store.bump("faults")
    store.close()
    assert on_disk("faults") == 1  # closing writes them
    reader.close()


def test_duplicates_are_counted_after_their_commit():
    store = Store()
    payload = usage()
    assert store.add("usage", payload) is True
    assert store.add("usage", dict(payload)) is False
    assert store._pending.get("duplicates") == 1
    assert store.stats()["duplicates"] == 1


def test_new_databases_have_no_autoincrement_and_ids_still_grow(tmp_path):
    path = str(tmp_path / "new.sqlite3")
    store = Store(path)
    for _ in range(3):
        store.add("usage", usage())
    ids = [record["id"] for record in store.events()]
    assert ids == [3, 2, 1]
    tables = {name for (name,) in store.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "sqlite_sequence" not in tables
    store.close()


def test_a_database_made_with_autoincrement_still_works(tmp_path):
    path = str(tmp_path / "old.sqlite3")
    old = sqlite3.connect(path)
    schema = store_module._SCHEMA.replace("INTEGER PRIMARY KEY,", "INTEGER PRIMARY KEY AUTOINCREMENT,", 1)
    old.executescript(schema)
    old.close()
    store = Store(path)
    first, second = usage(), usage()
    assert store.add("usage", first) and store.add("usage", second)
    newest_first = [record["payload"]["event_id"] for record in store.events()]
    assert newest_first == [second["event_id"], first["event_id"]]
    assert store.stats()["events"] == 2
    assert store.query("SELECT seq FROM sqlite_sequence WHERE name = 'events'") == [(2,)]  # it was kept
    store.close()


def test_many_threads_many_records_file_store(tmp_path):
    store = Store(str(tmp_path / "busy.sqlite3"))
    results: list = []

    def add_many(worker: int) -> None:
        for number in range(100):
            # Two workers share each id: every id is stored once and found a duplicate once.
            results.append(store.add("usage", usage(event_id=f"{worker // 2}-{number}")))

    threads = [threading.Thread(target=add_many, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results.count(True) == 400 and results.count(False) == 400
    assert store.count() == 400 and store.stats()["duplicates"] == 400
    store.close()


def test_a_long_report_does_not_hold_up_ingestion(tmp_path):
    store = Store(str(tmp_path / "events.sqlite3"))
    slow = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000000) "
            "SELECT COUNT(*) FROM n")
    started = time.monotonic()
    report = threading.Thread(target=store.query, args=(slow,))
    report.start()
    time.sleep(0.05)  # the report is running
    assert store.add("usage", usage())
    added = time.monotonic() - started
    report.join()
    took = time.monotonic() - started
    assert added < took / 2, (added, took)  # not serialised behind the report
    assert store.query("SELECT COUNT(*) FROM events") == [(1,)]  # and reports see committed rows
    with pytest.raises(sqlite3.OperationalError):
        store._reader.execute("DELETE FROM events")  # the report connection cannot write
    store.close()
