"""callhome.queue (real files in tmp_path) and callhome.memqueue: framing, batches, claims, recovery, bounds."""

from __future__ import annotations

import json
import os
import threading
import time
import tracemalloc
import uuid
import zlib

import pytest

from callhome.memqueue import MemoryQueue
from callhome.queue import (
    MAX_BATCH,
    MAX_KEPT_BAD,
    MAX_LEASE,
    MAX_OPEN,
    DiskQueue,
    entry_name,
    frame,
    parse_entry,
    space,
    unframe,
)

from conftest import PRODUCT, host_options, payloads, run_host, start_host

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
    pytest.param(_crc_line(b"[" * 100000), id="nested-arrays"),  # deeper than the recursion limit
    pytest.param(_crc_line(b'{"payload": ' * 100000), id="nested-objects"),
    pytest.param(_crc_line(b'{"payload": {"meta": ' + b"[" * 100 + b"]" * 100 + b"}}"), id="nested-100"),
    _crc_line(b"null"),
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
    assert queue.depth() == (150, sum(space(e.size) for e in entries))  # the space the files take


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
    "1795440000000-1795440000000-00-000-999999999-00000100-0123456789abcdef.chq",  # a huge count
    "1795440000000-1795440000000-999-000-005-00000100-0123456789abcdef.chq",       # a huge attempt
    "1795440000000-1795440000000-00-000-005-999999999999-0123456789abcdef.chq",    # a huge size
    "17954400000000-1795440000000-00-000-005-00000100-0123456789abcdef.chq",       # sorts out of order
    "1795440000000-1795440000000-00-000-005-00000100-0123456789ABCDEG.chq",        # not a batch id
    "1795440000000-1795440000000-00-000-\u0665-00000100-0123456789abcdef.chq",     # a digit, not ASCII
])
def test_parse_entry_refuses_bad_names(name):
    assert parse_entry(name) is None


def test_depth_comes_from_names_and_counts_claims(queue):
    queue.put(lines(10), NOW)
    queue.put(lines(5, 10), NOW)
    events, size = queue.depth()
    assert (events, size) == (15, sum(space(e.size) for e in queue.entries()))
    claim = queue.claim(next(queue.entries()), "L", NOW + 60)
    assert queue.depth() == (15, size)
    queue.renew(claim, 4, NOW + 60)
    assert queue.depth()[0] == 11


def test_depth_sees_a_batch_that_moves_between_ready_and_inflight_while_it_lists(disk):
    """A claim (ready → inflight) or a release (inflight → ready) during the listing must not make
    the batch vanish from the depth: a flush that read 0 would return before it was sent."""
    disk.put(lines(3), NOW)
    [name] = listing(disk, "ready")
    ready = os.path.join(disk.dir, "ready", name)
    inflight = os.path.join(disk.dir, "inflight", disk.claim_name(parse_entry(name), "L", NOW + 60))
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


def test_depth_counts_only_names_a_sender_would_send(disk):
    """A name that merely contains a batch's is never claimed: counted, it would keep flush() waiting."""
    disk.put(lines(3), NOW)
    other = entry_name(NOW, NOW, 0, 0, 5, 100, "0123456789abcdef")
    for sub, junk in (("ready", other + ".junk"), ("inflight", other + ".junk"), ("inflight", other)):
        open(os.path.join(disk.dir, sub, junk), "w").close()
    assert disk.depth()[0] == 3
    assert [r["payload"]["event_id"] for r in disk.peek(10)] == ["id-0", "id-1", "id-2"]


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


def test_bad_names_in_ready_are_quarantined_by_their_claim(disk):
    disk.put(lines(1), NOW)
    open(os.path.join(disk.dir, "ready", "garbage.chq"), "w").close()
    stray, batch = disk.entries()
    assert stray.name == "garbage.chq" and batch.count == 1
    claim = disk.claim(stray, "L", NOW + 60)
    assert disk.read(claim) == []  # no readable record: the sender counts the stray's one
    assert listing(disk, "ready") == [batch.name]
    assert [n for n in listing(disk, "corrupt") if n.startswith("garbage.chq")]


