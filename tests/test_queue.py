"""callhome.queue (real files in tmp_path) and callhome.memqueue: framing, batches, claims, recovery, bounds."""

from __future__ import annotations

import json
import os
import time
import zlib

import pytest
from conftest import run_host, start_host

from callhome.memqueue import MemoryQueue
from callhome.queue import MAX_BATCH, MAX_KEPT_BAD, MAX_LEASE, MAX_OPEN, DiskQueue, frame, parse_entry, unframe

NOW = time.time()


def record(i: int = 0, **extra) -> dict:
    return {"v": 1, "kind": "usage", "payload": {"activity_type": "secondary1", "event_id": f"id-{i}", **extra}}


def lines(n: int, start: int = 0) -> list:
    return [frame(record(i)) for i in range(start, start + n)]


def listing(q: DiskQueue, sub: str) -> list:
    return sorted(os.listdir(os.path.join(q.dir, sub)))


@pytest.fixture
def disk(tmp_path):
    return DiskQueue(str(tmp_path / "product")).open()


@pytest.fixture(params=["disk", "memory"])
def queue(request, tmp_path):
    """Both queues, for the contract they share."""
    if request.param == "disk":
        return DiskQueue(str(tmp_path / "product")).open()
    return MemoryQueue("test").open()


# -- framing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rec", [
    record(),
    record(meta={"text": "two\nlines\r\nand a \u2603", "n": 3, "ok": True, "none": None}),
    {"payload": {}},
    {"payload": {"k": "x" * 10000}, "extra": [1, 2, {"a": "b"}]},
])
def test_frame_round_trip_is_one_line(rec):
    line = frame(rec)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert unframe(line) == rec
    assert unframe(line.rstrip(b"\n")) == rec


def _crc_line(data: bytes) -> bytes:
    return b"%08x %s\n" % (zlib.crc32(data), data)


GOOD = frame(record(7, meta={"command": "build"}))


@pytest.mark.parametrize("line", [
    GOOD[:-15],                                          # torn write
    GOOD[:9],
    GOOD[:40] + b"X" + GOOD[41:],                        # CRC mismatch
    b"00000000" + GOOD[8:],
    b"",
    b"\n",
    b"garbage, not a record at all\n",
    b"zzzzzzzz {\"payload\": {}}\n",
    b"\x00" * 64,
    _crc_line(b"[1, 2]"),                                # valid CRC, not an object
    _crc_line(b'{"no_payload": 1}'),
    _crc_line(b'{"payload": "string"}'),
    _crc_line(b"{not json"),
    _crc_line(b'{"payload": {"a": "\xff\xfe"}}'),        # not UTF-8
])
def test_unframe_rejects_bad_lines(line):
    assert unframe(line) is None


# -- writing and the index -------------------------------------------------------------------


def test_put_splits_into_batches_of_at_most_64(queue):
    written = queue.put(lines(150), NOW)
    entries = list(queue.entries())
    assert sorted(e.count for e in entries) == [22, 64, 64]
    assert MAX_BATCH == 64
    assert written == sum(len(line) for line in lines(150)) == sum(e.size for e in entries)
    assert queue.depth() == (150, written)


def test_put_leaves_nothing_in_tmp(disk):
    disk.put(lines(150), NOW)
    assert listing(disk, "tmp") == []
    assert len(listing(disk, "ready")) == 3


def test_batch_files_hold_the_records_and_are_private(disk):
    disk.put(lines(3), NOW)
    [name] = listing(disk, "ready")
    path = os.path.join(disk.dir, "ready", name)
    assert os.stat(path).st_mode & 0o777 == 0o600
    with open(path, "rb") as f:
        assert [unframe(line) for line in f] == [record(0), record(1), record(2)]


def test_names_parse_back(disk):
    disk.put(lines(5), 1_795_440_000.25)
    [name] = listing(disk, "ready")
    entry = parse_entry(name)
    assert entry.name == name
    assert (entry.not_before, entry.created, entry.attempt, entry.done, entry.count) == \
        (1_795_440_000.25, 1_795_440_000.25, 0, 0, 5)
    assert entry.size == sum(len(line) for line in lines(5)) and len(entry.batch) == 16
    assert list(disk.entries()) == [entry]


