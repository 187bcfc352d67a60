"""The collector as a relay, end to end: a second collector plays the upstream (Reo)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import pytest
import requests

from callhome import Agent
from callhome.collector import CollectorServer
from callhome.collector import relay as relay_module
from callhome.collector.relay import Relay, client_address, public_address, read_key_file
from callhome.collector.server import main
from callhome.queue import DiskQueue
from callhome.schema import USAGE_PATH

from conftest import wait_until as wait_for

AGENT_KEY = "agent-key"
UPSTREAM_KEY = "upstream-secret"
#: A customer's public address (example.com's): the documentation ranges (203.0.113.0/24, ...) are
#: not ``is_global``, so the relay would rightly refuse to fill them in.
CLIENT = "93.184.216.34"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def upstream():
    with CollectorServer(api_keys=[UPSTREAM_KEY]) as server:
        yield server


@pytest.fixture
def relay_dir(tmp_path):
    return str(tmp_path / "relay")


@pytest.fixture
def make_relay(upstream, relay_dir):
    servers = []

    def make(upstream_key=UPSTREAM_KEY):
        server = CollectorServer(api_keys=[AGENT_KEY], relay_to=upstream.url, upstream_key=upstream_key,
                                 relay_dir=relay_dir, fill_ip_addr=True, trust_proxy=1)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def usage(**fields) -> dict:
    payload = {"activity_type": "primary", "source": "TELEMETRY", "event_id": uuid.uuid4().hex,
               "event_at": int(time.time()), "product_id": "acme-cli", "user_agent": "acme-cli/1.0"}
    payload.update(fields)
    return {key: value for key, value in payload.items() if value is not None}


def post(server, payload, forwarded_for=CLIENT, key=AGENT_KEY):
    headers = {"X-API-KEY": key, "X-Forwarded-For": forwarded_for}
    return requests.post(server.url + USAGE_PATH, json={"payload": payload}, headers=headers, timeout=5)


def upstream_payloads(upstream) -> dict:
    return {record["event_id"]: record["payload"] for record in upstream.store.events(limit=1000)}


# -- end to end -------------------------------------------------------------------------------

def test_forwards_with_the_upstream_key_the_same_event_id_and_the_client_address(upstream, make_relay):
    relay = make_relay()
    payload = usage()
    assert post(relay, payload).status_code == 200
    assert wait_for(lambda: upstream.store.count() == 1)
    forwarded = upstream_payloads(upstream)[payload["event_id"]]
    assert forwarded == {**payload, "ip_addr": CLIENT}
    assert relay.store.events()[0]["payload"] == forwarded  # stored locally too: reports still work
    assert upstream.store.stats()["auth_failures"] == 0  # so the upstream key, not the agent's, was sent


def test_a_real_agent_behind_the_relay(upstream, make_relay, state_dir):
    relay = make_relay()
    agent = Agent(product_id="acme-cli", api_key=AGENT_KEY, endpoint=relay.url, relay=True, ip_addr=CLIENT,
                  data_dir=state_dir, call_home_interval=0, sessions=False, flush_interval=0.2)
    try:
        agent.track("primary")
        assert agent.flush(5)
    finally:
        agent.shutdown(0.5)
    assert wait_for(lambda: upstream.store.count() == 1)
    [record] = upstream.store.events()
    assert record["event_id"] == relay.store.events()[0]["event_id"]
    assert record["payload"]["ip_addr"] == CLIENT and "domain" not in record["payload"]


def test_a_server_opt_out_neither_stops_nor_empties_the_relay(upstream, make_relay, monkeypatch):
    monkeypatch.setenv("DO_NOT_TRACK", "1")  # the server's own choice; the records are other people's
    relay = make_relay()
    payload = usage()
    assert post(relay, payload).status_code == 200
    assert wait_for(lambda: upstream.store.count() == 1)
    assert list(upstream_payloads(upstream)) == [payload["event_id"]]


def test_duplicates_are_forwarded_once(upstream, make_relay):
    relay = make_relay()
    payload = usage()
    for _ in range(3):
        assert post(relay, payload).status_code == 200
    assert wait_for(lambda: upstream.store.count() == 1)
    time.sleep(0.3)
    assert upstream.app.requests[USAGE_PATH] == 1 and relay.store.stats()["duplicates"] == 2


def test_an_upstream_outage_loses_nothing(upstream, make_relay):
    relay = make_relay()
    upstream.app.fail_all(503)
    sent = [usage() for _ in range(3)]
    for payload in sent:
        assert post(relay, payload).status_code == 200  # ingestion does not depend on the upstream
    assert wait_for(lambda: relay.app.relay.sender.state.startswith("backoff"))  # set once the 503 is read
    assert relay.app.relay.status()["waiting"] == 3
    upstream.app.fail_all(None)
    assert wait_for(lambda: upstream.store.count() == 3, timeout=15)
    assert set(upstream_payloads(upstream)) == {payload["event_id"] for payload in sent}
    assert wait_for(lambda: relay.app.relay.status()["waiting"] == 0)


def test_an_upstream_auth_failure_pauses_forwarding_and_keeps_the_records(upstream, make_relay):
    relay = make_relay(upstream_key="wrong-upstream-key")
    sent = [usage(), usage()]
    assert post(relay, sent[0]).status_code == 200
    assert wait_for(lambda: relay.app.relay.sender.state.startswith("auth_failed"))
    assert post(relay, sent[1]).status_code == 200  # ingestion goes on while forwarding is paused
    time.sleep(1.5)
    assert upstream.app.requests[USAGE_PATH] == 1  # one refused attempt, then paused
    assert relay.store.count() == 2 and relay.app.relay.status()["waiting"] == 2
    relay.stop()
    fixed = make_relay()  # restarted with the right key, on the same queue
    assert wait_for(lambda: upstream.store.count() == 2)
    # the upstream stores a record before the relay hears the answer and acknowledges it
    assert wait_for(lambda: fixed.app.relay.status()["waiting"] == 0)


def test_a_private_or_loopback_address_is_never_filled(upstream, make_relay):
    relay = make_relay()
    answer = post(relay, usage(), forwarded_for="10.1.2.3")
    assert answer.status_code == 400 and "ip_addr" in answer.text  # neither ip_addr nor domain
    assert relay.store.count() == 0 and upstream.app.requests[USAGE_PATH] == 0


@pytest.mark.parametrize("forwarded_for", [f"::ffff:{CLIENT}", f"{CLIENT}:51234", f"[::ffff:{CLIENT}]:443"])
def test_an_ipv4_client_is_filled_whatever_form_the_address_takes(upstream, make_relay, forwarded_for):
    # A dual-stack listener or proxy writes IPv4 clients as ::ffff:a.b.c.d; some proxies add the port.
    relay = make_relay()
    payload = usage()
    assert post(relay, payload, forwarded_for=forwarded_for).status_code == 200
    assert wait_for(lambda: upstream.store.count() == 1)
    assert upstream_payloads(upstream)[payload["event_id"]]["ip_addr"] == CLIENT


def test_records_submitted_together_all_reach_the_disk_queue(upstream, relay_dir, caplog):
    """The collector calls submit() from one thread per request; the queue's writer was built for one
    thread (its temporary file names collide otherwise): none may fall back to memory."""
    upstream.app.fail_all(503)  # keep them queued, so the queue shows them all
    relay = Relay(upstream.url, UPSTREAM_KEY, relay_dir)
    sent = [usage(ip_addr=CLIENT) for _ in range(4000)]
    try:
        with caplog.at_level(logging.WARNING, logger="callhome.collector"), ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda payload: relay.submit("usage", payload), sent))
        assert not [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
        status = relay.status()
        assert status["memory"] == 0 and status["disk"] == "ok" and DiskQueue(relay_dir).depth()[0] == len(sent)
    finally:
        relay.close()


def break_queue(directory: str) -> Callable[[], None]:
    """Make the relay queue refuse writes (even for root: its tmp/ becomes a file); returns the repair."""
    tmp = os.path.join(directory, "queue-v1", "tmp")
    os.rename(tmp, tmp + ".saved")
    open(tmp, "w").close()

    def repair():
        os.unlink(tmp)
        os.rename(tmp + ".saved", tmp)
    return repair


def test_an_unwritable_queue_holds_records_in_memory_then_writes_and_forwards_them(upstream, make_relay):
    relay = make_relay()
    repair = break_queue(relay.app.relay.directory)
    sent = [usage(), usage()]
    for payload in sent:
        assert post(relay, payload).status_code == 200
    stats = requests.get(relay.url + "/stats", headers={"X-API-KEY": AGENT_KEY}, timeout=5).json()["relay"]
    assert stats["memory"] == 2 and stats["waiting"] == 2 and stats["disk"].startswith("failing: ")
    assert upstream.store.count() == 0  # held in memory, not forwarded from there
    repair()
    assert wait_for(lambda: upstream.store.count() == 2)  # the next cycle writes them, then sends them
    assert set(upstream_payloads(upstream)) == {payload["event_id"] for payload in sent}
    assert relay.app.relay.status()["memory"] == 0 and relay.app.relay.status()["disk"] == "ok"


def test_memory_is_bounded_counted_and_written_at_close(upstream, relay_dir, monkeypatch):
    monkeypatch.setattr(relay_module, "MAX_MEMORY_RECORDS", 3)
    relay = Relay(upstream.url, UPSTREAM_KEY, relay_dir, interval=3600)  # cycles only when woken
    repair = break_queue(relay_dir)
    sent = [usage(ip_addr=CLIENT) for _ in range(5)]
    assert [relay.submit("usage", payload) for payload in sent] == [True, True, True, False, False]
    status = relay.status()
    assert status["memory"] == 3 and status["counters"]["refused.memory_full"] == 2
    repair()
    relay.close()  # nothing woke the thread since the repair: close itself writes memory to disk
    assert DiskQueue(relay_dir).depth()[0] == 3 and "dropped.shutdown" not in relay.status()["counters"]
    again = Relay(upstream.url, UPSTREAM_KEY, relay_dir)
    try:
        assert wait_for(lambda: upstream.store.count() == 3)
    finally:
        again.close()
    assert set(upstream_payloads(upstream)) == {payload["event_id"] for payload in sent[:3]}


def test_a_full_relay_refuses_with_503_so_the_agent_keeps_the_record(make_relay, monkeypatch):
    monkeypatch.setattr(relay_module, "MAX_MEMORY_RECORDS", 1)
    relay = make_relay()
    repair = break_queue(relay.app.relay.directory)
    first, second = usage(), usage()
    assert post(relay, first).status_code == 200  # held in memory
    refused = post(relay, second)
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    # not stored either (the relay queues before the store): the retry is new, and forwarded
    assert relay.store.count() == 1
    repair()
    assert post(relay, second).status_code == 200
    assert relay.store.count() == 2


def test_sigterm_during_a_hanging_upstream_request_stops_in_time_and_loses_nothing(upstream, relay_dir, tmp_path):
    key_file = tmp_path / "upstream.key"
    key_file.write_text(UPSTREAM_KEY + "\n")
    argv = ["--port", "0", "--db", str(tmp_path / "events.sqlite3"), "--relay-to", upstream.url,
            "--upstream-key-file", str(key_file), "--relay-dir", relay_dir, "--api-key", AGENT_KEY]
    code = f"from callhome.collector.server import main; raise SystemExit(main({argv!r}))"
    upstream.app.script("hang:30")  # longer than the relay's 5 s timeout
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        url = process.stderr.readline().split()[4]
        payload = usage(ip_addr=CLIENT)
        assert requests.post(url + USAGE_PATH, json={"payload": payload}, headers={"X-API-KEY": AGENT_KEY},
                             timeout=5).status_code == 200
        assert wait_for(lambda: upstream.app.pending_faults == 0)  # the upstream request hangs now
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert time.monotonic() - started < 12  # at most the request's timeout, then out
    finally:
        process.kill()
        process.stderr.close()
    assert upstream.store.count() == 0 and DiskQueue(relay_dir).depth()[0] == 1
    again = Relay(upstream.url, UPSTREAM_KEY, relay_dir)
    try:
        assert wait_for(lambda: upstream.store.count() == 1, timeout=15)
    finally:
        again.close()
    assert list(upstream_payloads(upstream)) == [payload["event_id"]]


# -- pieces -----------------------------------------------------------------------------------

@pytest.mark.parametrize("trust, header, expected", [
    (0, "198.51.100.1", "127.0.0.1"),                   # no proxy trusted: the peer, header ignored
    (1, "198.51.100.1, 203.0.113.9", "203.0.113.9"),    # the left entry was written by the client
    (2, "198.51.100.1, 203.0.113.9, 10.0.0.2", "203.0.113.9"),
    (2, "203.0.113.9", None),                           # fewer hops than proxies: no address
    (1, "", None),
    (1, "198.51.100.1, 203.0.113.9:8443", "203.0.113.9"),      # some proxies add the port
    (1, "[2001:db8::7]:443", "2001:db8::7"),
    (1, "2001:db8::7", "2001:db8::7"),
])
def test_client_address_takes_the_nth_hop_from_the_right(trust, header, expected):
    environ = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": header}
    assert client_address(environ, trust) == expected


@pytest.mark.parametrize("address, expected", [
    ("203.0.113.9", None), (CLIENT, CLIENT), ("8.8.8.8", "8.8.8.8"), ("127.0.0.1", None), ("10.0.0.1", None),
    ("192.168.1.1", None), ("169.254.1.1", None), ("::1", None), ("fe80::1", None),
    ("2606:4700::1111", "2606:4700::1111"), ("not an address", None), (None, None),
    (f"::ffff:{CLIENT}", CLIENT), ("::ffff:10.0.0.1", None), ("::ffff:127.0.0.1", None),
])
def test_public_address_keeps_only_global_addresses(address, expected):
    assert public_address(address) == expected


def test_the_upstream_key_file_is_stripped_and_never_shown(tmp_path):
    path = tmp_path / "key"
    path.write_text("  s3cret\n")
    assert read_key_file(str(path)) == "s3cret"
    path.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_key_file(str(path))


@pytest.mark.parametrize("content", ["s3cret\nsecond-line", "s3cret key", "s3crét"])
def test_a_key_that_cannot_be_a_header_is_refused_without_showing_it(tmp_path, upstream, relay_dir, content):
    # Sent as X-API-KEY, a second line would inject a header, a non-ASCII one fail every request.
    path = tmp_path / "key"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match="printable ASCII") as refused:
        read_key_file(str(path))
    assert "s3cr" not in str(refused.value)
    with pytest.raises(ValueError, match="printable ASCII"):
        CollectorServer(relay_to=upstream.url, upstream_key=content, relay_dir=relay_dir)


def test_a_key_given_where_its_file_belongs_is_not_printed(tmp_path, capsys, upstream):
    argv = ["--port", "0", "--db", str(tmp_path / "events.sqlite3"), "--relay-to", upstream.url,
            "--upstream-key-file", "s3cret-upstream-key"]  # the key itself, by mistake
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot read the upstream key file" in err and "s3cret" not in err


def test_an_unusable_relay_directory_is_reported_as_such(tmp_path, capsys, upstream):
    key_file = tmp_path / "upstream.key"
    key_file.write_text("s3cret\n")
    (tmp_path / "a-file").write_text("")
    argv = ["--port", "0", "--db", str(tmp_path / "events.sqlite3"), "--relay-to", upstream.url,
            "--upstream-key-file", str(key_file), "--relay-dir", str(tmp_path / "a-file" / "relay")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot create the relay queue" in err and "cannot listen" not in err and "s3cret" not in err


def test_a_crash_s_leftover_temporary_file_is_swept_at_start(upstream, relay_dir):
    Relay(upstream.url, UPSTREAM_KEY, relay_dir).close()
    leftover = os.path.join(relay_dir, "queue-v1", "tmp", "node.1.abc.1.tmp")
    with open(leftover, "wb") as f:
        f.write(b"half a batch")
    os.utime(leftover, (time.time() - 7200, time.time() - 7200))
    Relay(upstream.url, UPSTREAM_KEY, relay_dir).close()
    assert not os.path.exists(leftover)


def test_the_upstream_key_must_differ_from_the_agent_keys(upstream, relay_dir):
    with pytest.raises(ValueError, match="upstream key"):
        CollectorServer(api_keys=[UPSTREAM_KEY], relay_to=upstream.url, upstream_key=UPSTREAM_KEY,
                        relay_dir=relay_dir)


@pytest.mark.parametrize("extra, message", [
    (["--db", ":memory:"], "durable queue"),
    (["--api-key", "s3cret"], "must not also be"),
])
def test_cli_refuses_a_bad_relay_and_never_shows_the_key(tmp_path, capsys, upstream, extra, message):
    key_file = tmp_path / "upstream.key"
    key_file.write_text("s3cret\n")
    argv = ["--port", "0", "--db", str(tmp_path / "events.sqlite3"), "--relay-to", upstream.url,
            "--upstream-key-file", str(key_file), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "s3cret" not in err
