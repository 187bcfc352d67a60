"""Host safety: what a host's own process structure does to callhome, and what callhome must
never do to the host — short runs that never flush, ``kill -9``, ``fork()`` (bare, a
``multiprocessing`` pool, a pre-forking server), signal handlers that track, and ``track()``
after callhome's exit hook ran.

Real host processes, real signals and forks, a real collector on loopback; delivery is left to
the product's detached sender (no test flushes for the host). Hosts report through files, so
that their stdout and stderr can be required to stay empty.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from callhome._lock import is_held

from conftest import host_options, kill_9_when, listing, queue_dir, run_host, start_host, wait_until

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork and POSIX signals")

# -- helpers -------------------------------------------------------------------------------------


def received_ids(collector) -> list:
    return [e["event_id"] for e in collector.store.events(limit=100000)]


def sender_lock(state_dir: str) -> str:
    return os.path.join(queue_dir(state_dir), "locks", "sender.lock")


def sender_alive(state_dir: str) -> bool:
    return is_held(sender_lock(state_dir))


def wait_for_sender_exit(state_dir: str, timeout: float = 30) -> None:
    """The product's sender exits once idle (``CALLHOME_SENDER_IDLE=2`` in the suite)."""
    assert wait_until(lambda: not sender_alive(state_dir), timeout=timeout, interval=0.1), \
        "the sender never went idle"


def ids_in(folder, prefix: str) -> dict:
    """``{file name: [ids]}`` of the JSON lists hosts wrote as ``<prefix>*.json`` in ``folder``."""
    found = {}
    for name in sorted(os.listdir(folder)):
        if name.startswith(prefix) and name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                found[name] = json.load(f)
    return found


def arrives(collector, state_dirs, wanted: set, timeout: float = 30) -> set:
    """The ids of ``wanted`` never stored: once all are, once nothing is left to happen (for 2 s
    no sender alive and nothing in ``ready/`` or ``inflight/`` of any of ``state_dirs``: every
    host of the test has exited by then), or after ``timeout``."""
    state_dirs = [state_dirs] if isinstance(state_dirs, str) else state_dirs
    quiet_since = [None]

    def settled() -> bool:
        if wanted <= set(received_ids(collector)):
            return True
        if any(sender_alive(d) or listing(d, "ready") or listing(d, "inflight") for d in state_dirs):
            quiet_since[0] = None
            return False
        quiet_since[0] = quiet_since[0] or time.monotonic()
        return time.monotonic() - quiet_since[0] > 2

    wait_until(settled, timeout=timeout, interval=0.1)
    return wanted - set(received_ids(collector))


#: The forking hosts below wait for their children this long at most, then kill the ones left
#: (a child stuck on a lock inherited from the parent hangs forever).
CHILD_WAIT = 10

#: The forking hosts' ``reap({pid: label})``: ``{label: exit code}``, or "hung" for a child
#: killed after CHILD_WAIT seconds. Indented as the hosts' code is (``run_host`` dedents it).
REAP = f"""def reap(children):
            codes = {{}}
            deadline = time.monotonic() + {CHILD_WAIT}
            while children and time.monotonic() < deadline:
                for pid in list(children):
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        codes[children.pop(pid)] = os.waitstatus_to_exitcode(status)
                time.sleep(0.01)
            for pid, label in children.items():
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                codes[label] = "hung"
            return codes"""


