"""Payload conformance: events built by a real Agent, read back at the real collector (or debug output)."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import math
import os
import re
import socket
import time

import pytest

import callhome
from callhome import Agent
from callhome.collector import CollectorServer
from callhome.optout import CI_VARIABLES
from callhome.schema import validate

from conftest import API_KEY, PRODUCT, host_options, is_uuid4, run_host

UTC = dt.timezone.utc
T = 1_763_856_000  # 2025-11-23T00:00:00Z: in range whenever these tests run


def no_empty_strings(value) -> bool:
    if isinstance(value, dict):
        return all(no_empty_strings(v) for v in value.values())
    return value != ""


def check(payload: dict) -> dict:
    """Every payload the agent builds passes the schema and carries no "" placeholder field."""
    assert validate(payload, "usage") == [], payload
    assert "" not in payload.values(), payload
    return payload


def delivered(agent, collector, *event_ids: str) -> list:
    """The payloads the collector stored for ``event_ids``, in that order."""
    assert all(event_ids), event_ids
    assert agent.flush(10)
    stored = {e["event_id"]: e["payload"] for e in collector.store.events(limit=10000)}
    return [check(stored[event_id]) for event_id in event_ids]


class Sender:
    """One agent and collector shared by the table-driven tests below: a row costs a track and a flush.

    ``send(**track)`` returns the payload as the collector stored it and what the agent reported
    about this one call: ``{"coerced": n, "problems": [...]}``.
    """

    def __init__(self, agent, collector):
        self.agent, self.collector = agent, collector

    def send(self, activity="secondary1", **track):
        before = self.agent.status()
        event_id = self.agent.track(activity, **track)
        [payload] = delivered(self.agent, self.collector, event_id)
        after = self.agent.status()
        coerced = after["coerced"] - before["coerced"]
        return payload, {"coerced": coerced, "problems": after["problems"][-coerced:] if coerced else []}


@pytest.fixture(scope="module")
def sender(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp, CollectorServer(api_keys=[API_KEY]) as server:
        for name in list(os.environ):  # as conftest's clean_environ, for the whole module
            if (name.startswith(("CALLHOME_", "REO_")) or name in CI_VARIABLES or name.endswith("_TELEMETRY_DISABLED")
                    or name in ("CI", "BUILD_ID", "BUILD_URL", "PROJECT_ID", "DO_NOT_TRACK")):
                mp.delenv(name)
        agent = Agent(product_id=PRODUCT, api_key=API_KEY, endpoint=server.url, domain="example.com",
                      data_dir=str(tmp_path_factory.mktemp("shared-state")), call_home_interval=0,
                      flush_interval=3600)
        yield Sender(agent, server)
        agent.shutdown(0.5)


@pytest.fixture
def send(sender):
    return sender.send


def send_with(make_agent, collector, options, activity="secondary1", **track):
    """Track one event with a fresh agent built with ``options``; returns (payload, agent)."""
    agent = make_agent(**options)
    [payload] = delivered(agent, collector, agent.track(activity, **track))
    return payload, agent


# -- event_id -----------------------------------------------------------------------------------


def test_event_id_is_the_uuid4_the_host_got_back(make_agent, collector):
    agent = make_agent()
    ids = [agent.track("secondary1", meta={"i": i}) for i in range(5)]
    payloads = delivered(agent, collector, *ids)
    assert [p["event_id"] for p in payloads] == ids
    assert all(is_uuid4(i) for i in ids) and len(set(ids)) == 5
    assert [p["meta"]["i"] for p in payloads] == list(range(5))


def test_event_id_survives_a_retry(make_agent, collector):
    collector.app.script(503)
    agent = make_agent()
    event_id = agent.track("secondary1")
    assert any(agent.flush(5) for _ in range(3))  # a forced flush skips the backoff of the 503
    assert [e["event_id"] for e in collector.store.events()] == [event_id]
    assert collector.store.stats()["requests"] == 2


# -- event_at -----------------------------------------------------------------------------------


@pytest.mark.parametrize("event_at, expected", [
    (T, T),
    (T + 0.9, T),
    (float(T), T),
    (T * 1000 + 123, T),                                   # milliseconds
    (1_795_440_000_123, 1_795_440_000),
    (str(T), T),
    (f" {T} ", T),
    (f"{T}.75", T),
    (str(T * 1000), T),
    (dt.datetime(2025, 11, 23, tzinfo=UTC), T),            # aware
    (dt.datetime(2025, 11, 23, 2, tzinfo=dt.timezone(dt.timedelta(hours=2))), T),
    (dt.datetime.fromtimestamp(T), T),                     # naive: local time, as in Python
    (dt.datetime.fromtimestamp(T + 0.5), T),
    (946_684_800, 946_684_800),                            # 2000-01-01, the lower bound
])
def test_event_at_is_coerced_to_integer_utc_seconds(send, event_at, expected):
    payload, report = send(event_at=event_at)
    assert payload["event_at"] == expected and type(payload["event_at"]) is int
    assert report["coerced"] == 0


BAD_EVENT_AT = [
    "yesterday", "", "12:00", "nan", "inf", "1e400", float("nan"), float("inf"), -1, 0, 639303296,
    946_684_799, 10 ** 30, 10 ** 400, True, [T], {"t": T}, object(), b"1763856000", dt.date(2025, 11, 23),
    dt.datetime(1970, 1, 1, tzinfo=UTC), dt.datetime(2999, 1, 1, tzinfo=UTC), "99999999999999999999999",
]


def _id(value) -> str:
    if isinstance(value, int) and abs(value) > 10 ** 15:
        return f"10**{len(str(abs(value))) - 1}"
    return repr(value)[:24] if isinstance(value, (str, int, float, bytes)) else type(value).__name__


@pytest.mark.parametrize("event_at", BAD_EVENT_AT, ids=[_id(v) for v in BAD_EVENT_AT])
def test_bad_event_at_becomes_now_and_is_reported(send, event_at):
    before = int(time.time())
    payload, report = send(event_at=event_at)
    assert before <= payload["event_at"] <= time.time()
    assert report["coerced"] == 1
    assert "event_at" in report["problems"][0]


def test_future_event_at_within_a_day_is_kept(send):
    soon = int(time.time()) + 3600
    assert send(event_at=soon)[0]["event_at"] == soon


def test_no_event_at_means_now(send):
    before = int(time.time())
    payload, report = send()
    assert before <= payload["event_at"] <= time.time()
    assert report == {"coerced": 0, "problems": []}


# -- fixed fields -------------------------------------------------------------------------------


@pytest.mark.parametrize("options, expected", [
    ({}, {"domain": "example.com"}),
    ({"domain": None, "ip_addr": "203.0.113.7"}, {"ip_addr": "203.0.113.7"}),
    ({"domain": "acme.example", "ip_addr": "2001:db8::7"}, {"domain": "acme.example", "ip_addr": "2001:db8::7"}),
])
def test_fixed_fields(make_agent, collector, options, expected):
    payload, _ = send_with(make_agent, collector, options, "primary")
    assert payload["source"] == "TELEMETRY"
    assert payload["environment"] == "PRODUCTION"
    assert payload["product_id"] == PRODUCT
    assert payload["activity_type"] == "primary"
    assert {k: payload[k] for k in ("domain", "ip_addr") if k in payload} == expected


def test_product_cloud_source_and_environment(make_agent, collector):
    payload, _ = send_with(make_agent, collector, {"source": "saas_product", "environment": "staging"},
                           user_id="dev@acme.example", user_id_type="EMAIL")
    assert (payload["source"], payload["environment"]) == ("PRODUCT_CLOUD", "staging")


def test_user_agent_names_neither_host_nor_user(make_agent, collector):
    payload, _ = send_with(make_agent, collector, {"product_version": "2.3.1"})
    agent_string = payload["user_agent"]
    assert agent_string.startswith(f"{PRODUCT}/2.3.1 callhome/")
    assert "Python/" in agent_string
    whole = json.dumps(payload)
    for private in (socket.gethostname(), getpass.getuser()):
        assert not re.search(rf"(?<![A-Za-z0-9]){re.escape(private)}(?![A-Za-z0-9])", whole), private
    assert payload["meta"]["product_version"] == "2.3.1"


def test_no_empty_placeholders_in_a_minimal_event(send):
    payload, _ = send()
    assert no_empty_strings(payload)
    assert set(payload) == {"activity_type", "source", "environment", "domain", "event_id", "event_at",
                            "product_id", "user_agent", "meta"}
    assert "user_id" not in payload and "user_id_type" not in payload and "ip_addr" not in payload


# -- user_id / user_id_type -----------------------------------------------------------------------


@pytest.mark.parametrize("user_id, user_id_type, expected", [
    ("dev@acme.example", "EMAIL", ("dev@acme.example", "EMAIL")),
    ("dev@acme.example", "email", ("dev@acme.example", "EMAIL")),
    ("octocat", " github ", ("octocat", "GITHUB")),
    ("https://www.linkedin.com/in/dev", "LinkedIn", ("https://www.linkedin.com/in/dev", "LINKEDIN")),
    ("dev", "username", ("dev", "USERNAME")),
    ("dev", "social", ("dev", "SOCIAL")),
    ("dev@acme.example", None, None),
    (None, "EMAIL", None),
    ("dev", "FACEBOOK", None),
    ("dev", "", None),
    ("", "EMAIL", None),
    ("   ", "EMAIL", None),
    (42, "USERNAME", None),
    ("dev", 3, None),
])
def test_user_fields_both_or_neither(send, user_id, user_id_type, expected):
    payload, report = send(user_id=user_id, user_id_type=user_id_type)
    got = (payload["user_id"], payload["user_id_type"]) if "user_id" in payload else None
    assert got == expected
    assert ("user_id_type" in payload) == ("user_id" in payload)
    assert report["coerced"] == (0 if expected else 1)


# -- meta -----------------------------------------------------------------------------------------


class Thing:
    def __str__(self):
        return "a thing"


@pytest.mark.parametrize("value, expected", [
    ("build", "build"),
    (3, 3),
    (-2.5, -2.5),
    (True, True),
    (False, False),
    (0, 0),
    ({"nested": {"deep": 1}}, str({"nested": {"deep": 1}})),
    ([1, "two"], str([1, "two"])),
    ((1, 2), "(1, 2)"),
    ({1, 2}, str({1, 2})),
    (Thing(), "a thing"),
    (dt.datetime(2025, 11, 23, 12, 30, tzinfo=UTC), "2025-11-23T12:30:00+00:00"),
    (dt.date(2025, 11, 23), "2025-11-23"),
    (b"raw", "b'raw'"),
    (2 ** 70, str(2 ** 70)),
    ("two\nlines\r\n", "two lines"),
    ("  padded  ", "padded"),
])
def test_meta_values_are_flat_and_json_safe(send, value, expected):
    payload, _ = send(meta={"key": value})
    assert payload["meta"]["key"] == expected


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_meta_non_finite_floats_never_reach_the_wire(send, value):
    payload, _ = send(meta={"key": value, "other": 1})
    assert payload["meta"]["other"] == 1
    kept = payload["meta"].get("key")
    assert kept is None or isinstance(kept, str)


def test_meta_drops_none_and_stringifies_keys(send):
    payload, _ = send(meta={"gone": None, 7: "seven", ("a", "b"): 1, "ok": "yes"})
    meta = payload["meta"]
    assert "gone" not in meta and meta["ok"] == "yes"
    assert meta["7"] == "seven" and meta["('a', 'b')"] == 1


def test_meta_huge_string_is_truncated(send):
    payload, report = send(meta={"log": "x" * 5000})
    assert 0 < len(payload["meta"]["log"]) <= 1024
    assert report["coerced"] == 1


def test_meta_key_count_is_capped(send):
    payload, report = send(meta={f"k{i:03d}": i for i in range(200)})
    host_keys = [k for k in payload["meta"] if k.startswith("k")]
    assert 0 < len(host_keys) <= 50
    assert len(payload["meta"]) <= 64
    assert report["coerced"] == 200 - len(host_keys)


def test_meta_size_is_capped(send):
    payload, _ = send(meta={f"k{i}": "v" * 1000 for i in range(40)})
    assert len(json.dumps(payload["meta"])) <= 9 * 1024
    assert payload["meta"]["k0"] == "v" * 1000


def test_meta_of_the_wrong_type_is_dropped_and_the_event_kept(send):
    payload, report = send(meta=["not", "a", "dict"])
    assert set(payload["meta"]) <= {"callhome_version", "installation_id"}
    assert report["coerced"] == 1


def test_agent_meta_is_present(make_agent, collector):
    payload, agent = send_with(make_agent, collector, {})
    assert payload["meta"]["callhome_version"] == callhome.__version__
    assert payload["meta"]["installation_id"] == agent.status()["installation_id"]
    assert is_uuid4(payload["meta"]["installation_id"])


# -- strict mode and garbage ------------------------------------------------------------------------


def _recursive_dict():
    d = {}
    d["self"] = d
    return d


def _recursive_list():
    items = []
    items.append(items)
    return items


class Hostile:
    """Everything one can do to a str()/repr() call."""

    def __str__(self):
        raise RuntimeError("no str for you")

    __repr__ = __str__

    def __eq__(self, other):
        raise RuntimeError("no comparisons")

    __hash__ = object.__hash__


class HostileTime:
    def timestamp(self):
        raise RuntimeError("no time")


COERCIBLE = [None, object(), b"\xff\xfe", bytearray(b"x"), 10 ** 400, -(10 ** 5000), float("nan"), float("inf"),
             _recursive_dict(), _recursive_list(), "", " ", "\x00", "x" * 100000, "\n", 0, -1, True, [], (),
             set(), frozenset({1}), dt.datetime.min, dt.datetime.max, dt.date.min, type, print, Ellipsis, 1j]
#: Objects that fight back: callhome may drop the event, but must not raise.
HOSTILE = [Hostile(), HostileTime(), {Hostile(): 1}, {"k": Hostile()}, [Hostile()]]


def test_default_mode_never_raises(make_agent, collector):
    agent = make_agent()
    for garbage in COERCIBLE + HOSTILE:
        agent.track(garbage)
        agent.track("secondary1", user_id=garbage, user_id_type="EMAIL")
        agent.track("secondary1", user_id="dev", user_id_type=garbage)
        agent.track("secondary1", meta=garbage)
        agent.track("secondary1", meta={"key": garbage, garbage if isinstance(garbage, str) else "k2": 1})
        agent.track("secondary1", event_at=garbage)
        agent.track(garbage, garbage, garbage, garbage, garbage)
        agent.call_home(meta=garbage)
    marker = agent.track("secondary1", meta={"after": "garbage"})
    assert agent.flush(10)
    for event in collector.store.events(limit=10000):
        check(event["payload"])
    assert delivered(agent, collector, marker)[0]["meta"]["after"] == "garbage"
    assert agent.status()["delivered"] == collector.store.count()


@pytest.mark.parametrize("where", ["meta value", "event_at"])
def test_garbage_is_coerced_without_losing_the_event(make_agent, collector, where):
    agent = make_agent()
    sent = {}
    for i, garbage in enumerate(COERCIBLE):
        kwargs = {"meta": {"key": garbage, "i": i}} if where == "meta value" else {"event_at": garbage}
        sent[i] = agent.track("secondary1", **kwargs)
    lost = [f"COERCIBLE[{i}]: {type(COERCIBLE[i]).__name__}" for i, event_id in sent.items() if event_id is None]
    assert lost == [], f"{where}: these values lost the event"
    payloads = delivered(agent, collector, *sent.values())
    if where == "meta value":
        assert [p["meta"]["i"] for p in payloads] == list(sent)


def test_strings_on_the_wire_are_valid_unicode(make_agent, collector):
    agent = make_agent()
    event_id = agent.track("build \ud800", user_id="dev\udcff", user_id_type="USERNAME",
                           meta={"k\ud83d": "v\udfff", "ok": "\u2603"})
    assert event_id is not None
    [payload] = delivered(agent, collector, event_id)
    json.dumps(payload, ensure_ascii=False).encode("utf-8")  # no lone surrogate anywhere
    assert payload["meta"]["ok"] == "\u2603"


@pytest.mark.parametrize("call", [
    pytest.param(lambda a: a.track(42), id="non-string activity"),
    pytest.param(lambda a: a.track(None), id="None activity"),
    pytest.param(lambda a: a.track(""), id="empty activity"),
    pytest.param(lambda a: a.track(" \n "), id="blank activity"),
    pytest.param(lambda a: a.track("a", user_id="dev@acme.example"), id="user_id without type"),
    pytest.param(lambda a: a.track("a", user_id_type="EMAIL"), id="type without user_id"),
    pytest.param(lambda a: a.track("a", user_id="dev", user_id_type="FACEBOOK"), id="unknown user type"),
    pytest.param(lambda a: a.track("a", meta=["not", "a", "dict"]), id="meta not a dict"),
    pytest.param(lambda a: a.track("a", meta="k=v"), id="meta a string"),
    pytest.param(lambda a: a.track("a", event_at="yesterday"), id="event_at garbage"),
    pytest.param(lambda a: a.track("a", event_at=639303296), id="event_at out of range"),
    pytest.param(lambda a: a.track("a", event_at=10 ** 400), id="event_at huge int"),
])
def test_strict_mode_raises_value_error(make_agent, collector, call):
    agent = make_agent(strict=True)
    with pytest.raises(ValueError):
        call(agent)
    call(make_agent())                         # the same call without strict returns normally
    assert agent.track("fine") is not None     # and a strict agent still takes good events


def test_strict_mode_accepts_good_input(make_agent, collector):
    agent = make_agent(strict=True)
    event_id = agent.track("primary", user_id="dev@acme.example", user_id_type="email",
                           meta={"command": "build", "n": 2}, event_at=T)
    [payload] = delivered(agent, collector, event_id)
    assert payload["user_id_type"] == "EMAIL" and payload["event_at"] == T


# -- debug mode -------------------------------------------------------------------------------------

DEBUG_HOST = """
    import callhome
    callhome.init({options})
    ids = [callhome.track("secondary1", meta={{"command": "build"}}),
           callhome.track("primary", user_id="dev@acme.example", user_id_type="EMAIL")]
    callhome.flush(2)
    import sys; sys.stderr.write("IDS " + " ".join(map(str, ids)) + "\\n")
