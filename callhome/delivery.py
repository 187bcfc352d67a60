"""One delivery cycle: claim batches from the queue, send their records, settle each answer.

Runs on the worker thread only. Holds ``flush.lock`` for one bounded cycle so that one process
per host sends at a time; the shared ``backoff`` and ``auth`` states keep every other process
of the product off the network while the server is failing or refusing the key.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Callable

from . import backoff, sentlog
from ._log import logger
from .buffer import OWN_THREADS, Counters
from .config import Config
from .optout import decide
from .transport import AUTH, OK, REJECTED, HttpTransport, SendResult

__all__ = ["Sender"]

#: How long a refused key keeps this product quiet before one probe, unless the key changes.
AUTH_PAUSE = 3600.0
#: One process holds ``flush.lock`` for at most this long, then lets others have a turn.
CYCLE_BUDGET = 10.0
#: Records waiting beyond which a second connection drains in parallel.
PARALLEL_BACKLOG = 64
#: Renaming a claim after every record costs a fifth of a loopback request; every 16 is enough.
RENEW_EVERY = 16
#: Records persisted between two sends that mean "the host is tracking in a burst".
BURST_RECORDS = 64


#: The variables an end user sets to opt out while a product runs (the product's own is in decide()).
_WATCHED = ("CALLHOME_DISABLED", "CALLHOME_DISABLE", "DO_NOT_TRACK")


class _Cycle:
    """One delivery cycle's settings, sending mode, deadline and stop flag, shared by its threads."""

    __slots__ = ("config", "mode", "force", "between", "stopping", "deadline", "halted")

    def __init__(self, config: Config, mode: str, force: bool, between: Callable[[], None],
                 stopping: Callable[[], bool], deadline: float) -> None:
        self.config, self.mode, self.force = config, mode, force
        self.between, self.stopping, self.deadline = between, stopping, deadline
        self.halted = False

    def over(self) -> bool:
        return self.halted or self.stopping() or time.time() > self.deadline


def key_hash(api_key: str | None) -> str:
    return hashlib.sha256((api_key or "").encode()).hexdigest()[:16]


