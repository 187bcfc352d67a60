"""The only structures the host's thread touches: a bounded hand-off buffer and drop counters."""

from __future__ import annotations

import _thread

try:  # the C type itself: ``collections`` costs a host a few milliseconds to import
    from _collections import deque
except ImportError:  # another Python implementation
    from collections import deque

__all__ = ["OWN_THREADS", "Buffer", "Counters"]

#: Idents of callhome's own threads. An event tracked from one of them (a host logging handler
#: that forwards log lines, fed by callhome's or urllib3's own logging) would feed back forever.
OWN_THREADS: set = set()


class Buffer:
    """A bounded FIFO of records waiting for the worker; when full, the newest record is refused.

    ``deque.append`` and ``popleft`` are atomic, so the host never waits for a lock here.
    """

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self._items: deque = deque()

    def put(self, record: dict) -> bool:
        if len(self._items) >= self.maxlen:
            return False
        self._items.append(record)
        return True

    def drain(self, limit: int = 1 << 30) -> list:
        taken = []
        popleft = self._items.popleft
        try:
            while len(taken) < limit:
                taken.append(popleft())
        except IndexError:
            pass
        return taken

    def __len__(self) -> int:
        return len(self._items)


class Counters:
    """Named event counts (accepted, delivered, dropped by reason, ...), safe across threads."""

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._counts: dict = {}

    def add(self, name: str, n: int = 1) -> None:
        if n:
            with self._lock:
                self._counts[name] = self._counts.get(name, 0) + n

    def get(self, name: str) -> int:
        return self._counts.get(name, 0)

    def snapshot(self, prefix: str = "") -> dict:
        with self._lock:
            return {k[len(prefix):]: v for k, v in sorted(self._counts.items()) if k.startswith(prefix)}
