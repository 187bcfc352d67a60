"""Aggregated usage: windows, the host-side Counter, the file-locked store shared by processes.

Real files and real processes throughout: 20 processes merging into one window, a process
killed with SIGKILL between merges and in the middle of them, and one that took a window for
emission and died before marking it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import pytest
from freezegun import freeze_time

from callhome.aggregate import (
    MAX_COUNT,
    MAX_PENDING_WINDOWS,
    SEAL_LEASE,
    AggregateStore,
    Counter,
    aggregate_event_id,
    aggregate_payload,
    default_grace,
    window_start,
)
from callhome.config import resolve
from callhome.payload import static_fields
from callhome.schema import validate

from conftest import ROOT, run_host, start_host

HOUR = 3600
#: A window start a day ago: real enough for the schema's event_at range, long closed.
BASE = window_start(time.time() - 86400, HOUR)
INSTALL = "0b5d2f36-8c1e-4c55-9d0a-2f6f0c1b7e42"
NONE_DROPPED = {"late": 0, "activities": 0, "windows": 0}


@pytest.fixture
def store_dir(tmp_path) -> str:
    return str(tmp_path / "aggregate-v1")


def store(directory: str, **options) -> AggregateStore:
    return AggregateStore(directory, HOUR, **options).open()


def closed(start: int, interval: int = HOUR) -> float:
    """A time at which the window starting at ``start`` is due."""
    return start + interval + default_grace(interval)


def frozen_at(seconds: float):
    return freeze_time(datetime.fromtimestamp(seconds, timezone.utc))


def names(directory: str) -> list:
    return sorted(os.listdir(directory))


def cycle(counter: Counter, shared: AggregateStore, now: float) -> dict:
    """One worker cycle as the agent runs it: drain, merge (or give back)."""
    partial = counter.drain()
    try:
        return shared.merge(partial, now)
    except OSError:  # filelock.Timeout is one
        counter.restore(partial)
        raise


# -- windows ------------------------------------------------------------------------------------
def test_windows_are_aligned_to_the_interval_in_utc():
    assert window_start(BASE, HOUR) == BASE
    assert window_start(BASE + HOUR - 0.001, HOUR) == BASE
    assert window_start(BASE - 0.001, HOUR) == BASE - HOUR
    assert window_start(BASE + 0.5, 60.0) == BASE
    assert window_start(1_700_000_017.5, 10) == 1_700_000_010
    for bad in (0, 0.5, -60, float("nan"), float("inf"), "3600", None, True):
        with pytest.raises(ValueError):
            window_start(BASE, bad)


def test_default_grace_is_a_quarter_interval_up_to_30_seconds():
    assert default_grace(HOUR) == 30.0
    assert default_grace(60) == 15.0
    assert default_grace(2) == 0.5
    assert AggregateStore("unused", HOUR, grace=0).grace == 0


def test_counts_just_before_and_after_a_boundary_land_in_their_windows():
    counter = Counter(HOUR)
    with frozen_at(BASE - 0.001) as clock:
        assert counter.add("primary", 1, time.time())
        clock.tick(0.002)
        assert counter.add("primary", 2, time.time())
        clock.tick(HOUR - 0.002)  # the last instant of the window is still in it
        assert counter.add("primary", 4, time.time())
        clock.tick(0.001)
        assert counter.add("primary", 8, time.time())
    assert counter.drain() == {(BASE - HOUR, "primary"): 1, (BASE, "primary"): 6, (BASE + HOUR, "primary"): 8}
    assert len(counter) == 0


def test_a_process_counting_across_a_boundary_splits_its_counts(store_dir):
    counter, shared = Counter(HOUR), store(store_dir)
    with frozen_at(BASE - 2) as clock:
        for _ in range(4):  # two counts each side of the boundary, one worker cycle in between
            counter.add("primary", 1, time.time())
            clock.tick(1)
            if time.time() == BASE:
                assert cycle(counter, shared, time.time()) == NONE_DROPPED
        assert cycle(counter, shared, time.time()) == NONE_DROPPED
    assert shared.pending() == {(BASE - HOUR, "primary"): 2, (BASE, "primary"): 2}
    assert shared.take_due(BASE + shared.grace - 0.001) == []
    assert shared.take_due(BASE + shared.grace) == [(BASE - HOUR, "primary", 2)]
    shared.mark_emitted([BASE - HOUR], BASE + shared.grace)
    assert shared.take_due(closed(BASE)) == [(BASE, "primary", 2)]


def test_a_late_count_goes_to_its_own_window_and_is_dropped_once_that_was_emitted(store_dir):
    counter, shared = Counter(HOUR), store(store_dir)
    with frozen_at(BASE + HOUR - 1):
        counted_at = time.time()  # the host counts, then sleeps past the window's end
    counter.add("primary", 3, counted_at)
    counter.add("primary", 1, BASE + HOUR + 5)  # counted after waking up
    assert cycle(counter, shared, BASE + HOUR + 10) == NONE_DROPPED
    assert shared.pending() == {(BASE, "primary"): 3, (BASE + HOUR, "primary"): 1}

    assert shared.take_due(closed(BASE)) == [(BASE, "primary", 3)]
    shared.mark_emitted([BASE], closed(BASE))
    counter.add("primary", 5, counted_at)  # another sleeper wakes up after the emission
    assert cycle(counter, shared, closed(BASE) + 1) == {"late": 5, "activities": 0, "windows": 0}
    assert shared.pending() == {(BASE + HOUR, "primary"): 1}  # not moved to the current window
    assert shared.take_due(closed(BASE) + 1) == []  # and no second record for the old one


def test_counts_for_a_window_taken_for_emission_are_late(store_dir):
    counter, shared = Counter(HOUR), store(store_dir)
    counter.add("primary", 2, BASE + 1)
    cycle(counter, shared, BASE + 1)
    assert shared.take_due(closed(BASE)) == [(BASE, "primary", 2)]
    counter.add("primary", 7, BASE + 2)  # merged after the take, before the mark
    assert cycle(counter, shared, closed(BASE)) == {"late": 7, "activities": 0, "windows": 0}
    assert shared.take_due(closed(BASE)) == [(BASE, "primary", 2)]  # the same record again


def test_counts_older_than_the_kept_windows_are_late_and_far_future_ones_refused(store_dir):
    shared = store(store_dir, max_windows=3)
    now = BASE + 10
    old = {(BASE - 4 * HOUR, "primary"): 2, (BASE - 3 * HOUR, "primary"): 3}  # kept: 3 hours after the end
    assert shared.merge(old, now) == {"late": 2, "activities": 0, "windows": 0}
    future = {(window_start(now + 2 * 86400, HOUR), "primary"): 4}
    assert shared.merge(future, now) == {"late": 0, "activities": 0, "windows": 4}
    assert shared.pending() == {(BASE - 3 * HOUR, "primary"): 3}


# -- many processes -------------------------------------------------------------------------------
MERGER = """
import sys
import filelock
from callhome.aggregate import AggregateStore, Counter