# -- 1. short runs ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_short_runs_that_never_flush_deliver_every_event_once(collector, state_dir, tmp_path):
    """20 runs in a row, each tracking twice and exiting at once, against a server that takes
    0.3 s per request: the runs' exits never wait for it, and the product's sender delivers
    all 40 events, each with one request, soon after the last run."""
    collector.app.fail_all("hang:0.3")
    options = host_options(collector, state_dir)
    tracked = []
    for run in range(20):
        path = tmp_path / f"run-{run}.json"
        result = run_host(f"""
            import json, callhome
            callhome.init({options})
            ids = [callhome.track("secondary1", meta={{"run": {run}, "i": i}}) for i in range(2)]
            with open({str(path)!r}, "w") as f:
                json.dump(ids, f)
        """)
        assert result.returncode == 0
        assert result.stdout == "" and result.stderr == "", (run, result.stdout, result.stderr)
        tracked += json.loads(path.read_text())
    last_run = time.monotonic()
    assert len(set(tracked)) == 40 and None not in tracked

    missing = arrives(collector, state_dir, set(tracked), timeout=30)
    took = time.monotonic() - last_run
    assert not missing, f"{len(missing)} of 40 events never arrived ({collector.store.count()} stored)"
    wait_for_sender_exit(state_dir)  # anything still to come would come now
    posts = collector.app.requests["/api/product/usage"]
    print(f"\n20 short runs: all 40 events stored {took:.1f}s after the last run; {posts} requests, "
          f"{collector.store.stats()['duplicates']} duplicates")
    assert sorted(received_ids(collector)) == sorted(tracked)
    assert collector.store.stats()["duplicates"] == 0
    assert posts == 40, f"{posts} requests for 40 events"
    assert listing(state_dir, "ready") == [] and listing(state_dir, "inflight") == []


@pytest.mark.slow
def test_a_run_that_tracks_once_and_exits_at_once_gets_its_event_delivered(collector, tmp_path):
    """The shortest run there is (init, one track(), return), 30 times, ten at once, each with a product
    directory of its own (so that no later run adopts what one leaves): each event is delivered
    by a sender its own run started."""
    dirs, tracked = [], {}
    for batch in range(3):  # ten at a time
        hosts = []
        for run in range(batch * 10, batch * 10 + 10):
            dirs.append(str(tmp_path / f"run-{run:02d}"))
            hosts.append(start_host(f"""
                import callhome
                callhome.init({host_options(collector, dirs[-1])})
                print(callhome.track("secondary1", meta={{"run": {run}}}))
            """))
        for data_dir, host in zip(dirs[-10:], hosts):
            stdout, stderr = host.communicate(timeout=60)
            assert host.returncode == 0 and stderr == "", stderr
            tracked[stdout.strip()] = data_dir
    missing = arrives(collector, dirs, set(tracked))
    stranded = {os.path.basename(tracked[event_id]): listing(tracked[event_id], "tmp")
                for event_id in missing}
    assert not missing, f"{len(missing)} of 30 runs' events never left their host: {stranded}"


# -- 2. kill -9 ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_kill_9_at_1000_events_per_second_with_a_slow_server(collector, state_dir, tmp_path):
    """A host tracking ~1,000 events/s is SIGKILLed about 2.5 s in while the server answers only
    after 2 s: the sender it started survives it and, once the server is fixed, delivers what
    reached the disk. At most 100 of the ids track() returned are lost (the last 50 ms of
    buffer), at most 3 are delivered twice."""
    collector.app.fail_all("hang:2")
    tracked_path = tmp_path / "tracked.txt"
    host = start_host(f"""
        import os, time, callhome
        callhome.init({host_options(collector, state_dir, timeout=30)})
        out = os.open({str(tracked_path)!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        began, seq = time.monotonic(), 0
        while True:
            lines = []
            for _ in range(10):
                lines.append("%d %s\\n" % (seq, callhome.track("secondary1", meta={{"seq": seq}})))
                seq += 1
            os.write(out, "".join(lines).encode())  # unbuffered: what the kill leaves is what was returned
            pause = began + seq / 1000 - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    """)
    assert wait_until(lambda: tracked_path.exists() and tracked_path.stat().st_size, timeout=30), \
        host.communicate(timeout=10) if host.poll() is not None else "the host never tracked"
    killed_at = time.monotonic() + 2.4
    kill_9_when(host, lambda: time.monotonic() >= killed_at, "never", timeout=10)
    stdout, stderr = host.communicate()
    assert host.returncode == -signal.SIGKILL
    assert stdout == "" and stderr == "", stderr
    assert sender_alive(state_dir), "no sender outlived the host: nothing would deliver its queue"

    lines = [line.split() for line in tracked_path.read_text().splitlines()]
    tracked = {event_id: int(seq) for seq, event_id in lines}
    delivered_before_fix = collector.store.count()
    assert len(tracked) >= 1000, f"only {len(tracked)} events tracked before the kill"
    assert delivered_before_fix < len(tracked) // 2, "the slow server did not hold anything back"

    collector.app.fail_all(None)
    # no other process of the product runs: what arrives from now on comes from the surviving sender
    wait_for_sender_exit(state_dir, timeout=60)
    delivered = received_ids(collector)
    duplicates = collector.store.stats()["duplicates"]
    lost = set(tracked) - set(delivered)
    print(f"\nkill -9 at 1000/s: tracked {len(tracked)}, delivered before the fix {delivered_before_fix}, "
          f"in the end {len(delivered)}, lost {len(lost)} (seq {sorted(tracked[i] for i in lost)[:3]}...), "
          f"duplicates {duplicates}")
    assert len(lost) <= 100, f"{len(lost)} returned ids lost"
    assert duplicates <= 3, f"{duplicates} events delivered twice"
    # what the dead host had written (its open batch, say) was adopted, not left in tmp/
    left = []
    for name in listing(state_dir, "tmp"):
        with open(os.path.join(queue_dir(state_dir), "tmp", name), "rb") as f:
            left.append(f.read())
    stranded = [event_id for event_id in lost if any(event_id.encode() in data for data in left)]
    assert not stranded, f"{len(stranded)} events stay in tmp/: {listing(state_dir, 'tmp')}"
    # every stored event is one distinct track() call of this host
    seqs = [e["payload"]["meta"]["seq"] for e in collector.store.events(limit=100000)]
    assert len(seqs) == len(set(seqs))
    assert all(0 <= s < len(tracked) + 10 for s in seqs)
    assert listing(state_dir, "ready") == [] and listing(state_dir, "inflight") == []


