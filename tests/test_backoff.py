"""callhome.backoff: full-jitter exponential delays and Retry-After parsing, what counts against a
record's attempts, the replay after an outage; the product's shared pauses (``backoff.json``,
``auth.json``), bounded and checked by everyone who reads them."""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from email.utils import formatdate

import pytest

from callhome import backoff
from callhome.backoff import MAX_DELAY, MAX_RETRY_AFTER, delay, parse_retry_after
from callhome.buffer import Counters
from callhome.config import resolve
from callhome.queue import DiskQueue, frame, parse_entry
from callhome.sender.delivery import AUTH_PAUSE, Sender
from callhome.sender.files import key_hash, paused_until

from conftest import API_KEY, PRODUCT, listing, queue_dir, shared_state, wait_until

NOW = 1_795_440_000.0


@pytest.mark.parametrize("failures, ceiling", [
    (0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (10, 512.0), (12, 2048.0),
    (13, MAX_DELAY), (40, MAX_DELAY), (10 ** 6, MAX_DELAY),
])
def test_ceiling_doubles_up_to_the_cap(failures, ceiling):
    assert delay(failures, base=1.0, rng=lambda: 1.0) == ceiling
    assert delay(failures, base=1.0, rng=lambda: 0.0) == 0.0


def test_max_delay_is_one_hour():
    assert MAX_DELAY == 3600.0


def test_the_first_wait_is_spread_over_the_base():
    # a fleet whose server fails must not retry within the same second (bench/fleet_sim.py)
    assert backoff.BASE >= 8.0
    assert delay(1, rng=lambda: 1.0) == backoff.BASE and delay(3, rng=lambda: 1.0) == 4 * backoff.BASE


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 0.75, 0.999])
def test_full_jitter_is_the_whole_range(fraction):
    assert delay(4, base=1.0, rng=lambda: fraction) == pytest.approx(8.0 * fraction)


@pytest.mark.parametrize("base, cap, failures, ceiling", [
    (0.5, 10.0, 1, 0.5), (0.5, 10.0, 4, 4.0), (0.5, 10.0, 6, 10.0), (2.0, 3600.0, 3, 8.0), (1.0, 1.0, 9, 1.0),
])
def test_base_and_cap(base, cap, failures, ceiling):
    assert delay(failures, base=base, cap=cap, rng=lambda: 1.0) == ceiling


def test_default_rng_spreads_over_the_range():
    random.seed(1234)
    samples = [delay(6, base=1.0) for _ in range(2000)]
    assert all(0.0 <= s <= 32.0 for s in samples)
    assert min(samples) < 1.0 and max(samples) > 31.0
    assert 12.0 < sum(samples) / len(samples) < 20.0   # uniform: mean 16


@pytest.mark.parametrize("value, expected", [
    ("2", 2.0),
    (" 120 ", 120.0),
    ("1.5", 1.5),
    ("0", 0.0),
    ("-5", 0.0),                                  # never a negative wait
    ("86400", 86400.0),
    ("999999999", 86400.0),                       # capped at a day
    ("inf", 86400.0),
    (formatdate(NOW + 30, usegmt=True), 30.0),    # HTTP-date
    (formatdate(NOW + 3600, usegmt=False), 3600.0),
    (formatdate(NOW - 600, usegmt=True), 0.0),    # a date in the past
    (formatdate(NOW + 10 ** 8, usegmt=True), 86400.0),
])
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value, NOW) == pytest.approx(expected)


@pytest.mark.parametrize("value", [None, "", "   ", "soon", "nan", "1,5", "Thu, 99 Foo 2026 25:61:00 GMT",
                                   "\u0000", "2 seconds", "Mon, 30 Feb 2026 10:00:00 GMT"])
def test_parse_retry_after_garbage_is_none(value):
    assert parse_retry_after(value, NOW) is None


@pytest.mark.parametrize("status, counts", [
    (None, False), (408, False), (429, False), (502, False), (503, False), (504, False),
    (500, True), (501, True), (404, True), (301, True),
])
def test_only_failures_about_the_record_use_up_its_attempts(status, counts):
    assert backoff.counts_against(status) is counts
    assert backoff.counts_against(status, transient=frozenset()) is True  # the policy before: every failure