@pytest.mark.parametrize("name", [
    "garbage.chq",
    "1795440000000-1795440000000-00-000-005-00000100-0123456789abcdef.txt",
    "1795440000000-1795440000000-00-000-005-00000100.chq",
    "1795440000000-1795440000000-00-000-000-00000100-0123456789abcdef.chq",   # no records
    "1795440000000-1795440000000-00-005-005-00000100-0123456789abcdef.chq",   # all done
    "1795440000000-1795440000000-00-000-005-00000100-0123456789abcde.chq",    # short batch id
    "17954400000x0-1795440000000-00-000-005-00000100-0123456789abcdef.chq",
    "-1795440000000-00-000-005-00000100-0123456789abcdef.chq",
])
def test_parse_entry_refuses_bad_names(name):
    assert parse_entry(name) is None


def test_depth_comes_from_names_and_counts_claims(queue):
    queue.put(lines(10), NOW)
    queue.put(lines(5, 10), NOW)
    events, size = queue.depth()
    assert (events, size) == (15, sum(len(line) for line in lines(15)))
    claim = queue.claim(next(queue.entries()), "L", NOW + 60)
    assert queue.depth() == (15, size)
    queue.renew(claim, 4, NOW + 60)
    assert queue.depth()[0] == 11


def test_depth_sees_a_batch_that_moves_between_ready_and_inflight_while_it_lists(disk):
    """A claim (ready → inflight) or a release (inflight → ready) during the listing must not make
    the batch vanish from the depth: a flush that read 0 would return before it was sent."""
    import threading

    disk.put(lines(3), NOW)
    [name] = listing(disk, "ready")
    ready, inflight = (os.path.join(disk.dir, sub, name) for sub in ("ready", "inflight"))
    stop, seen = threading.Event(), set()

    def move():  # one move at a time, as a claim or a release makes (not two within one listing)
        while not stop.is_set():
            os.rename(ready, inflight)
            time.sleep(0.002)
            os.rename(inflight, ready)
            time.sleep(0.002)

    mover = threading.Thread(target=move)
    mover.start()
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            seen.add(disk.depth()[0])
    finally:
        stop.set()
        mover.join()
    assert seen == {3}


def test_depth_ignores_file_contents(disk):
    disk.put(lines(3), NOW)
    [name] = listing(disk, "ready")
    with open(os.path.join(disk.dir, "ready", name), "wb") as f:
        f.write(b"")  # the name, not the content, is the index
    assert disk.depth()[0] == 3


# -- claims ----------------------------------------------------------------------------------


def test_claim_is_exclusive(queue):
    queue.put(lines(2), NOW)
    entry = next(queue.entries())
    claim = queue.claim(entry, "L", NOW + 60)
    assert claim is not None and claim.entry == entry
    assert queue.claim(entry, "L", NOW + 60) is None
    assert list(queue.entries()) == []
    assert [r["payload"]["event_id"] for r in queue.read(claim)] == ["id-0", "id-1"]


def test_two_queue_objects_on_one_directory_claim_once(tmp_path):
    first, second = (DiskQueue(str(tmp_path / "product")).open() for _ in range(2))
    first.put(lines(3), NOW)
    entry = next(second.entries())
    winners = [q.claim(entry, "L", NOW + 60) for q in (second, first)]
    assert winners[0] is not None and winners[1] is None
    assert winners[0].name.split(".")[-4] == second.nonce


RACE = """
import json, os, time
from callhome.queue import DiskQueue
q = DiskQueue({root!r}).open()
open(os.path.join({flags!r}, "ready.%d" % os.getpid()), "w").close()
while not os.path.exists(os.path.join({flags!r}, "go")):
    time.sleep(0.001)
print(json.dumps([e.batch for e in list(q.entries()) if q.claim(e, "L", time.time() + 60)]))
"""


