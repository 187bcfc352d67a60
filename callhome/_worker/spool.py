"""Buffer → framed records → disk queue, under the product's caps.

The worker calls :meth:`Spool.persist` at least every 50 ms while anything is buffered, so a
host killed with ``kill -9`` loses at most that much of what ``track()`` accepted. Records are
appended to this process's open batch (a write, not a new file, each time) and the batch is
published for the sender when it is full, ``PUBLISH_AFTER`` old, or asked for (flush, exit).
"""

from __future__ import annotations

import time

from .. import properties
from .._state import HostState
from .records import Records
from .storage import Storage

__all__ = ["Spool"]

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (a short-lived host waits for it)
if TYPE_CHECKING:
    from typing import Any, Callable

    from ..config import Config
    from ..memqueue import MemoryQueue
    from ..queue import DiskQueue
    from .records import Item

#: The queue's depth is listed again at most this often (a listing per persist would cost more
#: than the write itself); puts in between are added to the last count.
DEPTH_REFRESH = 5.0
MAINTENANCE_INTERVAL = 60.0
#: The longest appended records wait before the sender may see them: at 400 events/s a file
#: every 0.5 s (200 records) rather than every 50 ms.
PUBLISH_AFTER = 0.5
_NONE_OPEN = float("inf")


class Spool:
    """Writes what the host buffered into the product's queue, the oldest giving way at the caps."""

    def __init__(self, state: HostState, storage: Storage,
                 client_properties: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.state = state
        self.storage = storage
        self.client_properties = client_properties
        self.depth = (0, 0)
        self._depth_at = -DEPTH_REFRESH
        self._maintained_at = 0.0
        self._detected: dict[str, Any] | None = None  # client properties, detected once
        self.records = Records(state, self._properties)
        #: when (monotonic) the open batch must be published (``inf`` while none is open)
        self.publish_at = _NONE_OPEN

    def persist(self) -> int:
        """Move buffered records to the queue; returns how many. A failing disk means memory-only."""
        state = self.state
        if not state.buffer:
            return 0
        with state.persist_lock:
            records = state.buffer.drain()
            self.put_records(records, self.storage.installation_id)
        return len(records)

    def put_records(self, items: list[Item], installation_id: str | None) -> None:
        lines = self.records.lines(items, installation_id)
        if lines:
            self.put(lines)

    def _properties(self) -> dict[str, Any]:
        if self._detected is None:
            self._detected = properties.detected(self.state.decision.is_ci)
        return self.client_properties(self._detected)

    def put(self, lines: list[bytes]) -> None:
        config: Config = self.state.config  # type: ignore[assignment]  # set: the worker runs once init() gave one
        self.refresh_depth()
        incoming = sum(map(len, lines))
        if self._near_cap(len(lines), incoming):  # count what the product's other processes wrote since
            self.refresh_depth(force=True)
        events, size = self.depth
        if events + len(lines) > config.max_queue_events or size + incoming > config.max_queue_bytes:
            self.prune(len(lines), incoming)  # the oldest make room: recent usage is worth more
            if self.depth[0] + len(lines) > config.max_queue_events:
                self.state.counters.add("dropped.queue_full", len(lines))  # larger than the whole cap
                return
        queue: DiskQueue | MemoryQueue = self.storage.queue  # type: ignore[assignment]  # opened before any put
        try:
            written = queue.append(lines, time.time())
        except OSError as exc:
            self._publish_quietly()  # what the open batch holds stays on disk
            queue = self.storage.go_memory_only(exc)
            written = queue.append(lines, time.time())
        if self.publish_at == _NONE_OPEN or not queue.open_records:
            self._set_opened(time.monotonic() if queue.open_records else None)
        self.depth = (self.depth[0] + len(lines), self.depth[1] + written)

    def _set_opened(self, first: float | None) -> None:
        """The open batch's first record came at ``first`` (monotonic); None: no batch is open."""
        self.publish_at = _NONE_OPEN if first is None else first + PUBLISH_AFTER

    def publish_due(self) -> float:
        """Seconds until the open batch must be published (``inf`` when there is none)."""
        return max(self.publish_at - time.monotonic(), 0.0)

    def publish(self, force: bool = False) -> bool:
        """Publish the open batch if it is old enough, or ``force`` (a flush, exit); True when
        the queue was counted afresh meanwhile.

        Near a cap (by the cached count), and always for a flush or exit, the queue is counted again
        once the batch is out, and pruned if the product's processes together went over it (each
        one's open batch is invisible to the others until published): the last to publish brings
        the queue back under its caps.
        """
        if self.publish_at != _NONE_OPEN and (force or self.publish_due() == 0.0):
            with self.state.persist_lock:
                self._publish_quietly()
                if force or self._near_cap():  # a flush, exit: one listing, and the product is in bounds
                    self.refresh_depth(force=True)
                    self.keep_within_caps()
                    return True
        return False

    def keep_within_caps(self) -> None:
        """Prune when the queue, as last counted, is over a cap: every process of the product
        writes to it, and none sees another's open batch before it is published."""
        config = self.state.cfg
        if self.depth[0] > config.max_queue_events or self.depth[1] > config.max_queue_bytes:
            self.prune()

    def _near_cap(self, events: int = 0, size: int = 0) -> bool:
        """Within a fifth of a cap (with ``events``/``size`` more): the cached depth may be stale there."""
        config: Config = self.state.config  # type: ignore[assignment]  # set, as in put(), which calls this
        return (self.depth[0] + events > 0.8 * config.max_queue_events
                or self.depth[1] + size > 0.8 * config.max_queue_bytes)

    def _publish_quietly(self) -> None:
        self._set_opened(None)
        try:
            self.storage.opened.publish()
        except OSError:  # the batch stays in tmp/: adopted once this process is gone
            self.state.counters.add("internal_errors")

    def refresh_depth(self, force: bool = False) -> None:
        if force or time.monotonic() - self._depth_at > DEPTH_REFRESH:
            self.depth = self.storage.opened.depth()
            self._depth_at = time.monotonic()

    def prune(self, room_events: int = 0, room_bytes: int = 0) -> None:
        """Drop expired batches, then the oldest until ``room_*`` more fit under the caps."""
        config = self.state.cfg
        self.state.counters.add_each("dropped.", self.storage.opened.prune(
            time.time(), config.max_queue_events - room_events, config.max_queue_bytes - room_bytes, config.max_age))
        self.refresh_depth(force=True)

    def maintain(self) -> None:
        if time.monotonic() - self._maintained_at > MAINTENANCE_INTERVAL:
            self._maintained_at = time.monotonic()
            self.prune()
