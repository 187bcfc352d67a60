"""A bounded local log of what was sent, so a person can see it (``callhome log``).

One JSON object per line: ``at``, ``url``, ``status``, ``outcome``, ``detail``, ``payload``.
Kept under ``MAX_BYTES`` by rewriting the newest half when it grows past it. ``CALLHOME_LOG_FILE``
names a second, unbounded file that gets every entry too (the user asked for it).
"""

from __future__ import annotations

import json
import os

from ._fs import atomic_write

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any

__all__ = ["FILE", "MAX_BYTES", "append", "tail"]

FILE = "sent.log"
MAX_BYTES = 64 * 1024


def append(path: str | None, entries: list[dict[str, Any]], extra_path: str | None = None) -> None:
    """Add ``entries`` to the bounded log at ``path`` (and to ``extra_path``); never raises."""
    data = b"".join(json.dumps(e, sort_keys=True, separators=(",", ":")).encode() + b"\n" for e in entries)
    for target in (path, extra_path):
        if target:
            _append_line(target, data)
    try:
        if path and os.path.getsize(path) > MAX_BYTES:
            _keep_newest(path, MAX_BYTES // 2)
    except OSError:
        pass


def _append_line(path: str, line: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError:
        return
    try:
        os.write(fd, line)  # one O_APPEND write: concurrent writers do not interleave within it
    except OSError:
        pass
    finally:
        os.close(fd)


def _keep_newest(path: str, size: int) -> None:
    with open(path, "rb") as f:
        data = f.read()
    kept = data[-size:]
    kept = kept[kept.find(b"\n") + 1:]  # start at a whole line
    atomic_write(path, kept)


def tail(path: str, count: int) -> list[Any]:
    """The newest ``count`` entries, oldest first (unreadable lines skipped)."""
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    entries = []
    for line in lines[-count:] if count > 0 else []:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries
