"""callhome.transport: classifying answers (a table), both transports against the real collector,
and both against a raw loopback server that answers badly (trickles, floods, resets, not JSON)."""

from __future__ import annotations

import select
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import tracemalloc

import pytest

from callhome.collector import CollectorServer, Store, make_app
from callhome.collector.app import AUTH_FAILURE, SUCCESS
from callhome.payload import new_event_id
from callhome.sender.transport import (
    AUTH,
    MISCONFIGURED_DELAY,
    OK,
    REJECTED,
    RETRY,
    ClientTransport,
    HttpTransport,
    classify,
    open_transport,
)

from conftest import API_KEY


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


def auth_body(code=400, response="Authentication Failure", status="failure"):
    return {"response_code": code, "response": response, "status": status}


@pytest.mark.parametrize("status, body, outcome", [
    # Reo's documented body, however its fields are spelled, whatever the HTTP status
    (400, auth_body(code="400"), AUTH),
    (400, auth_body(response="  authentication FAILURE "), AUTH),
    (400, auth_body(status="Failure"), AUTH),
    (503, auth_body(), AUTH),
    # a message that merely mentions a key, authentication or authorization is not a refused key
    (200, {"status": "success", "response": "Accepted; your API key expires in 3 days"}, OK),
    (201, {"status": "success", "message": "authentication ok"}, OK),
    (429, {"status": "failure", "response": "Rate limited per API key"}, RETRY),
    (503, {"message": "Authentication service unavailable"}, RETRY),
    (502, {"response": "Unauthorized upstream"}, RETRY),
    (500, failure(500, "api key store down"), RETRY),
    (400, failure(400, "Invalid API key header format"), REJECTED),
    (422, failure(422, "authentication field unknown"), REJECTED),
    # close to the documented body is not the documented body
    (400, auth_body(response="Authentication Failure: expired"), REJECTED),
    (400, auth_body(code=401), REJECTED),
    (400, auth_body(code=True), REJECTED),
    (200, auth_body(status="success"), OK),
])
def test_classify_auth_only_on_401_403_or_the_documented_body(status, body, outcome):
    assert classify(status, body).outcome == outcome


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
    ((200, {}, {"status": "success", "response": "Accepted; your API key expires in 3 days"}), OK, 200, None),
    ((429, {"Retry-After": "5"}, {"status": "failure", "response": "Rate limited per API key"}),
     RETRY, 429, 5.0),
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


# -- hostile answers, from a raw socket server --------------------------------------------------

#: The deadline of every request below: a whole request (connect, send, status line, headers,
#: body) must be over within it, however the server paces its bytes.
DEADLINE = 1.0
#: Scheduling slack on a shared machine.
SLACK = 0.5
TRICKLE_EVERY = 0.3
#: A trickling server gives up after this long, so that a client without a deadline fails the
#: test in seconds instead of hanging it.
TRICKLE_FOR = 4.0
HUGE = 200 * 1024 * 1024
#: A huge body is this buffer sent again and again: the server allocates nothing per byte sent.
CHUNK = b"x" * 65536
MiB = 1024 * 1024


class RawServer:
    """HTTP/1.1 on a raw loopback socket: the n-th request gets ``answers[n]``, later ones a success.

    An answer writes to the connection and returns whether the connection stays open. ``hung_up``
    is set when the client closed a connection while the server was still writing to it. With a
    server-side ``tls`` context it speaks HTTPS.
    """

    def __init__(self, *answers, tls=None):
        self.answers = list(answers)
        self.requests = 0
        self.hung_up = threading.Event()
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = "%s://127.0.0.1:%d" % ("https" if tls else "http", self.listener.getsockname()[1])
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stopping.set()
        self._thread.join(10)
        self.listener.close()

    def _serve(self):
        while self._readable(self.listener):
            conn, _ = self.listener.accept()
            conn.settimeout(5.0)
            with conn:
                try:
                    self._converse(self.tls.wrap_socket(conn, server_side=True) if self.tls else conn)
                except OSError:  # the client closed the connection: a deadline or a read cap did
                    self.hung_up.set()

    def _converse(self, conn):
        while self._read_request(conn):
            self.requests += 1
            answer = self.answers.pop(0) if self.answers else success
            if not answer(conn):
                return

    def _read_request(self, conn) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536) if self._readable(conn) else b""
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            body += conn.recv(65536)
        return True

    def _readable(self, sock) -> bool:
        """Wait until ``sock`` can be read; False once the test is over."""
        while not select.select([sock], [], [], 0.05)[0]:
            if self._stopping.is_set():
                return False
        return True


def head(status=200, length=None, content_type="application/json", extra=b""):
    length_line = b"Content-Length: %d\r\n" % length if length is not None else b""
    return b"HTTP/1.1 %d Whatever\r\nContent-Type: %s\r\n%s%s\r\n" % (
        status, content_type.encode(), length_line, extra)


def answer(status, body, content_type="application/json"):
    def send(conn):
        conn.sendall(head(status, len(body), content_type) + body)
        return True
    return send


success = answer(200, b'{"status": "success", "response": "Data Uploaded"}')


def trickle(sent_at_once, trickled):
    """Send ``sent_at_once``, then ``trickled`` one byte every TRICKLE_EVERY (for TRICKLE_FOR at most)."""
    def send(conn):
        conn.sendall(sent_at_once)
        ends = time.monotonic() + TRICKLE_FOR
        for i in range(len(trickled)):
            if time.monotonic() > ends:
                break
            time.sleep(TRICKLE_EVERY)
            conn.sendall(trickled[i:i + 1])
        return False
    return send


