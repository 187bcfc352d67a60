"""``count()`` end to end: real host processes, the shared aggregate store, the collector."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from conftest import PRODUCT, host_options, run_host, start_host, wait_until

INTERVAL = 10  # seconds; the grace before a window is sent is interval / 4


def aggregates(collector) -> list:
    return [e["payload"] for e in collector.store.events(limit=10000, kind="aggregate")]


def wait_for_window_start(margin: float) -> float:
    """Sleep until a window has just begun (at most ``INTERVAL - margin`` seconds in); its start."""
    while time.time() % INTERVAL > INTERVAL - margin:
        time.sleep(0.05)
    return time.time() // INTERVAL * INTERVAL


def flush_after_window(collector, state_dir, start: float) -> None:
    """A later process of the product sends the window once it closed and its grace passed."""
    time.sleep(max(start + INTERVAL * 1.25 + 0.5 - time.time(), 0))
    done = run_host(f"""
        import callhome
        callhome.init({host_options(collector, state_dir, aggregate_interval=INTERVAL)})
        assert callhome.flush(10), callhome.status()
    """)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_twenty_processes_make_one_record_per_activity(collector, state_dir):
    code = f"""
        import callhome
        callhome.init({host_options(collector, state_dir, aggregate_interval=INTERVAL)})
        for _ in range(1000):
            callhome.count("primary")
            callhome.count("secondary1", 2)
    """
    start = wait_for_window_start(margin=7)
    hosts = [start_host(code) for _ in range(20)]
    for host in hosts:
        assert host.wait(60) == 0, host.stderr.read()
    assert time.time() < start + INTERVAL, "the hosts did not finish within one window"
    flush_after_window(collector, state_dir, start)
    records = {p["activity_type"]: p for p in aggregates(collector)}
    assert sorted(records) == ["primary", "secondary1"]
    assert records["primary"]["count"] == 20000 and records["secondary1"]["count"] == 40000
    for payload in records.values():
        assert payload["mode"] == "DOMAIN" and payload["event_at"] == start + INTERVAL
        assert payload["meta"]["window_start"] == start and payload["meta"]["interval"] == INTERVAL
    assert len(aggregates(collector)) == 2  # no second record for a window


@pytest.mark.slow
def test_kill_9_mid_window_counts_the_persisted_part_once(collector, state_dir):
    code = f"""
        import sys, time, callhome
        callhome.init({host_options(collector, state_dir, aggregate_interval=INTERVAL, flush_interval=0.2)})
        for _ in range(500):
            callhome.count("primary")
        print("counted", flush=True)
        time.sleep(60)
    """
    start = wait_for_window_start(margin=6)
    host = start_host(code)
    assert host.stdout.readline().strip() == "counted"
    time.sleep(1.0)  # several merge cycles: the 500 are in the store
    os.kill(host.pid, signal.SIGKILL)
    host.wait(10)
    restarted = run_host(f"""
        import callhome
        callhome.init({host_options(collector, state_dir, aggregate_interval=INTERVAL)})
        for _ in range(300):
            callhome.count("primary")
    """)
    assert restarted.returncode == 0, restarted.stderr
    assert time.time() < start + INTERVAL
    flush_after_window(collector, state_dir, start)
    (record,) = aggregates(collector)
    assert record["count"] == 800


def test_a_failed_aggregate_is_retried_with_the_same_event_id(make_agent, collector):
    agent = make_agent(aggregate_interval=1)
    collector.app.script(503)
    agent.count("primary", 3)
    wait_until(lambda: collector.app.requests.total >= 1, timeout=10)
    assert wait_until(lambda: agent.flush(2) and aggregates(collector), timeout=15)
    (record,) = aggregates(collector)
    assert record["count"] == 3
    sent = [e["payload"]["event_id"] for e in collector.store.events(limit=10)]
    assert sent == [record["event_id"]]
    assert agent.status()["last_send"]["outcome"] == "ok"


def test_a_process_counting_across_a_boundary_splits_its_counts(make_agent, collector):
    agent = make_agent(aggregate_interval=1)
    while time.time() % 1 > 0.5:  # count in the first half of a window, then in the next one
        time.sleep(0.01)
    agent.count("primary", 2)
    time.sleep(1.0)
    agent.count("primary", 5)
    assert wait_until(lambda: agent.flush(2) and len(aggregates(collector)) == 2, timeout=15)
    records = sorted(aggregates(collector), key=lambda p: p["meta"]["window_start"])
    assert [r["count"] for r in records] == [2, 5]
    assert records[1]["meta"]["window_start"] == records[0]["meta"]["window_end"]


def test_activity_modes_route_track(make_agent, collector):
    agent = make_agent(aggregate_interval=1, activity_modes={"login": "both", "build": "aggregate"})
    assert agent.track("build") is None  # counted, not sent as a single event
    assert agent.track("login") is not None
    assert agent.track("deploy") is not None
    assert wait_until(lambda: agent.flush(2) and len(aggregates(collector)) == 2, timeout=15)
    assert sorted(p["activity_type"] for p in aggregates(collector)) == ["build", "login"]
    singles = [e["payload"]["activity_type"] for e in collector.store.events(kind="usage")]
    assert sorted(singles) == ["deploy", "login"]


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "3", None])
def test_bad_counts_are_refused_without_raising(make_agent, n):
    agent = make_agent()
    assert agent.count("primary", n) is False
    assert agent.status()["dropped"].get("invalid") == 1


def test_strict_mode_raises_on_a_bad_count(make_agent):
    agent = make_agent(strict=True)
    with pytest.raises(ValueError):
        agent.count("primary", 0)
    with pytest.raises(ValueError):
        agent.count("")


def test_counts_that_cannot_be_merged_at_exit_are_counted_and_exit_keeps_its_budget(collector, state_dir):
    """Another process holds the aggregate store's lock through this one's exit: its counts
    are lost (they cannot reach the shared store), counted, and the exit takes about 2 s, not 4."""
    from callhome._lock import FileLock

    store = os.path.join(state_dir, PRODUCT, "aggregate-v1")
    os.makedirs(store, exist_ok=True)
    held = FileLock(os.path.join(store, "lock")).acquire(1.0)
    try:
        host = run_host(f"""
            import json, time, callhome
            callhome.init({host_options(collector, state_dir)})
            for _ in range(10):
                callhome.count("primary")
            started = time.monotonic()
            callhome.shutdown(0.5)
            took = time.monotonic() - started
            print(json.dumps({{"took": took, "dropped": callhome.status()["dropped"]}}))
        """)
    finally:
        held.release()
    assert host.returncode == 0 and host.stderr == "", host.stderr
    report = json.loads(host.stdout)
    assert report["dropped"].get("aggregate_exit") == 10, report
    assert report["took"] < 3.0, report
