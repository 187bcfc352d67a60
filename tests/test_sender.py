"""The detached sender: real host processes, real ``python -m callhome _sender`` processes, real
signals, real files, the real collector on loopback.

What a user's machine would see is checked: which processes run (``/proc``), which events reached
the collector and how often, what the host printed, what ``status()`` says. Faults are injected
into the stdlib or the environment only (``os.posix_spawn`` and ``subprocess.Popen`` raising or
slow, ``PYTHONHOME`` broken, ``sys.frozen`` set, an empty ``PATH``, a slow ``os.replace``);
callhome's own classes are never replaced.

Every sender a test starts is watched through a ``sitecustomize`` module put on the hosts'
``PYTHONPATH`` (which the launcher hands on to the sender): in a ``_sender`` process only, it
points file descriptor 2 (the null device, otherwise) at a file and notes the process's parent and
exit code, so that "no traceback anywhere" and "this host started no sender" can be checked, not
assumed.

Tests marked ``known_bug`` pin down a bug of callhome: they fail, strictly, with ``KnownBug`` only
(any other failure in them is a real one), and start passing once it is fixed.
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
import uuid
import zipfile

import pytest

import callhome
from callhome._lock import is_held
from callhome.collector import CollectorServer

from conftest import API_KEY, PRODUCT, ROOT, files_under, host_options, listing, queue_dir, wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.isdir("/proc/self"),
                                reason="watches processes through /proc (Linux)")

DEAD_PID = 4194304 + 17  # above any pid_max: no process has it
#: what status()["sender"] shows
STATUS_FIELDS = {"mode", "why", "running", "pid", "since", "sent", "state", "last_error", "last_send",
                 "updated", "resources", "spawned", "spawn_failures"}


class KnownBug(AssertionError):
    """The one failure a ``known_bug`` test expects; any other failure of it is a real failure."""


def known_bug(reason: str):
    return pytest.mark.xfail(strict=True, raises=KnownBug, reason=reason)


def expect(condition: object, message: str) -> None:
    """The check a ``known_bug`` test exists for."""
    if not condition:
        raise KnownBug(message)


# -- watching senders ------------------------------------------------------------------------------

SPY = '''
"""Test harness (tests/test_sender.py): in a callhome sender process only, keep its stderr in a
file and note its parent and exit code. Other processes are left alone."""
import json as _json
import os as _os
import sys as _sys
import time as _time


def _dump(path, value):
    with open(path + ".tmp", "w") as f:
        _json.dump(value, f)
    _os.rename(path + ".tmp", path)  # a test reading it never sees half of it


def _watch(out):
    try:
        with open("/proc/self/cmdline", "rb") as f:
            argv = f.read().split(b"\\0")
    except OSError:
        return
    if b"_sender" not in argv or b"callhome" not in argv:
        return
    pid = _os.getpid()
    try:
        fd = _os.open(_os.path.join(out, "%d.stderr" % pid), _os.O_WRONLY | _os.O_CREAT | _os.O_APPEND, 0o600)
        _os.dup2(fd, 2)
        _os.close(fd)
        _dump(_os.path.join(out, "%d.start" % pid), {"pid": pid, "ppid": _os.getppid(), "at": _time.time()})
    except OSError:
        return
    extra = _os.environ.get("TEST_SENDER_ENVIRON")  # variables only the sender sees (a test's fault)
    if extra:
        _os.environ.update(_json.loads(extra))
    real_exit = _sys.exit

    def exit(code=None):
        try:
            _dump(_os.path.join(out, "%d.exit" % pid), {"code": code, "at": _time.time()})
        except Exception:
            pass
        real_exit(code)

    _sys.exit = exit


_watch(OUT)
'''


class Hosts:
    """Starts host processes with the spy on their path; kills what is left at the end of a test."""

    def __init__(self, tmp_path) -> None:
        self.root = str(tmp_path)
        self.spy_dir = str(tmp_path / "spy")
        self.out = str(tmp_path / "senders")
        os.makedirs(self.spy_dir)
        os.makedirs(self.out)
        with open(os.path.join(self.spy_dir, "sitecustomize.py"), "w") as f:
            f.write(SPY.replace("_watch(OUT)", f"_watch({self.out!r})"))
        self.procs: list = []

    def env(self, path=(ROOT,), **extra) -> dict:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([*path, self.spy_dir]))
        for name, value in extra.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = str(value)
        return env

    def start(self, code: str, path=(ROOT,), prefix=(), **env) -> subprocess.Popen:
        # started in a directory of their own: ``python -c`` puts the working directory first on the path
        proc = subprocess.Popen([*prefix, sys.executable, "-c", textwrap.dedent(code)],
                                env=self.env(path, **env), cwd=self.root, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def run(self, code: str, timeout: float = 60, path=(ROOT,), prefix=(), **env):
        """Run a host to its end: a CompletedProcess, with the host's ``pid``."""
        proc = self.start(code, path, prefix, **env)
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        done.pid = proc.pid
        return done

    def cli(self, *args: str, **env) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "callhome", *args], env=self.env(**env),
                              capture_output=True, text=True, timeout=60, cwd=self.root)

    def senders(self) -> list:
        """Every sender process started in this test that got as far as its interpreter's startup:
        ``{"pid", "ppid", "at", "stderr", "exit": None or {"code", "at"}}``."""
        found = []
        for name in sorted(os.listdir(self.out)):
            if name.endswith(".start"):
                with open(os.path.join(self.out, name)) as f:
                    sender = json.load(f)
                base = os.path.join(self.out, str(sender["pid"]))
                with open(base + ".stderr") as f:
                    sender["stderr"] = f.read()
                try:
                    with open(base + ".exit") as f:
                        sender["exit"] = json.load(f)
                except FileNotFoundError:
                    sender["exit"] = None
                found.append(sender)
        return found

    def senders_of(self, host_pid: int) -> list:
        return [s for s in self.senders() if s["ppid"] == host_pid]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        for pid in sender_pids(self.root):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def hosts(tmp_path, clean_environ):
    made = Hosts(tmp_path)
    yield made
    made.close()


def proc_state(pid: int) -> str | None:
    """The process's state letter (``R``, ``S``, ``Z``, ...), None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return None


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def alive(pid: int) -> bool:
    """Running (a zombie has exited: it only waits to be reaped)."""
    return proc_state(pid) not in (None, "Z")


def is_sender(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return argv[1:4] == [b"-m", b"callhome", b"_sender"]


def sender_pids(under: str) -> list:
    """Live ``python -m callhome _sender`` processes whose working directory is below ``under``."""
    under = os.path.realpath(under)
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or not is_sender(int(name)) or not alive(int(name)):
            continue
        try:
            cwd = os.readlink(f"/proc/{name}/cwd")
        except OSError:
            continue
        if cwd == under or cwd.startswith(under + os.sep) or cwd == under + " (deleted)":
            found.append(int(name))
    return found


def children(pid: int) -> dict:
    """``{child pid: state letter}`` of every process whose parent is ``pid``."""
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and parent_of(int(name)) == pid:
            state = proc_state(int(name))
            if state is not None:
                found[int(name)] = state
    return found


def the_sender(state_dir: str, timeout: float = 10) -> int:
    """The product's one live sender (a second one, started as the first was starting, leaves at once)."""
    def one():
        pids = sender_pids(product_dir(state_dir))
        return pids[0] if len(pids) == 1 else None

    found = wait_until(one, timeout=timeout)
    assert found, f"not one sender: {sender_pids(product_dir(state_dir))}"
    return found


