"""The collector's Revenera-style Reporting API (``/v3/``) over real HTTP with cookies.

A simulated fleet (several installations over seven weeks, fed as the agent sends records: see
issue 6's wire format) is checked against numbers computed here by plain loops over the generated
records, never through :mod:`callhome.collector.usage`. Small hand-made data sets cover each
report's edges (empty ranges, lost clients, weeks across months), and the API's authentication.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime as dt
import io
import json
import random
import uuid
import zipfile
from dataclasses import dataclass

import pytest
import requests
from freezegun import freeze_time

from callhome.collector import CollectorServer, Store, make_app
from callhome.collector.revenera import DOWNLOAD_TTL, SESSION_IDLE, Sessions
from callhome.collector.server import add_arguments
from callhome.schema import AGGREGATE_PATH, USAGE_PATH

PRODUCT = "acme-cli"
OTHER = "other-product"
INGEST_KEY, REPORT_KEY = "ingest-key", "report-key"
USER, PASSWORD = "analyst@example.com", "s3cret:with-colon"
DAY = 86400
EPOCH = dt.date(1970, 1, 1)

DATE_RANGE = "reporting/generic/dateRange"
DISTRIBUTION = "reporting/engagement/usageDistribution"
DATA_TABLE = "reporting/eventTracking/basic/dataTable"
TIMELINE = "reporting/eventTracking/basic/timeline"
CUSTOM_LINES = "customEventTracking/getLastLines"
EXCEPTION_LINES = "exceptionTracking/getLastLines"
PROPERTY_LIST = "reporting/clientPropertyList"
LIST_FILES = "rawEvents/download/listFiles"
DOWNLOAD_URL = "rawEvents/download/getDownloadUrl"

# The fleet's calendar: it starts on a Wednesday, crosses two month ends inside ISO weeks
# (Jan 29 - Feb 4 and Feb 26 - Mar 3), and "now" is a few days after its end.
FLEET_FIRST, FLEET_LAST = dt.date(2024, 1, 17), dt.date(2024, 3, 6)
TODAY = dt.date(2024, 3, 12)
LOST_AFTER = 14


# -- records as the agent sends them (issue 6's wire format) ---------------------------------------
def at(date: dt.date, seconds: int = 0) -> int:
    return (date - EPOCH).days * DAY + seconds


def on(date: str, seconds: int = 0) -> int:
    """``at`` for a date written ``YYYY-MM-DD``."""
    return at(dt.date.fromisoformat(date), seconds)


def payload(event_at: int, client: str | None, activity: str, product: str = PRODUCT, **meta) -> dict:
    fields = {"callhome_version": "0.4.0", **meta}
    if client is not None:
        fields["installation_id"] = client
    return {"activity_type": activity, "source": "TELEMETRY", "domain": "example.com",
            "event_id": str(uuid.uuid4()), "event_at": event_at, "product_id": product,
            "user_agent": f"{product}/1.0 callhome/0.4.0 (Linux 6.1.0; x86_64) Python/3.11.2", "meta": fields}


def custom(event_at: int, client: str | None, name: str, category: str = "", **kw) -> dict:
    meta = {"category": category} if category else {}  # the agent leaves out an absent category
    return payload(event_at, client, name, **meta, **kw)


def aggregate(event_at: int, client: str | None, name: str, count: int, category: str = "") -> dict:
    return dict(custom(event_at, client, name, category), count=count, mode="DOMAIN")


def session(event_at: int, client: str | None, duration: float, **props) -> dict:
    return payload(event_at, client, "SESSION", record_type="session", session_id=uuid.uuid4().hex,
                   session_kind="process", session_start=event_at - int(duration), session_end=event_at,
                   duration=duration, closed_by="exit", **props)


def exception(event_at: int, client: str | None, cls: str, handled: bool = True, **props) -> dict:
    return payload(event_at, client, "EXCEPTION", record_type="exception", exception_class=cls,
                   exception_function="helper", exception_file="lib.py", exception_line=40,
                   stack="app.py:12 in main > lib.py:40 in helper", handled=handled, **props)


def call_home(event_at: int, client: str | None, **props) -> dict:
    return payload(event_at, client, "CALL_HOME", record_type="call_home", **props)


@dataclass
class Record:
    """One posted payload and what the expectations need of it."""

    payload: dict

    @property
    def meta(self) -> dict:
        return self.payload["meta"]

    @property
    def event_at(self) -> int:
        return self.payload["event_at"]

    @property
    def date(self) -> dt.date:
        return EPOCH + dt.timedelta(days=self.event_at // DAY)

    @property
    def client(self) -> str | None:
        return self.meta.get("installation_id")

    @property
    def record_type(self) -> str | None:
        return self.meta.get("record_type")

    @property
    def product(self) -> str:
        return self.payload["product_id"]

    @property
    def count(self) -> int:
        return self.payload.get("count", 1)


def post(http: requests.Session, server: CollectorServer, record: dict) -> None:
    path = AGGREGATE_PATH if "count" in record else USAGE_PATH
    reply = http.post(server.url + path, json={"payload": record}, headers={"X-API-KEY": INGEST_KEY},
                      timeout=5)
    assert reply.status_code == 200, reply.text


def feed(server: CollectorServer, records: list[dict]) -> list[Record]:
    with requests.Session() as http:
        for record in records:
            post(http, server, record)
    return [Record(record) for record in records]


def make_fleet() -> list[dict]:
    """Eight installations over seven weeks; seeded, so every run posts the same records."""
    rng = random.Random(6)
    spans = {"client-01": (FLEET_FIRST, FLEET_LAST),
             "client-02": (dt.date(2024, 1, 20), TODAY - dt.timedelta(LOST_AFTER)),  # lost today exactly
             "client-03": (dt.date(2024, 1, 22), TODAY - dt.timedelta(LOST_AFTER - 1)),  # lost tomorrow
             "client-04": (dt.date(2024, 2, 1), dt.date(2024, 2, 1))}  # a one-day client
    for n in range(5, 9):
        first = FLEET_FIRST + dt.timedelta(rng.randint(0, 30))
        spans[f"client-{n:02d}"] = (first, min(first + dt.timedelta(rng.randint(0, 30)), FLEET_LAST))
    records: list[dict] = []
    for index, (client, (first, last)) in enumerate(sorted(spans.items())):
        for offset in range((last - first).days + 1):
            day = first + dt.timedelta(offset)
            if day in (first, last) or rng.random() < 0.45:
                records += _active_day(rng, index, client, day)
    records.append(custom(at(dt.date(2024, 2, 1)), None, "build", "cli"))  # from CI: no installation id
    records.append(custom(at(FLEET_LAST, DAY - 1), "client-01", "deploy", "cli"))  # the day's last second
    records += [custom(at(dt.date(2024, 2, 5), 60), "client-01", "build", "cli", product=OTHER),
                session(at(dt.date(2024, 2, 5), 90), "client-99", 3600.0, product=OTHER)]
    rng.shuffle(records)  # arrival order must not matter
    return records


_OS = [("Linux", "6.1.0"), ("Darwin", "23.4.0"), ("Windows", "10.0.19045")]
_EVENTS = [("cli", "build"), ("cli", "deploy"), ("", "open"), ("ui", "open")]
_EXCEPTIONS = ["ValueError", "pkg.mod.MyError", "KeyError"]


def _active_day(rng: random.Random, index: int, client: str, day: dt.date) -> list[dict]:
    # Distinct times per client and record: "newest first" has no ties to break.
    base = at(day, 600 * (index + 1))
    times = iter(range(base, base + 600, 7))
    os_name, os_version = _OS[index % 3]
    props = {"os": os_name, "os_version": os_version, "arch": "x86_64", "python_version": "3.11.2",
             "locale": "en_US", "cpu_count": 4 + index, "custom_01": f"team-{index}",
             "product_version": "1.0.0" if day < dt.date(2024, 2, 15) else "1.1.0"}
    if index % 2 == 0:
        props["license_type"] = "purchased"
    records = [call_home(next(times), client, **props)]
    long_sessions = client == "client-01"  # one heavy user reaches the open runtime bin
    for _ in range(rng.randint(0, 2)):
        duration = rng.uniform(2 * 3600, 9 * 3600) if long_sessions else rng.uniform(30, 3 * 3600)
        records.append(session(next(times), client, round(duration, 3), **props))
    for _ in range(rng.randint(0, 3)):
        category, name = rng.choice(_EVENTS)
        records.append(custom(next(times), client, name, category, product_version=props["product_version"]))
    if rng.random() < 0.2:
        records.append(aggregate(next(times), client, "build", rng.randint(2, 9), "cli"))
    if rng.random() < 0.15:
        records.append(exception(next(times), client, rng.choice(_EXCEPTIONS), rng.random() < 0.5, **props))
    return records


# -- the report client -----------------------------------------------------------------------------
class Api:
    """A logged-in (or not) HTTP client of the /v3/ API; cookies live in its requests.Session."""

    def __init__(self, server: CollectorServer) -> None:
        self.url = server.url + "/v3/"
        self.http = requests.Session()

    def login(self, user: str = USER, password: str = PASSWORD) -> requests.Response:
        return self.http.post(self.url + "auth/web", json={"userName": user, "password": password}, timeout=5)

    def post(self, report: str, product: str = PRODUCT, **body) -> requests.Response:
        return self.http.post(f"{self.url}{report}/{product}", json=body, timeout=5)

    def result(self, report: str, product: str = PRODUCT, **body):
        reply = self.post(report, product, **body)
        assert reply.status_code == 200, reply.text
        return reply.json()["result"]


def frozen(date: dt.date = TODAY, seconds: int = 12 * 3600):
    return freeze_time(dt.datetime.fromtimestamp(at(date, seconds), tz=dt.timezone.utc), tick=False)


@pytest.fixture(scope="module")
def fleet():
    """One collector holding the fleet for every fleet test: (server, records)."""
    with CollectorServer(api_keys=[INGEST_KEY], report_keys=[REPORT_KEY],
                         report_users=[(USER, PASSWORD)]) as server:
        yield server, feed(server, make_fleet())


@pytest.fixture
def server():
    with CollectorServer(api_keys=[INGEST_KEY], report_keys=[REPORT_KEY],
                         report_users=[(USER, PASSWORD), ("second", "other-password")]) as server:
        yield server


@pytest.fixture
def api(server):
    client = Api(server)
    assert client.login().status_code == 200
    return client


# -- expectations, by plain loops over the records -------------------------------------------------
def days(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(n) for n in range((last - first).days + 1)]


def period(date: dt.date, split: str) -> dt.date:
    """The first day of the date's period: itself, its ISO week's Monday, its month's 1st."""
    if split == "week":
        return date - dt.timedelta(date.weekday())
    return date.replace(day=1) if split == "month" else date


