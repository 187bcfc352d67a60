"""The ``callhome`` verbs beyond status/flush, through real subprocesses; and the host embedding."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import textwrap

import pytest
from test_cli import backlog, cli  # noqa: F401  (backlog is a fixture: three events left on disk)

from callhome import privacy
from callhome._lock import is_held
from callhome.cli import main

from conftest import API_KEY, PRODUCT, ROOT, closed_port_url, host_options, listing, run_host, wait_until


def verb(state_dir: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m callhome <args> --product test-product --dir <state_dir>``."""
    return cli(*args, "--product", PRODUCT, "--dir", state_dir, env=env)


def run_cli(state_dir: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """``verb`` with the caller's stdio (a terminal for stderr or stdin)."""
    command = [sys.executable, "-m", "callhome", *args, "--product", PRODUCT, "--dir", state_dir]
    return subprocess.run(command, env=dict(os.environ, PYTHONPATH=ROOT, CALLHOME_API_KEY=API_KEY),
                          text=True, timeout=60, **kwargs)


def verb_json(state_dir: str, *args: str, env: dict | None = None):
    done = verb(state_dir, *args, "--json", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def product_path(state_dir: str, *names: str) -> str:
    return os.path.join(state_dir, PRODUCT, *names)


SENDING_HOST = """
    import json, callhome
    callhome.init({options})
    ids = [callhome.track("secondary1", meta={{"i": i}}) for i in range(2)]
    assert callhome.flush(10)
    print(json.dumps(ids))
"""


@pytest.fixture
def sent(collector, state_dir):
    """Two events a host delivered; the collector received them."""
    done = run_host(SENDING_HOST.format(options=host_options(collector, state_dir)))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# -- status ------------------------------------------------------------------------------------
def test_status_shows_paths_choices_and_the_last_send(sent, state_dir):
    report = verb_json(state_dir, "status")
    assert report["id_file"] == product_path(state_dir, "installation_id")
    assert report["sent_log"] == product_path(state_dir, "sent.log")
    assert report["global_choice_file"] == os.path.join(state_dir, "choices.json")
    assert (report["queued"], report["held"], report["dead_lettered"], report["corrupt"]) == (0, 0, 0, 0)
    assert report["last_send"]["outcome"] == "ok" and report["last_send"]["event_id"] == sent[-1]
    # the host ran without a terminal: its notice was logged, which is not "shown"
    assert report["notice"].startswith("logged") and report["notice_logged_at"] and not report["notice_shown_at"]
    assert (report["consent"], report["consent_mode"]) == (False, None)
    assert report["version"] and report["api_key"] == "missing"


@pytest.mark.parametrize("env, reason", [
    ({"CI": "true"}, "CI detected"),
    ({"CALLHOME_DISABLE": "yes"}, "CALLHOME_DISABLE=yes"),
    ({"TEST_PRODUCT_TELEMETRY_DISABLED": "1"}, "TEST_PRODUCT_TELEMETRY_DISABLED=1"),
])
def test_status_gives_the_reason(state_dir, env, reason):
    report = verb_json(state_dir, "status", env=env)
    assert report["enabled"] is False and reason in report["reason"]
    assert report["ci"] is (env == {"CI": "true"})


def test_status_counts_events_held_for_want_of_a_domain(collector, state_dir):
    done = run_host(f"""
        import callhome
        callhome.init({host_options(collector, state_dir, domain=None, exit_timeout=2.0)})
        callhome.track("secondary1")
    """)
    assert done.returncode == 0, done.stderr
    report = verb_json(state_dir, "status")
    assert report["queued"] == report["held"] == 1


@pytest.mark.parametrize("api_key, held", [(API_KEY, 0), (None, 1)])
def test_status_counts_held_events_by_what_the_product_lacked_not_by_this_commands_key(
        collector, state_dir, api_key, held):
    """The key is never saved, and a person runs ``status`` without it: a product that has one is
    sending (here: trying, against a closed port), not holding."""
    done = run_host(f"""
        import callhome
        callhome.init({host_options(collector, state_dir, api_key=api_key, endpoint=closed_port_url(),
                                    exit_timeout=0.5)})
        callhome.track("secondary1")
    """)
    assert done.returncode == 0, done.stderr
    report = verb_json(state_dir, "status")
    assert report["queued"] >= 1 and report["held"] == held * report["queued"], report
    with_key = verb_json(state_dir, "status", env={"CALLHOME_API_KEY": API_KEY})
    assert with_key["held"] == 0  # with a key here, a flush from this command would send them


def test_status_is_the_default_verb_and_takes_the_product_from_the_environment(backlog, state_dir):
    done = cli("--json", "--dir", state_dir, env={"CALLHOME_PRODUCT": PRODUCT})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["queued"] == 3


# -- preview -----------------------------------------------------------------------------------
def test_preview_shows_the_queue_and_the_next_request_and_sends_nothing(backlog, collector, state_dir):
    collector.app.clear_faults()
    requests_before, ready_before = collector.app.requests.total, listing(state_dir, "ready")
    as_json = verb(state_dir, "preview", "--json", env={"CALLHOME_API_KEY": API_KEY})
    report = json.loads(as_json.stdout)
    assert [e["event_id"] for e in report["events"]] == backlog
    request = report["next_request"]
    assert request["method"] == "POST" and request["url"] == collector.url + "/api/product/usage"
    assert request["headers"]["X-API-KEY"] == "***"
    assert request["headers"]["Idempotency-Key"] == backlog[0]
    assert request["body"]["payload"]["domain"] == "example.com"

    plain = verb(state_dir, "dump", "-n", "1", env={"CALLHOME_API_KEY": API_KEY})
    assert plain.returncode == 0
    assert "X-API-KEY: ***" in plain.stdout and f"POST {collector.url}/api/product/usage" in plain.stdout
    assert "queued events: 3 (showing 1)" in plain.stdout
    assert API_KEY not in as_json.stdout + as_json.stderr + plain.stdout + plain.stderr
    assert collector.app.requests.total == requests_before
    assert listing(state_dir, "ready") == ready_before  # read, never claimed


def test_preview_of_an_empty_queue_is_the_call_home_even_when_disabled(sent, state_dir):
    report = verb_json(state_dir, "preview", env={"DO_NOT_TRACK": "1"})
    assert report["enabled"] is False and "DO_NOT_TRACK" in report["reason"]
    payload = report["next_request"]["body"]["payload"]
    assert payload["activity_type"] == "CALL_HOME" and payload["meta"]["automatic"] is True
    assert payload["meta"]["installation_id"] == verb_json(state_dir, "status")["installation_id"]
    assert report["next_request"]["headers"]["X-API-KEY"] == "(not set)"
    plain = verb(state_dir, "preview", env={"DO_NOT_TRACK": "1"})
    assert "telemetry is off (disabled by DO_NOT_TRACK=1): nothing would be sent" in plain.stdout


# -- flush and log -----------------------------------------------------------------------------
def test_flush_draws_progress_on_a_terminal(backlog, collector, state_dir):
    collector.app.clear_faults()
    leader, follower = pty.openpty()
    done = run_cli(state_dir, "flush", stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    terminal = _read_all(leader)
    assert done.returncode == 0, terminal
    assert "delivered 3/3" in terminal
    assert done.stdout.strip() == "delivered 3 of 3 queued event(s); 0 remain (idle)"
    assert collector.store.count() == 3
    # the notice had only been logged (the host had no terminal): the person sees it now, once
    assert terminal.count("sends usage data") == 1 and terminal.index("sends usage data") < terminal.index("delivered")
    assert verb_json(state_dir, "status")["notice"] == "shown"


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace")


def test_flush_when_disabled_sends_nothing_and_exits_1(backlog, collector, state_dir):
    # the backlog's own host may or may not have tried (and failed) before it exited: count from here
    requests_before = collector.app.requests.total
    done = verb(state_dir, "flush", env={"CALLHOME_API_KEY": API_KEY, "CALLHOME_DISABLED": "1"})
    assert done.returncode == 1
    assert "nothing sent: telemetry is off (disabled by CALLHOME_DISABLED=1)" in done.stdout
    assert collector.app.requests.total == requests_before


def test_log_shows_the_last_sends(sent, state_dir):
    report = verb_json(state_dir, "log", "-n", "1")
    assert report["sent_log"] == product_path(state_dir, "sent.log")
    assert [e["payload"]["event_id"] for e in report["entries"]] == sent[-1:]
    assert report["entries"][0]["status"] == 200
    plain = verb(state_dir, "log")
    lines = plain.stdout.strip().splitlines()
    row = re.compile(r"\sok\s+200\s+secondary1\s+[0-9a-f-]{36}(\s|$)")
    assert len(lines) == 2 and all(row.search(line) for line in lines)


# -- enable / disable --------------------------------------------------------------------------
def test_enable_records_consent_and_warns_when_the_environment_wins(state_dir):
    done = verb(state_dir, "enable", "--json", "--force", env={"DO_NOT_TRACK": "1"})  # before its first run
    assert done.returncode == 0
    assert "warning:" in done.stderr and "DO_NOT_TRACK=1" in done.stderr
    report = json.loads(done.stdout)
    assert report["enabled"] is False and report["saved_to"] == product_path(state_dir, "choice.json")
    with open(report["saved_to"]) as f:
        saved = json.load(f)
    assert saved["consent"] is True and saved["disabled"] is False and saved["notice_version"] >= 1

    quiet = verb(state_dir, "on")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert quiet.stdout == f"Saved to {report['saved_to']}\ntelemetry is on for {PRODUCT}\n"


def test_disable_deletes_the_id_and_queue_and_the_host_then_sends_nothing(backlog, collector, state_dir):
    collector.app.clear_faults()
    requests_before = collector.app.requests.total  # the backlog's host may have tried once
    done = verb(state_dir, "disable")
    assert done.returncode == 0, done.stderr
    assert f"Saved to {product_path(state_dir, 'choice.json')}" in done.stdout
    assert f"off for {PRODUCT}; deleted 1 installation id(s) and 3 queued event(s)" in done.stdout
    assert not os.path.exists(product_path(state_dir, "installation_id"))
    assert listing(state_dir, "ready") == listing(state_dir, "tmp") == []

    again = run_host(BACKLOG_AGAIN.format(options=host_options(collector, state_dir)))
    assert again.returncode == 0, again.stderr
    assert collector.app.requests.total == requests_before
    assert not os.path.exists(product_path(state_dir, "installation_id"))
    report = verb_json(state_dir, "status")
    assert report["enabled"] is False and "`disable`" in report["reason"] and report["queued"] == 0


BACKLOG_AGAIN = """
    import callhome
    callhome.init({options})
    callhome.track("secondary1")
    callhome.flush(0.5)
"""


def test_global_disable_wins_over_a_product_enable(state_dir):
    done = cli("disable", "--global", "--dir", state_dir)  # no --product needed
    assert done.returncode == 0 and f"Saved to {os.path.join(state_dir, 'choices.json')}" in done.stdout
    enabled = verb(state_dir, "enable", "--force")
    assert "run `enable --global`" in enabled.stderr
    assert verb_json(state_dir, "status")["enabled"] is False
    assert cli("enable", "--global", "--dir", state_dir).returncode == 0
    assert verb_json(state_dir, "status")["enabled"] is True


# -- reset-id / forget -------------------------------------------------------------------------
def test_reset_id_deletes_the_id_and_the_salt(backlog, state_dir, monkeypatch):
    old = verb_json(state_dir, "status")["installation_id"]
    monkeypatch.setattr(privacy, "_salts", {})
    privacy.salted_hash("x", product_id=PRODUCT, data_dir=state_dir)
    assert os.path.exists(product_path(state_dir, "salt"))
    report = verb_json(state_dir, "reset-id")
    assert (report["old_installation_id"], report["deleted"]) == (old, True)
    assert not os.path.exists(product_path(state_dir, "installation_id"))
    assert not os.path.exists(product_path(state_dir, "salt"))
    assert verb_json(state_dir, "reset-id")["deleted"] is False
    assert verb(state_dir, "reset-id").stdout == f"no installation id was stored for {PRODUCT}\n"


def test_forget_asks_then_deletes_the_product_directory(backlog, state_dir):
    refused = verb(state_dir, "forget", "--json")  # stdin is not a terminal: --yes is required
    assert refused.returncode == 2 and "--yes" in refused.stderr and refused.stdout == ""
    assert os.path.isdir(product_path(state_dir))
    report = verb_json(state_dir, "forget", "--yes")
    assert report == {"deleted": True, "state_dir": product_path(state_dir)}
    assert not os.path.exists(product_path(state_dir))
    assert "nothing stored" in verb(state_dir, "forget").stdout


def test_forget_ends_the_running_sender_first(collector, state_dir):
    """A sender writing its status while forget deletes the directory made rmtree fail."""
    collector.app.fail_all("hang:0.05")  # the sender is busy when forget runs
    options = host_options(collector, state_dir, sender_idle_timeout=5)
    done = run_host(f"""
        import callhome
        callhome.init({options})
        for i in range(200):
            callhome.track("secondary1", meta={{"i": i}})
    """)
    assert done.returncode == 0 and done.stderr == ""
    lock = os.path.join(product_path(state_dir), "queue-v1", "locks", "sender.lock")
    assert wait_until(lambda: is_held(lock), timeout=10), "no sender was running: the test proves nothing"
    report = verb_json(state_dir, "forget", "--yes")
    assert report == {"deleted": True, "state_dir": product_path(state_dir)}
    assert not os.path.exists(product_path(state_dir))
    assert wait_until(lambda: not os.path.exists(lock), timeout=5)  # and nothing came back


def test_forget_on_a_terminal_takes_no_for_an_answer(backlog, state_dir):
    declined = _answer(state_dir, "n")
    assert declined.returncode == 1 and "nothing deleted" in declined.stderr
    assert "Delete all local callhome state of test-product" in declined.stderr
    assert os.path.isdir(product_path(state_dir))
    assert _answer(state_dir, "y").returncode == 0
    assert not os.path.exists(product_path(state_dir))


def _answer(state_dir: str, answer: str) -> subprocess.CompletedProcess:
    """``forget`` with its stdin on a terminal where ``answer`` was typed."""
    leader, follower = pty.openpty()
    os.write(leader, answer.encode() + b"\n")
    try:
        return run_cli(state_dir, "forget", stdin=follower, capture_output=True)
    finally:
        os.close(follower)
        os.close(leader)


# -- env ---------------------------------------------------------------------------------------
def test_env_lists_every_variable_and_masks_the_key(state_dir):
    env = {"CALLHOME_API_KEY": "s3cr3t-key", "REO_API_KEY": "other-s3cr3t", "DO_NOT_TRACK": " No ",
           "TEST_PRODUCT_TELEMETRY_DISABLED": "1", "CALLHOME_TIMEOUT": "soon", "BUILD_ID": "7", "CI": ""}
    done = verb(state_dir, "env", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert "s3cr3t" not in done.stdout + done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)["variables"]}
    expected = {
        "CALLHOME_API_KEY": ("***", "sets api_key"),
        "REO_API_KEY": ("***", "ignored: CALLHOME_API_KEY wins"),
        "DO_NOT_TRACK": (" No ", "ignored: explicit negative"),
        "TEST_PRODUCT_TELEMETRY_DISABLED": ("1", "opts out"),
        "CALLHOME_DISABLED": (None, "not set"),
        "CI": ("", "not set (empty)"),
        "BUILD_ID": ("7", "ignored without BUILD_URL or PROJECT_ID"),
        "GITHUB_ACTIONS": (None, "not set"),
        "CALLHOME_DEBUG": (None, "not set"),
        "CALLHOME_LOG_FILE": (None, "not set"),
        "CALLHOME_DIR": (state_dir, "sets data_dir"),
    }
    assert {name: (rows[name]["value"], rows[name]["meaning"]) for name in expected} == expected
    assert rows["CALLHOME_TIMEOUT"]["meaning"].startswith("CALLHOME_TIMEOUT='soon' ignored")
    plain = verb(state_dir, "env", env=env)
    assert re.search(r"^CALLHOME_API_KEY\s+\*\*\*\s+sets api_key$", plain.stdout, re.M)
    assert "s3cr3t" not in plain.stdout


# -- embedding ---------------------------------------------------------------------------------
ACME = """
    import argparse, sys
    from callhome.cli import add_telemetry_commands

    parser = argparse.ArgumentParser(prog="acme")
    parser.add_argument("--json", action="store_true", help="the host's own option of the same name")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build")
    build.set_defaults(func=lambda args: print("built", args.json) or 0)
    add_telemetry_commands(commands, product_id="acme-cli", data_dir={data_dir!r}, consent="opt-in",
                           cli_command="acme telemetry")
    args = parser.parse_args()
    sys.exit(args.func(args))
"""


@pytest.fixture
def acme(tmp_path, state_dir):
    """An argparse host program ``acme`` that mounts the verbs as ``acme telemetry``."""
    path = tmp_path / "acme.py"
    path.write_text(textwrap.dedent(ACME.format(data_dir=state_dir)))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(path), *args], env=dict(os.environ, PYTHONPATH=ROOT),
                              capture_output=True, text=True, timeout=60)

    return run


