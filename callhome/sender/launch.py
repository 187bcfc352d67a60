"""The host's side of the sender: start one when the queue holds work and none is alive.

Runs on the worker thread (and in the exit hook). Starting a Python process costs the starting
thread about 8 ms of wall time but only 0.3 ms of CPU, so the worker does it as soon as there is
work. Where starting ``sys.executable`` would not start a Python that imports this very copy of
callhome (frozen apps, uWSGI, mod_wsgi, embedded interpreters, zipapps, a vendored copy), or the
spawn fails, the same :class:`~callhome.sender.loop.SenderLoop` runs on a thread instead.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

from .._lock import is_held
from .._log import logger
from .._version import __version__
from ..buffer import OWN_THREADS, Counters
from ..config import Config
from .files import LOCK_NAME, fingerprint, package_dir, paused_until, read_status, request_retirement

__all__ = ["Launcher", "spawn_problem"]

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (a short-lived host waits for it)
if TYPE_CHECKING:
    import subprocess
    from typing import Any, Callable

    from ..memqueue import MemoryQueue
    from ..queue import DiskQueue
    from .loop import SenderLoop

#: A sender not seen alive is looked for again at most this often (a ``flock`` probe).
PROBE_EVERY = 0.5
#: Failed starts in a row after which this process sends on a thread instead.
MAX_FAILURES = 3
#: A sender that exits non-zero within this many seconds of its start failed to start.
EARLY_EXIT = 10.0
#: ``sender.json`` is read again at most this often for ``status()``.
STATUS_EVERY = 1.0


def spawn_problem() -> str | None:
    """Why this host must not start ``python -m callhome`` (None when it can)."""
    if getattr(sys, "frozen", False):
        return "a frozen application (sys.frozen)"
    if hasattr(sys.modules.get("__main__"), "__compiled__"):
        return "a Nuitka-compiled application"
    for embedder in ("uwsgi", "mod_wsgi"):
        if embedder in sys.modules:
            return f"running inside {embedder}"
    if __name__.split(".")[0] != "callhome":
        return f"callhome is vendored as {__name__.split('.')[0]}"
    exe = sys.executable
    if not exe or not os.path.isfile(exe) or not os.access(exe, os.X_OK):
        return "sys.executable is not an executable file"
    if not os.path.basename(exe).lower().startswith(("python", "pypy")):
        return f"sys.executable ({os.path.basename(exe)}) is not a Python interpreter"
    if not os.path.isfile(os.path.join(package_dir(), "__main__.py")):
        return "callhome is not imported from a directory (a zip or an embedded archive)"
    return None


class Launcher:
    """Keeps one sender of the product alive while this process has work for it."""

    def __init__(self, config: Config, queue: DiskQueue | MemoryQueue, choices: Callable[[], dict[str, Any]],
                 counters: Counters) -> None:
        self.config = config
        self.queue = queue
        self.choices = choices
        self.counters = counters
        self.created = time.time()
        problem = "the queue is in memory" if queue.dir is None else None
        if config.sender == "thread":
            problem = "sender='thread'"
        self.fallback: str | None = problem or spawn_problem()
        self.spawned = 0
        self._child: _Child | subprocess.Popen[bytes] | None = None  # a Popen where there is no posix_spawn
        self._child_started = 0.0
        self._failures = 0
        self._probed_at = -PROBE_EVERY
        self._loop: SenderLoop | None = None  # a thread sender's
        self._thread: threading.Thread | None = None
        self._status: dict[str, Any] = {}
        self._status_at = -STATUS_EVERY
        #: (pid, started) of the sender whose counts are read, and its counts when this process started
        self._baseline: tuple[tuple[object, object] | None, dict[str, int]] = (None, {})
        self._fingerprint = fingerprint(config)
        self._retire_asked = False
        self._warned: object = None
        self._folded: dict[str, int] = {}

    @property
    def next_probe(self) -> float:
        """When (monotonic) :meth:`ensure` next looks at the sender; a thread sender: always."""
        return float("-inf") if self.fallback else self._probed_at + PROBE_EVERY

    @property
    def mode(self) -> str:
        return "thread" if self.fallback else "process"

    # -- keeping a sender alive ------------------------------------------------------------------
    def ensure(self, now: bool = False, force: bool = False) -> None:
        """There is work: make sure a sender runs. ``now``: look at once, not at the next probe;
        ``force`` (a flush): start one even while the product waits out a backoff."""
        if self.fallback:
            self._ensure_thread()
            return
        moment = time.monotonic()
        if not (now or force) and moment - self._probed_at < PROBE_EVERY:
            return  # looked less than PROBE_EVERY ago: the worker calls this every 50 ms
        self._probed_at = moment
        if not self._child_alive():
            if not is_held(self.queue.lock_path(LOCK_NAME)):  # type: ignore[arg-type]  # no fallback: on disk
                if force or time.time() >= paused_until(self.queue, self.config):
                    self._spawn()  # (a sender started during a backoff would only wait, then exit idle)
                return
        self._replace_if_stale()

    @property
    def awaiting_retirement(self) -> bool:
        """An older sender was asked to make way and ours is not started yet: look again soon."""
        return self._retire_asked and self._child is None

    def reconfigure(self, config: Config) -> None:
        """``init()`` again: a sender with the old settings makes way for one with the new."""
        self.config, self._fingerprint = config, fingerprint(config)
        self.created, self._retire_asked = time.time(), False
        if config.sender == "thread" and not self.fallback:
            self.fallback = "sender='thread'"
        if self._loop is not None:
            self._loop.stop()  # a thread sender: the next ensure() starts one with the new settings

    def claim_settings(self) -> None:
        """At start: a running sender with an older run's settings is asked to make way at once,
        so that it does not send this process's records with them."""
        if not self.fallback and self.queue.dir is not None and is_held(self.queue.lock_path(LOCK_NAME)):
            self._replace_if_stale()

    def _replace_if_stale(self) -> None:
        """A sender with other settings (an older run's key or endpoint) makes way for ours, once:
        only a sender started before this process is asked, so two hosts never take turns."""
        if self._retire_asked:
            return
        self.refresh()
        started = self._status.get("started")
        if self._status.get("config") not in (None, self._fingerprint) and isinstance(started, (int, float)) \
                and started < self.created and not self._retire_asked:
            self._retire_asked = True
            # reached only without a fallback, so with a queue on disk
            request_retirement(self.queue.dir, self._fingerprint, self.created,  # type: ignore[arg-type]
                               "replaced by newer settings")

    def reap(self) -> None:
        """Collect a sender that exited (a host that is PID 1 must not gather zombies)."""
        self._child_alive()

    def _child_alive(self) -> bool:
        child = self._child
        if child is None:
            return False
        code = child.poll()
        if code is None:
            return True
        self._child = None
        if code != 0 and time.monotonic() - self._child_started < EARLY_EXIT:
            self._failed(f"the sender exited with status {code}")
        else:
            self._failures = 0
        return False

    def ensure_successor(self) -> None:
        """At exit, while an older sender is making way: start ours now, to wait for its lock
        (a request on the wire bounds that wait), since this process will not look again."""
        if not self.fallback and self.awaiting_retirement:
            self._spawn(wait_for_lock=2 * self.config.timeout + 5)

    def _spawn(self, wait_for_lock: float = 0.0) -> None:
        handoff = json.dumps({"version": __version__, "package": package_dir(), "wait": wait_for_lock,
                              "config": self.config.to_dict()}).encode()
        try:
            child = _start([sys.executable, "-m", "callhome", "_sender"], handoff)
        except Exception as exc:  # no permission to start processes, no such file, out of pids
            # not a passing state: a short run could not wait for three attempts
            self._failed(f"{type(exc).__name__}: {exc}", at_once=True)
            return
        self._child, self._child_started = child, time.monotonic()
        self.spawned += 1
        self.counters.add("sender.started")

    def _failed(self, why: str, at_once: bool = False) -> None:
        self.counters.add("sender.failed")
        self._failures = MAX_FAILURES if at_once else self._failures + 1
        logger().debug("callhome: starting the sender failed (%s)", why)
        if self._failures >= MAX_FAILURES:
            self.fallback = f"the sender process could not be started ({why})"

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive() and self._loop is not None:
            self._loop.wake()
            return
        from .loop import SenderLoop  # the delivery stack: only where this process sends itself

        loop = SenderLoop(self.config, self.queue, self.choices, "thread", counters=self.counters)
        if not loop.claim():
            return  # another process's sender is alive: it takes this process's work too
        self._loop = loop
        self._thread = threading.Thread(target=self._run_thread, name="callhome-sender", daemon=True)
        self._thread.start()

    def _run_thread(self) -> None:
        OWN_THREADS.add(threading.get_ident())
        try:
            self._loop.run()  # type: ignore[union-attr]
        finally:
            OWN_THREADS.discard(threading.get_ident())

    # -- exit ------------------------------------------------------------------------------------
    def retire_all(self, why: str) -> None:
        """Telemetry was turned off in this process: whatever sender runs stops now."""
        if self._loop is not None:
            self._loop.stop()
        if self.queue.dir is not None:
            request_retirement(self.queue.dir, "", time.time(), why)

    def stop(self, timeout: float, exiting: bool = False) -> None:
        """Stop looking after the sender: a process sender goes on alone (at exit it is left to
        init; otherwise a later reap() collects it); a thread sender gets ``timeout`` to finish a
        request on the wire."""
        child, self._child = self._child, None
        if child is not None and not exiting and child.poll() is None:
            # at exit it is left to init; otherwise a daemon thread waits for it (no zombie)
            threading.Thread(target=child.wait, name="callhome-reaper", daemon=True).start()
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            in_flight = loop.sender.in_flight
            loop.stop()
            if in_flight and thread is not threading.current_thread():
                thread.join(timeout)

    @property
    def in_flight(self) -> bool:
        return bool(self._loop is not None and self._loop.sender.in_flight)

    # -- what status() shows ---------------------------------------------------------------------
    def refresh(self, force: bool = False) -> None:
        """Read the sender's published status (a process's ``sender.json``)."""
        now = time.monotonic()
        if self.queue.dir is None or (not force and now - self._status_at < STATUS_EVERY):
            return
        self._status_at = now
        status = read_status(self.queue.dir)
        if not isinstance(status.get("counts"), dict):
            return
        # a sender killed without a word left its last status behind: the lock tells the truth
        status["alive"] = is_held(self.queue.lock_path(LOCK_NAME))
        key = (status.get("pid"), status.get("started"))
        if key[0] == os.getpid():
            return  # this process's own thread sender: its counts are ours already
        if key != self._baseline[0]:
            self._fold()
            # a sender that was running before this process started also sent others' records
            before_us = isinstance(key[1], (int, float)) and key[1] < self.created
            self._baseline = (key, dict(status["counts"]) if before_us else {})
        self._status = status
        self._warn_once(status)

    def _warn_once(self, status: dict[str, Any]) -> None:
        """The sender process logs nowhere the host sees: what the host must know is said here."""
        state = str(status.get("state", ""))
        if state.startswith("auth_failed") and self._warned != status.get("started"):
            self._warned = status.get("started")
            logger().warning("callhome: the endpoint refused the API key; sending paused")

    def _fold(self) -> None:
        self._folded = self.sender_counts()
        self._status = {}

    def sender_counts(self) -> dict[str, int]:
        """What the product's senders in other processes did since this process started."""
        counts = dict(self._folded)
        baseline = self._baseline[1]
        for name, n in self._status.get("counts", {}).items():
            if isinstance(n, int):
                counts[name] = counts.get(name, 0) + n - baseline.get(name, 0)
        return counts

    def snapshot(self) -> dict[str, Any]:
        """``status()["sender"]``: mode, whether one runs, its pid, since when, sent, last error,
        and how many this process started (``spawned``) or failed to start (``spawn_failures``)."""
        shown = self._snapshot()
        shown["spawned"], shown["spawn_failures"] = self.spawned, self.counters.get("sender.failed")
        return shown

    def _snapshot(self) -> dict[str, Any]:
        if self.fallback:
            loop = self._loop
            running = bool(self._thread is not None and self._thread.is_alive())
            return {"mode": "thread", "why": self.fallback, "running": running,
                    "pid": os.getpid() if running else None,
                    "since": loop.started if loop and running else None,
                    "sent": self.counters.get("delivered"), "state": loop.sender.state if loop else "idle",
                    "last_error": loop.sender.last_error if loop else None,
                    "last_send": loop.sender.last_send if loop else None, "updated": loop.updated if loop else 0.0,
                    "answered": loop.answered if loop else None, "our_settings": True, "resources": None}
        status = self._status
        running = status.get("ended") is None and bool(status.get("alive"))
        return {"mode": "process", "why": None, "running": running, "pid": status.get("pid") if running else None,
                "since": status.get("started") if running else None,
                "sent": status.get("counts", {}).get("delivered", 0), "state": status.get("state", "idle"),
                "last_error": status.get("last_error"), "last_send": status.get("last_send"),
                "updated": status.get("updated", 0.0), "answered": status.get("answered"),
                "our_settings": status.get("config") == self._fingerprint,
                "resources": status.get("resources")}


