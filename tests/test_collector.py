"""The embedded collector: a real server on an ephemeral loopback port, real HTTP requests."""

from __future__ import annotations

import io
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import wsgiref.util
import wsgiref.validate

import pytest
import requests

from callhome.collector import CollectorServer, Store, _gateway, make_app
from callhome.collector.faults import parse_action
from callhome.collector.server import add_arguments
from callhome.schema import AGGREGATE_PATH, USAGE_PATH

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUCCESS = {"response_code": "200", "response": "Data Uploaded", "status": "success"}
AUTH_FAILURE = {"response_code": 400, "response": "Authentication Failure", "status": "failure"}
KEYS = ("first-key", "second-key")
_ids = itertools.count()


def usage(**changes) -> dict:
    payload = {"activity_type": "CALL_HOME", "source": "TELEMETRY", "ip_addr": "192.0.2.7",
               "event_id": f"ev-{next(_ids)}", "event_at": int(time.time()), "product_id": "acme",
               "user_agent": "acme/1.0"}
    payload.update(changes)
    return {key: value for key, value in payload.items() if value is not None}


def aggregate(**changes) -> dict:
    return usage(**{"mode": "DOMAIN", "count": 12, "user_agent": None, **changes})


@pytest.fixture
def server():
    with CollectorServer() as running:
        yield running


@pytest.fixture
def keyed():
    with CollectorServer(api_keys=KEYS) as running:
        yield running


def post(server: CollectorServer, payload: object, path: str = USAGE_PATH, **kwargs) -> requests.Response:
    kwargs.setdefault("timeout", 5)
    return requests.post(server.url + path, json={"payload": payload}, **kwargs)


def post_raw(server: CollectorServer, data: bytes, content_type: str = "application/json",
             **kwargs) -> requests.Response:
    return requests.post(server.url + USAGE_PATH, data=data, headers={"Content-Type": content_type},
                         timeout=5, **kwargs)


# -- ingest -----------------------------------------------------------------------------------

def test_usage_event_is_stored_and_answered_like_reo(server):
    payload = usage(meta={"plan": "free"})
    answer = post(server, payload)
    assert answer.status_code == 200
    assert answer.json() == SUCCESS and answer.json()["response_code"] == "200"
    [record] = server.store.events()
    assert record["kind"] == "usage" and record["event_id"] == payload["event_id"]
    assert record["payload"] == payload and record["peer"] == "127.0.0.1" and record["count"] == 1
    assert server.app.received == server.store.count() == 1


def test_aggregate_record_keeps_its_count(server):
    answer = post(server, aggregate(count=1250), AGGREGATE_PATH)
    assert answer.json() == SUCCESS
    [record] = server.store.events(kind="aggregate")
    assert record["count"] == 1250 and record["activity_type"] == "CALL_HOME"


def test_repeated_event_id_is_answered_but_stored_once(server):
    payload = usage()
    assert [post(server, payload).json() for _ in range(3)] == [SUCCESS] * 3
    assert server.store.count() == 1
    assert server.store.stats()["duplicates"] == 2


def test_same_event_id_on_both_endpoints_is_two_records(server):
    post(server, usage(event_id="shared"))
    post(server, aggregate(event_id="shared"), AGGREGATE_PATH)
    assert server.store.count(kind="usage") == server.store.count(kind="aggregate") == 1


def test_store_add_reports_new_or_duplicate():
    store = Store()
    assert store.add("usage", usage(event_id="x")) is True
    assert store.add("usage", usage(event_id="x")) is False
    with pytest.raises(ValueError):
        store.add("other", usage())


INVALID_USAGE = [
    ({"activity_type": None}, "activity_type"),
    ({"product_id": None}, "product_id"),
    ({"product_id": 7}, "product_id"),
    ({"source": "WEB"}, "source"),
    ({"user_id": "ada@example.com"}, "user_id_type"),
    ({"user_id": "ada", "user_id_type": "PHONE"}, "user_id_type"),
    ({"ip_addr": "999.1.1.1"}, "ip_addr"),
    ({"ip_addr": None, "domain": "not a domain"}, "domain"),
    ({"ip_addr": None}, "ip_addr"),
    ({"user_agent": None}, "user_agent"),
    ({"event_id": None}, "event_id"),
    ({"event_id": 1231231232}, "event_id"),
    ({"event_at": "1700000000"}, "event_at"),
    ({"event_at": 639303296}, "event_at"),
    ({"meta": ["a"]}, "meta"),
    ({"meta": {"nested": {"a": 1}}}, "meta.nested"),
    ({"environment": ""}, "environment"),
    ({"surprise": 1}, "surprise"),
]
INVALID_AGGREGATE = [
    ({"mode": None}, "mode"),
    ({"mode": "USER"}, "mode"),
    ({"user_id": "ada", "user_id_type": "USERNAME"}, "user_id"),
    ({"count": 0}, "count"),
    ({"count": None}, "count"),
]


