"""The background thread: buffer → disk queue → delivery, plus flush requests and exit.

One daemon thread per agent per process, started lazily; it never delays the host's exit.
Everything that touches the disk, a lock or the network happens here (or in the bounded exit
hook when the worker could not persist in time).
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time

from . import choices, identity, journal, properties
from ._fs import product_dir, unlink_quietly
from ._log import logger
from .buffer import OWN_THREADS
from .delivery import Sender
from .memqueue import MemoryQueue
from .notice import notice_text
from .optout import decide
from .queue import DiskQueue, frame

__all__ = ["Worker"]

MAINTENANCE_INTERVAL = 60.0
#: The most exit waits for local disk work (the queue's setup, the aggregate store's lock),
#: however loaded the machine; the network is never waited for beyond ``exit_timeout``.
LOCAL_EXIT_BUDGET = 2.0
#: Records arriving between two looks that mean "the host is tracking in a burst".
BURST_RECORDS = 64
#: The longest sending waits for a burst to end.
BURST_LIMIT = 2.0
DEPTH_REFRESH = 5.0


class Worker:
    """Owns the queue, the sender and the thread for one :class:`callhome.agent.Agent`."""

    def __init__(self, agent, thread: threading.Thread) -> None:
        self.agent = agent
        self.thread = thread
        self.queue = None
        self.sender: Sender | None = None
        self.installation_id: str | None = None
        self.disk_error: str | None = None
        self.depth = (0, 0)
        self._depth_at = 0.0
        self._maintained_at = 0.0
        self._wake = agent.wake
        self._done = threading.Condition()
        self._put_lock = agent.persist_lock  # shared with a Worker the exit hook may build
        self._setup_lock = threading.Lock()
        self._flush_wanted = 0
        self._flush_done = 0
        self._flush_ok = False
        self._stopping = False
        self._call_home_due = 0.0
        self.aggregates = None  # the AggregateStore, opened when this product counts
        self._aggregated_at = 0.0
        self.directory: str | None = None
        self.choices: dict = {}
        self._choices_stamp: tuple = ()
        self.refused = None  # the Decision, when the saved choices turned telemetry off
        self._detected: dict | None = None  # client properties, detected once
        self._journaled = (-1, 0.0)  # (sessions version, time) of the last journal write
        self._recovered = False  # whether this process looked for crashed processes' sessions

    # -- called from the host's threads ------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def flush(self, timeout: float) -> bool:
        """Run forced delivery cycles until the queue is empty or ``timeout`` seconds have passed.

        A cycle that ran out of its budget, or found another process sending (which holds the
        queue for one bounded cycle only), is followed by another.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            if self._flush_once(deadline):
                return True
            if not self.sender or not self.sender.state.startswith(("another process", "sending")):
                return False
            if deadline - time.monotonic() < 0.1:
                return False
            time.sleep(0.05)

    def _flush_once(self, deadline: float) -> bool:
        with self._done:
            self._flush_wanted += 1
            ticket = self._flush_wanted
        self._wake.set()
        with self._done:
            while self._flush_done < ticket:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.thread.is_alive():
                    return self.refused is not None
                self._done.wait(remaining)
            return self._flush_ok

    def stop(self, timeout: float) -> None:
        """Save what this process holds (local disk only), then let the thread finish.

        ``timeout`` bounds the wait for the network; saving the buffer and merging counts is
        local work, bounded by ``LOCAL_EXIT_BUDGET`` when another process holds the store's lock.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        self._stopping = True
        self._wake.set()
        # _call_home_due is 0 until the thread has looked: a short run owes its CALL_HOME too
        if self.agent.buffer or self.agent.counter or not self._call_home_due:
            self._save_at_exit()
        with self._put_lock:
            pass  # records the worker already took from the buffer are on disk once it lets go
        if self._journaled[0] >= 0 and not self.agent.buffer:
            journal.remove_journal(self.directory, self.agent.sessions.name)  # its sessions are queued
        # a request in flight may finish within the budget; anything else is done or can wait
        if self.sender is not None and self.sender.in_flight and self.thread is not threading.current_thread():
            self.thread.join(max(deadline - time.monotonic(), 0))

    def _save_at_exit(self) -> None:
        """Persist the buffer and merge the counts on this thread, without waiting for the network."""
        if not self._setup_lock.acquire(timeout=LOCAL_EXIT_BUDGET):
            self._persist_with_own_handle()  # the worker is stuck opening the queue
            return
        try:
            self._setup()
        finally:
            self._setup_lock.release()
        if self.refused is None:
            self._guard(self._recover_sessions)  # a short run: the thread may not have got to it
            if not self._call_home_due:  # nor to the CALL_HOME (its state file keeps it once a day)
                self._guard(self._maybe_call_home)
            self.persist()
            if self.agent.counter:
                self._merge_counts(LOCAL_EXIT_BUDGET)

    def _persist_with_own_handle(self) -> None:
        directory = self._directory()
        if directory and not decide(self.agent.config, choices=choices.load(directory)).enabled:
            return
        queue, installation_id, _ = self._open(directory)
        lines = [line for line in (self._frame(r, installation_id) for r in self.agent.buffer.drain()) if line]
        try:
            queue.put(lines, time.time())
        except OSError:
            self.agent.counters.add("dropped.disk_error", len(lines))

    # -- the thread --------------------------------------------------------------------------
    def run(self) -> None:
        """The thread's loop (the agent starts the thread, whose first act is to build us)."""
        OWN_THREADS.add(threading.get_ident())
        with self._setup_lock:
            self._guard(self._setup)
        if self.refused is not None:
            self.agent.refuse(self.refused)
            OWN_THREADS.discard(threading.get_ident())
            self._release_flush_waiters(True)  # nothing will ever be sent: nothing is pending
            return
        self._guard(self._maybe_call_home)
        self._guard(self._recover_sessions)
        while not self._stopping:
            self._wake.wait(self._interval())
            self._wake.clear()
            if not self._guard(self._cycle):
                time.sleep(1.0)  # an unexpected error must not turn into a busy loop
        self._guard(self.persist)  # records that arrived while stop() could not reach the queue
        if self.sender is not None:
            self._guard(self.sender.close)
        OWN_THREADS.discard(threading.get_ident())

    def _release_flush_waiters(self, ok: bool) -> None:
        with self._done:
            self._flush_ok = ok
            self._flush_done = self._flush_wanted
            self._done.notify_all()

    def _guard(self, step) -> bool:
        """Run one step; an unexpected error is counted and logged at debug, never shown to the host."""
        try:
            step()
            return True
        except Exception:
            self.agent.counters.add("internal_errors")
            logger().debug("callhome: unexpected error in the worker", exc_info=True)
            return False

    def _interval(self) -> float:
        # jittered so that a fleet started together does not call home in lockstep
        config = self.agent.config
        wait = config.flush_interval * random.uniform(0.8, 1.2)
        return min(wait, config.heartbeat_interval) if self._journaled[0] >= 0 else wait

    def _cycle(self) -> None:
        with self._done:
            ticket = self._flush_wanted
        forced = ticket > self._flush_done
        if time.time() >= self._call_home_due:
            self._maybe_call_home()
        self._journal_sessions()
        if forced:
            self.persist()
        else:
            self._persist_while_bursting()
        if self._stopping:
            return
        if forced or time.monotonic() - self._aggregated_at >= min(self.agent.config.flush_interval, 5.0):
            try:
                self._aggregate()
            except OSError:  # the store's lock is busy or its disk failed: next cycle
                logger().debug("callhome: aggregation skipped this cycle", exc_info=True)
        lost = self._lost()
        finished = self.sender.run(self.agent.config, forced, self.persist, lambda: self._stopping)
        self._refresh_depth(force=True)
        emptied = finished and self.depth[0] == 0
        if forced:
            with self._done:
                # a record dropped or rejected meanwhile was not delivered: not a success
                self._flush_ok = emptied and not self.agent.buffer and self._lost() == lost
                self._flush_done = ticket
                self._done.notify_all()
        self._maintain()

    def _lost(self) -> int:
        counters = self.agent.counters
        return sum(counters.snapshot("dropped.").values()) + counters.get("rejected")

    def _setup(self) -> None:
        """Read the saved choices; if they allow it, open the queue and show the notice. Idempotent."""
        if self.queue is not None or self.refused is not None:
            return
        config = self.agent.config
        directory = self.directory = self._directory()
        self.choices = self._current_choices()
        decision = decide(config, choices=self.choices)
        if not decision.enabled:
            self.refused = decision  # decided before anything is created
            return
        self.queue, self.installation_id, self.disk_error = self._open(directory)
        self.sender = Sender(self.queue, self.agent.counters, self._current_choices)
        if directory and self.disk_error is None:
            self._show_notice(directory, decision.is_ci)

    def _directory(self) -> str | None:
        try:
            return product_dir(self.agent.config.product_id, self.agent.config.data_dir)
        except Exception:  # no home directory at all: memory-only
            return None

    def _current_choices(self) -> dict:
        """The saved choices as they are now: ``callhome disable`` may run while we send.

        Asked before every request, so the files are read again only when they changed.
        """
        directory = self.directory
        if directory is None:
            return {}
        stamp = tuple(_mtime(path) for path in choices.paths(directory))
        if stamp != self._choices_stamp:
            self.choices, self._choices_stamp = choices.load(directory), stamp
        return self.choices

    def _show_notice(self, directory: str, is_ci: bool) -> None:
        """Once per product and notice version; on a terminal the first send waits for the next run."""
        if is_ci or self.choices.get("notice_version") == choices.NOTICE_VERSION:
            return
        text = notice_text(self.agent.config, directory)
        if _is_terminal():
            sys.stderr.write(text + "\n")
            self.sender.deferred = True
        else:
            logger().warning("%s", text)
        try:
            choices.save(directory, notice_version=choices.NOTICE_VERSION, notice_at=int(time.time()))
        except OSError:
            pass

    def _open(self, directory: str | None) -> tuple:
        """(queue, installation id, why the disk is unusable) for the current configuration."""
        config = self.agent.config
        try:
            if directory is None:
                raise FileNotFoundError("no home directory for callhome's state")
            queue = DiskQueue(directory, config.fsync).open()
            settings = {"endpoint": config.endpoint, "domain": config.domain, "ip_addr": config.ip_addr,
                        "relay": config.relay, "consent": config.consent, "send_in_ci": config.send_in_ci}
            if queue.state("agent") != settings:  # every process starts here: write only on change
                queue.set_state("agent", settings)
            installation_id = None if self.agent.ephemeral_id else identity.load_or_create(
                directory, config.product_id)
            return queue, installation_id, None
        except Exception as exc:  # read-only home, not ours, no HOME at all, ...
            reason = f"{type(exc).__name__}: {exc}"
            logger().debug("callhome: disk queue unusable (%s); memory-only delivery", reason)
            return MemoryQueue(reason), None, reason

    def _go_memory_only(self, exc: BaseException) -> None:
        self.disk_error = f"{type(exc).__name__}: {exc}"
        logger().debug("callhome: disk queue unusable (%s); memory-only delivery", self.disk_error)
        self.queue = MemoryQueue(self.disk_error)
        if self.sender is not None:
            self.sender.queue = self.queue

    def _maybe_call_home(self) -> None:
        """Queue the automatic CALL_HOME when none was sent within ``call_home_interval`` (any process).

        Checked when the worker starts and again once the interval has passed, so a server that
        runs for weeks still calls home once a day.
        """
        interval = self.agent.config.call_home_interval
        self._call_home_due = float("inf")
        if interval <= 0 or isinstance(self.queue, MemoryQueue):
            return  # without shared state the interval cannot be kept: send none rather than many
        last = self._last_call_home()
        if time.time() - last < interval:  # the common case needs no lock (nor filelock's import)
            self._call_home_due = last + interval
            return
        try:
            from filelock import FileLock

            with FileLock(self.queue.lock_path("state"), timeout=2):
                last, now = self._last_call_home(), time.time()  # again, under the lock
                if now - last < interval:
                    self._call_home_due = last + interval
                    return
                self.queue.set_state("call_home", {"at": now})
                self._call_home_due = now + interval
        except Exception:
            logger().debug("callhome: automatic CALL_HOME skipped", exc_info=True)
            self._call_home_due = time.time() + interval
            return
        self.agent.queue_call_home({"automatic": True})

    def _last_call_home(self) -> float:
        try:
            return float(self.queue.state("call_home").get("at", 0))
        except (TypeError, ValueError):  # a state file edited by hand
            return 0.0

    # -- sessions ----------------------------------------------------------------------------
    def _journal_enabled(self) -> bool:
        return bool(self.agent.config.sessions and self.directory and self.disk_error is None
                    and not self._stopping)

    def _recover_sessions(self) -> None:
        """Close the sessions of processes that died without their exit hook, at their last heartbeat.

        Once per process: when the thread starts, or at exit if the run was too short for that.
        """
        if not (self.agent.config.sessions and self.directory and self.disk_error is None):
            return
        # under the persist lock: exit persists the claimed sessions, which are only in memory now
        with self._put_lock:
            if self._recovered:
                return
            self._recovered = True
            stale = 3 * self.agent.config.heartbeat_interval + 60
            found, claimed = journal.recover(self.directory, stale, time.time())
            for session_id, kind, start, beat in found:
                self.agent.accept_session(session_id, kind, start, beat, "recovered")
        if claimed:
            self.persist()
            if self.disk_error is None:  # on disk now: the claimed journals can go
                for path in claimed:
                    unlink_quietly(path)
        self._journal_sessions()

    def _journal_sessions(self) -> None:
        """The heartbeat: rewrite the journal when sessions changed or an interval has passed."""
        if not self._journal_enabled():
            return
        current = self.agent.sessions
        version, written_at = self._journaled
        now = time.time()
        if version == current.version and now - written_at < self.agent.config.heartbeat_interval:
            return
        version, open_sessions = current.snapshot()
        if not open_sessions and written_at == 0.0:
            return  # nothing to journal yet
        existed = journal.write_journal(self.directory, current.name, now, open_sessions)
        if written_at and not existed:
            current.restart_all(written_at)  # closed by another process at that heartbeat
        self._journaled = (version, now)

    def _client_properties(self) -> dict:
        if self._detected is None:
            self._detected = properties.detected(self.agent.decision.is_ci)
        return self.agent.client_properties(self._detected)

    # -- aggregates --------------------------------------------------------------------------
    def _aggregate(self) -> None:
        """Merge this process's counts into the shared store, then send the windows that closed."""
        self._aggregated_at = time.monotonic()
        store = self._aggregate_store()
        if store is None:
            return
        self._merge_counts(None)
        due = store.take_due(time.time())
        if due:
            lines = [self._frame(self._aggregate_record(store, *item), None) for item in due]
            with self._put_lock:
                self._put([line for line in lines if line])
            store.mark_emitted(sorted({start for start, _, _ in due}), time.time())
        for reason, n in store.drain_dropped().items():
            self.agent.counters.add("dropped.aggregate_" + reason, n)

    def _aggregate_store(self):
        """The product's shared store, once this process counts or another left windows on disk."""
        if self.aggregates is None and self.directory and self.disk_error is None:
            path = os.path.join(self.directory, "aggregate-v1")
            if self.agent.counter is not None or os.path.isdir(path):
                from .aggregate import AggregateStore

                self.aggregates = AggregateStore(path, self.agent.config.aggregate_interval).open()
        return self.aggregates

    def _merge_counts(self, timeout: float | None) -> None:
        counter, store = self.agent.counter, self._aggregate_store()
        if counter is None or store is None:
            if counter is not None and self.disk_error is not None:
                # no shared store: the counts of several processes could not be merged into one
                self.agent.counters.add("dropped.aggregate_no_disk", sum(counter.drain().values()))
            return
        with self._put_lock:  # exit waits for counts this thread took, as for records
            partial = counter.drain()
            if not partial:
                return
            try:
                dropped = store.merge(partial, time.time(), timeout)
            except OSError:  # the lock is busy (filelock.Timeout is an OSError) or the disk failed
                counter.restore(partial)
                return
        for reason, n in dropped.items():
            self.agent.counters.add("dropped.aggregate_" + reason, n)

    def _aggregate_record(self, store, start: int, activity: str, count: int) -> dict:
        from .aggregate import aggregate_payload

        config, agent = self.agent.config, self.agent
        meta = dict(agent.count_meta.get(activity, {}), **agent._base_meta)
        payload = aggregate_payload(agent._static, activity, start, config.aggregate_interval, count,
                                    self.installation_id, config.domain, config.ip_addr, meta, store.salt)
        return {"v": 1, "kind": "aggregate", "payload": payload}

    # -- persisting --------------------------------------------------------------------------
    def _persist_while_bursting(self) -> None:
        """Persist, and keep only persisting while the host tracks in a burst.

        A request costs the worker about a millisecond of the interpreter's lock; sending during
        a burst would slow the host's loop, so the burst is put on disk (every 50 ms) and sent
        once it calms down (or after ``BURST_LIMIT``).
        """
        until = time.monotonic() + BURST_LIMIT
        while self.persist() >= BURST_RECORDS and time.monotonic() < until and not self._stopping:
            self._wake.wait(0.05)
            self._wake.clear()

    def persist(self) -> int:
        """Move buffered records to the queue; returns how many. A failing disk means memory-only."""
        if not self.agent.buffer:
            return 0
        with self._put_lock:
            records = self.agent.buffer.drain()
            lines = [line for line in (self._frame(r, self.installation_id) for r in records) if line]
            if lines:
                self._put(lines)
        return len(records)

    def _frame(self, record: dict, installation_id: str | None) -> bytes | None:
        if installation_id:
            record["payload"].setdefault("meta", {})["installation_id"] = installation_id
        if record.pop("props", False):
            meta = record["payload"]["meta"]
            meta.update((k, v) for k, v in self._client_properties().items() if k not in meta)
        line = frame(record)
        if len(line) > self.agent.config.max_event_bytes:
            self.agent.counters.add("dropped.oversize")
            return None
        return line

    def _put(self, lines: list) -> None:
        config = self.agent.config
        self._refresh_depth()
        events, size = self.depth
        incoming = sum(map(len, lines))
        if events + len(lines) > config.max_queue_events or size + incoming > config.max_queue_bytes:
            self._prune(len(lines), incoming)  # the oldest make room: recent usage is worth more
            if self.depth[0] + len(lines) > config.max_queue_events:
                self.agent.counters.add("dropped.queue_full", len(lines))  # larger than the whole cap
                return
        try:
            written = self.queue.put(lines, time.time())
        except OSError as exc:
            self._go_memory_only(exc)
            written = self.queue.put(lines, time.time())
        self.depth = (self.depth[0] + len(lines), self.depth[1] + written)

    def _refresh_depth(self, force: bool = False) -> None:
        if force or time.monotonic() - self._depth_at > DEPTH_REFRESH:
            self.depth = self.queue.depth()
            self._depth_at = time.monotonic()

    def _prune(self, room_events: int = 0, room_bytes: int = 0) -> None:
        """Drop expired batches, then the oldest until ``room_*`` more fit under the caps."""
        config = self.agent.config
        dropped = self.queue.prune(time.time(), config.max_queue_events - room_events,
                                   config.max_queue_bytes - room_bytes, config.max_age)
        for reason, count in dropped.items():
            self.agent.counters.add("dropped." + reason, count)
        self._refresh_depth(force=True)

    def _maintain(self) -> None:
        if time.monotonic() - self._maintained_at > MAINTENANCE_INTERVAL:
            self._maintained_at = time.monotonic()
            self._prune()


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed by the host
        return False


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None