def labels(first: dt.date, last: dt.date, split: str) -> list[str]:
    return sorted({period(date, split).isoformat() for date in days(first, last)})


def ours(records: list[Record]) -> list[Record]:
    return [record for record in records if record.product == PRODUCT]


def client_days(records: list[Record]) -> dict[str, set]:
    found: dict[str, set] = {}
    for record in ours(records):
        if record.client:
            found.setdefault(record.client, set()).add(record.date)
    return found


def expected_date_range(records, first, last, split, lost_after, reported) -> dict:
    names = labels(first, last, split)
    new, lost = dict.fromkeys(names, 0), dict.fromkeys(names, 0)
    active: dict[str, set] = {name: set() for name in names}
    for client, dates in client_days(records).items():
        for date in dates:
            if first <= date <= last:
                active[period(date, split).isoformat()].add(client)
        if first <= min(dates) <= last:
            new[period(min(dates), split).isoformat()] += 1
        if max(dates) + dt.timedelta(lost_after) <= TODAY:
            shown = max(dates) + dt.timedelta(0 if reported == "dateLastSeen" else lost_after)
            if first <= shown <= last:
                lost[period(shown, split).isoformat()] += 1
    return {"dates": names, "new": [new[n] for n in names], "active": [len(active[n]) for n in names],
            "lost": [lost[n] for n in names]}