"""


def _debug_lines(stderr: str) -> list:
    lines = [line for line in stderr.splitlines() if not line.startswith("IDS ")]
    assert lines and all(line.startswith("[callhome] ") for line in lines), stderr
    return lines


def _requests(lines: list) -> list:
    return [json.loads(line[line.index("{"):]) for line in lines]


@pytest.mark.parametrize("how", ["CALLHOME_DEBUG=1", "debug=True"])
def test_debug_prints_to_stderr_and_sends_nothing(collector, state_dir, how):
    env = {"CALLHOME_DEBUG": "1"} if how == "CALLHOME_DEBUG=1" else {}
    extra = {"debug": True} if how == "debug=True" else {}
    done = run_host(DEBUG_HOST.format(options=host_options(collector, state_dir, **extra)), env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert API_KEY not in done.stderr
    lines = _debug_lines(done.stderr)
    requests = _requests(lines)
    assert [r["body"]["payload"]["activity_type"] for r in requests] == ["secondary1", "primary"]
    for request in requests:
        assert request["url"] == collector.url + "/api/product/usage"
        assert validate(request["body"]["payload"], "usage") == []
    ids = done.stderr.split("IDS ")[1].split()
    assert [r["body"]["payload"]["event_id"] for r in requests] == ids
    assert collector.app.requests.total == 0 and collector.store.count() == 0
    assert not os.path.exists(state_dir)  # debug mode: no thread, no file


def test_debug_with_do_not_track_still_prints_why_nothing_is_sent(collector, state_dir):
    done = run_host(DEBUG_HOST.format(options=host_options(collector, state_dir)),
                    env={"CALLHOME_DEBUG": "1", "DO_NOT_TRACK": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    lines = _debug_lines(done.stderr)
    assert all("not sent: disabled by DO_NOT_TRACK=1" in line for line in lines)
    assert len(_requests(lines)) == 2
    assert API_KEY not in done.stderr
    assert collector.app.requests.total == 0


def test_debug_off_prints_nothing(collector, state_dir):
    done = run_host(DEBUG_HOST.format(options=host_options(collector, state_dir)))
    assert done.returncode == 0 and done.stdout == ""
    assert [line for line in done.stderr.splitlines() if not line.startswith("IDS ")] == []
    assert collector.store.count() == 2


def test_no_float_is_nan_on_the_wire(send):
    payload, _ = send(meta={"a": float("nan"), "b": 1.5})
    assert not any(isinstance(v, float) and math.isnan(v) for v in payload["meta"].values())


def test_a_user_id_without_a_valid_type_keeps_the_event_and_is_named_once_per_cause(make_agent, collector):
    agent = make_agent(endpont="typo")  # a problem of its own, which the repeated ones must not push out
    ids = [agent.track("secondary1", user_id="dev@example.com") for _ in range(50)]
    ids += [agent.track("secondary1", user_id="dev@example.com", user_id_type="PHONE") for _ in range(50)]
    payloads = delivered(agent, collector, *ids)
    assert all("user_id" not in p and "user_id_type" not in p for p in payloads)
    problems = agent.status()["problems"]
    about_users = [p for p in problems if "user_id" in p]
    assert len(about_users) == 2, problems
    assert all("EMAIL" in p and "sent without" in p for p in about_users), about_users
    assert any("endpont" in p for p in problems), problems
