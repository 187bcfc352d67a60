"""PowerAuth-compatible telemetry reports: the collector's endpoint, the pure module and ``callhome report``."""

from __future__ import annotations

import argparse
import json
import time
import uuid

import pytest
import requests
from freezegun import freeze_time

from callhome import cli
from callhome.collector import CollectorServer, Store, make_app, reports
from callhome.collector.app import REPORT_PATH
from callhome.collector.server import add_arguments
from callhome.schema import AGGREGATE_PATH, USAGE_PATH

INGEST_KEY = "ingest-key"
REPORT_KEY = "report-key"
APP = "acme-cli"
DAY = 24 * 60 * 60
#: The frozen "now": a whole second, so the edges are exact, and days in the past, so a report that
#: missed the frozen clock (the real one) would see none of the window tests' events.
NOW = int(time.time()) - 10 * DAY


@pytest.fixture
def server():
    with CollectorServer(api_keys=[INGEST_KEY], report_keys=[REPORT_KEY]) as server:
        yield server


def event(event_at: int, user: str | None = None, install: str | None = None, product: str = APP) -> dict:
    payload = {"activity_type": "run", "source": "TELEMETRY", "environment": "DEVELOPMENT", "product_id": product,
               "domain": "example.com", "user_agent": "acme/1.0", "event_id": str(uuid.uuid4()),
               "event_at": event_at}
    if user is not None:
        payload.update(user_id=user, user_id_type="USERNAME")
    if install is not None:
        payload["meta"] = {"installation_id": install}
    return payload


def ingest(server, *payloads: dict, path: str = USAGE_PATH) -> None:
    for payload in payloads:
        reply = requests.post(server.url + path, json={"payload": payload}, headers={"X-API-KEY": INGEST_KEY},
                              timeout=5)
        assert reply.status_code == 200, reply.text


def ask(server, name, key: str | None = REPORT_KEY, **parameters) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(server.url + REPORT_PATH, headers=headers, timeout=5,
                         json={"requestObject": {"name": name, "parameters": parameters}})


def ok(reply: requests.Response) -> dict:
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["status"] == "OK"
    return body["responseObject"]


def error(reply: requests.Response, status: int, code: str) -> str:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["status"] == "ERROR" and body["responseObject"]["code"] == code
    return body["responseObject"]["message"]


def frozen():
    return freeze_time(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(NOW)), tick=False)


# -- the reports -------------------------------------------------------------------------------
def test_current_mau_counts_distinct_users_with_install_fallback(server):
    ingest(server, event(NOW - 10, user="ann", install="i1"), event(NOW - 20, user="ann", install="i2"),
           event(NOW - 30, user="bob"), event(NOW - 40, install="i3"), event(NOW - 50, install="i3"),
           event(NOW - 60, user="eve", product="other"), event(NOW - 31 * DAY, user="old"))
    with frozen():
        answer = ok(ask(server, "current_mau", application=APP, days=7))  # days ignored (P5)
    assert answer == {"name": "CURRENT_MAU", "reportData": {"application": APP, "days": 30, "users": 3}}


def test_identity_install_counts_installations(server):
    ingest(server, event(NOW - 10, user="ann", install="i1"), event(NOW - 20, user="ann", install="i2"),
           event(NOW - 30, user="bob"), event(NOW - 40, install="i3"))
    with frozen():
        users = ok(ask(server, "CURRENT_MAU", application=APP, identity="user"))["reportData"]["users"]
        installs = ok(ask(server, "CURRENT_MAU", application=APP, identity="install"))["reportData"]["users"]
    assert (users, installs) == (3, 3)  # ann, bob, i3 / i1, i2, i3 (bob sent no installation id)


def test_aggregate_records_count_too(server):
    record = dict(event(NOW - 5, install="i9"), count=4, mode="DOMAIN")
    ingest(server, record, path=AGGREGATE_PATH)
    with frozen():
        assert ok(ask(server, "CURRENT_MAU", application=APP))["reportData"]["users"] == 1


@pytest.mark.parametrize("days", [1, 7, 365, "30", " 2 "])
def test_users_in_past_days_takes_int_or_integral_string(server, days):
    ingest(server, event(NOW - 10, user="ann"))
    with frozen():
        answer = ok(ask(server, "Users_In_Past_Days", application=APP, days=days))
    assert answer == {"name": "USERS_IN_PAST_DAYS",
                      "reportData": {"application": APP, "days": int(days), "users": 1}}