def started_after(hosts, moment: float) -> list:
    """Senders whose interpreter started after ``moment`` (``time.time()``)."""
    return [s for s in hosts.senders() if s["at"] > moment]


def product_dir(state_dir: str) -> str:
    return os.path.join(state_dir, PRODUCT)


def sender_lock(state_dir: str) -> str:
    return os.path.join(queue_dir(state_dir), "locks", "sender.lock")


def sender_json(state_dir: str) -> dict:
    try:
        with open(os.path.join(queue_dir(state_dir), "state", "sender.json")) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return {}


def queue_empty(state_dir: str) -> bool:
    return listing(state_dir, "ready") == [] and listing(state_dir, "inflight") == []


def received_ids(collector) -> list:
    return [e["event_id"] for e in collector.store.events(limit=100000)]


def usage_requests(collector) -> int:
    """Requests that reached the ingest endpoint, counted when they arrive (before any hang)."""
    return collector.app.requests["/api/product/usage"]


def lines(proc):
    """Read one JSON line from a host's stdout."""
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=10)
        raise AssertionError(f"the host said nothing (exit {proc.returncode}): {proc.stderr.read()}")
    return json.loads(line)


def tell(proc, word: str = "go") -> None:
    proc.stdin.write(word + "\n")
    proc.stdin.flush()


def finish(proc, timeout: float = 60) -> tuple:
    """(stdout, stderr) of a host that is left to exit."""
    return proc.communicate(timeout=timeout)


def make_backlog(hosts, collector, state_dir, n: int) -> list:
    """Records an earlier run could not send (it had no ``domain``: they are held), on disk now.

    A later host with a domain sends them (the identity is filled in at send time).
    """
    done = hosts.run(f"""
        import json, callhome
        callhome.init({host_options(collector, state_dir, domain=None)})
        print(json.dumps([callhome.track("secondary1", meta={{"backlog": i}}) for i in range({n})]))
    """)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    ids = json.loads(done.stdout)
    assert len(ids) == n and all(ids)
    assert listing(state_dir, "ready"), "the backlog is not on disk"
    assert hosts.senders() == [], "a host whose records are held started a sender"
    return ids


def remove_tree(path: str) -> None:
    """``rm -rf path``, again while something writes into it meanwhile (ENOTEMPTY)."""
    for _ in range(100):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            return
        time.sleep(0.01)
    raise AssertionError(f"{path} could not be removed: {os.listdir(path)}")


def assert_senders_quiet(hosts) -> None:
    """No sender of this test wrote anything to stderr or ended with an error code."""
    for sender in hosts.senders():
        assert sender["stderr"] == "", f"sender {sender['pid']} wrote to stderr:\n{sender['stderr']}"
        if sender["exit"] is not None:
            assert sender["exit"]["code"] in (0, None), sender


# -- 1. a sender killed mid-request --------------------------------------------------------------

KILL_HOST = """
    import json, sys, callhome
    callhome.init({options})
    first = callhome.track("secondary1", meta={{"i": 0}})
    flushed = callhome.flush(10)
    sender = callhome.status()["sender"]
    print(json.dumps({{"first": first, "flushed": flushed, "sender": sender}}), flush=True)
    sys.stdin.readline()  # the collector hangs now
    print(json.dumps([callhome.track("secondary1", meta={{"i": i}}) for i in range(1, 21)]), flush=True)
    if {same_host}:
        sys.stdin.readline()  # the sender was killed; everything arrived since
        print(json.dumps({{"flushed": callhome.flush(10), "status": callhome.status()}}), flush=True)
"""


@pytest.mark.parametrize("replaced_by", ["the same host's worker", "the next host"])
def test_a_sender_killed_mid_request_is_replaced_and_nothing_is_lost(hosts, collector, state_dir,
                                                                     replaced_by):
    same_host = replaced_by == "the same host's worker"
    # a long idle timeout: the sender found in status() is still the one sending when it is killed
    host = hosts.start(KILL_HOST.format(options=host_options(collector, state_dir), same_host=same_host),
                       CALLHOME_SENDER_IDLE=5)
    ready = lines(host)
    assert ready["flushed"] is True, ready
    victim = ready["sender"]["pid"]
    assert ready["sender"]["mode"] == "process" and ready["sender"]["running"], ready["sender"]
    assert victim != host.pid and is_sender(victim) and alive(victim), victim
    assert victim in [s["pid"] for s in hosts.senders_of(host.pid)]

    collector.app.fail_all("hang:2")
    tell(host)
    later = lines(host)
    assert wait_until(lambda: usage_requests(collector) >= 2, timeout=10), "the sender never sent the backlog"
    hang_ends = time.monotonic() + 2.0
    assert collector.store.count() == 1, "the request was answered before the kill: nothing was on the wire"
    assert alive(victim), "the sender exited before it could be killed"
    os.kill(victim, signal.SIGKILL)
    collector.app.fail_all(None)
    assert wait_until(lambda: not alive(victim), timeout=5)
    killed_at = time.monotonic()

    if same_host:
        # nobody calls the host: its worker alone notices the dead sender and starts another
        delivered = wait_until(lambda: collector.store.count() >= 21, timeout=15)
        print(f"\nkilled sender replaced by the host's worker: all delivered "
              f"{time.monotonic() - killed_at:.2f}s after the kill")
        tell(host)
        report = lines(host)
        assert delivered, report["status"]
        assert report["flushed"] is True
        status = report["status"]
        assert status["delivered"] == 21 and status["dropped_total"] == 0, status
        assert status["sender"]["pid"] != victim, status["sender"]
        assert status["internal_errors"] == 0
        out, err = finish(host)
    else:
        out, err = finish(host)
        assert host.returncode == 0
        nxt = hosts.run(f"""
            import callhome
            callhome.init({host_options(collector, state_dir)})
            print(callhome.flush(15))
        """)
        assert nxt.stdout.strip() == "True" and nxt.stderr == "", (nxt.stdout, nxt.stderr)
        assert hosts.senders_of(nxt.pid), "the next host started no sender"
    assert out == "" and err == "", (out, err)

    ids = [ready["first"], *later]
    # the request on the wire is answered (and stored) once the collector's hang ends
    wait_until(lambda: set(received_ids(collector)) >= set(ids), timeout=max(hang_ends - time.monotonic(), 0) + 10)
    received = received_ids(collector)
    assert sorted(set(received)) == sorted(ids), "an event was lost or invented"
    duplicates = collector.store.stats()["duplicates"]
    print(f"requests {usage_requests(collector)}, duplicates {duplicates}")
    assert duplicates <= 1, f"{duplicates} duplicates: only the request on the wire may be sent twice"
    assert queue_empty(state_dir)
    replacements = [s for s in hosts.senders() if s["pid"] != victim]
    assert replacements, "no new sender was started"
    victim_record = [s for s in hosts.senders() if s["pid"] == victim][0]
    assert victim_record["exit"] is None  # it was killed, it did not exit
    assert_senders_quiet(hosts)