def huge_body(status=200, extra=b""):
    def send(conn):
        conn.sendall(head(status, HUGE, extra=extra))
        for _ in range(HUGE // len(CHUNK)):
            conn.sendall(CHUNK)
        return True
    return send


def reset_mid_body(conn):
    conn.sendall(head(200, 1000) + b" " * 100)
    time.sleep(0.1)  # the client has the status line and headers: the reset hits the body
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() sends RST
    return False


def peak_growth(call):
    """``call()``'s result and the peak growth, in bytes, of what Python allocated meanwhile
    (both threads: the server's streaming allocates nothing per chunk)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = call()
        return result, tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


@pytest.fixture(params=["ClientTransport", "HttpTransport", "HttpTransport-proxy"])
def connect(request, monkeypatch):
    """Make a transport to a RawServer: directly, or through it as the HTTP proxy (the path the
    sender takes when a proxy applies)."""
    def make(server):
        if request.param == "ClientTransport":
            return ClientTransport(server.url, API_KEY, timeout=DEADLINE)
        if request.param == "HttpTransport":
            return HttpTransport(server.url, API_KEY, timeout=DEADLINE)
        for name in ("http_proxy", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", server.url)
        t = HttpTransport("http://ingest.invalid", API_KEY, timeout=DEADLINE)
        assert t.session.proxies
        return t

    return make


RESPONSE = head(200, 20) + b'{"status":"success"}'


@pytest.mark.parametrize("trickled", [
    trickle(b"", RESPONSE),                                                # the status line
    trickle(b"HTTP/1.1 200 OK\r\n", b"X-Padding: " + b"a" * 100 + b"\r\n\r\n"),  # a header
    trickle(head(200, 100), b" " * 100),                                   # the body
], ids=["status-line", "headers", "body"])
def test_a_trickling_server_cannot_stretch_a_request_past_its_deadline(connect, trickled):
    with RawServer(trickled) as server:
        t = connect(server)
        result, elapsed = timed(lambda: t.send("usage", payload()))
        assert elapsed < DEADLINE + SLACK
        assert (result.outcome, result.status) == (RETRY, None)
        assert "Timeout" in result.detail
        assert server.hung_up.wait(2 * TRICKLE_EVERY + SLACK)  # the connection was closed
        # and a next request goes through (a loaded machine may take a second one within 1 s)
        assert any(t.send("usage", payload()).outcome == OK for _ in range(3))
        t.close()


@pytest.mark.parametrize("huge, outcome, status", [
    (huge_body(), OK, 200),  # a 2xx without Reo's JSON is a delivery
    (huge_body(302, b"Location: http://elsewhere.invalid/\r\n"), RETRY, 302),  # a redirect is not followed
], ids=["200", "302"])
def test_a_huge_answer_is_read_up_to_the_cap_only(connect, huge, outcome, status):
    with RawServer(huge) as server:
        t = connect(server)
        (result, elapsed), growth = peak_growth(lambda: timed(lambda: t.send("usage", payload())))
        assert growth < 10 * MiB
        assert elapsed < DEADLINE + SLACK
        assert (result.outcome, result.status) == (outcome, status)
        assert server.hung_up.wait(SLACK)  # the rest was not read: the connection was closed
        assert t.send("usage", payload()).outcome == OK
        t.close()


def test_a_reset_in_the_middle_of_the_body_is_retried_later_not_resent_at_once(connect):
    with RawServer(success, reset_mid_body) as server:
        t = connect(server)
        assert t.send("usage", payload()).outcome == OK  # the connection is kept alive...
        result, elapsed = timed(lambda: t.send("usage", payload()))  # ...and reset by the next answer
        assert (result.outcome, result.status) == (RETRY, None)
        assert elapsed < DEADLINE + SLACK
        assert server.requests == 2  # the answer had begun: the record is not posted again at once
        assert t.send("usage", payload()).outcome == OK
        t.close()


@pytest.mark.parametrize("status, body, outcome", [
    (200, b"<html><body>Welcome! Manage your API key here.</body></html>", OK),
    (200, b'{"status": "success", "response": "Unauthorized fields ignored"', OK),  # cut short
    (502, b"<html><body>Bad gateway: authentication proxy unreachable</body></html>", RETRY),
], ids=["200-html", "200-cut-json", "502-html"])
def test_an_answer_that_is_not_json_is_classified_by_its_status(connect, status, body, outcome):
    with RawServer(answer(status, body, "text/html")) as server:
        t = connect(server)
        result = t.send("usage", payload())
        t.close()
    assert (result.outcome, result.status) == (outcome, status)


@pytest.fixture
def tls_server_context(tmp_path, monkeypatch):
    """A server context with a throw-away certificate for 127.0.0.1, which both transports trust."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a certificate with")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", cert)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def test_the_deadline_holds_over_tls(transport_class, tls_server_context):
    with RawServer(trickle(b"", RESPONSE), tls=tls_server_context) as server:
        t = transport_class(server.url, API_KEY, timeout=DEADLINE)
        result, elapsed = timed(lambda: t.send("usage", payload()))
        assert elapsed < DEADLINE + SLACK
        assert (result.outcome, result.status) == (RETRY, None)
        assert "Timeout" in result.detail
        assert server.hung_up.wait(2 * TRICKLE_EVERY + SLACK)
        assert t.send("usage", payload()).outcome == OK  # verified TLS, and the next request goes through
        t.close()