def test_window_edges_are_closed_and_use_event_at(server):
    days = 3
    ingest(server, event(NOW - days * DAY, user="edge"), event(NOW - days * DAY - 1, user="older"),
           event(NOW, user="now"), event(NOW + 1, user="future"))
    with frozen():
        data = ok(ask(server, "USERS_IN_PAST_DAYS", application=APP, days=days))["reportData"]
    assert data["users"] == 2  # edge and now; older is one second out, future is after "now"
    with freeze_time(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(NOW + 1)), tick=False):
        # The window moves with the collector's clock: proof the frozen clock reached its thread.
        data = ok(ask(server, "USERS_IN_PAST_DAYS", application=APP, days=days))["reportData"]
    assert data["users"] == 2  # now and future; edge dropped out
    assert ok(ask(server, "USERS_IN_PAST_DAYS", application=APP, days=days))["reportData"]["users"] == 0


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, parameters, message", [
    ("MAU", {"application": APP}, "Unknown report name: MAU"),
    ("CURRENT_MAU", {}, "Missing parameter 'application'."),
    ("CURRENT_MAU", {"application": ""}, "The parameter 'application' must be a non-empty string."),
    ("USERS_IN_PAST_DAYS", {"application": APP}, "Missing parameter 'days'."),
    ("USERS_IN_PAST_DAYS", {"application": APP, "days": 366},
     "The parameter 'days' must be between 1 and 365. Provided: 366"),
    ("USERS_IN_PAST_DAYS", {"application": APP, "days": 0},
     "The parameter 'days' must be between 1 and 365. Provided: 0"),
    ("USERS_IN_PAST_DAYS", {"application": APP, "days": -5},
     "The parameter 'days' must be between 1 and 365. Provided: -5"),
    ("USERS_IN_PAST_DAYS", {"application": APP, "days": 30.0},
     "The parameter 'days' must be an integer. Provided: 30.0"),
    ("USERS_IN_PAST_DAYS", {"application": APP, "days": "thirty"},
     "The parameter 'days' must be an integer. Provided: 'thirty'"),
    ("USERS_IN_PAST_DAYS", {"application": APP, "days": True},
     "The parameter 'days' must be an integer. Provided: True"),
    ("CURRENT_MAU", {"application": APP, "identity": "device"},
     "The parameter 'identity' must be 'user' or 'install'. Provided: 'device'"),
])
def test_telemetry_errors(server, name, parameters, message):
    assert error(ask(server, name, **parameters), 400, "ERROR_TELEMETRY") == message


@pytest.mark.parametrize("data, fragment", [
    (b"{not json", "Malformed JSON body"),
    (b"[]", "requestObject"),
    (b'{"requestObject": {"parameters": {}}}', "requestObject.name - must not be blank"),
    (b'{"requestObject": {"name": "  "}}', "requestObject.name - must not be blank"),
    (b'{"requestObject": {"name": "CURRENT_MAU", "parameters": "application=x"}}',
     "requestObject.parameters - must be a JSON object"),
])
def test_malformed_requests(server, data, fragment):
    reply = requests.post(server.url + REPORT_PATH, data=data, timeout=5,
                          headers={"Authorization": f"Bearer {REPORT_KEY}", "Content-Type": "application/json"})
    assert fragment in error(reply, 400, "ERROR_HTTP_REQUEST")


@pytest.mark.parametrize("headers", [{}, {"Authorization": f"Bearer {INGEST_KEY}"}, {"X-API-KEY": REPORT_KEY},
                                     {"Authorization": "Bearer wrong"}, {"Authorization": REPORT_KEY},
                                     {"X-API-KEY": INGEST_KEY}])
def test_unauthorized_including_the_ingest_key(server, headers):
    reply = requests.post(server.url + REPORT_PATH, headers=headers, timeout=5,
                          json={"requestObject": {"name": "CURRENT_MAU", "parameters": {"application": APP}}})
    error(reply, 401, "ERROR_UNAUTHORIZED")


def test_no_report_key_means_nobody_reads():
    with CollectorServer(api_keys=[INGEST_KEY]) as server:
        error(ask(server, "CURRENT_MAU", application=APP), 401, "ERROR_UNAUTHORIZED")
        error(ask(server, "CURRENT_MAU", key="", application=APP), 401, "ERROR_UNAUTHORIZED")


def test_a_report_key_cannot_be_an_ingest_key():
    with pytest.raises(ValueError, match="report key"):
        make_app(Store(), api_keys=["same"], report_keys=["same"])


def test_unknown_rest_paths_and_methods(server):
    reply = requests.post(server.url + "/rest/v3/telemetry/nope", timeout=5, json={})
    assert "nope" in error(reply, 404, "ERROR_NOT_FOUND")
    reply = requests.get(server.url + REPORT_PATH, timeout=5)
    error(reply, 405, "ERROR_HTTP_REQUEST")
    assert reply.headers["Allow"] == "POST"