# -- 2. two hosts at the same instant ------------------------------------------------------------

TWIN_HOST = """
    import json, time, callhome
    while time.time() < {start!r}:
        time.sleep(0.0005)
    began = time.time()
    callhome.init({options})
    ids = [callhome.track("secondary1", meta={{"twin": {twin}, "i": i}}) for i in range(10)]
    flushed = callhome.flush(30)
    sender = callhome.status()["sender"]
    print(json.dumps({{"began": began, "ids": ids, "flushed": flushed, "sender": sender}}))
"""


def test_two_hosts_starting_together_run_one_sender(hosts, collector, state_dir):
    backlog = make_backlog(hosts, collector, state_dir, 40)
    collector.app.fail_all("hang:0.03")  # the backlog takes ~2 s to send: long enough to look
    start = time.time() + 0.8  # both interpreters are up by then, each waiting for the same instant
    twins = [hosts.start(TWIN_HOST.format(start=start, options=host_options(collector, state_dir), twin=n))
             for n in range(2)]
    samples = []  # live senders of the product, every 20 ms
    while any(t.poll() is None for t in twins):
        samples.append(sender_pids(product_dir(state_dir)))
        time.sleep(0.02)
    after = sender_pids(product_dir(state_dir))
    reports = []
    for twin in twins:
        out, err = finish(twin)
        assert twin.returncode == 0 and err == "", err
        reports.append(json.loads(out))
    started = hosts.senders()
    print(f"\ntwo hosts {abs(reports[0]['began'] - reports[1]['began']) * 1000:.1f} ms apart started "
          f"{len(started)} sender process(es); at most {max(map(len, samples))} alive at once")
    assert all(r["flushed"] is True for r in reports), reports
    winner = reports[0]["sender"]["pid"]
    assert [r["sender"]["pid"] for r in reports] == [winner, winner], [r["sender"] for r in reports]
    assert sender_json(state_dir)["pid"] == winner and is_held(sender_lock(state_dir))
    assert after == [winner], f"after the hosts: {after} running, {winner} expected alone"
    assert winner in {s["pid"] for s in started} and {s["ppid"] for s in started} <= {t.pid for t in twins}
    # a second sender (both hosts saw no sender and started one) found the lock held and went at once
    for other in (s for s in started if s["pid"] != winner):
        assert other["exit"] is not None, f"a second sender {other['pid']} is still running"
        assert other["exit"]["code"] == 0 and other["exit"]["at"] - other["at"] < 3, other

    received = received_ids(collector)
    expected = backlog + reports[0]["ids"] + reports[1]["ids"]
    assert sorted(received) == sorted(expected), "not every event was delivered exactly once"
    assert collector.store.stats()["duplicates"] == 0
    assert_senders_quiet(hosts)


# -- 3. the product's directory deleted under the sender -----------------------------------------

DELETED_HOST = """
    import json, sys, time, callhome
    callhome.init({options})
    first = [callhome.track("secondary1", meta={{"round": 1}}) for _ in range(5)]
    print(json.dumps({{"flushed": callhome.flush(10), "sender": callhome.status()["sender"]}}), flush=True)
    sys.stdin.readline()  # (sending: the collector is slow now) track a backlog
    backlog = [callhome.track("secondary1", meta={{"round": 2}}) for _ in range(30)]
    print(json.dumps(backlog), flush=True)
    sys.stdin.readline()  # the directory is gone and the sender with it
    later = [callhome.track("secondary1", meta={{"round": 3}}) for _ in range(5)]
    flushed = callhome.flush(15)
    deadline = time.monotonic() + 15  # the worker's next cycles: the queue empty, the sender idle
    while (callhome.status()["queued"] or callhome.status()["state"] != "idle") and time.monotonic() < deadline:
        time.sleep(0.05)
    print(json.dumps({{"first": first, "later": later, "flushed": flushed, "status": callhome.status()}}))
"""


@pytest.mark.parametrize("when", ["idle", "sending"])
def test_a_sender_whose_directory_is_deleted_exits_quietly(hosts, collector, state_dir, when):
    # a long idle timeout: a sender that goes within seconds went because of the deletion
    host = hosts.start(DELETED_HOST.format(options=host_options(collector, state_dir)),
                       CALLHOME_SENDER_IDLE=20)
    ready = lines(host)
    assert ready["flushed"] is True
    sender = ready["sender"]["pid"]
    assert is_sender(sender) and alive(sender)
    if when == "sending":
        collector.app.fail_all("hang:0.2")
    tell(host)
    backlog = lines(host)
    if when == "sending":
        assert wait_until(lambda: usage_requests(collector) >= 7, timeout=10), "the backlog was not sent"
    else:
        assert wait_until(lambda: collector.store.count() >= 35, timeout=10)
        assert wait_until(lambda: sender_json(state_dir).get("state") == "idle", timeout=10), "no idle sender"
    assert alive(sender), "the sender was gone before the directory was deleted"
    remove_tree(product_dir(state_dir))
    deleted = time.monotonic()
    assert wait_until(lambda: not alive(sender), timeout=10), "the sender outlived its directory"
    print(f"\nsender gone {time.monotonic() - deleted:.2f}s after its directory was deleted ({when})")
    assert time.monotonic() - deleted < 5
    collector.app.fail_all(None)
    tell(host)
    report = lines(host)
    out, err = finish(host)
    assert host.returncode == 0 and out == "" and err == "", (out, err)

    received = set(received_ids(collector))
    assert set(report["first"]) <= received
    assert set(report["later"]) <= received, "the host stopped delivering after the deletion"
    assert report["flushed"] is True
    status = report["status"]
    assert status["queued"] == 0 and status["internal_errors"] == 0, status
    assert status["disk"] == "ok" or status["disk"].startswith("memory-only"), status["disk"]
    assert status["state"] == "idle", status["state"]
    assert status["sender"]["spawn_failures"] == 0, status["sender"]
    gone = [s for s in hosts.senders() if s["pid"] == sender][0]
    assert gone["exit"] == {"code": 0, "at": gone["exit"]["at"]}, gone
    assert_senders_quiet(hosts)
    if when == "sending":
        print(f"{len(set(backlog) - received)} of 30 events lost with the deleted directory")


# -- 4. a stale lock and status after a crash ----------------------------------------------------

def plant_stale_sender(state_dir: str) -> None:
    """What a sender killed by a power cut leaves: its lock file (no holder now) and a status that
    names a pid no process has, as still running."""
    for sub in ("locks", "state"):
        os.makedirs(os.path.join(queue_dir(state_dir), sub), exist_ok=True)
    with open(sender_lock(state_dir), "w") as f:
        f.write("whatever a crashed holder left\n")
    with open(os.path.join(queue_dir(state_dir), "state", "sender.json"), "w") as f:
        json.dump({"pid": DEAD_PID, "mode": "process", "started": time.time() - 600,
                   "updated": time.time() - 300, "resources": None, "state": "sending", "ended": None,
                   "config": "0123456789abcdef", "counts": {"delivered": 7}, "last_send": None,
                   "last_error": None}, f)
    assert not is_held(sender_lock(state_dir))