def in_range(record: Record, first: dt.date, last: dt.date) -> bool:
    return first <= record.date <= last


def close(actual, expected) -> bool:
    """Equal lists of numbers, floats to 4 decimals (the reports round), None only for None."""
    if isinstance(expected, list):
        return len(actual) == len(expected) and all(close(a, e) for a, e in zip(actual, expected))
    if expected is None or actual is None:
        return actual is expected
    return abs(actual - expected) <= 1e-4


# -- the fleet -------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["day", "week", "month"])
@pytest.mark.parametrize("reported", ["dateDeclaredLost", "dateLastSeen"])
def test_date_range_counts_new_active_and_lost_clients_of_the_fleet(fleet, split, reported):
    server, records = fleet
    first, last = dt.date(2024, 1, 24), TODAY  # starts mid-week and before clients' first days
    api = Api(server)
    with frozen():
        assert api.login().status_code == 200
        result = api.result(DATE_RANGE, startDate=first.isoformat(), stopDate=last.isoformat(),
                            dateSplit=split, daysUntilDeclaredLost=LOST_AFTER, dateReportedLost=reported,
                            groupBy="clientId", clientStatus=["new", "active", "lost"], resultMode="absolute")
    expected = expected_date_range(records, first, last, split, LOST_AFTER, reported)
    assert result == expected
    # The fleet is built so that each series has something to count (else the test proves little).
    assert sum(expected["new"]) >= 4 and sum(expected["lost"]) >= 2 and max(expected["active"]) >= 3
    if split == "week":
        assert result["dates"][0] == "2024-01-22"  # the Monday before startDate labels the first week


def test_usage_distribution_histograms_of_the_fleet(fleet):
    server, records = fleet
    first, last = dt.date(2024, 1, 29), dt.date(2024, 2, 25)
    active_days = {}
    for client, dates in client_days(records).items():
        if any(first <= d <= last for d in dates):
            active_days[client] = {d for d in dates if first <= d <= last}
    sessions = dict.fromkeys(active_days, 0)
    runtime = dict.fromkeys(active_days, 0.0)
    for record in ours(records):
        if record.record_type == "session" and in_range(record, first, last) and record.client:
            sessions[record.client] += 1
            runtime[record.client] += record.meta["duration"] / 3600

    def bins(values, edges):  # a bin holds lo <= v < hi; the last has no hi
        uppers = edges[1:] + [None]
        return [{"from": lo, "to": hi, "clients": len([v for v in values
                                                      if lo <= v and (hi is None or v < hi)])}
                for lo, hi in zip(edges, uppers)]

    api = Api(server)
    api.login()
    result = api.result(DISTRIBUTION, startDate=first.isoformat(), stopDate=last.isoformat(),
                        globalFilters={})
    assert result == {
        "clients": len(active_days),
        "activeDays": bins([len(found) for found in active_days.values()], [1, 2, 3, 6, 11, 21, 31]),
        "sessions": bins(list(sessions.values()), [0, 1, 2, 6, 11, 21, 51, 101]),
        "runtime": bins(list(runtime.values()), [0, 1, 2, 5, 10, 20, 50, 100])}
    assert result["clients"] >= 5 and sum(1 for n in sessions.values() if n >= 2) >= 2


def expected_table(records, first, last) -> list[dict]:
    counts: dict[tuple, int] = {}
    users: dict[tuple, set] = {}
    for record in ours(records):
        if record.record_type is None and in_range(record, first, last):
            key = (record.meta.get("category", ""), record.payload["activity_type"])
            counts[key] = counts.get(key, 0) + record.count
            users.setdefault(key, set())
            if record.client:
                users[key].add(record.client)
    rows = [{"category": c, "name": n, "eventCount": counts[(c, n)], "userCount": len(users[(c, n)]),
             "averagePerUser": round(counts[(c, n)] / len(users[(c, n)]), 2)} for c, n in counts]
    return sorted(rows, key=lambda row: (-row["eventCount"], row["name"], row["category"]))


def test_data_table_counts_custom_events_and_aggregates_of_the_fleet(fleet):
    server, records = fleet
    api = Api(server)
    api.login()
    first, last = dt.date(2024, 2, 1), FLEET_LAST
    table = api.result(DATA_TABLE, startDate=first.isoformat(), stopDate=last.isoformat())
    assert table == expected_table(records, first, last)
    assert {(row["category"], row["name"]) for row in table} == set(_EVENTS)  # "open" twice: two categories
    build = next(row for row in table if row["name"] == "build")
    # The CI record (no installation id) counts as an event, not as a user; aggregates count `count`.
    assert build["eventCount"] > build["userCount"]
    only = api.result(DATA_TABLE, startDate=first.isoformat(), stopDate=last.isoformat(),
                      events=[{"category": "ui", "name": "open"}, {"category": None, "name": "  open "},
                              {"category": "cli", "name": "never-used"}])
    assert only == [row for row in table if (row["category"], row["name"]) in {("ui", "open"), ("", "open")}]


