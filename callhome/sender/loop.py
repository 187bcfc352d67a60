"""The product's sender: drains the shared queue until it is idle, then exits.

One per product, proved by ``locks/sender.lock``, which the sender holds for its whole life (the
kernel releases it when the sender dies, so a held lock is a live sender). It runs in a detached
process (``python -m callhome _sender``) or, where no process can be started, on a thread of the
host; the loop is the same. It publishes what it does in ``state/sender.json`` for ``status()``
and ``callhome status``; a ``flush()`` anywhere asks it for a forced cycle through
``state/flush.json``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from .._fs import mtime_ns, read_json, write_json
from .._lock import Busy, FileLock
from .._log import logger
from ..buffer import Counters
from ..config import Config
from .delivery import Sender, SenderState, TransportFactory
from .files import FLUSH_FILE, LOCK_NAME, RETIRE_FILE, STATUS_FILE, fingerprint, state_path
from .transport import open_transport

if TYPE_CHECKING:
    from ..memqueue import MemoryQueue
    from ..queue import DiskQueue

__all__ = ["SenderLoop"]
#: How often an idle sender looks for new batches (a ``stat`` of ``ready/``, nothing more).
POLL = 0.05
#: Without a change in ``ready/``, a full cycle still runs this often (batches due after a retry).
RESCAN = 1.0
#: A flush request younger than this when a sender starts gets its forced cycle.
RECENT_FLUSH = 10.0
#: ``sender.json`` is rewritten at most this often while sending (and on every change of state).
STATUS_EVERY = 0.25

_PROGRESS = ("delivered", "rejected", "dropped.")


class SenderLoop:
    """Runs delivery cycles for one product until idle for ``config.sender_idle_timeout``, past
    ``config.sender_lifetime``, or stopped."""

    def __init__(self, config: Config, queue: DiskQueue | MemoryQueue, choices: Callable[[], dict[str, Any]], mode: str,
                 counters: Counters | None = None, transport: TransportFactory = open_transport) -> None:
        self.config = config
        self.queue = queue
        self.mode = mode
        self.counters = counters or Counters()
        self.sender = Sender(queue, self.counters, choices, transport=transport, progress=self._progress)
        self.started = time.time()
        self.ended: str | None = None
        self._lock = FileLock(queue.lock_path(LOCK_NAME)) if queue.dir else None
        self._wake = threading.Event()
        self._stop = False
        self._status_at = 0.0
        #: when the status was last published (a flush trusts only a state newer than its request)
        self.updated = 0.0
        self._shown: tuple[str, str | None, int] | tuple[()] = ()
        self._ready_stamp: int | None = None
        self._scanned_at = 0.0
        # a flush asked for in the last seconds is this sender's to answer (it may have been
        # started for it, after an older sender made way)
        requested = mtime_ns(self._state_path(FLUSH_FILE))
        recent = requested is not None and time.time() - requested / 1e9 < RECENT_FLUSH
        self._forced_stamp = None if recent else requested
        #: the stamp of the flush request the last forced cycle answered (a flush trusts only an answer to its own)
        self.answered: int | None = None
        self._retire_stamp = mtime_ns(self._state_path(RETIRE_FILE))
        self.fingerprint = fingerprint(config)

    # -- life ------------------------------------------------------------------------------------
    def claim(self, wait: float = 0.0) -> bool:
        """Take the product's sender lock within ``wait`` seconds; False when another sender is
        alive (or locks fail)."""
        if self._lock is None:
            return True  # a memory-only queue belongs to this process alone
        try:
            self._lock.acquire(wait, poll=0.05)
        except Busy:
            return False
        except OSError as exc:
            logger().debug("callhome: sender.lock unusable (%r)", exc)
            return False
        return True

    def run(self) -> str:
        """Send until there is nothing to do; returns why it ended (``idle``, ``lifetime``, ...)."""
        try:
            self.ended = self._loop()
        except Exception as exc:  # never a traceback: the next host starts a new sender
            self.ended = f"error: {type(exc).__name__}: {exc}"
            logger().debug("callhome: sender failed", exc_info=True)
        finally:
            self._publish(force=True)
            self.sender.close()
            if self._lock is not None:
                self._lock.release()
        return self.ended

    def stop(self) -> None:
        self._stop = True
        self._wake.set()

    def wake(self) -> None:
        """New work was persisted (the thread mode's worker says so; a process polls)."""
        self._wake.set()

    def _loop(self) -> str:
        active_at = time.monotonic()
        while not self._stop:
            if time.time() - self.started >= self.config.sender_lifetime:
                return "lifetime"
            if self.queue.dir is not None and not os.path.isdir(self.queue.dir):
                return "the product's directory was removed"
            retired = self._retired()
            if retired:
                return retired
            if self._due():
                before, forced = self._progress_count(), self._forced()
                self._keep_within_caps()
                self.sender.run(self.config, forced, lambda: self._stop)
                self._publish(force=forced)  # a flush waits for the answer to its request
                if self.sender.kind is SenderState.DISABLED:
                    return "disabled"
                if self._progress_count() != before or self.sender.kind is SenderState.SENDING:
                    active_at = time.monotonic()
                    continue
            if time.monotonic() - active_at >= self.config.sender_idle_timeout:
                return "idle"
            self._wake.wait(POLL if self.mode == "process" else RESCAN)
            self._wake.clear()
        return "stopped"

    def _keep_within_caps(self) -> None:
        """The product's one sender sees every process's batches: when they went over a cap
        together (none sees another's open batch), the oldest go, counted."""
        config = self.config
        events, size = self.queue.depth()
        if events > config.max_queue_events or size > config.max_queue_bytes:
            self.counters.add_each("dropped.", self.queue.prune(time.time(), config.max_queue_events,
                                                               config.max_queue_bytes, config.max_age))

    def _due(self) -> bool:
        """Whether to run a cycle: new batches, a flush request, or a periodic rescan."""
        stamp = mtime_ns(os.path.join(self.queue.dir, "ready")) if self.queue.dir else None
        now = time.monotonic()
        if self.mode == "thread" or stamp != self._ready_stamp or now - self._scanned_at >= RESCAN \
                or mtime_ns(self._state_path(FLUSH_FILE)) != self._forced_stamp:
            self._ready_stamp, self._scanned_at = stamp, now
            return True
        return False

    def _retired(self) -> str | None:
        """Why a host started after us asked us to end (other settings, say, or an opt-out)."""
        stamp = mtime_ns(self._state_path(RETIRE_FILE))
        if stamp == self._retire_stamp:
            return None
        self._retire_stamp = stamp
        request = read_json(self._state_path(RETIRE_FILE))
        if request.get("config") != self.fingerprint and _after(request.get("started"), self.started):
            return str(request.get("why") or "retired")
        return None

    def _forced(self) -> bool:
        stamp = mtime_ns(self._state_path(FLUSH_FILE))
        if stamp != self._forced_stamp:
            self._forced_stamp = self.answered = stamp
            return True
        return False

    # -- status ----------------------------------------------------------------------------------
    def _progress_count(self) -> int:
        return sum(v for k, v in self.counters.snapshot().items() if k.startswith(_PROGRESS))

    def _progress(self) -> None:
        # before the batch leaves the queue: whoever sees the queue empty sees these counts too
        self._publish(force=True)

    def _publish(self, force: bool = False) -> None:
        """Write ``sender.json`` when the state changed, or at most every ``STATUS_EVERY`` seconds."""
        last = self.sender.last_send
        shown = (self.sender.state, self.ended, self._progress_count())
        now = time.monotonic()
        if not force and (shown == self._shown or now - self._status_at < STATUS_EVERY) \
                and shown[:2] == self._shown[:2]:
            return
        self._shown, self._status_at, self.updated = shown, now, time.time()
        if self.queue.dir is None:
            return
        status = {"pid": os.getpid(), "mode": self.mode, "started": self.started, "updated": self.updated,
                  "resources": _resources() if self.mode == "process" else None,
                  "state": self.sender.state, "ended": self.ended, "config": self.fingerprint,
                  "counts": self.counters.snapshot(), "answered": self.answered,
                  "last_send": last, "last_error": self.sender.last_error}
        try:
            write_json(self._state_path(STATUS_FILE), status)
        except OSError:
            pass  # the directory went away: the loop notices and ends

    def _state_path(self, name: str) -> str:
        return state_path(self.queue.dir or "", name)


def _after(value: object, moment: float) -> bool:
    return isinstance(value, (int, float)) and value > moment


def _resources() -> dict[str, float]:
    """The sender process's own CPU seconds and peak memory, for ``status()`` and the benchmarks."""
    times = os.times()
    resources = {"cpu_seconds": round(times.user + times.system, 4)}
    try:
        import resource

        resources["max_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except ImportError:  # Windows
        pass
    return resources
