"""callhome.config.resolve: defaults, environment, precedence, validation, immutability."""

from __future__ import annotations

import json
import logging
import os

import pytest

from callhome.config import DEFAULT_ENDPOINT, ENV, Config, env_flag, resolve
from callhome.optout import decide
from callhome.schema import validate

from conftest import host_options, run_host

# Every option of init() and the value resolve() gives it when nothing is set (docs/configuration.md).
DEFAULTS = {
    "api_key": None,
    "endpoint": "https://ingest.reo.dev",
    "environment": "PRODUCTION",
    "source": "TELEMETRY",
    "domain": None,
    "ip_addr": None,
    "relay": False,
    "product_version": None,
    "data_dir": None,
    "flush_interval": 5.0,
    "call_home_interval": 86400.0,
    "call_home_activity": "CALL_HOME",
    "timeout": 5.0,
    "exit_timeout": 0.05,
    "debug": False,
    "strict": False,
    "enabled": True,
    "send_in_ci": False,
    "env_prefix": None,
    "optout_env": (),
    "max_buffer": 50000,
    "max_buffer_bytes": 16 * 1024 * 1024,
    "consent": "opt-out",
    "aggregate_interval": 3600.0,
    "activity_modes": {},
    "cli_command": None,
    "max_queue_events": 50000,
    "max_queue_bytes": 32 * 1024 * 1024,
    "max_age": 7 * 86400.0,
    "max_attempts": 12,
    "max_event_bytes": 32 * 1024,
    "fsync": False,
    "sender": "auto",
    "sender_idle_timeout": 30.0,
    "sender_lifetime": 3600.0,
    "product_build": None,
    "product_edition": None,
    "product_language": None,
    "sessions": True,
    "session_activity": "SESSION",
    "heartbeat_interval": 300.0,
    "exception_activity": "EXCEPTION",
    "capture_exceptions": False,
    "exception_messages": False,
    "license_secret": None,
}

# variable -> (raw value, what the option becomes). One row per entry of config.ENV.
ENV_EXAMPLES = {
    "CALLHOME_ENDPOINT": ("https://collector.acme.example", "https://collector.acme.example"),
    "CALLHOME_API_KEY": ("key-from-env", "key-from-env"),
    "REO_API_KEY": ("reo-key", "reo-key"),
    "CALLHOME_ENVIRONMENT": ("STAGING", "STAGING"),
    "CALLHOME_DOMAIN": ("acme.example", "acme.example"),
    "CALLHOME_IP_ADDR": ("203.0.113.7", "203.0.113.7"),
    "CALLHOME_DIR": ("/srv/callhome-state", "/srv/callhome-state"),
    "CALLHOME_FLUSH_INTERVAL": ("2.5", 2.5),
    "CALLHOME_CALL_HOME_INTERVAL": (" 60 ", 60.0),
    "CALLHOME_TIMEOUT": ("1.5", 1.5),
    "CALLHOME_RELAY": ("yes", True),
    "CALLHOME_AGGREGATE_INTERVAL": ("600", 600.0),
    "CALLHOME_HEARTBEAT_INTERVAL": ("60", 60.0),
    "CALLHOME_SENDER": ("Thread", "thread"),
    "CALLHOME_SENDER_IDLE": ("5", 5.0),
}

# An argument value for the option each variable sets, different from ENV_EXAMPLES.
ARGUMENTS = {
    "endpoint": "https://arg.acme.example",
    "api_key": "key-from-arg",
    "environment": "DEV",
    "domain": "arg.example",
    "ip_addr": "198.51.100.1",
    "data_dir": "/srv/from-arg",
    "flush_interval": 9.0,
    "call_home_interval": 120.0,
    "aggregate_interval": 900.0,
    "heartbeat_interval": 30.0,
    "sender": "process",
    "sender_idle_timeout": 12.0,
    "timeout": 3.0,
    "relay": False,
}


def test_every_option_has_its_default():
    cfg = resolve({"product_id": "acme-cli"}, {})
    assert set(DEFAULTS) | {"product_id", "problems", "endpoint_refused"} == set(Config.__slots__), \
        "an option has no default test"
    assert cfg.endpoint_refused is None
    assert {name: getattr(cfg, name) for name in DEFAULTS} == DEFAULTS
    assert cfg.product_id == "acme-cli"
    assert cfg.problems == []
    assert DEFAULT_ENDPOINT == DEFAULTS["endpoint"]


def test_every_environment_variable_is_tested():
    assert set(ENV_EXAMPLES) == set(ENV)


