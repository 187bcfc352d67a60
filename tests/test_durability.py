"""Durability and torture tests: real host processes, real signals, real files, a real collector.

What is checked is what an end user's machine would see: which events reached the collector,
how often, what is left in the queue directory, and that the host saw no exception or output.
Fault injection happens at the OS layer only (a read-only mount, a path below a regular file,
an ``os.write`` shim that answers ENOSPC); callhome's own classes are never replaced.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zlib

import pytest

from callhome._lock import is_held
from callhome.queue import DiskQueue

from conftest import (
    API_KEY,
    PRODUCT,
    ROOT,
    host_options,
    kill_9_when,
    listing,
    queue_dir,
    run_host,
    start_host,
    wait_until,
)

# -- helpers -------------------------------------------------------------------------------------








def ids_in_file(path: str) -> list:
    """The event ids of the well-framed records in one queue file (``<crc32 hex> <json>\\n`` lines)."""
    ids = []
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return ids
    for line in lines:
        crc, _, data = line.partition(b" ")
        try:
            if int(crc, 16) != zlib.crc32(data):
                continue
            ids.append(json.loads(data)["payload"]["event_id"])
        except (ValueError, KeyError, TypeError):
            continue
    return ids


def ids_on_disk(state_dir: str, subs=("ready", "inflight")) -> list:
    found = []
    for sub in subs:
        for name in listing(state_dir, sub):
            found += ids_in_file(os.path.join(queue_dir(state_dir), sub, name))
    return found


def received_ids(collector) -> list:
    return [e["event_id"] for e in collector.store.events(limit=100000)]


def cli_flush_until_empty(state_dir: str, rounds: int = 8, timeout: float = 60) -> list:
    """``python -m callhome flush`` (key from the environment) until it reports everything delivered."""
    codes = []
    env = dict(os.environ, PYTHONPATH=ROOT, CALLHOME_API_KEY=API_KEY)
    for _ in range(rounds):
        result = subprocess.run([sys.executable, "-m", "callhome", "flush", "--product", PRODUCT, "--dir",
                                 state_dir, "--timeout", str(timeout), "--json"],
                                env=env, capture_output=True, text=True, timeout=timeout + 30)
        codes.append(result.returncode)
        assert result.returncode in (0, 1), result.stderr
        report = json.loads(result.stdout)
        if result.returncode == 0 and report["remaining"] == 0:
            break
    return codes


def assert_queue_drained(state_dir: str) -> None:
    for sub in ("ready", "inflight", "tmp", "corrupt"):
        assert listing(state_dir, sub) == [], f"left in {sub}/: {listing(state_dir, sub)[:5]}"


def frame(record: dict) -> bytes:
    data = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
    return b"%08x %s\n" % (zlib.crc32(data), data)


def batch_name(count: int, size: int, batch: str, done: int = 0, attempt: int = 0,
               not_before: float | None = None) -> str:
    ms = int((time.time() if not_before is None else not_before) * 1000)
    return f"{ms:013d}-{ms:013d}-{attempt:02d}-{done:03d}-{count:03d}-{size:08d}-{batch}.chq"


def node_id() -> str:
    """This kernel's node id as the queue's claim names spell it (crc32 of the boot id)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return "%08x" % zlib.crc32(f.read().strip())
    except OSError:
        pytest.skip("no /proc/sys/kernel/random/boot_id on this platform")


def template_payload(make_agent, collector) -> dict:
    """A payload the collector accepts, taken from a real delivery (also creates the queue dirs)."""
    agent = make_agent()
    agent.track("template")
    assert agent.flush(10)
    agent.shutdown(0.5)
    return collector.store.events(limit=1)[0]["payload"]


def good_record(template: dict, n: int) -> dict:
    payload = dict(template, event_id="%08x-0000-4000-8000-%012x" % (os.getpid(), n),
                   event_at=int(time.time()), activity_type="planted")
    return {"v": 1, "kind": "usage", "payload": payload}


