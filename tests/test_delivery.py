"""Delivery end to end: in-process agents against the real collector on loopback.

Every test drives a real :class:`callhome.Agent` (worker thread, disk queue, HTTP) and checks what
the collector received, what ``status()`` says and what the shared queue directory holds.
"""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from conftest import API_KEY, PRODUCT, host_options, listing, queue_dir, run_host, shared_state, wait_until

#: Reo's answer for a payload it refuses (not an authentication failure).
INVALID = {"response_code": 400, "response": "Invalid payload", "status": "failure"}


# -- helpers -------------------------------------------------------------------------------------









def received(collector, **filters) -> list:
    return collector.store.events(limit=100000, **filters)


def received_ids(collector, **filters) -> list:
    return [e["event_id"] for e in received(collector, **filters)]


def worker_threads() -> list:
    return [t for t in threading.enumerate() if t.name == "callhome-worker" and t.is_alive()]


def last_failure(agent):
    """``status()["last_send"]`` once it records a failed attempt."""
    last = agent.status()["last_send"]
    return last if last and last["outcome"] != "ok" else None


# -- the happy path ------------------------------------------------------------------------------

def test_every_event_arrives_exactly_once(make_agent, collector, state_dir):
    agent = make_agent()
    ids = [agent.track("secondary1", meta={"i": i}) for i in range(50)]
    assert all(ids) and len(set(ids)) == 50
    assert agent.flush(10) is True

    events = received(collector)
    assert sorted(e["event_id"] for e in events) == sorted(ids)
    assert collector.store.stats()["duplicates"] == 0
    assert collector.app.requests.total == 50  # one request per record, none retried
    by_id = {e["event_id"]: e["payload"] for e in events}
    for i, event_id in enumerate(ids):
        payload = by_id[event_id]
        assert payload["product_id"] == PRODUCT
        assert payload["activity_type"] == "secondary1"
        assert payload["domain"] == "example.com"
        assert payload["meta"]["i"] == i
        assert payload["meta"]["installation_id"]

    status = agent.status()
    assert status["accepted"] == 50
    assert status["delivered"] == 50
    assert status["queued"] == 0
    assert status["buffered"] == 0
    assert status["dropped_total"] == 0
    assert status["rejected"] == 0
    assert status["disk"] == "ok"
    assert status["last_send"]["outcome"] == "ok"
    assert listing(state_dir, "ready") == [] and listing(state_dir, "inflight") == []
    assert listing(state_dir, "tmp") == []


