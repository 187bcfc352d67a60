"""The only structures the host's thread touches: a bounded hand-off buffer and drop counters."""

from __future__ import annotations

import _thread
from itertools import count, repeat, starmap

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing, which a host would pay for
if TYPE_CHECKING:
    from collections import deque
    from typing import Any, Callable, Union

    #: What :meth:`Buffer.drain` hands the worker: a record the host built, or a raw ``track()`` call
    Entry = Union[dict[str, Any], tuple[Any, ...]]
else:
    try:  # the C type itself: ``collections`` costs a host a few milliseconds to import
        from _collections import deque
    except ImportError:  # another Python implementation
        from collections import deque

__all__ = ["KEY_WEIGHT", "OWN_THREADS", "RAW_FIELDS", "RAW_WEIGHT", "RECORD_WEIGHT", "Buffer", "Counters", "Waker"]

#: Idents of callhome's own threads. An event tracked from one of them (a host logging handler
#: that forwards log lines, fed by callhome's or urllib3's own logging) would feed back forever.
OWN_THREADS: set[int] = set()
#: What a built record (a session, an exception, a CALL_HOME) is charged in the buffer.
RECORD_WEIGHT = 4096
#: The fields of a raw ``track()`` call in the buffer: its weight, then activity, user_id,
#: user_id_type, a copy of meta, event_at, category, the time of the call and its event_id.
RAW_FIELDS = 9
#: The least a raw call weighs (the memory it holds besides its meta: the fields, the id, the time).
RAW_WEIGHT = 480
#: What a call weighs more per meta key: the copy's entry, and a key or number it keeps alive.
KEY_WEIGHT = 80


class Buffer:
    """A bounded FIFO of what waits for the worker; when full, the newest call is refused.

    Two kinds of entries: a record the host side built (a ``dict``: sessions, exceptions, the
    CALL_HOME, every record in debug and strict modes), and a raw ``track()`` call, whose
    :data:`RAW_FIELDS` fields are added with one ``deque.extend`` rather than as a tuple: a
    tuple per call would be one more object for the host's garbage collector to visit. The
    fields of one call are contiguous (``extend`` of a tuple runs without releasing the GIL and
    is not interrupted by a signal handler), and a call starts with its weight, an ``int``, so
    the worker tells the two apart.

    Bounded in calls (``maxlen``) and in weight (``max_bytes``): each call weighs an estimate
    of the memory it holds (at least ``RAW_WEIGHT``), a built record ``RECORD_WEIGHT``. Below
    ``limit`` (the weight of ``maxlen`` of the lightest calls) neither bound can be reached, so
    ``track()`` compares one number and calls :meth:`full` only beyond it. ``extend``,
    ``append`` and ``popleft`` are atomic, so the host never waits for a lock here; the weight
    is kept without one too: a lost update (two host threads adding at once) is forgotten when
    the worker next empties the buffer.
    """

    def __init__(self, maxlen: int, max_bytes: int = 16 << 20) -> None:
        self.resize(maxlen, max_bytes)
        #: the weight held (``track()`` adds to it inline, the worker's drain takes away)
        self.bytes = 0
        #: built records (dicts) and the fields of raw calls, flat
        self.items: deque[Any] = deque()
        #: ``items.extend``, looked up once: ``track()`` adds a raw call's fields with it
        self.extend = self.items.extend
        #: raw calls the worker took (``track()`` does not count the calls it accepts: this
        #: plus those still here is that count, read under ``_taking``)
        self.taken = 0
        self._taking = _thread.allocate_lock()

    def resize(self, maxlen: int, max_bytes: int) -> None:
        self.maxlen, self.max_bytes, self.max_items = maxlen, max_bytes, maxlen * RAW_FIELDS
        #: what ``track()`` compares ``bytes`` with first
        self.limit = min(max_bytes, maxlen * RAW_WEIGHT)

    def full(self) -> bool:
        """Either bound reached (a built record counts as a ninth of a call)."""
        return len(self.items) >= self.max_items or self.bytes >= self.max_bytes

    def put(self, record: dict[str, Any], weight: int = RECORD_WEIGHT) -> bool:
        """Add a record the host side built."""
        if self.full():
            return False
        self.items.append(record)
        self.bytes += weight
        return True

    def drain(self) -> list[Entry]:
        """Everything buffered, oldest first: records (dicts) and raw calls (tuples of RAW_FIELDS)."""
        items = self.items
        with self._taking:
            # as many as there are now, popped in one C call (no thread runs in between): whole
            # calls, each added by one atomic extend; what the host adds meanwhile waits for the
            # next drain (drains take turns: the lock)
            taken, calls, weight = _entries(list(starmap(items.popleft, repeat((), len(items)))))
            self.taken += calls
        # emptied: start the count afresh rather than subtract (a lost update must not last)
        self.bytes = 0 if not items else max(self.bytes - weight, 0)
        return taken

    def accepted(self) -> int:
        """Raw calls accepted so far: taken by the worker, or waiting here."""
        with self._taking:
            return self.taken + _entries(list(self.items))[1]

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        """Calls and records waiting (counted on a copy: for ``status()``, not a hot path)."""
        return len(_entries(list(self.items))[0])


def _entries(flat: list[Any]) -> tuple[list[Entry], int, int]:
    """``flat`` regrouped into entries, with how many are raw calls and their total weight."""
    weights = flat[::RAW_FIELDS]
    if len(flat) % RAW_FIELDS == 0 and dict not in map(type, weights):
        # raw calls only (the usual case; a record would sit where a weight is expected), in C
        return list(zip(*[iter(flat)] * RAW_FIELDS)), len(weights), sum(weights)
    entries: list[Entry] = []
    i, end, calls, weight = 0, len(flat), 0, 0
    while i < end:
        if type(flat[i]) is dict:
            entries.append(flat[i])
            weight += RECORD_WEIGHT
            i += 1
        else:
            entries.append(tuple(flat[i:i + RAW_FIELDS]))
            calls += 1
            weight += flat[i]
            i += RAW_FIELDS
    return entries, calls, weight


class Counters:
    """Named event counts (accepted, delivered, dropped by reason, ...), safe across threads.

    Lock-free: each name is an ``itertools.count``, whose ``next()`` is one atomic C call, so a
    signal handler that interrupts an ``add`` on the same thread cannot deadlock or lose a count.
    """

    def __init__(self) -> None:
        self._counts: dict[str, count[int]] = {}

    def add(self, name: str, n: int = 1) -> None:
        if n <= 0:
            return
        counter = self._counts.get(name)
        if counter is None:
            counter = self._counts.setdefault(name, count())  # setdefault: atomic, one winner
        for _ in range(n):
            next(counter)

    def add_each(self, prefix: str, counts: dict[str, int]) -> None:
        """``{reason: n}`` (what a prune or a merge dropped) as ``<prefix><reason>`` counts."""
        for reason, n in counts.items():
            self.add(prefix + reason, n)

    def get(self, name: str) -> int:
        counter = self._counts.get(name)
        return _value(counter) if counter is not None else 0

    def snapshot(self, prefix: str = "") -> dict[str, int]:
        return {k[len(prefix):]: _value(v) for k, v in sorted(self._counts.items()) if k.startswith(prefix)}


def _value(counter: count[int]) -> int:
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

    def wait(self, timeout: float, pending: Callable[[], object]) -> None:
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