def write_batch(state_dir: str, sub: str, name: str, data: bytes) -> str:
    path = os.path.join(queue_dir(state_dir), sub, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


# -- kill -9 -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_kill_9_mid_run_loses_nothing_that_reached_the_disk(collector, state_dir, tmp_path):
    # the thread sender dies with the host, so the queue is frozen at the kill and can be read
    # as it was (a detached sender goes on; tests/test_host_safety.py covers that case)
    tracked_path = tmp_path / "tracked.txt"
    options = host_options(collector, state_dir, flush_interval=0.05, sender="thread")
    host = start_host(f"""
        import time, callhome
        callhome.init({options})
        with open({str(tracked_path)!r}, "w") as out:
            for chunk in range(100):
                for i in range(100):
                    out.write(callhome.track("secondary1", meta={{"i": chunk * 100 + i}}) + "\\n")
                out.flush()
                time.sleep(0.02)
            out.write("DONE\\n")
        time.sleep(600)
    """)
    kill_9_when(host, lambda: collector.store.count() >= 300 or host.poll() is not None, "never delivered")
    assert host.returncode == -signal.SIGKILL
    stdout, stderr = host.communicate()
    assert stdout == "" and stderr == ""

    # The host is dead, the queue is frozen: what reached the disk is in ready/ and inflight/,
    # or was delivered already.
    time.sleep(0.2)  # let a request the collector was answering at the kill finish
    delivered_before = set(received_ids(collector))
    on_disk = ids_on_disk(state_dir)
    inflight_at_kill = listing(state_dir, "inflight")
    tmp_at_kill = listing(state_dir, "tmp")
    tracked_lines = tracked_path.read_text().split()
    tracked = {line for line in tracked_lines if line != "DONE"}
    reached_disk = set(on_disk) | delivered_before
    assert len(on_disk) == len(set(on_disk)), "an event is in two queue files"
    assert on_disk, "the kill came after everything was delivered: the test proved nothing"

    codes = cli_flush_until_empty(state_dir)
    delivered = received_ids(collector)
    duplicates = collector.store.stats()["duplicates"]
    print(f"\nkill -9: tracked {len(tracked)} ('DONE' written: {'DONE' in tracked_lines}), "
          f"delivered before kill {len(delivered_before)}, on disk at kill {len(on_disk)} "
          f"(inflight claims {len(inflight_at_kill)}, tmp files {tmp_at_kill}), lost from the memory "
          f"buffer {len(tracked - reached_disk)}, delivered in the end {len(delivered)}, "
          f"duplicates {duplicates}, CLI flush exit codes {codes}")

    assert len(delivered) == len(set(delivered))
    missing = reached_disk - set(delivered)
    assert not missing, f"{len(missing)} events that reached the disk were never delivered"
    # no phantom or re-identified events: each delivered event is one distinct track() call
    # (checked by its meta["i"]: an id written to tracked.txt a moment after its track() may miss
    # the file at the kill)
    numbers = [e["payload"]["meta"]["i"] for e in collector.store.events(limit=100000)]
    assert len(set(numbers)) == len(numbers) and all(0 <= i < 10000 for i in numbers)
    assert len(set(delivered) - tracked) <= 100, "the collector got events the host never tracked"
    # a claim records its progress after every record, and two connections may be sending
    assert duplicates <= 2, f"{duplicates} duplicates after one crash"
    assert codes[-1] == 0
    for sub in ("ready", "inflight", "corrupt"):
        assert listing(state_dir, sub) == [], f"left in {sub}/: {listing(state_dir, sub)[:5]}"
    # A write the kill interrupted may leave one partial file of the dead process in tmp/ (it is
    # swept by age); nothing else may be there.
    leftovers = listing(state_dir, "tmp")
    assert len(leftovers) <= 1 and all(f".{host.pid}." in name for name in leftovers), leftovers


# -- many processes at once ----------------------------------------------------------------------

@pytest.mark.slow
def test_50_concurrent_hosts_share_one_queue(collector, state_dir):
    options = host_options(collector, state_dir)
    code = f"""
        import callhome
        callhome.init({options})
        print(" ".join(callhome.track("secondary1", meta={{"i": i}}) for i in range(200)))
    """
    started = time.monotonic()
    hosts = [start_host(code) for _ in range(50)]
    tracked = []
    try:
        for host in hosts:
            stdout, stderr = host.communicate(timeout=90)
            assert host.returncode == 0 and stderr == "", stderr
            tracked += stdout.split()
    finally:
        for host in hosts:
            if host.poll() is None:
                host.kill()
    hosts_done = time.monotonic() - started
    assert len(tracked) == 10000 and len(set(tracked)) == 10000
    before_flush = collector.store.count()
    on_disk = ids_on_disk(state_dir)

    codes = cli_flush_until_empty(state_dir)
    delivered = received_ids(collector)
    duplicates = collector.store.stats()["duplicates"]
    print(f"\n50 hosts x 200: hosts ran {hosts_done:.1f}s, delivered by the hosts {before_flush}, "
          f"on disk after they exited {len(on_disk)}, duplicates {duplicates}, "
          f"CLI flush exit codes {codes}, total {time.monotonic() - started:.1f}s")
    missing = set(tracked) - set(delivered)
    assert not missing, f"{len(missing)} of 10000 events never arrived"
    assert len(delivered) == 10000
    assert duplicates <= 5
    assert_queue_drained(state_dir)


# -- fork ----------------------------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_parent_and_child_both_deliver_without_duplicates(collector, state_dir, tmp_path):
    # The collector holds the first request for 1 s, so the parent's later events are still in its
    # in-memory buffer (not on disk) when it forks: the child must not send those.
    collector.app.script("hang:1")
    options = host_options(collector, state_dir, flush_interval=0.2, timeout=5)
    result = run_host(f"""
        import json, os, sys, time, callhome
        callhome.init({options})
        parent = [callhome.track("secondary1", meta={{"who": "parent-first"}})]
        time.sleep(0.5)  # the worker is now inside the hanging request
        parent += [callhome.track("secondary1", meta={{"who": "parent"}}) for _ in range(20)]
        buffered_before_fork = callhome.status()["buffered"]
        pid = os.fork()
        if pid == 0:
            report = {{"buffered_after_fork": callhome.status()["buffered"]}}
            child = [callhome.track("secondary1", meta={{"who": "child"}}) for _ in range(20)]
            report["flushed"] = callhome.flush(10)
            report["child"] = child
            report["delivered"] = callhome.status()["delivered"]
            with open({str(tmp_path / "child.json")!r}, "w") as f:
                json.dump(report, f)
            os._exit(0)
        flushed = callhome.flush(10)
        _, code = os.waitpid(pid, 0)
        print(json.dumps({{"parent": parent, "flushed": flushed, "child_exit": code,
                          "buffered_before_fork": buffered_before_fork}}))
    """, timeout=60)
    assert result.returncode == 0, result.stderr
    parent = json.loads(result.stdout)
    child = json.loads((tmp_path / "child.json").read_text())
    assert parent["child_exit"] == 0
    assert parent["buffered_before_fork"] > 0, "the fork did not happen with records in the buffer"
    assert child["buffered_after_fork"] == 0, "the child inherited the parent's buffered records"
    assert child["flushed"] is True
    assert parent["flushed"] is True
    wait_until(lambda: collector.store.count() >= 41, timeout=5)
    delivered = received_ids(collector)
    assert sorted(delivered) == sorted(parent["parent"] + child["child"])
    assert collector.store.stats()["duplicates"] == 0
    assert listing(state_dir, "ready") == [] and listing(state_dir, "inflight") == []


# -- the disk refuses ----------------------------------------------------------------------------

def _writable(path: str) -> bool:
    probe = os.path.join(path, ".probe")
    try:
        with open(probe, "w"):
            pass
    except OSError:
        return False
    os.unlink(probe)
    return True


def _unshare_works() -> bool:
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


MEMORY_HOST = """
    import json, callhome
    callhome.init({options})
    ids = [callhome.track("secondary1", meta={{"i": i}}) for i in range(5)]
    flushed = callhome.flush(10)
    with open({result!r}, "w") as f:
        json.dump({{"ids": ids, "flushed": flushed, "status": callhome.status()}}, f)
"""


def memory_host_report(proc, result_path: str) -> dict:
    """What a MEMORY_HOST wrote, once it exited cleanly and silently."""
    assert proc.returncode == 0
    assert proc.stdout == "" and proc.stderr == "", (proc.stdout, proc.stderr)
    with open(result_path) as f:
        return json.load(f)


@pytest.mark.parametrize("method", ["below-a-file", "chmod-0555", "read-only-mount"])
def test_unwritable_state_dir_delivers_from_memory(collector, tmp_path, method):
    result_path = str(tmp_path / "result.json")
    command_prefix = []
    if method == "below-a-file":
        blocker = tmp_path / "blocker"
        blocker.write_text("a regular file where a directory should be\n")
        data_dir = str(blocker / "state")
    elif method == "chmod-0555":
        parent = tmp_path / "locked"
        parent.mkdir()
        parent.chmod(0o555)
        if _writable(str(parent)):
            parent.chmod(0o755)
            pytest.skip("running as root: chmod does not prevent writes (the other methods cover it)")
        data_dir = str(parent / "state")
    else:
        if not _unshare_works():
            pytest.skip("needs root and unshare(1) for a private read-only bind mount")
        parent = tmp_path / "ro"
        parent.mkdir()
        data_dir = str(parent / "state")
        command_prefix = ["unshare", "-m", "sh", "-c",
                          f'mount --bind "{parent}" "{parent}" && mount -o remount,bind,ro "{parent}" '
                          '&& exec "$0" "$@"']
    code = MEMORY_HOST.format(options=host_options(collector, data_dir), result=result_path)
    if command_prefix:
        env = dict(os.environ, PYTHONPATH=ROOT)
        proc = subprocess.run(command_prefix + [sys.executable, "-c", textwrap.dedent(code)], env=env,
                              capture_output=True, text=True, timeout=60)
    else:
        proc = run_host(code)
    report = memory_host_report(proc, result_path)
    status = report["status"]
    assert status["disk"].startswith("memory-only"), status["disk"]
    assert report["flushed"] is True
    assert status["delivered"] == 5 and status["dropped_total"] == 0
    assert sorted(received_ids(collector)) == sorted(report["ids"])
    assert not os.path.exists(data_dir)


ENOSPC_SHIM = """
    import errno, os
    _real_write = os.write
    _partial = set()

    def _write(fd, data):
        # The disk fills up under queue-v1/tmp/: a short write first, then ENOSPC.
        try:
            target = os.readlink("/proc/self/fd/%d" % fd)
        except OSError:
            target = ""
        if "/queue-v1/tmp/" in target:
            if target not in _partial:
                _partial.add(target)
                return _real_write(fd, bytes(data[:7]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return _real_write(fd, data)

    os.write = _write
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="the ENOSPC shim needs /proc/self/fd")
def test_full_disk_falls_back_to_memory(collector, state_dir, tmp_path):
    result_path = str(tmp_path / "result.json")
    code = ENOSPC_SHIM + MEMORY_HOST.format(options=host_options(collector, state_dir), result=result_path)
    report = memory_host_report(run_host(code), result_path)
    status = report["status"]
    assert "No space" in status["disk"] or "ENOSPC" in status["disk"] or "28" in status["disk"], status
    assert status["disk"].startswith("memory-only"), status["disk"]
    ids = report["ids"]
    delivered = received_ids(collector)
    assert status["delivered"] + status["dropped_total"] == 5, status
    assert sorted(delivered) == sorted(ids[:status["delivered"]] if status["dropped_total"] else ids)
    assert listing(state_dir, "tmp") == [], "a partial write was left in tmp/"
    assert listing(state_dir, "ready") == [] and listing(state_dir, "inflight") == []


FULL_WHILE_SHIM = """
    import errno, os
    _real_write = os.write

    def _write(fd, data):
        # the disk is full under queue-v1/ while the marker file exists
        try:
            target = os.readlink("/proc/self/fd/%d" % fd)
        except OSError:
            target = ""
        if "/queue-v1/" in target and os.path.exists({marker!r}):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return _real_write(fd, data)

    os.write = _write
"""

FULL_DISK_HOST = """
    import json, os, time, callhome
    callhome.init({options})
    ids = [callhome.track("secondary1", meta={{"i": i}}) for i in range(2000)]
    deadline = time.monotonic() + 5
    while not callhome.status()["disk"].startswith("memory-only") and time.monotonic() < deadline:
        time.sleep(0.05)
    full = callhome.status()
    if {free}:
        os.unlink({marker!r})  # space frees: the worker tries the disk again by itself
        deadline = time.monotonic() + 10
        while callhome.status()["disk"] != "ok" and time.monotonic() < deadline:
            time.sleep(0.1)
    back = callhome.status()
    callhome.shutdown(0.5)
    with open({result!r}, "w") as f:
        json.dump({{"ids": ids, "full": full, "back": back, "end": callhome.status()}}, f)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="the ENOSPC shim needs /proc/self/fd")
