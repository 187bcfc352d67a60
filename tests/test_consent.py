"""Saved choices, consent mode, the first-run notice, CI sending and the sent log, end to end."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import textwrap

from callhome import choices

from conftest import API_KEY, PRODUCT, ROOT, host_options, listing, run_host, wait_until

HOST = """
import json, callhome
callhome.init({options})
callhome.track("secondary1")
delivered = callhome.flush(5)
print(json.dumps(dict(callhome.status(), flushed=delivered)))
"""


def product_dir(state_dir: str) -> str:
    return os.path.join(state_dir, PRODUCT)


def run_on_terminal(code: str, timeout: float = 30) -> tuple[str, str]:
    """Run ``code`` with its stderr on a pseudo-terminal; returns (stdout, what the terminal showed)."""
    primary, secondary = pty.openpty()
    env = dict(os.environ, PYTHONPATH=ROOT)
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, stdout=subprocess.PIPE,
                               stderr=secondary, text=True)
    os.close(secondary)
    shown = b""
    while True:
        ready, _, _ = select.select([primary], [], [], timeout)
        if not ready:
            break
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    stdout, _ = process.communicate(timeout=timeout)
    os.close(primary)
    return stdout, shown.decode(errors="replace")


def host(collector, state_dir, **overrides) -> str:
    return HOST.format(options=host_options(collector, state_dir, **overrides))


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_notice_on_a_terminal_defers_the_first_send_to_the_next_run(collector, state_dir):
    stdout, shown = run_on_terminal(host(collector, state_dir))
    status = last_json(stdout)
    assert shown.count("sends usage data") == 1, shown  # once, not once per thread or hook
    assert "DO_NOT_TRACK=1" in shown
    assert "TEST_PRODUCT_TELEMETRY_DISABLED=1" in shown
    assert status["state"].startswith("deferred") and status["flushed"] is False
    assert collector.app.requests.total == 0
    assert choices.load(product_dir(state_dir))["notice_version"] == choices.NOTICE_VERSION

    stdout, shown = run_on_terminal(host(collector, state_dir))
    assert "sends usage data" not in shown  # once per product
    assert last_json(stdout)["flushed"] is True
    assert collector.store.count() == 2  # the first run's event too


def test_notice_without_a_terminal_is_logged_once_and_sending_goes_on(collector, state_dir):
    code = "import logging; logging.basicConfig(level=logging.WARNING)\n" + host(collector, state_dir)
    first, second = run_host(code), run_host(code)
    assert "sends usage data" in first.stderr
    assert "sends usage data" not in second.stderr
    assert last_json(first.stdout)["flushed"] is True
    assert collector.store.count() == 2


def test_a_new_notice_version_is_shown_again(collector, state_dir):
    choices.save(product_dir(state_dir), notice_version=choices.NOTICE_VERSION - 1)
    code = "import logging; logging.basicConfig(level=logging.WARNING)\n" + host(collector, state_dir)
    assert "sends usage data" in run_host(code).stderr


def test_a_saved_disable_creates_nothing_and_sends_nothing(collector, state_dir):
    saved = choices.save(product_dir(state_dir), disabled=True)
    status = last_json(run_host(host(collector, state_dir)).stdout)
    assert status["enabled"] is False and saved in status["reason"]
    assert sorted(os.listdir(product_dir(state_dir))) == [choices.PRODUCT_FILE]
    assert collector.app.requests.total == 0


def test_a_global_disable_wins_over_a_product_enable(collector, state_dir):
    choices.save(product_dir(state_dir), scope="global", disabled=True)
    choices.save(product_dir(state_dir), disabled=False, consent=True)
    status = last_json(run_host(host(collector, state_dir)).stdout)
    assert status["enabled"] is False and choices.GLOBAL_FILE in status["reason"]
    assert collector.app.requests.total == 0


def test_opt_in_consent_sends_nothing_until_enabled(collector, state_dir):
    status = last_json(run_host(host(collector, state_dir, consent="opt-in")).stdout)
    assert status["enabled"] is False and "consent" in status["reason"]
    assert not os.path.exists(os.path.join(product_dir(state_dir), "queue-v1"))
    assert collector.app.requests.total == 0

    choices.save(product_dir(state_dir), consent=True, notice_version=choices.NOTICE_VERSION)
    assert last_json(run_host(host(collector, state_dir, consent="opt-in")).stdout)["flushed"] is True
    assert collector.store.count() == 1


def test_turning_telemetry_off_discards_the_queue(make_agent, collector, state_dir):
    collector.app.fail_all(503)
    agent = make_agent()
    agent.track("secondary1")
    agent.track("secondary1")
    assert wait_until(lambda: listing(state_dir, "ready"))
    choices.save(product_dir(state_dir), disabled=True)
    collector.app.fail_all(None)
    agent.flush(2)
    assert listing(state_dir, "ready") == [] and listing(state_dir, "inflight") == []
    status = agent.status()
    assert status["dropped"].get("opted_out") == 2, {k: status[k] for k in ("state", "dropped", "delivered", "reason")}
    assert collector.store.count() == 0


def test_ci_sending_keeps_no_installation_id_and_marks_events(collector, state_dir, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    run_host(host(collector, state_dir, send_in_ci=True))
    (event,) = collector.store.events()
    assert event["payload"]["meta"]["is_ci"] is True
    assert "installation_id" not in event["payload"]["meta"]
    assert not os.path.exists(os.path.join(product_dir(state_dir), "installation_id"))


def test_sent_log_and_log_file_keep_what_was_sent_without_the_key(make_agent, collector, state_dir, tmp_path,
                                                                 monkeypatch):
    log_file = tmp_path / "sent.jsonl"
    monkeypatch.setenv("CALLHOME_LOG_FILE", str(log_file))
    agent = make_agent()
    event_id = agent.track("secondary1", meta={"command": "build"})
    assert agent.flush(5)
    for path in (os.path.join(product_dir(state_dir), "sent.log"), str(log_file)):
        with open(path) as f:
            text = f.read()
        entries = [json.loads(line) for line in text.splitlines()]
        assert [e["payload"]["event_id"] for e in entries] == [event_id]
        assert entries[0]["outcome"] == "ok" and entries[0]["status"] == 200
        assert entries[0]["url"] == collector.url + "/api/product/usage"
        assert API_KEY not in text


def test_the_notice_says_what_this_configuration_sends(collector, state_dir):
    from callhome.config import resolve
    from callhome.notice import notice_text

    plain = notice_text(resolve({"product_id": PRODUCT, "domain": "acme.example"}, {}))
    assert "anonymous" not in plain and "the company domain acme.example" in plain
    assert "User ids" in plain and "Crashes" not in plain
    crashes = notice_text(resolve({"product_id": PRODUCT, "ip_addr": "198.51.100.7", "capture_exceptions": True}, {}))
    assert "the IP address 198.51.100.7" in crashes and "(not its message)" in crashes
    messages = notice_text(resolve({"product_id": PRODUCT, "capture_exceptions": True, "exception_messages": True}, {}))
    assert "and its message" in messages
