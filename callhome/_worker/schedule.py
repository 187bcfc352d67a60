"""The automatic CALL_HOME: at most once per ``call_home_interval`` across every process."""

from __future__ import annotations

import os
import time

from .._lock import FileLock
from .._log import logger
from .._state import HostState
from ..queue import DiskQueue
from .storage import Storage

__all__ = ["CallHomeSchedule", "next_due"]

#: A long-running process's next CALL_HOME comes up to this share of the interval (at most
#: ``MAX_JITTER``) late, at random: a fleet of daemons restarted together would otherwise call
#: home in the same second every day. Late, never early: the promise is "at most once".
JITTER = 0.1
MAX_JITTER = 3600.0

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (a short-lived host waits for it)
if TYPE_CHECKING:
    from typing import Any, Callable


def next_due(last: float, interval: float, draw: float) -> float:
    """When to look again after a CALL_HOME at ``last``; ``draw`` is uniform in [0, 1]."""
    return last + interval + min(interval * JITTER, MAX_JITTER) * draw


def _draw() -> float:
    return int.from_bytes(os.urandom(2), "big") / 65535


class CallHomeSchedule:
    """Decides whether this process owes the product's CALL_HOME, now or once the interval passes."""

    def __init__(self, state: HostState, storage: Storage, queue_call_home: Callable[[dict[str, Any]], object]) -> None:
        self.state = state
        self.storage = storage
        self.queue_call_home = queue_call_home
        #: when to look again; 0 until the first look (a short run owes its CALL_HOME at exit)
        self.due = 0.0

    @property
    def looked(self) -> bool:
        return self.due > 0

    def maybe_queue(self) -> None:
        """Queue the CALL_HOME when none was sent within ``call_home_interval`` (any process).

        Checked when the worker starts and again once the interval has passed, so a server that
        runs for weeks still calls home once a day.
        """
        interval = self.state.cfg.call_home_interval
        self.due = float("inf")
        if interval <= 0 or not self.storage.durable:
            return  # without shared state the interval cannot be kept: send none rather than many
        queue = self.storage.queue
        last = self._last()
        if time.time() - last < interval:  # the common case needs no lock
            self.due = next_due(last, interval, _draw())
            return
        assert isinstance(queue, DiskQueue)  # durable: the queue is on disk
        try:
            with FileLock(queue.lock_path("state")).acquire(2.0):
                last, now = self._last(), time.time()  # again, under the lock
                if now - last < interval:
                    self.due = next_due(last, interval, _draw())
                    return
                queue.set_state("call_home", {"at": now})
                self.due = next_due(now, interval, _draw())
        except OSError:
            logger().debug("callhome: automatic CALL_HOME skipped", exc_info=True)
            self.due = time.time() + interval
            return
        self.queue_call_home({"automatic": True})

    def _last(self) -> float:
        try:
            return float(self.storage.opened.state("call_home").get("at", 0))
        except (TypeError, ValueError):  # a state file edited by hand
            return 0.0