def test_processes_racing_for_batches_each_claim_distinct_ones(tmp_path):
    root, flags = str(tmp_path / "product"), tmp_path / "flags"
    flags.mkdir()
    q = DiskQueue(root).open()
    for i in range(40):
        q.put(lines(1, i), NOW)
    batches = {e.batch for e in q.entries()}
    procs = [start_host(RACE.format(root=root, flags=str(flags))) for _ in range(3)]
    deadline = time.monotonic() + 30
    while len(os.listdir(flags)) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    (flags / "go").touch()
    claimed = [b for p in procs for b in json.loads(p.communicate(timeout=30)[0])]
    assert sorted(claimed) == sorted(batches)  # every batch exactly once
    assert q.depth()[0] == 40


def test_renew_records_progress_and_extends_the_lease(queue):
    queue.put(lines(5), NOW)
    claim = queue.claim(next(queue.entries()), "L", NOW + 10)
    renewed = queue.renew(claim, 3, NOW + 300)
    assert renewed.entry.done == 3 and renewed.entry.count == 5
    assert queue.renew(claim, 4, NOW + 300) is None  # the old claim is gone
    queue.release(renewed, 3, 1, NOW + 5)
    [entry] = queue.entries()
    assert (entry.done, entry.attempt, entry.not_before) == (3, 1, pytest.approx(NOW + 5, abs=0.001))


def test_renew_to_all_done_is_refused(queue):
    queue.put(lines(2), NOW)
    claim = queue.claim(next(queue.entries()), "L", NOW + 10)
    assert queue.renew(claim, 2, NOW + 10) is None


def test_release_makes_the_batch_eligible_later(queue):
    queue.put(lines(4), NOW)
    claim = queue.claim(next(queue.entries()), "L", NOW + 60)
    queue.release(claim, 1, 2, NOW + 30)
    [entry] = queue.entries()
    assert (entry.done, entry.attempt, entry.count) == (1, 2, 4)
    assert entry.not_before == pytest.approx(NOW + 30, abs=0.001)
    assert entry.created == pytest.approx(NOW, abs=0.001)
    assert queue.depth()[0] == 3


def test_entries_are_ordered_by_not_before(queue):
    queue.put(lines(1, 0), NOW)
    queue.put(lines(1, 1), NOW + 1)
    first = queue.claim(next(queue.entries()), "L", NOW + 60)
    queue.release(first, 0, 1, NOW + 100)  # postponed: now behind the other one
    assert [e.not_before for e in queue.entries()] == [pytest.approx(NOW + 1, abs=0.001),
                                                      pytest.approx(NOW + 100, abs=0.001)]


def test_ack_removes_the_batch(queue):
    queue.put(lines(3), NOW)
    claim = queue.claim(next(queue.entries()), "L", NOW + 60)
    queue.ack(claim)
    assert list(queue.entries()) == [] and queue.depth() == (0, 0)
    queue.ack(claim)  # twice is harmless


def test_ack_leaves_no_file(disk):
    disk.put(lines(3), NOW)
    disk.ack(disk.claim(next(disk.entries()), "L", NOW + 60))
    assert listing(disk, "ready") == listing(disk, "inflight") == listing(disk, "tmp") == []


# -- recovery --------------------------------------------------------------------------------


def other(tmp_path, node=None) -> DiskQueue:
    """Another sender on the same queue: another process (same node), or another machine."""
    q = DiskQueue(str(tmp_path / "product")).open()
    q.pid += 1
    if node:
        q.node = node
    return q


