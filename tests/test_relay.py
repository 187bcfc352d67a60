"""The collector as a relay, end to end: a second collector plays the upstream (Reo)."""

from __future__ import annotations

import time
import uuid

import pytest
import requests
from conftest import wait_until as wait_for

from callhome import Agent
from callhome.collector import CollectorServer
from callhome.collector.relay import client_address, public_address, read_key_file
from callhome.collector.server import main
from callhome.schema import USAGE_PATH

AGENT_KEY = "agent-key"
UPSTREAM_KEY = "upstream-secret"
#: A customer's public address (example.com's): the documentation ranges (203.0.113.0/24, ...) are
#: not ``is_global``, so the relay would rightly refuse to fill them in.
CLIENT = "93.184.216.34"


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
                  data_dir=state_dir, call_home_interval=0, flush_interval=0.2)
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


# -- pieces -----------------------------------------------------------------------------------

@pytest.mark.parametrize("trust, header, expected", [
    (0, "198.51.100.1", "127.0.0.1"),                   # no proxy trusted: the peer, header ignored
    (1, "198.51.100.1, 203.0.113.9", "203.0.113.9"),    # the left entry was written by the client
    (2, "198.51.100.1, 203.0.113.9, 10.0.0.2", "203.0.113.9"),
    (2, "203.0.113.9", None),                           # fewer hops than proxies: no address
    (1, "", None),
])
def test_client_address_takes_the_nth_hop_from_the_right(trust, header, expected):
    environ = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": header}
    assert client_address(environ, trust) == expected


@pytest.mark.parametrize("address, expected", [
    ("203.0.113.9", None), (CLIENT, CLIENT), ("8.8.8.8", "8.8.8.8"), ("127.0.0.1", None), ("10.0.0.1", None),
    ("192.168.1.1", None), ("169.254.1.1", None), ("::1", None), ("fe80::1", None),
    ("2606:4700::1111", "2606:4700::1111"), ("not an address", None), (None, None),
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