def test_a_stale_sender_lock_and_status_do_not_stop_a_new_sender(hosts, collector, state_dir):
    backlog = make_backlog(hosts, collector, state_dir, 5)
    plant_stale_sender(state_dir)
    done = hosts.run(f"""
        import json, callhome
        callhome.init({host_options(collector, state_dir)})
        ids = [callhome.track("secondary1") for _ in range(3)]
        print(json.dumps({{"ids": ids, "flushed": callhome.flush(10), "status": callhome.status()}}))
    """)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    report = json.loads(done.stdout)
    assert report["flushed"] is True, report["status"]
    assert sorted(received_ids(collector)) == sorted(backlog + report["ids"])
    sender = report["status"]["sender"]
    assert sender["pid"] != DEAD_PID, sender
    assert sender["pid"] in [s["pid"] for s in hosts.senders_of(done.pid)], sender
    assert sender["mode"] == "process" and sender["spawn_failures"] == 0
    assert sender_json(state_dir)["pid"] == sender["pid"]
    assert STATUS_FIELDS <= set(sender), sorted(sender)
    # and the command line sees the new sender (the lock is held), not the dead one
    cli = hosts.cli("status", "--json", "--product", PRODUCT, "--dir", state_dir)
    assert cli.returncode == 0 and cli.stderr == "", cli.stderr
    shown = json.loads(cli.stdout)
    assert shown["sender"] == "running (process)" and shown["sender_pid"] == sender["pid"], shown
    assert shown["sender_sent"] == 8 and shown["sender_since"] and shown["sender_last_error"] is None, shown
    assert_senders_quiet(hosts)


def test_status_does_not_show_a_dead_sender_as_running(hosts, collector, state_dir):
    plant_stale_sender(state_dir)
    done = hosts.run(f"""
        import json, os, time, callhome
        # sessions: the worker starts at init, with nothing to queue
        callhome.init({host_options(collector, state_dir, sessions=True)})
        deadline = time.monotonic() + 10
        # until the worker has read the stale sender.json (its "sending" state shows)
        while callhome.status()["state"] != "sending" and time.monotonic() < deadline:
            time.sleep(0.02)
        print(json.dumps(callhome.status()), flush=True)
        os._exit(0)  # (the exit hook would queue the session's record, and start a sender for it)
    """)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    status = json.loads(done.stdout)
    assert hosts.senders() == [] and status["sender"] is not None and status["enabled"] is True
    expect(status["sender"]["pid"] != DEAD_PID and not status["sender"]["running"],
           f"status() shows a dead sender as running: {status['sender']}")


# -- 5. no permission to start processes ---------------------------------------------------------

NO_SPAWN = {
    # every way the stdlib starts a process says EPERM (a seccomp or container policy, say)
    "spawning is denied": """
        import os, subprocess
        def _denied(*args, **kwargs):
            raise PermissionError(1, "Operation not permitted")
        subprocess.Popen = _denied
        os.posix_spawn = os.posix_spawnp = _denied
    """,
    # the interpreter starts but dies at once, with a status (a broken environment)
    "the sender dies at start": """
        import os
        os.environ["PYTHONHOME"] = "/nonexistent-python-home"
    """,
}

FALLBACK_HOST = """
    import json, sys, callhome
    callhome.init({options})
    ids = [callhome.track("secondary1", meta={{"i": i}}) for i in range(10)]
    flushed = callhome.flush(20)
    print(json.dumps({{"ids": ids, "flushed": flushed, "status": callhome.status()}}))
"""


@pytest.mark.parametrize("fault", sorted(NO_SPAWN))
def test_a_host_that_cannot_start_a_sender_sends_on_a_thread(hosts, collector, state_dir, fault):
    started = time.monotonic()
    # the worker looks again every flush_interval while no sender was ever started: short, to be quick
    options = host_options(collector, state_dir, flush_interval=0.2)
    done = hosts.run(textwrap.dedent(NO_SPAWN[fault]) + textwrap.dedent(FALLBACK_HOST).format(
        options=options))
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr  # nothing raised, nothing printed
    report = json.loads(done.stdout)
    sender = report["status"]["sender"]
    print(f"\n{fault}: {sender['spawn_failures']} failed starts, then a thread; host ran {elapsed:.2f}s; "
          f"why: {sender['why']}")
    assert report["flushed"] is True, report["status"]
    assert sorted(received_ids(collector)) == sorted(report["ids"])
    assert sender["mode"] == "thread", sender
    assert sender["spawn_failures"] >= 1, sender
    assert "could not be started" in sender["why"], sender["why"]
    assert report["status"]["delivered"] == 10 and report["status"]["internal_errors"] == 0
    if fault == "spawning is denied":
        assert sender["spawned"] == 0 and "PermissionError" in sender["why"], sender
    assert hosts.senders() == [], "a sender process got as far as its interpreter"


def test_a_short_run_that_cannot_start_a_sender_still_delivers(hosts, collector, state_dir):
    code = textwrap.dedent(NO_SPAWN["spawning is denied"]) + textwrap.dedent(f"""
        import json, callhome
        callhome.init({host_options(collector, state_dir)})
        event = callhome.track("secondary1")
        flushed = callhome.flush(3)
        print(json.dumps({{"event": event, "flushed": flushed, "sender": callhome.status()["sender"]}}))
    """)
    done = hosts.run(code)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    report = json.loads(done.stdout)
    print(f"\nspawn denied: flush(3) gave {report['flushed']} after {report['sender']['spawn_failures']} "
          f"failed start(s); {collector.store.count()} delivered")
    assert report["event"]
    expect(report["flushed"] and received_ids(collector) == [report["event"]],
           "a host that may not start processes did not deliver within flush(3)")


# -- 6. a PATH without python --------------------------------------------------------------------

