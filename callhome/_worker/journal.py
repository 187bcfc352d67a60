"""The sessions' crash journal: ``sessions/<pid>-<id>.json`` in the product directory, and the
worker's :class:`SessionJournal`, which keeps it.

The worker rewrites it at every heartbeat and whenever sessions open or close, so that a
process killed without running its exit hook loses at most one heartbeat of runtime: the next
process finds the journal of a dead process, claims it by renaming it, and closes its
sessions at their last heartbeat. Worker thread only.
"""

from __future__ import annotations

import os
import threading
import time

from .._fs import ensure_private_dir, pid_alive, read_json, unlink_quietly, write_json
from .._state import HostState

__all__ = ["SessionJournal", "recover", "remove_journal", "write_journal"]

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (a short-lived host waits for it)
if TYPE_CHECKING:
    from typing import Any, Callable

_JOURNAL_DIR = "sessions"
_CLAIMED = ".closing"
_namespace: list[str] = []  # this process's, read once


def pid_namespace() -> str:
    """What a pid is relative to: this boot and this PID namespace (every container has its own
    pid 1); "" where ``/proc`` cannot say. A pid of another namespace cannot be checked here."""
    if not _namespace:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                boot = f.read().strip().replace("-", "")
            _namespace.append(f"{boot}.{os.stat('/proc/self/ns/pid').st_ino}")
        except (OSError, ValueError):
            _namespace.append("")
    return _namespace[0]

def journal_path(directory: str, name: str) -> str:
    return os.path.join(directory, _JOURNAL_DIR, name + ".json")


def write_journal(directory: str, name: str, beat: float, sessions: dict[str, tuple[str, float]],
                  fsync: bool = False) -> bool:
    """Record this process's open sessions and its heartbeat; True if the journal existed before.

    A journal that vanished after we wrote it means another process thought we were dead and
    closed our sessions at our last heartbeat: the caller then restarts them from that beat.
    """
    path = journal_path(directory, name)
    existed = os.path.exists(path)
    ensure_private_dir(os.path.dirname(path))
    write_json(path, {"pid": os.getpid(), "ns": pid_namespace(), "beat": beat,
                      "sessions": {sid: [kind, start] for sid, (kind, start) in sessions.items()}}, fsync)
    return existed


def remove_journal(directory: str, name: str) -> None:
    unlink_quietly(journal_path(directory, name))


def recover(directory: str, stale_after: float, now: float) -> tuple[list[tuple[str, str, float, float]], list[str]]:
    """Claim the journals of dead processes: ``([(id, kind, start, last beat)], claimed paths)``.

    A journal is abandoned when its process is gone, or when its heartbeat is older than
    ``stale_after`` (a pid reused by an unrelated process, or a frozen one). Claiming is a
    rename, so of several processes starting together exactly one closes each session. The
    caller deletes the claimed files once their sessions are queued on disk: a claimer killed
    before that leaves them for the next process (session records have deterministic ids).
    """
    folder = os.path.join(directory, _JOURNAL_DIR)
    try:
        names = os.listdir(folder)
    except OSError:
        return [], []
    found: list[tuple[str, str, float, float]] = []
    claimed_paths: list[str] = []
    for name in names:
        path = os.path.join(folder, name)
        if not (name.endswith(".json") or _CLAIMED in name):
            continue
        journal = read_json(path)
        if not _abandoned(path, name, journal, stale_after, now):
            continue
        claimed = f"{path.split(_CLAIMED)[0]}{_CLAIMED}-{pid_namespace()}-{os.getpid()}"
        try:
            os.rename(path, claimed)
        except OSError:
            continue  # another process claimed it first
        found.extend(_sessions_of(journal))
        claimed_paths.append(claimed)
    return found, claimed_paths


def _abandoned(path: str, name: str, journal: dict[str, Any], stale_after: float, now: float) -> bool:
    if _CLAIMED in name:  # a recovery that died halfway; its claimer's namespace and pid are in the name
        namespace, dash, owner = name.split(_CLAIMED + "-", 1)[-1].rpartition("-")
        if (namespace == pid_namespace() or not dash) and owner.isdigit():  # no dash: named before namespaces
            return not pid_alive(int(owner))
        return _older_than(path, stale_after, now)  # another container's claimer, or an old name
    try:
        pid, beat = int(journal["pid"]), float(journal["beat"])
    except (KeyError, TypeError, ValueError):
        return True  # unreadable: nothing to close, but the file should go
    if now - beat > stale_after:
        return True
    if pid == os.getpid() or journal.get("ns", pid_namespace()) != pid_namespace():
        return False  # ours, or a pid of another namespace: only its heartbeat can tell
    return not pid_alive(pid)


def _older_than(path: str, age: float, now: float) -> bool:
    try:
        return now - os.stat(path).st_mtime > age
    except OSError:
        return False  # gone: claimed by someone else meanwhile


def _sessions_of(journal: dict[str, Any]) -> list[tuple[str, str, float, float]]:
    try:
        beat = float(journal["beat"])
        return [(str(sid), str(kind), float(start), max(beat, float(start)))
                for sid, (kind, start) in journal.get("sessions", {}).items()]
    except (KeyError, TypeError, ValueError):
        return []


class SessionJournal:
    """The worker's side of sessions: the heartbeat, and closing crashed processes' sessions."""

    def __init__(self, state: HostState, accept_session: Callable[[str, str, float, float, str], None]) -> None:
        self.state = state
        self.accept_session = accept_session
        self.active = False  # a journal of this process is on disk
        self.version = -1  # the sessions' version it holds
        self.written_at = 0.0
        self.recovered = False  # whether this process looked for crashed processes' sessions

    def enabled(self, directory: str | None, disk_ok: bool) -> bool:
        return bool(self.state.config and self.state.config.sessions and directory and disk_ok)

    def recover(self, directory: str, lock: threading.Lock, persist: Callable[[], int],
                disk_ok: Callable[[], bool]) -> None:
        """Close the sessions of processes that died without their exit hook, at their last heartbeat.

        Once per process: when the thread starts, or at exit if the run was too short for that.
        ``lock`` is the persist lock: exit persists the claimed sessions, only in memory until then.
        """
        with lock:
            if self.recovered:
                return
            self.recovered = True
            stale = 3 * self.state.cfg.heartbeat_interval + 60
            found, claimed = recover(directory, stale, time.time())
            for session_id, kind, start, beat in found:
                self.accept_session(session_id, kind, start, beat, "recovered")
        if claimed:
            persist()
            if disk_ok():  # on disk now: the claimed journals can go
                for path in claimed:
                    unlink_quietly(path)

    def beat(self, directory: str) -> None:
        """Rewrite the journal when sessions changed or a heartbeat interval has passed."""
        current = self.state.sessions
        now = time.time()
        if self.version == current.version and now - self.written_at < self.state.cfg.heartbeat_interval:
            return
        version, open_sessions = current.snapshot()
        if not open_sessions and not self.active:
            return  # nothing to journal yet
        existed = write_journal(directory, current.name, now, open_sessions, self.state.cfg.fsync)
        if self.active and not existed:
            current.restart_all(self.written_at)  # closed by another process at that heartbeat
        self.active, self.version, self.written_at = True, version, now

    def close(self, directory: str | None) -> None:
        """At exit, once the sessions' records are queued: the journal has nothing left to say."""
        if self.active and directory:
            remove_journal(directory, self.state.sessions.name)
