"""Sessions and runtime (issue 6): the implicit process session, explicit sessions, the id rules,
the heartbeat journal and its recovery after ``kill -9``, forks, opt-outs.

Real host processes, real signals and files, a real collector on loopback. Durations are
measured against the real clock: a host prints ``time.time()`` right after ``init()`` (the
process session starts inside ``init()``), so a session's end is ``that + duration`` within a
few milliseconds even though ``session_start``/``session_end`` are whole seconds.
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

import pytest
from filelock import FileLock

from conftest import (
    PRODUCT,
    ROOT,
    closed_port_url,
    deliver,
    host_options,
    is_uuid4,
    of_type,
    payloads,
    queue_dir,
    run_host,
    start_host,
    wait_until,
)

# -- helpers -------------------------------------------------------------------------------------





def by_session_id(collector) -> dict:
    records = of_type(collector, "session")
    found = {p["meta"]["session_id"]: p for p in records}
    assert len(found) == len(records), "two records for one session"
    return found


def journal_dir(state_dir: str) -> str:
    return os.path.join(state_dir, PRODUCT, "sessions")


def journal_files(state_dir: str) -> list:
    try:
        return sorted(os.listdir(journal_dir(state_dir)))
    except FileNotFoundError:
        return []


def journal_text(state_dir: str, name: str) -> str:
    try:
        with open(os.path.join(journal_dir(state_dir), name)) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def journal_of(state_dir: str, pid: int) -> str | None:
    """The journal file name of the process ``pid`` (``<pid>-<token>.json``), if it has one."""
    names = [n for n in journal_files(state_dir) if n.startswith(f"{pid}-") and n.endswith(".json")]
    return names[0] if names else None


def first_line(host) -> dict:
    line = host.stdout.readline()
    assert line, host.communicate()
    return json.loads(line)



def stop(host) -> None:
    if host.poll() is None:
        host.kill()
    host.wait(10)


# -- the process session --------------------------------------------------------------------------

def test_process_and_explicit_sessions_of_a_host(collector, state_dir, make_agent):
    """One host through the module-level API: its process session at exit, two explicit ones."""
    options = host_options(collector, state_dir, sessions=True, session_activity="RUN TIME")
    started = time.time()
    host = run_host(f"""
        import json, time, callhome
        callhome.init({options})
        began = time.time()
        with callhome.session("build-000001") as sid:
            time.sleep(0.3)
        assert callhome.start_session("deploy-000002") is True
        time.sleep(0.2)
        assert callhome.end_session("deploy-000002") is True
        time.sleep(0.2)
        print(json.dumps({{"began": began, "sid": sid, "open": callhome.status()["sessions"]}}))
    """)
    runtime = time.time() - started
    assert host.returncode == 0 and host.stderr == "", host.stderr
    report = json.loads(host.stdout)
    assert report["sid"] == "build-000001" and report["open"] == 1  # the process session only

    deliver(make_agent)
    sessions = by_session_id(collector)
    assert len(sessions) == 3
    process = sessions.pop(next(k for k, p in sessions.items() if p["meta"]["session_kind"] == "process"))
    meta = process["meta"]
    assert is_uuid4(meta["session_id"])
    assert process["activity_type"] == "RUN TIME"
    assert meta["closed_by"] == "exit" and meta["record_type"] == "session"
    assert 0.7 <= meta["duration"] < runtime, (meta["duration"], runtime)
    end = report["began"] + meta["duration"]
    assert started <= end <= time.time()
    assert meta["session_start"] in (int(report["began"]) - 1, int(report["began"]))
    assert meta["session_end"] == process["event_at"]
    # the session began inside init(), ``began`` once it returned (milliseconds later, under load
    # across a second's boundary): the end computed from it is late by as much
    assert meta["session_end"] in (int(end) - 1, int(end), int(end) + 1)

    build, deploy = sessions["build-000001"], sessions["deploy-000002"]
    for record, least in ((build, 0.3), (deploy, 0.2)):
        assert record["activity_type"] == "RUN TIME"
        assert record["meta"]["session_kind"] == "explicit" and record["meta"]["closed_by"] == "end"
        assert least <= record["meta"]["duration"] < least + 0.5, record["meta"]
        assert record["meta"]["process_session_id"] == meta["session_id"]
        assert record["meta"]["session_start"] <= record["meta"]["session_end"] == record["event_at"]
        assert record["meta"]["installation_id"] == meta["installation_id"]
    assert build["meta"]["session_end"] <= deploy["meta"]["session_start"] + 1
    # the crash journal of a process that exited normally is gone
    assert journal_files(state_dir) == []


def test_session_records_default_activity(make_agent, collector):
    agent = make_agent(sessions=True)
    with agent.session() as random_id:
        pass
    agent.shutdown(5)
    sessions = by_session_id(collector)
    assert {p["activity_type"] for p in sessions.values()} == {"SESSION"}
    assert is_uuid4(random_id) and sessions[random_id]["meta"]["session_kind"] == "explicit"


# -- explicit sessions: ids ------------------------------------------------------------------------

def test_session_id_rules(make_agent, collector):
    agent = make_agent(sessions=True)
    refused = [
        ("x" * 9, "9 characters"),
        ("y" * 65, "65 characters"),
        ("  \t short \n ", "5 characters once conditioned"),
        (1234567890123, "not a string"),
        (None, "not a string"),
    ]
    for session_id, why in refused:
        assert agent.start_session(session_id) is False, why
    assert agent.start_session("a" * 10) is True
    assert agent.start_session("b" * 64) is True
    # trimmed, whitespace other than spaces removed, inner spaces kept
    assert agent.start_session(" \t nightly\t build\n 42 \r\n") is True
    assert agent.status()["sessions"] == 4  # with the process session
    assert agent.start_session("a" * 10) is False  # already active
    assert agent.end_session("nightly build 42") is True
    assert agent.start_session("nightly build 42") is False  # ended ids are never reused
    assert agent.start_session("  nightly build 42\n") is False  # nor the same id written otherwise
    assert agent.end_session("nightly build 42") is False  # not active any more
    assert agent.end_session("never-started-1") is False  # unknown
    assert agent.end_session("short") is False  # not even a valid id
    assert agent.status()["dropped"].get("invalid") == len(refused) + 6
    assert agent.end_session("a" * 10) is True
    agent.shutdown(5)

    sessions = by_session_id(collector)
    assert sorted(sessions) == sorted(["a" * 10, "b" * 64, "nightly build 42", agent.process_session])
    assert sessions["a" * 10]["meta"]["closed_by"] == "end"
    assert sessions["b" * 64]["meta"]["closed_by"] == "exit"  # shutdown() closed it
    assert sessions["nightly build 42"]["meta"]["closed_by"] == "end"


@pytest.mark.parametrize("call, session_id", [
    ("start", "x" * 9),
    ("start", "y" * 65),
    ("start", 12345678901),
    ("start", "z" * 12 + "-dup"),
    ("end", "not-open-session"),
])
def test_strict_session_mistakes_raise(make_agent, call, session_id):
    agent = make_agent(sessions=True, strict=True)
    assert agent.start_session("z" * 12 + "-dup") is True
    with pytest.raises(ValueError):
        getattr(agent, call + "_session")(session_id)
    with pytest.raises(ValueError):
        with agent.session("q" * 9):
            pass


def test_a_refused_nested_scope_does_not_end_the_outer_session(make_agent, collector):
    """``with session(id)`` inside ``with session(id)``: the inner one is refused, and leaving
    it must not close the outer session, which is still running."""
    agent = make_agent(sessions=True)
    with agent.session("outer-session-1"):
        with agent.session("outer-session-1"):
            pass
        assert agent.status()["sessions"] == 2, "the outer session was ended by the refused inner one"
        time.sleep(0.3)
    assert agent.status()["sessions"] == 1
    assert agent.status()["dropped"].get("invalid") == 1  # one mistake, counted once
    agent.shutdown(5)
    outer = by_session_id(collector)["outer-session-1"]
    assert outer["meta"]["closed_by"] == "end" and outer["meta"]["duration"] >= 0.3


def test_shutdown_closes_open_sessions(make_agent, collector, state_dir):
    agent = make_agent(sessions=True, heartbeat_interval=1)
    assert agent.start_session("left-open-0001") is True
    assert wait_until(lambda: "left-open-0001" in "".join(journal_text(state_dir, n)
                                                           for n in journal_files(state_dir)))
    time.sleep(0.2)
    agent.shutdown(5)
    assert agent.status()["sessions"] == 0
    sessions = by_session_id(collector)
    assert sorted(sessions) == sorted(["left-open-0001", agent.process_session])
    for record in sessions.values():
        assert record["meta"]["closed_by"] == "exit" and record["meta"]["duration"] >= 0.2
    assert journal_files(state_dir) == []  # the sessions are queued: nothing left to recover
    assert agent.start_session("after-shutdown-1") is False


# -- the heartbeat and recovery ---------------------------------------------------------------------

def crashing_host(collector, state_dir, *explicit: str):
    """A host with a 1 s heartbeat that opens ``explicit`` sessions, prints its start and waits."""
    options = host_options(collector, state_dir, sessions=True, heartbeat_interval=1)
    return start_host(f"""
        import json, os, time, callhome
        callhome.init({options})
        began = time.time()
        for sid in {list(explicit)!r}:
            callhome.start_session(sid)
        print(json.dumps({{"began": began, "pid": os.getpid()}}), flush=True)
        time.sleep(600)
    """)


@pytest.mark.slow
def test_kill_9_loses_at_most_one_heartbeat(collector, state_dir, make_agent):
    host = crashing_host(collector, state_dir, "crash-job-0001")
    try:
        start = first_line(host)
        # killed just before its fourth heartbeat is due: it last wrote ~0.8 s ago
        time.sleep(max(start["began"] + 2.85 - time.time(), 0))
        assert host.poll() is None, host.communicate()
        killed_at = time.time()
        host.send_signal(signal.SIGKILL)
        host.wait(10)
    finally:
        stop(host)
    assert host.returncode == -signal.SIGKILL
    name = journal_of(state_dir, start["pid"])
    assert name, "the killed host left no journal"
    # and a copy as a recovery that died halfway leaves it (claimed: renamed with the claimer's
    # pid, the dead host's here): both are closed, and the deterministic event ids make the
    # second closing of each session the same record
    with open(os.path.join(journal_dir(state_dir), name), "rb") as f:
        data = f.read()
    with open(os.path.join(journal_dir(state_dir), f"{name}.closing-{start['pid']}"), "wb") as f:
        f.write(data)

    # The next process of the product closes the dead one's sessions at its last heartbeat. It is
    # a short run whose worker is stuck behind another process's lock (its CALL_HOME is due and
    # the state lock is held): its exit must do the recovery, and persist what it recovered.
    state_lock = FileLock(os.path.join(queue_dir(state_dir), "locks", "state.lock"))
    with state_lock:
        nxt = run_host(f"""
            import callhome
            callhome.init({host_options(collector, state_dir, sessions=True, call_home_interval=86400)})
        """)
    assert nxt.returncode == 0 and nxt.stderr == "", nxt.stderr
    assert journal_files(state_dir) == [], "the dead host's journal was not claimed, or the next one's was left"
    deliver(make_agent)

    recovered = [p for p in of_type(collector, "session") if p["meta"]["closed_by"] == "recovered"]
    assert len(recovered) == 2, of_type(collector, "session")
    assert collector.store.stats()["duplicates"] == 2  # each session closed twice, one record each
    process = next(p for p in recovered if p["meta"]["session_kind"] == "process")
    explicit = next(p for p in recovered if p["meta"]["session_kind"] == "explicit")
    assert explicit["meta"]["session_id"] == "crash-job-0001"
    end = start["began"] + process["meta"]["duration"]
    lost = killed_at - end
    print(f"\nkill -9 with a 1 s heartbeat: runtime lost {lost:.3f} s")
    assert -0.05 <= lost <= 1.0 + 0.3, f"lost {lost:.3f} s of runtime with a 1 s heartbeat"
    assert process["meta"]["duration"] >= 1.5
    assert process["event_at"] == process["meta"]["session_end"] == explicit["meta"]["session_end"]
    assert process["meta"]["session_end"] in (int(end), int(end) + 1)
    # and the next process's own session ended normally
    others = [p for p in of_type(collector, "session") if p["meta"]["closed_by"] != "recovered"]
    assert [p["meta"]["closed_by"] for p in others] == ["exit"]


@pytest.mark.slow
def test_two_processes_after_a_crash_recover_each_session_once(collector, state_dir, make_agent):
    host = crashing_host(collector, state_dir, "crashed-job-01")
    try:
        start = first_line(host)
        assert wait_until(lambda: "crashed-job-01" in journal_text(state_dir, journal_of(state_dir, start["pid"])
                                                                     or "-"), timeout=20)
        host.send_signal(signal.SIGKILL)
        host.wait(10)
    finally:
        stop(host)
    # as if 150 such processes had crashed: copies of its journal (2 sessions) under other names,
    # so that the two processes below spend long enough claiming for their claims to overlap
    name = journal_of(state_dir, start["pid"])
    with open(os.path.join(journal_dir(state_dir), name), "rb") as f:
        data = f.read()
    for i in range(149):
        with open(os.path.join(journal_dir(state_dir), f"{start['pid']}-{i:08x}.json"), "wb") as f:
            f.write(data)

    # two processes of the product start at the same moment and both look for abandoned journals
    # (offline, so that what they queued is sent once, below, and counted exactly)
    at = time.time() + 1.5
    options = host_options(collector, state_dir, sessions=True, endpoint=closed_port_url())
    code = f"""
        import time, callhome
        import callhome._worker.worker, requests  # imported already (the worker's own imports): a tight start
        time.sleep(max({at!r} - time.time(), 0))
        callhome.init({options})
        time.sleep(0.2)
    """
    racers = [start_host(code) for _ in range(2)]
    for racer in racers:
        assert racer.wait(60) == 0, racer.communicate()
        assert racer.stderr.read() == ""
    assert journal_files(state_dir) == []
    deliver(make_agent)

    recovered = [p for p in of_type(collector, "session") if p["meta"]["closed_by"] == "recovered"]
    assert sorted(p["meta"]["session_kind"] for p in recovered) == ["explicit", "process"]
    # 150 journals x 2 sessions sent, each session's copies being one record at the collector:
    # a journal claimed by both processes would make more
    assert collector.store.stats()["duplicates"] == 150 * 2 - 2, "a journal was recovered twice (or lost)"
    assert [p["meta"]["closed_by"] for p in of_type(collector, "session")].count("exit") == 2


def another_process_starts_beside(live, session_id: str, collector, state_dir) -> int:
    """Once ``live`` (a host that printed its pid, then waits for a line) journals ``session_id``,
    another process of the product starts: the live journal must stay unclaimed. Then ``live``
    ends its session and exits. Returns ``live``'s pid."""
    try:
        pid = first_line(live)["pid"]
        assert wait_until(lambda: session_id in journal_text(state_dir, journal_of(state_dir, pid) or "-"))
        name = journal_of(state_dir, pid)
        other = run_host(f"""
            import callhome
            callhome.init({host_options(collector, state_dir, sessions=True)})
        """)
        assert other.returncode == 0 and other.stderr == "", other.stderr
        assert journal_of(state_dir, pid) == name, "a live process's journal was claimed"
        live.stdin.write("go\n")
        live.stdin.flush()
        assert live.wait(30) == 0, live.communicate()
    finally:
        stop(live)
    return pid


