"""The durable queue shared by every process of a product: a directory of immutable batch files.

Layout (see ``docs/architecture.md``)::

    queue-v1/tmp/       in-progress writes, published by rename; <node>.<pid>.<nonce>.<seq>.open is
                        a process's open batch, appended to and published when full or old
    queue-v1/ready/     <not-before>-<created>-<attempt>-<done>-<count>-<bytes>-<batch>.chq
    queue-v1/inflight/  <ready name>.<node>.<pid>.<nonce>.<mode>.<lease>.clm   (claimed by a sender)
    queue-v1/corrupt/   quarantined files that hold no readable record, and whatever else lay in
                        ready/ or inflight/ (a directory, a FIFO, a link, a name no batch has)
    queue-v1/dead/      records the server rejected, kept for inspection
    queue-v1/locks/     flush.lock (one sender per host at a time) and state.lock
    queue-v1/state/     backoff.json, auth.json, call_home.json (advisory, atomically replaced)

Every state change is one ``rename`` or ``unlink``, so a crash at any point leaves each batch in
exactly one place. The names are the index: depth and age come from a directory listing. Locks
are hints: claims are exclusive because only one ``rename`` of a file can succeed, so a broken
lock costs duplicates (same ``event_id``), never loss.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import stat
import time
import zlib

from ._fs import atomic_write, ensure_private_dir, fsync_dir, pid_alive, read_json, unlink_quietly, write_json

__all__ = ["BLOCK", "Claim", "DiskQueue", "Entry", "entry_name", "frame", "frame_json", "parse_entry", "space",
           "unframe"]

_SUBDIRS = ("tmp", "ready", "inflight", "corrupt", "dead", "locks", "state")
MAX_BATCH = 64
#: An open batch grows to this many records before it is published: a file created per 256
#: records rather than per 64 (each creation costs ~100 µs of CPU on ext4 here).
MAX_OPEN = 256
#: A claim that lies further ahead than this was made by a clock that jumped; it is reclaimable.
MAX_LEASE = 600.0
MAX_KEPT_BAD = 50
#: An open batch untouched for this long belongs to a process that is gone (or stuck, or on
#: another machine sharing the directory): it is published by whoever sees it.
STALE_OPEN = 3600.0
_OPEN = ".open"
#: The longest line read as a record: a record is at most ``max_event_bytes`` (32 KiB by default),
#: and one that meets Reo's rules far shorter. A longer line is skipped, never held whole.
MAX_LINE = 1024 * 1024
#: What is read of one batch file at most, so that a file grown by mistake, or put in a batch's
#: place, can neither exhaust memory nor hold the sender (the largest batch written is
#: ``MAX_OPEN`` records of 32 KiB: 8 MiB). Only ``MAX_LINE`` of it is held at a time.
_MAX_FILE = 64 * 1024 * 1024
#: The deepest a record may nest. The agent writes 3 (record, payload, a flat meta); one nested
#: hundreds deep parses, but re-encoding it to send it exhausts the sender's stack.
MAX_DEPTH = 32
#: Reads past an overlong line this much at a time.
_CHUNK = 64 * 1024
#: How what lies under a batch's name is opened: a FIFO must not block the reader, a link is not
#: followed (where the platform can refuse to follow one).
_SAFE_OPEN = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
              | getattr(os, "O_BINARY", 0))
#: A batch's name as :func:`entry_name` writes it. Fixed widths: a wider number would sort out of
#: order (the listing must be by not-before time) or claim more than a batch holds.
_ENTRY = re.compile(r"([0-9]{13})-([0-9]{13})-([0-9]{2})-([0-9]{3})-([0-9]{3})-([0-9]{8})-"
                    r"([0-9a-f]{16})\.chq")
#: How the names of batches and claims end. Other names (an NFS client's ``.nfs...`` for a file
#: deleted while open, say) are not the queue's: it leaves them alone.
_OURS = (".chq", ".clm")


TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: the worker of a short run waits for it
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, BinaryIO, NamedTuple

    class Entry(NamedTuple):
        name: str
        not_before: float
        created: float
        attempt: int
        done: int
        count: int  # type: ignore[assignment]  # shadows tuple.count, as the namedtuple below does
        size: int
        batch: str

    class Claim(NamedTuple):
        entry: Entry
        name: str
        mode: str
else:
    from collections import namedtuple

    #: A ready batch, as its file name describes it.
    Entry = namedtuple("Entry", "name not_before created attempt done count size batch")
    #: A batch this process renamed into ``inflight/``; only it may ack or release it.
    Claim = namedtuple("Claim", "entry name mode")


_ENCODER = json.JSONEncoder(separators=(",", ":"))  # built once: json.dumps(..., separators) builds one per call


def frame(record: dict[str, Any]) -> bytes:
    """One record as a line: CRC32 of the JSON, a space, the JSON (``ensure_ascii`` keeps one line)."""
    return frame_json(_ENCODER.encode(record).encode())


def frame_json(data: bytes) -> bytes:
    """The line of a record already encoded as one line of ASCII JSON."""
    return b"%08x %s\n" % (zlib.crc32(data), data)


def unframe(line: bytes) -> dict[str, Any] | None:
    """The record in ``line``, or None when it is torn, corrupted or not a record."""
    if len(line) < 10 or line[8:9] != b" ":
        return None
    data = line[9:].rstrip(b"\n")
    try:
        if int(line[:8], 16) != zlib.crc32(data):
            return None
        record = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than the stack allows
        return None
    if not isinstance(record, dict) or not isinstance(record.get("payload"), dict):
        return None
    # a container opens with "[" or "{": with no more of them than the limit (those in strings
    # count too) the record cannot nest deeper, and it need not be walked
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH and _deeper_than(record, MAX_DEPTH):
        return None
    return record


def _deeper_than(value: object, limit: int) -> bool:
    """Whether ``value`` nests containers more than ``limit`` deep (without recursing itself)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def _ms(seconds: float) -> int:
    return int(max(seconds, 0) * 1000)