@pytest.mark.parametrize("mode, node, lease, native_lock, recovered", [
    ("L", None, -1, False, True),              # expired
    ("U", "0badc0de", -1, False, True),        # expired, even from another machine
    ("L", None, +120, True, True),             # same kernel, flush.lock held: its holder is dead
    ("L", None, +120, False, False),           # ... but not without the lock
    ("U", None, +120, True, False),            # claimed without the lock: wait for the lease
    ("L", "0badc0de", +120, True, False),      # another machine: wait for the lease
    ("L", "0badc0de", 10 * MAX_LEASE, False, True),  # a lease from a clock that jumped
    ("U", None, 10 * MAX_LEASE, False, True),
])
def test_recover(disk, tmp_path, mode, node, lease, native_lock, recovered):
    disk.put(lines(4), NOW)
    theirs = other(tmp_path, node)
    claim = theirs.claim(next(theirs.entries()), mode, NOW + lease)
    theirs.renew(claim, 1, NOW + lease)
    assert disk.recover(native_lock, NOW) == int(recovered)
    entries = list(disk.entries())
    if recovered:
        [entry] = entries
        assert (entry.done, entry.attempt) == (1, 1)  # progress kept, the lost attempt counted
        assert listing(disk, "inflight") == []
    else:
        assert entries == [] and len(listing(disk, "inflight")) == 1


def test_recover_gives_back_own_claims_without_counting_an_attempt(disk):
    disk.put(lines(2), NOW)
    disk.claim(next(disk.entries()), "L", NOW + 120)
    assert disk.recover(False, NOW) == 1
    assert [e.attempt for e in disk.entries()] == [0]


def test_recover_after_a_sender_process_died(disk, tmp_path):
    disk.put(lines(2), NOW)
    code = """
        import sys, time
        from callhome.queue import DiskQueue
        q = DiskQueue(sys.argv[1]).open()
        q.claim(next(q.entries()), "L", time.time() + 300)
    """
    done = run_host(code.replace("sys.argv[1]", repr(str(tmp_path / "product"))))
    assert done.returncode == 0, done.stderr
    assert list(disk.entries()) == []
    assert disk.recover(False, time.time()) == 0    # lease not expired, lock not held
    assert disk.recover(True, time.time()) == 1     # holding flush.lock proves the claimer gone
    assert disk.depth()[0] == 2


# -- quarantine and bounds -------------------------------------------------------------------


def test_bad_names_in_ready_are_quarantined(disk):
    disk.put(lines(1), NOW)
    open(os.path.join(disk.dir, "ready", "garbage.chq"), "w").close()
    assert len(list(disk.entries())) == 1
    assert listing(disk, "ready") != [] and "garbage.chq" not in listing(disk, "ready")
    assert [n for n in listing(disk, "corrupt") if n.startswith("garbage.chq")]


def test_bad_claim_names_are_quarantined_on_recover(disk):
    open(os.path.join(disk.dir, "inflight", "nonsense.clm"), "w").close()
    assert disk.recover(True, NOW) == 0
    assert listing(disk, "inflight") == []
    assert len(listing(disk, "corrupt")) == 1


def test_unreadable_batch_reads_as_none_and_is_quarantined(disk):
    disk.put(lines(3), NOW)
    [name] = listing(disk, "ready")
    with open(os.path.join(disk.dir, "ready", name), "wb") as f:
        f.write(b"\x00\xff garbage\nmore garbage\n")
    claim = disk.claim(next(disk.entries()), "L", NOW + 60)
    assert not any(disk.read(claim))
    disk.quarantine("inflight", claim.name, "unreadable")
    assert listing(disk, "inflight") == []
    assert [n for n in listing(disk, "corrupt") if n.endswith(".unreadable.bad")]


def test_corrupt_directory_is_bounded(disk):
    for i in range(MAX_KEPT_BAD + 15):
        open(os.path.join(disk.dir, "ready", f"bad{i:03d}.chq"), "w").close()
    list(disk.entries())
    assert listing(disk, "ready") == []
    assert len(listing(disk, "corrupt")) <= 50


def test_dead_letters_are_kept_and_bounded(disk):
    disk.dead_letter(record(0), "400: Invalid payload")
    [name] = listing(disk, "dead")
    with open(os.path.join(disk.dir, "dead", name)) as f:
        kept = json.load(f)
    assert kept["record"] == record(0) and kept["detail"] == "400: Invalid payload"
    for i in range(1, MAX_KEPT_BAD + 20):
        disk.dead_letter(record(i), "400")
    assert len(listing(disk, "dead")) <= 50


