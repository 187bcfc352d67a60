"""The collector's SQLite store: received records, deduplicated by ``(kind, event_id)``, and counters.

One connection guarded by a lock serves every thread: the collector's writes are tiny, and a
single connection is the only way an in-memory database (``":memory:"``) can be shared.
Counters are kept in memory and written with the next record (or read), so a request costs one
commit, not two; a crash can lose the counts since the last record, never a record.
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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
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
_INSERT = (f"INSERT OR IGNORE INTO events ({', '.join(_COLUMNS[1:])}) "
           f"VALUES ({', '.join('?' * (len(_COLUMNS) - 1))})")


class Store:
    """Received records and counters in one SQLite database (``":memory:"`` allowed); thread-safe."""

    def __init__(self, path: str = ":memory:") -> None:
        self.path = path
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}  # counter increments not yet written
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

    def __repr__(self) -> str:
        return f"Store({self.path!r})"

    def close(self) -> None:
        """Write pending counters and close the database; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with self._db:
                self._flush()
            self._db.close()

    def add(self, kind: str, payload: dict, peer: str | None = None,
            received_at: float | None = None) -> bool:
        """Store one validated record; True if new, False if ``(kind, event_id)`` was already stored."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        row = _row(kind, payload, peer, time.time() if received_at is None else received_at)
        with self._lock, self._db:
            new = self._db.execute(_INSERT, row).rowcount == 1
            if not new:
                self._pending["duplicates"] = self._pending.get("duplicates", 0) + 1
            self._flush()
        return new

    def bump(self, name: str, by: int = 1) -> None:
        """Add ``by`` to counter ``name`` (one of :data:`COUNTERS`)."""
        if name not in COUNTERS:
            raise ValueError(f"unknown counter {name!r}")
        with self._lock:
            self._pending[name] = self._pending.get(name, 0) + by

    def _flush(self) -> None:
        """Write pending counter increments; the caller holds the lock inside a transaction."""
        if self._pending:
            self._db.executemany("UPDATE counters SET value = value + ? WHERE name = ?",
                                 [(by, name) for name, by in self._pending.items()])
            self._pending.clear()

    def count(self, kind: str | None = None, product_id: str | None = None,
              activity_type: str | None = None) -> int:
        """How many distinct records are stored, optionally only those matching the filters."""
        where, params = _filters(kind=kind, product_id=product_id, activity_type=activity_type)
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM events{where}", params).fetchone()[0]

    def events(self, limit: int = 100, product_id: str | None = None,
               activity_type: str | None = None, kind: str | None = None,
               since: float | None = None) -> list[dict[str, Any]]:
        """Stored records, newest first, each a dict with the columns and the parsed ``payload``."""
        where, params = _filters(kind=kind, product_id=product_id, activity_type=activity_type,
                                 since=since)
        query = f"SELECT {', '.join(_COLUMNS)} FROM events{where} ORDER BY id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, params + [int(limit)]).fetchall()
        return [_as_dict(row) for row in rows]

    def identities(self, product_id: str, since: float, until: float,
                   kind: str | None = None) -> list[tuple[Any, Any]]:
        """Distinct ``(user_id, meta.installation_id)`` pairs of the product's records with
        ``since <= event_at <= until`` (usage time, not arrival time): what the reports count."""
        where, params = _filters(kind=kind, product_id=product_id)
        query = ("SELECT DISTINCT json_extract(payload, '$.user_id'), "
                 "json_extract(payload, '$.meta.installation_id') FROM events"
                 f"{where} AND event_at BETWEEN ? AND ?")
        with self._lock:
            rows = self._db.execute(query, params + [since, until]).fetchall()
        return [(user, install) for user, install in rows]

    def query(self, sql: str, params: list | tuple = ()) -> list[tuple]:
        """Rows of a read-only ``SELECT`` over ``events`` (the reports' own SQL); thread-safe."""
        if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
            raise ValueError("query() only reads")
        with self._lock:
            return self._db.execute(sql, list(params)).fetchall()

    def stats(self) -> dict[str, int]:
        """Counters plus the number of stored records: ``events``, ``usage``, ``aggregate``, ..."""
        with self._lock:
            with self._db:
                self._flush()
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
            by_kind = dict(self._db.execute("SELECT kind, COUNT(*) FROM events GROUP BY kind").fetchall())
        stats = {"events": sum(by_kind.values())}
        stats.update((kind, by_kind.get(kind, 0)) for kind in KINDS)
        stats.update((name, counters.get(name, 0)) for name in COUNTERS)
        return stats


def _row(kind: str, payload: dict, peer: str | None, received_at: float) -> tuple:
    count = payload.get("count", 1) if kind == "aggregate" else 1
    return (kind, str(payload["event_id"]), payload.get("product_id"), payload.get("activity_type"),
            payload.get("event_at"), count, received_at, peer,
            json.dumps(payload, separators=(",", ":"), sort_keys=True))


def _filters(since: float | None = None, **equal: str | None) -> tuple[str, list]:
    clauses, params = [], []
    for column, value in equal.items():
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if since is not None:
        clauses.append("received_at >= ?")
        params.append(float(since))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _as_dict(row: tuple) -> dict[str, Any]:
    record = dict(zip(_COLUMNS, row))
    record["payload"] = json.loads(record["payload"])
    return record
