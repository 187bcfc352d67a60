"""Usage-intelligence numbers behind the collector's Revenera-style Reporting API (``/v3/...``).

Two layers, so each report can be checked without HTTP:

- *reading*: ``read_*`` functions run one read-only SQL query each through
  :meth:`~callhome.collector.store.Store.query` and return plain tuples;
- *computing*: pure functions over those tuples (no store, no clock: "now" is an argument).

The records are classified by ``meta.record_type`` as the agent writes it (``"session"``,
``"exception"``, ``"call_home"``; absent for a custom event or an aggregate record), never by
activity name, which the vendor may configure. A *client* is ``meta.installation_id``; records
without one count as events but never as a client. Days are UTC days by ``event_at`` and are
handled as *epoch days* (``event_at // 86400``). ``docs/reports.md`` defines every number.
Standard library only.
"""

from __future__ import annotations

import bisect
import csv
import datetime as dt
import io
import json
import zipfile
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from callhome.collector.store import Store

__all__ = ["ACTIVE_DAY_BINS", "CLIENT_PROPERTIES", "DAY", "LOST_REPORTED", "PROPERTY_LABELS",
           "RUNTIME_BINS", "SESSION_BINS", "SPLITS", "Buckets", "Event", "ExceptionRecord", "Line", "Session",
           "Span", "client_properties", "date_range", "day_of", "event_keys", "event_table",
           "exception_counts", "export_zip", "histogram", "iso_day", "iso_time", "last_lines",
           "latest_values", "line_clients", "LINE_PROPERTIES", "per_day_sessions", "percent_of_active",
           "read_activity", "read_client_metas", "read_clients",
           "read_day", "read_days", "read_events", "read_exceptions", "read_last", "read_products",
           "read_sessions", "read_spans", "timeline", "usage_distribution"]

DAY = 24 * 60 * 60
SPLITS = ("day", "week", "month")
#: Where a lost client is counted: its last active day, or that day + ``daysUntilDeclaredLost``.
LOST_REPORTED = ("dateDeclaredLost", "dateLastSeen")
_EPOCH = dt.date(1970, 1, 1)

#: Histogram bins as lower edges: a bin holds ``from <= value < next edge``, the last one is open.
ACTIVE_DAY_BINS = (1, 2, 3, 6, 11, 21, 31)
SESSION_BINS = (0, 1, 2, 6, 11, 21, 51, 101)
RUNTIME_BINS = (0, 1, 2, 5, 10, 20, 50, 100)  # hours

PRODUCT_PROPERTIES = ("product_version", "product_build", "product_edition", "product_language")
SYSTEM_PROPERTIES = ("os", "os_version", "arch", "python_version", "python_impl", "locale", "cpu_count",
                     "container", "is_ci")
LICENSE_PROPERTIES = ("license_type", "license_expired", "license_activated", "license_blocked",
                      "license_allowed", "license_key_hmac")
CUSTOM_PROPERTIES = tuple(f"custom_{slot:02d}" for slot in range(1, 21))
#: Every client property the agent sends (issue 6's wire format), in report order.
CLIENT_PROPERTIES = (PRODUCT_PROPERTIES + SYSTEM_PROPERTIES + CUSTOM_PROPERTIES + LICENSE_PROPERTIES
                     + ("callhome_version",))
PROPERTY_LABELS = {
    "product_version": "Product version", "product_build": "Product build",
    "product_edition": "Product edition", "product_language": "Product language",
    "os": "OS", "os_version": "OS version", "arch": "Architecture", "python_version": "Python version",
    "python_impl": "Python implementation", "locale": "Locale", "cpu_count": "CPU count",
    "container": "In a container", "is_ci": "In CI", "license_type": "License type",
    "license_expired": "License expired", "license_activated": "License activated",
    "license_blocked": "License blocked", "license_allowed": "License allowed",
    "license_key_hmac": "License key (HMAC)", "callhome_version": "callhome version",
    **{name: f"Custom property {name[-2:]}" for name in CUSTOM_PROPERTIES},
}