def test_prune_drops_expired_first_then_oldest(queue):
    day = 86400.0
    queue.put(lines(10, 0), NOW - 10 * day)    # expired
    queue.put(lines(10, 10), NOW - 3 * day)    # oldest of the rest
    queue.put(lines(10, 20), NOW - 2 * day)
    queue.put(lines(10, 30), NOW - 60)
    dropped = queue.prune(NOW, max_events=20, max_bytes=10 ** 9, max_age=7 * day)
    assert dropped == {"expired": 10, "queue_full": 10}
    assert sorted(e.created for e in queue.entries()) == [pytest.approx(NOW - 2 * day, abs=0.01),
                                                          pytest.approx(NOW - 60, abs=0.01)]
    assert queue.depth()[0] == 20
    assert queue.prune(NOW, max_events=20, max_bytes=10 ** 9, max_age=7 * day) == {"expired": 0,
                                                                                  "queue_full": 0}


def test_prune_enforces_the_byte_cap(queue):
    for i in range(4):
        queue.put(lines(10, 10 + 10 * i), NOW - 100 + i)  # ids 10..49: equal sizes
    batch_bytes = sum(len(line) for line in lines(10, 10))
    dropped = queue.prune(NOW, max_events=10 ** 6, max_bytes=2 * batch_bytes + 10, max_age=86400)
    assert dropped == {"expired": 0, "queue_full": 20}
    assert queue.depth()[1] <= 2 * batch_bytes + 10


def test_prune_sweeps_stale_temporary_files(disk):
    stale, fresh = (os.path.join(disk.dir, "tmp", n) for n in ("stale.tmp", "fresh.tmp"))
    for path in (stale, fresh):
        open(path, "w").close()
    os.utime(stale, (NOW - 7200, NOW - 7200))
    disk.prune(NOW, 100, 10 ** 6, 86400)
    assert listing(disk, "tmp") == ["fresh.tmp"]


def test_shared_state_round_trip(queue):
    assert queue.state("backoff") == {}
    queue.set_state("backoff", {"until": 5.0, "failures": 2})
    assert queue.state("backoff") == {"until": 5.0, "failures": 2}
    queue.set_state("backoff", None)
    assert queue.state("backoff") == {}


def test_open_makes_private_directories(disk):
    for sub in ("tmp", "ready", "inflight", "corrupt", "dead", "locks", "state"):
        assert os.stat(os.path.join(disk.dir, sub)).st_mode & 0o777 == 0o700


# -- peek and wipe (callhome preview, callhome disable) --------------------------------------


def test_peek_reads_waiting_records_in_sending_order_and_leaves_them(disk):
    disk.put(lines(3), NOW)                               # ids 0..2, claimed below with one done
    disk.put(lines(2, 3) + [b"torn line\n"], NOW + 1)     # ids 3, 4 and an unreadable line
    claim = disk.claim(next(disk.entries()), "L", NOW + 60)
    disk.renew(claim, 1, NOW + 60)
    before = {sub: listing(disk, sub) for sub in ("ready", "inflight")}
    ids = [r["payload"]["event_id"] for r in disk.peek(10)]
    assert ids == ["id-3", "id-4", "id-1", "id-2"]      # ready/ first, then inflight/ from its progress
    assert [r["payload"]["event_id"] for r in disk.peek(3)] == ["id-3", "id-4", "id-1"]
    assert disk.peek(0) == []
    assert {sub: listing(disk, sub) for sub in ("ready", "inflight")} == before


def test_peek_of_a_queue_never_opened_is_empty(tmp_path):
    assert DiskQueue(str(tmp_path / "nothing")).peek(5) == []


