"""One delivery cycle: claim batches from the queue, send their records, settle each answer.

Runs in the product's sender (a detached process, or a thread where no process can be
started). Holds ``flush.lock`` for one bounded cycle so that one sender per host sends at a time;
the shared ``backoff`` and ``auth`` states keep every other process of the product off the
network while the server is failing or refusing the key, and when it answers again the backlog
goes out at about the rate it was created (``callhome.backoff`` has the policy).
"""

from __future__ import annotations

import enum
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .. import backoff, sentlog
from .._lock import Busy, FileLock
from .._log import logger
from ..buffer import OWN_THREADS, Counters
from ..config import Config
from ..optout import OPT_OUT_VARIABLES, decide
from .files import AUTH_PAUSE, auth_until, backoff_state, key_hash
from .transport import AUTH, OK, REJECTED, SendResult, open_transport

if TYPE_CHECKING:
    from ..memqueue import MemoryQueue
    from ..queue import Claim, DiskQueue, Entry

__all__ = ["Sender", "SenderState", "Transport", "fill_identity"]

#: One process holds ``flush.lock`` for at most this long, then lets others have a turn.
CYCLE_BUDGET = 10.0
#: Requests kept in memory for the sent log before they are written (otherwise once per cycle).
SENT_LOG_EVERY = 100
#: Records waiting beyond which a second connection drains in parallel.
PARALLEL_BACKLOG = 64


class SenderState(enum.Enum):
    """What the sender is doing; ``status()`` shows ``"<value>: <detail>"`` (docs/architecture.md)."""

    #: nothing to send, or everything sent
    IDLE = "idle"
    #: a cycle is running, or ran out of its budget with more to do
    SENDING = "sending"
    #: another process holds ``flush.lock`` and sends for the product
    OTHER_PROCESS = "another process is sending"
    #: the endpoint failed; every process waits until the shared ``backoff.json`` says
    BACKOFF = "backoff"
    #: the endpoint refused the API key; every process waits (``auth.json``) unless the key changes
    AUTH_FAILED = "auth_failed"
    #: records wait for an ``ip_addr`` or ``domain``
    HELD = "held"
    #: an opt-out or a saved ``disable``: the queue was purged
    DISABLED = "disabled"
    #: the first-run notice was just shown on a terminal: the next run sends
    DEFERRED = "deferred"


class Transport(Protocol):
    """What the sender needs of a transport (``HttpTransport``; tests may inject their own)."""

    def send(self, kind: str, payload: dict[str, Any]) -> SendResult: ...

    def url(self, kind: str) -> str: ...

    def close(self) -> None: ...


TransportFactory = Callable[[str, "str | None", float], Transport]


class _Cycle:
    """One delivery cycle's settings, sending mode, deadline and stop flag, shared by its threads."""

    __slots__ = ("config", "mode", "force", "stopping", "deadline", "halted")

    def __init__(self, config: Config, mode: str, force: bool, stopping: Callable[[], bool],
                 deadline: float) -> None:
        self.config, self.mode, self.force = config, mode, force
        self.stopping, self.deadline = stopping, deadline
        self.halted = False

    def over(self) -> bool:
        return self.halted or self.stopping() or time.time() > self.deadline