@pytest.mark.parametrize("variable", sorted(ENV))
def test_environment_variable_sets_its_option(variable):
    raw, expected = ENV_EXAMPLES[variable]
    cfg = resolve({"product_id": "p"}, {variable: raw})
    assert getattr(cfg, ENV[variable]) == expected
    assert cfg.problems == []


@pytest.mark.parametrize("variable", sorted(ENV))
def test_argument_beats_environment(variable):
    option = ENV[variable]
    raw, _ = ENV_EXAMPLES[variable]
    cfg = resolve({"product_id": "p", option: ARGUMENTS[option]}, {variable: raw})
    assert getattr(cfg, option) == ARGUMENTS[option]


def test_callhome_api_key_beats_reo_api_key():
    cfg = resolve({"product_id": "p"}, {"CALLHOME_API_KEY": "ours", "REO_API_KEY": "reos"})
    assert cfg.api_key == "ours"


def test_blank_environment_values_count_as_unset():
    cfg = resolve({"product_id": "p"}, {"CALLHOME_API_KEY": "  ", "REO_API_KEY": "reo", "CALLHOME_TIMEOUT": ""})
    assert cfg.api_key == "reo"
    assert cfg.timeout == DEFAULTS["timeout"]
    assert cfg.problems == []


def test_callhome_debug_is_an_end_user_switch_the_host_cannot_turn_off():
    assert resolve({"product_id": "p", "debug": False}, {"CALLHOME_DEBUG": "1"}).debug is True
    assert resolve({"product_id": "p"}, {"CALLHOME_DEBUG": "0"}).debug is False
    assert resolve({"product_id": "p", "debug": True}, {}).debug is True


def test_data_dir_expands_the_home_directory():
    cfg = resolve({"product_id": "p", "data_dir": "~/state"}, {})
    assert cfg.data_dir == os.path.join(os.path.expanduser("~"), "state")


@pytest.mark.parametrize("variable, raw", [
    ("CALLHOME_FLUSH_INTERVAL", "soon"),
    ("CALLHOME_FLUSH_INTERVAL", "-1"),
    ("CALLHOME_FLUSH_INTERVAL", "nan"),
    ("CALLHOME_CALL_HOME_INTERVAL", "inf"),
    ("CALLHOME_CALL_HOME_INTERVAL", "1e12"),
    ("CALLHOME_TIMEOUT", "5s"),
    ("CALLHOME_TIMEOUT", "\u0665\u0666x"),
])
def test_bad_environment_value_falls_back_and_is_recorded(variable, raw):
    cfg = resolve({"product_id": "p"}, {variable: raw})  # never raises, even with strict
    assert getattr(cfg, ENV[variable]) == DEFAULTS[ENV[variable]]
    assert len(cfg.problems) == 1
    strict = resolve({"product_id": "p", "strict": True}, {variable: raw})
    assert getattr(strict, ENV[variable]) == DEFAULTS[ENV[variable]] and strict.problems


BAD_ARGUMENTS = [
    ("flush_interval", "soon"),
    ("flush_interval", -1),
    ("call_home_interval", float("nan")),
    ("timeout", [1]),
    ("exit_timeout", 10 ** 10),
    ("max_buffer", 0),
    ("max_queue_events", "many"),
    ("max_attempts", -3),
    ("source", "WEB"),
]


@pytest.mark.parametrize("option, value", BAD_ARGUMENTS)
def test_bad_argument_is_ignored_and_recorded_by_default(option, value):
    cfg = resolve({"product_id": "p", option: value}, {})
    assert getattr(cfg, option) == DEFAULTS[option]
    assert len(cfg.problems) == 1 and option in cfg.problems[0]


@pytest.mark.parametrize("option, value", BAD_ARGUMENTS)
def test_bad_argument_raises_value_error_with_strict(option, value):
    with pytest.raises(ValueError):
        resolve({"product_id": "p", option: value, "strict": True}, {})


def test_bad_argument_falls_back_to_the_environment_not_the_default():
    cfg = resolve({"product_id": "p", "timeout": "long"}, {"CALLHOME_TIMEOUT": "2"})
    assert cfg.timeout == 2.0
    assert len(cfg.problems) == 1


@pytest.mark.parametrize("product_id", [None, "", "   ", 42, b"bytes"])
def test_product_id_is_required(product_id):
    with pytest.raises(ValueError):
        resolve({"product_id": product_id}, {})
    with pytest.raises(ValueError):
        resolve({"product_id": product_id, "strict": False}, {})


def test_product_id_is_trimmed():
    assert resolve({"product_id": "  acme  "}, {}).product_id == "acme"


@pytest.mark.parametrize("option, meant", [("api_keys", "api_key"), ("flushinterval", "flush_interval"),
                                           ("Debug", "debug"), ("endpont", "endpoint"),
                                           ("product_versoin", "product_version"), ("zzz", None)])