@pytest.mark.parametrize("free", [True, False], ids=["space-freed", "still-full"])
def test_a_full_disk_is_tried_again_and_every_record_is_kept_or_counted(collector, state_dir, tmp_path, free):
    collector.app.fail_all(503)  # the server is down: nothing leaves memory by delivery
    marker, result_path = str(tmp_path / "full"), str(tmp_path / "result.json")
    open(marker, "w").close()
    code = FULL_WHILE_SHIM.format(marker=marker) + FULL_DISK_HOST.format(
        options=host_options(collector, state_dir), free=free, marker=marker, result=result_path)
    report = memory_host_report(run_host(code, timeout=60), result_path)
    assert report["full"]["disk"].startswith("memory-only"), report["full"]
    assert "No space" in report["full"]["disk"], report["full"]
    end = report["end"]
    if free:
        assert report["back"]["disk"] == "ok", report["back"]
        # every record the memory queue held is on disk, for the next sender
        assert DiskQueue(os.path.join(state_dir, PRODUCT), False).open().depth()[0] >= 2000
        assert end["dropped_total"] == 0, end["dropped"]
    else:
        assert end["dropped"].get("memory_only", 0) + end["delivered"] >= 2000, end
        assert end["dropped_total"] >= 2000 - end["delivered"], end


