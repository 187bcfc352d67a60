"""callhome.optout: the parsing rule, the precedence of opt-outs, CI detection, and an opted-out agent."""

from __future__ import annotations

import os
import threading

import pytest

from callhome.config import resolve
from callhome.optout import CI_VARIABLES, decide, detect_ci, product_variable

# The opt-out values of optout_conventions.md §6.2: trimmed, case-insensitive, fail closed.
NOT_OPTED_OUT = ["", "   ", "0", "false", "FALSE", " False ", "no", "NO", "off", "Off", "n", "N", "f", "F",
                 "disabled", "Disabled", "\t0\n"]
OPTED_OUT = ["1", "true", "TRUE", " TRUE ", "yes", "on", "y", "t", "enabled", "bananas", "2", "-1", "0 0",
             "\u00fcn\u00efc\u00f6d\u00e9", "\u2603", "x" * 100000, "\x00", "false\x00", "nein"]

# Each opt-out variable: (the options the host passes to init(), the variable).
VARIABLES = {
    "DO_NOT_TRACK": ({"product_id": "my-cli"}, "DO_NOT_TRACK"),
    "CALLHOME_DISABLED": ({"product_id": "my-cli"}, "CALLHOME_DISABLED"),
    "CALLHOME_DISABLE": ({"product_id": "my-cli"}, "CALLHOME_DISABLE"),
    "product": ({"product_id": "my-cli"}, "MY_CLI_TELEMETRY_DISABLED"),
    "env_prefix": ({"product_id": "acme-command-line", "env_prefix": "ACME"}, "ACME_TELEMETRY_DISABLED"),
    "optout_env": ({"product_id": "my-cli", "optout_env": ["MYCLI_NO_ANALYTICS"]}, "MYCLI_NO_ANALYTICS"),
}


@pytest.mark.parametrize("which", sorted(VARIABLES))
def test_opt_out_parsing_rule(which):
    options, variable = VARIABLES[which]
    config = resolve(options, {})
    wrong = []
    for value, opted_out in [(v, False) for v in NOT_OPTED_OUT] + [(v, True) for v in OPTED_OUT]:
        decision = decide(config, {variable: value})
        expected_reason = variable in (decision.reason or "") if opted_out else decision.reason is None
        if decision.enabled is opted_out or not expected_reason:
            wrong.append((value[:20], decision))
    assert wrong == []


@pytest.mark.parametrize("product_id, variable", [
    ("my-cli", "MY_CLI_TELEMETRY_DISABLED"),
    ("acme", "ACME_TELEMETRY_DISABLED"),
    ("Acme.Tool v2", "ACME_TOOL_V2_TELEMETRY_DISABLED"),
    ("--weird__name--", "WEIRD_NAME_TELEMETRY_DISABLED"),
    ("data-pipeline.io", "DATA_PIPELINE_IO_TELEMETRY_DISABLED"),
])
def test_product_variable_name(product_id, variable):
    assert product_variable(resolve({"product_id": product_id}, {})) == variable


ALL_SIGNALS = {"CALLHOME_DISABLED": "1", "DO_NOT_TRACK": "1", "MY_CLI_TELEMETRY_DISABLED": "1", "CI": "true"}


@pytest.mark.parametrize("options, environ, reason", [
    ({"enabled": False}, ALL_SIGNALS, "enabled=False"),
    ({}, ALL_SIGNALS, "CALLHOME_DISABLED"),
    ({}, {**ALL_SIGNALS, "CALLHOME_DISABLED": "0"}, "DO_NOT_TRACK"),
    ({}, {"DO_NOT_TRACK": "1", "MY_CLI_TELEMETRY_DISABLED": "1", "CI": "true"}, "DO_NOT_TRACK"),
    ({}, {"MY_CLI_TELEMETRY_DISABLED": "1", "CI": "true"}, "MY_CLI_TELEMETRY_DISABLED"),
    ({}, {"DO_NOT_TRACK": "0", "MY_CLI_TELEMETRY_DISABLED": "yes"}, "MY_CLI_TELEMETRY_DISABLED"),
    ({}, {"CI": "true"}, "CI"),
    ({"send_in_ci": True}, {"DO_NOT_TRACK": "1", "CI": "true"}, "DO_NOT_TRACK"),
    ({"enabled": False}, {}, "enabled=False"),
])
def test_precedence_first_opt_out_is_the_reason(options, environ, reason):
    decision = decide(resolve(dict(options, product_id="my-cli"), {}), environ)
    assert decision.enabled is False
    assert reason in decision.reason
    for other in ("enabled=False", "CALLHOME_DISABLED", "DO_NOT_TRACK", "MY_CLI_TELEMETRY_DISABLED"):
        if other != reason:
            assert other not in decision.reason