class Sender:
    """Delivers the queue of one product; remembers the last answer for ``status()``."""

    def __init__(self, queue, counters: Counters, choices: Callable[[], dict] = dict,
                 honour_opt_outs: bool = True) -> None:
        self.queue = queue
        self.counters = counters
        self.choices = choices
        #: False for a relay: it forwards other people's records, whose opt-outs their own
        #: agents applied; the relay's environment must not discard them.
        self.honour_opt_outs = honour_opt_outs
        #: True in the process that just showed the first-run notice: the next run sends.
        self.deferred = False
        #: True while a request is on the wire: exit waits for it, within its budget.
        self.in_flight = False
        self._sent: list = []
        self._decided: tuple = (None, None)
        self.state = "idle"
        self.last_send: dict | None = None
        self._transports: dict = {}
        self._lock = None
        self._lock_pid = None

    # -- the cycle -----------------------------------------------------------------------------
    def run(self, config: Config, force: bool, between: Callable[[], None],
            stopping: Callable[[], bool]) -> bool:
        """Send what is eligible; True when the cycle went through without a failure or a pause."""
        now = time.time()
        blocked = self._blocked(config, force, now)
        if blocked:
            self.state = blocked
            return False
        mode = self._acquire(force)
        if mode is None:
            self.state = "another process is sending"
            return False
        cycle = _Cycle(config, mode, force, between, stopping, now + CYCLE_BUDGET)
        try:
            self.queue.recover(mode == "L", now)
            self.state = "sending"
            finished = self._drain_all(cycle)
        finally:
            self._release()
            self._write_sent_log()
        if finished:
            self.state = "idle"
        elif not cycle.halted:
            self.state = "sending"  # out of budget or stopping: more to do, nothing failed
        return finished

    def _blocked(self, config: Config, force: bool, now: float) -> str | None:
        decision = decide(config, choices=self.choices()) if self.honour_opt_outs else None
        if decision is not None and not decision.enabled:
            self.counters.add("dropped.opted_out", self.queue.purge())
            return "disabled: " + str(decision.reason)
        if self.deferred:
            return "deferred: the first-run notice was just shown; sending starts with the next run"
        if not config.has_identity:
            return "held: no ip_addr or domain configured"
        auth = self.queue.state("auth")
        if auth.get("key") == key_hash(config.api_key) and now < auth.get("until", 0):
            return "auth_failed: the endpoint refused the API key"
        if not force and now < self.queue.state("backoff").get("until", 0):
            return "backoff: the endpoint failed; retrying later"
        return None

    def _drain_all(self, cycle: _Cycle) -> bool:
        """Drain with one connection, and a second one in parallel when the backlog is large.

        Reo takes one record per request, so a round trip bounds throughput; two requests in
        flight overlap the client's work with the server's.
        """
        if self.queue.dir is None or self.queue.depth()[0] <= PARALLEL_BACKLOG:
            return self._drain(cycle, 0)
        results: list = []

        def second() -> None:
            OWN_THREADS.add(threading.get_ident())
            try:
                results.append(self._drain(cycle, 1))
            finally:
                OWN_THREADS.discard(threading.get_ident())

        helper = threading.Thread(target=second, name="callhome-sender", daemon=True)
        helper.start()
        finished = self._drain(cycle, 0)
        helper.join(max(cycle.deadline - time.time(), 0) + 2 * cycle.config.timeout)
        return finished and results == [True]

    def _drain(self, cycle: _Cycle, slot: int) -> bool:
        for entry in self.queue.entries():
            if entry.not_before > time.time() and not cycle.force:
                break  # names sort by not-before: nothing further is eligible either
            claim = self.queue.claim(entry, cycle.mode, time.time() + self._lease(cycle.config, entry))
            if claim is not None and not self._send_batch(cycle, claim, slot):
                return False
        return True

    def _lease(self, config: Config, entry) -> float:
        return min(600.0, (2 * config.timeout + 10) * (entry.count - entry.done))

    def _send_batch(self, cycle: _Cycle, claim, slot: int) -> bool:
        """Send one claimed batch; False when the cycle must stop (failure, stop, out of time)."""
        try:
            records = self.queue.read(claim)
        except OSError:
            return True  # taken back meanwhile (lease expired): its new owner sends it
        if not any(records):
            self.queue.quarantine("inflight", claim.name, "unreadable")
            self.counters.add("dropped.corrupt", claim.entry.count - claim.entry.done)
            return True
        done = claim.entry.done
        while done < len(records):
            if cycle.over():
                self.queue.release(claim, done, claim.entry.attempt, time.time())
                return False
            if not self._send_record(cycle, claim, records[done], done, slot):
                cycle.halted = True
                return False
            done += 1
            if slot == 0 and cycle.between() >= BURST_RECORDS:
                cycle.halted = True  # the host is tracking in a burst: let it have the interpreter
            if done < len(records) and (done - claim.entry.done) % RENEW_EVERY == 0:
                # progress and a fresh lease, every few records: a crash resends at most those
                claim = self.queue.renew(claim, done, time.time() + self._lease(cycle.config, claim.entry))
                if claim is None:
                    return True  # lost the claim (lease expired); the new owner goes on
        self.counters.add("dropped.corrupt", claim.entry.count - len(records))
        self.queue.ack(claim)
        return True

    def _send_record(self, cycle: _Cycle, claim, record, index: int, slot: int) -> bool:
        """Settle one record; False (after releasing the claim) when sending must pause."""
        config = cycle.config
        if record is None:
            self.counters.add("dropped.corrupt")
            return True
        if not self._allowed(config):
            self.counters.add("dropped.opted_out")
            return True
        payload = fill_identity(record["payload"], config)
        transport = self._transport(config, slot)
        self.in_flight = True
        try:
            result = transport.send(record.get("kind", "usage"), payload)
        finally:
            self.in_flight = False
        self._remember(result, transport.url(record.get("kind", "usage")), payload)
        if result.outcome == OK:
            self.counters.add("delivered")
            if self._backing_off:
                self.queue.set_state("backoff", None)
                self._backing_off = False
            return True
        if result.outcome == REJECTED:
            self.counters.add("rejected")
            self.queue.dead_letter(record, f"{result.status}: {result.detail}")
            return True
        return self._pause(config, claim, index, result)

    _backing_off = True  # clear a stale shared backoff on the first success of this process

    def _allowed(self, config: Config) -> bool:
        """``decide()`` before a request, again only when an opt-out variable or the choices changed."""
        if not self.honour_opt_outs:
            return True
        choices = self.choices()
        key = (config, id(choices), tuple(os.environ.get(name) for name in _WATCHED), config.optout_env and
               tuple(os.environ.get(name) for name in config.optout_env))
        if self._decided[0] != key:
            self._decided = (key, decide(config, choices=choices).enabled)
        return self._decided[1]

    def _pause(self, config: Config, claim, index: int, result: SendResult) -> bool:
        now = time.time()
        if result.outcome == AUTH:
            self.queue.set_state("auth", {"key": key_hash(config.api_key), "until": now + AUTH_PAUSE,
                                          "detail": result.detail})
            self.queue.release(claim, index, claim.entry.attempt, now)
            self.state = "auth_failed: the endpoint refused the API key"
            logger().warning("callhome: the endpoint refused the API key; sending paused")
            return False
        failures = int(self.queue.state("backoff").get("failures", 0)) + 1
        wait = max(result.retry_after or 0.0, backoff.delay(failures))
        self.queue.set_state("backoff", {"until": now + wait, "failures": failures, "detail": result.detail})
        self._backing_off = True
        self.state = f"backoff: {result.detail or result.status}; next attempt in {wait:.0f}s"
        attempt = claim.entry.attempt + 1
        if attempt >= config.max_attempts:
            self.counters.add("dropped.retries", claim.entry.count - index)
            self.queue.ack(claim)
        else:
            self.queue.release(claim, index, attempt, now + wait)
        logger().debug("callhome: delivery failed (%s); retry in %.1fs", result.detail or result.status, wait)
        return False

    def _remember(self, result: SendResult, url: str, payload: dict) -> None:
        """Keep the answer for ``status()``, and the request for the sent log (written per cycle)."""
        self.last_send = {"at": time.time(), "outcome": result.outcome, "status": result.status,
                          "detail": result.detail}
        self._sent.append(dict(self.last_send, url=url, payload=payload))

    def _write_sent_log(self) -> None:
        """The requests of this cycle into the local sent log (``callhome log``) and CALLHOME_LOG_FILE."""
        entries, self._sent = self._sent, []
        log = os.path.join(os.path.dirname(self.queue.dir), sentlog.FILE) if self.queue.dir else None
        if entries:
            sentlog.append(log, entries, os.environ.get("CALLHOME_LOG_FILE"))

    # -- resources -----------------------------------------------------------------------------
    def _transport(self, config: Config, slot: int) -> HttpTransport:
        wanted = (config.endpoint, config.api_key, config.timeout)
        current = self._transports.get(slot)
        if current is None or current[0] != wanted:
            if current is not None:
                current[1].close()
            current = self._transports[slot] = (wanted, HttpTransport(*wanted))
        return current[1]

    def _acquire(self, force: bool) -> str | None:
        """``"L"`` with ``flush.lock`` held, ``None`` if another process holds it, ``"U"`` if locks fail."""
        path = self.queue.lock_path("flush")
        if path is None:
            return "L"
        try:
            lock = self._flush_lock(path)
            lock.acquire(timeout=0.5 if force else 0)
            return "L"
        except Exception as exc:  # filelock.Timeout, or a filesystem without working locks
            if type(exc).__name__ == "Timeout":
                return None
            logger().debug("callhome: flush.lock unusable (%r); sending without it", exc)
            return "U"

    def _flush_lock(self, path: str):
        if self._lock is None or self._lock_pid != os.getpid():
            from filelock import FileLock  # imported on the worker only

            try:
                self._lock = FileLock(path, timeout=0, fallback_to_soft=False)
            except TypeError:  # filelock < 3.30 has no fallback_to_soft (and never falls back silently)
                self._lock = FileLock(path, timeout=0)
            self._lock_pid = os.getpid()
        return self._lock

    def _release(self) -> None:
        if self._lock is not None and self._lock.is_locked:
            try:
                self._lock.release()
            except Exception:  # an EIO on close must not escape the worker
                pass

    def close(self) -> None:
        for _, transport in self._transports.values():
            transport.close()
        self._transports.clear()


def fill_identity(payload: dict, config: Config) -> dict:
    """Add the configured ``domain``/``ip_addr`` to a record persisted before they were known."""
    if payload.get("domain") or payload.get("ip_addr"):
        return payload
    filled = dict(payload)
    if config.domain:
        filled["domain"] = config.domain
    if config.ip_addr:
        filled["ip_addr"] = config.ip_addr
    return filled
