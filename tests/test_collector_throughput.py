"""The collector's fast paths (header parsing, environ, Date) and the throughput benchmark itself."""

from __future__ import annotations

import email.utils
import io
import os
import socket
import sys
import time

import pytest
import requests

from callhome.collector import CollectorServer, _gateway

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def buffered(data: bytes) -> io.BufferedReader:
    return io.BufferedReader(io.BytesIO(data))


def parse(reader, data: bytes) -> tuple[object, bytes]:
    """What ``reader`` makes of a header block, and what it leaves unread (the body)."""
    stream = buffered(data)
    try:
        result: object = reader(stream)
    except ValueError as exc:
        result = f"ValueError: {exc}"
    return result, stream.read()


@pytest.mark.parametrize("data", [
    b"Host: x\r\nContent-Length: 4\r\n\r\nbody",
    b"Host: x\r\nX-Api-Key: a\r\nx-api-key: b\r\n\r\n",  # repeated: joined with ","
    b"Host:   spaced value  \r\nEmpty:\r\n\r\nrest\r\n\r\nmore",
    b"\r\n{\"payload\": 1}\r\n\r\n",  # no headers, a body with a blank line in it
    b"Host: x\nOther: y\n\nbody",  # bare LF line ends
    b"Host: x\r\nOther: y\n\r\n\r\nbody",  # mixed
    b"Bad Header: x\r\n\r\n",
    b"X: 1\r\n folded\r\n\r\n",
    b"NoColon\r\n\r\n",
    b"Host: x\r\n",  # the block never ends
    b"".join(b"H%d: v\r\n" % n for n in range(99)) + b"\r\nbody",
    b"".join(b"H%d: v\r\n" % n for n in range(100)) + b"\r\nbody",  # one too many
])
def test_whole_block_parsing_matches_line_by_line(data):
    fast = parse(_gateway._read_headers, data)
    slow = parse(_gateway._read_header_lines, data)
    assert fast[0] == slow[0]
    if not isinstance(fast[0], str):  # after an error the connection closes: what is left does not matter
        assert fast[1] == slow[1] and data.endswith(fast[1])


def test_headers_are_lower_case_and_joined():
    block = b"Content-Type: a\r\nX-API-KEY: k\r\nx-api-key: l\r\n\r\n{}"
    headers, body = parse(_gateway._read_headers, block)
    assert headers == {"content-type": "a", "x-api-key": "k,l"} and body == b"{}"


def test_http_date_is_an_rfc_7231_date_of_now():
    text = _gateway._http_date()
    assert text.endswith(" GMT")
    assert abs(email.utils.parsedate_to_datetime(text).timestamp() - time.time()) < 2
    assert _gateway._http_date() in (text, _gateway._http_date())  # the same within a second


def test_environ_keys():
    assert _gateway._environ_key("x-api-key") == "HTTP_X_API_KEY"
    assert _gateway._environ_key("x_api_key") is None  # must not pass for x-api-key
    assert _gateway._environ_key("content-type") is None  # CONTENT_TYPE is set apart


def test_each_request_gets_a_fresh_environ():
    seen = []

    def app(environ, start_response):
        seen.append((environ.get("marker"), environ.get("HTTP_X_ONE"), environ["REQUEST_METHOD"],
                     environ["REMOTE_ADDR"], environ["wsgi.input"].read()))
        environ["marker"] = "left over"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    with CollectorServer(app=app) as server, requests.Session() as session:
        session.post(server.url + "/a", data=b"one", headers={"X-One": "1"}, timeout=5)
        session.get(server.url + "/b", timeout=5)
        assert server.connections == 1
    assert seen == [(None, "1", "POST", "127.0.0.1", b"one"), (None, None, "GET", "127.0.0.1", b"")]


def test_headers_split_across_packets_are_still_read():
    with CollectorServer() as server, socket.create_connection((server.host, server.port), timeout=5) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for part in (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"Connection: close\r\n", b"\r\n"):
            conn.sendall(part)
            time.sleep(0.05)
        answer = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ") and b"Date: " in answer
    assert answer.endswith(b'{"status": "ok"}')


# -- the benchmark ------------------------------------------------------------------------------
@pytest.mark.parametrize("client", ["agent", "requests", "http.client"])
def test_benchmark_posts_and_checks_every_event(client):
    bench = os.path.join(ROOT, "bench")
    sys.path.insert(0, bench)  # also for the clients, which import the module again to run
    try:
        import collector_throughput

        run = collector_throughput.measure(events=40, clients=2, db=":memory:", kind=client)
    finally:
        sys.path.remove(bench)
    assert run.rate > 0 and run.server_us > 0 and run.client_us > 0
