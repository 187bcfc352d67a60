"""Aggregated usage: per-window counts, merged exactly across every process of a product.

The host's thread only bumps a :class:`Counter` in memory. The worker periodically drains it
and merges the partial counts into an :class:`AggregateStore`, a small directory shared by all
processes of the product and guarded by a ``filelock``. Once a window has closed and a grace
period has passed, one process takes it (``take_due``), queues one record per activity built by
:func:`aggregate_payload`, and marks the window emitted.

Windows are aligned to the interval in UTC: window *k* is ``[k*interval, (k+1)*interval)`` and
is named by its start. A count belongs to the window of the time it was counted, so a process
that slept past a window end still adds to the old window, or, when that window was already
emitted, has its count dropped as ``late``: one window is never reported twice with different
counts, and a late count never inflates the current window.

Store layout (``<product dir>/aggregate-v1``)::

    lock                          the filelock (never deleted)
    salt                          random; stands in for the installation id in event ids
    w-<interval>-<start>.json     an open or sealed window: {"counts": {...}, "sealed": ...}
    w-<interval>-<start>.done     the window was emitted; later counts for it are late

Every ``.json`` write is an atomic replace made while holding the lock, so a ``kill -9`` leaves
the old or the new content, and any ``*.tmp`` seen under the lock is an orphan and deleted. A
window's life is open → sealed (taken by one process, counts frozen) → done. Sealing before
queueing means a crash between "queued" and "marked done" re-emits the same counts under the
same deterministic ``event_id``, which the receiver deduplicates, never a different record.
Done markers are kept for ``max_windows`` intervals; counts for windows older than that are
late too, so the markers can go without a window ever being reported twice.

Importing this module costs nothing beyond what ``callhome.payload`` already loaded, so the agent
may import it eagerly: ``json``, ``uuid``, ``_lock`` and ``_fs`` are imported in the worker-side
functions that need them.
"""

from __future__ import annotations

import math
import os
import threading

from .payload import MAX_ACTIVITY, clean_meta
from .schema import MAX_FUTURE_S

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see the module's docstring)
if TYPE_CHECKING:
    from collections import deque
    from typing import Any

    from ._lock import FileLock
else:
    from .buffer import deque  # the C type, without importing collections

__all__ = ["DEFAULT_GRACE", "LOCK_TIMEOUT", "MAX_COUNT", "MAX_PENDING_WINDOWS", "SEAL_LEASE", "AggregateStore",
           "Counter", "aggregate_event_id", "aggregate_payload", "default_grace", "window_start"]

#: Largest count kept: the largest integer every JSON reader handles exactly.
MAX_COUNT = 2 ** 53 - 1
#: Upper bound of the grace period: a worker merges every ``flush_interval`` (5 s, jittered up
#: to 6 s) and a delivery cycle may hold it for up to 10 s more; 30 s covers both with slack.
DEFAULT_GRACE = 30.0
#: How long a window taken by another process stays its own before it is presumed crashed.
SEAL_LEASE = 60.0
#: Seconds a store operation waits for the lock; on timeout the caller tries again next cycle.
LOCK_TIMEOUT = 2.0
#: Distinct windows a Counter holds before it refuses new ones (the worker is stuck or gone).
MAX_PENDING_WINDOWS = 48
_EMPTY = {"late": 0, "activities": 0, "windows": 0}
#: A fixed namespace, so that anyone can recompute an event id from its inputs.
_NAMESPACE = "5b0f2c7e-3a4d-4c8e-9f61-0d2a7b9e4c13"
_SALT_HEX = 32


def _whole_seconds(interval: float) -> int:
    """Windows are named by whole seconds, so the interval is too (at least one second)."""
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not math.isfinite(interval):
        raise ValueError(f"interval must be a number of seconds, not {interval!r}")
    if interval < 1:
        raise ValueError(f"interval must be at least 1 second, not {interval!r}")
    return int(interval)


