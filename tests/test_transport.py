"""callhome.transport: classifying answers (a table) and HttpTransport against the real collector."""

from __future__ import annotations

import time

import pytest
from conftest import API_KEY

from callhome.collector import CollectorServer, Store, make_app
from callhome.collector.app import AUTH_FAILURE, SUCCESS
from callhome.payload import new_event_id
from callhome.sender.transport import (AUTH, MISCONFIGURED_DELAY, OK, REJECTED, RETRY, ClientTransport, HttpTransport,
                                       classify, open_transport)


def failure(status, message="bad"):
    return {"response_code": status, "response": message, "status": "failure"}


@pytest.mark.parametrize("status, body, outcome", [
    (200, SUCCESS, OK),
    (200, {"status": "SUCCESS"}, OK),
    (201, {"status": "success", "response": "Data Uploaded"}, OK),
    (200, None, OK),                                  # empty or non-JSON body
    (204, None, OK),
    (202, None, OK),
    (200, failure(200, "Invalid payload"), REJECTED),  # 2xx whose body says failure
    (200, {"status": "failure"}, REJECTED),
    (400, AUTH_FAILURE, AUTH),                        # Reo's documented auth failure
    (200, AUTH_FAILURE, AUTH),                        # ... whatever the HTTP status
    (401, None, AUTH),
    (403, None, AUTH),
    (401, failure(401, "Unauthorized"), AUTH),
    (400, failure(400, "Invalid payload: event_at: is required"), REJECTED),
    (400, None, REJECTED),
    (413, failure(413, "Body larger than 65536 bytes"), REJECTED),
    (415, None, REJECTED),
    (422, failure(422, "Unprocessable"), REJECTED),
])
def test_classify_outcome(status, body, outcome):
    result = classify(status, body)
    assert (result.outcome, result.status) == (outcome, status)
    if outcome == AUTH:
        assert result.detail


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
@pytest.mark.parametrize("retry_after, wait", [("7", 7.0), (None, None), ("garbage", None)])
def test_classify_transient_failures_honour_retry_after(status, retry_after, wait):
    result = classify(status, failure(status, "busy"), retry_after, now=1_795_440_000.0)
    assert (result.outcome, result.retry_after) == (RETRY, wait)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308, 404, 405])
def test_classify_misconfigured_endpoint_retries_slowly(status):
    result = classify(status, failure(status, "No such endpoint"))
    assert result.outcome == RETRY
    assert result.retry_after == MISCONFIGURED_DELAY >= 60.0


# -- both transports against the collector --------------------------------------------------------

#: Every test below runs with each transport: they must not differ in anything the sender sees.
TRANSPORTS = [HttpTransport, ClientTransport]


@pytest.fixture(params=TRANSPORTS, ids=lambda cls: cls.__name__)
def transport_class(request):
    return request.param


def payload(**changes):
    base = {"activity_type": "secondary1", "source": "TELEMETRY", "domain": "example.com",
            "event_id": new_event_id(), "event_at": int(time.time()), "product_id": "transport-test",
            "user_agent": "transport-test callhome/test", "meta": {"k": "v"}}
    base.update(changes)
    return base


@pytest.fixture
def transport(collector, transport_class):
    t = transport_class(collector.url, API_KEY, timeout=2.0)
    yield t
    t.close()


def test_send_success(transport, collector):
    sent = payload()
    result = transport.send("usage", sent)
    assert (result.outcome, result.status) == (OK, 200)
    [stored] = collector.store.events(limit=10)
    assert stored["payload"] == sent and stored["kind"] == "usage"


def test_send_aggregate_goes_to_its_endpoint(transport, collector):
    result = transport.send("aggregate", payload(mode="DOMAIN", count=3))
    assert result.outcome == OK
    assert collector.store.count(kind="aggregate") == 1
    assert collector.app.requests["/api/product/aggregateusage"] == 1