@pytest.mark.parametrize("path, changes, field", [(USAGE_PATH, *case) for case in INVALID_USAGE]
                         + [(AGGREGATE_PATH, *case) for case in INVALID_AGGREGATE])
def test_each_rule_is_refused_naming_its_field(server, path, changes, field):
    answer = post(server, aggregate(**changes) if path == AGGREGATE_PATH else usage(**changes), path)
    assert answer.status_code == 400
    body = answer.json()
    assert body["response_code"] == 400 and body["status"] == "failure"
    first = body["errors"][0]
    assert body["response"] == f"Invalid payload: {first['field']}: {first['message']}"
    assert field in [error["field"] for error in body["errors"]], body
    assert server.store.count() == 0 and server.store.stats()["rejected"] == 1


@pytest.mark.parametrize("data, fragment", [
    (b'{"payload": ', "Malformed JSON"),
    (b"", "Malformed JSON"),
    (b"\xff\xfe\x00", "Malformed JSON"),
    (b'[{"payload": {}}]', '{"payload": {...}}'),
    (b'{"event_id": "x"}', '{"payload": {...}}'),
    (b'{"payload": [1]}', "payload: must be a JSON object"),
    (b'{"payload": {"meta": {"x": NaN}}}', "NaN is not JSON"),
    pytest.param(b"[" * 30000 + b"]" * 30000, "Malformed JSON", id="too-deep"),
])
def test_malformed_bodies_get_a_clear_400(server, data, fragment):
    answer = post_raw(server, data)
    assert answer.status_code == 400 and fragment in answer.json()["response"]
    assert answer.json()["status"] == "failure"


def test_content_type_must_be_json(server):
    answer = post_raw(server, json.dumps({"payload": usage()}).encode(), content_type="text/plain")
    assert answer.status_code == 415 and server.store.count() == 0
    answer = post_raw(server, json.dumps({"payload": usage()}).encode(), "application/json; charset=utf-8")
    assert answer.json() == SUCCESS


def test_lenient_mode_accepts_the_documentation_samples():
    sample = usage(event_id=1231231232, event_at=str(int(time.time())), user_id="", user_id_type="",
                   domain="")
    with CollectorServer(strict=False) as lenient:
        assert post(lenient, sample).json() == SUCCESS
        assert post(lenient, aggregate(event_id=None), AGGREGATE_PATH).json() == SUCCESS
        stored = lenient.store.events(kind="usage")[0]["payload"]
    assert stored["event_id"] == "1231231232" and "domain" not in stored
    assert isinstance(stored["event_at"], int)


def test_fill_ip_addr_gives_relayed_records_the_peer_address():
    with CollectorServer(fill_ip_addr=True) as relay:
        assert post(relay, usage(ip_addr=None)).json() == SUCCESS
        assert post(relay, usage(ip_addr=None, domain="example.com")).json() == SUCCESS
        stored = [record["payload"] for record in relay.store.events()]
    assert stored[1]["ip_addr"] == "127.0.0.1" and "ip_addr" not in stored[0]


# -- authentication ---------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"X-API-KEY": "wrong"}, {"X-API-KEY": ""},
                                     {"X_API_KEY": "first-key"}])
def test_missing_or_wrong_key_gets_reos_auth_failure(keyed, headers):
    answer = post(keyed, usage(), headers=headers)
    assert answer.status_code == 400 and answer.json() == AUTH_FAILURE
    assert keyed.store.count() == 0 and keyed.store.stats()["auth_failures"] == 1


@pytest.mark.parametrize("name, key", [("X-API-KEY", "first-key"), ("x-api-key", "second-key"),
                                       ("X-Api-Key", "first-key")])
def test_any_configured_key_is_accepted_whatever_the_header_case(keyed, name, key):
    assert post(keyed, usage(), headers={name: key}).json() == SUCCESS


def test_auth_is_checked_before_the_payload(keyed):
    assert post(keyed, {"nonsense": True}).json() == AUTH_FAILURE