def test_wipe_deletes_waiting_and_kept_records_but_not_the_state(disk):
    disk.put(lines(3), NOW)                               # claimed below
    disk.put(lines(2, 3), NOW + 1)                        # left in ready/
    disk.put(lines(1, 5), NOW + 2)                        # quarantined below
    disk.claim(next(disk.entries()), "L", NOW + 60)
    disk.quarantine("ready", list(disk.entries())[-1].name, "test")
    open(os.path.join(disk.dir, "tmp", "unpublished.tmp"), "wb").close()
    disk.dead_letter(record(9), "rejected")
    disk.set_state("backoff", {"until": 5.0})
    assert disk.wipe() == 5                               # the waiting records: claimed and ready
    for sub in ("tmp", "ready", "inflight", "dead", "corrupt"):
        assert listing(disk, sub) == [], sub
    assert disk.state("backoff") == {"until": 5.0}


# -- the open batch: appended to, published when full or asked, adopted when its process died ------

def test_append_holds_records_in_the_open_batch_until_published(disk):
    disk.append(lines(3), NOW)
    assert disk.depth()[0] == 3  # counted as waiting, though no sender sees them yet
    assert list(disk.entries()) == []
    disk.append(lines(2, start=3), NOW)
    disk.publish()
    (entry,) = list(disk.entries())
    assert entry.count == 5 and disk.depth()[0] == 5
    claim = disk.claim(entry, "L", NOW + 60)
    assert [r["payload"]["event_id"] for r in disk.read(claim)] == [f"id-{i}" for i in range(5)]


def test_a_memory_queue_appends_as_it_puts(tmp_path):
    memory = MemoryQueue("test")
    memory.append(lines(3), NOW)
    memory.publish()
    assert [e.count for e in memory.entries()] == [3] and memory.adopt_orphans(NOW) == 0


def test_a_full_open_batch_is_published_at_once(disk):
    disk.append(lines(MAX_OPEN + 10), NOW)
    assert [e.count for e in disk.entries()] == [MAX_OPEN]
    assert disk.open_records == 10
    disk.publish()
    assert sorted(e.count for e in disk.entries()) == [10, MAX_OPEN]
    assert listing(disk, "tmp") == []


def test_the_open_batch_of_a_killed_process_is_adopted_once(tmp_path):
    root = str(tmp_path / "product")
    host = start_host(f"""
        import os, sys, time
        from callhome.queue import DiskQueue, frame
        q = DiskQueue({root!r}).open()
        q.append([frame({{"v": 1, "kind": "usage", "payload": {{"event_id": "e%d" % i}}}}) for i in range(7)], time.time())
        print("appended", flush=True)
        time.sleep(60)
    """)
    assert host.stdout.readline().strip() == "appended"
    mine = DiskQueue(root).open()
    assert mine.adopt_orphans(time.time()) == 0  # alive: its batch is its own
    host.kill()
    host.wait(10)
    adopters = [DiskQueue(root).open() for _ in range(3)]
    assert sum(q.adopt_orphans(time.time()) for q in adopters) == 1
    (entry,) = list(mine.entries())
    assert entry.count == 7 and listing(mine, "tmp") == []
    claim = mine.claim(entry, "L", time.time() + 60)
    assert [r["payload"]["event_id"] for r in mine.read(claim)] == [f"e{i}" for i in range(7)]


def test_a_stale_open_batch_is_adopted_and_a_torn_line_counts_as_one(disk):
    path = os.path.join(disk.dir, "tmp", f"{disk.node}.1.abcdef.1.open")  # pid 1: alive, never ours
    with open(path, "wb") as f:
        f.write(b"".join(lines(2)) + b"0000")  # killed mid-write
    assert disk.adopt_orphans(time.time()) == 0
    os.utime(path, (time.time() - 7200, time.time() - 7200))
    assert disk.adopt_orphans(time.time()) == 1
    (entry,) = list(disk.entries())
    assert entry.count == 3
    records = disk.read(disk.claim(entry, "L", time.time() + 60))
    assert records[:2] == [record(0), record(1)] and records[2] is None


def test_the_sweep_of_tmp_never_deletes_an_open_batch(disk):
    disk.append(lines(1), NOW)
    old = time.time() - 7200
    os.utime(disk._open[0], (old, old))
    disk.prune(time.time(), 10**6, 10**9, 10**9)
    assert disk.open_records == 1 and len(listing(disk, "tmp")) == 1
