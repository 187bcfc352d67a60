"""``python -m callhome``: status, flush, demo and usage errors, through real subprocesses."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid

import pytest

from conftest import API_KEY, PRODUCT, ROOT, host_options, run_host


def cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    return subprocess.run([sys.executable, "-m", "callhome", *args], env=full_env, timeout=timeout,
                          capture_output=True, text=True)


def status(state_dir: str, env: dict | None = None) -> dict:
    done = cli("status", "--product", PRODUCT, "--dir", state_dir, "--json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


BACKLOG_HOST = """
    import json, callhome
    callhome.init({options})
    print(json.dumps([callhome.track("secondary1", meta={{"i": i}}) for i in range(3)]))
"""


@pytest.fixture
def backlog(collector, state_dir):
    """Three events a host left on disk: the endpoint answered 503 to everything while it ran.

    Its sender is a thread, which ends with it: a detached one would deliver the backlog as soon
    as the endpoint recovers, before the verbs under test could look at it.
    """
    collector.app.fail_all(503)
    options = host_options(collector, state_dir, exit_timeout=2.0, sender="thread")
    done = run_host(BACKLOG_HOST.format(options=options))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert collector.store.count() == 0
    return json.loads(done.stdout)


def test_status_reflects_the_backlog_and_the_opt_out(backlog, state_dir):
    report = status(state_dir)
    assert report["product_id"] == PRODUCT
    assert (report["enabled"], report["reason"], report["ci"]) == (True, None, False)
    assert report["queued"] == 3 and report["queued_bytes"] > 0
    assert uuid.UUID(report["installation_id"]).version == 4
    assert report["state_dir"].startswith(state_dir)

    opted_out = status(state_dir, env={"DO_NOT_TRACK": "1"})
    assert opted_out["enabled"] is False
    assert "DO_NOT_TRACK" in opted_out["reason"]
    assert opted_out["queued"] == 3

    plain = cli("status", "--product", PRODUCT, "--dir", state_dir)
    assert plain.returncode == 0
    assert re.search(r"^queued\s+3$", plain.stdout, re.M)
    assert re.search(r"^enabled\s+True$", plain.stdout, re.M)


def test_status_of_an_unknown_product(tmp_path):
    done = cli("status", "--product", "never-used", "--dir", str(tmp_path / "nothing"), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["queued"], report["installation_id"]) == (0, None)
    assert not (tmp_path / "nothing").exists()  # status only reads


def test_flush_delivers_the_backlog(backlog, collector, state_dir):
    collector.app.clear_faults()
    done = cli("flush", "--product", PRODUCT, "--dir", state_dir, "--json", env={"CALLHOME_API_KEY": API_KEY})
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["delivered_all"] is True
    assert sorted(e["event_id"] for e in collector.store.events()) == sorted(backlog)
    assert status(state_dir)["queued"] == 0


def test_flush_exit_code_1_when_the_endpoint_fails(backlog, collector, state_dir):
    done = cli("flush", "--product", PRODUCT, "--dir", state_dir, "--timeout", "5",
               env={"CALLHOME_API_KEY": API_KEY})
    assert done.returncode == 1, done.stdout + done.stderr
    assert collector.store.count() == 0
    assert status(state_dir)["queued"] == 3  # nothing lost: a later flush can still deliver it


def test_flush_respects_opt_out(backlog, collector, state_dir):
    collector.app.clear_faults()
    requests_before = collector.app.requests.total
    cli("flush", "--product", PRODUCT, "--dir", state_dir, env={"CALLHOME_API_KEY": API_KEY,
                                                                "DO_NOT_TRACK": "1"})
    assert collector.app.requests.total == requests_before
    assert status(state_dir)["queued"] == 3


def test_demo_runs_and_shows_the_events():
    done = cli("demo", "--events", "2", timeout=120)
    assert done.returncode == 0, done.stderr
    received = re.search(r"the collector received (\d+) event", done.stdout)
    # 2 secondary1, primary, the automatic CALL_HOME, and the SESSION the host queued as it exited
    assert received and int(received.group(1)) == 5
    assert len(re.findall(r"^\s+secondary1\s+event_id=", done.stdout, re.M)) == 2
    assert re.search(r"^\s+primary\s+event_id=", done.stdout, re.M)
    assert "new events at the collector: 0" in done.stdout  # the DO_NOT_TRACK run


@pytest.mark.parametrize("args", [
    ["bogus"],
    ["flush"],
    ["flush", "--product", "p", "--timeout", "soon"],
    ["status", "--product", "p", "--no-such-option"],
])
def test_bad_usage_exits_2(args):
    done = cli(*args)
    assert done.returncode == 2
    assert "usage:" in done.stderr
    assert done.stdout == ""


# -- rough edges -------------------------------------------------------------------------------
def test_version_and_a_bad_port_are_answered_without_a_traceback():
    import callhome

    version = cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"callhome {callhome.__version__}"
    port = cli("collector", "--port", "99999")
    assert port.returncode == 2 and "not a port" in port.stderr and "Traceback" not in port.stderr


def test_preview_into_a_pipe_closed_early_is_quiet(collector, state_dir):
    """``callhome preview | head -1``: the reader leaves after one line; no "Broken pipe", exit 0."""
    collector.app.fail_all(503)
    options = host_options(collector, state_dir, exit_timeout=0.2, sender="thread")
    assert run_host(BACKLOG_HOST.replace("range(3)", "range(3000)").format(options=options)).returncode == 0
    env = dict(os.environ, PYTHONPATH=ROOT)
    reader = subprocess.Popen([sys.executable, "-m", "callhome", "preview", "--product", PRODUCT, "--dir", state_dir,
                               "-n", "3000"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.readline()
    reader.stdout.close()  # what head does after its line
    _, stderr = reader.communicate(timeout=30)
    assert reader.returncode == 0 and stderr == b"", stderr


def test_report_takes_product_and_json_like_every_verb(state_dir):
    for flag in ("--product", "--application"):
        done = cli("report", "CURRENT_MAU", flag, PRODUCT, "--json", "--dir", state_dir)
        assert done.returncode == 0 and json.loads(done.stdout)["status"] == "OK", (flag, done.stderr)


def test_bare_callhome_lists_the_products_that_ran_here(backlog, state_dir):
    empty = cli("--dir", os.path.join(state_dir, "nothing-here"))
    assert empty.returncode == 0 and "no product has run callhome" in empty.stdout
    listed = cli("--dir", state_dir)
    assert listed.returncode == 0 and PRODUCT in listed.stdout and listed.stderr == ""
    report = json.loads(cli("status", "--json", "--dir", state_dir).stdout)
    (product,) = report["products"]
    assert (product["product"], product["choice"], product["queued"]) == (PRODUCT, "enabled", 3)
    assert "last_send" in product  # a time, or None: the backlog's host may have tried once