def test_no_signal_means_enabled():
    decision = decide(resolve({"product_id": "my-cli"}, {}), {"DO_NOT_TRACK": "0", "CI": "false"})
    assert (decision.enabled, decision.reason, decision.is_ci) == (True, None, False)


# optout_conventions.md §6.4, as written; the union guards against an entry dropped from the constant.
SPEC_CI_VARIABLES = (
    "GITHUB_ACTIONS", "GITLAB_CI", "TF_BUILD", "BUILDKITE", "CIRCLECI", "TRAVIS", "APPVEYOR", "JENKINS_URL",
    "TEAMCITY_VERSION", "CODEBUILD_BUILD_ID", "BITBUCKET_BUILD_NUMBER", "BITBUCKET_COMMIT", "DRONE",
    "SEMAPHORE", "BUDDY", "JB_SPACE_API_URL", "CI_NAME", "CONTINUOUS_INTEGRATION",
)


@pytest.mark.parametrize("variable", sorted(set(SPEC_CI_VARIABLES) | set(CI_VARIABLES)))
def test_ci_variable_detected(variable):
    assert detect_ci({variable: "true"})
    assert not detect_ci({variable: "  "})
    decision = decide(resolve({"product_id": "p"}, {}), {variable: "1"})
    assert decision.enabled is False and decision.is_ci and "CI" in decision.reason


@pytest.mark.parametrize("environ, is_ci", [
    ({}, False),
    ({"CI": "true"}, True),
    ({"CI": "1"}, True),
    ({"CI": "woodpecker"}, True),
    ({"CI": "false"}, False),
    ({"CI": "0"}, False),
    ({"CI": " FALSE "}, False),
    ({"CI": ""}, False),
    ({"BUILD_ID": "42"}, False),
    ({"BUILD_URL": "https://jenkins.example/job/1"}, False),
    ({"PROJECT_ID": "my-gcp-project"}, False),
    ({"BUILD_ID": "42", "BUILD_URL": "https://jenkins.example/job/1"}, True),
    ({"BUILD_ID": "42", "PROJECT_ID": "my-gcp-project"}, True),
    ({"BUILD_ID": " ", "PROJECT_ID": "my-gcp-project"}, False),
    ({"RUN_ID": "7", "BUILD_NUMBER": "7"}, False),
])
def test_ci_detection(environ, is_ci):
    assert detect_ci(environ) is is_ci


def test_send_in_ci_enables_and_reports_ci():
    decision = decide(resolve({"product_id": "p", "send_in_ci": True}, {}), {"GITHUB_ACTIONS": "true"})
    assert decision.enabled is True and decision.is_ci is True and decision.reason is None


def _files_under(path):
    return [os.path.join(d, f) for d, _, files in os.walk(path) for f in files]


@pytest.mark.parametrize("call_home_interval", [0, 3600])
def test_opted_out_agent_creates_nothing_and_sends_nothing(monkeypatch, make_agent, collector, state_dir,
                                                           call_home_interval):
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    threads_before = set(threading.enumerate())
    agent = make_agent(call_home_interval=call_home_interval)
    assert agent.track("secondary1", meta={"k": "v"}) is None
    assert agent.track("primary", user_id="dev@example.com", user_id_type="EMAIL") is None
    assert agent.call_home() is None
    assert agent.flush(0.5) is True
    assert set(threading.enumerate()) == threads_before
    assert _files_under(state_dir) == []
    status = agent.status()
    assert status["enabled"] is False and "DO_NOT_TRACK" in status["reason"]
    assert status["accepted"] == 0
    agent.shutdown(0.2)
    assert collector.app.requests.total == 0
    assert collector.store.count() == 0