class _Child:
    """A sender we started: its pid, and whether it has exited (``waitpid`` reaps it)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def wait(self) -> int | None:
        """Block until it exits (a daemon thread's job once nobody else looks after it)."""
        while self.poll() is None:
            time.sleep(0.5)
        return self.returncode

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere (a host that waits for every child)
                self.returncode = 0
                return 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") \
                    else (status >> 8)
        return self.returncode


def _start(argv: list[str], handoff: bytes) -> _Child | subprocess.Popen[bytes]:
    """Start the detached sender with ``handoff`` on its stdin; returns an object with ``poll()``.

    ``os.posix_spawn`` where there is one: it spares the worker the import of ``subprocess``
    (3 ms), and vfork makes the start cheap. Only the pipe and the null device reach the child:
    every descriptor the host made inheritable is closed in it.
    """
    if not hasattr(os, "posix_spawn") or not hasattr(os, "POSIX_SPAWN_DUP2"):
        return _start_with_popen(argv, handoff)
    read_end, write_end = os.pipe()
    actions = [(os.POSIX_SPAWN_DUP2, read_end, 0),
               (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
               (os.POSIX_SPAWN_DUP2, 1, 2)]
    actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_descriptors() if fd > 2]
    try:
        # setsigmask: the worker thread's blocked signals (a host may block SIGTERM in its threads)
        # must not follow the sender, which ends on SIGTERM
        pid = os.posix_spawn(argv[0], argv, _child_environment(), file_actions=actions, setsid=True,
                             setsigmask=[])
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    try:
        os.write(write_end, handoff)  # far below a pipe's buffer: never blocks
    except OSError:
        pass  # it died at once: poll() tells, and counts it
    finally:
        os.close(write_end)
    return _Child(pid)


def _inheritable_descriptors() -> list[int]:
    """The host's descriptors a spawned child would inherit (Python makes its own non-inheritable)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        found = []
        for name in names:
            try:
                if os.get_inheritable(int(name)):
                    found.append(int(name))
            except (OSError, ValueError):
                continue  # the listing's own descriptor, closed by now
        return found
    return []


def _start_with_popen(argv: list[str], handoff: bytes) -> subprocess.Popen[bytes]:
    import subprocess

    # detached; Any: with a dict of one type, mypy matches it against every keyword (encoding too)
    flags: dict[str, Any] = {"creationflags": 0x8 | 0x200} if os.name == "nt" else {"start_new_session": True}
    child: subprocess.Popen[bytes] = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
        env=_child_environment(), **flags)
    try:
        child.stdin.write(handoff)  # type: ignore[union-attr]
        child.stdin.close()  # type: ignore[union-attr]
    except OSError:
        pass
    return child


def _child_environment() -> dict[str, str]:
    """The host's environment (opt-outs, proxies, CA bundles), with this copy of callhome first
    on the path so that ``-m callhome`` finds it even when the host put it there by hand."""
    env = {k: v for k, v in os.environ.items() if k not in ("CALLHOME_API_KEY", "REO_API_KEY")}  # on stdin
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.dirname(package_dir()), env.get("PYTHONPATH")) if p)
    return env