def test_read_endpoints_need_a_key_when_keys_are_set(keyed):
    assert requests.get(keyed.url + "/events", timeout=5).status_code == 401
    assert requests.get(keyed.url + "/stats", headers={"X-API-KEY": KEYS[1]}, timeout=5).status_code == 200
    assert requests.get(keyed.url + "/healthz", timeout=5).json() == {"status": "ok"}


# -- limits and routing -----------------------------------------------------------------------

def _padded(size: int) -> bytes:
    """A valid request body of exactly ``size`` bytes."""
    body = json.dumps({"payload": usage()}).encode()
    return body[:-1] + b" " * (size - len(body)) + b"}"


def test_body_at_the_cap_is_accepted_one_byte_more_is_413():
    with CollectorServer(max_body=2048) as small:
        assert post_raw(small, _padded(2048)).json() == SUCCESS
        answer = post_raw(small, _padded(2049))
        assert answer.status_code == 413 and answer.json()["status"] == "failure"
        assert small.store.count() == 1 and small.store.stats()["rejected"] == 1


def test_huge_body_gets_413_not_a_reset(server):
    answer = post_raw(server, b"{" + b" " * (_gateway.DRAIN_LIMIT + 65536) + b"}")
    assert answer.status_code == 413
    assert post(server, usage()).json() == SUCCESS


def test_app_reads_at_most_max_body_plus_one_byte_without_a_length():
    class Input(io.BytesIO):
        reads: list = []

        def read(self, size=-1):
            self.reads.append(size)
            return super().read(size)

    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": USAGE_PATH, "CONTENT_TYPE": "application/json",
               "wsgi.input": Input(b"x" * 10 ** 6), "wsgi.input_terminated": True}
    answers = []
    make_app(Store(), max_body=100)(environ, lambda status, headers: answers.append(status))
    assert answers[0].startswith("413 ") and Input.reads == [101]


def test_app_is_a_valid_wsgi_application():
    app = wsgiref.validate.validator(make_app(Store()))
    body = json.dumps({"payload": usage()}).encode()
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": USAGE_PATH, "CONTENT_TYPE": "application/json",
               "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body), "SCRIPT_NAME": "",
               "QUERY_STRING": ""}
    wsgiref.util.setup_testing_defaults(environ)
    answers = []
    result = app(environ, lambda status, headers, exc_info=None: answers.append(status))
    assert json.loads(b"".join(result)) == SUCCESS and answers == ["200 OK"]
    result.close()


def test_unknown_path_is_a_json_404(server):
    answer = requests.post(server.url + "/api/product/other", json={}, timeout=5)
    assert answer.status_code == 404 and answer.json()["status"] == "failure"


@pytest.mark.parametrize("method, path, allow", [("GET", USAGE_PATH, "POST"), ("PUT", AGGREGATE_PATH, "POST"),
                                                 ("POST", "/events", "GET, HEAD"),
                                                 ("DELETE", "/stats", "GET, HEAD")])
def test_wrong_method_is_405(server, method, path, allow):
    answer = requests.request(method, server.url + path, timeout=5)
    assert answer.status_code == 405 and answer.headers["Allow"] == allow


# -- fault injection --------------------------------------------------------------------------

def test_scripted_statuses_are_consumed_in_order_and_not_stored(server):
    server.app.script(503, 500)
    answers = [post(server, usage()) for _ in range(3)]
    assert [a.status_code for a in answers] == [503, 500, 200]
    assert answers[0].json() == {"response_code": 503, "status": "failure",
                                 "response": "Service Unavailable (injected fault)"}
    assert server.store.count() == 1 and server.store.stats()["faults"] == 2


def test_scripted_headers_and_body(server):
    server.app.script((429, {"Retry-After": "2"}), (400, {}, {"custom": True}))
    first, second = post(server, usage()), post(server, usage())
    assert first.status_code == 429 and first.headers["Retry-After"] == "2"
    assert second.status_code == 400 and second.json() == {"custom": True}


def test_scripted_auth_failure_even_without_keys(server):
    server.app.script("auth")
    answer = post(server, usage())
    assert answer.status_code == 400 and answer.json() == AUTH_FAILURE


def test_reset_drops_the_connection_unanswered(server):
    server.app.script("reset")
    with pytest.raises(requests.ConnectionError) as caught:
        post(server, usage())
    assert "reset" in str(caught.value).lower()
    assert post(server, usage()).json() == SUCCESS and server.store.count() == 1