def test_a_live_process_journal_is_never_claimed(collector, state_dir, make_agent):
    options = host_options(collector, state_dir, sessions=True, heartbeat_interval=1)
    live = start_host(f"""
        import glob, json, os, sys, time, callhome
        callhome.init({options})
        began = time.monotonic()
        callhome.start_session("live-session-01")
        print(json.dumps({{"pid": os.getpid()}}), flush=True)
        sys.stdin.readline()
        # a heartbeat after the other process ran (it would notice a stolen journal), and a session
        # long enough for the duration checked below; waited for, within a deadline
        read_at, deadline = time.time(), time.monotonic() + 30
        [journal] = glob.glob(os.path.join({journal_dir(state_dir)!r}, f"{{os.getpid()}}-*.json"))
        while (os.stat(journal).st_mtime <= read_at or time.monotonic() - began < 1.2) \\
                and time.monotonic() < deadline:
            time.sleep(0.02)
        assert callhome.end_session("live-session-01")
    """, stdin=subprocess.PIPE)
    another_process_starts_beside(live, "live-session-01", collector, state_dir)
    deliver(make_agent)
    records = of_type(collector, "session")
    assert sorted(p["meta"]["closed_by"] for p in records) == ["end", "exit", "exit"], records
    assert collector.store.stats()["duplicates"] == 0
    assert by_session_id(collector)["live-session-01"]["meta"]["duration"] >= 1.2


