"""The only structures the host's thread touches: a bounded hand-off buffer and drop counters."""

from __future__ import annotations

from itertools import count

try:  # the C type itself: ``collections`` costs a host a few milliseconds to import
    from _collections import deque
except ImportError:  # another Python implementation
    from collections import deque

__all__ = ["OWN_THREADS", "Buffer", "Counters", "Waker"]

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
    """Named event counts (accepted, delivered, dropped by reason, ...), safe across threads.

    Lock-free: each name is an ``itertools.count``, whose ``next()`` is one atomic C call, so a
    signal handler that interrupts an ``add`` on the same thread cannot deadlock or lose a count.
    """

    def __init__(self) -> None:
        self._counts: dict = {}

    def add(self, name: str, n: int = 1) -> None:
        if n <= 0:
            return
        counter = self._counts.get(name)
        if counter is None:
            counter = self._counts.setdefault(name, count())  # setdefault: atomic, one winner
        for _ in range(n):
            next(counter)

    def get(self, name: str) -> int:
        counter = self._counts.get(name)
        return _value(counter) if counter is not None else 0

    def snapshot(self, prefix: str = "") -> dict:
        return {k[len(prefix):]: _value(v) for k, v in sorted(self._counts.items()) if k.startswith(prefix)}


def _value(counter: count) -> int:
    # the one public way to read an itertools.count without advancing it
    return int(repr(counter)[6:-1])


class Waker:
    """Wakes the worker from the host's thread without a lock: a byte into a pipe, and only
    when the worker sleeps. ``os.write`` is safe in a signal handler; ``Event.set`` is not
    (its condition's lock is not reentrant)."""

    def __init__(self) -> None:
        import os

        self._os = os
        self.sleeping = False
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)

    def poke(self) -> None:
        """Host side: wake a sleeping worker (a full pipe means it is awake already)."""
        if self.sleeping:
            self.sleeping = False
            self.force()

    def force(self) -> None:
        try:
            self._os.write(self._write, b"\0")
        except OSError:  # full (the worker wakes anyway), or closed in a forked child
            pass

    def wait(self, timeout: float, pending) -> None:
        """Worker side: sleep up to ``timeout`` unless ``pending()`` already holds work."""
        import select

        self.sleeping = True
        if not pending():
            try:
                ready, _, _ = select.select([self._read], [], [], max(timeout, 0.0))
                if ready:
                    self._os.read(self._read, 4096)
            except (OSError, ValueError):  # Windows pipes do not select: poll instead
                import time

                time.sleep(min(timeout, 0.05))
        self.sleeping = False

    def close(self) -> None:
        for fd in (self._read, self._write):
            try:
                self._os.close(fd)
            except OSError:
                pass