def test_hang_outlasts_a_client_read_timeout(server):
    server.app.script("hang:0.5")
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        post(server, usage(), timeout=0.2)
    assert time.monotonic() - started < 0.45


def test_fail_all_until_cleared(server):
    server.app.fail_all(503)
    assert [post(server, usage()).status_code for _ in range(3)] == [503] * 3
    server.app.script(429)  # the script goes first
    assert post(server, usage()).status_code == 429
    server.app.fail_all(None)
    assert post(server, usage()).status_code == 200
    server.app.fail_all((502, {"X-Why": "test"}))
    server.app.clear_faults()
    assert post(server, usage()).status_code == 200 and server.app.pending_faults == 0


def test_faults_only_touch_ingest_posts(server):
    server.app.script(503)
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
    assert requests.get(server.url + USAGE_PATH, timeout=5).status_code == 405
    assert post(server, usage()).status_code == 503


@pytest.mark.parametrize("action", ["boom", "hang:", "hang:-1", 99, 600, True, (503,), ("503", {}),
                                    (503, {}, {}, {})])
def test_bad_actions_are_refused_up_front(server, action):
    with pytest.raises(ValueError):
        server.app.script(action)
    with pytest.raises(ValueError):
        parse_action(action)


# -- connections ------------------------------------------------------------------------------

def test_keep_alive_reuses_one_connection(server):
    server.app.script(503)
    with requests.Session() as session:
        for _ in range(5):
            session.post(server.url + USAGE_PATH, json={"payload": usage()}, timeout=5)
        session.post(server.url + USAGE_PATH, data=b"x" * 100, timeout=5)  # unread body: drained
        session.get(server.url + "/nowhere", timeout=5)
        assert session.get(server.url + "/stats", timeout=5).json()["events"] == 4
    assert server.connections == 1


