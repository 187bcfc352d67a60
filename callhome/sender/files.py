"""The files through which hosts and the product's sender talk, in ``queue-v1/``.

Light on purpose: the host's worker imports this, not the delivery stack.

    locks/sender.lock    held by the live sender for its whole life
    state/sender.json    what the sender publishes: pid, mode, state, counts, last error, ...
    state/flush.json     a host's flush(): run a forced cycle
    state/retire.json    a host's request that an older sender with other settings ends
    state/backoff.json, state/auth.json   the product's shared pauses (written by the sender,
                                          bounded and checked here, where every reader reads them)
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections import namedtuple

from .. import backoff
from .._fs import mtime_ns, read_json, write_json
from ..config import Config

__all__ = ["AUTH_PAUSE", "Backoff", "FLUSH_FILE", "LOCK_NAME", "RETIRE_FILE", "STATUS_FILE", "auth_until",
           "backoff_state", "fingerprint", "key_hash", "package_dir", "paused_until", "read_status",
           "request_flush", "request_retirement", "state_path"]

LOCK_NAME = "sender"
STATUS_FILE = "sender"
FLUSH_FILE = "flush"
RETIRE_FILE = "retire"
#: How long a refused key keeps this product quiet before one probe, unless the key changes.
AUTH_PAUSE = 3600.0
#: How far ahead of this clock a state file may have been written (another machine's clock, on a
#: shared directory) before it counts as written by a clock that jumped.
CLOCK_SLACK = 60.0

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (a short-lived host waits for it)
if TYPE_CHECKING:
    from typing import Any, NamedTuple, TypeGuard

    from ..memqueue import MemoryQueue
    from ..queue import DiskQueue

    class Backoff(NamedTuple):
        until: float
        failures: int
        retry_after: float
else:
    #: The shared backoff: every process waits until ``until`` (a time); ``failures`` in a row so far;
    #: ``retry_after``: the longest wait the server asked for in this pause (0.0: none).
    Backoff = namedtuple("Backoff", "until failures retry_after")
NO_BACKOFF = Backoff(0.0, 0, 0.0)


def package_dir() -> str:
    """The directory of this copy of callhome: the host names it in the hand-off, the sender checks it."""
    return os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def state_path(queue_dir: str, name: str) -> str:
    return os.path.join(queue_dir, "state", name + ".json")


def read_status(queue_dir: str) -> dict[str, Any]:
    """The last ``sender.json`` of the product whose queue is ``queue_dir`` (``{}`` if none)."""
    return read_json(state_path(queue_dir, STATUS_FILE))


def request_flush(queue_dir: str) -> int | None:
    """Ask the product's sender for a forced cycle (one that ignores the shared backoff); the
    request's stamp (``flush.json``'s mtime_ns), which the sender's status names once answered."""
    path = state_path(queue_dir, FLUSH_FILE)
    _write(path, {"at": time.time(), "pid": os.getpid()})
    return mtime_ns(path)


def request_retirement(queue_dir: str, settings: str, started: float, why: str) -> None:
    """Ask a sender started before ``started`` with other settings (a :func:`fingerprint`) to exit."""
    _write(state_path(queue_dir, RETIRE_FILE), {"config": settings, "started": started, "pid": os.getpid(),
                                                "why": why})


def _write(path: str, value: dict[str, Any]) -> None:
    try:
        write_json(path, value)
    except OSError:
        pass  # the directory went away: there is nobody to tell


def fingerprint(config: Config) -> str:
    """Which settings a sender sends with, as two checksums: hosts compare it with theirs.

    Not a secret-grade hash (``hashlib`` would cost the worker's start 3 ms): it only tells
    settings apart, and 64 bits of checksum over the whole configuration say nothing usable
    about the key in it.
    """
    values = {k: v for k, v in config.to_dict().items() if k != "problems"}
    data = json.dumps(values, sort_keys=True, default=str).encode()
    return "%08x%08x" % (zlib.crc32(data), zlib.adler32(data))


def key_hash(api_key: str | None) -> str:
    """How ``auth.json`` names the key it paused for (never the key itself)."""
    from .._digest import sha256  # only when an auth pause is on disk, or in the sender

    digest: str = sha256((api_key or "").encode()).hexdigest()[:16]  # _digest.sha256 may be an untyped module
    return digest


def paused_until(queue: DiskQueue | MemoryQueue, config: Config) -> float:
    """Until when the product needs no sender: while every process waits out the shared backoff
    or a refused key, and after an outage while the replay holds every waiting batch back, until
    the first comes due (a sender started meanwhile would exit idle, and be started again, all day)."""
    now = time.time()
    until = max(backoff_state(queue, now).until, auth_until(queue, config.api_key, now))
    return until if until > now else _first_due(queue)


def _first_due(queue: DiskQueue | MemoryQueue) -> float:
    """The earliest not-before time in ``ready/`` (names sort by it), 0.0 when nothing waits there."""
    first = next(iter(queue.entries()), None)
    return first.not_before if first is not None else 0.0


def backoff_state(queue: DiskQueue | MemoryQueue, now: float) -> Backoff:
    """The shared backoff, read the way every process of the product must read it.

    ``until`` is taken as at most ``MAX_DELAY`` after the file was written, or the largest
    ``Retry-After`` it records (itself at most ``MAX_RETRY_AFTER``): the most its writer could
    have meant. A file that is not what the sender writes (wrong types, NaN, a negative count)
    is no backoff at all.
    """
    state = queue.state("backoff")
    until, failures, asked = state.get("until"), state.get("failures", 0), state.get("retry_after", 0.0)
    if not (_finite(until) and _finite(asked) and _count(failures)):
        return NO_BACKOFF
    asked = min(max(asked, 0.0), backoff.MAX_RETRY_AFTER)
    until = _bounded(until, _written(queue, "backoff", now), now, max(backoff.MAX_DELAY, asked))
    return Backoff(until, min(failures, backoff.MAX_FAILURES), asked) if until is not None else NO_BACKOFF


def auth_until(queue: DiskQueue | MemoryQueue, api_key: str | None, now: float) -> float:
    """Until when ``api_key`` is not to be sent with (it was refused), at most ``AUTH_PAUSE`` after
    ``auth.json`` was written; 0.0 for another key, or no (or a malformed) file."""
    state = queue.state("auth")
    until = state.get("until")
    if not (_finite(until) and state.get("key") == key_hash(api_key)):
        return 0.0
    return _bounded(until, _written(queue, "auth", now), now, AUTH_PAUSE) or 0.0


def _bounded(until: float, written: float, now: float, longest: float) -> float | None:
    """``until``, but no later than ``longest`` after the file was written (nor after now).

    Measured from the write, not from now, so that the bound runs out. None for a file written
    ahead of our clock: its writer's clock was ahead, and has been set back since.
    """
    if written > now + CLOCK_SLACK:
        return None
    return min(until, min(written, now) + longest)


def _written(queue: DiskQueue | MemoryQueue, name: str, now: float) -> float:
    """When a state file was last written (a memory queue's state is this process's own: now)."""
    stamp = mtime_ns(state_path(queue.dir, name)) if queue.dir else None
    return now if stamp is None else stamp / 1e9


def _finite(value: object) -> TypeGuard[float]:
    """A number of a shared state file, which a person or another version may have edited."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < float("inf")


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