# -- 3. fork ---------------------------------------------------------------------------------------

#: Milliseconds after the parent's first track() (which starts its worker thread, then the
#: sender) at which a child is forked: while the worker imports its modules, and later.
FORK_DELAYS = (0, 5, 10, 20, 35, 50, 75, 100, 125, 150, 200, 250, 300)


#: How long after its first track() a forking host also watches for imports in callhome's threads.
WATCH_IMPORTS = 1.5


def forking_host(collector, state_dir, out, sender: str, watch_longest: float = WATCH_IMPORTS) -> str:
    """A host forking one child per FORK_DELAYS entry, and one each time it sees a module being
    imported (by a thread of callhome's: the host imports nothing meanwhile) during the first
    WATCH_IMPORTS seconds (``watch_longest`` while it has seen none), up to 8. Each child imports
    ``requests`` itself (as a forked web worker would), tracks three events and exits through
    ``sys.exit``."""
    options = host_options(collector, state_dir, sender=sender)
    return f"""
        import logging  # as nearly every host has (one that has not: test_a_fork_right_after_...)
        import json, os, sys, time, callhome
        {REAP}

        def importing():
            for name, module in list(sys.modules.items()):
                if getattr(getattr(module, "__spec__", None), "_initializing", False):
                    return name
            return None

        def child(label):
            import requests  # a lock the parent's threads held at the fork would hang this
            ids = [callhome.track("child", meta={{"label": label, "i": i}}) for i in range(3)]
            with open(os.path.join({str(out)!r}, "child-%s.json" % label), "w") as f:
                json.dump(ids, f)
            sys.exit(0)

        callhome.init({options})
        began = time.monotonic()
        parent = [callhome.track("parent")]
        children, schedule, seen = {{}}, list({FORK_DELAYS!r}), set()
        while schedule or time.monotonic() - began < ({WATCH_IMPORTS} if seen else {watch_longest}):
            module = importing() if len(seen) < 8 else None
            if schedule and (time.monotonic() - began) * 1000 >= schedule[0]:
                label = "%03d" % schedule.pop(0)
            elif module and module not in seen:
                label = "while-importing-%s-at-%dms" % (module, (time.monotonic() - began) * 1000)
                seen.add(module)
            else:
                time.sleep(0.0005)
                continue
            pid = os.fork()
            if pid == 0:
                child(label)
            children[pid] = label
        parent.append(callhome.track("parent"))
        with open(os.path.join({str(out)!r}, "parent.json"), "w") as f:
            json.dump({{"ids": parent, "codes": reap(children)}}, f)
    """