directory, now, adds = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
counter, shared = Counter(3600), AggregateStore(directory, 3600).open()
for i in range(adds):
    counter.add("primary", 1, now)
    counter.add("secondary1", 1, now)
    if i % 100 == 99 or i == adds - 1:
        partial = counter.drain()
        while True:
            try:
                dropped = shared.merge(partial, now)
                break
            except filelock.Timeout:
                continue
        assert not any(dropped.values()), dropped
print("done", flush=True)
"""


def test_twenty_processes_merge_into_exactly_one_record_per_activity(store_dir):
    now = BASE + 10
    processes = [_merger(store_dir, now, 1000) for _ in range(20)]
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0 and out.strip() == "done", err
    shared = store(store_dir)
    assert shared.take_due(now) == []  # the window is still open
    due = shared.take_due(closed(BASE))
    assert due == [(BASE, "primary", 20000), (BASE, "secondary1", 20000)]
    shared.mark_emitted([start for start, _, _ in due], closed(BASE))
    assert shared.take_due(closed(BASE) + 1) == []
    assert names(store_dir) == ["lock", "salt", f"w-3600-{BASE}.done"]


def _merger(directory: str, now: float, adds: int) -> subprocess.Popen:
    """A process counting ``adds`` times two activities at ``now``, merging every 100."""
    return subprocess.Popen([sys.executable, "-c", MERGER, directory, repr(now), str(adds)],
                            env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# -- crashes -------------------------------------------------------------------------------------
def test_kill_9_keeps_the_merged_part_exactly_once(store_dir):
    now = BASE + 10
    host = start_host(f"""
        import time
        from callhome.aggregate import AggregateStore, Counter
        counter, shared = Counter(3600), AggregateStore({store_dir!r}, 3600).open()
        for _ in range(700):
            counter.add("primary", 1, {now!r})
        shared.merge(counter.drain(), {now!r})
        for _ in range(300):
            counter.add("primary", 1, {now!r})  # counted, never merged: lost with the process
        print("holding", flush=True)
        time.sleep(60)
    """)
    assert host.stdout.readline().strip() == "holding", host.stderr.read()
    host.send_signal(signal.SIGKILL)
    host.wait(10)
    assert store(store_dir).pending() == {(BASE, "primary"): 700}

    restart = run_host(f"""
        from callhome.aggregate import AggregateStore, Counter
        counter, shared = Counter(3600), AggregateStore({store_dir!r}, 3600).open()
        for _ in range(50):
            counter.add("primary", 1, {now + 60!r})
        print(shared.merge(counter.drain(), {now + 60!r}))
    """)
    assert restart.returncode == 0, restart.stderr
    assert store(store_dir).take_due(closed(BASE)) == [(BASE, "primary", 750)]


def test_kill_9_in_the_middle_of_merging_leaves_whole_merges_and_no_tmp_file(store_dir):
    now = BASE + 10
    host = start_host(f"""
        from callhome.aggregate import AggregateStore, Counter
        counter, shared = Counter(3600), AggregateStore({store_dir!r}, 3600).open()
        merged = 0
        while True:
            for _ in range(10):
                counter.add("primary", 1, {now!r})
            shared.merge(counter.drain(), {now!r})
            merged += 10
            print(merged, flush=True)
    """)
    for _ in range(30):
        host.stdout.readline()
    host.send_signal(signal.SIGKILL)
    printed = [int(line) for line in host.communicate(timeout=10)[0].split()]
    reported = printed[-1] if printed else 300
    total = store(store_dir).pending()[(BASE, "primary")]
    assert total % 10 == 0 and reported <= total <= reported + 10  # the last merge may not have printed
    shared = store(store_dir)
    assert shared.merge({(BASE, "primary"): 1}, now) == NONE_DROPPED
    assert not [name for name in names(store_dir) if name.endswith(".tmp")]
    assert shared.take_due(closed(BASE)) == [(BASE, "primary", total + 1)]


def test_a_crash_between_queueing_and_marking_re_emits_the_same_record(store_dir):
    due_at = closed(BASE)
    shared = store(store_dir)
    shared.merge({(BASE, "primary"): 12, (BASE, "secondary1"): 3}, BASE + 1)
    crashed = run_host(f"""
        import json, os
        from callhome.aggregate import AggregateStore, aggregate_event_id
        shared = AggregateStore({store_dir!r}, 3600).open()
        due = shared.take_due({due_at!r})
        print(json.dumps([[s, a, n, aggregate_event_id(None, a, s, 3600, shared.salt)] for s, a, n in due]))
        os._exit(0)  # queued the records, died before mark_emitted
    """)
    assert crashed.returncode == 0, crashed.stderr
    first = [tuple(item) for item in json.loads(crashed.stdout)]
    assert [item[:3] for item in first] == [(BASE, "primary", 12), (BASE, "secondary1", 3)]

    assert shared.take_due(due_at + 1) == []  # the other process may still be queueing them
    assert shared.merge({(BASE, "primary"): 5}, due_at + 1)["late"] == 5
    again = shared.take_due(due_at + SEAL_LEASE)
    assert again == [item[:3] for item in first]
    assert [aggregate_event_id(None, a, s, HOUR, shared.salt) for s, a, _ in again] == [i[3] for i in first]
    shared.mark_emitted([BASE], due_at + SEAL_LEASE)
    assert shared.take_due(due_at + 2 * SEAL_LEASE) == []


def test_a_busy_lock_gives_the_partial_back_to_the_counter(store_dir):
    shared = store(store_dir, lock_timeout=0.05)
    holder = start_host(f"""
        import time
        from filelock import FileLock
        with FileLock({os.path.join(store_dir, "lock")!r}):
            print("locked", flush=True)
            time.sleep(60)
    """)
    try:
        assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
        counter = Counter(HOUR)
        counter.add("primary", 4, BASE + 1)
        started = time.monotonic()
        with pytest.raises(TimeoutError):  # callhome._lock.Busy
            cycle(counter, shared, BASE + 2)
        assert time.monotonic() - started < 1.0
        assert counter.drain() == {(BASE, "primary"): 4}
        counter.restore({(BASE, "primary"): 4})
    finally:
        holder.kill()
        holder.wait(10)
    counter.add("primary", 1, BASE + 3)
    assert cycle(counter, shared, BASE + 4) == NONE_DROPPED
    assert shared.pending() == {(BASE, "primary"): 5}


# -- caps, corruption, disk ----------------------------------------------------------------------
def test_counter_caps_distinct_activities_per_window_and_pending_windows():
    counter = Counter(HOUR, max_activities=3)
    assert all(counter.add(name, 1, BASE) for name in ("a", "b", "c"))
    assert not counter.add("d", 1, BASE)
    assert counter.add("a", 1, BASE)  # a known activity still counts
    assert counter.add("d", 1, BASE + HOUR)  # the cap is per window
    for k in range(2, MAX_PENDING_WINDOWS):
        assert counter.add("a", 1, BASE + k * HOUR)
    assert not counter.add("a", 1, BASE + MAX_PENDING_WINDOWS * HOUR)
    assert len(counter) == 3 + 1 + MAX_PENDING_WINDOWS - 2
    counter.drain()
    assert counter.add("d", 1, BASE)


def test_store_caps_activities_and_windows_and_counts_the_overflow(store_dir):
    shared = store(store_dir, max_activities=2, max_windows=2)
    now = BASE + 2 * HOUR + 10
    partial = {(BASE, "a"): 1, (BASE, "b"): 2, (BASE, "c"): 4,
               (BASE + HOUR, "a"): 8, (BASE + 2 * HOUR, "a"): 16}
    assert shared.merge(partial, now) == {"late": 0, "activities": 4, "windows": 16}
    assert shared.merge({(BASE, "a"): 1, (BASE, "d"): 32}, now)["activities"] == 32
    assert shared.pending() == {(BASE, "a"): 2, (BASE, "b"): 2, (BASE + HOUR, "a"): 8}
    due = shared.take_due(closed(BASE + HOUR))
    assert due == [(BASE, "a", 2), (BASE, "b", 2), (BASE + HOUR, "a", 8)]
    assert all(count >= 1 for _, _, count in due)  # never a zero bucket
    shared.mark_emitted([BASE, BASE + HOUR], closed(BASE + HOUR))
    assert shared.merge({(BASE + 2 * HOUR, "a"): 16}, now) == NONE_DROPPED  # room again


def test_counts_are_clamped_to_what_json_readers_keep_exactly(store_dir):
    shared = store(store_dir)
    shared.merge({(BASE, "a"): MAX_COUNT}, BASE + 1)
    shared.merge({(BASE, "a"): MAX_COUNT}, BASE + 1)
    assert shared.pending() == {(BASE, "a"): MAX_COUNT}


def test_corrupt_files_are_ignored_counted_and_replaced(store_dir):
    shared = store(store_dir)
    now = BASE + HOUR + 10
    with open(os.path.join(store_dir, f"w-3600-{BASE}.json"), "wb") as f:
        f.write(b"\x00{not json")
    with open(os.path.join(store_dir, f"w-3600-{BASE + HOUR}.json"), "w") as f:
        json.dump({"counts": {"a": -3}, "sealed": None}, f)
    with open(os.path.join(store_dir, "salt"), "w") as f:
        f.write("short")
    with open(os.path.join(store_dir, "notes.txt"), "w") as f:
        f.write("not ours")
    assert shared.pending() == {}  # unreadable windows show nothing, and reading changes nothing
    assert shared.merge({(BASE, "a"): 2, (BASE + HOUR, "a"): 1}, now) == NONE_DROPPED
    assert shared.pending() == {(BASE, "a"): 2, (BASE + HOUR, "a"): 1}
    assert shared.drain_dropped() == {"corrupt": 2, "windows": 0}
    assert shared.take_due(closed(BASE)) == [(BASE, "a", 2)]
    assert shared.salt and len(shared.salt) == 32
    assert "notes.txt" in names(store_dir)
    assert shared.drain_dropped() == {"corrupt": 0, "windows": 0}


def test_no_tmp_files_are_left_and_the_store_stays_bounded(store_dir):
    shared = store(store_dir, max_windows=3)
    orphan = os.path.join(store_dir, f"w-3600-{BASE}.json.4242.deadbeef.tmp")  # killed mid-write
    with open(orphan, "w") as f:
        f.write("{")
    for k in range(10):
        start = BASE + k * HOUR
        shared.merge({(start, "a"): k + 1}, start + 1)
        due = shared.take_due(closed(start))
        assert due == [(start, "a", k + 1)]
        shared.mark_emitted([start], closed(start))
    listing = names(store_dir)
    assert not os.path.exists(orphan)
    assert not [name for name in listing if name.endswith(".tmp")]
    markers = [name for name in listing if name.endswith(".done")]
    assert 1 <= len(markers) <= 4, listing  # remembered for max_windows intervals only
    assert set(listing) - set(markers) == {"lock", "salt"}
    assert os.stat(store_dir).st_mode & 0o777 == 0o700


def test_windows_of_another_interval_are_left_to_their_own_processes_then_expire(store_dir):
    minute = AggregateStore(store_dir, 60, max_windows=2).open()
    minute.merge({(BASE, "a"): 9}, BASE + 1)
    hourly = store(store_dir, max_windows=2)
    hourly.merge({(BASE, "a"): 1}, BASE + 1)
    assert hourly.pending() == {(BASE, "a"): 1} and minute.pending() == {(BASE, "a"): 9}
    assert hourly.take_due(closed(BASE)) == [(BASE, "a", 1)]
    assert minute.pending() == {}  # past 2 minute-windows: nobody emitted it
    assert hourly.drain_dropped() == {"corrupt": 0, "windows": 9}


def test_an_unusable_directory_raises_oserror_on_open(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError):
        AggregateStore(str(blocker / "aggregate-v1"), HOUR).open()


# -- the record ---------------------------------------------------------------------------------
def test_event_ids_are_deterministic_per_installation_activity_window_and_interval():
    one = aggregate_event_id(INSTALL, "primary", BASE, HOUR)
    assert one == aggregate_event_id(INSTALL, "primary", BASE, 3600.0)
    assert len(one) == 36 and one[14] == "5"  # a version 5 UUID
    others = {aggregate_event_id(INSTALL, "primary", BASE + HOUR, HOUR),
              aggregate_event_id(INSTALL, "secondary1", BASE, HOUR),
              aggregate_event_id("1f2e3d4c-0000-4000-8000-000000000000", "primary", BASE, HOUR),
              aggregate_event_id(INSTALL, "primary", BASE, 60),
              aggregate_event_id(None, "primary", BASE, HOUR, salt="a" * 32),
              aggregate_event_id(None, "primary", BASE, HOUR, salt="b" * 32)}
    assert len(others) == 6 and one not in others
    # without an installation id or salt: stable in this process, distinct across machines
    assert aggregate_event_id(None, "primary", BASE, HOUR) == aggregate_event_id(None, "primary", BASE, HOUR)
    in_another_process = run_host(f"""
        from callhome.aggregate import aggregate_event_id
        print(aggregate_event_id(None, "primary", {BASE}, 3600))
    """)
    assert in_another_process.stdout.strip() not in ("", aggregate_event_id(None, "primary", BASE, HOUR))


def _static() -> dict:
    return static_fields(resolve({"product_id": "acme-cli", "product_version": "1.2.3"}, environ={}))


@pytest.mark.parametrize("identity", [{"domain": "acme.example", "ip_addr": None},
                                      {"domain": None, "ip_addr": "156.59.87.83"},
                                      {"domain": "acme.example", "ip_addr": "2001:db8::1"}])
def test_the_payload_is_a_valid_reo_aggregate_record(identity):
    payload = aggregate_payload(_static(), "secondary1", BASE, HOUR, 1250, INSTALL,
                                meta={"callhome_version": "0.1.0", "skipped": None}, **identity)
    assert validate(payload, "aggregate") == []
    assert payload["mode"] == "DOMAIN" and payload["source"] == "TELEMETRY"
    assert payload["count"] == 1250 and payload["event_at"] == BASE + HOUR
    assert payload["event_id"] == aggregate_event_id(INSTALL, "secondary1", BASE, HOUR)
    assert payload["product_id"] == "acme-cli" and payload["user_agent"].startswith("acme-cli/1.2.3 ")
    assert payload["meta"] == {"callhome_version": "0.1.0", "window_start": BASE, "window_end": BASE + HOUR,
                               "interval": HOUR, "installation_id": INSTALL}
    assert "user_id" not in payload and "user_id_type" not in payload
    assert "" not in payload.values() and None not in payload.values()


def test_the_payload_without_an_installation_id_uses_the_salt():
    payload = aggregate_payload(_static(), "primary", BASE, HOUR, 1, None, "acme.example", None,
                                salt="c" * 32)
    assert validate(payload, "aggregate") == []
    assert "installation_id" not in payload["meta"]
    assert payload["event_id"] == aggregate_event_id(None, "primary", BASE, HOUR, salt="c" * 32)
    for bad in (0, -1, 1.0, True, "3"):
        with pytest.raises(ValueError):
            aggregate_payload(_static(), "primary", BASE, HOUR, bad, None, "acme.example", None)


# -- the host's cost and safety ------------------------------------------------------------------
def test_counter_add_never_raises_and_refuses_unusable_input():
    counter = Counter(HOUR)
    odd = [(None, 1, BASE), (5, 1, BASE), (b"primary", 1, BASE), ("", 1, BASE), ("x" * 129, 1, BASE),
           ("primary", 0, BASE), ("primary", -2, BASE), ("primary", True, BASE), ("primary", 1.0, BASE),
           ("primary", "1", BASE), ("primary", None, BASE), ("primary", MAX_COUNT + 1, BASE),
           ("primary", 1, None), ("primary", 1, "now"), ("primary", 1, float("nan")),
           ("primary", 1, float("inf")), ("primary", 1, object())]
    for activity, n, now in odd:
        assert counter.add(activity, n, now) is False, (activity, n, now)
    assert len(counter) == 0
    assert counter.add("primary", 2, BASE) and counter.add("x" * 128, 1, BASE + 0.5)
    assert counter.drain() == {(BASE, "primary"): 2, (BASE, "x" * 128): 1}


def test_counter_loses_nothing_between_host_threads_and_the_worker_draining():
    counter, totals, stop = Counter(HOUR), {}, threading.Event()

    def host() -> None:
        for i in range(20000):
            counter.add("primary" if i % 2 else "secondary1", 1, BASE)

    def worker() -> None:
        while not stop.is_set():
            for key, n in counter.drain().items():
                totals[key] = totals.get(key, 0) + n

    drainer = threading.Thread(target=worker)
    drainer.start()
    hosts = [threading.Thread(target=host) for _ in range(4)]
    for thread in hosts:
        thread.start()
    for thread in hosts:
        thread.join()
    stop.set()
    drainer.join()
    for key, n in counter.drain().items():
        totals[key] = totals.get(key, 0) + n
    assert totals == {(BASE, "primary"): 40000, (BASE, "secondary1"): 40000}


def test_counter_add_cost(capsys):
    counter, now, activities = Counter(HOUR), time.time(), [f"activity{i}" for i in range(10)]
    rounds = 200_000
    started = time.perf_counter()
    for i in range(rounds):
        counter.add(activities[i % 10], 1, now)
    mean_us = (time.perf_counter() - started) / rounds * 1e6
    with capsys.disabled():
        print(f"\nCounter.add: {mean_us:.2f} µs mean over {rounds} calls (goal <= 2 µs)")
    assert sum(counter.drain().values()) == rounds


def test_importing_the_module_loads_no_third_party_package():
    result = run_host("""
        import sys
        import callhome.aggregate
        print(sorted(m for m in ("filelock", "platformdirs", "uuid", "callhome._fs") if m in sys.modules))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_merge_that_fails_on_its_second_window_gives_back_only_that_window(store_dir):
    """Counts drained over two windows, the second one's file unwritable: the first window is
    merged once, the second given back and merged later: 10 and 5, never 20 and 5."""
    store = AggregateStore(store_dir, HOUR).open()
    now = time.time()
    first, second = BASE, BASE + HOUR
    counter = Counter(HOUR)
    counter.add("export", 10, first + 1)
    counter.add("export", 5, second + 1)
    blocker = os.path.join(store_dir, f"w-{HOUR}-{second}.json")
    os.mkdir(blocker)  # where the second window's file goes: the write fails
    partial = counter.drain()
    with pytest.raises(OSError):
        store.merge(partial, now)
    assert partial == {(second, "export"): 5}, "the merged window was left in what is given back"
    counter.restore(partial)
    os.rmdir(blocker)
    assert store.merge(counter.drain(), now) == NONE_DROPPED
    assert store.pending() == {(first, "export"): 10, (second, "export"): 5}