def test_collector_cli_takes_report_keys():
    args = add_arguments(argparse.ArgumentParser()).parse_args(["--report-key", "a", "--report-key", "b"])
    assert args.report_keys == ["a", "b"]


# -- the pure module ---------------------------------------------------------------------------
def test_payload_source_matches_the_store():
    payloads = [event(NOW - 10, user="ann", install="i1"), event(NOW - 10, install="i2"),
                event(NOW - 2 * DAY, user="bob"), event(NOW, user="x", product="other")]
    store = Store()
    for payload in payloads:
        store.add("usage", payload)
    document = {"requestObject": {"name": "USERS_IN_PAST_DAYS", "parameters": {"application": APP, "days": 1}}}
    from_store = reports.generate(document, reports.store_source(store), now=NOW)
    from_log = reports.generate(document, reports.payload_source(payloads), now=NOW)
    assert from_store == from_log == (200, {"status": "OK", "responseObject": {
        "name": "USERS_IN_PAST_DAYS", "reportData": {"application": APP, "days": 1, "users": 2}}})


# -- callhome report ---------------------------------------------------------------------------
def run_cli(capsys, *argv: str) -> tuple[int, dict]:
    code = cli.main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


def test_cli_report_from_the_collector(server, capsys):
    ingest(server, event(NOW - 10, user="ann"), event(NOW - 20, install="i1"))
    code, envelope = run_cli(capsys, "report", "CURRENT_MAU", "--application", APP,
                             "--url", server.url, "--report-key", REPORT_KEY)
    assert code == 0
    assert envelope["responseObject"]["reportData"] == {"application": APP, "days": 30, "users": 2}
    code, envelope = run_cli(capsys, "report", "USERS_IN_PAST_DAYS", "--application", APP, "--identity",
                             "install", "--days", "30", "--url", server.url, "--report-key", REPORT_KEY)
    assert (code, envelope["responseObject"]["reportData"]["users"]) == (0, 1)