def check_forked_children(result, out) -> set:
    """Every child exited 0 and wrote its ids, none hung, nobody printed; all the ids tracked."""
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "parent.json").read_text())
    codes = report["codes"]
    hung = sorted(label for label, code in codes.items() if code == "hung")
    assert not hung, f"children hung, forked (ms after the first track()): {hung} of {sorted(codes)}"
    assert set(codes.values()) == {0}, codes
    assert result.stdout == "" and result.stderr == "", result.stderr
    assert {"%03d" % delay for delay in FORK_DELAYS} <= set(codes)
    children = ids_in(out, "child-")
    assert sorted(children) == sorted(f"child-{label}.json" for label in codes)
    ids = set(report["ids"]).union(*children.values())
    assert len(ids) == 2 + 3 * len(codes) and None not in ids
    return ids


#: Python 3.12+ warns at an os.fork() of a process that has threads (callhome's worker is one, as
#: is any SDK's): Python's warning about the host's own fork, shown for ``__main__`` code only.
#: These hosts fork from ``__main__``; they silence that one warning and nothing else.
FORKING = {"PYTHONWARNINGS": "ignore:This process:DeprecationWarning"}


def test_children_forked_at_any_moment_after_init_deliver(collector, state_dir, tmp_path):
    """Children forked 0–300 ms after the parent's first event — while its worker thread is still
    importing, while it starts the sender, later — import requests, track and exit normally:
    none hangs or prints, and the product's sender delivers every child's events."""
    result = run_host(forking_host(collector, state_dir, tmp_path, "process"), timeout=90, env=FORKING)
    ids = check_forked_children(result, tmp_path)
    missing = arrives(collector, state_dir, ids)
    assert not missing, f"{len(missing)} of {len(ids)} events never arrived"
    wait_for_sender_exit(state_dir)
    assert collector.store.stats()["duplicates"] == 0


def test_children_forked_at_any_moment_after_init_with_the_thread_sender(
        collector, state_dir, tmp_path, make_agent):
    """The same with ``sender="thread"`` (the fallback of frozen apps, uWSGI and mod_wsgi, which
    pre-fork), where the sender thread imports its transport after the worker is ready. A thread sender
    delivers only while its host lives: a later process delivers the rest."""
    result = run_host(forking_host(collector, state_dir, tmp_path, "thread", watch_longest=4), timeout=90,
                      env=FORKING)
    ids = check_forked_children(result, tmp_path)
    agent = make_agent()
    agent.flush(10)
    missing = arrives(collector, state_dir, ids, timeout=10)
    assert not missing, f"{len(missing)} of {len(ids)} events never arrived"


def test_a_fork_right_after_the_first_event_prints_nothing(collector, state_dir, tmp_path):
    """A host that has not imported logging itself forks right after its first track()."""
    result = run_host(f"""
        import json, os, sys, time, callhome
        {REAP}

        callhome.init({host_options(collector, state_dir)})
        parent = callhome.track("parent")
        pid = os.fork()
        if pid == 0:
            with open({str(tmp_path / "child.json")!r}, "w") as f:
                json.dump([callhome.track("child")], f)
            sys.exit(0)
        assert reap({{pid: "child"}}) == {{"child": 0}}
        with open({str(tmp_path / "parent.json")!r}, "w") as f:
            json.dump([parent], f)
    """, env=FORKING)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    ids = set(json.loads((tmp_path / "parent.json").read_text()))
    ids |= set(json.loads((tmp_path / "child.json").read_text()))
    assert not arrives(collector, state_dir, ids)
    assert result.stderr == "", result.stderr