def test_accepted_sockets_have_nodelay(server):
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200 OK" in client.recv(4096)
        [accepted] = list(server._server._open)
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def raw_exchange(server: CollectorServer, request: bytes) -> bytes:
    """Send ``request`` on a fresh connection; everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
        client.sendall(request)
        chunks = []
        while True:
            chunk = client.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /healthz HTTP/1.0\r\n\r\n", b"200"),
    (b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n", b"200"),
    (b"NONSENSE\r\n\r\n", b"400"),
    (b"GET /healthz HTTP/2.0\r\n\r\n", b"400"),
    (b"GET /healthz HTTP/1.1\r\nBad Header: x\r\n\r\n", b"400"),
    (b"GET /healthz HTTP/1.1\r\nX: 1\r\n folded\r\n\r\n", b"400"),
    (b"POST /api/product/usage HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"411"),
    (b"POST /api/product/usage HTTP/1.1\r\nContent-Length: -4\r\n\r\n", b"411"),
])
def test_the_server_closes_after_requests_it_cannot_keep_alive(server, request_bytes, status):
    answer = raw_exchange(server, request_bytes)
    assert answer.startswith(b"HTTP/1.") and answer.split(b" ")[1] == status, answer


def test_idle_connections_time_out(server, monkeypatch):
    monkeypatch.setattr(_gateway.WSGIRequestHandler, "timeout", 0.2)
    started = time.monotonic()
    assert raw_exchange(server, b"") == b""
    assert time.monotonic() - started < 3


def test_stop_closes_keep_alive_connections_promptly():
    server = CollectorServer()
    with requests.Session() as session:
        assert session.get(server.url + "/healthz", timeout=5).status_code == 200
        started = time.monotonic()
        server.stop()
        server.stop()  # idempotent
        assert time.monotonic() - started < 1
        with pytest.raises(requests.ConnectionError):
            session.get(server.url + "/healthz", timeout=2)
    assert repr(server).endswith("stopped>")


def test_a_crashing_app_answers_500_and_the_server_lives_on():
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/boom":
            raise RuntimeError("boom")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"fine"]

    with CollectorServer(app=app) as running, requests.Session() as session:
        assert session.get(running.url + "/boom", timeout=5).status_code == 500
        assert session.get(running.url + "/fine", timeout=5).text == "fine"
        assert running.connections == 1 and running.store is None


# -- read-only views --------------------------------------------------------------------------

def test_events_filters_and_order(server):
    for product, activity in [("acme", "CALL_HOME"), ("acme", "secondary1"), ("other", "secondary1")]:
        post(server, usage(product_id=product, activity_type=activity))
    post(server, aggregate(product_id="acme"), AGGREGATE_PATH)

    def ids(**params):
        answer = requests.get(server.url + "/events", params=params, timeout=5)
        return [(e["kind"], e["payload"]["product_id"], e["activity_type"]) for e in answer.json()["events"]]

    assert ids() == [("aggregate", "acme", "CALL_HOME"), ("usage", "other", "secondary1"),
                     ("usage", "acme", "secondary1"), ("usage", "acme", "CALL_HOME")]
    assert ids(limit=1) == ids()[:1]
    assert ids(product_id="acme", activity_type="secondary1") == [("usage", "acme", "secondary1")]
    assert ids(kind="aggregate") == [("aggregate", "acme", "CALL_HOME")]
    assert ids(since=time.time() + 60) == []
    assert len(ids(limit=10 ** 6)) == 4


@pytest.mark.parametrize("query", ["limit=ten", "since=yesterday", "kind=single"])
def test_events_refuses_bad_parameters(server, query):
    assert requests.get(f"{server.url}/events?{query}", timeout=5).status_code == 400


def test_stats_counts_everything(keyed):
    good = {"X-API-KEY": KEYS[0]}
    duplicate = usage()
    post(keyed, duplicate, headers=good)
    post(keyed, duplicate, headers=good)
    post(keyed, aggregate(), AGGREGATE_PATH, headers=good)
    post(keyed, usage(source="WEB"), headers=good)
    post(keyed, usage())
    keyed.app.script(503)
    post(keyed, usage(), headers=good)
    stats = requests.get(keyed.url + "/stats", headers=good, timeout=5).json()
    assert {k: v for k, v in stats.items() if k != "paths"} == {
        "events": 2, "usage": 1, "aggregate": 1, "requests": 6, "duplicates": 1, "rejected": 1,
        "auth_failures": 1, "faults": 1}
    assert stats["paths"] == {USAGE_PATH: 5, AGGREGATE_PATH: 1, "/stats": 1}
    assert keyed.app.requests[USAGE_PATH] == 5 and keyed.app.requests.total == 7


# -- the store on disk ------------------------------------------------------------------------

def test_file_store_uses_wal_and_keeps_counters_across_restarts(tmp_path):
    path = str(tmp_path / "events.sqlite3")
    store = Store(path)
    store.add("usage", usage(event_id="a"))
    store.add("usage", usage(event_id="a"))
    store.bump("rejected")
    store.close()
    store.close()
    reopened = Store(path)
    assert reopened._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert reopened._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    stats = reopened.stats()
    assert (stats["events"], stats["duplicates"], stats["rejected"]) == (1, 1, 1)


def test_store_is_thread_safe():
    store = Store()

    def add_many(worker: int) -> None:
        for number in range(200):
            store.add("usage", usage(event_id=f"{number % 100}-{worker % 2}"))

    threads = [threading.Thread(target=add_many, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.count() == 200 and store.stats()["duplicates"] == 600


# -- the command line -------------------------------------------------------------------------

def test_add_arguments_defaults():
    import argparse

    args = add_arguments(argparse.ArgumentParser()).parse_args(["--api-key", "a", "--api-key", "b"])
    assert (args.host, args.port, args.api_keys, args.max_body, args.verbose, args.lenient,
            args.fill_ip_addr) == ("127.0.0.1", 8765, ["a", "b"], 64 * 1024, False, False, False)


def test_command_line_serves_until_sigterm(tmp_path):
    db = str(tmp_path / "cli.sqlite3")
    argv = ["--port", "0", "--db", db, "--api-key", "k"]
    code = f"from callhome.collector.server import main; raise SystemExit(main({argv!r}))"
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        line = process.stderr.readline()
        assert line.startswith("callhome collector listening on http://127.0.0.1:") and db in line
        url = line.split()[4]
        answer = requests.post(url + USAGE_PATH, json={"payload": usage()}, headers={"X-API-KEY": "k"},
                               timeout=5)
        assert answer.json() == SUCCESS
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert process.stderr.read() == ""  # no request logs without --verbose
    finally:
        process.kill()
        process.stderr.close()
    assert Store(db).count() == 1


def test_lone_surrogates_are_refused_not_a_server_error(server):
    body = '{"payload": {"activity_type": "build \\ud800"}}'
    reply = requests.post(server.url + "/api/product/usage", data=body.encode(),
                          headers={"Content-Type": "application/json", "X-API-KEY": KEYS[0]})
    assert reply.status_code == 400 and "Unicode" in reply.json()["response"]
