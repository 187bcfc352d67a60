"""The background thread: buffer → disk queue, the product's sender kept alive, flush and exit.

One daemon thread per agent per process, started lazily; it never delays the host's exit and
never opens a socket. It persists what the host buffered at least every ``PERSIST_EVERY``
seconds while anything is buffered, so that a slow server cannot hold records in memory, and it
starts the product's sender (a detached process, or a thread where none can be started) as soon
as the queue holds work. Everything it needs is imported before the host may fork.
"""

from __future__ import annotations

import os
import threading
import time

from .. import choices, identity
from .._log import logger
from .._state import HostPort, HostState
from ..buffer import OWN_THREADS
from ..config import Config
from ..optout import OPT_OUT_VARIABLES, Decision, decide, product_variable
from ..payload import make_event_ids
from ..queue import DiskQueue
from ..sender.files import request_flush
from ..sender.launch import Launcher, spawn_problem
from .aggregates import AggregateEmitter
from .journal import SessionJournal
from .schedule import CallHomeSchedule
from .spool import Spool
from .storage import Storage

__all__ = ["Worker", "preload"]

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (a short-lived host waits for it)
if TYPE_CHECKING:
    from typing import Any, Callable, TypeVar

    _T = TypeVar("_T")

#: The longest a record waits in memory while the host is tracking.
PERSIST_EVERY = 0.05
#: The most exit waits for local disk work (the queue's setup, the aggregate store's lock),
#: however loaded the machine; the network is never waited for beyond ``exit_timeout``.
LOCAL_EXIT_BUDGET = 2.0
#: While a sender this process started may exit, look at least this often (to reap it).
REAP_EVERY = 1.0
#: How often a busy worker looks at what changes slowly (opt-outs, heartbeat, the sender's status).
CHECK_EVERY = 1.0
#: While the disk refuses records (full, read-only), it is tried again this often, and by a flush.
DISK_RETRY = 5.0
#: A flush polls the queue's depth this often.
FLUSH_POLL = 0.02
#: ``SenderState`` values in which a flush cannot succeed until something changes (the delivery
#: stack itself is not imported by the host's process).
_STUCK = ("backoff", "auth_failed", "held", "disabled", "deferred")


def preload(config: Config) -> None:
    """Import, on the worker's thread and before the host may fork, what the worker's steps would
    otherwise import later: a fork while this thread holds an import lock leaves the child's
    first import of that module hanging for good. (A sender process imports in its own process.)
    """
    import json  # noqa: F401
    import locale  # noqa: F401  (client properties)
    import select  # noqa: F401  (the waker)

    from .. import _digest  # noqa: F401  (aggregate ids, the product directory's name)
    from .._fs import atomic_write, ensure_private_dir  # noqa: F401
    from ..payload import platform_triple  # noqa: F401

    if config.data_dir is None:
        import platformdirs  # noqa: F401
    if config.sender == "thread" or spawn_problem():
        from ..sender import loop, transport  # noqa: F401  (the thread sender's delivery stack)

        transport.preload(config.endpoint)
    if config.license_secret:
        import hashlib  # noqa: F401  (the license key's HMAC)
        import hmac  # noqa: F401