@pytest.mark.parametrize("divisor", [None, "users", "sessions", "runtime"])
@pytest.mark.parametrize("split", ["week", "month"])
def test_timeline_of_the_fleet_with_each_divisor(fleet, divisor, split):
    server, records = fleet
    first, last = dt.date(2024, 1, 24), dt.date(2024, 3, 3)
    wanted = [("cli", "build"), ("", "open"), ("cli", "never-used")]
    names = labels(first, last, split)
    counts = {key: dict.fromkeys(names, 0) for key in wanted}
    users: dict[str, set] = {name: set() for name in names}
    sessions, hours = dict.fromkeys(names, 0), dict.fromkeys(names, 0.0)
    for record in ours(records):
        if not in_range(record, first, last):
            continue
        bucket = period(record.date, split).isoformat()
        key = (record.meta.get("category", ""), record.payload["activity_type"])
        if record.record_type is None and key in counts:
            counts[key][bucket] += record.count
        if record.client:
            users[bucket].add(record.client)
        if record.record_type == "session":
            sessions[bucket] += 1
            hours[bucket] += record.meta["duration"] / 3600
    divisors = {None: None, "users": {n: len(users[n]) for n in names}, "sessions": sessions,
                "runtime": hours}[divisor]

    def value(key, name):
        if divisors is None:
            return counts[key][name]
        return round(counts[key][name] / divisors[name], 4) if divisors[name] else None

    api = Api(server)
    api.login()
    result = api.result(TIMELINE, startDate=first.isoformat(), stopDate=last.isoformat(), dateSplit=split,
                        dataView="usageCounts", divisor=divisor,
                        events=[{"category": c, "name": n} for c, n in wanted])
    assert result["dates"] == names
    assert [(e["category"], e["name"]) for e in result["events"]] == wanted
    for event, key in zip(result["events"], wanted):
        assert close(event["values"], [value(key, name) for name in names]), (key, event["values"])
    assert sum(counts[("cli", "build")].values()) > 0


def test_last_lines_are_the_newest_custom_events_and_exceptions(fleet):
    server, records = fleet
    api = Api(server)
    api.login()
    newest = sorted((r for r in ours(records) if r.record_type is None), key=lambda r: -r.event_at)[:7]
    answer = api.post(CUSTOM_LINES, lineCount=7).json()
    assert [(row["eventDate"], row["clientId"], row["category"], row["name"], row["eventCount"])
            for row in answer["result"]] == [
        (dt.datetime.fromtimestamp(r.event_at, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), r.client,
         r.meta.get("category", ""), r.payload["activity_type"], r.count) for r in newest]
    assert answer["result"][0]["eventDate"] == f"{FLEET_LAST}T23:59:59Z"
    assert set(answer["fieldNames"]) == set(answer["result"][0]) and answer["fieldNames"]["clientId"]
    assert len(api.post(CUSTOM_LINES).json()["result"]) == 10  # the default lineCount

    errors = sorted((r for r in ours(records) if r.record_type == "exception"), key=lambda r: -r.event_at)
    rows = api.post(EXCEPTION_LINES, lineCount=1000).json()["result"]
    assert len(rows) == len(errors) >= 3
    assert [(row["clientId"], row["exceptionClass"], row["handled"], row["os"], row["product_version"])
            for row in rows] == [(r.client, r.meta["exception_class"], r.meta["handled"], r.meta["os"],
                                  r.meta["product_version"]) for r in errors]
    assert rows[0]["stack"] == "app.py:12 in main > lib.py:40 in helper" and rows[0]["message"] is None


PROPERTIES = ("os", "product_version", "license_type")