# The client id as text (a stray number must not split a client in two); NULL when absent.
_CLIENT = "CAST(json_extract(payload, '$.meta.installation_id') AS TEXT)"
_RECORD_TYPE = "json_extract(payload, '$.meta.record_type')"


class Span(NamedTuple):
    """A client's first and last record ever (``event_at``)."""

    client: str
    first_at: int
    last_at: int


class Session(NamedTuple):
    client: str | None
    event_at: int  # the session's end
    duration: float  # seconds


class Event(NamedTuple):
    """A custom event or an aggregate record (``count`` occurrences)."""

    client: str | None
    event_at: int
    category: str
    name: str
    count: int  # type: ignore[assignment]  # the store's column name; shadows tuple.count()


class ExceptionRecord(NamedTuple):
    client: str | None
    event_at: int
    exception_class: str


class Line(NamedTuple):
    """One stored record as getLastLines and the raw export need it."""

    event_at: int
    kind: str
    activity_type: str
    count: int  # type: ignore[assignment]  # the store's column name; shadows tuple.count()
    meta: dict[str, Any]


# -- days and buckets ------------------------------------------------------------------------------
def day_of(event_at: float) -> int:
    """The UTC epoch day of a UNIX time."""
    return int(event_at) // DAY


def iso_day(day: int) -> str:
    return (_EPOCH + dt.timedelta(days=day)).isoformat()


