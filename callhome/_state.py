"""What the host hands the worker: one state object, and a narrow port to call back through.

The host's thread writes these fields (``track()`` appends to ``buffer``, ``count()`` adds to
``counter``, ``init()`` replaces ``config``); the worker reads them and never holds the Agent.
"""

from __future__ import annotations

import _thread  # not threading, nor typing: each costs a host's import milliseconds

from .buffer import Buffer, Counters, Waker
from .config import Config
from .optout import Decision
from .sessions import Sessions

TYPE_CHECKING = False  # typing.TYPE_CHECKING, as mypy reads it, without importing typing
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from typing import Any, Callable

    from .aggregate import Counter

__all__ = ["HostPort", "HostState", "Problems"]


class HostState:
    """The per-process things the host shares with its worker; a fork gets a fresh one."""

    __slots__ = ("config", "decision", "buffer", "counters", "counter", "count_meta", "sessions",
                 "properties", "static", "base_meta", "ephemeral_id", "waker", "persist_lock", "problems")

    def __init__(self, max_buffer: int = 50000, max_buffer_bytes: int = 16 << 20) -> None:
        self.config: Config | None = None
        self.decision = Decision(False, "init() was not called")
        self.buffer = Buffer(max_buffer, max_buffer_bytes)
        self.counters = Counters()
        #: aggregate counts, created by the first ``count()``
        self.counter: Counter | None = None
        #: activity name (cleaned) → the cleaned ``meta`` ``count()`` was given for it
        self.count_meta: dict[str, dict[str, Any]] = {}
        self.sessions = Sessions()
        #: custom properties and license fields set by the host, merged into client properties
        self.properties: dict[str, Any] = {}
        #: the payload fields every record of this agent shares (``payload.static_fields``)
        self.static: dict[str, str] = {}
        #: the meta every record of this agent carries (callhome's version, the product's, CI)
        self.base_meta: dict[str, Any] = {}
        self.ephemeral_id = False
        self.waker: Waker | None = None
        #: held while records taken from the buffer are being written: exit waits for it
        self.persist_lock = _thread.allocate_lock()
        #: the host's latest mistakes, for ``status()`` (the worker adds what it finds in raw calls)
        self.problems = Problems()

    @property
    def cfg(self) -> Config:
        """``config``, for code that runs only once ``init()`` has set it (the worker, a record
        being built): typed without ``None``. :raises RuntimeError: before ``init()``."""
        config = self.config
        if config is None:
            raise RuntimeError("callhome: init() was not called")
        return config


class Problems:
    """What ``status()["problems"]`` lists: each distinct problem once, the latest ``limit``.

    A mistake repeated on every call (a ``user_id`` without its type) is one entry, and cannot
    push the others out. Dict operations are atomic: the host's threads and the worker add
    without a lock.
    """

    def __init__(self, limit: int = 20) -> None:
        self.limit = limit
        self._seen: dict[str, None] = {}

    def append(self, problem: str) -> None:
        seen = self._seen
        if problem in seen:
            return
        seen[problem] = None
        while len(seen) > self.limit:
            try:
                seen.pop(next(iter(seen)), None)
            except (RuntimeError, StopIteration):  # another thread changed it meanwhile: its append trims
                break

    def extend(self, problems: Iterable[str]) -> None:
        for problem in problems:
            self.append(problem)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._seen))  # list() of a dict is one C call: no other thread runs meanwhile

    def __len__(self) -> int:
        return len(self._seen)


class HostPort:
    """The only calls the worker makes into the host side."""

    __slots__ = ("queue_call_home", "accept_session", "refuse", "client_properties")

    def __init__(self, queue_call_home: Callable[[dict[str, Any]], object],
                 accept_session: Callable[[str, str, float, float, str], None],
                 refuse: Callable[[Decision], None],
                 client_properties: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        #: queue the automatic CALL_HOME
        self.queue_call_home = queue_call_home
        #: queue the record of a session that ended (a crashed process's, recovered)
        self.accept_session = accept_session
        #: the saved choices turned telemetry off: keep nothing
        self.refuse = refuse
        #: client properties given the detected ones (the host's custom properties and license)
        self.client_properties = client_properties