def test_a_multiprocessing_fork_pool_delivers_every_task_event(collector, state_dir, tmp_path):
    """A fork Pool created right after init(); its tasks track; close() and join(). Then one whose
    workers end after one task (``maxtasksperchild=1``), right after their track()."""
    result = run_host(f"""
        import logging  # (the stderr noise of a fork during the worker's imports is its own test)
        import json, multiprocessing, callhome

        def task(i):
            return callhome.track("pool-task", meta={{"i": i}})

        callhome.init({host_options(collector, state_dir)})
        parent = callhome.track("parent")
        fork = multiprocessing.get_context("fork")
        pool = fork.Pool(4)
        tasks = pool.map(task, range(40), chunksize=1)
        pool.close()
        pool.join()
        # a worker per task: each ends right after its track()
        pool = fork.Pool(2, maxtasksperchild=1)
        tasks += pool.map(task, range(40, 48), chunksize=1)
        pool.close()
        pool.join()
        with open({str(tmp_path / "ids.json")!r}, "w") as f:
            json.dump({{"parent": parent, "tasks": tasks}}, f)
    """, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == "", result.stderr
    report = json.loads((tmp_path / "ids.json").read_text())
    tasks = report["tasks"]
    assert None not in tasks and len(set(tasks)) == 48
    missing = arrives(collector, state_dir, set(tasks) | {report["parent"]})
    assert not missing, f"{len(missing)} of 48 pool tasks' events never arrived: tasks " \
        f"{sorted(i for i, event_id in enumerate(tasks) if event_id in missing)}"


def test_a_pre_forking_server_delivers_every_worker_event(collector, state_dir, tmp_path):
    """gunicorn's shape: the arbiter inits and tracks, forks 4 workers that each track for a while
    (one event every 10 ms for 0.5 s) and leave with sys.exit; the arbiter reaps them and exits."""
    result = run_host(f"""
        import logging  # a server has it imported before it forks
        import json, os, sys, time, callhome
        {REAP}

        def worker(number):
            ids = []
            until = time.monotonic() + 0.5
            while time.monotonic() < until:
                ids.append(callhome.track("request", meta={{"worker": number}}))
                time.sleep(0.01)
            with open(os.path.join({str(tmp_path)!r}, "worker-%d.json" % number), "w") as f:
                json.dump(ids, f)
            sys.exit(0)

        callhome.init({host_options(collector, state_dir)})
        arbiter = [callhome.track("boot")]
        workers = {{}}
        for number in range(4):
            pid = os.fork()
            if pid == 0:
                worker(number)
            workers[pid] = number
        arbiter.append(callhome.track("workers-started"))
        codes = reap(workers)
        with open(os.path.join({str(tmp_path)!r}, "arbiter.json"), "w") as f:
            json.dump({{"ids": arbiter, "codes": codes}}, f)
    """, env=FORKING, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == "", result.stderr
    arbiter = json.loads((tmp_path / "arbiter.json").read_text())
    assert arbiter["codes"] == {str(n): 0 for n in range(4)}, arbiter["codes"]
    workers = ids_in(tmp_path, "worker-")
    assert len(workers) == 4 and all(len(ids) >= 10 for ids in workers.values()), workers
    ids = set(arbiter["ids"]).union(*workers.values())
    assert None not in ids and len(ids) == 2 + sum(map(len, workers.values()))
    missing = arrives(collector, state_dir, ids)
    assert not missing, f"{len(missing)} of {len(ids)} events never arrived"
    wait_for_sender_exit(state_dir)
    assert collector.store.stats()["duplicates"] == 0


# -- 4. signals ------------------------------------------------------------------------------------

#: The signalling process: SIGUSR1 to the host every 5 ms for 4 s.
PESTER = ("import os, signal, sys, time\n"
          "until = time.monotonic() + 4\n"
          "while time.monotonic() < until:\n"
          "    os.kill(int(sys.argv[1]), signal.SIGUSR1)\n"
          "    time.sleep(0.005)\n")

#: Longest the main loop may go without an iteration; a watchdog ends a host stalled for 2 s.
MAX_GAP = 1.0


def signalled_host(collector, state_dir, out, **options) -> str:
    """A host whose SIGUSR1 handler tracks, pestered from another process for 4 s while its main
    thread loops inside callhome (a track() every millisecond, count() and status() in between);
    it reports its iterations, longest gap and counts in ``out``. A watchdog thread reports a main
    thread stalled for 2 s (with every thread's stack) and ends the host, so a deadlock fails fast."""
    return f"""
        import faulthandler, json, os, signal, subprocess, sys, threading, time, callhome
        callhome.init({host_options(collector, state_dir, **options)})
        handled, tracked = [], []

        def on_usr1(signum, frame):
            handled.append(callhome.track("signal"))

        signal.signal(signal.SIGUSR1, on_usr1)
        last = [time.monotonic()]

        def watchdog():
            while True:
                time.sleep(0.1)
                if time.monotonic() - last[0] > 2:
                    with open({str(out / "stalled.txt")!r}, "w") as f:
                        faulthandler.dump_traceback(f, all_threads=True)
                    os._exit(3)

        threading.Thread(target=watchdog, daemon=True).start()
        pester = subprocess.Popen([sys.executable, "-c", {PESTER!r}, str(os.getpid())])
        began = last_track = last[0]
        longest, iterations = 0.0, 0
        while last[0] - began < 4.3:
            if last[0] - last_track >= 0.001:
                tracked.append(callhome.track("main"))
                last_track = last[0]
            callhome.count("main-loop")
            callhome.status()
            iterations += 1
            now = time.monotonic()
            longest = max(longest, now - last[0])
            last[0] = now
        pester.wait(30)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        last[0] = float("inf")  # the watchdog's job is done
        status = callhome.status()
        with open({str(out / "report.json")!r}, "w") as f:
            json.dump({{"iterations": iterations, "longest": longest, "handled": handled, "tracked": tracked,
                       "accepted": status["accepted"], "dropped": status["dropped"]}}, f)
    """


def check_signalled_host(result, collector, state_dir, out) -> None:
    stalled = out / "stalled.txt"
    assert not stalled.exists(), "the main thread stalled:\n" + stalled.read_text()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == "", result.stderr
    report = json.loads((out / "report.json").read_text())
    handled, tracked = report["handled"], report["tracked"]
    print(f"\nsignals: {len(handled)} handler calls, {report['iterations']} main iterations "
          f"({len(tracked)} events), longest gap {report['longest'] * 1000:.0f} ms")
    assert report["longest"] < MAX_GAP, f"the main thread stalled for {report['longest']:.2f}s"
    assert len(handled) >= 100, "too few signals were handled for the test to prove anything"
    assert None not in handled and None not in tracked
    assert report["accepted"] == len(handled) + len(tracked), report
    assert report["dropped"] == {}, report["dropped"]
    missing = arrives(collector, state_dir, set(handled) | set(tracked))
    assert not missing, f"{len(missing)} events never arrived"


def test_a_signal_handler_that_tracks_never_stalls_the_host(collector, state_dir, tmp_path):
    started = time.monotonic()
    result = run_host(signalled_host(collector, state_dir, tmp_path), timeout=60)
    elapsed = time.monotonic() - started
    check_signalled_host(result, collector, state_dir, tmp_path)
    assert elapsed < 15, f"the host took {elapsed:.1f}s for a 4.3 s loop"


def test_a_signal_handler_that_tracks_an_aggregated_activity_never_stalls_the_host(collector, state_dir,
                                                                                   tmp_path):
    result = run_host(signalled_host(collector, state_dir, tmp_path, activity_modes={"signal": "both"}),
                      timeout=60)
    check_signalled_host(result, collector, state_dir, tmp_path)


# -- 5. after exit ---------------------------------------------------------------------------------

#: The late caller of the hosts below: track() once, time it, write what came of it to
#: ``<out>/<name>.json``. What it uses is bound at definition: during finalization __main__'s
#: globals, builtins among them, may be gone.
LATE = """def late(name, agent, clock=time.monotonic, dumps=json.dumps, join=os.path.join, open=open):
            began = clock()
            result = agent.track("late", meta={{"from": name}})
            took = clock() - began
            # bytes: at the end of finalization Python 3.9 can no longer look up a text file's codec
            with open(join({out!r}, name + ".json"), "wb") as f:
                report = {{"result": result, "took": took, "dropped": agent.status()["dropped"]}}
                f.write(dumps(report).encode("utf-8"))"""


def late_reports(folder, *names) -> dict:
    reports = {}
    for name in names:
        path = folder / f"{name}.json"
        assert path.exists(), f"the late call from {name} never ran (or failed silently)"
        reports[name] = json.loads(path.read_text())
    return reports


def test_track_after_the_exit_hook_is_refused_silently_and_counted(collector, state_dir, tmp_path):
    """An atexit handler registered before init() (so it runs after callhome's hook), and the
    __del__ of a module global and of a reference cycle (collected at interpreter exit) call
    track(): none blocks or prints, each is refused and counted as ``after_exit``."""
    started = time.monotonic()
    result = run_host(f"""
        import atexit, gc, json, os, time
        {LATE.format(out=str(tmp_path))}

        atexit.register(lambda: late("atexit", callhome._default))  # before init: runs after callhome's hook
        import callhome
        callhome.init({host_options(collector, state_dir)})

        class Late:
            def __init__(self, name):
                self.name, self.agent, self.late = name, callhome._default, late

            def __del__(self):
                self.late(self.name, self.agent)

        gc.disable()  # the cycle is collected at interpreter exit, not by a collection before
        keeper = Late("del-global")
        cycle = Late("del-cycle")
        cycle.me = cycle
        del cycle
        callhome.track("main")  # starts the worker, and with it callhome's exit hook
    """, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 0
    assert result.stdout == "" and result.stderr == "", result.stderr
    assert elapsed < 5, f"the host took {elapsed:.1f}s"

    reports = late_reports(tmp_path, "atexit", "del-global", "del-cycle")
    print(f"\nafter exit: host {elapsed:.2f}s; " + ", ".join(
        f"{name}: track() took {r['took'] * 1000:.2f} ms, after_exit {r['dropped'].get('after_exit')}"
        for name, r in reports.items()))
    for name, report in reports.items():
        assert report["result"] is None, f"a track() from {name} was accepted after the exit hook"
        assert report["took"] < 0.5, f"a track() from {name} took {report['took']:.2f}s"
        assert set(report["dropped"]) == {"after_exit"}, (name, report["dropped"])
    assert reports["atexit"]["dropped"]["after_exit"] == 1
    # the two __del__ run later, in either order: each sees its own refusal and the atexit one
    assert sorted(r["dropped"]["after_exit"] for name, r in reports.items() if name != "atexit") == [2, 3]


def test_a_daemon_thread_tracking_through_exit_loses_nothing_it_was_told_was_accepted(collector, state_dir,
                                                                                      tmp_path):
    """A daemon thread tracks every half millisecond while the main thread returns: every id
    track() returned to it is delivered, and what it tracks once callhome's exit hook ran is
    refused and counted (an atexit handler registered before init() gives it 50 ms to try)."""
    started = time.monotonic()
    result = run_host(f"""
        import atexit, json, os, threading, time
        {LATE.format(out=str(tmp_path))}

        def last_look():
            time.sleep(0.05)  # the daemon thread tracks on meanwhile
            late("atexit", callhome._default)

        atexit.register(last_look)  # before init: runs after callhome's hook
        import callhome
        callhome.init({host_options(collector, state_dir)})

        daemon_txt = os.open(os.path.join({str(tmp_path)!r}, "daemon.txt"), os.O_WRONLY | os.O_CREAT)

        def keep_tracking(out=daemon_txt):
            while True:
                event_id = callhome.track("daemon")
                os.write(out, ("%s\\n" % event_id).encode())
                time.sleep(0.0005)

        threading.Thread(target=keep_tracking, daemon=True).start()
        time.sleep(0.3)
    """, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 0
    assert result.stdout == "" and result.stderr == "", result.stderr
    assert elapsed < 5, f"the host took {elapsed:.1f}s"

    report = late_reports(tmp_path, "atexit")["atexit"]
    results = (tmp_path / "daemon.txt").read_text().split()
    accepted = {r for r in results if r != "None"}
    refused = results.count("None")
    print(f"\ndaemon thread through exit: host {elapsed:.2f}s, {len(accepted)} accepted, {refused} refused "
          f"(before the atexit handler's look: {report['dropped']})")
    assert len(accepted) >= 10, f"the daemon thread tracked only {len(accepted)} events"
    assert refused >= 1, "the daemon thread never tracked after the exit hook: the test proved nothing"
    assert report["result"] is None and set(report["dropped"]) == {"after_exit"}, report
    assert report["dropped"]["after_exit"] >= 2  # its own, and the daemon thread's before it
    missing = arrives(collector, state_dir, accepted)
    assert not missing, f"{len(missing)} of {len(accepted)} accepted events were lost at exit"