def test_an_unknown_option_is_ignored_named_with_the_nearest_one_and_a_type_error_when_strict(option, meant):
    config = resolve({"product_id": "p", option: "x", "domain": "acme.example"}, {})
    assert config.domain == "acme.example"  # everything else applies
    (problem,) = config.problems
    assert repr(option) in problem and "ignored" in problem
    assert (f"did you mean {meant!r}" in problem) if meant else "did you mean" not in problem
    with pytest.raises(TypeError, match=option):
        resolve({"product_id": "p", option: "x", "strict": True}, {})


def test_a_misspelt_option_leaves_telemetry_on_and_says_so(make_agent, collector, caplog):
    with caplog.at_level(logging.WARNING, logger="callhome"):
        agent = make_agent(endpont="https://typo.example")
    status = agent.status()
    assert status["enabled"] is True, status
    assert any("'endpont'" in p and "did you mean 'endpoint'" in p for p in status["problems"]), status["problems"]
    assert sum("'endpont'" in record.getMessage() for record in caplog.records) == 1
    event_id = agent.track("secondary1")
    assert agent.flush(10) and collector.store.count() >= 1 and event_id


@pytest.mark.parametrize("endpoint, expected", [
    ("https://ingest.reo.dev", "https://ingest.reo.dev"),
    ("https://ingest.reo.dev/", "https://ingest.reo.dev"),
    ("https://collector.acme.example:8443", "https://collector.acme.example:8443"),
    ("https://10.1.2.3", "https://10.1.2.3"),
    ("http://127.0.0.1:8765", "http://127.0.0.1:8765"),
    ("http://localhost:8765/", "http://localhost:8765"),
    ("http://localhost", "http://localhost"),
    ("http://[::1]:9000", "http://[::1]:9000"),
    ("  https://ingest.reo.dev  ", "https://ingest.reo.dev"),
])
def test_endpoint_accepted(endpoint, expected):
    cfg = resolve({"product_id": "p", "endpoint": endpoint, "strict": True}, {})
    assert cfg.endpoint == expected


@pytest.mark.parametrize("endpoint", [
    "http://ingest.reo.dev",               # plain http off the machine
    "http://10.0.0.1:8765",
    "http://127.0.0.1.evil.example",
    "http://localhost.evil.example",
    "http://[::2]:80",
    "https://ingest.reo.dev/api",          # a path
    "http://127.0.0.1:8765/api/product/usage",
    "ingest.reo.dev",                      # no scheme
    "ftp://ingest.reo.dev",
    "https://",
])
def test_a_refused_endpoint_sends_nothing_rather_than_to_the_default(endpoint):
    """An operator who meant to keep data in-house (a plain-http collector on the network, a
    typo) must not have it sent to Reo instead: the agent is off, and says why."""
    for cfg in (resolve({"product_id": "p", "endpoint": endpoint}, {}),
                resolve({"product_id": "p"}, {"CALLHOME_ENDPOINT": endpoint}),
                resolve({"product_id": "p", "endpoint": endpoint}, {"CALLHOME_ENDPOINT": "https://fine.example"})):
        assert cfg.endpoint != DEFAULT_ENDPOINT and cfg.endpoint_refused
        decision = decide(cfg, environ={})
        assert decision.enabled is False and "nothing is sent" in decision.reason
        assert any("endpoint" in p.lower() and "refused" in p for p in cfg.problems)
    with pytest.raises(ValueError):
        resolve({"product_id": "p", "endpoint": endpoint, "strict": True}, {})
    # an environment value never raises, even with strict: whoever runs the product cannot crash it
    assert resolve({"product_id": "p", "strict": True}, {"CALLHOME_ENDPOINT": endpoint}).endpoint_refused


def test_a_host_whose_endpoint_is_refused_creates_nothing_and_sends_nothing(collector, state_dir):
    host = run_host(f"""
        import json, callhome
        callhome.init({host_options(collector, state_dir, endpoint="http://collector.internal:8765")})
        callhome.track("secondary1")
        print(json.dumps(callhome.status()))
    """)
    assert host.returncode == 0 and host.stderr == "", host.stderr
    status = json.loads(host.stdout)
    assert status["enabled"] is False and "collector.internal" in status["reason"], status
    assert not os.path.exists(state_dir) or os.listdir(state_dir) == []
    assert collector.app.requests.total == 0