class Worker:
    """Persists what one agent's host buffers and keeps the product's sender alive."""

    def __init__(self, state: HostState, port: HostPort, thread: threading.Thread) -> None:
        self.state = state
        self.port = port
        self.thread = thread
        self.storage = Storage(state)
        self.spool = Spool(state, self.storage, port.client_properties)
        self.schedule = CallHomeSchedule(state, self.storage, port.queue_call_home)
        self.journal = SessionJournal(state, port.accept_session)
        self.aggregates = AggregateEmitter(state, self.storage, self.spool)
        self.launcher: Launcher | None = None
        self._done = threading.Condition()
        self._setup_lock = threading.Lock()
        self._flush_wanted = 0
        self._flush_done = 0
        self._stopping = False
        self._exiting = False
        self._flushing = 0  # flush() calls waiting for the queue to empty
        self._checked_at = -CHECK_EVERY
        self._quiet_until = 0.0  # monotonic: until then a pass only persists (see _cycle)
        self._disk_tried_at = 0.0
        self._decided: tuple[object, ...] = ()
        self._flush_stamp: int | None = None  # the stamp of this process's latest flush request

    @property
    def _active_launcher(self) -> Launcher:
        """The launcher, for the steps that run once :meth:`_setup` made it."""
        launcher = self.launcher
        assert launcher is not None
        return launcher

    # -- called from the host's threads ------------------------------------------------------
    def flush(self, timeout: float) -> bool:
        """Persist everything, have the sender run a forced cycle, and wait for an empty queue."""
        deadline = time.monotonic() + max(timeout, 0.0)
        if not self._persist_now(deadline):
            return self.storage.refused is not None
        lost, asked = self.lost(), time.time()
        self._flushing += 1
        try:
            return self._wait_until_sent(deadline, lost, asked)
        finally:
            self._flushing -= 1

    def _wait_until_sent(self, deadline: float, lost: int, asked: float) -> bool:
        while True:
            self.spool.refresh_depth(force=True)
            self._active_launcher.refresh(force=True)
            if self.spool.depth[0] == 0 and not self.state.buffer:
                self._settled(min(deadline, time.monotonic() + 1.0))
                return self.lost() == lost  # a record dropped or rejected meanwhile was not delivered
            if self._stuck(asked) or time.monotonic() > deadline:
                return False
            time.sleep(FLUSH_POLL)

    def _persist_now(self, deadline: float) -> bool:
        """Ask the thread to persist, start a sender and request a forced cycle; False if it could not."""
        with self._done:
            self._flush_wanted += 1
            ticket = self._flush_wanted
        waker = self.state.waker
        assert waker is not None  # made before the worker's thread
        waker.force()
        with self._done:
            while self._flush_done < ticket:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.thread.is_alive() or self.storage.refused is not None:
                    return False
                self._done.wait(remaining)
        return self.launcher is not None

    def _settled(self, until: float) -> None:
        """Let the sender say its cycle ended (it acks a batch, then publishes ``idle``): after a
        flush, ``status()`` describes the queue it emptied."""
        while self._active_launcher.snapshot()["state"].startswith("sending") and time.monotonic() < until:
            time.sleep(FLUSH_POLL)
            self._active_launcher.refresh(force=True)

    def _stuck(self, asked: float) -> bool:
        """The sender answered our request with a state that waits (backoff, auth, held, ...)."""
        snapshot = self._active_launcher.snapshot()
        if self._held_here() or snapshot["state"].startswith(("disabled", "deferred")):
            return True
        updated = snapshot.get("updated") or 0
        kind = snapshot["state"].split(":")[0]
        # a sender with another run's settings is about to make way: its answer is not ours; nor
        # is a state published before it ran the forced cycle our request asked for
        answered = self._flush_stamp is None or (snapshot.get("answered") or 0) >= self._flush_stamp
        return snapshot["our_settings"] and updated >= asked and answered and kind in _STUCK

    def stop(self, timeout: float, exiting: bool = False) -> None:
        """Save what this process holds (local disk only), make sure a sender will deliver it,
        then let the thread finish. ``timeout`` bounds the wait for a thread sender's request."""
        self._stopping, self._exiting = True, exiting
        if self.state.waker is not None:
            self.state.waker.force()
        if self.state.buffer or self.state.counter or not self.schedule.looked:
            self._save_at_exit()
        self._guard(self._retry_disk)  # one last try: what memory holds is lost at exit otherwise
        with self.state.persist_lock:
            pass  # records the worker already took from the buffer are on disk once it lets go
        self.spool.publish(force=True)  # this Worker's open batch, if the exit hook uses another one
        if not self.state.buffer:
            self.journal.close(self.storage.directory)  # its sessions are queued
        if self.launcher is not None:
            if self._sender_wanted():
                self._guard(lambda: self._launcher().ensure(now=True))
                self._guard(self.launcher.ensure_successor)
            self.launcher.stop(timeout, exiting=self._exiting)
        self._guard(self._count_left_in_memory)

    def _save_at_exit(self) -> None:
        """Persist the buffer and merge the counts on this thread, without waiting for the network."""
        deadline = time.monotonic() + LOCAL_EXIT_BUDGET  # one budget for all of it, not one per wait
        if not self._setup_lock.acquire(timeout=LOCAL_EXIT_BUDGET):
            self._persist_with_own_handle()  # the worker is stuck opening the queue
            return
        try:
            self._setup()
        finally:
            self._setup_lock.release()
        if self.storage.refused is None:
            self._guard(self._recover_sessions)  # a short run: the thread may not have got to it
            if not self.schedule.looked:  # nor to the CALL_HOME (its state file keeps it once a day)
                self._guard(self.schedule.maybe_queue)
            self.spool.persist()
            self.spool.publish(force=True)
            if self.state.counter:
                self.aggregates.merge(max(deadline - time.monotonic(), 0.0), final=True)

    def _persist_with_own_handle(self) -> None:
        storage = Storage(self.state)
        directory = storage.product_directory()
        if directory and not decide(self.state.cfg, choices=choices.load(directory)).enabled:
            return
        storage.queue, installation_id, storage.disk_error = storage.open(directory)
        spool = Spool(self.state, storage, self.port.client_properties)
        try:
            spool.put_records(self.state.buffer.drain(), installation_id)
        except OSError:
            self.state.counters.add("dropped.disk_error")
        if self.state.counter is not None:  # the store is the stuck worker's: counts cannot reach it
            self.state.counters.add("dropped.aggregate_exit", sum(self.state.counter.drain().values()))

    # -- the thread --------------------------------------------------------------------------
    def run(self) -> None:
        """The thread's loop (the agent starts the thread, whose first act is to build us)."""
        OWN_THREADS.add(threading.get_ident())
        try:
            self._run()
        finally:
            OWN_THREADS.discard(threading.get_ident())

    def _run(self) -> None:
        with self._setup_lock:
            self._guard(self._setup)
        if self.storage.refused is not None:
            self.port.refuse(self.storage.refused)
            self._release_flush_waiters()  # nothing will ever be sent: nothing is pending
            return
        self._guard(self.schedule.maybe_queue)
        self._guard(self._recover_sessions)
        if self.spool.depth[0]:
            self._guard(self._ensure_sender)  # a backlog from earlier runs
        waker = self.state.waker
        assert waker is not None  # made before this thread
        while not self._stopping and self.storage.refused is None:
            moved = self._guard(self._cycle)
            if moved is None:
                time.sleep(1.0)  # an unexpected error must not turn into a busy loop
            elif moved or self.state.buffer:
                time.sleep(PERSIST_EVERY)  # let records gather: one file per 50 ms, not per record
            else:
                waker.wait(self._interval(), lambda: bool(self.state.buffer) or self._stopping)
        self._guard(self.spool.persist)  # records that arrived while stop() could not reach the queue
        self._guard(lambda: self.spool.publish(force=True))

    def _release_flush_waiters(self) -> None:
        with self._done:
            self._flush_done = self._flush_wanted
            self._done.notify_all()

    def _guard(self, step: Callable[[], _T]) -> _T | None:
        """Run one step; an unexpected error is counted and logged at debug, never shown to the host."""
        try:
            return step()
        except Exception:
            self.state.counters.add("internal_errors")
            logger().debug("callhome: unexpected error in the worker", exc_info=True)
            return None

    def _interval(self) -> float:
        # jittered so that a fleet started together does not call home in lockstep
        config = self.state.cfg
        wait = config.flush_interval * (0.8 + 0.4 * int.from_bytes(os.urandom(2), "big") / 65535)
        if self.journal.active:
            wait = min(wait, config.heartbeat_interval)
        if self.state.counter is not None:
            wait = min(wait, max(self.aggregates.merged_at + config.flush_interval - time.monotonic(), 0.05))
        if self.launcher is not None and self.launcher.spawned:
            wait = min(wait, REAP_EVERY)
        if self.launcher is not None and self.launcher.awaiting_retirement and self.spool.depth[0]:
            wait = min(wait, 0.1)  # an older sender is making way: start ours as soon as it is gone
        return min(wait, max(self.schedule.due - time.time(), 0.05), max(self.spool.publish_due(), 0.01))

    def _cycle(self) -> int:
        """One pass; returns how many records it moved to the queue.

        While the host tracks this runs every 50 ms, and right after a sleep every line it runs
        costs several times what it costs warm (``bench/cold_wake.py``): until something falls
        due (a batch to publish, the sender's probe, a merge, the CALL_HOME, the checks of
        ``CHECK_EVERY``) or a flush asks, a pass only persists.
        """
        now = time.monotonic()
        if now < self._quiet_until and now < self.spool.publish_at and not self._flushing \
                and self._flush_wanted == self._flush_done:  # read unlocked: a flush is seen next pass
            moved = self.spool.persist()
            make_event_ids()  # the ids the host's next calls take
            return moved
        moved = self._full_cycle()
        # unchecked, as the rest of the pass: _setup() made the launcher before the loop began
        self._quiet_until = min(self._checked_at + CHECK_EVERY, self.launcher.next_probe,  # type: ignore[union-attr]
                                self.aggregates.next_tick(), now + self.schedule.due - time.time())
        return moved

    def _full_cycle(self) -> int:
        """Persist, publish, keep a sender; the rest (opt-outs appearing, the sessions' heartbeat,
        reaping, the sender's status, caps) once per ``CHECK_EVERY``, or for a flush."""
        with self._done:
            ticket = self._flush_wanted
        forced = ticket > self._flush_done
        if (forced or time.monotonic() - self._checked_at >= CHECK_EVERY) and self._slow_checks(forced):
            self._release_flush_waiters()
            return 0  # an opt-out appeared: nothing more to do
        if time.time() >= self.schedule.due:
            self.schedule.maybe_queue()
        moved = self.spool.persist()
        make_event_ids()  # the ids the host's next calls take
        counted = self.spool.publish(force=forced)
        if forced or self.aggregates.due():
            self.aggregates.tick()  # also windows that other processes left to send
        if forced and (queue_dir := self.storage.opened.dir):
            self._flush_stamp = request_flush(queue_dir)
        if (forced or moved) and not counted:  # the depth a flush waits on: listed once per cycle
            self.spool.refresh_depth(force=forced)
        if self.spool.depth[0] or forced:
            # a flush waits: it tries despite a backoff; cheap when a sender runs (probed twice a second)
            self._ensure_sender(forced or self._flushing > 0)
        if forced:
            with self._done:
                self._flush_done = ticket
                self._done.notify_all()
        return moved

    def _slow_checks(self, forced: bool = False) -> bool:
        """What may wait a second; True when an opt-out appeared (the worker then stops)."""
        self._checked_at = time.monotonic()
        if self._opted_out_now():
            return True
        if forced or self._checked_at - self._disk_tried_at >= DISK_RETRY:
            self._retry_disk()
        if self._active_launcher.config is not self.state.config:
            self._active_launcher.reconfigure(self.state.cfg)
        self._beat()
        self._active_launcher.reap()
        self._active_launcher.refresh()
        self.spool.refresh_depth(force=True)  # the sender empties the queue: stop asking for one
        self.spool.maintain()
        self.spool.keep_within_caps()  # the product's processes together may have gone over
        return False

    def _retry_disk(self) -> None:
        """Back to the disk queue once it takes records again (the next cycle swaps the sender)."""
        if self.storage.disk_error is None:
            return
        self._disk_tried_at = time.monotonic()
        with self.state.persist_lock:
            if self.storage.retry_disk():
                self.spool.refresh_depth(force=True)

    def _count_left_in_memory(self) -> None:
        """At the end, what a memory-only queue still holds is lost: counted, not silent."""
        if self.storage.disk_error is not None and self.storage.queue is not None:
            with self.state.persist_lock:
                self.state.counters.add("dropped.memory_only", self.storage.queue.purge())

    def _setup(self) -> None:
        self.storage.setup()
        if self.storage.queue is not None and self.launcher is None:
            self.launcher = self._new_launcher()
            self.launcher.claim_settings()  # before this process publishes anything
            self.spool.refresh_depth(force=True)

    def _opted_out_now(self) -> bool:
        """An opt-out that appeared while the host runs (a variable, a ``disable``): absorbing.

        ``decide()`` runs again only when an opt-out variable or the saved choices changed.
        """
        config, saved = self.state.cfg, self.storage.choices()
        key = (config, id(saved), tuple(os.environ.get(name) for name in OPT_OUT_VARIABLES),
               os.environ.get(product_variable(config)), tuple(os.environ.get(n) for n in config.optout_env))
        if key == self._decided:
            return False
        self._decided = key
        decision = decide(config, choices=saved)
        if decision.enabled:
            return False
        self.storage.refused = decision
        self.port.refuse(decision)
        with self.state.persist_lock:
            self.state.counters.add("dropped.opted_out", self.storage.opened.purge())
        self._active_launcher.retire_all("disabled: " + str(decision.reason))
        return True

    def _sender_wanted(self) -> bool:
        return not (self.storage.deferred or self._held_here()) and self.spool.depth[0] > 0

    def _held_here(self) -> bool:
        return self.state.cfg.held_for is not None

    def _ensure_sender(self, force: bool = False) -> None:
        """Keep a sender for the queued work (``force``: a flush, which tries despite a backoff)."""
        launcher = self._launcher()
        if not (self.storage.deferred or self._held_here()):
            launcher.ensure(now=force, force=force)

    def _launcher(self) -> Launcher:
        """The launcher for the queue in use: the disk failed (memory and a thread now), or is back."""
        if self._active_launcher.queue is not self.storage.queue:
            self._active_launcher.stop(0)
            self.launcher = self._new_launcher()
        return self._active_launcher

    def _new_launcher(self) -> Launcher:
        return Launcher(self.state.cfg, self.storage.opened, self.storage.choices, self.state.counters)

    # -- a telemetry verb run inside this very process --------------------------------------
    def forsake(self, decision: Decision) -> None:
        """``disable`` or ``forget``: stop as an opt-out does, leaving nothing on disk (this
        process's open batch holds records with the installation id just deleted)."""
        with self._setup_lock, self.state.persist_lock:  # a worker still opening the queue: after it
            self.storage.refused = decision
            self.port.refuse(decision)  # what the buffer holds is dropped and counted
            queue = self.storage.queue
            if isinstance(queue, DiskQueue):
                self.state.counters.add("dropped.opted_out", queue.discard_open())
        self._release_flush_waiters()
        if self.state.waker is not None:
            self.state.waker.force()  # the loop ends

    def take_new_id(self) -> None:
        """``reset-id``: what this process buffered under the old id is dropped, the rest goes
        out under a new one (the next record encoded asks for it)."""
        with self._setup_lock, self.state.persist_lock:
            self.state.counters.add("dropped.id_reset", len(self.state.buffer.drain()))
            if self.storage.installation_id is not None and self.storage.directory:
                self.storage.installation_id = identity.load_or_create(
                    self.storage.directory, self.state.cfg.product_id)

    # -- sessions ----------------------------------------------------------------------------
    def _recover_sessions(self) -> None:
        directory = self.storage.directory
        if directory is not None and self.journal.enabled(directory, self.storage.durable):
            self.journal.recover(directory, self.state.persist_lock, self.spool.persist,
                                 lambda: self.storage.durable)
            self._beat()

    def _beat(self) -> None:
        directory = self.storage.directory
        if directory is not None and self.journal.enabled(directory, self.storage.durable) and not self._stopping:
            self.journal.beat(directory)

    # -- what status() shows -----------------------------------------------------------------
    def lost(self) -> int:
        counts = self.counts()
        return sum(n for name, n in counts.items() if name.startswith("dropped.")) + counts.get("rejected", 0)

    def counts(self) -> dict[str, int]:
        """This process's counters, with what the product's sender process did since it started."""
        counts = self.state.counters.snapshot()
        if self.launcher is not None:
            for name, n in self.launcher.sender_counts().items():
                counts[name] = counts.get(name, 0) + n
        return counts

    def snapshot(self) -> dict[str, Any]:
        """What ``Agent.status()`` shows of the worker and the sender."""
        storage, launcher = self.storage, self.launcher
        sender = launcher.snapshot() if launcher else None
        state = sender["state"] if sender else "idle"
        if storage.refused is not None:
            state = "disabled: " + str(storage.refused.reason)
        elif storage.deferred:
            state = "deferred: the first-run notice was just shown; sending starts with the next run"
        elif self.state.config is not None and self._held_here():
            state = "held: " + str(self.state.config.held_for)
        return {"installation_id": storage.installation_id,
                "disk": "memory-only: " + storage.disk_error if storage.disk_error else "ok",
                "queue_dir": getattr(storage.queue, "dir", None), "state": state,
                "queued": self.spool.depth[0], "sender": sender,
                "last_send": sender["last_send"] if sender else None}