def test_a_backlog_is_replayed_at_about_the_rate_it_was_created():
    created = [1000.0, 1010.0, 1050.0, 1100.0, 1200.0]
    due = backoff.replay(created, created, held_until=1100.0, now=1300.0, longest=86400.0)
    stretch = backoff.REPLAY_STRETCH
    assert due[:4] == pytest.approx([1300.0 + held * stretch for held in (0, 10, 50, 100)])
    assert due[4] == 1200.0  # created after the streak held the product back: not part of the backlog
    assert 1.0 < stretch < 1.25  # under 2x the usual rate with the new records; a day's backlog within 30 h


def test_a_replay_fits_in_its_longest_and_never_makes_a_batch_due_earlier():
    created = [0.0, 50_000.0, 100_000.0]
    due = backoff.replay(created, [0.0, 400_000.0, 100_000.0], held_until=100_000.0, now=100_000.0,
                         longest=1000.0)
    assert due == pytest.approx([100_000.0, 400_000.0, 101_000.0])
    assert backoff.replay(created, created, 100_000.0, 100_000.0, 1000.0, stretch=0.0) == [100_000.0] * 3
    assert backoff.replay([5.0], [5.0], held_until=1.0, now=10.0, longest=1000.0) == [5.0]  # nothing held


# -- the shared pauses: bounded, and ignored when malformed ----------------------------------------
#
# Hosts and the sender read the product's ``backoff.json`` and ``auth.json``, which a clock that
# jumped, another version or a person may have written. Driven here through the real queue, the real
# Sender (what ``python -m callhome _sender`` runs) and real agents, against the collector on loopback.

YEAR = 365 * 86400.0


def sender_queue(state_dir: str) -> DiskQueue:
    return DiskQueue(os.path.join(state_dir, PRODUCT)).open()


def sender_config(collector, state_dir: str, **overrides):
    options = dict(product_id=PRODUCT, api_key=API_KEY, endpoint=collector.url, domain="example.com",
                   data_dir=state_dir, call_home_interval=0, sessions=False, timeout=2)
    options.update(overrides)
    return resolve(options, environ={})


