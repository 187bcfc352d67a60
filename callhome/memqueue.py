"""The queue a process falls back to when the disk cannot hold one (read-only, full, not ours).

Same interface as :class:`callhome.queue.DiskQueue`, bounded, lost at exit: delivery goes on
without raising or printing, and ``status()`` says the agent is memory-only and why.
"""

from __future__ import annotations

import os

from .queue import MAX_BATCH, Claim, Entry, entry_name, parse_entry, space, unframe

__all__ = ["MemoryQueue"]

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (a short-lived host waits for it)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any


class MemoryQueue:
    """Batches kept in this process only."""

    dir = None
    node = "memory"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self._ready: dict[str, list[bytes]] = {}
        self._inflight: dict[Claim, list[bytes]] = {}
        self._state: dict[str, dict[str, Any] | None] = {}

    def open(self) -> MemoryQueue:
        return self

    def put(self, lines: list[bytes], now: float) -> int:
        written = 0
        for start in range(0, len(lines), MAX_BATCH):
            chunk = lines[start:start + MAX_BATCH]
            size = sum(map(len, chunk))
            self._ready[entry_name(now, now, 0, 0, len(chunk), size, os.urandom(8).hex())] = chunk
            written += size
        return written

    def append(self, lines: list[bytes], now: float) -> int:
        return self.put(lines, now)  # memory has no file to create: every put is as cheap

    open_records = 0

    def publish(self) -> None:
        """Nothing is held back in memory."""

    def adopt_orphans(self, now: float) -> int:
        return 0  # no other process shares a memory queue

    def entries(self) -> Iterator[Entry]:
        for name in sorted(self._ready):
            entry = parse_entry(name)
            if entry is not None:
                yield entry

    def depth(self) -> tuple[int, int]:
        entries = [parse_entry(n) for n in (*self._ready, *(c.entry.name for c in self._inflight))]
        # counted as the disk queue counts (the same caps apply): the space its files would take
        return (sum(e.count - e.done for e in entries if e), sum(space(e.size) for e in entries if e))

    def claim(self, entry: Entry, mode: str, lease_until: float) -> Claim | None:
        lines = self._ready.pop(entry.name, None)
        if lines is None:
            return None
        claim = Claim(entry, entry.name, mode)
        self._inflight[claim] = lines
        return claim

    def read(self, claim: Claim) -> list[dict[str, Any] | None]:
        return [unframe(line) for line in self._inflight.get(claim, ())]

    def renew(self, claim: Claim, done: int, lease_until: float) -> Claim | None:
        e = claim.entry
        entry = parse_entry(entry_name(e.not_before, e.created, e.attempt, done, e.count, e.size, e.batch))
        if entry is None or claim not in self._inflight:
            return None
        renewed = Claim(entry, entry.name, claim.mode)
        self._inflight[renewed] = self._inflight.pop(claim)
        return renewed

    def ack(self, claim: Claim) -> None:
        self._inflight.pop(claim, None)

    def release(self, claim: Claim, done: int, attempt: int, not_before: float) -> None:
        lines = self._inflight.pop(claim, None)
        if lines is not None:
            e = claim.entry
            self._ready[entry_name(not_before, e.created, attempt, done, e.count, e.size, e.batch)] = lines

    def take_all(self) -> list[bytes]:
        """Every record not yet delivered, oldest batch first, taken out (the disk is back)."""
        held = [(parse_entry(name), lines) for name, lines in self._ready.items()]
        held += [(claim.entry, lines) for claim, lines in self._inflight.items()]
        held.sort(key=lambda pair: pair[0].created if pair[0] else 0.0)
        self._ready.clear()
        self._inflight.clear()
        return [line for entry, lines in held for line in lines[entry.done if entry else 0:]]

    def purge(self) -> int:
        removed = self.depth()[0]
        self._ready.clear()
        self._inflight.clear()
        return removed

    def recover(self, have_native_lock: bool, now: float) -> int:
        return 0

    def quarantine(self, sub: str, name: str, reason: str) -> None:
        self._ready.pop(name, None)

    def dead_letter(self, record: dict[str, Any], detail: str) -> None:
        pass

    def prune(self, now: float, max_events: int, max_bytes: int, max_age: float) -> dict[str, int]:
        dropped = {"expired": 0, "queue_full": 0}
        events, size = self.depth()
        for entry in sorted(self.entries(), key=lambda e: e.created):
            expired = now - entry.created > max_age
            if expired or events > max_events or size > max_bytes:
                del self._ready[entry.name]
                dropped["expired" if expired else "queue_full"] += entry.count - entry.done
                events -= entry.count - entry.done
                size -= space(entry.size)
        return dropped

    def state(self, name: str) -> dict[str, Any]:
        return dict(self._state.get(name) or {})

    def set_state(self, name: str, value: dict[str, Any] | None) -> None:
        self._state[name] = value

    def lock_path(self, name: str) -> None:
        return None