def _pid_namespaces_work() -> bool:
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(["unshare", "-pf", "--mount-proc", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(not _pid_namespaces_work(), reason="needs root and unshare(1) for a PID namespace")
def test_a_live_process_of_another_pid_namespace_keeps_its_journal(collector, state_dir, make_agent):
    """Two containers share the product's directory: a pid in the other one's journal names no
    process here (or another one). Only its heartbeat tells whether it is alive."""
    outside = next(pid for pid in range(100, 30000) if not os.path.exists(f"/proc/{pid}"))
    options = host_options(collector, state_dir, sessions=True, heartbeat_interval=1)
    code = textwrap.dedent(f"""
        import json, os, sys, time, callhome
        callhome.init({options})
        callhome.start_session("container-session")
        print(json.dumps({{"pid": os.getpid()}}), flush=True)
        sys.stdin.readline()
        assert callhome.end_session("container-session")
    """)
    # in a new PID namespace, a shell starts processes until the host gets a pid free out here
    script = f'i=2; while [ $i -lt {outside} ]; do /bin/true; i=$((i+1)); done; "$0" -c "$1"'
    env = dict(os.environ, PYTHONPATH=ROOT)
    live = subprocess.Popen(["unshare", "-pf", "--mount-proc", "sh", "-c", script, sys.executable, code],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = another_process_starts_beside(live, "container-session", collector, state_dir)
    assert pid == outside and not os.path.exists(f"/proc/{pid}"), pid
    deliver(make_agent)
    assert by_session_id(collector)["container-session"]["meta"]["closed_by"] == "end"
    assert not [p for p in of_type(collector, "session") if p["meta"]["closed_by"] == "recovered"]


def test_a_stale_journal_left_under_this_very_pid_is_recovered(collector, state_dir, make_agent):
    """pids repeat (every container's entry point is pid 1): a journal an earlier, crashed run
    left under the pid this process now has is abandoned once its heartbeat is stale."""
    options = host_options(collector, state_dir, sessions=True, heartbeat_interval=1)
    host = run_host(f"""
        import json, os, time, callhome
        folder = os.path.join({state_dir!r}, {PRODUCT!r}, "sessions")
        os.makedirs(folder)
        beat = time.time() - 3600
        with open(os.path.join(folder, "%d-0badc0de.json" % os.getpid()), "w") as f:
            json.dump({{"pid": os.getpid(), "beat": beat,
                       "sessions": {{"earlier-run-session": ["explicit", beat - 100]}}}}, f)
        callhome.init({options})
    """)
    assert host.returncode == 0 and host.stderr == "", host.stderr
    deliver(make_agent)
    earlier = by_session_id(collector).get("earlier-run-session")
    assert earlier is not None, "the earlier run's session was never closed"
    assert earlier["meta"]["closed_by"] == "recovered" and earlier["meta"]["duration"] == 100
    assert journal_files(state_dir) == []


# -- off, opted out, forked ---------------------------------------------------------------------------

def test_sessions_false_sends_no_session_and_keeps_no_journal(collector, state_dir, make_agent):
    host = run_host(f"""
        import callhome
        callhome.init({host_options(collector, state_dir, sessions=False)})
        with callhome.session("explicit-while-off"):
            callhome.track("work")
        print(callhome.start_session("another-while-off"), callhome.end_session("another-while-off"))
    """)
    assert host.returncode == 0 and host.stderr == "", host.stderr
    assert host.stdout.split() == ["False", "False"]
    assert not os.path.exists(journal_dir(state_dir))
    deliver(make_agent)
    assert [p["activity_type"] for p in payloads(collector)] == ["work"]
    assert of_type(collector, "session") == []


def test_opted_out_host_creates_nothing(collector, state_dir):
    host = run_host(f"""
        import callhome
        callhome.init({host_options(collector, state_dir, sessions=True, heartbeat_interval=1)})
        with callhome.session("opted-out-session"):
            callhome.track("work")
        print(callhome.status()["sessions"])
    """, env={"DO_NOT_TRACK": "1"})
    assert host.returncode == 0 and host.stderr == "", host.stderr
    assert host.stdout.strip() == "0"
    assert not os.path.exists(state_dir), os.listdir(state_dir)
    assert collector.store.count() == 0


def test_a_session_opened_by_a_child_that_tracks_nothing_else_is_kept(collector, state_dir, make_agent):
    if not hasattr(os, "fork"):
        pytest.skip("no fork() on this platform")
    host = run_host(f"""
        import os, sys, time, warnings, callhome
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with a thread running (3.12+)
        callhome.init({host_options(collector, state_dir, sessions=True)})
        pid = os.fork()
        if pid == 0:
            callhome.start_session("child-open-session")  # the child's first and only call
            time.sleep(1.5)
            sys.exit(0)
        time.sleep(1.0)
        print(any(name.startswith(f"{{pid}}-") for name in os.listdir({journal_dir(state_dir)!r})))
        os.waitpid(pid, 0)
    """)
    assert host.returncode == 0, host.stderr
    assert host.stdout.strip() == "True"  # journalled while open: a crash would not lose it
    deliver(make_agent)
    ended = {p["meta"]["session_id"]: p["meta"]["closed_by"] for p in of_type(collector, "session")}
    assert ended.get("child-open-session") == "exit", ended


def test_a_forked_child_has_no_process_session_of_its_own(collector, state_dir, make_agent):
    if not hasattr(os, "fork"):
        pytest.skip("no fork() on this platform")
    host = run_host(f"""
        import json, os, sys, time, warnings, callhome
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with a thread running (3.12+)
        callhome.init({host_options(collector, state_dir, sessions=True)})
        pid = os.fork()
        if pid == 0:
            callhome.track("child-work")
            with callhome.session("child-explicit-1"):
                pass
            sys.exit(0)  # a normal interpreter exit: the child's exit hooks run
        _, status = os.waitpid(pid, 0)
        time.sleep(0.5)
        callhome.track("parent-work")
        print(json.dumps({{"child_status": status}}))
    """)
    assert host.returncode == 0, host.stderr
    assert json.loads(host.stdout)["child_status"] == 0
    deliver(make_agent)
    assert sorted(p["activity_type"] for p in payloads(collector) if "record_type" not in p["meta"]) == [
        "child-work", "parent-work"]
    sessions = of_type(collector, "session")
    kinds = sorted((p["meta"]["session_kind"], p["meta"]["closed_by"]) for p in sessions)
    assert kinds == [("explicit", "end"), ("process", "exit")], sessions
    process = next(p for p in sessions if p["meta"]["session_kind"] == "process")
    assert process["meta"]["duration"] >= 0.5, "the child closed its parent's session"
    assert collector.store.stats()["duplicates"] == 0
    assert journal_files(state_dir) == []