def entry_name(nb: float, cr: float, att: int, done: int, n: int, size: int, batch: str) -> str:
    """A batch's file name; attempts, count and size are capped at what their fields hold."""
    return (f"{_ms(nb):013d}-{_ms(cr):013d}-{min(att, 99):02d}-{done:03d}-{min(n, 999):03d}-"
            f"{min(size, 99_999_999):08d}-{batch}.chq")


def parse_entry(name: str) -> Entry | None:
    """The batch ``name`` describes; None for a name :func:`entry_name` does not write."""
    match = _ENTRY.fullmatch(name)
    if match is None:
        return None
    nb, cr, att, done, n, size = (int(p) for p in match.groups()[:6])
    if n < 1 or done >= n:
        return None
    return Entry(name, nb / 1000, cr / 1000, att, done, n, size, match.group(7))


def _stray(name: str) -> Entry:
    """What lies in ``ready/`` under a name that ends like a batch's or a claim's but is neither
    (a count no batch has, say), as a batch of one record that cannot be read (its empty
    ``batch`` says so). The sender takes it like any batch: its claim moves it to
    ``corrupt/`` and reading it gives no record, so the sender counts it as it counts every batch
    with no readable record. Only the claim that moved it counts it."""
    return Entry(name, 0.0, 0.0, 0, 0, 1, 0, "")


