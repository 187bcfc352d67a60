"""Counts from ``count()``: merged into the product's shared store, emitted once a window closes."""

from __future__ import annotations

import os
import time

from .._log import logger
from .._state import HostState
from ..aggregate import AggregateStore, aggregate_payload
from .spool import Spool
from .storage import Storage

__all__ = ["AggregateEmitter"]

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (a short-lived host waits for it)
if TYPE_CHECKING:
    from typing import Any

#: Counts are merged at most this often (or sooner when the flush interval is shorter).
MERGE_EVERY = 5.0
#: How long a periodic merge waits for the store's lock (busy: the counts wait for the next one).
MERGE_WAIT = 0.2


class AggregateEmitter:
    """Merges this process's counts into the store and queues the windows that closed."""

    def __init__(self, state: HostState, storage: Storage, spool: Spool) -> None:
        self.state = state
        self.storage = storage
        self.spool = spool
        self.store: AggregateStore | None = None
        self.merged_at = 0.0

    def due(self) -> bool:
        return time.monotonic() >= self.next_tick()

    def next_tick(self) -> float:
        """When (monotonic) the next merge is due."""
        # on Worker._cycle's path, where no check is added: the config is set before the worker runs
        return self.merged_at + min(self.state.config.flush_interval, MERGE_EVERY)  # type: ignore[union-attr]

    def tick(self) -> None:
        """Merge, then send the windows that closed; a busy lock or a failing disk waits a cycle."""
        self.merged_at = time.monotonic()
        try:
            self._tick()
        except OSError:
            logger().debug("callhome: aggregation skipped this cycle", exc_info=True)

    def _tick(self) -> None:
        store = self._store()
        if store is None:
            return
        self.merge(MERGE_WAIT)  # persist_lock is held meanwhile: exit must not wait long for it
        due = store.take_due(time.time())
        if due:
            lines = self.spool.records.lines([self._record(store, *item) for item in due], None)
            with self.state.persist_lock:
                self.spool.put(lines)
            store.mark_emitted(sorted({start for start, _, _ in due}), time.time())
        self._count_drops(store.drain_dropped())

    def _store(self) -> AggregateStore | None:
        """The product's shared store, once this process counts or another left windows on disk."""
        directory = self.storage.directory
        if self.store is None and directory and self.storage.durable:
            path = os.path.join(directory, "aggregate-v1")
            if self.state.counter is not None or os.path.isdir(path):
                config = self.state.cfg
                self.store = AggregateStore(path, config.aggregate_interval, fsync=config.fsync).open()
        return self.store

    def merge(self, timeout: float | None, final: bool = False) -> None:
        """Merge this process's counts into the store; ``final`` (exit): what cannot be merged
        within ``timeout`` is lost, and counted (``dropped.aggregate_exit``)."""
        counter, store = self.state.counter, self._store()
        if counter is None or store is None:
            if counter is not None and not self.storage.durable:
                # no shared store: the counts of several processes could not be merged into one
                self.state.counters.add("dropped.aggregate_no_disk", sum(counter.drain().values()))
            return
        with self.state.persist_lock:  # exit waits for counts this thread took, as for records
            partial = counter.drain()
            self.state.counters.add("dropped.aggregate_cap", counter.take_capped())
            if not partial:
                return
            try:
                dropped = store.merge(partial, time.time(), timeout)
            except OSError:  # the lock is busy or the disk failed: partial holds what was not merged
                if final:
                    self.state.counters.add("dropped.aggregate_exit", sum(partial.values()))
                else:
                    counter.restore(partial)
                return
        self._count_drops(dropped)

    def _count_drops(self, dropped: dict[str, int]) -> None:
        self.state.counters.add_each("dropped.aggregate_", dropped)

    def _record(self, store: AggregateStore, start: int, activity: str, count: int) -> dict[str, Any]:
        state, config = self.state, self.state.cfg
        meta = dict(state.count_meta.get(activity, {}), **state.base_meta)
        payload = aggregate_payload(state.static, activity, start, config.aggregate_interval, count,
                                    self.storage.installation_id, config.domain, config.ip_addr, meta, store.salt)
        return {"v": 1, "kind": "aggregate", "payload": payload}
