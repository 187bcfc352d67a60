"""What the host hands the worker: one state object, and a narrow port to call back through.

The host's thread writes these fields (``track()`` appends to ``buffer``, ``count()`` adds to
``counter``, ``init()`` replaces ``config``); the worker reads them and never holds the Agent.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, NamedTuple

from .buffer import Buffer, Counters, Waker, deque
from .config import Config
from .optout import Decision
from .sessions import Sessions

__all__ = ["HostPort", "HostState"]


class HostState:
    """The per-process things the host shares with its worker; a fork gets a fresh one."""

    __slots__ = ("config", "decision", "buffer", "counters", "counter", "count_meta", "sessions",
                 "properties", "static", "base_meta", "ephemeral_id", "waker", "persist_lock", "problems")

    def __init__(self, max_buffer: int = 50000, max_buffer_bytes: int = 16 << 20) -> None:
        self.config: Config | None = None
        self.decision = Decision(False, "init() was not called")
        self.buffer = Buffer(max_buffer, max_buffer_bytes)
        self.counters = Counters()
        #: aggregate counts (``callhome.aggregate.Counter``), created by the first ``count()``
        self.counter: Any = None
        self.count_meta: dict = {}
        self.sessions = Sessions()
        #: custom properties and license fields set by the host, merged into client properties
        self.properties: dict = {}
        self.static: dict = {}
        self.base_meta: dict = {}
        self.ephemeral_id = False
        self.waker: Waker | None = None
        #: held while records taken from the buffer are being written: exit waits for it
        self.persist_lock = threading.Lock()
        #: the host's latest mistakes, for ``status()`` (the worker adds what it finds in raw calls)
        self.problems: deque = deque(maxlen=20)


class HostPort(NamedTuple):
    """The only calls the worker makes into the host side."""

    #: queue the automatic CALL_HOME
    queue_call_home: Callable[[dict], object]
    #: queue the record of a session that ended (a crashed process's, recovered)
    accept_session: Callable[[str, str, float, float, str], None]
    #: the saved choices turned telemetry off: keep nothing
    refuse: Callable[[Decision], None]
    #: client properties given the detected ones (the host's custom properties and license)
    client_properties: Callable[[dict], dict]