def iso(event_at: int) -> str:
    return dt.datetime.fromtimestamp(event_at, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_client_property_list_pages_to_the_end_with_current_values(fleet):
    server, records = fleet
    expected: dict[str, dict] = {}
    for record in sorted(ours(records), key=lambda r: r.event_at):  # oldest first: the last value wins
        if record.client:
            row = expected.setdefault(record.client, {"first": record.event_at, "props": {}})
            row["last"] = record.event_at
            row["props"].update((k, v) for k, v in record.meta.items() if k in PROPERTIES)
    api = Api(server)
    api.login()
    pages, after = [], None
    while True:
        answer = api.post(PROPERTY_LIST, properties=list(PROPERTIES), pageSize=3,
                          nextClientId=after).json()
        pages.append(answer["result"])
        if answer["reachedEnd"]:
            assert answer["nextClientId"] is None
            break
        after = answer["nextClientId"]
        assert after == answer["result"][-1]["clientId"]
    assert [len(page) for page in pages] == [3, 3, 2]
    rows = [row for page in pages for row in page]
    assert [row["clientId"] for row in rows] == sorted(expected)  # "client-99" is another product's
    for row in rows:
        want = expected[row["clientId"]]
        assert (row["firstSeen"], row["lastSeen"]) == (iso(want["first"]), iso(want["last"]))
        assert row["properties"] == {name: want["props"].get(name) for name in PROPERTIES}
    upgraded = [row for row in rows if row["properties"]["product_version"] == "1.1.0"]
    assert upgraded and any(row["properties"]["license_type"] is None for row in rows)
    everything = api.post(PROPERTY_LIST, pageSize=1).json()["result"][0]["properties"]
    assert everything["custom_01"] == "team-0"
    assert "custom_20" in everything and everything["custom_20"] is None


def test_raw_export_lists_each_day_and_downloads_its_records(fleet):
    server, records = fleet
    api = Api(server)
    api.login()
    with frozen():  # (a session used under a frozen clock would look idle for years to the real one)
        listing = api.http.get(api.url + LIST_FILES + "/" + PRODUCT, timeout=5).json()["fileList"]
    api.login()
    dates = sorted({r.date.isoformat() for r in ours(records)})
    assert listing == [{"fileName": f"{PRODUCT}_{d}.zip", "date": d, "open": False} for d in dates]
    day = dt.date(2024, 2, 1)  # the CI record's day: it is in the export too
    name = f"{PRODUCT}_{day}.zip"
    url = api.post(DOWNLOAD_URL, fileName=name).json()["url"]
    assert url.startswith(server.url + "/v3/rawEvents/download/file/")
    archive = requests.get(url, timeout=5)  # no cookie: the signed URL is the credential
    assert archive.status_code == 200 and archive.headers["Content-Type"] == "application/zip"
    assert name in archive.headers["Content-Disposition"]
    with zipfile.ZipFile(io.BytesIO(archive.content)) as opened:
        assert opened.namelist() == [f"{PRODUCT}_{day}.csv"]
        rows = list(csv.DictReader(io.StringIO(opened.read(opened.namelist()[0]).decode("utf-8"))))
    wanted = sorted((r for r in ours(records) if r.date == day), key=lambda r: r.event_at)
    assert [row["event_id"] for row in rows] == [r.payload["event_id"] for r in wanted]
    assert list(rows[0]) == ["event_id", "kind", "event_at", "activity_type", "count", "installation_id",
                             "user_id", "user_id_type", "ip_addr", "domain", "meta"]
    assert rows[0]["event_at"] == "2024-02-01T00:00:00Z" and rows[0]["installation_id"] == ""
    assert {row["kind"] for row in rows} <= {"usage", "aggregate"}
    assert all(row["meta"].startswith("{") for row in rows)


# -- edges of each report --------------------------------------------------------------------------
def test_a_week_across_two_months_is_one_bucket(server, api):
    feed(server, [custom(on("2024-01-31"), "a", "run"), custom(on("2024-02-02"), "a", "run"),
                  custom(on("2024-02-04", DAY - 1), "b", "run"), custom(on("2024-02-05"), "c", "run"),
                  custom(on("2024-02-06"), "d", "run")])
    span = {"startDate": "2024-01-31", "stopDate": "2024-02-05"}
    assert api.result(DATE_RANGE, **span, dateSplit="week") == {
        "dates": ["2024-01-29", "2024-02-05"], "new": [2, 1], "active": [2, 1], "lost": [0, 0]}
    assert api.result(DATE_RANGE, **span, dateSplit="month") == {
        "dates": ["2024-01-01", "2024-02-01"], "new": [1, 2], "active": [1, 3], "lost": [0, 0]}
    by_day = api.result(DATE_RANGE, **span, clientStatus=["active"])
    assert by_day == {"dates": ["2024-01-31", "2024-02-01", "2024-02-02", "2024-02-03", "2024-02-04",
                                "2024-02-05"], "active": [1, 0, 1, 0, 1, 1]}
    timeline = api.result(TIMELINE, **span, dateSplit="week", events=[{"name": "run"}])
    assert timeline == {"dates": ["2024-01-29", "2024-02-05"],
                        "events": [{"category": "", "name": "run", "values": [3, 1]}]}


def test_month_split_spans_the_year_end(server, api):
    feed(server, [custom(on("2023-12-31", DAY - 1), "a", "run"), custom(on("2024-01-01"), "a", "run"),
                  custom(on("2024-02-29"), "b", "run")])
    result = api.result(TIMELINE, startDate="2023-12-15", stopDate="2024-03-01", dateSplit="month")
    assert result == {"dates": ["2023-12-01", "2024-01-01", "2024-02-01", "2024-03-01"],
                      "events": [{"category": "", "name": "run", "values": [1, 1, 1, 0]}]}


@pytest.mark.parametrize("reported, lost", [
    ("dateLastSeen", {"2024-03-01": 1, "2024-03-02": 1}),
    ("dateDeclaredLost", {"2024-03-11": 1, "2024-03-12": 1}),
])
def test_lost_clients_are_reported_on_either_date(server, reported, lost):
    feed(server, [custom(on("2024-01-10"), "w", "run"), custom(on("2024-03-01"), "x", "run"),
                  custom(on("2024-03-02", DAY - 1), "y", "run"), custom(on("2024-03-03"), "z", "run"),
                  custom(on("2024-02-20"), "x", "run")])
    body = {"startDate": "2024-02-26", "stopDate": "2024-03-12", "daysUntilDeclaredLost": 10,
            "dateReportedLost": reported, "clientStatus": ["lost"]}
    api = Api(server)
    with frozen(TODAY):  # x: 03-01 + 10 <= 03-12, y: 03-02 + 10 == 03-12 (lost today), z: not yet
        api.login()
        result = api.result(DATE_RANGE, **body)
    assert set(result) == {"dates", "lost"}
    assert dict(zip(result["dates"], result["lost"])) == {d: lost.get(d, 0) for d in result["dates"]}
    with frozen(TODAY - dt.timedelta(1)):  # a day earlier y was not lost yet
        api.login()  # (a day later than its last use, a session has expired)
        assert sum(api.result(DATE_RANGE, **body)["lost"]) == 1
    with frozen(TODAY):
        api.login()
        default = dict(body, daysUntilDeclaredLost=None)  # 30 days
        assert sum(api.result(DATE_RANGE, **default)["lost"]) == 0


def test_percent_of_active(server, api):
    feed(server, [custom(on("2024-03-01"), "a", "run"), custom(on("2024-03-01"), "b", "run"),
                  custom(on("2024-03-02"), "a", "run"), custom(on("2024-03-02"), "c", "run"),
                  custom(on("2024-03-02"), "d", "run")])
    result = api.result(DATE_RANGE, startDate="2024-03-01", stopDate="2024-03-03",
                        resultMode="percentOfActive", clientStatus=["new", "active"])
    assert result == {"dates": ["2024-03-01", "2024-03-02", "2024-03-03"], "new": [100.0, 66.7, None],
                      "active": [2, 3, 0]}


def test_empty_ranges_and_unknown_products_answer_zeros(server, api):
    feed(server, [session(on("2024-03-01", 3600), "a", 1800.0), custom(on("2024-03-01"), "a", "run")])
    empty = {"startDate": "2024-02-01", "stopDate": "2024-02-03"}
    for product in (PRODUCT, "no-such-product"):
        assert api.result(DATE_RANGE, product, **empty) == {
            "dates": ["2024-02-01", "2024-02-02", "2024-02-03"], "new": [0, 0, 0], "active": [0, 0, 0],
            "lost": [0, 0, 0]}
        assert api.result(DATA_TABLE, product, **empty) == []
        assert api.result(TIMELINE, product, **empty) == {"dates": ["2024-02-01", "2024-02-02", "2024-02-03"],
                                                          "events": []}
        distribution = api.result(DISTRIBUTION, product, **empty)
        assert distribution["clients"] == 0
        for key in ("activeDays", "sessions", "runtime"):
            assert all(bin_["clients"] == 0 for bin_ in distribution[key])
    for product in ("no-such-product",):
        assert api.post(CUSTOM_LINES, product).json()["result"] == []
        assert api.post(EXCEPTION_LINES, product).json()["result"] == []
        assert api.post(PROPERTY_LIST, product).json() == {"result": [], "nextClientId": None,
                                                           "reachedEnd": True}
        assert api.http.get(f"{api.url}{LIST_FILES}/{product}", timeout=5).json() == {"fileList": []}
    one = api.result(DISTRIBUTION, startDate="2024-03-01", stopDate="2024-03-01")
    assert one["clients"] == 1 and one["sessions"][1]["clients"] == 1 and one["runtime"][0]["clients"] == 1


def test_a_zero_divisor_gives_null(server, api):
    feed(server, [custom(on("2024-03-01"), None, "run"),  # CI: an event, but no user
                  custom(on("2024-03-02"), "a", "run"), session(on("2024-03-02", 60), "a", 7200.0),
                  call_home(on("2024-03-02", 90), "b")])  # b is active, without a session
    span = {"startDate": "2024-03-01", "stopDate": "2024-03-03", "events": [{"name": "run"}]}
    values = {divisor: api.result(TIMELINE, **span, divisor=divisor)["events"][0]["values"]
              for divisor in ("users", "sessions", "runtime")}
    assert values == {"users": [None, 0.5, None], "sessions": [None, 1.0, None], "runtime": [None, 0.5, None]}


def test_last_lines_of_exceptions_carry_the_record_properties(server, api):
    feed(server, [exception(at(dt.date(2024, 3, 1), 5), "a", "KeyError", handled=False, os="Darwin",
                            exception_message="boom"),
                  exception(at(dt.date(2024, 3, 1), 9), "b", "ValueError"),
                  custom(at(dt.date(2024, 3, 1), 7), "a", "run", "cli")])
    rows = api.post(EXCEPTION_LINES, lineCount=5).json()["result"]
    assert [(r["clientId"], r["exceptionClass"], r["handled"]) for r in rows] == [
        ("b", "ValueError", True), ("a", "KeyError", False)]
    assert (rows[1]["os"], rows[1]["message"], rows[1]["exceptionLine"]) == ("Darwin", "boom", 40)
    assert [r["name"] for r in api.post(CUSTOM_LINES).json()["result"]] == ["run"]


def test_last_lines_of_custom_events_carry_the_client_s_latest_properties(server, api):
    feed(server, [call_home(at(dt.date(2024, 3, 1), 1), "a", os="Linux", product_version="1.0"),
                  session(at(dt.date(2024, 3, 1), 50), "a", 40.0, product_version="1.1"),
                  custom(at(dt.date(2024, 3, 1), 9), "a", "run", "cli"),
                  custom(at(dt.date(2024, 3, 1), 8), "b", "run", "cli", os="Windows"),
                  call_home(at(dt.date(2024, 3, 1), 2), "b", os="Darwin")])
    rows = {r["clientId"]: r for r in api.post(CUSTOM_LINES).json()["result"]}
    # the event's own value first, else the newest value any record of that client carried
    assert (rows["a"]["os"], rows["a"]["product_version"]) == ("Linux", "1.1")
    assert (rows["b"]["os"], rows["b"]["product_version"]) == ("Windows", None)


MARCH = {"startDate": "2024-03-01", "stopDate": "2024-03-02"}


@pytest.mark.parametrize("report, body, message", [
    (DATE_RANGE, {}, "startDate"),
    (DATE_RANGE, {"startDate": "2024-03-01"}, "stopDate"),
    (DATE_RANGE, {"startDate": "2024-3-1", "stopDate": "2024-03-02"}, "startDate"),
    (DATE_RANGE, {"startDate": "2024-02-30", "stopDate": "2024-03-02"}, "startDate"),
    (DATE_RANGE, {"startDate": "2024-03-02", "stopDate": "2024-03-01"}, "before"),
    (DATE_RANGE, {"startDate": "2000-01-01", "stopDate": "2010-01-08"}, "3660"),
    (DATE_RANGE, {"startDate": "2024-03-01", "stopDate": "2024-03-02", "dateSplit": "year"}, "dateSplit"),
    (DATE_RANGE, {"startDate": "2024-03-01", "stopDate": "2024-03-02", "groupBy": "machineId"}, "groupBy"),
    (DATE_RANGE, dict(MARCH, clientStatus=["gone"]), "clientStatus"),
    (DATE_RANGE, dict(MARCH, daysUntilDeclaredLost=0), "daysUntil"),
    (DATE_RANGE, {"startDate": "2024-03-01", "stopDate": "2024-03-02", "globalFilters": {"os": "x"}},
     "globalFilters"),
    (TIMELINE, {"startDate": "2024-03-01", "stopDate": "2024-03-02", "divisor": "days"}, "divisor"),
    (TIMELINE, {"startDate": "2024-03-01", "stopDate": "2024-03-02", "dataView": "uniqueUsers"}, "dataView"),
    (DATA_TABLE, dict(MARCH, events=[{"category": "x"}]), "events"),
    (CUSTOM_LINES, {"lineCount": 0}, "lineCount"),
    (EXCEPTION_LINES, {"lineCount": 1001}, "lineCount"),
    (CUSTOM_LINES, {"lineCount": True}, "lineCount"),
    (PROPERTY_LIST, {"properties": ["password"]}, "password"),
    (PROPERTY_LIST, {"pageSize": 1001}, "pageSize"),
    (PROPERTY_LIST, {"nextClientId": 5}, "nextClientId"),
    (DOWNLOAD_URL, {}, "fileName"),
])
def test_invalid_bodies_answer_400(api, report, body, message):
    reply = api.post(report, **body)
    assert reply.status_code == 400, reply.text
    assert message in reply.json()["error"]


def test_malformed_and_oversized_bodies(api):
    reply = api.http.post(f"{api.url}{DATA_TABLE}/{PRODUCT}", data=b"{not json", timeout=5,
                          headers={"Content-Type": "application/json"})
    assert reply.status_code == 400 and "Malformed JSON" in reply.json()["error"]
    reply = api.http.post(f"{api.url}{DATA_TABLE}/{PRODUCT}", json=[1, 2], timeout=5)
    assert reply.status_code == 400 and "object" in reply.json()["error"]
    reply = api.http.post(f"{api.url}{DATA_TABLE}/{PRODUCT}", json={"pad": "x" * 70_000}, timeout=5)
    assert reply.status_code == 413


def test_unknown_paths_and_wrong_methods(api):
    assert api.http.get(api.url + "reporting/generic/current/" + PRODUCT, timeout=5).status_code == 404
    assert api.http.post(api.url + DATE_RANGE + "/", json={}, timeout=5).status_code == 404  # no product id
    reply = api.http.get(f"{api.url}{DATE_RANGE}/{PRODUCT}", timeout=5)
    assert reply.status_code == 405 and reply.headers["Allow"] == "POST"
    assert api.http.post(f"{api.url}{LIST_FILES}/{PRODUCT}", timeout=5).headers["Allow"] == "GET"


# -- raw export: files and signed URLs -------------------------------------------------------------
def test_todays_file_is_open_and_unknown_files_are_404(server, api):
    feed(server, [custom(at(TODAY, 60), "a", "run"), custom(at(TODAY - dt.timedelta(1), 60), "a", "run")])
    with frozen():
        files = api.http.get(f"{api.url}{LIST_FILES}/{PRODUCT}", timeout=5).json()["fileList"]
        assert [(f["date"], f["open"]) for f in files] == [("2024-03-11", False), ("2024-03-12", True)]
        for name in (f"{PRODUCT}_2024-03-10.zip", f"{OTHER}_2024-03-11.zip", f"{PRODUCT}_2024-03-11.csv",
                     f"{PRODUCT}_2024-02-30.zip", "../etc/passwd"):
            reply = api.post(DOWNLOAD_URL, fileName=name)
            assert reply.status_code == 404, name
        assert api.post(DOWNLOAD_URL, OTHER, fileName=f"{OTHER}_2024-03-11.zip").status_code == 404


def test_download_urls_expire_and_cannot_be_altered(server, api):
    feed(server, [custom(at(TODAY, 60), "a", "run"), custom(at(TODAY - dt.timedelta(1), 60), "b", "run")])
    with frozen(TODAY, 0) as clock:
        url = api.post(DOWNLOAD_URL, fileName=f"{PRODUCT}_{TODAY}.zip").json()["url"]
        clock.tick(DOWNLOAD_TTL - 1)
        assert requests.get(url, timeout=5).status_code == 200
        clock.tick(2)
        expired = requests.get(url, timeout=5)
        assert expired.status_code == 403 and "expired" in expired.json()["error"]
    with frozen(TODAY, 0):
        url = api.post(DOWNLOAD_URL, fileName=f"{PRODUCT}_{TODAY}.zip").json()["url"]
        prefix, token = url.rsplit("/", 1)
        body, mac = token.split(".")
        # The payload names the file: point it at another day (or extend its life) and keep the MAC.
        product, _, expires = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        forgeries = [[product, f"{PRODUCT}_{TODAY - dt.timedelta(1)}.zip", expires],
                     [product, f"{PRODUCT}_{TODAY}.zip", expires + 3600]]
        for forged in forgeries:
            text = json.dumps(forged, separators=(",", ":")).encode()
            encoded = base64.urlsafe_b64encode(text).rstrip(b"=").decode()
            assert requests.get(f"{prefix}/{encoded}.{mac}", timeout=5).status_code == 403
        for bad in (f"{prefix}/{body}.{mac[:-2]}{'AA' if mac[-2:] != 'AA' else 'BB'}", f"{prefix}/{body}",
                    f"{prefix}/", f"{prefix}/{body}.{mac}.x"):
            assert requests.get(bad, timeout=5).status_code == 403, bad
        assert requests.get(url, timeout=5).status_code == 200  # the genuine one still works


def test_a_download_url_does_not_survive_a_restart():
    store = Store(":memory:")
    feed_app = make_app(store, report_users=[(USER, PASSWORD)])
    with CollectorServer(app=feed_app) as first:
        with requests.Session() as http:
            post(http, first, custom(at(TODAY), "a", "run"))
        api = Api(first)
        api.login()
        url = api.post(DOWNLOAD_URL, fileName=f"{PRODUCT}_{TODAY}.zip").json()["url"]
    with CollectorServer(app=make_app(store, report_users=[(USER, PASSWORD)])) as second:
        path = url.split("/v3/", 1)[1]
        assert requests.get(f"{second.url}/v3/{path}", timeout=5).status_code == 403  # a new secret


# -- authentication --------------------------------------------------------------------------------
def test_login_sets_a_session_cookie_and_answers_like_the_seed(server):
    feed(server, [custom(at(TODAY), "a", "run"), custom(at(TODAY), "a", "run", product=OTHER)])
    api = Api(server)
    assert api.http.get(api.url + "request-csrf", timeout=5).status_code == 204
    reply = api.login()
    assert reply.status_code == 200
    body = reply.json()
    assert set(body) == {"account", "freeware", "products", "userSettings", "currentProductDetails",
                         "beatInterval"}
    assert sorted(body["products"]) == [PRODUCT, OTHER] and body["account"]["userName"] == USER
    cookie = reply.headers["Set-Cookie"]
    token = cookie.split(";")[0].split("=", 1)[1]
    assert cookie.startswith("RUI-Session-Token=") and len(token) >= 43
    assert {"Path=/v3", "HttpOnly", "SameSite=Strict"} <= {part.strip() for part in cookie.split(";")}
    assert reply.headers["Cache-Control"] == "no-store"
    assert api.post(DATA_TABLE, startDate="2024-03-12", stopDate="2024-03-12").status_code == 200
    assert Api(server).login("second", "other-password").status_code == 200  # every user can log in


@pytest.mark.parametrize("user, password", [(USER, "wrong"), ("nobody", PASSWORD), (USER, ""),
                                            ("second", PASSWORD), (USER, "other-password")])
def test_wrong_credentials_are_401_without_a_cookie(server, user, password):
    api = Api(server)
    reply = api.login(user, password)
    assert reply.status_code == 401 and "Set-Cookie" not in reply.headers and reply.json()["error"]
    assert api.post(DATA_TABLE, startDate="2024-03-12", stopDate="2024-03-12").status_code == 401


def test_every_report_needs_a_session(server):
    anonymous = requests.Session()
    for report in (DATE_RANGE, DISTRIBUTION, DATA_TABLE, TIMELINE, CUSTOM_LINES, EXCEPTION_LINES,
                   PROPERTY_LIST, DOWNLOAD_URL):
        reply = anonymous.post(f"{server.url}/v3/{report}/{PRODUCT}", json={}, timeout=5)
        assert reply.status_code == 401 and "error" in reply.json(), report
    assert anonymous.get(f"{server.url}/v3/{LIST_FILES}/{PRODUCT}", timeout=5).status_code == 401
    # Neither the report key nor the ingest key opens /v3/, in any header; nor does a made-up cookie.
    for headers in ({"Authorization": f"Bearer {REPORT_KEY}"}, {"X-API-KEY": INGEST_KEY},
                    {"Authorization": f"Bearer {INGEST_KEY}"}, {"Cookie": "RUI-Session-Token=made-up"},
                    {"Cookie": f"RUI-Session-Token={REPORT_KEY}"}):
        reply = requests.post(f"{server.url}/v3/{DATA_TABLE}/{PRODUCT}", headers=headers, timeout=5,
                              json={"startDate": "2024-03-12", "stopDate": "2024-03-12"})
        assert reply.status_code == 401, headers


def test_logout_kills_the_token(server, api):
    token = api.http.cookies["RUI-Session-Token"]
    body = {"startDate": "2024-03-12", "stopDate": "2024-03-12"}
    assert api.post(DATA_TABLE, **body).status_code == 200
    reply = api.http.post(api.url + "auth/logout", json={}, timeout=5)
    assert reply.status_code == 204 and "Max-Age=0" in reply.headers["Set-Cookie"]
    replay = requests.post(f"{api.url}{DATA_TABLE}/{PRODUCT}", json=body, timeout=5,
                           headers={"Cookie": f"RUI-Session-Token={token}"})
    assert replay.status_code == 401  # the server forgot it, not only the browser
    assert api.http.post(api.url + "auth/logout", json={}, timeout=5).status_code == 204  # twice is fine


def test_an_idle_session_expires(server):
    api = Api(server)
    body = {"startDate": "2024-03-12", "stopDate": "2024-03-12"}
    with frozen(TODAY, 0) as clock:
        api.login()
        clock.tick(SESSION_IDLE - 10)
        assert api.post(DATA_TABLE, **body).status_code == 200  # use renews the session
        clock.tick(SESSION_IDLE - 10)
        assert api.post(DATA_TABLE, **body).status_code == 200
        clock.tick(SESSION_IDLE + 1)
        assert api.post(DATA_TABLE, **body).status_code == 401


def test_without_report_users_nobody_logs_in():
    with CollectorServer(api_keys=[INGEST_KEY], report_keys=[REPORT_KEY]) as bare:
        api = Api(bare)
        assert api.login().status_code == 401
        assert api.login("", "").status_code == 401
        assert api.post(DATA_TABLE, startDate="2024-03-12", stopDate="2024-03-12").status_code == 401


def test_a_report_password_must_not_be_an_ingest_key():
    with pytest.raises(ValueError, match="ingest"):
        make_app(":memory:", api_keys=[INGEST_KEY], report_users=[("ann", INGEST_KEY)])


def test_sessions_are_bounded_least_recently_used_first():
    sessions = Sessions(limit=2)
    first, second = sessions.open("a"), sessions.open("b")
    assert sessions.user(first) == "a"  # now the most recently used
    third = sessions.open("c")
    assert (sessions.user(first), sessions.user(second), sessions.user(third)) == ("a", None, "c")
    sessions.close(first)
    assert sessions.user(first) is None and len(sessions) == 1


def test_the_report_user_option():
    parser = add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--report-user", "ann:pa:ss", "--report-user", "bob:x"])
    assert args.report_users == [("ann", "pa:ss"), ("bob", "x")]
    assert parser.parse_args([]).report_users == []
    for bad in ("ann", ":pw", "ann:"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--report-user", bad])
