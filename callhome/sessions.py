"""Sessions and runtime: the process's implicit session and explicit ones, in memory.

The host's thread only touches :class:`Sessions` (a dict under a lock); the worker keeps them
in a crash journal (:mod:`callhome.journal`) and sends each ended one as a session record.
"""

from __future__ import annotations

import _thread
import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING, as mypy reads it, without importing typing
if TYPE_CHECKING:
    from typing import Any

__all__ = ["MAX_ID", "MIN_ID", "Sessions", "clean_session_id", "session_event_id", "session_meta"]

MIN_ID, MAX_ID = 10, 64
#: Ids remembered to refuse reuse; the oldest are forgotten beyond this (memory stays bounded).
MAX_USED_IDS = 10000


def clean_session_id(session_id: object) -> str:
    """Revenera's rule: trimmed, whitespace other than spaces removed, 10–64 characters.

    :raises ValueError: when the id is not a string or has the wrong length once cleaned.
    """
    if not isinstance(session_id, str):
        raise ValueError(f"session id must be a string, not {type(session_id).__name__}")
    cleaned = "".join(c for c in session_id.strip() if c == " " or not c.isspace())
    if not MIN_ID <= len(cleaned) <= MAX_ID:
        raise ValueError(f"session id {cleaned[:70]!r} must be {MIN_ID}-{MAX_ID} characters long")
    return cleaned


class Sessions:
    """The open sessions of one agent in this process: ``id -> (kind, start)``; thread-safe."""

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._open: dict[str, tuple[str, float]] = {}
        self._used: dict[str, None] = {}  # insertion-ordered, so the oldest can be forgotten
        #: Bumped on every change, so the worker rewrites the journal only when it must.
        self.version = 0
        #: This process's journal name: a fork gets new Sessions, hence its own journal.
        self.name = f"{os.getpid()}-{os.urandom(4).hex()}"

    def __len__(self) -> int:
        return len(self._open)

    def start(self, session_id: str, kind: str, now: float) -> None:
        """Open a session. :raises ValueError: when the id is open or was used before."""
        with self._lock:
            if session_id in self._used:
                state = "already active" if session_id in self._open else "already used"
                raise ValueError(f"session id {session_id!r} is {state}; ids must be unique")
            self._used[session_id] = None
            if len(self._used) > MAX_USED_IDS:
                self._used.pop(next(iter(self._used)))
            self._open[session_id] = (kind, now)
            self.version += 1

    def end(self, session_id: str) -> tuple[str, float]:
        """Close a session; ``(kind, start)``. :raises ValueError: when it is not open."""
        with self._lock:
            if session_id not in self._open:
                raise ValueError(f"session id {session_id!r} is not active")
            self.version += 1
            return self._open.pop(session_id)

    def end_all(self) -> list[tuple[str, str, float]]:
        """Close every open session (exit); ``[(id, kind, start)]``."""
        with self._lock:
            ended = [(sid, kind, start) for sid, (kind, start) in self._open.items()]
            self._open.clear()
            self.version += 1
        return ended

    def snapshot(self) -> tuple[int, dict[str, tuple[str, float]]]:
        with self._lock:
            return self.version, dict(self._open)

    def restart_all(self, now: float) -> None:
        """Another process closed our sessions at our last heartbeat: count from ``now`` again."""
        with self._lock:
            self._open = {sid: (kind, now) for sid, (kind, _) in self._open.items()}
            self.version += 1


def session_meta(session_id: str, kind: str, start: float, end: float, closed_by: str) -> dict[str, Any]:
    """The ``meta`` of one ended session (see ``docs/data.md``)."""
    return {"record_type": "session", "session_id": session_id, "session_kind": kind,
            "session_start": int(start), "session_end": int(end),
            "duration": round(max(end - start, 0.0), 3), "closed_by": closed_by}


def session_event_id(product_id: str, session_id: str, start: float) -> str:
    """The same id whichever process closes the session, so a recovery that ran twice is one record."""
    from ._digest import sha256

    digest = bytearray(sha256(f"{product_id}\0{session_id}\0{start!r}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # shaped as a uuid (version 5-like), as event ids are
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