def put_records(queue: DiskQueue, count: int, created: float) -> list:
    """``count`` records in one batch, as a host created them at ``created``; their event ids."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    fields = {"activity_type": "secondary1", "product_id": PRODUCT, "source": "TELEMETRY",
              "domain": "example.com", "user_agent": "tests", "event_at": int(created)}
    queue.put([frame({"v": 1, "kind": "usage", "payload": dict(fields, event_id=i)}) for i in ids], created)
    return ids


def plant(state_dir: str, name: str, content: bytes, written: float | None = None) -> None:
    """A shared state file as someone else left it; ``written`` sets its modification time."""
    path = os.path.join(queue_dir(state_dir), "state", name + ".json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)
    if written is not None:
        os.utime(path, (written, written))


def received_ids(collector) -> list:
    return sorted(e["event_id"] for e in collector.store.events(limit=1000))


def ready_names(state_dir: str) -> list:
    return [parse_entry(name) for name in listing(state_dir, "ready")]


@pytest.mark.parametrize("name, content, longest", [
    ("backoff", {"failures": 3}, MAX_DELAY),
    ("backoff", {"failures": 3, "retry_after": 10 ** 9}, MAX_RETRY_AFTER),  # the most a Retry-After is obeyed
    ("auth", {"key": key_hash(API_KEY)}, AUTH_PAUSE),
], ids=["backoff", "backoff-retry-after", "auth"])
def test_a_pause_far_ahead_is_bounded_by_the_policy(collector, state_dir, name, content, longest):
    # what a clock that jumped a decade ahead would have written, read by hosts and the sender alike
    now = time.time()
    plant(state_dir, name, json.dumps(dict(content, until=now + 10 * YEAR)).encode())
    queue, config = sender_queue(state_dir), sender_config(collector, state_dir)
    until = paused_until(queue, config)
    assert longest - 5 <= until - now <= longest + 1, until - now


@pytest.mark.parametrize("name, content, written_ago", [
    ("backoff", {"failures": 3}, MAX_DELAY),
    ("backoff", {"failures": 3, "retry_after": 10 ** 9}, MAX_RETRY_AFTER),
    ("auth", {"key": key_hash(API_KEY)}, AUTH_PAUSE),
    ("backoff", {"failures": 3}, -YEAR),  # written by a clock a year ahead, set right since
    ("auth", {"key": key_hash(API_KEY)}, -YEAR),
], ids=["backoff", "backoff-retry-after", "auth", "backoff-clock-set-back", "auth-clock-set-back"])
def test_delivery_resumes_once_the_policy_maximum_has_passed(make_agent, collector, state_dir, name, content,
                                                             written_ago):
    # a pause ten years long, written longer ago than the policy's longest pause: over, whatever it says
    now = time.time()
    plant(state_dir, name, json.dumps(dict(content, until=now + 10 * YEAR)).encode(),
          written=now - written_ago - 10)
    agent = make_agent()
    event_id = agent.track("secondary1")
    assert wait_until(lambda: received_ids(collector) == [event_id], timeout=15), agent.status()
    assert agent.status()["internal_errors"] == 0


MALFORMED = {
    "not-json": b"{until: tomorrow",
    "not-a-dict": b"[1e300, 3]",
    "string-until": b'{"until": "2099-01-01T00:00:00Z", "failures": 2}',
    "bool-until": b'{"until": true, "failures": 2}',
    "infinite-until": b'{"until": Infinity, "failures": 2}',
    "nan-until": b'{"until": NaN, "failures": 2}',
    "negative-failures": b'{"until": 0, "failures": -7}',
    "infinite-failures": b'{"until": 0, "failures": Infinity}',
    "nan-failures": b'{"until": 0, "failures": NaN}',
    "float-failures": b'{"until": 0, "failures": 1e300}',
}


@pytest.mark.parametrize("content", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_backoff_file_is_ignored(collector, state_dir, content):
    plant(state_dir, "backoff", content)
    queue, config = sender_queue(state_dir), sender_config(collector, state_dir)
    ids = put_records(queue, 2, time.time())
    collector.app.script(503)
    sender = Sender(queue, Counters())
    try:
        assert sender.run(config, force=False) is False  # not held back by the file: it tried, and failed
        assert collector.app.requests.total == 1
        backoff = shared_state(state_dir, "backoff")
        assert backoff["failures"] == 1, backoff  # a new streak: nothing of the file was carried on
        assert time.time() <= backoff["until"] <= time.time() + MAX_DELAY
        assert sender.run(config, force=True) is True  # flush(): once more at once
    finally:
        sender.close()
    assert received_ids(collector) == sorted(ids)
    assert paused_until(queue, config) == 0.0


@pytest.mark.parametrize("content", [
    b'{"key": "%s", "until": Infinity}', b'{"key": "%s", "until": "2099-01-01"}',
    b'{"key": "%s", "until": NaN}', b'{"key": ["%s"], "until": 1e12}',
], ids=["infinite-until", "string-until", "nan-until", "key-not-a-string"])
def test_a_malformed_auth_file_is_ignored(make_agent, collector, state_dir, content):
    plant(state_dir, "auth", content % key_hash(API_KEY).encode())
    agent = make_agent()
    event_id = agent.track("secondary1")
    assert wait_until(lambda: received_ids(collector) == [event_id], timeout=15), agent.status()
    assert agent.status()["internal_errors"] == 0


def test_an_absurd_failure_count_gives_no_absurd_pause(collector, state_dir):
    plant(state_dir, "backoff", json.dumps({"until": 0, "failures": 10 ** 30}).encode())
    queue, config = sender_queue(state_dir), sender_config(collector, state_dir)
    put_records(queue, 1, time.time())
    collector.app.script(503)
    sender = Sender(queue, Counters())
    try:
        assert sender.run(config, force=False) is False
    finally:
        sender.close()
    backoff = shared_state(state_dir, "backoff")
    assert backoff["until"] <= time.time() + MAX_DELAY
    assert backoff["failures"] <= 64, backoff  # the count saturates where the delay stops growing


# -- what counts against a record's attempts -------------------------------------------------------

@pytest.mark.parametrize("fault", [503, 502, 429, 408, "reset"])
def test_transient_failures_do_not_use_up_max_attempts(make_agent, collector, state_dir, fault):
    # five failures of the server (or the network) against a cap of two attempts: the record is
    # delivered when the server is back, not dropped; a failure about the record (500) still counts
    agent = make_agent(max_attempts=2, flush_interval=3600, timeout=2)
    collector.app.script(*[fault] * 5)
    event_id = agent.track("secondary1")
    for _ in range(10):  # each flush() is one attempt, despite the backoff
        if agent.flush(2):
            break
    status = agent.status()
    assert received_ids(collector) == [event_id], status
    assert status["dropped"] == {} and status["delivered"] == 1, status

    collector.app.script(500, 500)
    agent.track("secondary1")
    for _ in range(4):
        agent.flush(2)
    status = agent.status()
    assert status["dropped"].get("retries") == 1, status
    assert len(received_ids(collector)) == 1


# -- Retry-After -------------------------------------------------------------------------------------

def test_retry_after_sets_the_shared_pause(make_agent, collector, state_dir):
    agent = make_agent(flush_interval=0.05, timeout=2)
    collector.app.script((503, {"Retry-After": "7200"}))
    agent.track("secondary1")
    backoff = wait_until(lambda: shared_state(state_dir, "backoff"), timeout=10)
    assert backoff and backoff["until"] >= time.time() + 7100, backoff
    queue, config = sender_queue(state_dir), sender_config(collector, state_dir)
    # longer than an ordinary backoff, and every process of the product (hosts included) keeps it
    assert paused_until(queue, config) >= time.time() + 7100
    assert wait_until(lambda: agent.status()["state"].startswith("backoff"), timeout=3), agent.status()

    # a failure without Retry-After (a flush() tries despite the pause) does not shorten the server's
    collector.app.fail_all(503)
    assert agent.flush(2) is False
    assert collector.app.requests.total == 2
    assert paused_until(queue, config) >= time.time() + 7100, shared_state(state_dir, "backoff")


# -- paced replay after an outage ------------------------------------------------------------------

def test_the_first_success_after_an_outage_paces_the_backlog(collector, state_dir):
    # ten batches created 10 s apart while the server was down, then it is back: the oldest goes at
    # once, the rest at about the rate they were created (not all at once: a fleet would stampede)
    now = time.time()
    queue, config = sender_queue(state_dir), sender_config(collector, state_dir)
    created = [now - 100 + 10 * i for i in range(10)]
    ids = [put_records(queue, 1, at)[0] for at in created]
    plant(state_dir, "backoff", json.dumps({"until": now - 1, "failures": 9}).encode())
    sender = Sender(queue, Counters())
    try:
        started = time.time()
        sender.run(config, force=False)
        assert received_ids(collector) == [ids[0]]
        assert shared_state(state_dir, "backoff") is None  # the streak is over
        waiting = sorted(ready_names(state_dir), key=lambda e: e.created)
        assert [e.created for e in waiting] == pytest.approx(created[1:], abs=0.001)
        for entry in waiting:
            held = entry.not_before - started
            assert entry.created - created[0] - 1 <= held <= 1.5 * (entry.created - created[0]) + 1, entry
        # hosts start no sender until the first comes due (it would exit idle, and be started again)
        assert paused_until(queue, config) == pytest.approx(waiting[0].not_before, abs=0.001)
        # new records are not held back by the replay
        later = put_records(queue, 1, time.time())
        assert paused_until(queue, config) <= time.time()
        sender.run(config, force=False)
        assert received_ids(collector) == sorted([ids[0]] + later)
        # flush() sends everything at once
        assert sender.run(config, force=True) is True
    finally:
        sender.close()
    assert received_ids(collector) == sorted(ids + later)