def test_concurrent_host_threads_each_event_once(make_agent, collector):
    agent = make_agent()
    ids: list = []
    lock = threading.Lock()

    def host_thread(n: int) -> None:
        mine = [agent.track("secondary2", meta={"thread": n, "i": i}) for i in range(50)]
        with lock:
            ids.extend(mine)

    threads = [threading.Thread(target=host_thread, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert agent.flush(20) is True
    assert len(ids) == 400 and None not in ids
    assert sorted(received_ids(collector)) == sorted(ids)
    assert collector.store.stats()["duplicates"] == 0
    assert agent.status()["delivered"] == 400


# -- transient failures ----------------------------------------------------------------------------

@pytest.mark.parametrize("fault, detail", [
    (500, "500"),
    (503, "503"),
    ((429, {"Retry-After": "1"}), "429"),
    ("reset", "Connection"),
    ("hang:2", "Timeout"),
], ids=["500", "503", "429-retry-after", "reset", "hang"])
def test_transient_failure_then_success(make_agent, collector, state_dir, fault, detail):
    # The sender retries by itself once the shared backoff (at most backoff.BASE = 8 s after one
    # failure, or the Retry-After) has passed: the failure stays visible as the sender's last error.
    # (It idles longer than that here, as it does by default: 30 s.)
    agent = make_agent(timeout=0.5, flush_interval=3600, sender_idle_timeout=10)
    collector.app.script(fault)
    started = time.time()
    event_id = agent.track("secondary1")

    assert wait_until(lambda: collector.store.count() == 1, timeout=15), agent.status()
    assert agent.flush(10) is True
    assert received_ids(collector) == [event_id]
    status = agent.status()
    failure = status["sender"]["last_error"]
    assert failure is not None, status
    assert detail in f"{failure['status']} {failure['detail']}", failure
    assert started <= failure["at"]
    # the sender writes its sent log when its cycle ends, a moment after the queue emptied
    log = wait_until(lambda: len(sent_log(state_dir)) >= 2 and sent_log(state_dir), timeout=10)
    assert [entry["outcome"] for entry in log] == ["retry", "ok"], log
    if isinstance(fault, tuple):
        assert log[1]["at"] - log[0]["at"] >= 1.0, "Retry-After: 1 not honoured"
    assert status["delivered"] == 1 and status["queued"] == 0 and status["dropped_total"] == 0
    assert status["last_send"]["outcome"] == "ok"
    assert shared_state(state_dir, "backoff") is None, "backoff.json was not cleared by the success"
    assert listing(state_dir, "ready") == [] and listing(state_dir, "inflight") == []
    if fault == "hang:2":
        # the hung request is answered (and stored) by the collector after 2 s: same event_id
        wait_until(lambda: collector.store.stats()["requests"] >= 2 and collector.app.requests.total >= 2)
        time.sleep(0.1)
        assert received_ids(collector) == [event_id]


def sent_log(state_dir) -> list:
    """The product's local sent log, oldest first: every request the sender made."""
    path = os.path.join(state_dir, PRODUCT, "sent.log")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_retry_after_is_honoured_by_the_automatic_retry(make_agent, collector, state_dir):
    agent = make_agent(flush_interval=0.05)
    collector.app.script((429, {"Retry-After": "1"}))
    event_id = agent.track("secondary1")
    failure = wait_until(lambda: last_failure(agent), timeout=10)
    assert failure is not None and failure["status"] == 429
    assert wait_until(lambda: collector.store.count() == 1, timeout=15), agent.status()
    event = received(collector)[0]
    assert event["event_id"] == event_id
    waited = event["received_at"] - failure["at"]
    print(f"retry came {waited:.3f}s after the 429 with Retry-After: 1")
    assert waited >= 1.0, f"retried {waited:.3f}s after a Retry-After of 1 s"
    assert collector.app.requests.total == 2
    assert wait_until(lambda: shared_state(state_dir, "backoff") is None, timeout=2)


def test_flush_forces_an_attempt_despite_a_long_backoff(make_agent, collector, state_dir):
    agent = make_agent(flush_interval=0.05)
    collector.app.script((503, {"Retry-After": "60"}))
    event_id = agent.track("secondary1")
    assert wait_until(lambda: last_failure(agent), timeout=10)
    backoff = wait_until(lambda: shared_state(state_dir, "backoff"), timeout=5)
    assert backoff and backoff["until"] >= time.time() + 55, backoff
    # the periodic cycles respect the backoff: no second request, the state says why
    assert wait_until(lambda: agent.status()["state"].startswith("backoff"), timeout=3), agent.status()
    time.sleep(0.3)
    assert collector.app.requests.total == 1
    assert agent.status()["queued"] == 1

    started = time.monotonic()
    assert agent.flush(5) is True
    assert time.monotonic() - started < 2
    assert received_ids(collector) == [event_id]
    assert shared_state(state_dir, "backoff") is None
    assert agent.status()["state"] == "idle"


def test_flush_after_a_burst_returns_true_once_all_is_delivered(make_agent, collector):
    # a burst spreads over several batches, some published while the sender drains others: the
    # flush must neither miss the last one nor wait out its timeout once the queue is empty
    for burst in (1, 700, 3000):
        agent = make_agent()
        ids = [agent.track("secondary1", meta={"i": i}) for i in range(burst)]
        started = time.monotonic()
        assert agent.flush(30) is True, agent.status()
        took = time.monotonic() - started
        status = agent.status()
        assert status["queued"] == 0 and status["delivered"] >= burst, status
        assert set(ids) <= set(received_ids(collector))
        print(f"burst of {burst}: flush() True after {took:.2f}s")
        agent.shutdown()


@pytest.mark.slow
def test_a_backlog_longer_than_one_cycle_is_sent_without_pauses(make_agent, collector):
    """A backlog that takes several of the sender's 10 s cycles goes out back to back: no idle
    seconds between one cycle's end and the next one's start (and no flush() to push it)."""
    collector.app.fail_all(503)
    agent = make_agent()
    total = 24000
    for i in range(total):
        agent.track("secondary1", meta={"i": i})
    assert wait_until(lambda: agent.status()["queued"] >= total, timeout=30), agent.status()
    collector.app.fail_all(None)  # the server is back: the sender's backoff ends within a few seconds
    assert wait_until(lambda: collector.store.count() >= total, timeout=120), agent.status()
    arrivals = sorted(e["received_at"] for e in received(collector))
    gaps = sorted(later - earlier for earlier, later in zip(arrivals, arrivals[1:]))
    span = arrivals[-1] - arrivals[0]
    print(f"\n{total} records in {span:.1f} s; longest pause {gaps[-1]:.2f} s")
    assert gaps[-1] < 2.0, f"the sender paused {gaps[-1]:.1f} s between records"


def test_persistent_503_keeps_everything_queued(make_agent, collector, state_dir):
    collector.app.fail_all(503)
    agent = make_agent()
    ids = [agent.track("secondary1", meta={"i": i}) for i in range(10)]
    started = time.monotonic()
    assert agent.flush(timeout=1) is False
    assert time.monotonic() - started < 1.5
    # one forced attempt (plus at most a periodic one the backoff allowed), not a retry storm
    assert collector.app.requests.total <= 3, collector.app.requests.total
    status = agent.status()
    assert status["queued"] == 10
    assert status["delivered"] == 0
    assert status["dropped_total"] == 0, status["dropped"]
    assert status["last_send"]["status"] == 503
    assert collector.store.count() == 0

    collector.app.fail_all(None)
    assert agent.flush(10) is True
    assert sorted(received_ids(collector)) == sorted(ids)
    status = agent.status()
    assert status["queued"] == 0 and status["delivered"] == 10 and status["dropped_total"] == 0


def test_attempts_cap_drops_and_counts(make_agent, collector, state_dir):
    collector.app.fail_all(500)  # a failure about the record: a 503 (the server's) would not count
    agent = make_agent(max_attempts=2, flush_interval=3600)
    for i in range(5):
        agent.track("secondary1", meta={"i": i})
    for _ in range(10):
        agent.flush(2)
        if agent.status()["dropped"].get("retries") == 5:
            break
    status = agent.status()
    assert status["dropped"].get("retries") == 5, status
    assert status["queued"] == 0
    assert status["delivered"] == 0
    # one request per attempt: a batch stops at its first failure (the worker may have persisted
    # the five events as more than one batch, each of which gets its two attempts)
    requests = collector.app.requests.total
    assert requests % 2 == 0 and 2 <= requests <= 10, requests
    assert listing(state_dir, "ready") == [] and listing(state_dir, "inflight") == []
    assert listing(state_dir, "dead") == []  # not a rejection
    # the queue goes on afterwards
    collector.app.fail_all(None)
    later = agent.track("secondary1")
    assert agent.flush(5) is True
    assert received_ids(collector) == [later]


# -- refusals --------------------------------------------------------------------------------------

def test_auth_failure_pauses_sending_and_keeps_the_queue(make_agent, collector, state_dir):
    collector.app.fail_all("auth")
    agent = make_agent()
    ids = [agent.track("secondary1") for _ in range(3)]
    for _ in range(4):
        assert agent.flush(2) is False
    assert wait_until(lambda: agent.status()["state"].startswith("auth_failed"), timeout=3), agent.status()
    time.sleep(0.5)  # several periodic cycles (flush_interval=0.2)
    assert collector.app.requests.total == 1, "sending must pause after the key was refused"
    status = agent.status()
    assert status["queued"] == 3 and status["dropped_total"] == 0 and status["delivered"] == 0
    assert status["last_send"]["outcome"] == "auth"
    auth = shared_state(state_dir, "auth")
    assert auth and auth["until"] > time.time() + 600
    # the pause is shared: another agent of the product with the same key stays quiet too
    other = make_agent()
    other.track("secondary1")
    assert other.flush(2) is False
    assert collector.app.requests.total == 1
    # the pause lasts (an hour) for this key even once the server would take it: no probing storm
    collector.app.fail_all(None)
    assert agent.flush(1) is False
    assert collector.app.requests.total == 1
    assert collector.store.count() == 0 and agent.status()["queued"] == len(ids) + 1


def test_wrong_key_pauses_then_the_right_key_delivers_everything(make_agent, collector, state_dir):
    wrong = make_agent(api_key="not-the-key")
    ids = [wrong.track("secondary1", meta={"i": i}) for i in range(5)]
    for _ in range(3):
        assert wrong.flush(2) is False
    assert wait_until(lambda: wrong.status()["state"].startswith("auth_failed"), timeout=10), wrong.status()
    assert collector.app.requests.total <= 2
    assert collector.store.stats()["auth_failures"] >= 1
    assert wrong.status()["queued"] == 5 and wrong.status()["dropped_total"] == 0
    wrong.shutdown(0.5)

    right = make_agent(api_key=API_KEY)
    assert right.flush(10) is True
    assert sorted(received_ids(collector)) == sorted(ids)
    assert right.status()["state"] == "idle"


def test_reinit_with_the_right_key_resumes(make_agent, collector, state_dir):
    agent = make_agent(api_key="not-the-key")
    ids = [agent.track("secondary1") for _ in range(3)]
    assert agent.flush(2) is False
    agent.init(product_id=PRODUCT, api_key=API_KEY, endpoint=collector.url, domain="example.com",
               data_dir=state_dir, call_home_interval=0, flush_interval=0.2)
    ids.append(agent.track("secondary1"))
    assert agent.flush(10) is True
    assert sorted(received_ids(collector)) == sorted(ids)


def test_rejected_event_is_dead_lettered_not_retried(make_agent, collector, state_dir):
    collector.app.script((400, {}, INVALID))
    agent = make_agent()
    ids = [agent.track("secondary1", meta={"i": i}) for i in range(3)]
    # flush() says False when it sees the refusal itself, but the worker (woken by track()) may
    # have settled everything before flush() asked: only the outcome is checked
    agent.flush(10)
    assert wait_until(lambda: agent.status()["queued"] == 0 and collector.store.count() == 2, timeout=10)
    assert sorted(received_ids(collector)) == sorted(ids[1:])
    status = agent.status()
    assert status["rejected"] == 1
    assert status["delivered"] == 2
    assert status["queued"] == 0
    assert status["last_send"]["outcome"] == "ok"
    dead = listing(state_dir, "dead")
    assert len(dead) == 1 and ids[0] in dead[0]
    with open(os.path.join(queue_dir(state_dir), "dead", dead[0])) as f:
        kept = json.load(f)
    assert kept["record"]["payload"]["event_id"] == ids[0]
    assert "Invalid payload" in kept["detail"]

    later = [agent.track("secondary1") for _ in range(2)]
    assert agent.flush(10) is True
    time.sleep(0.3)  # a few periodic cycles: the rejected record must not come back
    assert sorted(received_ids(collector)) == sorted(ids[1:] + later)
    assert collector.app.requests.total == 5
    assert ids[0] not in received_ids(collector)


# -- no identity yet -------------------------------------------------------------------------------

def test_held_without_domain_or_ip_then_delivered_after_reinit(make_agent, collector, state_dir):
    agent = make_agent(domain=None)
    assert agent.config.domain is None and agent.config.ip_addr is None
    ids = [agent.track("secondary1", meta={"i": i}) for i in range(4)]
    assert agent.flush(2) is False
    status = agent.status()
    assert status["state"].startswith("held"), status["state"]
    assert status["held"] == 4
    assert status["queued"] == 4
    time.sleep(0.3)
    assert collector.app.requests.total == 0

    agent.init(product_id=PRODUCT, api_key=API_KEY, endpoint=collector.url, domain="example.com",
               data_dir=state_dir, call_home_interval=0, flush_interval=0.2)
    assert agent.flush(10) is True
    events = received(collector)
    assert sorted(e["event_id"] for e in events) == sorted(ids)
    assert all(e["payload"]["domain"] == "example.com" for e in events)
    assert agent.status()["held"] == 0


def test_ip_addr_alone_is_an_identity(make_agent, collector):
    agent = make_agent(domain=None, ip_addr="203.0.113.7")
    event_id = agent.track("secondary1")
    assert agent.flush(10) is True
    (event,) = received(collector)
    assert event["event_id"] == event_id
    assert event["payload"]["ip_addr"] == "203.0.113.7"
    assert "domain" not in event["payload"]


# -- configuration and threads -----------------------------------------------------------------------

def test_second_init_reconfigures_without_a_second_thread(make_agent, collector, state_dir):
    before = len(worker_threads())
    agent = make_agent()
    first = agent.track("secondary1")
    assert agent.flush(10) is True
    assert len(worker_threads()) == before + 1
    for n in range(100):
        agent.init(product_id=PRODUCT, api_key=API_KEY, endpoint=collector.url, domain="example.com",
                   data_dir=state_dir, call_home_interval=0, flush_interval=0.2 + n / 1000,
                   product_version="2.0")
    assert len(worker_threads()) == before + 1
    second = agent.track("secondary1")
    assert agent.flush(10) is True
    assert len(worker_threads()) == before + 1
    events = {e["event_id"]: e["payload"] for e in received(collector)}
    assert set(events) == {first, second}
    assert "product_version" not in events[first]["meta"]
    assert events[second]["meta"]["product_version"] == "2.0"  # the new configuration is in use


def test_module_level_init_100_times_in_a_host(collector, state_dir):
    options = host_options(collector, state_dir)
    result = run_host(f"""
        import threading, callhome
        for _ in range(100):
            callhome.init({options})
        callhome.track("secondary1")
        for _ in range(100):
            callhome.init({options})
        callhome.track("secondary1")
        ok = callhome.flush(10)
        workers = [t for t in threading.enumerate() if t.name == "callhome-worker"]
        print(ok, len(workers))
    """)
    assert result.stderr == ""
    assert result.stdout.split() == ["True", "1"]
    assert collector.store.count() == 2


# -- CALL_HOME ---------------------------------------------------------------------------------------

def run_tracking_hosts(count: int, options: str) -> None:
    """``count`` host processes one after the other, each tracking one event and flushing it."""
    for _ in range(count):
        result = run_host(f"""
            import callhome
            callhome.init({options})
            callhome.track("secondary1")
            print(callhome.flush(10))
        """)
        assert result.stdout.strip() == "True", result.stderr
        assert result.stderr == ""


def test_automatic_call_home_once_across_processes(collector, state_dir):
    run_tracking_hosts(3, host_options(collector, state_dir, call_home_interval=3600))
    assert collector.store.count(activity_type="secondary1") == 3
    call_homes = received(collector, activity_type="CALL_HOME")
    assert len(call_homes) == 1, [e["payload"] for e in call_homes]
    assert call_homes[0]["payload"]["meta"].get("automatic") is True


def test_no_automatic_call_home_when_interval_is_zero(collector, state_dir):
    run_tracking_hosts(2, host_options(collector, state_dir, call_home_interval=0))
    assert collector.store.count(activity_type="secondary1") == 2
    assert collector.store.count(activity_type="CALL_HOME") == 0


def test_explicit_call_home(make_agent, collector):
    agent = make_agent()
    event_id = agent.call_home(meta={"reason": "manual"})
    assert event_id
    assert agent.flush(10) is True
    (event,) = received(collector)
    assert event["event_id"] == event_id
    assert event["activity_type"] == "CALL_HOME"
    assert event["payload"]["meta"]["reason"] == "manual"


# -- opt-out at send time ------------------------------------------------------------------------------

def test_opt_out_is_rechecked_before_every_send(make_agent, collector, monkeypatch):
    agent = make_agent()
    first = agent.track("secondary1")
    assert agent.flush(10) is True
    assert received_ids(collector) == [first]
    requests_before = collector.app.requests.total

    monkeypatch.setenv("DO_NOT_TRACK", "1")
    for _ in range(3):
        agent.track("secondary1")  # the decision taken at init() still accepts them ...
    agent.flush(2)                 # ... but nothing leaves the machine any more
    time.sleep(0.5)                # several periodic cycles
    assert collector.app.requests.total == requests_before
    assert received_ids(collector) == [first]
    assert agent.status()["state"].startswith("disabled"), agent.status()["state"]


def test_a_fleet_of_daemons_restarted_together_spreads_its_daily_call_home():
    """1,000 daemons restarted in the same second: on the following days their CALL_HOMEs are
    spread over the jitter (an hour), never early, rather than all in that second."""
    import random

    from callhome._worker.schedule import MAX_JITTER, next_due

    rng = random.Random(7)
    day = 86400.0
    sent = [0.0] * 1000
    for _ in range(3):
        sent = [next_due(at, day, rng.random()) for at in sent]
    per_second: dict = {}
    for at in sent:
        per_second[int(at)] = per_second.get(int(at), 0) + 1
    assert min(sent) >= 3 * day and max(sent) <= 3 * (day + MAX_JITTER)
    assert max(per_second.values()) <= 5, max(per_second.values())


def test_without_an_api_key_events_are_held_and_the_reason_shown(make_agent, collector):
    agent = make_agent(api_key=None)
    event_id = agent.track("secondary1")
    agent.flush(1)
    status = agent.status()
    assert status["state"].startswith("held: no api_key"), status["state"]
    assert any("api_key" in problem for problem in status["problems"]), status["problems"]
    assert collector.app.requests.total == 0, "a request went out without X-API-KEY"
    keyed = make_agent()  # the next run has the key: the held event goes out
    assert keyed.flush(10) and event_id in received_ids(collector)