@pytest.mark.parametrize("source, expected", [
    ("TELEMETRY", "TELEMETRY"),
    ("telemetry", "TELEMETRY"),
    ("PRODUCT_CLOUD", "PRODUCT_CLOUD"),
    ("product_cloud", "PRODUCT_CLOUD"),
    ("SAAS_PRODUCT", "PRODUCT_CLOUD"),
    ("saas_product", "PRODUCT_CLOUD"),
])
def test_source_accepted(source, expected):
    assert resolve({"product_id": "p", "source": source, "strict": True}, {}).source == expected


def test_source_refused():
    cfg = resolve({"product_id": "p", "source": "MOBILE"}, {})
    assert cfg.source == "TELEMETRY"
    assert any("source" in p for p in cfg.problems)


@pytest.mark.parametrize("value, expected", [("LEGACY_OFF", ("LEGACY_OFF",)),
                                             (["A_OFF", "B_OFF"], ("A_OFF", "B_OFF"))])
def test_optout_env_becomes_a_tuple(value, expected):
    assert resolve({"product_id": "p", "optout_env": value}, {}).optout_env == expected


def test_config_is_immutable():
    cfg = resolve({"product_id": "p", "api_key": "k"}, {})
    with pytest.raises(AttributeError):
        cfg.api_key = "other"
    with pytest.raises(AttributeError):
        cfg.brand_new = 1
    with pytest.raises(AttributeError):
        del cfg.timeout
    assert cfg.api_key == "k"


def test_repr_never_shows_the_api_key():
    secret = "sk-live-7f3a9c2e1d"
    text = repr(resolve({"product_id": "p", "api_key": secret}, {}))
    assert secret not in text and secret[:6] not in text
    assert "api_key" in text
    assert "api_key': None" in repr(resolve({"product_id": "p"}, {}))


@pytest.mark.parametrize("raw, expected", [
    (None, False), ("", False), ("   ", False),
    ("0", False), ("false", False), ("FALSE", False), (" False ", False), ("no", False), ("off", False),
    ("n", False), ("f", False), ("disabled", False), ("DISABLED", False), ("\t0\n", False),
    ("1", True), ("true", True), (" TRUE ", True), ("yes", True), ("on", True), ("y", True),
    ("t", True), ("enabled", True), ("bananas", True), ("2", True), ("-1", True),
    ("\u00fcn\u00efc\u00f6d\u00e9", True), ("x" * 100000, True), ("0 0", True), ("\x00", True),
])
def test_env_flag(raw, expected):
    assert env_flag(raw) is expected


@pytest.mark.parametrize("given, kept", [
    ("acme.example", "acme.example"), ("https://acme.example/path?q=1", "acme.example"),
    ("ACME.Example.", "acme.example"), ("dev@acme.example", "acme.example"), ("acme.example:8443", "acme.example"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("not-a-domain", None), ("1.2.3.4", None), ("a..b", None), ("-a.example", None), ("a_b.example", None),
    ("x" * 64 + ".example", None), ("https://", None), ("acme example", None),
])
def test_domain_is_normalised_or_refused_and_what_is_kept_passes_the_schema(given, kept):
    config = resolve({"product_id": "p", "domain": given}, {})
    assert config.domain == kept
    assert bool(config.problems) is (kept is None), config.problems
    if kept:
        payload = {"activity_type": "x", "product_id": "p", "source": "TELEMETRY", "domain": kept}
        assert [e.message for e in validate(payload, "usage") if e.field == "domain"] == []


@pytest.mark.parametrize("given, kept", [("10.0.0.1", "10.0.0.1"), (" 2001:DB8::1 ", "2001:db8::1"), ("::1", "::1"),
                                         ("not-an-ip", None), ("999.1.1.1", None), ("10.0.0.1/8", None)])
def test_ip_addr_is_normalised_or_refused(given, kept):
    config = resolve({"product_id": "p", "ip_addr": given}, {})
    assert config.ip_addr == kept
    assert bool(config.problems) is (kept is None), config.problems


def test_a_refused_domain_holds_records_and_says_why(make_agent, collector):
    agent = make_agent(domain="https://")
    agent.track("secondary1")
    agent.flush(1)
    status = agent.status()
    assert status["state"].startswith("held"), status["state"]
    assert any("domain=" in problem for problem in status["problems"]), status["problems"]
    assert collector.app.requests.total == 0


def test_the_docs_say_what_a_bad_value_of_every_option_gets():
    import re

    from callhome.config import _OPTIONS

    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "configuration.md")) as f:
        section = f.read().split("## What a bad value gets", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([a-z_]+)`", section))
    assert set(_OPTIONS) - named == set(), "options missing from 'What a bad value gets'"


def test_every_field_of_config_is_typed():
    """``mypy`` (and a host's type checker) knows each field: the annotations follow the slots."""
    assert set(Config.__annotations__) == set(Config.__slots__)
