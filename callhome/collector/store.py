"""The collector's SQLite store: received records, deduplicated by ``(kind, event_id)``, and counters.

One connection guarded by a lock serves every thread: the collector's writes are tiny, and a
single connection is the only way an in-memory database (``":memory:"``) can be shared.

Writes are group-committed: :meth:`Store.add` queues its row, and one of the waiting callers (the
batch's *writer*) inserts every queued row in one transaction while the others wait for that
commit, so :meth:`~Store.add` still returns only once its record is committed. A lone caller
writes at once and waits for nobody; under concurrent requests one commit (the costly part: the
WAL write, the file locks) serves many records. Counters are kept in memory and written with a commit at
most once every :data:`COUNTERS_INTERVAL` seconds, and when read or closed: a crash can lose the
last second's counts, never a stored record.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from typing import Any

__all__ = ["COUNTERS", "KINDS", "Store"]

KINDS = ("usage", "aggregate")
#: Counters kept in the database, so a self-hosted collector's figures survive a restart.
COUNTERS = ("requests", "duplicates", "rejected", "auth_failures", "faults")

# ``id`` is the rowid without AUTOINCREMENT: rows are never deleted, so the next id is still always
# the largest plus one, and AUTOINCREMENT would write its counter (one more page) with every commit.
# Databases created with it keep it; both read the same.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id            INTEGER PRIMARY KEY,
    kind          TEXT    NOT NULL,
    event_id      TEXT    NOT NULL,
    product_id    TEXT,
    activity_type TEXT,
    event_at      INTEGER,
    count         INTEGER NOT NULL DEFAULT 1,
    received_at   REAL    NOT NULL,
    peer          TEXT,
    payload       TEXT    NOT NULL,
    UNIQUE (kind, event_id)
);
CREATE INDEX IF NOT EXISTS events_received_at ON events (received_at);
CREATE INDEX IF NOT EXISTS events_product_event_at ON events (product_id, event_at);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
_COLUMNS = ("id", "kind", "event_id", "product_id", "activity_type", "event_at", "count",
            "received_at", "peer", "payload")
#: Built once: ``json.dumps`` with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True)
#: Seconds between counter writes that ride on a record's commit. Writing them with every commit
#: would add a page to each; a crash loses at most this much counting, never a record.
COUNTERS_INTERVAL = 1.0
_Row = tuple[Any, ...]  # values as SQLite takes and returns them
_INSERT = (f"INSERT OR IGNORE INTO events ({', '.join(_COLUMNS[1:])}) "
           f"VALUES ({', '.join('?' * (len(_COLUMNS) - 1))})")


class Store:
    """Received records and counters in one SQLite database (``":memory:"`` allowed); thread-safe."""

    def __init__(self, path: str = ":memory:") -> None:
        self.path = path
        self._lock = threading.Lock()  # the connection: one statement or transaction at a time
        self._pending: dict[str, int] = {}  # counter increments not yet written
        # Its own lock, so bumping a counter never waits for a commit in progress.
        self._pending_lock = threading.Lock()
        # Guards the group commit's state: the batch still taking rows, and whether one is writing.
        self._turn = threading.Condition(threading.Lock())
        self._batch = _Batch()
        self._writing = False
        self._counters_due = 0.0  # monotonic time after which a commit also writes the counters
        self._closed = False
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a power loss may lose the last commits, never corrupt the database.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        with self._db:
            self._db.executemany("INSERT OR IGNORE INTO counters (name, value) VALUES (?, 0)",
                                 [(name,) for name in COUNTERS])
        # Reports read through a connection of their own: in WAL mode a long report then never
        # holds up ingestion (an in-memory or temporary database has only the one connection).
        self._reader = None if path in ("", ":memory:") or path.startswith("file:") else _reader(path)
        self._read_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Store({self.path!r})"

    def close(self) -> None:
        """Write pending counters and close the database; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._write_pending()
            self._db.close()
        if self._reader is not None:
            with self._read_lock:
                self._reader.close()

    def add(self, kind: str, payload: dict[str, Any], peer: str | None = None,
            received_at: float | None = None) -> bool:
        """Store one validated record; True if new, False if ``(kind, event_id)`` was already stored.

        Returns once the record is committed (with those of concurrent callers, in one transaction).
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        row = _row(kind, payload, peer, time.time() if received_at is None else received_at)
        batch, index = self._join(row)
        if batch.writer == threading.get_ident():
            self._commit(batch)
        return batch.outcome(index)

    def _join(self, row: _Row) -> tuple[_Batch, int]:
        """Queue ``row``; return once its batch is committed, or is this thread's to commit."""
        with self._turn:
            batch = self._batch
            index = len(batch.rows)
            batch.rows.append(row)
            while self._writing and not batch.done:
                self._turn.wait()
            if not batch.done:  # nobody is writing, and nobody wrote this batch: this thread does
                self._writing = True
                batch.writer = threading.get_ident()
                self._batch = _Batch()  # rows arriving from now on wait for the next commit
        return batch, index

    def _commit(self, batch: _Batch) -> None:
        """Write ``batch`` in one transaction, then wake its callers and the next batch's."""
        try:
            batch.outcomes = self._insert(batch.rows)
        except BaseException as exc:  # every caller must learn that its record was not stored
            batch.error = exc
        finally:
            with self._turn:
                batch.done = True
                self._writing = False
                self._turn.notify_all()

    def _insert(self, rows: list[_Row]) -> list[bool | Exception]:
        """Insert ``rows`` in one transaction, with the counters when due; each row's outcome."""
        due = time.monotonic() >= self._counters_due
        counters = self._take_pending() if due else {}
        try:
            with self._lock, self._db:
                outcomes = [_insert_row(self._db, row) for row in rows]
                _write_counters(self._db, counters)
        except BaseException:
            self._restore_pending(counters)  # rolled back: they go with a later commit
            raise
        if due:
            self._counters_due = time.monotonic() + COUNTERS_INTERVAL
        duplicates = sum(outcome is False for outcome in outcomes)
        if duplicates:
            self.bump("duplicates", duplicates)
        return outcomes

    def bump(self, name: str, by: int = 1) -> None:
        """Add ``by`` to counter ``name`` (one of :data:`COUNTERS`)."""
        if name not in COUNTERS:
            raise ValueError(f"unknown counter {name!r}")
        with self._pending_lock:
            self._pending[name] = self._pending.get(name, 0) + by

    def _take_pending(self) -> dict[str, int]:
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        return pending

    def _restore_pending(self, counters: dict[str, int]) -> None:
        with self._pending_lock:
            for name, by in counters.items():
                self._pending[name] = self._pending.get(name, 0) + by

    def _write_pending(self) -> None:
        """Write pending counter increments in their own transaction; the caller holds the lock."""
        counters = self._take_pending()
        try:
            with self._db:
                _write_counters(self._db, counters)
        except BaseException:
            self._restore_pending(counters)
            raise

    def count(self, kind: str | None = None, product_id: str | None = None,
              activity_type: str | None = None) -> int:
        """How many distinct records are stored, optionally only those matching the filters."""
        where, params = _filters(kind=kind, product_id=product_id, activity_type=activity_type)
        count: int = self._read(f"SELECT COUNT(*) FROM events{where}", params)[0][0]
        return count

    def events(self, limit: int = 100, product_id: str | None = None,
               activity_type: str | None = None, kind: str | None = None,
               since: float | None = None) -> list[dict[str, Any]]:
        """Stored records, newest first, each a dict with the columns and the parsed ``payload``."""
        where, params = _filters(kind=kind, product_id=product_id, activity_type=activity_type,
                                 since=since)
        query = f"SELECT {', '.join(_COLUMNS)} FROM events{where} ORDER BY id DESC LIMIT ?"
        return [_as_dict(row) for row in self._read(query, params + [int(limit)])]

    def identities(self, product_id: str, since: float, until: float,
                   kind: str | None = None) -> list[tuple[Any, Any]]:
        """Distinct ``(user_id, meta.installation_id)`` pairs of the product's records with
        ``since <= event_at <= until`` (usage time, not arrival time): what the reports count."""
        where, params = _filters(kind=kind, product_id=product_id)
        query = ("SELECT DISTINCT json_extract(payload, '$.user_id'), "
                 "json_extract(payload, '$.meta.installation_id') FROM events"
                 f"{where} AND event_at BETWEEN ? AND ?")
        return [(user, install) for user, install in self._read(query, params + [since, until])]

    def query(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[_Row]:
        """Rows of a read-only ``SELECT`` over ``events`` (the reports' own SQL); thread-safe."""
        if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
            raise ValueError("query() only reads")
        return self._read(sql, params)

    def _read(self, sql: str, params: list[Any] | tuple[Any, ...]) -> list[_Row]:
        """Every read goes through the report connection when there is one."""
        if self._reader is None:
            with self._lock:
                return self._db.execute(sql, list(params)).fetchall()
        with self._read_lock:
            return self._reader.execute(sql, list(params)).fetchall()

    def stats(self) -> dict[str, int]:
        """Counters plus the number of stored records: ``events``, ``usage``, ``aggregate``, ..."""
        with self._lock:
            self._write_pending()
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
            by_kind = dict(self._db.execute("SELECT kind, COUNT(*) FROM events GROUP BY kind").fetchall())
        stats = {"events": sum(by_kind.values())}
        stats.update((kind, by_kind.get(kind, 0)) for kind in KINDS)
        stats.update((name, counters.get(name, 0)) for name in COUNTERS)
        return stats


class _Batch:
    """Rows that one transaction commits together, and then what became of each."""

    __slots__ = ("rows", "writer", "done", "outcomes", "error")

    def __init__(self) -> None:
        self.rows: list[_Row] = []
        self.writer: int | None = None  # the thread (ident) that commits it
        self.done = False
        self.outcomes: list[bool | Exception] = []  # per row: new, duplicate, or its own error
        self.error: BaseException | None = None  # the transaction failed: no row was stored

    def outcome(self, index: int) -> bool:
        """Row ``index``'s result: True if new, False if a duplicate; raises what it failed with."""
        if self.error is not None:
            raise self.error
        outcome = self.outcomes[index]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


#: Errors of one row's values (a type SQLite cannot store, an integer too large): they fail that
#: row's statement only, so the other rows of its transaction are still stored.
_ROW_ERRORS = (sqlite3.InterfaceError, sqlite3.ProgrammingError, OverflowError)


def _insert_row(db: sqlite3.Connection, row: _Row) -> bool | Exception:
    try:
        return db.execute(_INSERT, row).rowcount == 1
    except _ROW_ERRORS as exc:
        return exc


def _write_counters(db: sqlite3.Connection, counters: dict[str, int]) -> None:
    if counters:
        db.executemany("UPDATE counters SET value = value + ? WHERE name = ?",
                       [(by, name) for name, by in counters.items()])


def _row(kind: str, payload: dict[str, Any], peer: str | None, received_at: float) -> _Row:
    count = payload.get("count", 1) if kind == "aggregate" else 1
    return (kind, str(payload["event_id"]), payload.get("product_id"), payload.get("activity_type"),
            payload.get("event_at"), count, received_at, peer,
            _ENCODER.encode(payload))


def _filters(since: float | None = None, **equal: str | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in equal.items():
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if since is not None:
        clauses.append("received_at >= ?")
        params.append(float(since))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _as_dict(row: _Row) -> dict[str, Any]:
    record = dict(zip(_COLUMNS, row))
    record["payload"] = json.loads(record["payload"])
    return record


def _reader(path: str) -> sqlite3.Connection:
    reader = sqlite3.connect(path, check_same_thread=False)
    reader.execute("PRAGMA query_only=ON")
    reader.execute("PRAGMA busy_timeout=5000")
    return reader