def test_cli_report_takes_the_window(server, capsys):
    now = int(time.time())
    ingest(server, event(now, user="today"), event(now // DAY * DAY - 60, user="yesterday-late"))
    counts = {}
    for window in ("rolling", "calendar"):
        code, envelope = run_cli(capsys, "report", "USERS_IN_PAST_DAYS", "--application", APP, "--days", "1",
                                 "--window", window, "--url", server.url, "--report-key", REPORT_KEY)
        counts[window] = (code, envelope["responseObject"]["reportData"]["users"])
    assert counts == {"rolling": (0, 2), "calendar": (0, 1)}  # calendar day 1 starts at midnight UTC


def test_cli_report_errors_exit_1(server, capsys):
    code, envelope = run_cli(capsys, "report", "USERS_IN_PAST_DAYS", "--application", APP,
                             "--url", server.url, "--report-key", REPORT_KEY)
    assert code == 1 and envelope["responseObject"]["code"] == "ERROR_TELEMETRY"
    code, envelope = run_cli(capsys, "report", "CURRENT_MAU", "--application", APP,
                             "--url", server.url, "--report-key", INGEST_KEY)
    assert code == 1 and envelope["responseObject"]["code"] == "ERROR_UNAUTHORIZED"


@pytest.mark.parametrize("argv", [["report", "CURRENT_MAU"],
                                  ["report", "CURRENT_MAU", "--application", APP, "--url", "http://x"],
                                  ["report", "CURRENT_MAU", "--application", APP, "--days", "many"],
                                  ["report", "CURRENT_MAU", "--application", APP, "--identity", "device"]])
def test_cli_report_bad_usage_exits_2(argv, capsys):
    assert cli.main(argv) == 2


def test_cli_report_from_the_local_sent_log(tmp_path, capsys, monkeypatch):
    state = tmp_path / "mystate"
    directory = state / APP
    directory.mkdir(parents=True)
    now = int(time.time())
    entries = [{"outcome": "ok", "payload": event(now - 10, user="ann", install="i1")},
               {"outcome": "ok", "payload": event(now - 20, install="i2")},
               {"outcome": "rejected", "payload": event(now - 30, user="never-arrived")},
               {"outcome": "ok", "payload": event(now - 40 * DAY, user="too-old")}]
    (directory / "sent.log").write_text("".join(json.dumps(e) + "\n" for e in entries) + "garbage\n")
    code, envelope = run_cli(capsys, "report", "current_mau", "--application", APP, "--dir", str(state))
    assert code == 0
    assert envelope == {"status": "OK", "responseObject": {
        "name": "CURRENT_MAU", "reportData": {"application": APP, "days": 30, "users": 2}}}
    monkeypatch.setenv("CALLHOME_DIR", str(state))
    code, envelope = run_cli(capsys, "report", "CURRENT_MAU", "--application", APP, "--identity", "install")
    assert (code, envelope["responseObject"]["reportData"]["users"]) == (0, 2)


# -- window: "calendar" (P6) -------------------------------------------------------------------
#: Midnight UTC of the day before NOW's, and a frozen "now" at 13:30:15 UTC that day: calendar days
#: then begin at a midnight well apart from "now - N x 24 h".
MIDNIGHT = (NOW // DAY - 1) * DAY
AFTERNOON = MIDNIGHT + 13 * 3600 + 30 * 60 + 15


def frozen_at(moment: int):
    return freeze_time(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(moment)), tick=False)


def users(server, window: str | None = None, name: str = "USERS_IN_PAST_DAYS", **parameters) -> int:
    if window is not None:
        parameters["window"] = window
    return ok(ask(server, name, application=APP, **parameters))["reportData"]["users"]


def test_calendar_day_one_is_today_so_far(server):
    ingest(server, event(MIDNIGHT, user="midnight"), event(MIDNIGHT - 1, user="yesterday"),
           event(AFTERNOON, user="now"), event(AFTERNOON + 1, user="future"))
    with frozen_at(AFTERNOON):
        assert users(server, "calendar", days=1) == 2  # midnight and now
        assert users(server, "rolling", days=1) == 3  # 24 h back reaches yesterday's last second
        assert users(server, days=1) == 3  # rolling is the default


def test_calendar_window_starts_at_midnight_days_minus_one_ago(server):
    start = MIDNIGHT - 2 * DAY  # days=3: the day before yesterday, yesterday and today
    ingest(server, event(start, user="edge"), event(start - 1, user="older"),
           event(AFTERNOON - 3 * DAY, user="rolling-edge"), event(AFTERNOON - 3 * DAY - 1, user="oldest"),
           event(AFTERNOON, user="now"))
    with frozen_at(AFTERNOON):
        assert users(server, "calendar", days=3) == 2  # edge and now
        assert users(server, "rolling", days=3) == 4  # 72 h back: all but oldest
        assert users(server, "calendar", days="4") == 5  # from midnight three days ago: all


def test_calendar_window_at_the_day_edges(server):
    ingest(server, event(MIDNIGHT - 1, user="last-second-of-yesterday"), event(MIDNIGHT, user="first-second"))
    with frozen_at(MIDNIGHT - 1):  # 23:59:59: today is still yesterday
        assert users(server, "calendar", days=1) == 1
    with frozen_at(MIDNIGHT):  # 00:00:00: a new day has begun, with one record in it so far
        assert users(server, "calendar", days=1) == 1
        assert users(server, "calendar", days=2) == 2
        assert users(server, "rolling", days=1) == 2


def test_calendar_window_applies_to_current_mau(server):
    start = MIDNIGHT - 29 * DAY
    ingest(server, event(start, user="edge"), event(start - 1, user="older"))
    with frozen_at(AFTERNOON):
        assert users(server, "calendar", name="CURRENT_MAU") == 1
        assert users(server, "rolling", name="CURRENT_MAU") == 2  # 30 x 24 h back reaches both


@pytest.mark.parametrize("window", ["CALENDAR", " Calendar "])
def test_window_is_case_insensitive(server, window):
    ingest(server, event(MIDNIGHT - 1, user="yesterday"))
    with frozen_at(AFTERNOON):
        assert users(server, window, days=1) == 0


@pytest.mark.parametrize("window", ["weekly", "", None, 1, ["calendar"]])
def test_window_must_be_rolling_or_calendar(server, window):
    message = error(ask(server, "USERS_IN_PAST_DAYS", application=APP, days=1, window=window), 400,
                    "ERROR_TELEMETRY")
    assert message == f"The parameter 'window' must be 'rolling' or 'calendar'. Provided: {window!r}"


def test_window_function():
    assert reports.window(2, AFTERNOON) == (AFTERNOON - 2 * DAY, AFTERNOON)
    assert reports.window(2, AFTERNOON, "rolling") == (AFTERNOON - 2 * DAY, AFTERNOON)
    assert reports.window(2, AFTERNOON, "calendar") == (MIDNIGHT - DAY, AFTERNOON)
    assert reports.window(1, MIDNIGHT, "calendar") == (MIDNIGHT, MIDNIGHT)
    assert reports.window(1, MIDNIGHT - 0.5, "calendar") == (MIDNIGHT - DAY, MIDNIGHT - 0.5)