@pytest.mark.parametrize("fault, outcome, status, retry_after", [
    (503, RETRY, 503, None),
    ((429, {"Retry-After": "2"}), RETRY, 429, 2.0),
    ((500, {"Retry-After": "30"}), RETRY, 500, 30.0),
    ("auth", AUTH, 400, None),
    (413, REJECTED, 413, None),
    ((200, {}, {"status": "failure", "response": "rejected by a proxy"}), REJECTED, 200, None),
    ("reset", RETRY, None, None),
])
def test_send_classifies_injected_faults(transport, collector, fault, outcome, status, retry_after):
    collector.app.script(fault)
    result = transport.send("usage", payload())
    assert (result.outcome, result.status, result.retry_after) == (outcome, status, retry_after)
    assert collector.store.count() == 0
    assert transport.send("usage", payload()).outcome == OK  # and the next request goes through


def test_send_times_out_on_a_hanging_server(collector, transport_class):
    t = transport_class(collector.url, API_KEY, timeout=0.3)
    collector.app.script("hang:1")
    started = time.monotonic()
    result = t.send("usage", payload())
    assert time.monotonic() - started < 0.9
    assert (result.outcome, result.status) == (RETRY, None)
    assert "Timeout" in result.detail
    t.close()


def test_send_wrong_key_is_auth(collector, transport_class):
    t = transport_class(collector.url, "not-the-key", timeout=2.0)
    assert t.send("usage", payload()).outcome == AUTH
    t.close()


def test_send_invalid_payload_is_rejected(transport, collector):
    result = transport.send("usage", payload(event_at="yesterday"))
    assert (result.outcome, result.status) == (REJECTED, 400)
    assert "event_at" in result.detail


def test_send_to_a_wrong_path_is_misconfiguration(collector, transport_class):
    t = transport_class(collector.url + "/v2", API_KEY, timeout=2.0)
    result = t.send("usage", payload())
    assert (result.outcome, result.status, result.retry_after) == (RETRY, 404, MISCONFIGURED_DELAY)
    t.close()


def test_send_to_nothing_listening_is_retry_and_never_raises(transport_class):
    with CollectorServer() as server:
        url = server.url
    t = transport_class(url, API_KEY, timeout=1.0)
    result = t.send("usage", payload())
    assert (result.outcome, result.status) == (RETRY, None)
    assert API_KEY not in result.detail
    t.close()


class RecordingApp:
    """The collector's WSGI app, remembering the headers of every request."""

    def __init__(self, app):
        self.app, self.store, self.headers = app, app.store, []

    def __call__(self, environ, start_response):
        self.headers.append({k[5:].replace("_", "-").lower(): v for k, v in environ.items()
                             if k.startswith("HTTP_")} | {"content-type": environ.get("CONTENT_TYPE")})
        return self.app(environ, start_response)


def test_headers_and_connection_reuse(transport_class):
    app = RecordingApp(make_app(Store(), api_keys=[API_KEY]))
    with CollectorServer(app=app) as server:
        t = transport_class(server.url, API_KEY, timeout=2.0)
        sent = [payload() for _ in range(5)]
        assert [t.send("usage", p).outcome for p in sent] == [OK] * 5
        t.close()
        assert server.connections == 1
    assert server.store.count() == 5
    for headers, p in zip(app.headers, sent):
        assert headers["x-api-key"] == API_KEY
        assert headers["content-type"].split(";")[0] == "application/json"
        assert headers["idempotency-key"] == p["event_id"]
        assert headers["user-agent"].startswith("callhome/")


def test_no_api_key_header_without_a_key(transport_class):
    app = RecordingApp(make_app(Store()))
    with CollectorServer(app=app) as server:
        t = transport_class(server.url, None, timeout=2.0)
        assert t.send("usage", payload()).outcome == OK
        t.close()
    assert "x-api-key" not in app.headers[0]


def test_the_cheap_transport_is_chosen_unless_a_proxy_applies(monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                 "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    assert type(open_transport("https://ingest.example", None, 1.0)) is ClientTransport
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert type(open_transport("https://ingest.example", None, 1.0)) is HttpTransport
    monkeypatch.setenv("NO_PROXY", "ingest.example")
    assert type(open_transport("https://ingest.example", None, 1.0)) is ClientTransport


def test_a_large_answer_is_not_read_whole(transport_class):
    huge = b"x" * (4 * 1024 * 1024)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(huge)))])
        return [huge]

    with CollectorServer(app=app) as server:
        t = transport_class(server.url, API_KEY, timeout=2.0)
        result = t.send("usage", payload())
        t.close()
    assert result.outcome == OK  # a 2xx with a body that is not Reo's JSON is a delivery