def iso_time(event_at: int) -> str:
    return dt.datetime.fromtimestamp(event_at, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _label(day: int, split: str) -> str:
    date = _EPOCH + dt.timedelta(days=day)
    if split == "week":  # ISO week: Monday first
        date -= dt.timedelta(days=date.weekday())
    elif split == "month":
        date = date.replace(day=1)
    return date.isoformat()


class Buckets:
    """The ``dateSplit`` buckets over the epoch days ``first..last`` (inclusive).

    A bucket is labelled with its period's first day (the day, the week's Monday, the month's
    1st) even when that day is before ``first``: labels name calendar periods, so the same week
    has the same label whatever the range. Only days inside the range fall into a bucket.
    """

    def __init__(self, first: int, last: int, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}")
        self.first, self.last = first, last
        self.labels: list[str] = []
        self._index: dict[int, int] = {}
        for day in range(first, last + 1):
            label = _label(day, split)
            if not self.labels or self.labels[-1] != label:  # days ascend, so labels do too
                self.labels.append(label)
            self._index[day] = len(self.labels) - 1

    def __len__(self) -> int:
        return len(self.labels)

    def index(self, day: int) -> int | None:
        """The bucket of an epoch day, or None outside the range."""
        return self._index.get(day)

    @property
    def seconds(self) -> tuple[int, int]:
        """The range as inclusive UNIX seconds, for SQL ``BETWEEN``."""
        return self.first * DAY, (self.last + 1) * DAY - 1


# -- reading (one query each) ----------------------------------------------------------------------
def read_products(store: Store) -> list[str]:
    rows = store.query("SELECT DISTINCT product_id FROM events WHERE product_id IS NOT NULL ORDER BY 1")
    return [product for (product,) in rows]


def read_activity(store: Store, product: str, since: int, until: int) -> list[tuple[str, int]]:
    """Distinct ``(client, epoch day)`` with any record of the product in ``[since, until]`` seconds."""
    rows = store.query(f"SELECT DISTINCT {_CLIENT}, event_at / {DAY} FROM events "
                       "WHERE product_id = ? AND event_at BETWEEN ? AND ?", (product, since, until))
    return [(client, day) for client, day in rows if client]


def read_spans(store: Store, product: str) -> list[Span]:
    """Every client's first and last record ever (not only in a range: that decides new and lost)."""
    rows = store.query(f"SELECT client, MIN(event_at), MAX(event_at) FROM (SELECT {_CLIENT} AS client, "
                       "event_at FROM events WHERE product_id = ?) WHERE client IS NOT NULL AND client <> '' "
                       "GROUP BY client", (product,))
    return [Span(*row) for row in rows]


def read_sessions(store: Store, product: str, since: int, until: int) -> list[Session]:
    """Session records ending in ``[since, until]``."""
    rows = store.query(f"SELECT {_CLIENT}, event_at, json_extract(payload, '$.meta.duration') FROM events "
                       f"WHERE product_id = ? AND event_at BETWEEN ? AND ? AND {_RECORD_TYPE} = 'session'",
                       (product, since, until))
    return [Session(client or None, at, _duration(duration)) for client, at, duration in rows]


def _duration(value: Any) -> float:
    # meta is only checked to be flat: a string or negative duration must not poison a sum.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return 0.0
    return max(float(value), 0.0)


def read_events(store: Store, product: str, since: int, until: int) -> list[Event]:
    """Custom events and aggregate records (no ``record_type``) in ``[since, until]``."""
    rows = store.query(f"SELECT {_CLIENT}, event_at, json_extract(payload, '$.meta.category'), "
                       f"activity_type, count FROM events WHERE product_id = ? AND event_at BETWEEN ? AND ? "
                       f"AND {_RECORD_TYPE} IS NULL", (product, since, until))
    return [Event(client or None, at, _text(category), _text(name), int(count or 1))
            for client, at, category, name, count in rows]


def read_exceptions(store: Store, product: str, since: int, until: int) -> list[ExceptionRecord]:
    rows = store.query(f"SELECT {_CLIENT}, event_at, json_extract(payload, '$.meta.exception_class') "
                       f"FROM events WHERE product_id = ? AND event_at BETWEEN ? AND ? "
                       f"AND {_RECORD_TYPE} = 'exception'", (product, since, until))
    return [ExceptionRecord(client or None, at, _text(name) or "(unknown)") for client, at, name in rows]


def _text(value: Any) -> str:
    """A category or name as reported: absent is "" (an event without a category)."""
    return "" if value is None else str(value)


def read_last(store: Store, product: str, record_type: str | None, limit: int) -> list[Line]:
    """The newest ``limit`` records of one class (``None``: custom events), newest first."""
    condition = f"{_RECORD_TYPE} IS NULL" if record_type is None else f"{_RECORD_TYPE} = ?"
    params: list[Any] = [product] + ([] if record_type is None else [record_type]) + [limit]
    rows = store.query("SELECT event_at, kind, activity_type, count, json_extract(payload, '$.meta') "
                       f"FROM events WHERE product_id = ? AND {condition} "
                       "ORDER BY event_at DESC, id DESC LIMIT ?", params)
    return [Line(at, kind, _text(activity), int(count or 1), _object(meta))
            for at, kind, activity, count, meta in rows]


def _object(text: str | None) -> dict[str, Any]:
    value = json.loads(text) if text else None
    return value if isinstance(value, dict) else {}


def read_clients(store: Store, product: str, after: str, limit: int) -> list[Span]:
    """Up to ``limit`` clients whose id sorts after ``after``, in id order, with first/last seen."""
    rows = store.query(f"SELECT client, MIN(event_at), MAX(event_at) FROM (SELECT {_CLIENT} AS client, "
                       "event_at FROM events WHERE product_id = ?) WHERE client IS NOT NULL AND client > ? "
                       "GROUP BY client ORDER BY client LIMIT ?", (product, after, limit))
    return [Span(*row) for row in rows]


def read_client_metas(store: Store, product: str, clients: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """``(client, meta)`` of every record of ``clients``, newest first."""
    if not clients:
        return []
    # json_each: one parameter however many clients (old SQLite allows only 999 parameters).
    rows = store.query(f"SELECT client, meta FROM (SELECT {_CLIENT} AS client, event_at, id, "
                       "json_extract(payload, '$.meta') AS meta FROM events WHERE product_id = ?) "
                       "WHERE client IN (SELECT value FROM json_each(?)) ORDER BY event_at DESC, id DESC",
                       (product, json.dumps(list(clients))))
    return [(client, _object(meta)) for client, meta in rows]


def read_days(store: Store, product: str) -> list[int]:
    """The epoch days with at least one record of the product, ascending."""
    rows = store.query(f"SELECT DISTINCT event_at / {DAY} FROM events WHERE product_id = ? "
                       "AND event_at IS NOT NULL ORDER BY 1", (product,))
    return [day for (day,) in rows]


def read_day(store: Store, product: str, day: int) -> list[tuple[Any, ...]]:
    """Every record of one day for the raw export, oldest first: ``(event_id, kind, event_at,
    activity_type, count, payload JSON)``."""
    return store.query("SELECT event_id, kind, event_at, activity_type, count, payload FROM events "
                       "WHERE product_id = ? AND event_at BETWEEN ? AND ? ORDER BY event_at, id",
                       (product, day * DAY, (day + 1) * DAY - 1))


# -- generic/dateRange -----------------------------------------------------------------------------
def date_range(activity: Iterable[tuple[str, int]], spans: Iterable[Span], buckets: Buckets, today: int,
               lost_after: int, reported: str = "dateDeclaredLost") -> dict[str, list[int]]:
    """New, active and lost clients per bucket.

    ``activity``: ``(client, day)`` pairs in the range; ``spans``: every client's first/last record
    ever; ``today``: the current epoch day. A client is lost when its last day ``L`` satisfies
    ``L + lost_after <= today``; it is counted in the bucket of ``L`` (``dateLastSeen``) or of
    ``L + lost_after`` (``dateDeclaredLost``) when that day is in the range.
    """
    active: list[set[str]] = [set() for _ in range(len(buckets))]
    for client, day in activity:
        index = buckets.index(day)
        if index is not None:
            active[index].add(client)
    new, lost = [0] * len(buckets), [0] * len(buckets)
    for span in spans:
        index = buckets.index(day_of(span.first_at))
        if index is not None:
            new[index] += 1
        last = day_of(span.last_at)
        if last + lost_after <= today:
            index = buckets.index(last if reported == "dateLastSeen" else last + lost_after)
            if index is not None:
                lost[index] += 1
    return {"new": new, "active": [len(clients) for clients in active], "lost": lost}


def percent_of_active(counts: dict[str, list[int]]) -> dict[str, list[Any]]:
    """``new`` and ``lost`` as a percentage of ``active`` (1 decimal; None where nobody was active)."""
    def share(values: list[int]) -> list[float | None]:
        return [round(100 * value / base, 1) if base else None
                for value, base in zip(values, counts["active"])]

    return {"new": share(counts["new"]), "active": counts["active"], "lost": share(counts["lost"])}


# -- engagement/usageDistribution ------------------------------------------------------------------
def histogram(values: Iterable[float], edges: Sequence[float]) -> list[dict[str, Any]]:
    """How many values fall in each bin ``[edge, next edge)``; the last bin is open (``to`` None)."""
    counts = [0] * len(edges)
    for value in values:
        index = bisect.bisect_right(edges, value) - 1
        if index >= 0:
            counts[index] += 1
    return [{"from": edge, "to": edges[i + 1] if i + 1 < len(edges) else None, "clients": counts[i]}
            for i, edge in enumerate(edges)]


def usage_distribution(activity: Iterable[tuple[str, int]], sessions: Iterable[Session]) -> dict[str, Any]:
    """Histograms of active days, sessions and runtime hours per client active in the range.

    ``activity`` and ``sessions`` are already limited to the range.
    """
    days: dict[str, int] = {}
    for client, _ in activity:  # distinct (client, day) pairs: one per active day
        days[client] = days.get(client, 0) + 1
    launches = dict.fromkeys(days, 0)
    runtime = dict.fromkeys(days, 0.0)
    for session in sessions:
        if session.client in launches:
            launches[session.client] += 1
            runtime[session.client] += session.duration / 3600
    return {"clients": len(days), "activeDays": histogram(days.values(), ACTIVE_DAY_BINS),
            "sessions": histogram(launches.values(), SESSION_BINS),
            "runtime": histogram(runtime.values(), RUNTIME_BINS)}


# -- eventTracking/basic ---------------------------------------------------------------------------
EventKey = tuple[str, str]  # (category, name)


def event_table(events: Iterable[Event], wanted: set[EventKey] | None = None) -> list[dict[str, Any]]:
    """Per (category, name): occurrences, distinct clients and occurrences per client, most used first."""
    counts: dict[EventKey, int] = {}
    users: dict[EventKey, set[str]] = {}
    for event in events:
        key = (event.category, event.name)
        if wanted is not None and key not in wanted:
            continue
        counts[key] = counts.get(key, 0) + event.count
        clients = users.setdefault(key, set())
        if event.client:
            clients.add(event.client)
    rows: list[dict[str, Any]] = []
    for (category, name), count in counts.items():
        user_count = len(users[(category, name)])
        rows.append({"category": category, "name": name, "eventCount": count, "userCount": user_count,
                     "averagePerUser": round(count / user_count, 2) if user_count else None})
    rows.sort(key=lambda row: (-row["eventCount"], row["name"], row["category"]))
    return rows


def event_keys(events: Iterable[Event]) -> list[EventKey]:
    """The events that occurred, in :func:`event_table` order (a timeline without an ``events`` list)."""
    return [(row["category"], row["name"]) for row in event_table(events)]


def timeline(events: Iterable[Event], keys: Sequence[EventKey], buckets: Buckets,
             divisor: str | None = None, activity: Iterable[tuple[str, int]] = (),
             sessions: Iterable[Session] = ()) -> dict[str, Any]:
    """Occurrences of each event per bucket, optionally divided by the bucket's active clients
    (``users``), ended sessions (``sessions``) or runtime hours (``runtime``); None where that is 0."""
    values = {key: [0] * len(buckets) for key in keys}
    for event in events:
        index = buckets.index(day_of(event.event_at))
        per_bucket = values.get((event.category, event.name))
        if index is not None and per_bucket is not None:
            per_bucket[index] += event.count
    divisors = _divisors(divisor, buckets, activity, sessions)
    rows = []
    for (category, name), counts in values.items():
        shown: Sequence[float | None] = counts
        if divisors is not None:
            shown = [round(count / base, 4) if base else None for count, base in zip(counts, divisors)]
        rows.append({"category": category, "name": name, "values": shown})
    return {"dates": list(buckets.labels), "events": rows}


def _divisors(divisor: str | None, buckets: Buckets, activity: Iterable[tuple[str, int]],
              sessions: Iterable[Session]) -> list[float] | None:
    if divisor is None:
        return None
    if divisor == "users":
        clients: list[set[str]] = [set() for _ in range(len(buckets))]
        for client, day in activity:
            index = buckets.index(day)
            if index is not None:
                clients[index].add(client)
        return [len(found) for found in clients]
    totals = [0.0] * len(buckets)
    for session in sessions:
        index = buckets.index(day_of(session.event_at))
        if index is not None:
            totals[index] += 1 if divisor == "sessions" else session.duration / 3600
    return totals


# -- getLastLines ----------------------------------------------------------------------------------
LINE_PROPERTIES = PRODUCT_PROPERTIES + SYSTEM_PROPERTIES
_CUSTOM_FIELDS = {"eventDate": "Event date (UTC)", "clientId": "Client ID", "category": "Event category",
                  "name": "Event name", "eventCount": "Occurrences"}
_EXCEPTION_FIELDS = {"eventDate": "Event date (UTC)", "clientId": "Client ID",
                     "exceptionClass": "Exception class", "exceptionFunction": "Function",
                     "exceptionFile": "File", "exceptionLine": "Line", "stack": "Stack trace",
                     "message": "Message", "handled": "Handled"}
_EXCEPTION_META = {"exceptionClass": "exception_class", "exceptionFunction": "exception_function",
                   "exceptionFile": "exception_file", "exceptionLine": "exception_line", "stack": "stack",
                   "message": "exception_message", "handled": "handled"}


def last_lines(lines: Iterable[Line], exceptions: bool = False,
               known: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """getLastLines' ``{"fieldNames", "result"}`` for custom-event (or exception) records.

    ``known``: each client's latest properties (:func:`latest_values`), for what a record does not
    carry itself — the agent sends system properties with CALL_HOME, session and exception
    records only, not with every event.
    """
    fields = dict(_EXCEPTION_FIELDS if exceptions else _CUSTOM_FIELDS)
    fields.update((name, PROPERTY_LABELS[name]) for name in LINE_PROPERTIES)
    return {"fieldNames": fields, "result": [_line(line, exceptions, known or {}) for line in lines]}


def _line(line: Line, exceptions: bool, known: dict[str, dict[str, Any]]) -> dict[str, Any]:
    meta = line.meta
    row: dict[str, Any] = {"eventDate": iso_time(line.event_at), "clientId": meta.get("installation_id")}
    if exceptions:
        row.update((field, meta.get(key)) for field, key in _EXCEPTION_META.items())
    else:
        row.update(category=_text(meta.get("category")), name=line.activity_type, eventCount=line.count)
    latest = known.get(row["clientId"], {})
    row.update((name, meta[name] if meta.get(name) is not None else latest.get(name)) for name in LINE_PROPERTIES)
    return row


def line_clients(lines: Iterable[Line]) -> list[str]:
    return sorted({line.meta["installation_id"] for line in lines if line.meta.get("installation_id")})


def latest_values(metas: Iterable[tuple[str, dict[str, Any]]], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per client, the newest non-null value of each of ``names``; ``metas`` newest first."""
    current: dict[str, dict[str, Any]] = {}
    for client, meta in metas:
        found = current.setdefault(client, {})
        if len(found) == len(names):
            continue
        for name in names:
            if name not in found and meta.get(name) is not None:
                found[name] = meta[name]
    return current


# -- clientPropertyList ----------------------------------------------------------------------------
def client_properties(clients: Sequence[Span], metas: Iterable[tuple[str, dict[str, Any]]],
                      names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per client (in ``clients`` order) with the newest non-null value of each property.

    ``metas``: ``(client, meta)`` newest first, so the first value seen is the current one.
    """
    current = latest_values(metas, names)
    return [{"clientId": span.client, "firstSeen": iso_time(span.first_at),
             "lastSeen": iso_time(span.last_at),
             "properties": {name: current.get(span.client, {}).get(name) for name in names}} for span in clients]


# -- rawEvents export ------------------------------------------------------------------------------
EXPORT_COLUMNS = ("event_id", "kind", "event_at", "activity_type", "count", "installation_id", "user_id",
                  "user_id_type", "ip_addr", "domain", "meta")


def export_zip(rows: Iterable[tuple[Any, ...]], csv_name: str, day: int) -> bytes:
    """A zip holding one CSV (:data:`EXPORT_COLUMNS`) of :func:`read_day` rows, built in memory."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow(EXPORT_COLUMNS)
    for event_id, kind, event_at, activity_type, count, payload in rows:
        record = _object(payload)
        meta = record.get("meta")
        meta = meta if isinstance(meta, dict) else {}
        writer.writerow([event_id, kind, iso_time(event_at), activity_type, count,
                         _cell(meta.get("installation_id")),
                         _cell(record.get("user_id")), _cell(record.get("user_id_type")),
                         _cell(record.get("ip_addr")), _cell(record.get("domain")),
                         json.dumps(meta, sort_keys=True, separators=(",", ":"))])
    date = _EPOCH + dt.timedelta(days=day)
    # The entry's time is the day itself: the same records always give the same bytes.
    info = zipfile.ZipInfo(csv_name, date_time=(date.year, date.month, date.day, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(info, text.getvalue().encode("utf-8"))
    return buffer.getvalue()


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


# -- dashboard helpers -----------------------------------------------------------------------------
def per_day_sessions(sessions: Iterable[Session], first_day: int, days: int) -> tuple[list[int], list[float]]:
    """Sessions ended and runtime hours per day over ``days`` days from ``first_day``."""
    counts, hours = [0] * days, [0.0] * days
    for session in sessions:
        index = day_of(session.event_at) - first_day
        if 0 <= index < days:
            counts[index] += 1
            hours[index] += session.duration / 3600
    return counts, hours


def exception_counts(exceptions: Iterable[ExceptionRecord]) -> list[tuple[str, int]]:
    """``(exception class, records)``, most frequent first (then by name)."""
    counts: dict[str, int] = {}
    for exception in exceptions:
        counts[exception.exception_class] = counts.get(exception.exception_class, 0) + 1
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))