def _node_id() -> str:
    """Which kernel this is: a flock proves a holder dead only on the same kernel."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            seed = f.read().strip()
    except OSError:
        seed = repr(os.uname() if hasattr(os, "uname") else os.environ.get("COMPUTERNAME")).encode()
    return "%08x" % zlib.crc32(seed)


class DiskQueue:
    """The queue of one product under ``root`` (``<product dir>/queue-v1``)."""

    def __init__(self, root: str, fsync: bool = False) -> None:
        self.dir = os.path.join(root, "queue-v1")
        self.fsync = fsync
        self.node = _node_id()
        self.pid = os.getpid()
        self.nonce = os.urandom(3).hex()
        self._seq = 0
        #: this process's open batch: [path, descriptor, records, bytes, created]
        self._open: list[Any] | None = None

    def open(self) -> DiskQueue:
        """Create the directories. :raises OSError: when the disk cannot hold a queue here."""
        ensure_private_dir(os.path.dirname(self.dir))
        ensure_private_dir(self.dir)
        for sub in _SUBDIRS:
            ensure_private_dir(self._path(sub))
        return self

    def _path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    # -- writing ---------------------------------------------------------------------------
    def put(self, lines: list[bytes], now: float) -> int:
        """Publish framed records as batch files of at most ``MAX_BATCH``; returns bytes written.

        :raises OSError: ENOSPC, EROFS, ... (nothing is left behind in ``tmp/``).
        """
        written = 0
        for start in range(0, len(lines), MAX_BATCH):
            chunk = lines[start:start + MAX_BATCH]
            data = b"".join(chunk)
            self._seq += 1
            name = entry_name(now, now, 0, 0, len(chunk), len(data), os.urandom(8).hex())
            tmp = self._path("tmp", f"{self.node}.{self.pid}.{self.nonce}.{self._seq}.tmp")
            self._write_new(tmp, data)
            try:
                os.rename(tmp, self._path("ready", name))
            except OSError:
                unlink_quietly(tmp)
                raise
            written += len(data)
        return written

    def append(self, lines: list[bytes], now: float) -> int:
        """Add framed records to this process's open batch in ``tmp/``; returns bytes written.

        One ``write`` per call, and a file created once per batch rather than once per call
        (creating a file costs ~100 µs of CPU on ext4 here, an append ~4 µs). As safe as
        :meth:`put` against a crash of the process: a dead process's open batch is published by
        :meth:`adopt_orphans`. A full batch is published at once; :meth:`publish` does the rest.

        :raises OSError: ENOSPC, EROFS, ... (records already appended stay in the open batch).
        """
        written = 0
        while lines:
            if self._open is None:
                self._open_batch(now)
            batch: list[Any] = self._open  # type: ignore[assignment]  # _open_batch set it
            chunk, lines = lines[:MAX_OPEN - batch[2]], lines[MAX_OPEN - batch[2]:]
            data = b"".join(chunk)
            _write_all(batch[1], data)
            if self.fsync:  # on the device before the worker counts them persisted
                _fdatasync(batch[1])
            batch[2] += len(chunk)
            batch[3] += len(data)
            written += len(data)
            if batch[2] >= MAX_OPEN:
                self.publish()
        return written

    @property
    def open_records(self) -> int:
        """Records in this process's open batch, not yet published."""
        return self._open[2] if self._open else 0

    def _open_batch(self, now: float) -> None:
        self._seq += 1
        path = self._path("tmp", f"{self.node}.{self.pid}.{self.nonce}.{self._seq}{_OPEN}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        self._open = [path, fd, 0, 0, now]
        if self.fsync:  # the file's name too: a power loss must not take the records with it
            fsync_dir(self._path("tmp"))

    def discard_open(self) -> int:
        """Delete this process's open batch unpublished; returns how many records it held."""
        batch, self._open = self._open, None
        if batch is None:
            return 0
        os.close(batch[1])
        unlink_quietly(batch[0])
        return int(batch[2])

    def publish(self) -> None:
        """Publish the open batch into ``ready/`` (one ``rename``); nothing when none is open.

        :raises OSError: when the rename fails (the batch stays in ``tmp/``, to be adopted).
        """
        batch, self._open = self._open, None
        if batch is None:
            return
        path, fd, count, size, created = batch
        try:
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if count == 0:
            unlink_quietly(path)
            return
        self._publish_file(path, created, count, size)

    def _publish_file(self, path: str, created: float, count: int, size: int) -> None:
        name = entry_name(created, created, 0, 0, count, size, os.urandom(8).hex())
        os.rename(path, self._path("ready", name))
        if self.fsync:
            fsync_dir(self._path("ready"))

    def adopt_orphans(self, now: float) -> int:
        """Publish the open batches of processes that died (or left them untouched for
        ``STALE_OPEN``); returns how many. A rename: of several adopters exactly one wins.

        What is not a regular file is published all the same, as one record that cannot be read:
        the sender quarantines it and counts it, as it does every batch with no readable record.
        """
        adopted = 0
        for name in self._names("tmp"):
            owner = _open_owner(name)
            if owner is None or owner == (self.node, self.pid, self.nonce):
                continue
            path = self._path("tmp", name)
            try:
                info = os.lstat(path)
                dead = owner[0] == self.node and not pid_alive(owner[1])
                if not (dead or now - info.st_mtime > STALE_OPEN):
                    continue
                count = _count_lines(path)
                if count == 0:
                    unlink_quietly(path)
                    continue
                size = info.st_size if stat.S_ISREG(info.st_mode) else 0
                self._publish_file(path, info.st_mtime, count, size)
                adopted += 1
            except OSError:
                continue  # adopted by another process first, or unreadable now: next time
        return adopted

    def _write_new(self, path: str, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, data)
            if self.fsync:
                os.fsync(fd)
        except OSError:
            os.close(fd)
            unlink_quietly(path)
            raise
        os.close(fd)

    # -- reading the index -----------------------------------------------------------------
    def _names(self, sub: str) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self._path(sub)))
        except OSError:
            return []

    def entries(self) -> Iterator[Entry]:
        """Ready batches, eligible first (names sort by not-before time), then FIFO; before them,
        the strays (see :func:`_stray`). Names that do not end like the queue's are left alone."""
        names = self._names("ready")
        parsed = [parse_entry(name) for name in names]
        yield from (_stray(name) for name, entry in zip(names, parsed)
                    if entry is None and name.endswith(_OURS))
        yield from (entry for entry in parsed if entry is not None)

    def depth(self) -> tuple[int, int]:
        """(records, bytes on disk) waiting in ``ready/`` and ``inflight/``, from names alone, and
        in this process's open batch. The bytes are the space the files take (``space``), which
        is what a cap on the disk must count: a file of 300 bytes takes a block."""
        events, size = (self._open[2], space(self._open[3])) if self._open else (0, 0)
        # A batch can move while the directories are listed: claimed (ready → inflight) or
        # released and recovered (inflight → ready). Listing ready/ again after inflight/ sees
        # it either way; each batch counts once (its id stays in its name).
        batches = {}
        for sub in ("ready", "inflight", "ready"):
            for name in self._names(sub):
                entry = _entry_of(sub, name)
                if entry is not None:
                    batches[entry.batch] = entry
        for entry in batches.values():
            events += entry.count - entry.done
            size += space(entry.size)
        return events, size

    def peek(self, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` waiting records in sending order (``ready/`` by name, then ``inflight/``),
        left where they are: what ``callhome preview`` shows. A batch claimed or deleted meanwhile
        is skipped."""
        return list(itertools.islice(self._waiting_records(), max(limit, 0)))

    def _waiting_records(self) -> Iterator[dict[str, Any]]:
        for sub in ("ready", "inflight"):
            for name in self._names(sub):
                entry = _entry_of(sub, name)
                if entry is None:
                    continue
                try:
                    lines = _read_lines(self._path(sub, name), entry.count)
                except OSError:
                    continue
                yield from (r for r in map(unframe, lines[entry.done:]) if r is not None)

    # -- claiming and finishing batches ----------------------------------------------------
    def claim(self, entry: Entry, mode: str, lease_until: float) -> Claim | None:
        """Take ``entry`` for sending; None when another process took it first. A stray is
        moved to ``corrupt/`` instead: its claim reads as no record."""
        if not entry.batch:
            return Claim(entry, entry.name, mode) if self.quarantine("ready", entry.name, "badname") else None
        name = self.claim_name(entry, mode, lease_until)
        try:
            os.rename(self._path("ready", entry.name), self._path("inflight", name))
        except FileNotFoundError:
            return None
        return Claim(entry, name, mode)

    def read(self, claim: Claim) -> list[dict[str, Any] | None]:
        """The records of a claimed batch (None for each unreadable line), no more than its name
        counts; none of a stray's claim, or of what is not a regular file.

        :raises FileNotFoundError: when the claim was taken back meanwhile (its lease expired).
        """
        if not claim.entry.batch:
            return []
        return [unframe(line) for line in _read_lines(self._path("inflight", claim.name), claim.entry.count)]

    def renew(self, claim: Claim, done: int, lease_until: float) -> Claim | None:
        """Record progress (``done`` records resolved) and extend the lease; None if the claim was lost."""
        e = claim.entry
        entry = parse_entry(entry_name(e.not_before, e.created, e.attempt, done, e.count, e.size, e.batch))
        if entry is None:
            return None
        renewed = self.claim_name(entry, claim.mode, lease_until)
        try:
            os.rename(self._path("inflight", claim.name), self._path("inflight", renewed))
        except FileNotFoundError:
            return None
        return Claim(entry, renewed, claim.mode)

    def claim_name(self, entry: Entry, mode: str, lease_until: float) -> str:
        return f"{entry.name}.{self.node}.{self.pid}.{self.nonce}.{mode}.{_ms(lease_until):013d}.clm"

    def ack(self, claim: Claim) -> None:
        """The whole batch is resolved."""
        unlink_quietly(self._path("inflight", claim.name))

    def release(self, claim: Claim, done: int, attempt: int, not_before: float) -> None:
        """Give a batch back to ``ready/`` to be tried again from record ``done`` after ``not_before``."""
        self._release_name(claim.name, claim.entry, done, attempt, not_before)

    def _release_name(self, inflight_name: str, e: Entry, done: int, attempt: int, not_before: float) -> None:
        name = entry_name(not_before, e.created, attempt, done, e.count, e.size, e.batch)
        try:
            os.rename(self._path("inflight", inflight_name), self._path("ready", name))
        except FileNotFoundError:
            pass

    def recover(self, have_native_lock: bool, now: float) -> int:
        """Give orphaned claims back to ``ready/``; returns how many.

        A claim made under ``flush.lock`` (mode ``L``) on this kernel is orphaned as soon as we
        hold that lock natively: the kernel released it when its holder died. Any other claim
        is orphaned when its lease expires. A ``.clm`` name that is no claim's goes back to
        ``ready/`` as it is, a stray there (see :func:`_stray`), quarantined and counted by the sender.
        """
        recovered = 0
        for name in self._names("inflight"):
            parsed = _parse_claim(name)
            if parsed is None:
                if name.endswith(".clm"):
                    _rename_quietly(self._path("inflight", name), self._path("ready", name))
                continue
            entry, node, pid, nonce, mode, lease = parsed
            mine = (node, pid, nonce) == (self.node, self.pid, self.nonce)
            dead_holder = have_native_lock and mode == "L" and node == self.node
            expired = now > lease or lease > now + MAX_LEASE
            if mine or dead_holder or expired:
                self._release_name(name, entry, entry.done, entry.attempt + (0 if mine else 1), now)
                recovered += 1
        return recovered

    def purge(self) -> int:
        """Delete every waiting batch (telemetry was turned off); returns how many records."""
        removed = 0
        for sub in ("ready", "inflight"):
            for name in self._names(sub):
                entry = _entry_of(sub, name)
                if _remove(self._path(sub, name)):
                    removed += entry.count - entry.done if entry else 0
        return removed

    def wipe(self) -> int:
        """:meth:`purge`, and also delete the records kept outside the waiting batches: unpublished
        writes in ``tmp/`` and the copies in ``dead/`` and ``corrupt/`` (the user asked for them to
        go); returns how many waiting records were deleted."""
        removed = self.purge()
        for sub in ("tmp", "dead", "corrupt"):
            for name in self._names(sub):
                _remove(self._path(sub, name))
        return removed

    # -- keeping things bounded ------------------------------------------------------------
    def quarantine(self, sub: str, name: str, reason: str) -> bool:
        """Move ``sub/name`` into ``corrupt/``, or delete it where it cannot go; False when it was gone."""
        path = self._path(sub, name)
        try:
            # a stray's name may be as long as a name can be: the suffix must still fit
            os.rename(path, self._path("corrupt", f"{name[:200]}.{reason}.bad"))
        except OSError:
            if not _remove(path):
                return False
        self._trim("corrupt")
        return True

    def dead_letter(self, record: dict[str, Any], detail: str) -> None:
        """Keep a record the server rejected, with the reason, for ``callhome status``/inspection."""
        event_id = str(record.get("payload", {}).get("event_id", "unknown"))[:64]
        body = json.dumps({"record": record, "detail": detail, "at": time.time()}).encode()
        try:
            atomic_write(self._path("dead", f"{_ms(time.time()):013d}-{event_id}.json"), body)
        except OSError:
            return
        self._trim("dead")

    def _trim(self, sub: str) -> None:
        names = self._names(sub)
        for name in names[:max(len(names) - MAX_KEPT_BAD, 0)]:
            _remove(self._path(sub, name))

    def prune(self, now: float, max_events: int, max_bytes: int, max_age: float) -> dict[str, int]:
        """Drop expired batches, then the oldest until under the caps; returns {reason: records}."""
        dropped = {"expired": 0, "queue_full": 0}
        # strays are left to the sender, which quarantines and counts them
        entries = sorted((e for e in self.entries() if e.batch), key=lambda e: e.created)
        events = sum(e.count - e.done for e in entries)
        size = sum(space(e.size) for e in entries)
        for entry in entries:
            expired = now - entry.created > max_age
            if not expired and events <= max_events and size <= max_bytes:
                continue
            try:
                os.unlink(self._path("ready", entry.name))
            except OSError:
                continue
            dropped["expired" if expired else "queue_full"] += entry.count - entry.done
            events -= entry.count - entry.done
            size -= space(entry.size)
        self._sweep_tmp(now)
        return dropped

    def _sweep_tmp(self, now: float) -> None:
        """Drop writes a crash left behind, and whatever else lies there (open batches are records:
        they are adopted instead)."""
        for name in self._names("tmp"):
            if _open_owner(name) is not None:
                continue
            path = self._path("tmp", name)
            try:
                if now - os.lstat(path).st_mtime > 3600:
                    _remove(path)
            except OSError:
                pass

    # -- shared advisory state -------------------------------------------------------------
    def state(self, name: str) -> dict[str, Any]:
        return read_json(self._path("state", name + ".json"))

    def set_state(self, name: str, value: dict[str, Any] | None) -> None:
        path = self._path("state", name + ".json")
        try:
            if value is None:
                unlink_quietly(path)
            else:
                write_json(path, value)
        except OSError:
            pass

    def lock_path(self, name: str) -> str:
        return self._path("locks", name + ".lock")


def _open_file(path: str) -> BinaryIO | None:
    """A reader of ``path`` when it is a regular file we may read; None for anything else: a
    directory, a FIFO (opened without blocking), a device, a link (not followed).

    :raises FileNotFoundError: when it is gone.
    """
    try:
        fd = os.open(path, _SAFE_OPEN)
    except FileNotFoundError:
        raise
    except OSError:  # ELOOP: a link; EACCES; ENXIO: a socket
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return os.fdopen(fd, "rb")
    except OSError:
        pass
    os.close(fd)
    return None


def _read_lines(path: str, limit: int) -> list[bytes]:
    """Up to ``limit`` lines of a batch file, an empty one for each line longer than ``MAX_LINE``
    (it reads as no record); none when it is not a regular file we may read.

    :raises FileNotFoundError: when it is gone (claimed or deleted meanwhile).
    """
    lines: list[bytes] = []
    reader = _open_file(path)
    if reader is None:
        return lines
    budget = _MAX_FILE
    with reader:
        try:
            while len(lines) < limit and budget > 0:
                line = reader.readline(MAX_LINE + 1)
                if not line:
                    break
                budget -= len(line)
                if len(line) > MAX_LINE and not line.endswith(b"\n"):
                    budget -= _skip_line(reader, budget)
                    line = b""
                lines.append(line)
        except OSError:
            pass  # an I/O error: the lines read so far, the others count as missing
    return lines


def _skip_line(reader: BinaryIO, budget: int) -> int:
    """Read past the rest of an overlong line a chunk at a time; the bytes read."""
    skipped = 0
    while skipped < budget:
        chunk = reader.readline(_CHUNK)
        skipped += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            break
    return skipped


def _count_lines(path: str) -> int:
    """How many lines :func:`_read_lines` finds in an open batch (the last one with or without its
    newline); one for what is not a regular file we may read, which reads as one unreadable record."""
    reader = _open_file(path)
    if reader is None:
        return 1
    count, last = 0, b"\n"
    with reader:
        for _ in range(_MAX_FILE // _CHUNK):
            chunk = reader.read(_CHUNK)
            if not chunk:
                break
            count, last = count + chunk.count(b"\n"), chunk[-1:]
    return count + (last != b"\n")


def _remove(path: str) -> bool:
    """Delete ``path``, a directory tree planted where a file belongs included; False when it was
    not there or could not be deleted."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            import shutil  # only for a directory where a file belongs

            shutil.rmtree(path)
        else:
            os.unlink(path)
    except OSError:
        return False
    return True


def _rename_quietly(source: str, target: str) -> None:
    try:
        os.rename(source, target)
    except OSError:
        pass


#: The unit of the space a file takes on the usual file systems (ext4, APFS, NTFS): a 300-byte batch takes one.
BLOCK = 4096


def space(size: int) -> int:
    """The bytes a file of ``size`` bytes takes on disk (whole blocks, at least one)."""
    return max(-(-size // BLOCK), 1) * BLOCK


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fdatasync(fd: int) -> None:
    """The file's data on the device (``fsync`` where ``fdatasync`` does not exist: macOS, Windows)."""
    getattr(os, "fdatasync", os.fsync)(fd)


def _open_owner(name: str) -> tuple[str, int, str] | None:
    """(node, pid, nonce) of an open batch's file name, None for any other name."""
    if not name.endswith(_OPEN):
        return None
    parts = name[:-len(_OPEN)].split(".")
    if len(parts) != 4 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), parts[2]


def _entry_of(sub: str, name: str) -> Entry | None:
    """The batch a name in ``ready/`` or ``inflight/`` stands for; None for any other name (one
    that only contains a batch's would never be sent, and would keep the depth from reaching 0)."""
    if sub == "ready":
        return parse_entry(name)
    claim = _parse_claim(name)
    return claim[0] if claim else None


def _parse_claim(name: str) -> tuple[Entry, str, int, str, str, float] | None:
    if not name.endswith(".clm"):
        return None
    head, _, tail = name[:-4].partition(".chq.")
    parts = tail.split(".")
    entry = parse_entry(head + ".chq")
    if entry is None or len(parts) != 5 or not parts[1].isdigit() or not parts[4].isdigit():
        return None
    node, pid, nonce, mode, lease = parts
    return entry, node, int(pid), nonce, mode, int(lease) / 1000
