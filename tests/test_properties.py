"""Client properties, custom slots, the license (key only as an HMAC), categorised events and
debug mode (issue 6).

Detected values are compared with what Python reports on this machine; the license key is
looked for, in clear, in every file callhome wrote, in the sent log and at the collector.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import platform

import pytest

from conftest import PRODUCT, closed_port_url, files_under, host_options, of_type, payloads, run_host

DETECTED = ("os", "os_version", "arch", "python_version", "python_impl", "locale", "cpu_count", "container",
            "is_ci")
PRODUCT_FIELDS = ("product_build", "product_edition", "product_language")


def in_a_container() -> bool:
    """This machine, judged independently: Docker's and Podman's marker files, the cgroups of pid 1."""
    if os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv"):
        return True
    try:
        with open("/proc/1/cgroup") as f:
            cgroups = f.read()
    except OSError:
        return False
    return any(word in cgroups for word in ("docker", "kubepods", "containerd", "lxc", "libpod"))


@pytest.fixture
def locale_env(monkeypatch):
    for name in ("LC_ALL", "LC_MESSAGES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANG", "pt_BR.UTF-8")
    for name in ("KUBERNETES_SERVICE_HOST", "container"):
        monkeypatch.delenv(name, raising=False)


# -- where properties ride ---------------------------------------------------------------------------

def test_properties_ride_in_call_home_session_and_exception_records_only(make_agent, collector, locale_env):
    agent = make_agent(sessions=True, call_home_interval=86400, product_version="2.1.0", product_build="build-77",
                       product_edition="Enterprise", product_language="de")
    agent.track("plain event", meta={"k": 1})
    agent.call_home({"manual": True})
    with agent.session("with-properties"):
        pass
    try:
        raise ValueError("x")
    except ValueError:
        agent.track_exception()
    agent.shutdown(5)

    calls = of_type(collector, "call_home")
    assert sorted(bool(p["meta"].get("automatic")) for p in calls) == [False, True]  # the automatic one too
    carrying = calls + of_type(collector, "session") + of_type(collector, "exception")
    assert len(carrying) == 5
    expected = {"os": platform.system(), "os_version": platform.release(), "arch": platform.machine(),
                "python_version": platform.python_version(), "python_impl": platform.python_implementation(),
                "cpu_count": os.cpu_count(), "locale": "pt_BR", "is_ci": False,
                "product_version": "2.1.0", "product_build": "build-77", "product_edition": "Enterprise",
                "product_language": "de"}
    for record in carrying:
        meta = record["meta"]
        assert {k: meta.get(k) for k in expected} == expected, record
        assert meta["container"] is in_a_container()

    (plain,) = of_type(collector, None)
    assert plain["activity_type"] == "plain event"
    leaked = set(plain["meta"]) & set(DETECTED + PRODUCT_FIELDS)
    assert not leaked, f"client properties in a plain track() event: {leaked}"
    assert plain["meta"]["product_version"] == "2.1.0"  # every record has the product version


def test_container_and_ci_are_detected(collector, state_dir, make_agent):
    host = run_host(f"""
        import callhome
        callhome.init({host_options(collector, state_dir, send_in_ci=True)})
        callhome.call_home()
    """, env={"container": "podman", "GITLAB_CI": "true"})
    assert host.returncode == 0 and host.stderr == "", host.stderr
    agent = make_agent(send_in_ci=True)
    assert agent.flush(10)
    (record,) = of_type(collector, "call_home")
    assert record["meta"]["container"] is True and record["meta"]["is_ci"] is True
    assert "installation_id" not in record["meta"]  # none is kept in CI


# -- custom properties ---------------------------------------------------------------------------------

def test_custom_property_slots(make_agent, collector):
    agent = make_agent()
    assert agent.set_property(1, "alpha") is True
    assert agent.set_property(20, 42) is True
    assert agent.set_property(7, "cleared later") is True
    assert agent.set_property(7, None) is True
    assert agent.set_property(9, "two\nlines  ") is True
    refused = [0, 21, -1, "1", 1.0, True, None]
    for slot in refused:
        assert agent.set_property(slot, "x") is False, slot
    assert agent.status()["dropped"] == {"invalid": len(refused)}
    agent.call_home()
    assert agent.flush(10)
    (record,) = of_type(collector, "call_home")
    custom = {k: v for k, v in record["meta"].items() if k.startswith("custom_")}
    assert custom == {"custom_01": "alpha", "custom_20": 42, "custom_09": "two lines"}


def test_all_twenty_slots_and_a_license_fit_in_one_record(make_agent, collector):
    agent = make_agent(sessions=True, license_secret="s", product_version="1", product_build="2",
                       product_edition="3", product_language="4")
    for slot in range(1, 21):
        assert agent.set_property(slot, f"value {slot}" * 10)
    agent.set_license(type="purchased", expired=False, activated=True, blocked=False, allowed=True, key="k")
    with agent.session("many-properties"):
        pass
    agent.shutdown(5)
    sessions = of_type(collector, "session")
    assert len(sessions) == 2 and agent.status()["dropped"] == {}
    for record in sessions:
        assert [k for k in sorted(record["meta"]) if k.startswith("custom_")] == [f"custom_{i:02d}"
                                                                                    for i in range(1, 21)]


def test_a_call_home_with_many_keys_is_capped_to_what_the_schema_takes_and_delivered(make_agent, collector):
    """30 host meta keys, 20 custom properties and a license exceed the schema's 64 meta keys:
    the record must still be one the collector takes, with what was left out named."""
    agent = make_agent(license_secret="s", product_version="1")
    for slot in range(1, 21):
        agent.set_property(slot, f"value {slot}")
    agent.set_license(type="purchased", expired=False, activated=True, blocked=False, allowed=True, key="k")
    event_id = agent.call_home(meta={f"host_{i:02d}": i for i in range(30)})
    assert agent.flush(10)
    (record,) = [e for e in collector.store.events(limit=100) if e["event_id"] == event_id]
    meta = record["payload"]["meta"]
    assert len(meta) == 64 and all(f"host_{i:02d}" in meta for i in range(30)), sorted(meta)
    assert meta["os"] and meta["installation_id"], "the detected properties come before custom ones"
    status = agent.status()
    assert status["rejected"] == 0 and status["dropped"] == {}, status
    assert any("capped at 64 keys" in p and "left out" in p for p in status["problems"]), status["problems"]


@pytest.mark.parametrize("slot", [0, 21, "3"])
def test_a_bad_slot_raises_in_strict_mode(make_agent, slot):
    agent = make_agent(strict=True)
    with pytest.raises(ValueError):
        agent.set_property(slot, "x")


# -- license -------------------------------------------------------------------------------------------

KEY = "ACME-7Q2F-91XK-SECRET"
SECRET = "vendor-registry-secret"


def test_license_fields_and_the_key_only_as_an_hmac(make_agent, collector, state_dir):
    # first offline: what is queued on disk is looked at before anything is sent
    offline = make_agent(endpoint=closed_port_url(), sessions=True, license_secret=SECRET)
    assert offline.set_license(type="  Evaluation ", expired=False, activated=True, blocked=False, allowed=True,
                               key=KEY) is True
    offline.set_license(expired=True)  # None leaves the other values as they were
    offline.call_home()
    offline.shutdown(0.5)
    queued = files_under(state_dir)
    assert any(b"license_key_hmac" in data for data in queued.values()), "nothing queued"

    online = make_agent()
    assert online.flush(10)
    expected = hmac.new(SECRET.encode(), KEY.encode(), hashlib.sha256).hexdigest()
    records = of_type(collector, "call_home") + of_type(collector, "session")
    assert len(records) == 2
    for record in records:
        meta = record["meta"]
        assert {k: v for k, v in meta.items() if k.startswith("license_")} == {
            "license_type": "evaluation", "license_expired": True, "license_activated": True,
            "license_blocked": False, "license_allowed": True, "license_key_hmac": expected}

    sent_log = os.path.join(state_dir, PRODUCT, "sent.log")
    with open(sent_log, "rb") as f:
        assert expected.encode() in f.read()  # the sent log does hold what was sent
    for path, data in {**queued, **files_under(state_dir)}.items():
        assert KEY.encode() not in data, f"the license key in clear in {path}"
    for entry in collector.store.events(limit=10000):
        assert KEY not in json.dumps(entry["payload"])
    assert KEY not in repr(offline.status()) and KEY not in repr(offline.config)


def test_without_a_secret_the_key_is_not_sent(make_agent, collector, state_dir):
    agent = make_agent()
    assert agent.set_license(type="purchased", key=KEY) is True
    assert any("license_secret" in problem for problem in agent.status()["problems"])
    agent.call_home()
    assert agent.flush(10)
    (record,) = of_type(collector, "call_home")
    assert record["meta"]["license_type"] == "purchased"
    assert "license_key_hmac" not in record["meta"]
    assert KEY not in json.dumps(record)
    for path, data in files_under(state_dir).items():
        assert KEY.encode() not in data, path


# -- categorised events --------------------------------------------------------------------------------

@pytest.mark.parametrize("given, expected", [
    ("Build Tools", "Build Tools"),
    ("  Build \t\t Tools \n", "Build Tools"),
    ("line\none\r\ntwo", "line one two"),
    ("no\u00a0\u00a0break\u2003space", "no break space"),
    ("c" * 200, "c" * 128),
    ("c" * 127 + "   tail", "c" * 127),  # cut at 128, then no trailing space
    ("", None),
    ("   \t ", None),
    (None, None),
])
def test_categories(make_agent, collector, given, expected):
    agent = make_agent()
    assert agent.track("  export \t report\n", category=given)
    assert agent.flush(10)
    (record,) = payloads(collector)
    assert record["activity_type"] == "export report"
    assert record["meta"].get("category") == expected
    assert ("category" in record["meta"]) == (expected is not None)


def test_an_unusable_category_is_left_out_and_the_event_still_sent(make_agent, collector):
    agent = make_agent()
    event_id = agent.track("export", category=42)
    assert event_id
    assert agent.flush(10)
    (record,) = payloads(collector)
    assert record["event_id"] == event_id and "category" not in record["meta"]
    assert any("category" in problem for problem in agent.status()["problems"])


def test_activity_names_are_conditioned_like_categories(make_agent, collector):
    agent = make_agent()
    names = {"  open\t\tfile  ": "open file", "a" * 127 + " b": "a" * 127, "x\u3000\u3000y": "x y"}
    ids = {agent.track(given): expected for given, expected in names.items()}
    # nothing left of the name: not an event. The default mode finds it on the worker thread
    # (track() handed the raw call over), drops it and names it in problems.
    assert agent.track(" \t\n ")
    assert agent.flush(10)
    assert {p["event_id"]: p["activity_type"] for p in payloads(collector)} == ids
    status = agent.status()
    assert status["dropped"] == {"invalid": 1}
    assert any(p.startswith("track(' \\t\\n ') dropped: activity is empty") for p in status["problems"]), status


def test_strict_mode_refuses_an_unusable_activity_at_the_call(make_agent):
    agent = make_agent(strict=True)
    with pytest.raises(ValueError):
        agent.track(" \t\n ")
    assert make_agent(debug=True).track(" \t\n ") is None


# -- debug mode ------------------------------------------------------------------------------------------

def test_debug_mode_prints_the_session_with_its_properties_and_sends_nothing(collector, state_dir):
    options = host_options(collector, state_dir, sessions=True, product_edition="Community", license_secret=SECRET)
    host = run_host(f"""
        import callhome
        callhome.init({options})
        callhome.set_property(2, "beta-channel")
        callhome.set_license(type="freeware", key={KEY!r})
    """, env={"CALLHOME_DEBUG": "1", "LANG": "fr_CA.UTF-8", "LC_ALL": "", "LC_MESSAGES": ""})
    assert host.returncode == 0 and host.stdout == "", host.stdout
    lines = [line for line in host.stderr.splitlines() if line.startswith("[callhome] (not sent: debug mode) ")]
    requests = [json.loads(line.split(") ", 1)[1]) for line in lines]
    sessions = [r for r in requests if r["body"]["payload"]["meta"].get("record_type") == "session"]
    assert len(sessions) == 1, host.stderr
    meta = sessions[0]["body"]["payload"]["meta"]
    assert meta["closed_by"] == "exit" and meta["session_kind"] == "process"
    assert meta["os"] == platform.system() and meta["cpu_count"] == os.cpu_count() and meta["locale"] == "fr_CA"
    assert meta["product_edition"] == "Community" and meta["custom_02"] == "beta-channel"
    assert meta["license_type"] == "freeware"
    assert meta["license_key_hmac"] == hmac.new(SECRET.encode(), KEY.encode(), hashlib.sha256).hexdigest()
    assert KEY not in host.stderr
    assert collector.store.count() == 0
    assert not os.path.exists(state_dir), "debug mode wrote to disk"


@pytest.mark.parametrize("given, sent", [
    (True, True), (False, False), (1, True), (0, False), ("true", True), (" No ", False), ("yes", True),
    ("FALSE", False), ("1", True), ("0", False),
])
def test_a_license_flag_is_read_as_written(make_agent, given, sent):
    agent = make_agent()
    agent.set_license(expired=True)
    agent.set_license(expired=given)
    assert agent.state.properties["license_expired"] is sent
    assert agent.status()["problems"] == []


@pytest.mark.parametrize("given", [-1, "-1", None])
def test_minus_one_and_none_leave_a_license_flag_unchanged(make_agent, given):
    agent = make_agent()
    agent.set_license(expired=True)
    agent.set_license(expired=given)
    assert agent.state.properties["license_expired"] is True and agent.status()["problems"] == []


@pytest.mark.parametrize("given", ["maybe", 2, -2, 1.0, 0.5, float("nan"), [], {}, b"true", object()])
def test_a_license_flag_that_means_nothing_is_refused_and_named(make_agent, given):
    agent = make_agent()
    agent.set_license(expired=False)
    agent.set_license(expired=given)
    assert agent.state.properties["license_expired"] is False, "guessed a meaning"
    assert any("set_license(expired=" in p for p in agent.status()["problems"]), agent.status()["problems"]
    with pytest.raises(ValueError):
        make_agent(strict=True).set_license(expired=given)


def test_a_license_type_that_is_not_valid_unicode_is_sent_repaired(make_agent, collector):
    agent = make_agent()
    agent.set_license(type="pro\ud800 plan")
    event_id = agent.call_home()
    assert agent.flush(10)
    (record,) = [e for e in collector.store.events(limit=10) if e["event_id"] == event_id]
    assert record["payload"]["meta"]["license_type"] == "pro? plan"
    assert agent.status()["rejected"] == 0