class Sender:
    """Delivers the queue of one product; remembers the last answer for ``status()``."""

    def __init__(self, queue: DiskQueue | MemoryQueue, counters: Counters, choices: Callable[[], dict[str, Any]] = dict,
                 honour_opt_outs: bool = True, transport: TransportFactory = open_transport,
                 progress: Callable[[], None] = lambda: None) -> None:
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
        self.kind = SenderState.IDLE
        self.detail = ""
        self.last_send: dict[str, Any] | None = None
        #: the last answer that was not a success: kept past the successes that follow it
        self.last_error: dict[str, Any] | None = None
        #: called after the records of a batch are settled, before the batch leaves the queue:
        #: whoever watches the queue empty then also sees the counts that emptied it
        self.progress = progress
        self._new_transport = transport
        self._sent: list[dict[str, Any]] = []
        #: (what the last decision depended on, whether it allowed sending); no key is None, so the
        #: first call decides
        self._decided: tuple[object, bool] = (None, None)  # type: ignore[assignment]
        self._backing_off = True  # the first success of this process ends the shared backoff's streak
        self._transports: dict[int, tuple[tuple[str, str | None, float], Transport]] = {}
        self._lock: FileLock | None = None

    @property
    def state(self) -> str:
        """The documented ``status()`` string: the state's value, then its detail."""
        return f"{self.kind.value}: {self.detail}" if self.detail else self.kind.value

    def _set(self, kind: SenderState, detail: str = "") -> None:
        self.kind, self.detail = kind, detail

    # -- the cycle -----------------------------------------------------------------------------
    def run(self, config: Config, force: bool, stopping: Callable[[], bool] = lambda: False) -> bool:
        """Send what is eligible; True when the cycle went through without a failure or a pause."""
        now = time.time()
        if self._blocked(config, force, now):
            return False
        mode = self._acquire(force)
        if mode is None:
            self._set(SenderState.OTHER_PROCESS)
            return False
        cycle = _Cycle(config, mode, force, stopping, now + CYCLE_BUDGET)
        try:
            self.queue.recover(mode == "L", now)
            self.queue.adopt_orphans(now)  # open batches of hosts that died (kill -9) before publishing
            self._set(SenderState.SENDING)
            finished = self._drain_all(cycle)
        finally:
            self._release()
            self._write_sent_log()
        if finished:
            self._set(SenderState.IDLE)
        elif not cycle.halted:
            self._set(SenderState.SENDING)  # out of budget or stopping: more to do, nothing failed
        return finished

    def _blocked(self, config: Config, force: bool, now: float) -> bool:
        """Whether the product must not send now; the state says why."""
        decision = decide(config, choices=self.choices()) if self.honour_opt_outs else None
        if decision is not None and not decision.enabled:
            self.counters.add("dropped.opted_out", self.queue.purge())
            self._set(SenderState.DISABLED, str(decision.reason))
        elif self.deferred:
            self._set(SenderState.DEFERRED, "the first-run notice was just shown; sending starts with the next run")
        elif config.held_for:
            self._set(SenderState.HELD, config.held_for)
        elif now < auth_until(self.queue, config.api_key, now):
            self._set(SenderState.AUTH_FAILED, "the endpoint refused the API key")
        elif not force and now < backoff_state(self.queue, now).until:
            self._set(SenderState.BACKOFF, "the endpoint failed; retrying later")
        else:
            return False
        return True

    def _drain_all(self, cycle: _Cycle) -> bool:
        """Drain with one connection, and a second one in parallel when the backlog is large.

        Reo takes one record per request, so a round trip bounds throughput; two requests in
        flight overlap the client's work with the server's.
        """
        if self.queue.dir is None or self.queue.depth()[0] <= PARALLEL_BACKLOG:
            return self._drain(cycle, 0)
        results: list[bool] = []

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

    def _lease(self, config: Config, entry: Entry) -> float:
        return min(600.0, (2 * config.timeout + 10) * (entry.count - entry.done))

    def _send_batch(self, cycle: _Cycle, claim: Claim, slot: int) -> bool:
        """Send one claimed batch; False when the cycle must stop (failure, stop, out of time).

        Progress is saved in the claim's name after every record (one ``rename``), so a sender
        killed mid-batch re-sends only the request that was on the wire.
        """
        try:
            records = self.queue.read(claim)
        except FileNotFoundError:
            return True  # taken back meanwhile (lease expired): its new owner sends it
        if not any(records):
            self._quarantine(claim)
            return True
        done = claim.entry.done
        while done < len(records):
            if cycle.over():
                self.queue.release(claim, done, claim.entry.attempt, time.time())
                return False
            try:
                sent = self._send_record(cycle, claim, records[done], done, slot)
            except Exception:  # a record nothing can send (a bug of ours): never again, nor forever
                logger().debug("callhome: a batch could not be sent", exc_info=True)
                self._quarantine(claim)
                return True
            if not sent:
                cycle.halted = True
                return False
            done += 1
            if done < len(records):
                renewed = self.queue.renew(claim, done, time.time() + self._lease(cycle.config, claim.entry))
                if renewed is None:
                    return True  # lost the claim (lease expired); the new owner goes on
                claim = renewed
        # lines the file lacks (torn, or fewer than its name counts), not counted twice after a restart
        self.counters.add("dropped.corrupt", max(claim.entry.count - max(len(records), claim.entry.done), 0))
        self.progress()
        self.queue.ack(claim)
        return True

    def _quarantine(self, claim: Claim) -> None:
        """Move a batch that cannot be sent to ``corrupt/``; what it still held is counted."""
        self.queue.quarantine("inflight", claim.name, "unreadable")
        self.counters.add("dropped.corrupt", claim.entry.count - claim.entry.done)

    def _send_record(self, cycle: _Cycle, claim: Claim, record: dict[str, Any] | None, index: int, slot: int) -> bool:
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
                self._backing_off = False
                self._end_streak(cycle, claim)
            return True
        if result.outcome == REJECTED:
            self.counters.add("rejected")
            self.queue.dead_letter(record, f"{result.status}: {result.detail}")
            return True
        return self._pause(config, claim, index, result)

    def _allowed(self, config: Config) -> bool:
        """``decide()`` before a request, again only when an opt-out variable or the choices changed."""
        if not self.honour_opt_outs:
            return True
        choices = self.choices()
        key: tuple[object, ...] = (config, id(choices), tuple(os.environ.get(name) for name in OPT_OUT_VARIABLES),
                                   config.optout_env and tuple(os.environ.get(name) for name in config.optout_env))
        if self._decided[0] != key:
            self._decided = (key, decide(config, choices=choices).enabled)
        return self._decided[1]

    def _end_streak(self, cycle: _Cycle, claim: Claim) -> None:
        """The first success after failures: replay the backlog at about the rate it was created.

        Every installation of a product meets the same outage and comes back within the hour; if
        each sent its backlog at once, the server would get hours of traffic in minutes. A flush()
        asked for everything now: it is not held back.
        """
        shared = backoff_state(self.queue, time.time())
        if shared.failures and not cycle.force:
            self._pace(cycle, claim, shared.until)
        self.queue.set_state("backoff", None)

    def _pace(self, cycle: _Cycle, claim: Claim, held_until: float) -> None:
        """Push the waiting batches' not-before times out as :func:`backoff.replay` says (the batch
        in flight goes on), within half of ``max_age``: the replay must not age a record out."""
        now = time.time()
        # a stray (no batch id) holds no record, and its creation time of 0 would date the backlog to 1970
        batches = [claim.entry] + [entry for entry in self.queue.entries() if entry.batch]
        due = backoff.replay([b.created for b in batches], [b.not_before for b in batches], held_until, now,
                             cycle.config.max_age / 2)
        for entry, not_before in zip(batches[1:], due[1:]):
            if not_before > max(entry.not_before, now):
                self._reschedule(cycle, entry, not_before)

    def _reschedule(self, cycle: _Cycle, entry: Entry, not_before: float) -> None:
        """Give a ready batch a later not-before time: taken and given back (two renames)."""
        taken = self.queue.claim(entry, cycle.mode, time.time() + self._lease(cycle.config, entry))
        if taken is not None:  # else another sender took it meanwhile: it sends it
            self.queue.release(taken, entry.done, entry.attempt, not_before)

    def _pause(self, config: Config, claim: Claim, index: int, result: SendResult) -> bool:
        now = time.time()
        if result.outcome == AUTH:
            self.queue.set_state("auth", {"key": key_hash(config.api_key), "until": now + AUTH_PAUSE,
                                          "detail": result.detail})
            self.queue.release(claim, index, claim.entry.attempt, now)
            self._set(SenderState.AUTH_FAILED, "the endpoint refused the API key")
            logger().warning("callhome: the endpoint refused the API key; sending paused")
            return False
        until = self._back_off(now, result)
        why = result.detail or result.status
        self._set(SenderState.BACKOFF, f"{why}; next attempt in {until - now:.0f}s")
        attempt = claim.entry.attempt + (1 if backoff.counts_against(result.status) else 0)
        if attempt >= config.max_attempts:
            self.counters.add("dropped.retries", claim.entry.count - index)
            self.queue.ack(claim)
        else:
            self.queue.release(claim, index, attempt, until)
        logger().debug("callhome: delivery failed (%s); retry in %.1fs", why, until - now)
        return False

    def _back_off(self, now: float, result: SendResult) -> float:
        """One more failure in the shared backoff; until when every process of the product waits.

        A pause the server asked for (``Retry-After``) is kept, and recorded as such: a later
        failure without one (a flush() tries despite the pause) does not shorten it, and readers
        bound it by the longest Retry-After obeyed rather than by ``MAX_DELAY``.
        """
        shared = backoff_state(self.queue, now)
        asked = max(shared.retry_after if shared.until > now else 0.0, result.retry_after or 0.0)
        until = max(shared.until, now + max(result.retry_after or 0.0, backoff.delay(shared.failures + 1)))
        state = {"until": until, "failures": shared.failures + 1, "detail": result.detail}
        if asked:
            state["retry_after"] = asked
        self.queue.set_state("backoff", state)
        self._backing_off = True
        return until

    def _remember(self, result: SendResult, url: str, payload: dict[str, Any]) -> None:
        """Keep the answer for ``status()``, and the request for the sent log (written per cycle)."""
        self.last_send = {"at": time.time(), "outcome": result.outcome, "status": result.status,
                          "detail": result.detail}
        if result.outcome != OK:
            self.last_error = {"at": self.last_send["at"], "status": result.status, "detail": result.detail}
        self._sent.append(dict(self.last_send, url=url, payload=payload))
        if len(self._sent) >= SENT_LOG_EVERY:
            self._write_sent_log()  # a long cycle must not hold every request it made in memory

    def _write_sent_log(self) -> None:
        """The requests of this cycle into the local sent log (``callhome log``) and CALLHOME_LOG_FILE."""
        entries, self._sent = self._sent, []
        log = os.path.join(os.path.dirname(self.queue.dir), sentlog.FILE) if self.queue.dir else None
        if entries:
            sentlog.append(log, entries, os.environ.get("CALLHOME_LOG_FILE"))

    # -- resources -----------------------------------------------------------------------------
    def _transport(self, config: Config, slot: int) -> Transport:
        wanted = (config.endpoint, config.api_key, config.timeout)
        current = self._transports.get(slot)
        if current is None or current[0] != wanted:
            if current is not None:
                current[1].close()
            current = self._transports[slot] = (wanted, self._new_transport(*wanted))
        return current[1]

    def _acquire(self, force: bool) -> str | None:
        """``"L"`` with ``flush.lock`` held, ``None`` if another process holds it, ``"U"`` if locks fail."""
        path = self.queue.lock_path("flush")
        if path is None:
            return "L"
        if self._lock is None:
            self._lock = FileLock(path)
        try:
            self._lock.acquire(timeout=0.5 if force else 0)
            return "L"
        except Busy:
            return None
        except OSError as exc:  # a filesystem without working locks
            logger().debug("callhome: flush.lock unusable (%r); sending without it", exc)
            return "U"

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def close(self) -> None:
        for _, transport in self._transports.values():
            transport.close()
        self._transports.clear()


def fill_identity(payload: dict[str, Any], config: Config) -> dict[str, Any]:
    """Add the configured ``domain``/``ip_addr`` to a record persisted before they were known."""
    if payload.get("domain") or payload.get("ip_addr"):
        return payload
    filled = dict(payload)
    if config.domain:
        filled["domain"] = config.domain
    if config.ip_addr:
        filled["ip_addr"] = config.ip_addr
    return filled