@pytest.mark.parametrize("path", ["", None], ids=["PATH empty", "PATH unset"])
def test_a_host_with_no_python_on_its_path_still_starts_a_sender(hosts, collector, state_dir, path):
    done = hosts.run(FALLBACK_HOST.format(options=host_options(collector, state_dir)), PATH=path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    report = json.loads(done.stdout)
    assert report["flushed"] is True
    assert sorted(received_ids(collector)) == sorted(report["ids"])
    sender = report["status"]["sender"]
    assert sender["mode"] == "process" and sender["spawn_failures"] == 0 and sender["spawned"] >= 1, sender
    assert hosts.senders_of(done.pid), "the host started no sender process"
    assert_senders_quiet(hosts)


# -- 7. hosts that must not start a sender -------------------------------------------------------

MUST_NOT_SPAWN = {
    "frozen": ("import sys\nsys.frozen = True\n", "frozen"),
    "nuitka": ("import __main__\n__main__.__compiled__ = True\n", "Nuitka"),
    "uwsgi": ("import sys, types\nsys.modules['uwsgi'] = types.ModuleType('uwsgi')\n", "uwsgi"),
    "mod_wsgi": ("import sys, types\nsys.modules['mod_wsgi'] = types.ModuleType('mod_wsgi')\n", "mod_wsgi"),
    "not a python": ("import sys\nsys.executable = {myapp!r}\n", "myapp"),
    "no executable": ("import sys\nsys.executable = ''\n", "executable"),
}


@pytest.mark.parametrize("host_kind", list(MUST_NOT_SPAWN))
def test_hosts_that_must_not_spawn_send_on_a_thread(hosts, collector, state_dir, tmp_path, host_kind):
    prefix, reason = MUST_NOT_SPAWN[host_kind]
    myapp = tmp_path / "bin" / "myapp"  # an embedding application's binary: it would not start Python
    myapp.parent.mkdir()
    shutil.copy("/bin/true", myapp)
    code = prefix.format(myapp=str(myapp)) + textwrap.dedent(
        FALLBACK_HOST.format(options=host_options(collector, state_dir)))
    done = hosts.run(code)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    report = json.loads(done.stdout)
    sender = report["status"]["sender"]
    assert report["flushed"] is True, report["status"]
    assert sorted(received_ids(collector)) == sorted(report["ids"])
    assert sender["mode"] == "thread", sender
    assert reason in (sender["why"] or ""), sender["why"]
    assert sender["spawned"] == 0 and sender["spawn_failures"] == 0, sender
    assert hosts.senders() == [], "a sender process was started"


@pytest.mark.parametrize("packaging", ["vendored", "zipped"])
def test_a_vendored_or_zipped_callhome_sends_on_a_thread(hosts, collector, state_dir, tmp_path, packaging):
    source = os.path.dirname(callhome.__file__)  # this checkout, or the installed wheel under test
    if packaging == "vendored":
        top = tmp_path / "vendor"
        shutil.copytree(source, top / "myapp" / "_vendor" / "callhome",
                        ignore=shutil.ignore_patterns("__pycache__"))
        (top / "myapp" / "__init__.py").write_text("")
        (top / "myapp" / "_vendor" / "__init__.py").write_text("")
        importing, where, reason = "from myapp._vendor import callhome", str(top), "vendored as myapp"
    else:
        where = str(tmp_path / "app.zip")
        with zipfile.ZipFile(where, "w") as archive:
            for folder, dirs, names in os.walk(source):
                dirs[:] = [d for d in dirs if d != "__pycache__"]
                for name in names:
                    full = os.path.join(folder, name)
                    archive.write(full, os.path.relpath(full, os.path.dirname(source)))
        importing, reason = "import callhome", "not imported from a directory"
    code = textwrap.dedent(FALLBACK_HOST).replace("import json, sys, callhome", f"import json\n{importing}")
    done = hosts.run(code.format(options=host_options(collector, state_dir)), path=(where,))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    report = json.loads(done.stdout)
    sender = report["status"]["sender"]
    assert report["flushed"] is True, report["status"]
    assert sorted(received_ids(collector)) == sorted(report["ids"])
    assert sender["mode"] == "thread" and reason in sender["why"], sender
    assert sender["spawned"] == 0
    assert hosts.senders() == []


# -- 8. opt-outs and debug mode ------------------------------------------------------------------

QUIET_HOST = """
    import json, time, callhome
    callhome.init({options})
    ids = [callhome.track("secondary1") for _ in range(3)]
    callhome.count("counted", 2)
    callhome.call_home()
    flushed = callhome.flush(2)
    time.sleep(0.5)
    print(json.dumps({{"ids": ids, "flushed": flushed, "status": callhome.status()}}))
"""


@pytest.mark.parametrize("variable", ["DO_NOT_TRACK", "CALLHOME_DISABLED", "TEST_PRODUCT_TELEMETRY_DISABLED"])
def test_an_opted_out_host_starts_no_sender(hosts, collector, state_dir, variable):
    done = hosts.run(QUIET_HOST.format(options=host_options(collector, state_dir, call_home_interval=3600)),
                     **{variable: "1"})
    assert done.returncode == 0 and done.stdout and done.stderr == "", done.stderr
    report = json.loads(done.stdout)
    assert report["ids"] == [None, None, None]
    assert report["status"]["enabled"] is False and variable in report["status"]["reason"]
    assert report["status"]["sender"] is None
    assert hosts.senders() == [], "an opted-out host started a sender"
    assert not os.path.exists(state_dir), "an opted-out host created files"
    assert collector.app.requests.total == 0


@pytest.mark.parametrize("how", ["CALLHOME_DEBUG=1", "debug=True"])
def test_debug_mode_starts_no_sender(hosts, collector, state_dir, how):
    overrides, env = ({}, {"CALLHOME_DEBUG": "1"}) if how == "CALLHOME_DEBUG=1" else ({"debug": True}, {})
    options = host_options(collector, state_dir, call_home_interval=3600, **overrides)
    done = hosts.run(QUIET_HOST.format(options=options), **env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert all(report["ids"]) and report["status"]["debug"] is True
    # what would be sent is shown instead: the 3 events and the CALL_HOMEs
    assert done.stderr.count("[callhome] (not sent: debug mode)") >= 4, done.stderr
    assert report["status"]["sender"] is None
    assert hosts.senders() == [], "debug mode started a sender"
    assert not os.path.exists(state_dir)
    assert collector.app.requests.total == 0


DISABLE_HOST = """
    import json, sys, time, callhome
    callhome.init({options})
    print(json.dumps([callhome.track("secondary1", meta={{"i": i}}) for i in range(30)]), flush=True)
    sys.stdin.readline()  # `callhome disable` ran
    deadline = time.monotonic() + 10  # the worker looks at the saved choices once a second
    while callhome.status()["enabled"] and time.monotonic() < deadline:
        time.sleep(0.02)
    after = [callhome.track("secondary1", meta={{"after": True}}) for _ in range(3)]
    flushed = callhome.flush(2)
    time.sleep(1.0)
    print(json.dumps({{"after": after, "flushed": flushed, "status": callhome.status()}}), flush=True)
"""


def test_disable_stops_a_running_sender(hosts, collector, state_dir):
    collector.app.fail_all("hang:0.2")
    # a long idle timeout: a sender that goes within seconds went because of the disable
    host = hosts.start(DISABLE_HOST.format(options=host_options(collector, state_dir)),
                       CALLHOME_SENDER_IDLE=20)
    ids = lines(host)
    assert wait_until(lambda: usage_requests(collector) >= 3, timeout=10), "the sender never got going"
    sender = the_sender(state_dir)
    disabling = time.time()
    disabled = hosts.cli("disable", "--product", PRODUCT, "--dir", state_dir, "--json")
    assert disabled.returncode == 0, disabled.stderr
    sent_by_then = usage_requests(collector)
    assert wait_until(lambda: not alive(sender), timeout=5), "the sender kept running after `disable`"
    tell(host)
    report = lines(host)
    out, err = finish(host)
    assert host.returncode == 0 and out == "" and err == "", (out, err)
    requests = usage_requests(collector)
    print(f"\n`disable` ran after {sent_by_then} requests; the sender made {requests - sent_by_then} "
          f"more and ended: {sender_json(state_dir).get('ended')!r}")
    # at most the request that was already on its way when the choice was saved
    assert requests <= sent_by_then + 1, f"{requests - sent_by_then} requests after `disable`"
    assert requests < len(ids)
    assert queue_empty(state_dir), "the queue was not purged"
    assert "disabled" in str(sender_json(state_dir).get("ended")), sender_json(state_dir)
    status = report["status"]
    assert report["after"] == [None, None, None] and status["enabled"] is False, status
    assert "disable" in status["reason"], status["reason"]
    assert started_after(hosts, disabling) == [], "a sender was started after `disable`"
    assert_senders_quiet(hosts)


def test_an_opt_out_in_the_senders_environment_is_honoured(hosts, collector, state_dir):
    """The host decided before DO_NOT_TRACK reached the environment the sender starts with."""
    done = hosts.run(FALLBACK_HOST.format(options=host_options(collector, state_dir)),
                     TEST_SENDER_ENVIRON=json.dumps({"DO_NOT_TRACK": "1"}))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    report = json.loads(done.stdout)
    assert collector.app.requests.total == 0, "the sender sent with DO_NOT_TRACK=1 in its environment"
    assert report["flushed"] is False
    assert queue_empty(state_dir), "the queue was not purged"
    started = hosts.senders_of(done.pid)
    assert started, "no sender was started: the test proved nothing"
    assert wait_until(lambda: not any(alive(s["pid"]) for s in hosts.senders()), timeout=5), "it lingered"
    assert str(sender_json(state_dir).get("state", "")).startswith("disabled"), sender_json(state_dir)
    assert "DO_NOT_TRACK" in sender_json(state_dir)["state"]
    print(f"\nhost status with the sender disabled: {report['status']['state']!r}; "
          f"{len(hosts.senders())} sender(s) started")
    assert_senders_quiet(hosts)


def test_the_command_line_flush_honours_an_opt_out(hosts, collector, state_dir):
    backlog = make_backlog(hosts, collector, state_dir, 3)
    flush = ("flush", "--product", PRODUCT, "--dir", state_dir, "--timeout", "5", "--json")
    settings = {"CALLHOME_API_KEY": API_KEY, "CALLHOME_ENDPOINT": collector.url,
                "CALLHOME_DOMAIN": "example.com"}
    opted_out = hosts.cli(*flush, DO_NOT_TRACK="1", **settings)
    assert opted_out.stderr == "" or "DO_NOT_TRACK" in opted_out.stderr, opted_out.stderr
    time.sleep(0.5)
    assert collector.app.requests.total == 0 and hosts.senders() == [], "sent despite DO_NOT_TRACK=1"
    # the same command without the opt-out sends (so the one above could have)
    sent = hosts.cli(*flush, **settings)
    assert sent.returncode == 0, (sent.stdout, sent.stderr)
    assert sorted(received_ids(collector)) == sorted(backlog)


def test_an_opt_out_set_while_a_thread_sender_sends_stops_it_before_the_next_request(hosts, collector,
                                                                                      state_dir):
    collector.app.fail_all("hang:0.2")
    done = hosts.run(f"""
        import json, os, time, callhome
        callhome.init({host_options(collector, state_dir, sender="thread")})
        ids = [callhome.track("secondary1") for _ in range(20)]
        while callhome.status()["delivered"] < 3:
            time.sleep(0.01)
        os.environ["DO_NOT_TRACK"] = "1"  # the end user opts out while the backlog is being sent
        delivered = callhome.status()["delivered"]
        time.sleep(1.5)
        print(json.dumps({{"ids": ids, "delivered": delivered, "status": callhome.status()}}))
    """)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    report = json.loads(done.stdout)
    requests = usage_requests(collector)
    print(f"\nDO_NOT_TRACK set after {report['delivered']} deliveries; {requests} requests in all")
    assert requests <= report["delivered"] + 1, "requests were made after DO_NOT_TRACK=1"
    status = report["status"]
    assert status["delivered"] + status["dropped"].get("opted_out", 0) == 20, status
    assert queue_empty(state_dir)
    assert hosts.senders() == []


def test_an_opt_out_set_at_runtime_in_a_host_retires_its_sender_process(hosts, collector, state_dir):
    collector.app.fail_all("hang:0.1")  # 40 records: 4 s of sending
    # a long idle timeout: a sender that goes within seconds was retired
    host = hosts.start(f"""
        import json, os, sys, time, callhome
        callhome.init({host_options(collector, state_dir)})
        print(json.dumps([callhome.track("secondary1") for _ in range(40)]), flush=True)
        sys.stdin.readline()
        os.environ["DO_NOT_TRACK"] = "1"  # the end user opts out while the backlog is being sent
        print(json.dumps(time.time()), flush=True)
        sys.stdin.readline()
        print(json.dumps(callhome.status()), flush=True)
    """, CALLHOME_SENDER_IDLE=20)
    ids = lines(host)
    assert wait_until(lambda: usage_requests(collector) >= 3, timeout=10), "the sender never got going"
    sender = the_sender(state_dir)
    tell(host)
    opted_out_at = lines(host)
    sent_by_then = usage_requests(collector)
    assert wait_until(lambda: not alive(sender), timeout=5), "the sender kept running after the opt-out"
    gone = time.time() - opted_out_at
    tell(host)
    status = lines(host)
    out, err = finish(host)
    assert host.returncode == 0 and out == "" and err == "", (out, err)
    after = usage_requests(collector) - sent_by_then
    print(f"\nDO_NOT_TRACK set in the host after {sent_by_then} requests: its sender made {after} more and "
          f"was gone {gone:.2f}s later")
    assert status["enabled"] is False and "DO_NOT_TRACK" in status["reason"], status
    assert queue_empty(state_dir), "the queue was not purged"
    assert usage_requests(collector) < len(ids), "the whole backlog was sent"
    assert gone < 2.5, f"the sender went {gone:.2f}s after the opt-out"
    assert started_after(hosts, opted_out_at) == [], "a sender was started after the opt-out"
    assert_senders_quiet(hosts)


# -- 9. the API key stays out of argv, the environment and files -------------------------------------

@pytest.mark.parametrize("given", [
    "as an argument",
    pytest.param("in the host's environment"),
])
def test_the_api_key_never_reaches_argv_environment_or_files(hosts, state_dir, given):
    key = "sk-" + uuid.uuid4().hex
    with CollectorServer(api_keys=[key]) as server:
        server.app.fail_all("hang:0.3")  # the sender stays busy while it is looked at
        options = host_options(server, state_dir, api_key=key if given == "as an argument" else None)
        env = {} if given == "as an argument" else {"CALLHOME_API_KEY": key}
        host = hosts.start(f"""
            import json, sys, callhome
            callhome.init({options})
            print(json.dumps([callhome.track("secondary1") for _ in range(5)]), flush=True)
            sys.stdin.readline()
            print(json.dumps({{"flushed": callhome.flush(10), "status": callhome.status()}}), flush=True)
        """, **env)
        lines(host)
        sender = the_sender(state_dir)
        with open(f"/proc/{sender}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{sender}/environ", "rb") as f:
            environ = f.read()
        tell(host)
        report = lines(host)
        finish(host)
        assert report["flushed"] is True and server.store.count() == 5, report["status"]
    secret = key.encode()
    assert b"_sender" in cmdline and secret not in cmdline, cmdline
    stored = files_under(state_dir)
    assert any("/state/sender.json" in path for path in stored)
    assert not [path for path, data in stored.items() if secret in data], "the key was written to disk"
    leaked = [item.split(b"=", 1)[0].decode() for item in environ.split(b"\0") if secret in item]
    expect(not leaked, f"the key is in the sender's environment as {leaked}")


# -- 10. no zombies ------------------------------------------------------------------------------------

@pytest.mark.parametrize("host_then", [
    "keeps running",
    pytest.param("calls shutdown() and keeps running"),
])
def test_a_long_running_host_reaps_its_sender(hosts, collector, state_dir, host_then):
    host = hosts.start(f"""
        import json, sys, time, callhome
        callhome.init({host_options(collector, state_dir)})
        callhome.track("secondary1")
        flushed = callhome.flush(10)
        print(json.dumps({{"flushed": flushed, "sender": callhome.status()["sender"]}}), flush=True)
        if {host_then == "calls shutdown() and keeps running"}:
            callhome.shutdown()
        sys.stdin.readline()
    """, CALLHOME_SENDER_IDLE=1)
    report = lines(host)
    sender = report["sender"]["pid"]
    assert report["flushed"] is True and parent_of(sender) == host.pid
    exited = wait_until(lambda: proc_state(sender) in (None, "Z"), timeout=5)
    assert exited, "the sender did not exit once idle"
    seen = {}  # zombie children: when first seen
    deadline = time.monotonic() + 2.5  # a cycle of the worker reaps within about a second
    while time.monotonic() < deadline:
        for pid, state in children(host.pid).items():
            if state == "Z":
                seen.setdefault(pid, time.monotonic())
        time.sleep(0.05)
    zombies = {pid for pid, state in children(host.pid).items() if state == "Z"}
    lasting = {pid: round(time.monotonic() - since, 1) for pid, since in seen.items()
               if pid in zombies and time.monotonic() - since > 2.0}
    tell(host)
    finish(host)
    expect(not lasting, f"zombie senders of a live host (pid: seconds seen): {lasting}")


PID1_HOST = """
    import json, os, time, callhome
    assert os.getpid() == 1, os.getpid()
    callhome.init({options})

    def zombies():
        found = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open("/proc/%s/stat" % name, "rb") as f:
                        if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                            found.append(int(name))
                except OSError:
                    pass
        return found

    ids, first_seen, longest, started = [], {{}}, 0.0, time.monotonic()
    while time.monotonic() - started < 8.0:
        if int((time.monotonic() - started) / 0.25) % 10 == 0:  # a burst every 2.5 s
            ids += [callhome.track("secondary1") for _ in range(3)]
        now = time.monotonic()
        current = zombies()
        for pid in current:
            first_seen.setdefault(pid, now)
            longest = max(longest, now - first_seen[pid])
        first_seen = {{pid: at for pid, at in first_seen.items() if pid in current}}
        time.sleep(0.25)
    flushed = callhome.flush(10)
    deadline = time.monotonic() + 15
    # the last sender goes idle, exits and is reaped (or the deadline comes, and the test says so)
    while (zombies() or callhome.status()["sender"]["running"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    print(json.dumps({{"ids": ids, "flushed": flushed, "longest": longest, "left": zombies(),
                      "sender": callhome.status()["sender"]}}))
"""


def _pid_namespaces_work() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def test_a_host_that_is_pid_1_gathers_no_zombies(hosts, collector, state_dir):
    if not _pid_namespaces_work():
        pytest.skip("needs root and `unshare --pid --fork --mount-proc` to run a host as PID 1")
    done = hosts.run(PID1_HOST.format(options=host_options(collector, state_dir)), timeout=60,
                     prefix=("unshare", "--pid", "--fork", "--mount-proc"), CALLHOME_SENDER_IDLE=1)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    report = json.loads(done.stdout)
    print(f"\nPID 1 host: {report['sender']['spawned']} senders started and gone, the longest zombie lasted "
          f"{report['longest']:.2f}s, {len(report['left'])} left")
    assert report["flushed"] is True
    assert sorted(received_ids(collector)) == sorted(report["ids"])
    assert report["sender"]["spawned"] >= 3, "too few senders came and went: the test proved little"
    assert report["left"] == [], f"zombies left in the host's namespace: {report['left']}"
    assert report["longest"] <= 2.0, f"a zombie lasted {report['longest']:.2f}s"


# -- 11. a sender exits by itself ---------------------------------------------------------------------

@pytest.mark.parametrize("idle", [1.0, 2.5])
def test_a_sender_exits_by_itself_once_idle(hosts, collector, state_dir, idle):
    done = hosts.run(f"""
        import json, callhome
        callhome.init({host_options(collector, state_dir)})
        ids = [callhome.track("secondary1") for _ in range(5)]
        flushed = callhome.flush(10)
        print(json.dumps({{"ids": ids, "flushed": flushed, "sender": callhome.status()["sender"]}}))
    """, CALLHOME_SENDER_IDLE=idle)  # the host exits at once; its sender goes on alone
    assert done.returncode == 0 and done.stderr == "", done.stderr
    report = json.loads(done.stdout)
    assert report["flushed"] is True
    sender = report["sender"]["pid"]
    last_delivery = collector.store.events(limit=1)[0]["received_at"]
    assert alive(sender), "the sender was gone before it could be idle"
    assert wait_until(lambda: not alive(sender), timeout=idle + 10, interval=0.02), "the sender never exited"
    lifetime = time.time() - last_delivery
    print(f"\nidle {idle}s: the sender exited {lifetime:.2f}s after its last delivery")
    assert idle - 0.2 <= lifetime <= idle + 1.5, lifetime
    assert sender_json(state_dir)["ended"] == "idle"
    assert not is_held(sender_lock(state_dir))
    (record,) = [s for s in hosts.senders() if s["pid"] == sender]
    assert record["exit"]["code"] == 0
    assert_senders_quiet(hosts)


def test_an_idle_host_starts_no_more_senders_once_the_queue_is_empty(hosts, collector, state_dir):
    done = hosts.run(f"""
        import json, time, callhome
        callhome.init({host_options(collector, state_dir)})
        callhome.track("secondary1")  # no flush(): a long-running host tracks and goes on with its work
        while callhome.status()["delivered"] < 1:
            time.sleep(0.05)
        before = callhome.status()["sender"]["spawned"]
        time.sleep(3.0)  # idle_timeout is 1 s here: an idle sender goes after 1 s
        status = callhome.status()
        after = status["sender"]["spawned"]
        print(json.dumps({{"before": before, "after": after, "queued": status["queued"]}}))
    """, CALLHOME_SENDER_IDLE=1)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    report = json.loads(done.stdout)
    print(f"\nidle host: {report['before']} sender(s) started to deliver, {report['after']} by 3 s later, "
          f"{len(hosts.senders_of(done.pid))} sender processes seen; status()['queued'] = {report['queued']}")
    assert collector.store.count() == 1 and report["before"] == 1
    expect(report["after"] == report["before"], "senders were started for an empty queue")
    expect(report["queued"] == 0, "status() counts delivered records as queued")


# -- a later host with other settings ------------------------------------------------------------------

#: A slow machine: the worker thread's first draw from ``os.urandom`` (opening the queue) blocks for
#: 0.1 s, so the host's flush() is asked for before the worker's first cycle, which therefore
#: publishes the records at once; and the disk is slow as the host writes its request to retire.
SLOW_RETIRE = """
    import os, threading, time
    _replace, _urandom, _first = os.replace, os.urandom, []
    def _slow_replace(src, dst, *args, **kwargs):
        if str(dst).endswith("retire.json"):
            time.sleep(0.3)
        return _replace(src, dst, *args, **kwargs)
    def _slow_urandom(n):
        if not _first and threading.current_thread() is not threading.main_thread():
            _first.append(True)
            time.sleep(0.1)
        return _urandom(n)
    os.replace, os.urandom = _slow_replace, _slow_urandom
"""


def older_and_newer_host(hosts, collector, moved, state_dir, slow_disk: bool, **newer) -> tuple:
    """A host sends to ``collector``; its sender waits for more work when a host with another endpoint
    and key (the product moved) tracks 3 events. Returns both reports and the older sender's pid."""
    old = hosts.run(f"""
        import json, callhome
        callhome.init({host_options(collector, state_dir)})
        event = callhome.track("secondary1")
        flushed = callhome.flush(10)
        print(json.dumps({{"event": event, "flushed": flushed, "sender": callhome.status()["sender"]}}))
    """, CALLHOME_SENDER_IDLE=20)  # its sender would wait long for more work
    assert old.returncode == 0 and old.stderr == "", old.stderr
    first = json.loads(old.stdout)
    veteran = first["sender"]["pid"]
    assert first["flushed"] is True and alive(veteran)
    new = hosts.run((textwrap.dedent(SLOW_RETIRE) if slow_disk else "") + textwrap.dedent(f"""
        import json, callhome
        callhome.init({host_options(moved, state_dir, api_key="rotated-key", **newer)})
        ids = [callhome.track("secondary1") for _ in range(3)]
        flushed = callhome.flush(10)
        print(json.dumps({{"ids": ids, "flushed": flushed, "sender": callhome.status()["sender"]}}))
    """))
    assert new.returncode == 0 and new.stderr == "", new.stderr
    second = json.loads(new.stdout)
    assert wait_until(lambda: not alive(veteran), timeout=5), "the older sender did not make way"
    assert second["flushed"] is True
    assert received_ids(collector)[-1] == first["event"] and len(received_ids(moved)) <= 3
    everywhere = set(received_ids(collector)) | set(received_ids(moved))
    assert sorted(everywhere) == sorted([first["event"], *second["ids"]])
    assert_senders_quiet(hosts)
    return first, second, veteran


def test_a_sender_with_older_settings_makes_way_for_a_newer_host(hosts, collector, state_dir):
    with CollectorServer(api_keys=["rotated-key"]) as moved:
        # (a short flush_interval: the newer host's worker looks again soon; see the known bug below)
        first, second, veteran = older_and_newer_host(hosts, collector, moved, state_dir, slow_disk=False,
                                                      flush_interval=0.5)
        went_astray = len(received_ids(collector)) - 1
        if not went_astray:  # (the race of the test below: then the older sender sent them all)
            assert second["sender"]["pid"] != veteran and second["sender"]["our_settings"], second["sender"]
        print(f"\nthe older sender made way; {went_astray} of 3 newer events went to the old endpoint")


def test_a_newer_hosts_events_are_not_sent_with_an_older_senders_settings(hosts, collector, state_dir):
    with CollectorServer(api_keys=["rotated-key"]) as moved:
        first, second, veteran = older_and_newer_host(hosts, collector, moved, state_dir, slow_disk=True)
        expect(received_ids(collector) == [first["event"]],
               f"{len(received_ids(collector)) - 1} of the newer host's events went to the old endpoint")
        assert sorted(received_ids(moved)) == sorted(second["ids"])


def test_a_newer_host_that_exits_at_once_still_gets_its_events_delivered(hosts, collector, state_dir):
    with CollectorServer(api_keys=["rotated-key"]) as moved:
        old = hosts.run(f"""
            import callhome
            callhome.init({host_options(collector, state_dir)})
            callhome.track("secondary1")
            print(callhome.flush(10))
        """, CALLHOME_SENDER_IDLE=20)
        assert old.stdout.strip() == "True" and old.stderr == "", old.stderr
        veteran = the_sender(state_dir)
        new = hosts.run(f"""
            import callhome
            callhome.init({host_options(moved, state_dir, api_key="rotated-key")})
            print(callhome.track("secondary1"))
        """)
        assert new.returncode == 0 and new.stderr == "", new.stderr
        assert wait_until(lambda: not alive(veteran), timeout=5), "the older sender did not make way"
        delivered = wait_until(lambda: moved.store.count() + collector.store.count() >= 2, timeout=2.5)
        left = len(listing(state_dir, "ready"))
        print(f"\nafter the newer host exited: {moved.store.count()} event(s) at its endpoint, "
              f"{collector.store.count() - 1} at the old one, {left} batch(es) left")
        expect(delivered and received_ids(moved) == [new.stdout.strip()],
               "the newer host's event was not delivered (it waits in the queue for another run)")



# -- a run that ends at once ---------------------------------------------------------------------------

#: A slow machine, as the host returns at once after track(): the exit hook's thread is held up for
#: 0.3 s (``os.urandom`` blocks: callhome draws a nonce from it) and starting a process takes 1 s, so
#: the worker thread, started by the first track() and still importing when the host returned, takes
#: the buffer meanwhile and is still starting the sender when the interpreter ends.
SLOW_EXIT = """
    import atexit, os, subprocess, threading, time
    _urandom, _spawn, _popen, _exiting = os.urandom, os.posix_spawn, subprocess.Popen, []
    def _slow_urandom(n):
        if _exiting and threading.current_thread() is threading.main_thread():
            _exiting.clear()
            time.sleep(0.3)
        return _urandom(n)
    def _slow_spawn(*args, **kwargs):
        time.sleep(1.0)
        return _spawn(*args, **kwargs)
    def _slow_popen(*args, **kwargs):
        time.sleep(1.0)
        return _popen(*args, **kwargs)
    os.urandom, os.posix_spawn, subprocess.Popen = _slow_urandom, _slow_spawn, _slow_popen
"""


def test_a_run_that_ends_as_its_worker_starts_gets_its_events_delivered(hosts, collector, state_dir):
    """Once a bug (9dcb7b5): the exit hook acted through a second Worker while the thread's own took the
    buffer into its open batch (tmp/*.open), which nobody published, and no sender started: the events
    waited until the product ran again (3 to 5 runs in 12 of `track(); exit`, unaided)."""
    done = hosts.run(textwrap.dedent(SLOW_EXIT) + textwrap.dedent(f"""
        import json, callhome
        callhome.init({host_options(collector, state_dir)})
        print(json.dumps([callhome.track("secondary1") for _ in range(5)]))
        atexit.register(_exiting.append, True)  # after callhome's exit hook (the first track()): runs first
    """))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    ids = json.loads(done.stdout)
    delivered = wait_until(lambda: collector.store.count() >= 5, timeout=6)
    left = listing(state_dir, "tmp")
    print(f"\nafter a run that ended at once: {collector.store.count()} of 5 delivered; tmp/: {left}")
    assert delivered, f"the events of a run that ended at once were not delivered (left in tmp/: {left})"
    assert sorted(received_ids(collector)) == sorted(ids)
    assert_senders_quiet(hosts)
