"""``callhome.integrations.click`` and ``.typer``: real click and typer apps, run as a person runs
them (a subprocess per command line), mounting the verbs with one call."""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from callhome import identity

from conftest import PRODUCT, deliver, files_under, host_options, payloads, run_host, wait_until

pytest.importorskip("click")
pytest.importorskip("typer")

APPS = {
    "click": """
        import sys, click, callhome
        from callhome.integrations.click import add_telemetry_command

        @click.group()
        def acme():
            '''The acme tool.'''
            {init}

        @acme.command()
        def build():
            '''Build it.'''

        add_telemetry_command(acme, product_id={product!r}, data_dir={data_dir!r})
        acme(sys.argv[1:], prog_name="acme")
    """,
    "typer": """
        import sys, typer, callhome
        from callhome.integrations.typer import add_telemetry_command

        app = typer.Typer()

        @app.callback()
        def acme():
            '''The acme tool.'''
            {init}

        @app.command()
        def build():
            '''Build it.'''

        add_telemetry_command(app, product_id={product!r}, data_dir={data_dir!r})
        app(sys.argv[1:], prog_name="acme")
    """,
}


def acme(framework: str, state_dir: str, *argv: str, init: str = "pass"):
    code = textwrap.dedent(APPS[framework]).format(init=init, product=PRODUCT, data_dir=state_dir)
    return run_host(f"import sys; sys.argv[1:] = {list(argv)!r}\n" + code)


@pytest.mark.parametrize("framework", ["click", "typer"])
def test_help_lists_the_verbs_under_the_hosts_program_name(framework, state_dir):
    top = acme(framework, state_dir, "--help")
    assert top.returncode == 0, top.stderr
    assert "telemetry" in top.stdout and f"telemetry {PRODUCT} sends" in top.stdout.replace("\n", " ")

    verbs = acme(framework, state_dir, "telemetry", "--help")
    assert verbs.returncode == 0, verbs.stderr
    assert "usage: acme telemetry" in verbs.stdout
    for verb in ("status", "preview", "flush", "disable", "reset-id", "forget"):
        assert verb in verbs.stdout
    assert PRODUCT not in verbs.stdout.split("\n")[0]  # the host's name, not the product id

    disable_help = acme(framework, state_dir, "telemetry", "disable", "--help")
    assert disable_help.returncode == 0 and "usage: acme telemetry disable" in disable_help.stdout


@pytest.mark.parametrize("framework", ["click", "typer"])
def test_verbs_run_and_return_their_exit_codes(framework, state_dir):
    status = acme(framework, state_dir, "telemetry", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["product_id"] == PRODUCT

    bad = acme(framework, state_dir, "telemetry", "bogus")
    assert bad.returncode == 2
    assert "invalid choice" in bad.stderr and "acme telemetry" in bad.stderr
    assert bad.stdout == ""


def test_a_wrong_init_option_fails_when_the_cli_is_built():
    outcome = run_host("""
        import click
        from callhome.integrations.click import telemetry_command
        try:
            telemetry_command("acme-cli", endpont="http://127.0.0.1:9")
        except TypeError as exc:
            print("TypeError", exc)
    """)
    assert outcome.stdout.startswith("TypeError") and "endpoint" in outcome.stdout


def _init(collector, state_dir) -> str:
    # where click and typer users put init() and their command's event: the group's callback,
    # before the verb runs (the worker is then running, with the installation id loaded). A
    # thread sender ends with its process: what a run leaves queued stays there to be seen.
    return (f"callhome.init({host_options(collector, state_dir, sessions=True, sender='thread')}); "
            "callhome.track('cli_run'); callhome.flush(5)")


def sessions_of(collector) -> list:
    return [p for p in payloads(collector) if p["meta"].get("record_type") == "session"]


def queued(state_dir: str) -> str:
    """Everything the product's queue holds (the sent log is history, not a queue)."""
    top = os.path.join(state_dir, PRODUCT, "queue-v1")
    return "\n".join(content.decode("utf-8", "replace") for content in files_under(top).values())


@pytest.mark.parametrize("framework", ["click", "typer"])
def test_disable_in_the_running_host_purges_what_it_buffered(framework, collector, state_dir, make_agent):
    first = acme(framework, state_dir, "build", init=_init(collector, state_dir))
    assert first.returncode == 0, first.stderr
    old_id = identity.read(os.path.join(state_dir, PRODUCT))

    off = acme(framework, state_dir, "telemetry", "disable", "--json", init=_init(collector, state_dir))
    assert off.returncode == 0, off.stderr
    assert json.loads(off.stdout)["deleted_installation_ids"] == [old_id]
    # the process that ran `disable` had a session buffered, with the id it just deleted
    assert old_id not in queued(state_dir)
    assert not os.path.exists(os.path.join(state_dir, PRODUCT, "installation_id"))
    on = acme(framework, state_dir, "telemetry", "enable", init=_init(collector, state_dir))
    assert on.returncode == 0, on.stderr
    assert acme(framework, state_dir, "build", init=_init(collector, state_dir)).returncode == 0
    assert old_id not in queued(state_dir)
    deliver(make_agent)  # what the last run left queued

    # the last run's session arrives with a new id (and the enabling run's too, when its worker
    # started only after `enable` had run); the disabling run's, with the old id, never does
    new = wait_until(lambda: [p for p in sessions_of(collector)
                              if p["meta"].get("installation_id") not in (None, old_id)], 15)
    assert 1 <= len(new) <= 2, sessions_of(collector)
    assert sum(p["meta"].get("installation_id") == old_id for p in sessions_of(collector)) <= 1  # the first run's


@pytest.mark.parametrize("framework", ["click", "typer"])
def test_reset_id_in_the_running_host_leaves_no_record_with_the_old_id(framework, collector, state_dir, make_agent):
    assert acme(framework, state_dir, "build", init=_init(collector, state_dir)).returncode == 0
    old_id = identity.read(os.path.join(state_dir, PRODUCT))
    reset = acme(framework, state_dir, "telemetry", "reset-id", "--json", init=_init(collector, state_dir))
    assert reset.returncode == 0, reset.stderr
    assert json.loads(reset.stdout)["old_installation_id"] == old_id
    deliver(make_agent)  # what the last run left queued

    # one session per run: the first run's carries the old id, the resetting run's must not
    assert len(wait_until(lambda: len(sessions_of(collector)) >= 2 and sessions_of(collector), 15) or []) == 2, \
        payloads(collector)
    ids = sorted(p["meta"].get("installation_id") == old_id for p in sessions_of(collector))
    assert ids == [False, True], sessions_of(collector)


@pytest.mark.parametrize("framework", ["click", "typer"])
def test_forget_in_the_running_host_leaves_nothing_behind(framework, collector, state_dir):
    gone = acme(framework, state_dir, "telemetry", "forget", "--yes", init=_init(collector, state_dir))
    assert gone.returncode == 0, gone.stderr
    assert not os.path.exists(os.path.join(state_dir, PRODUCT)), files_under(state_dir)