def test_bad_claim_names_go_back_to_ready_as_strays_on_recover(disk):
    open(os.path.join(disk.dir, "inflight", "nonsense.clm"), "w").close()
    assert disk.recover(True, NOW) == 0
    assert listing(disk, "inflight") == [] and listing(disk, "ready") == ["nonsense.clm"]
    [stray] = disk.entries()
    disk.claim(stray, "L", NOW + 60)
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
    for stray in list(disk.entries()):
        disk.claim(stray, "L", NOW + 60)
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
    batch_bytes = space(sum(len(line) for line in lines(10, 10)))  # what each batch file takes
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
        q.append([frame({{"v": 1, "kind": "usage", "payload": {{"event_id": "e%d" % i}}}}) for i in range(7)],
                 time.time())
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


# -- poison: whatever is planted in the queue is quarantined or skipped, counted, and never blocks --


def _call_within(seconds: float, fn):
    """``fn()`` on a thread: fails the test instead of hanging it when ``fn`` blocks (on a FIFO)."""
    outcome: list = []

    def run():
        try:
            outcome.append((True, fn()))
        except BaseException as exc:  # handed to the test below
            outcome.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"{fn} blocked for {seconds} s"
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def _unblock(q: DiskQueue) -> None:
    """Let a reader stuck opening a FIFO of the queue go (a reader that opens one blocks)."""
    for sub in ("ready", "inflight", "tmp"):
        for name in listing(q, sub):
            try:
                os.close(os.open(os.path.join(q.dir, sub, name), os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass


def _batch_name(count: int, size: int = 0) -> str:
    return entry_name(time.time(), time.time(), 0, 0, count, size, os.urandom(8).hex())


def _write(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _plant_batch(folder, lines_: list) -> str:
    data = b"".join(lines_)
    name = _batch_name(len(lines_), len(data))
    _write(os.path.join(folder, name), data)
    return name


HUGE_LINE = b"7" * (20 << 20) + b"\n"
NESTED = _crc_line(b"[" * 100000)


def _not_a_file(make):
    """Plant something that is not a regular file under a batch's name (its name counts 2 records)."""
    def plant(ready, outside):
        name = _batch_name(2)
        make(os.path.join(ready, name), outside)
        return name, []
    return plant


def _mkdir_with_a_file(path, outside):
    os.mkdir(path)
    _write(os.path.join(path, "inside"), b"x")


def _outside_batch(outside) -> str:
    """A file of valid records outside the queue: a link to it must not be followed."""
    path = os.path.join(outside, "elsewhere.chq")
    _write(path, frame(record(99)) * 2)
    return path


def _between_good(bad: bytes):
    """A good record, ``bad``, a good record: the good ones must still go out."""
    def plant(ready, outside):
        (first, a), (last, b) = _planted(), _planted()
        return _plant_batch(ready, [a, bad, b]), [first, last]
    return plant


def _planted() -> tuple:
    """(event_id, framed line) of a record the collector accepts."""
    event_id = str(uuid.uuid4())
    payload = {"source": "TELEMETRY", "environment": "PRODUCTION", "product_id": PRODUCT,
               "user_agent": "planted/1.0", "activity_type": "planted", "event_id": event_id,
               "event_at": int(time.time()), "meta": {}}
    return event_id, frame({"v": 1, "kind": "usage", "payload": payload})


def _plant_torn(ready, outside):
    (a, first), (b, second), (_, third) = _planted(), _planted(), _planted()
    return _plant_batch(ready, [first, second, third[:-20]]), [a, b]


def _plant_crc_flip(ready, outside):
    (a, first), (_, flipped), (b, last) = _planted(), _planted(), _planted()
    return _plant_batch(ready, [first, b"%08x" % (int(flipped[:8], 16) ^ 1) + flipped[8:], last]), [a, b]


def _plant_bad_name(ready, outside):
    _write(os.path.join(ready, "not-a-batch.chq"), _planted()[1])
    return "not-a-batch.chq", []


def _plant_huge_count(ready, outside):
    data = _planted()[1] + _planted()[1]
    name = f"{int(time.time() * 1000):013d}-{int(time.time() * 1000):013d}-999-000-999999999-" \
           f"{len(data):08d}-{os.urandom(8).hex()}.chq"
    _write(os.path.join(ready, name), data)
    return name, []


def _plant_unreadable(ready, outside):
    name = _plant_batch(ready, [_planted()[1], _planted()[1]])
    os.chmod(os.path.join(ready, name), 0)
    return name, []


def _plant_content(data: bytes, count: int):
    def plant(ready, outside):
        name = _batch_name(count)
        _write(os.path.join(ready, name), data)
        return name, []
    return plant


#: kind: (plant(ready, outside) -> (name, good event ids in it), records counted corrupt, quarantined whole)
POISON = {
    "garbage": (_between_good(b"\x00\xff\xfe garbage \x80\x81\n"), 1, False),
    "torn_last_line": (_plant_torn, 1, False),
    "crc_flip": (_plant_crc_flip, 1, False),
    "directory": (_not_a_file(_mkdir_with_a_file), 2, True),
    "fifo": (_not_a_file(lambda path, outside: os.mkfifo(path)), 2, True),
    "line_of_20_mb": (_between_good(HUGE_LINE), 1, False),
    "nested_json": (_between_good(NESTED), 1, False),
    "null_record": (_between_good(_crc_line(b"null")), 1, False),
    "no_payload": (_between_good(_crc_line(b'{"v": 1, "kind": "usage"}')), 1, False),
    "bad_name": (_plant_bad_name, 1, True),
    "symlink": (_not_a_file(lambda path, outside: os.symlink(_outside_batch(outside), path)), 2, True),
    "empty_file": (_plant_content(b"", 2), 2, True),
    "only_newlines": (_plant_content(b"\n\n\n", 3), 3, True),
    "huge_count_and_attempt": (_plant_huge_count, 1, True),
    "unreadable": (_plant_unreadable, 2, True),
}

#: A host tracks three events and flushes until its flush succeeds (the first may say False: a
#: record dropped meanwhile was not delivered), then waits until its status shows the count.
POISON_HOST = """
import json, time
import callhome
callhome.init({options})
ids = [callhome.track("host_event") for _ in range(3)]
started = time.monotonic()
flushed = False
while not flushed and time.monotonic() - started < 15:
    flushed = callhome.flush(5)
seconds = time.monotonic() - started
status = callhome.status()
while status["dropped"].get("corrupt", 0) < {corrupt} and time.monotonic() - started < 20:
    time.sleep(0.05)
    status = callhome.status()
print(json.dumps({{"ids": ids, "flushed": flushed, "seconds": seconds, "status": status}}, default=str))
"""


def _run_poison_host(collector, state_dir, corrupt: int) -> dict:
    code = POISON_HOST.format(options=host_options(collector, state_dir), corrupt=corrupt)
    done = run_host(code, timeout=90)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-3000:]
    [line] = done.stdout.splitlines()  # nothing printed but the host's own line
    return json.loads(line)


@pytest.mark.parametrize("kind", list(POISON))
def test_a_poison_file_in_ready_is_quarantined_and_counted_and_the_good_records_go_out(
        kind, collector, state_dir, tmp_path):
    plant, corrupt, whole = POISON[kind]
    if kind == "unreadable" and hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root reads a file of mode 000")
    queue = DiskQueue(os.path.join(state_dir, PRODUCT)).open()
    name, good = plant(os.path.join(queue.dir, "ready"), str(tmp_path))
    try:
        result = _run_poison_host(collector, state_dir, corrupt)
    finally:
        _unblock(queue)
    assert result["flushed"] and result["seconds"] < 10, result
    assert sorted(p["event_id"] for p in payloads(collector)) == sorted(good + result["ids"])
    assert collector.store.stats()["duplicates"] == 0
    assert result["status"]["dropped"] == {"corrupt": corrupt}
    assert result["status"]["queued"] == 0
    assert listing(queue, "ready") == listing(queue, "inflight") == listing(queue, "tmp") == []
    assert bool([n for n in listing(queue, "corrupt") if n.startswith(name)]) == whole


def test_poison_in_inflight_and_tmp_is_quarantined_and_counted(collector, state_dir, tmp_path):
    """Claims of a sender that died (their lease expired) and open batches of a process that died,
    as directories, FIFOs, links and bad records; and a FIFO left in ``tmp/`` under no batch's name."""
    queue = DiskQueue(os.path.join(state_dir, PRODUCT)).open()
    inflight, tmp = (os.path.join(queue.dir, sub) for sub in ("inflight", "tmp"))
    outside = _outside_batch(str(tmp_path))
    gone = 999_999_999  # no such process

    def claimed(count: int) -> str:
        return os.path.join(inflight, f"{_batch_name(count)}.{queue.node}.{gone}.abcdef.L.{0:013d}.clm")

    def opened(seq: int) -> str:
        return os.path.join(tmp, f"{queue.node}.{gone}.abcdef.{seq}.open")

    (a, first), (b, second), (c, third) = _planted(), _planted(), _planted()
    _mkdir_with_a_file(claimed(2), outside)
    os.mkfifo(claimed(1))
    os.symlink(outside, claimed(1))
    _write(claimed(2), first + b"garbage\n")
    _write(os.path.join(inflight, "nonsense.clm"), _planted()[1])  # a stray: its record is not sent
    _mkdir_with_a_file(opened(1), outside)
    os.mkfifo(opened(2))
    os.symlink(outside, opened(3))
    _write(opened(4), second + NESTED + third)
    os.mkfifo(os.path.join(tmp, "junk.tmp"))  # no batch: swept once an hour old
    try:
        result = _run_poison_host(collector, state_dir, 10)
    finally:
        _unblock(queue)
    assert result["flushed"] and result["seconds"] < 10, result
    assert sorted(p["event_id"] for p in payloads(collector)) == sorted([a, b, c] + result["ids"])
    # inflight: 2 + 1 + 1 (as their names count), the garbage line, the stray; tmp: one for each
    # thing that is not a file, and the nested line
    assert result["status"]["dropped"] == {"corrupt": 10}
    assert listing(queue, "ready") == listing(queue, "inflight") == []
    assert listing(queue, "tmp") == ["junk.tmp"]


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink_to_records", "symlink_to_dev_zero"])
def test_reading_what_is_not_a_file_never_blocks_follows_or_raises(disk, tmp_path, kind):
    name = _batch_name(2)
    path = os.path.join(disk.dir, "ready", name)
    {"directory": lambda: os.mkdir(path), "fifo": lambda: os.mkfifo(path),
     "symlink_to_records": lambda: os.symlink(_outside_batch(str(tmp_path)), path),
     "symlink_to_dev_zero": lambda: os.symlink("/dev/zero", path)}[kind]()
    try:
        assert _call_within(5, lambda: disk.peek(10)) == []
        claim = disk.claim(next(disk.entries()), "L", NOW + 60)
        assert not any(_call_within(5, lambda: disk.read(claim)))
    finally:
        _unblock(disk)
    disk.quarantine("inflight", claim.name, "unreadable")
    assert listing(disk, "inflight") == [] and len(listing(disk, "corrupt")) == 1


def test_a_line_of_20_mb_is_skipped_in_bounded_memory_and_the_records_around_it_are_read(disk):
    _plant_batch(os.path.join(disk.dir, "ready"), [frame(record(1)), HUGE_LINE, frame(record(2))])
    claim = disk.claim(next(disk.entries()), "L", NOW + 60)
    tracemalloc.start()
    try:
        records = disk.read(claim)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert records == [record(1), None, record(2)]
    assert peak < 4 << 20


def test_an_open_batch_of_20_mb_is_adopted_in_bounded_memory(disk):
    _write(os.path.join(disk.dir, "tmp", f"{disk.node}.999999999.abcdef.1.open"),
           frame(record(1)) + HUGE_LINE + frame(record(2)))
    tracemalloc.start()
    try:
        assert disk.adopt_orphans(time.time()) == 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [e.count for e in disk.entries()] == [3]
    assert peak < 4 << 20


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink"])
def test_an_open_batch_that_is_not_a_file_is_published_as_one_unreadable_record(disk, tmp_path, kind):
    path = os.path.join(disk.dir, "tmp", f"{disk.node}.999999999.abcdef.1.open")
    {"directory": lambda: os.mkdir(path), "fifo": lambda: os.mkfifo(path),
     "symlink": lambda: os.symlink(_outside_batch(str(tmp_path)), path)}[kind]()
    try:
        assert _call_within(5, lambda: disk.adopt_orphans(time.time())) == 1
    finally:
        _unblock(disk)
    [entry] = disk.entries()
    assert entry.count == 1 and listing(disk, "tmp") == []
    assert not any(disk.read(disk.claim(entry, "L", NOW + 60)))


def test_a_stray_in_ready_is_offered_first_and_quarantined_by_its_claimer_alone(disk):
    """Offered before the batches (a sender stops at the first batch not yet due), claimed once
    (counted once), left alone by prune (the sender counts it)."""
    disk.put(lines(1), NOW + 3600)
    _write(os.path.join(disk.dir, "ready", "zzz-not-a-batch.chq"), b"x")
    stray, batch = disk.entries()
    assert stray.name == "zzz-not-a-batch.chq" and (stray.count, stray.done, stray.not_before) == (1, 0, 0)
    assert disk.depth()[0] == 1  # a stray holds no records the names could count
    assert disk.prune(NOW + 7200, 10**6, 10**9, 1) == {"expired": 1, "queue_full": 0}
    assert listing(disk, "ready") == ["zzz-not-a-batch.chq"]
    claim = disk.claim(stray, "L", NOW + 60)
    assert disk.claim(stray, "L", NOW + 60) is None
    assert disk.read(claim) == [] and listing(disk, "ready") == []
    assert [n for n in listing(disk, "corrupt") if n.startswith("zzz-not-a-batch.chq")]


def test_a_batch_is_read_no_further_than_its_name_counts(disk):
    """More lines than its name counts would make its claim's progress run past the name's count."""
    _plant_batch(os.path.join(disk.dir, "ready"), lines(2))
    [name] = listing(disk, "ready")
    with open(os.path.join(disk.dir, "ready", name), "ab") as f:
        f.write(b"".join(lines(3, 2)))
    claim = disk.claim(next(disk.entries()), "L", NOW + 60)
    assert disk.read(claim) == [record(0), record(1)]


def test_directories_in_corrupt_are_trimmed_and_wiped(disk):
    for i in range(MAX_KEPT_BAD + 5):
        os.makedirs(os.path.join(disk.dir, "corrupt", f"{i:03d}.badname.bad", "inside"))
    _write(os.path.join(disk.dir, "ready", "x"), b"x")
    assert disk.quarantine("ready", "x", "test")
    assert len(listing(disk, "corrupt")) == MAX_KEPT_BAD
    os.mkdir(os.path.join(disk.dir, "tmp", "left.tmp"))
    disk.wipe()
    assert listing(disk, "corrupt") == listing(disk, "tmp") == []
