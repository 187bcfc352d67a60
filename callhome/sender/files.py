"""The files through which hosts and the product's sender talk, in ``queue-v1/``.

Light on purpose: the host's worker imports this, not the delivery stack.

    locks/sender.lock    held by the live sender for its whole life
    state/sender.json    what the sender publishes: pid, mode, state, counts, last error, ...
    state/flush.json     a host's flush(): run a forced cycle
    state/retire.json    a host's request that an older sender with other settings ends
    state/backoff.json, state/auth.json   the product's shared pauses (written by the sender)
"""

from __future__ import annotations

import json
import os
import time
import zlib

from .._fs import mtime_ns, read_json, write_json
from ..config import Config

__all__ = ["FLUSH_FILE", "LOCK_NAME", "RETIRE_FILE", "STATUS_FILE", "fingerprint", "key_hash", "number",
           "package_dir", "paused_until", "read_status", "request_flush", "request_retirement", "state_path"]

LOCK_NAME = "sender"
STATUS_FILE = "sender"
FLUSH_FILE = "flush"
RETIRE_FILE = "retire"


def package_dir() -> str:
    """The directory of this copy of callhome: the host names it in the hand-off, the sender checks it."""
    return os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def state_path(queue_dir: str, name: str) -> str:
    return os.path.join(queue_dir, "state", name + ".json")


def read_status(queue_dir: str) -> dict:
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


def _write(path: str, value: dict) -> None:
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

    return sha256((api_key or "").encode()).hexdigest()[:16]


def paused_until(queue, config: Config) -> float:
    """Until when every process of the product waits (the shared backoff, or a refused key)."""
    auth = queue.state("auth")
    refused = number(auth.get("until")) if auth and auth.get("key") == key_hash(config.api_key) else 0.0
    return max(number(queue.state("backoff").get("until")), refused)


def number(value: object) -> float:
    """A number from a shared state file, which a person or another version may have edited."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