def window_start(now: float, interval: float) -> int:
    """The start (UNIX seconds) of the window holding ``now``: ``floor(now / interval) * interval``."""
    seconds = _whole_seconds(interval)
    return int(now // seconds) * seconds


def default_grace(interval: float) -> float:
    """``min(30 s, interval / 4)``: long enough for every process's worker to merge, short
    enough that short intervals (tests, demos) still report promptly."""
    return min(DEFAULT_GRACE, _whole_seconds(interval) / 4)


# -- the host's side ----------------------------------------------------------------------------
class Counter:
    """Host-thread side: in-memory partial counts per ``(window_start, activity)``.

    ``add`` takes a short lock (a dict update, no I/O) so that host threads and the worker's
    ``drain`` never lose an increment, but never waits for it: when it is held — by another
    thread, or by this very thread that a signal handler interrupted — the count goes to a
    ``deque`` (an atomic append) that ``drain`` folds in. Replace the Counter after ``fork()``:
    the child must not report the parent's counts, and the lock may have been held by a thread
    that is gone.
    """

    def __init__(self, interval: float, max_activities: int = 100) -> None:
        self.interval = _whole_seconds(interval)
        self.max_activities = max_activities
        self._lock = threading.Lock()
        self._counts: dict[tuple[int, str], int] = {}
        self._per_window: dict[int, int] = {}  # window start -> distinct activities, for the cap
        self._pending: deque[tuple[tuple[int, str], int]] = deque()  # counts made while the lock was held
        #: calls whose count a cap refused after the fact (they were pending), for the worker to count
        self.capped = 0

    def add(self, activity: str, n: int, now: float) -> bool:
        """Count ``n`` uses of ``activity`` at time ``now``; False when not counted.

        Not counted: the window already has ``max_activities`` other activities, or 48 windows
        are pending, or the input is unusable (``activity`` not a ``str`` of 1..128 characters,
        ``n`` not an ``int`` in 1..2**53-1 (``bool`` and ``float`` included), ``now`` not a finite
        number). The caller cleans ``activity`` first (``payload.clean_activity``: one line,
        trimmed) and validates ``n``, so that False means a cap; this never raises.
        """
        try:
            if (type(activity) is not str or type(n) is not int or not 0 < n <= MAX_COUNT
                    or not 0 < len(activity) <= MAX_ACTIVITY):
                return False
            return self.add_clean(activity, n, now)
        except Exception:  # a NaN, infinite or non-numeric ``now``; a MemoryError
            return False

    def add_clean(self, activity: str, n: int, now: float) -> bool:
        """:meth:`add` for arguments already checked (the host's hot path)."""
        interval = self.interval
        key = (int(now // interval) * interval, activity)
        lock = self._lock
        if not lock.acquire(False):  # acquire/release rather than ``with``: half the cost
            self._pending.append((key, n))
            return True
        try:
            self._counts[key] += n  # a sum beyond MAX_COUNT is clamped when merged
        except KeyError:
            return self._add_new(key, n)
        finally:
            lock.release()
        return True

    def _add_new(self, key: tuple[int, str], n: int) -> bool:
        """A new (window, activity) pair, within the caps; called with the lock held."""
        start = key[0]
        seen = self._per_window.get(start, 0)
        if seen >= self.max_activities or (not seen and len(self._per_window) >= MAX_PENDING_WINDOWS):
            return False
        self._per_window[start] = seen + 1
        self._counts[key] = n
        return True

    def drain(self) -> dict[tuple[int, str], int]:
        """Everything counted so far, ``{(window_start, activity): count}``, leaving the Counter empty."""
        with self._lock:
            pending = self._pending
            while pending:
                key, n = pending.popleft()
                if key in self._counts:
                    self._counts[key] += n
                elif not self._add_new(key, n):
                    self.capped += 1
            taken, self._counts, self._per_window = self._counts, {}, {}
        return taken

    def restore(self, partial: dict[tuple[int, str], int]) -> None:
        """Give back a drained ``partial`` the store could not take (lock timeout, disk error).

        The caps are not applied again: these counts were accepted once and must not be lost.
        """
        with self._lock:
            for key, n in partial.items():
                if key not in self._counts:
                    self._per_window[key[0]] = self._per_window.get(key[0], 0) + 1
                self._counts[key] = self._counts.get(key, 0) + n

    def __len__(self) -> int:
        return len(self._counts) + len(self._pending)

    def take_capped(self) -> int:
        """Calls refused by a cap once their pending count was folded in (worker side)."""
        with self._lock:
            capped, self.capped = self.capped, 0
        return capped


# -- the shared store -----------------------------------------------------------------------------
class AggregateStore:
    """Worker side: the file-locked store shared by all processes of the product.

    :param directory: the store's own directory (``<product dir>/aggregate-v1``).
    :param grace: seconds after a window's end before it is emitted; default :func:`default_grace`.
    :param max_windows: open windows kept (overflow is dropped as ``windows``); also how many
        intervals an emitted window is remembered, beyond which counts for it are ``late``.
    :param max_activities: distinct activities per window (overflow dropped as ``activities``).
    :param lock_timeout: default wait for the lock; every locked method takes ``timeout=`` too.
    :param fsync: every merge and emission survives a power loss once it returns (``fsync=True``).
    """

    def __init__(self, directory: str, interval: float, grace: float | None = None, max_windows: int = 48,
                 max_activities: int = 100, lock_timeout: float = LOCK_TIMEOUT, fsync: bool = False) -> None:
        self.directory = directory
        self.fsync = fsync
        self.interval = _whole_seconds(interval)
        self.grace = default_grace(self.interval) if grace is None else max(float(grace), 0.0)
        self.max_windows = max(int(max_windows), 1)
        self.max_activities = max(int(max_activities), 1)
        self.lock_timeout = lock_timeout
        self.salt: str | None = None
        self._nonce = os.urandom(4).hex()
        self._housekeeping = {"corrupt": 0, "windows": 0}

    # -- setting up ----------------------------------------------------------------------------
    def open(self) -> AggregateStore:
        """Create the directory (0700). :raises OSError: when it cannot be created or is not ours."""
        from ._fs import ensure_private_dir

        ensure_private_dir(self.directory)
        self.salt = _read_salt(self._path("salt"))  # created under the lock by take_due if missing
        return self

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _name(self, start: int, interval: int | None = None, kind: str = "json") -> str:
        return f"w-{interval or self.interval}-{start}.{kind}"

    def _locked(self, timeout: float | None) -> FileLock:
        """The store's lock, acquired within ``timeout``; raises ``_lock.Busy`` (an OSError)."""
        from ._lock import FileLock

        wait = self.lock_timeout if timeout is None else max(timeout, 0.0)
        return FileLock(self._path("lock")).acquire(wait, poll=min(0.01, wait or 0.01))

    @property
    def _owner(self) -> str:
        # the pid is read each time: a forked child is another owner than its parent
        return f"{os.getpid()}.{self._nonce}"

    def _horizon(self, interval: int) -> float:
        """How long after its end a window is remembered (and may still take counts)."""
        return self.max_windows * interval

    # -- merging partial counts ----------------------------------------------------------------
    def merge(self, partial: dict[tuple[int, str], int], now: float, timeout: float | None = None) -> dict[str, int]:
        """Add ``partial`` (from :meth:`Counter.drain`) to the shared windows.

        :return: counts dropped by reason: ``late`` (window already emitted, or older than
            ``max_windows`` intervals), ``activities`` and ``windows`` (caps; ``windows`` also
            takes windows more than a day in the future, i.e. a clock far ahead).
        Each window's counts leave ``partial`` once that window is settled (merged or dropped), so
        after an error ``partial`` holds exactly what was not: give that back with
        :meth:`Counter.restore`, and no window is counted twice.

        :raises _lock.Busy: the lock is busy (``partial`` is untouched).
        :raises OSError: the directory is unusable.
        """
        dropped = dict(_EMPTY)
        by_window = _group(partial)
        if not by_window:
            partial.clear()  # nothing in it could ever be merged
            return dropped
        with self._locked(timeout):
            listing = self._scan(sweep=True)
            self._sweep(listing, now)
            open_windows = sum(1 for (iv, _), kinds in listing.items()
                               if iv == self.interval and kinds == {"json"})
            for start, counts in sorted(by_window.items()):
                open_windows += self._settle(start, counts, listing, open_windows, now, dropped)
                for activity in counts:
                    partial.pop((start, activity), None)
        partial.clear()  # what is left was malformed
        return dropped

    def _settle(self, start: int, counts: dict[str, int], listing: dict[tuple[int, int], set[str]], open_windows: int,
                now: float, dropped: dict[str, int]) -> bool:
        """Merge one window's counts, or drop them by the rules; True when a new window was opened."""
        reason = self._refusal(start, listing.get((self.interval, start), set()), now)
        if reason:
            dropped[reason] += sum(counts.values())
            return False
        is_new = (self.interval, start) not in listing
        if is_new and open_windows >= self.max_windows:
            dropped["windows"] += sum(counts.values())
            return False
        return self._merge_window(start, counts, dropped) and is_new

    def _refusal(self, start: int, kinds: set[str], now: float) -> str | None:
        """Why counts for window ``start`` cannot be merged, by its marker files and age."""
        end = start + self.interval
        if "done" in kinds or end + self._horizon(self.interval) <= now:
            return "late"
        if end > now + MAX_FUTURE_S:
            return "windows"
        return None

    def _merge_window(self, start: int, counts: dict[str, int], dropped: dict[str, int]) -> bool:
        """Add ``counts`` to one open window file; False when nothing could be added."""
        path = self._path(self._name(start))
        state = self._read(path) or {"counts": {}, "sealed": None}
        if state["sealed"]:  # taken for emission: its counts are frozen
            dropped["late"] += sum(counts.values())
            return False
        totals = state["counts"]
        added = False
        for activity, n in counts.items():
            if activity not in totals and len(totals) >= self.max_activities:
                dropped["activities"] += n
                continue
            totals[activity] = min(totals.get(activity, 0) + n, MAX_COUNT)
            added = True
        if added:
            _write_json(path, state, self.fsync)
        return added

    # -- emitting --------------------------------------------------------------------------------
    def take_due(self, now: float, timeout: float | None = None) -> list[tuple[int, str, int]]:
        """``[(window_start, activity, count)]`` of closed windows (``end + grace <= now``) not yet emitted.

        The windows are sealed for this process: later counts for them are late, and other
        processes leave them alone for ``SEAL_LEASE`` seconds. Until :meth:`mark_emitted`, this
        process gets them again on every call (the queue may have failed), and another process
        gets them once the lease ran out (this one crashed): the same counts, the same ids.
        """
        due: list[tuple[int, str, int]] = []
        with self._locked(timeout):
            self.salt = _read_salt(self._path("salt")) or self._new_salt()
            listing = self._scan(sweep=True)
            self._sweep(listing, now)
            for (interval, start), kinds in sorted(listing.items()):
                if interval == self.interval and kinds == {"json"} and start + interval + self.grace <= now:
                    due += self._seal(start, now)
        return due

    def _seal(self, start: int, now: float) -> list[tuple[int, str, int]]:
        path = self._path(self._name(start))
        state = self._read(path)
        if state is None:
            return []
        if not state["counts"]:  # nothing to report (never a zero bucket): done at once
            _touch(self._path(self._name(start, kind="done")))
            _unlink(path)
            return []
        sealed = state["sealed"]
        if sealed and sealed["by"] != self._owner and abs(now - sealed["at"]) < SEAL_LEASE:
            return []  # another process is emitting it right now
        if not sealed or sealed["by"] != self._owner:
            state["sealed"] = {"by": self._owner, "at": now}
            _write_json(path, state, self.fsync)
        return [(start, activity, n) for activity, n in sorted(state["counts"].items())]

    def mark_emitted(self, window_starts: list[int], now: float, timeout: float | None = None) -> None:
        """Record that the windows' records are queued: their counts are final, later ones late.

        ``now`` is unused (housekeeping happens in ``merge`` and ``take_due``); it keeps the
        signature of the other locked calls.
        """
        with self._locked(timeout):
            for start in window_starts:
                _touch(self._path(self._name(start, kind="done")))
                _unlink(self._path(self._name(start)))

    def _new_salt(self) -> str:
        """A new random salt; called with the lock held, so no two processes make one at once."""
        from ._fs import atomic_write

        salt = os.urandom(_SALT_HEX // 2).hex()
        atomic_write(self._path("salt"), salt.encode())
        return salt

    def pending(self) -> dict[tuple[int, str], int]:
        """``{(window_start, activity): count}`` not emitted yet, read without the lock (status, preview)."""
        result: dict[tuple[int, str], int] = {}
        for (interval, start), kinds in sorted(self._scan().items()):
            if interval == self.interval and kinds == {"json"}:
                state = self._read(self._path(self._name(start)), count_corrupt=False) or {"counts": {}}
                result.update(((start, activity), n) for activity, n in state["counts"].items())
        return result

    def drain_dropped(self) -> dict[str, int]:
        """Housekeeping losses since the last call: ``corrupt`` (files ignored and deleted) and
        ``windows`` (counts of other-interval windows nobody emitted within their horizon)."""
        taken, self._housekeeping = self._housekeeping, {"corrupt": 0, "windows": 0}
        return taken

    # -- reading the directory -------------------------------------------------------------------
    def _scan(self, sweep: bool = False) -> dict[tuple[int, int], set[str]]:
        """``{(interval, start): {"json", "done"}}`` from the names in the directory.

        With ``sweep`` (only while holding the lock: every write happens under it, so a tmp
        file seen then was left by a process killed mid-write) tmp files are deleted.
        :raises OSError: with ``sweep``, when the directory cannot be listed.
        """
        listing: dict[tuple[int, int], set[str]] = {}
        try:
            names = os.listdir(self.directory)
        except OSError:
            if sweep:
                raise
            return listing
        for name in names:
            parsed = _parse_name(name)
            if parsed:
                listing.setdefault(parsed[:2], set()).add(parsed[2])
            elif sweep and name.endswith(".tmp"):
                _unlink(self._path(name))
        return listing

    def _sweep(self, listing: dict[tuple[int, int], set[str]], now: float) -> None:
        """Delete the window files of emitted windows (a crash between writing the marker and
        deleting them), markers past their horizon, and other intervals' windows past theirs.
        Called with the lock held; updates ``listing``."""
        for (interval, start), kinds in list(listing.items()):
            expired = start + interval + self._horizon(interval) <= now
            if "json" in kinds and ("done" in kinds or (expired and interval != self.interval)):
                lost = self._read(self._path(self._name(start, interval)), count_corrupt=False)
                if lost and "done" not in kinds and not lost["sealed"]:
                    self._housekeeping["windows"] += sum(lost["counts"].values())
                _unlink(self._path(self._name(start, interval)))
                kinds.discard("json")
            if "done" in kinds and expired:
                _unlink(self._path(self._name(start, interval, "done")))
                kinds.discard("done")
            if not kinds:
                del listing[(interval, start)]

    def _read(self, path: str, count_corrupt: bool = True) -> dict[str, Any] | None:
        """A window file's state, or None when missing; a corrupt one is counted and deleted."""
        import json

        try:
            with open(path, "rb") as f:
                state = _valid_state(json.loads(f.read(1 << 20)))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            state = None
        if state is None and count_corrupt:
            self._housekeeping["corrupt"] += 1
            _unlink(path)
        return state


def _parse_name(name: str) -> tuple[int, int, str] | None:
    """``(interval, start, kind)`` from ``w-<interval>-<start>.<kind>``, or None."""
    stem, _, kind = name.partition(".")
    parts = stem.split("-")
    if kind not in ("json", "done") or len(parts) != 3 or parts[0] != "w":
        return None
    if not (parts[1].isdigit() and parts[2].isdigit()) or int(parts[1]) < 1:
        return None
    return int(parts[1]), int(parts[2]), kind


def _valid_state(value: object) -> dict[str, Any] | None:
    """The window state if ``value`` is one (counts of positive ints, a well-formed seal)."""
    if not isinstance(value, dict) or not isinstance(value.get("counts"), dict):
        return None
    counts = value["counts"]
    if not all(key and type(n) is int and 0 < n <= MAX_COUNT for key, n in counts.items()):
        return None
    sealed = value.get("sealed")
    if sealed is not None and not (isinstance(sealed, dict) and isinstance(sealed.get("by"), str)
                                   and isinstance(sealed.get("at"), (int, float))):
        return None
    return {"counts": counts, "sealed": sealed}


def _group(partial: dict[tuple[int, str], int]) -> dict[int, dict[str, int]]:
    """``{window_start: {activity: count}}`` from a drained partial, skipping malformed items."""
    by_window: dict[int, dict[str, int]] = {}
    for key, n in partial.items():
        if not (isinstance(key, tuple) and len(key) == 2 and type(key[0]) is int and type(key[1]) is str
                and key[1] and type(n) is int and n > 0):
            continue
        counts = by_window.setdefault(key[0], {})
        counts[key[1]] = counts.get(key[1], 0) + n
    return by_window


def _write_json(path: str, state: dict[str, Any], fsync: bool) -> None:
    import json

    from ._fs import atomic_write

    atomic_write(path, json.dumps(state, sort_keys=True, separators=(",", ":")).encode(), fsync)


def _unlink(path: str) -> None:
    from ._fs import unlink_quietly

    unlink_quietly(path)


def _touch(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def _read_salt(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            salt = f.read(_SALT_HEX + 1).strip()
    except (OSError, ValueError):
        return None
    return salt if len(salt) == _SALT_HEX and all(c in "0123456789abcdef" for c in salt) else None


# -- the record ---------------------------------------------------------------------------------
def aggregate_event_id(installation_id: str | None, activity: str, window_start: int, interval: float,
                       salt: str | None = None) -> str:
    """A UUID (version 5) computed from the installation, activity, window and interval.

    Retries and re-emissions after a crash therefore carry the same id. Without an
    installation id, ``salt`` (``AggregateStore.salt``, random per machine and product) keeps
    two machines from producing the same id for the same window; without either, a random
    per-process value does (stable within the process only).
    """
    import json

    machine = installation_id or (f"salt:{salt}" if salt else f"process:{_process_salt()}")
    name = json.dumps([machine, activity, int(window_start), _whole_seconds(interval)])
    return uuid5(_NAMESPACE, name)


def uuid5(namespace: str, name: str) -> str:
    """``str(uuid.uuid5(UUID(namespace), name))`` without importing ``uuid`` (which imports
    ``platform``): milliseconds a short-lived host would wait for."""
    from ._digest import sha1

    raw = bytearray(sha1(bytes.fromhex(namespace.replace("-", "")) + name.encode()).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_PROCESS_SALTS: dict[int, str] = {}  # by pid: a forked child must not share its parent's


def _process_salt() -> str:
    return _PROCESS_SALTS.setdefault(os.getpid(), os.urandom(16).hex())


def aggregate_payload(static: dict[str, Any], activity: str, window_start: int, interval: float, count: int,
                      installation_id: str | None, domain: str | None, ip_addr: str | None,
                      meta: dict[str, Any] | None = None, salt: str | None = None) -> dict[str, Any]:
    """The ``payload`` object for ``/api/product/aggregateusage`` for one activity and window.

    :param static: :func:`callhome.payload.static_fields` (source, environment, product_id, user_agent).
    :param meta: extra flat fields (callhome/product version...); window fields and the
        installation id are added and take precedence.
    :raises ValueError: ``count`` is not an int ≥ 1 (the store never yields such a count).
    """
    if type(count) is not int or count < 1:
        raise ValueError(f"count must be an int of at least 1, not {count!r}")
    seconds = _whole_seconds(interval)
    start = int(window_start)
    payload = {"mode": "DOMAIN", "source": static.get("source") or "TELEMETRY", "activity_type": activity,
               "count": min(count, MAX_COUNT), "event_at": start + seconds,
               "event_id": aggregate_event_id(installation_id, activity, start, seconds, salt)}
    for key in ("product_id", "environment", "user_agent"):
        if static.get(key):
            payload[key] = static[key]
    if domain:
        payload["domain"] = domain
    if ip_addr:
        payload["ip_addr"] = ip_addr
    extra = clean_meta(meta, [])
    extra.update(window_start=start, window_end=start + seconds, interval=seconds)
    if installation_id:
        extra["installation_id"] = installation_id
    payload["meta"] = extra
    return payload