def test_a_host_argparse_cli_mounts_the_verbs(acme, state_dir):
    report = json.loads(acme("telemetry", "status", "--json").stdout)
    assert report["product_id"] == "acme-cli" and report["consent_mode"] == "opt-in"
    assert report["enabled"] is False and "waiting for consent" in report["reason"]
    assert report["state_dir"] == os.path.join(state_dir, "acme-cli")

    enabled = acme("telemetry", "enable")
    assert enabled.returncode == 0 and "Saved to" in enabled.stdout
    assert json.loads(acme("telemetry", "--json").stdout)["enabled"] is True  # status is the default verb

    disabled = acme("telemetry", "disable")
    assert disabled.returncode == 0
    assert f"Saved to {os.path.join(state_dir, 'acme-cli', 'choice.json')}" in disabled.stdout
    assert "`disable`" in json.loads(acme("telemetry", "status", "--json").stdout)["reason"]

    assert acme("build").stdout == "built False\n"  # the host's own commands are untouched
    assert acme("--json", "build").stdout == "built True\n"
    wrong = acme("telemetry", "status", "--product", "other")  # the product is the host's
    assert wrong.returncode == 2 and "unrecognized arguments: --product other" in wrong.stderr


def test_main_runs_the_verbs_for_any_framework(state_dir, capsys):
    assert main(["status", "--json"], product_id="acme-cli", data_dir=state_dir, consent="opt-in") == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["product_id"], report["consent_mode"]) == ("acme-cli", "opt-in")
    assert main(["bogus"], product_id="acme-cli") == 2  # returns instead of exiting the host
    assert "usage: acme-cli telemetry" in capsys.readouterr().err
    assert main(["env", "--json"], product_id="acme-cli", api_key="s3cr3t", endpoint="http://[::1]:1") == 0
    out = capsys.readouterr().out
    assert "s3cr3t" not in out
    with pytest.raises(TypeError):
        main(["status"], product_id="acme-cli", no_such_option=1)


@pytest.mark.parametrize("args", [["forget"], ["log", "-n", "many"], ["enable", "--product"]])
def test_bad_usage_of_the_new_verbs_exits_2(args):
    done = cli(*args)
    assert done.returncode == 2 and "usage:" in done.stderr and done.stdout == ""


def test_enable_or_disable_of_a_product_that_never_ran_here_is_refused_and_names_those_that_did(state_dir):
    os.makedirs(product_path(state_dir))  # the real product ran here; the command has a typo
    typo = cli("disable", "--product", PRODUCT.replace("-", "_"), "--dir", state_dir)
    assert typo.returncode == 1 and typo.stdout == "", typo.stdout
    assert "never run" in typo.stderr and PRODUCT in typo.stderr and "--force" in typo.stderr
    assert sorted(os.listdir(state_dir)) == [os.path.basename(product_path(state_dir))], "something was saved"
    ahead = cli("disable", "--product", "not-yet-run", "--dir", state_dir, "--force")  # opting out ahead
    assert ahead.returncode == 0 and "telemetry is off for not-yet-run" in ahead.stdout