FSYNC_HOST = """
    import json, os
    synced = []

    def _recording(flush):
        def _flush(fd):
            # which file or directory each flush reaches (relative to the data dir)
            synced.append(os.path.relpath(os.readlink("/proc/self/fd/%d" % fd), {state_dir!r}))
            return flush(fd)
        return _flush

    os.fsync, os.fdatasync = _recording(os.fsync), _recording(os.fdatasync)
    import callhome
    callhome.init({options})
    callhome.start_session("fsync-session")
    callhome.track("secondary1")
    callhome.count("primary", 3)
    callhome.flush(10)
    callhome.end_session("fsync-session")
    callhome.shutdown(1.0)
    print(json.dumps(sorted(set(synced))))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="the fsync shim needs /proc/self/fd")
@pytest.mark.parametrize("fsync", [True, False])
def test_fsync_true_flushes_every_file_that_holds_accepted_data_and_its_directory(collector, state_dir, fsync):
    options = host_options(collector, state_dir, fsync=fsync, sessions=True, aggregate_interval=1,
                           heartbeat_interval=0.2)
    host = run_host(FSYNC_HOST.format(state_dir=state_dir, options=options))
    assert host.returncode == 0 and host.stderr == "", host.stderr
    synced = json.loads(host.stdout)
    product = PRODUCT + os.sep

    def flushed(prefix: str) -> bool:
        return any(path == product + prefix or path.startswith(product + prefix + os.sep) for path in synced)

    wanted = ["queue-v1/ready", "queue-v1/tmp", "aggregate-v1", "sessions"]
    if fsync:
        missing = [where for where in wanted if not flushed(where)]
        assert missing == [], synced
    else:  # the default: the OS writes back in its own time (what a power loss may take is documented)
        assert not any(flushed(where) for where in wanted), synced


# -- damaged queues ------------------------------------------------------------------------------

def test_corrupt_queue_files_are_quarantined_and_good_records_flow(make_agent, collector, state_dir):
    template = template_payload(make_agent, collector)
    good = [good_record(template, n) for n in range(4)]
    bad_crc = frame(good_record(template, 99)).replace(b'"planted"', b'"tampered"')  # CRC no longer matches
    garbage = {
        "garbage.chq": b"not a batch\n",
        "1-2-3.chq": frame(good[3]),
        batch_name(3, 100, "a" * 16): b"\0" * 100,  # a power-loss artefact: NUL-filled
        batch_name(1, 0, "b" * 16): b"",  # zero-length
    }
    for name, data in garbage.items():
        write_batch(state_dir, "ready", name, data)
    mixed = frame(good[0]) + bad_crc
    write_batch(state_dir, "ready", batch_name(2, len(mixed), "c" * 16), mixed)
    fine = frame(good[1]) + frame(good[2])
    write_batch(state_dir, "ready", batch_name(2, len(fine), "d" * 16), fine)
    write_batch(state_dir, "ready", ".nfs000000000001", b"someone else's file")
    write_batch(state_dir, "inflight", "junk.clm", b"x")

    agent = make_agent()
    agent.flush(10)  # False: records were dropped as corrupt
    assert wait_until(lambda: agent.status()["queued"] == 0, timeout=10), agent.status()
    delivered = set(received_ids(collector))
    wanted = {r["payload"]["event_id"] for r in good[:3]}
    assert wanted <= delivered
    assert good[3]["payload"]["event_id"] not in delivered  # it was in a file with a bad name
    assert not any(e["activity_type"] == "tampered" for e in collector.store.events(limit=100))
    corrupt = listing(state_dir, "corrupt")
    for name in list(garbage) + ["junk.clm"]:
        assert any(c.startswith(name + ".") for c in corrupt), (name, corrupt)
    assert len(corrupt) == 5
    assert listing(state_dir, "ready") == [".nfs000000000001"]  # unknown names are left alone
    assert listing(state_dir, "inflight") == []
    status = agent.status()
    assert status["dropped"].get("corrupt", 0) >= 5, status["dropped"]  # 3 (NUL) + 1 (empty) + 1 (CRC)
    # and the queue keeps going
    later = [agent.track("secondary1") for _ in range(3)]
    assert agent.flush(10) is True
    assert set(later) <= set(received_ids(collector))


def test_state_dir_deleted_while_running(make_agent, collector, state_dir):
    agent = make_agent(flush_interval=0.05)
    first = [agent.track("secondary1") for _ in range(5)]
    assert agent.flush(10) is True
    shutil.rmtree(state_dir)
    second = [agent.track("secondary1") for _ in range(5)]
    assert agent.flush(10) is True
    delivered = set(received_ids(collector))
    assert set(first + second) <= delivered

    # deleted again while a backlog is being sent (the collector is slow)
    collector.app.fail_all("hang:0.02")
    third = [agent.track("secondary1") for _ in range(100)]
    assert wait_until(lambda: collector.store.count() >= 20, timeout=10)
    shutil.rmtree(state_dir, ignore_errors=True)
    fourth = [agent.track("secondary1") for _ in range(5)]
    collector.app.fail_all(None)
    assert wait_until(lambda: agent.flush(5), timeout=30), agent.status()
    delivered = set(received_ids(collector))
    assert set(fourth) <= delivered
    print(f"\n{len(set(third) - delivered)} of 100 events lost with the deleted directory")
    assert agent._worker.thread.is_alive()
    assert agent.counters.get("internal_errors") == 0
    status = agent.status()
    assert status["queued"] == 0
    assert status["disk"] == "ok" or status["disk"].startswith("memory-only"), status["disk"]


def test_stale_claims_are_recovered_by_the_next_sender(make_agent, collector, state_dir):
    template = template_payload(make_agent, collector)
    node, now = node_id(), time.time()
    dead_pid = 4194304 + 17  # above any pid_max: no process has it
    claims = {
        # L claim of this kernel: the flush.lock the next sender gets proves its holder dead
        "dead-L": (node, "L", now + 300, True),
        # U claim whose lease expired
        "expired-U": (node, "U", now - 5, True),
        # L claim from another kernel with a lease far beyond the maximum (a clock that jumped)
        "foreign-jumped": ("0badc0de", "L", now + 10 * 86400, True),
        # U claim with a live lease: flock proves nothing about it, so it must wait
        "live-U": (node, "U", now + 300, False),
        # L claim from another kernel with a live lease: only its lease can free it
        "foreign-L": ("0badc0de", "L", now + 300, False),
    }
    expected, waiting = set(), set()
    for n, (claim_node, mode, lease, recovered) in enumerate(claims.values()):
        records = [good_record(template, 10 * n + i) for i in range(2)]
        data = b"".join(frame(r) for r in records)
        ready_name = batch_name(2, len(data), "%016x" % (n + 1), not_before=now - 60)
        claim_name = f"{ready_name}.{claim_node}.{dead_pid}.abc123.{mode}.{int(lease * 1000):013d}.clm"
        write_batch(state_dir, "inflight", claim_name, data)
        (expected if recovered else waiting).update(r["payload"]["event_id"] for r in records)

    agent = make_agent()
    assert agent.flush(10) is False  # the two live claims still count as queued
    delivered = set(received_ids(collector))
    assert expected <= delivered, "a stale claim was not recovered"
    assert not waiting & delivered, "a claim with a live lease was taken over"
    assert len(listing(state_dir, "inflight")) == 2
    assert agent.status()["queued"] == 4
    assert listing(state_dir, "ready") == []


def test_killed_sender_claims_are_recovered_at_once(collector, state_dir):
    """A host SIGKILLed while sending (it holds flush.lock and a claim): the next process resends."""
    collector.app.fail_all("hang:5")
    options = host_options(collector, state_dir, timeout=60, flush_interval=0.05)
    host = start_host(f"""
        import time, callhome
        callhome.init({options})
        print(callhome.track("secondary1"), flush=True)
        time.sleep(600)
    """)
    event_id = host.stdout.readline().strip()
    kill_9_when(host, lambda: listing(state_dir, "inflight"), "the host never claimed")
    host.communicate()
    collector.app.fail_all(None)
    result = run_host(f"""
        import callhome
        callhome.init({host_options(collector, state_dir)})
        print(callhome.flush(10))
    """)
    assert result.stdout.strip() == "True", result.stderr
    assert event_id in received_ids(collector)
    assert listing(state_dir, "inflight") == [] and listing(state_dir, "ready") == []


# -- offline fleet -------------------------------------------------------------------------------

@pytest.mark.slow
def test_offline_fleet_is_held_back_by_the_shared_backoff(collector, state_dir):
    """30 hosts of a product, offline together: one sender serves them all, so there is one
    writer of ``backoff.json`` (no lost update of its failure count) and no retry storm."""
    collector.app.fail_all(503)
    processes = 30
    options = host_options(collector, state_dir, flush_interval=0.05)
    # Each host lives until the product's sender has tried and backed off, then exits.
    code = f"""
        import time, callhome
        callhome.init({options})
        print(callhome.track("secondary1"), flush=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = callhome.status()
            if status["state"].startswith("backoff") and status["sender"]["pid"]:
                break
            time.sleep(0.02)
        print(status["sender"]["pid"], status["state"].split(":")[0])
    """
    started = time.monotonic()
    hosts = [start_host(code) for _ in range(processes)]
    tracked, senders = [], []
    try:
        for host in hosts:
            stdout, stderr = host.communicate(timeout=90)
            assert host.returncode == 0 and stderr == "", stderr
            event_id, pid, state = stdout.split()
            assert state == "backoff", stdout
            tracked.append(event_id)
            senders.append(pid)
    finally:
        for host in hosts:
            if host.poll() is None:
                host.kill()
    elapsed = time.monotonic() - started
    attempts = collector.app.requests.total
    print(f"\noffline fleet: {processes} hosts over {elapsed:.1f}s made {attempts} requests through "
          f"{len(set(senders))} sender(s)")
    assert collector.store.count() == 0
    assert len(set(senders)) == 1, f"more than one sender at a time: {sorted(set(senders))}"
    # one request per attempt of the one sender (the backoff grows: a few in this time), no storm
    assert 1 <= attempts <= 6, f"{attempts} requests from {processes} offline hosts in {elapsed:.1f}s"
    on_disk = ids_on_disk(state_dir)
    assert sorted(on_disk) == sorted(tracked), "an event of an offline host is not on disk"
    # once the sender has given up for now (idle in its backoff), every failure it met is counted once
    assert wait_until(lambda: not is_held(os.path.join(queue_dir(state_dir), "locks", "sender.lock")), timeout=20)
    with open(os.path.join(queue_dir(state_dir), "state", "backoff.json")) as f:
        assert json.load(f)["failures"] == collector.app.requests.total, "a failure was counted twice or lost"


def _used_on_disk(directory: str) -> int:
    return sum(os.stat(os.path.join(root, name)).st_blocks * 512
               for root, _, names in os.walk(directory) for name in names)


def test_the_byte_cap_counts_the_space_files_take(state_dir):
    """One small batch per cycle takes a block each: the cap is on that, not on record bytes."""
    queue = DiskQueue(os.path.join(state_dir, PRODUCT), False).open()
    line = b"%08x %s\n" % (zlib.crc32(b'{"payload":{}}'), b'{"payload":{}}')
    for i in range(40):
        queue.put([line], time.time() - 40 + i)
    cap = 10 * 4096
    queue.prune(time.time(), max_events=10 ** 6, max_bytes=cap, max_age=86400)
    ready = os.path.join(queue_dir(state_dir), "ready")
    assert queue.depth()[1] <= cap and len(os.listdir(ready)) == 10
    assert _used_on_disk(ready) <= cap, "the batches take more space than the cap"


def test_processes_together_stay_within_the_record_cap_and_count_what_they_drop(collector, state_dir):
    """Six long-running processes, 100 records each, a cap of 300 and the server down: none sees
    another's open batch before it is published, so together they go over; within seconds, and
    at the end, the queue is back within the cap, and every record is on disk or counted."""
    collector.app.fail_all(503)
    options = host_options(collector, state_dir, max_queue_events=300, sender="thread", exit_timeout=0.1)
    code = f"""
        import json, sys, callhome
        callhome.init({options})
        callhome.flush(0.2)  # the worker has looked at the queue: empty
        print("ready", flush=True)
        sys.stdin.readline()  # all six track at once
        for i in range(100):
            callhome.track("secondary1", meta={{"i": i}})
        print("tracked", flush=True)
        sys.stdin.readline()
        callhome.shutdown(0.2)
        print(json.dumps(callhome.status()["dropped"]))
    """
    hosts = [start_host(code, stdin=subprocess.PIPE) for _ in range(6)]
    queue = DiskQueue(os.path.join(state_dir, PRODUCT), False).open()
    try:
        assert all(host.stdout.readline().strip() == "ready" for host in hosts)
        for host in hosts:
            host.stdin.write("go\n")
            host.stdin.flush()
        assert all(host.stdout.readline().strip() == "tracked" for host in hosts)
        assert wait_until(lambda: queue.depth()[0] <= 300 and not os.listdir(os.path.join(queue_dir(state_dir), "tmp")),
                          timeout=5), f"{queue.depth()[0]} records on disk against a cap of 300, processes running"
    finally:
        for host in hosts:
            host.stdin.write("done\n")
            host.stdin.flush()
    dropped = 0
    for host in hosts:
        out, err = host.communicate(timeout=60)
        assert host.returncode == 0 and err == "", err
        dropped += json.loads(out).get("queue_full", 0)
    on_disk = queue.depth()[0]
    assert on_disk <= 300, f"{on_disk} records on disk against a cap of 300"
    assert on_disk + dropped >= 600, (on_disk, dropped)  # every record is on disk or counted


def test_a_full_queue_drops_its_oldest_records(make_agent, collector, state_dir):
    collector.app.fail_all(503)
    agent = make_agent(max_queue_events=10)
    ids = []
    for i in range(25):
        ids.append(agent.track("secondary1", meta={"i": i}))
        agent.flush(0.5)  # one batch per event: the cap is met batch by batch
    assert agent.status()["dropped"].get("queue_full") == 15
    kept = set(ids_on_disk(state_dir))
    assert kept == set(ids[-10:]), "the newest records must be the ones kept"
