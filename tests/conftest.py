"""Shared fixtures: a clean environment per test, a real collector on loopback, agents wired to it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from callhome import Agent
from callhome.collector import CollectorServer
from callhome.optout import CI_VARIABLES

API_KEY = "test-key"
PRODUCT = "test-product"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OWN_PREFIXES = ("CALLHOME_", "REO_")
_CI_EXTRA = ("CI", "BUILD_ID", "BUILD_URL", "PROJECT_ID", "DO_NOT_TRACK")


#: Inherited by every process the suite starts (hosts, and the senders they start), so that the
#: senders of this run, and of no other run on the machine, can be found at its end.
RUN_MARKER = "PYTEST_CALLHOME_RUN"
os.environ[RUN_MARKER] = uuid.uuid4().hex


def senders_of_this_run() -> list:
    """Pids of live ``python -m callhome _sender`` processes started by this test run (Linux)."""
    found = []
    marker = f"{RUN_MARKER}={os.environ[RUN_MARKER]}".encode()
    for pid in (p for p in os.listdir("/proc") if p.isdigit()) if os.path.isdir("/proc") else ():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().split(b"\0")
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if b"_sender" in cmdline and b"callhome" in cmdline and marker in environ:
            found.append(int(pid))
    return found


@pytest.fixture(scope="session", autouse=True)
def no_sender_outlives_the_suite():
    """Every sender exits once idle (``CALLHOME_SENDER_IDLE=2`` here): none is left at the end."""
    yield
    left = wait_until(lambda: not senders_of_this_run(), timeout=30, interval=0.2)
    stragglers = senders_of_this_run()
    for pid in stragglers:
        os.kill(pid, 9)
    assert left or not stragglers, f"senders still running 30 s after the suite: {stragglers}"


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch, tmp_path):
    """No variable of the machine (CI markers, opt-outs, a developer's CALLHOME_*) leaks into a test,
    and no test ever writes to the real home directory."""
    for name in list(os.environ):
        if (name.startswith(_OWN_PREFIXES) or name in CI_VARIABLES or name in _CI_EXTRA
                or name.endswith("_TELEMETRY_DISABLED")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CALLHOME_DIR", str(tmp_path / "state"))
    # the senders a test starts exit soon after their work is done (the suite checks at its end)
    monkeypatch.setenv("CALLHOME_SENDER_IDLE", "2")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "home" / ".local" / "state"))


@pytest.fixture
def collector():
    """A real collector on an ephemeral loopback port, requiring ``API_KEY``."""
    with CollectorServer(api_keys=[API_KEY]) as server:
        yield server


@pytest.fixture
def state_dir(tmp_path):
    return str(tmp_path / "state")


@pytest.fixture
def make_agent(collector, state_dir):
    """Build agents pointed at the collector; every one is shut down after the test."""
    agents = []

    def make(**overrides):
        options = dict(product_id=PRODUCT, api_key=API_KEY, endpoint=collector.url, domain="example.com",
                       data_dir=state_dir, call_home_interval=0, sessions=False, flush_interval=0.2)
        options.update(overrides)
        agent = Agent(**options)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.shutdown(0.5)


def host_options(collector, state_dir, **overrides) -> str:
    """The keyword arguments of ``callhome.init`` for a host subprocess, as Python source."""
    options = dict(product_id=PRODUCT, api_key=API_KEY, endpoint=collector.url, domain="example.com",
                   data_dir=state_dir, call_home_interval=0, sessions=False)
    options.update(overrides)
    return ", ".join(f"{k}={v!r}" for k, v in options.items())


def run_host(code: str, timeout: float = 60, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run ``code`` (dedented) in a fresh interpreter with this checkout importable."""
    full_env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env, timeout=timeout,
                          capture_output=True, text=True, **kwargs)


def start_host(code: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    full_env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.01):
    """Poll ``predicate`` until it returns something truthy; that value, or the last one on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def queue_dir(state_dir: str) -> str:
    return os.path.join(state_dir, PRODUCT, "queue-v1")


def listing(state_dir: str, sub: str) -> list:
    """The names in one of the queue's directories (``ready``, ``inflight``, ...)."""
    try:
        return sorted(os.listdir(os.path.join(queue_dir(state_dir), sub)))
    except FileNotFoundError:
        return []


def shared_state(state_dir: str, name: str) -> dict | None:
    """One of the queue's shared state files (``backoff``, ``auth``, ...), or None."""
    try:
        with open(os.path.join(queue_dir(state_dir), "state", name + ".json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def is_uuid4(value) -> bool:
    try:
        parsed = uuid.UUID(value)
    except (TypeError, ValueError):
        return False
    return parsed.version == 4 and str(parsed) == value


def closed_port_url() -> str:
    """An endpoint on loopback where nothing listens: every connection is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


def payloads(collector) -> list:
    """Every payload the collector stored, newest first."""
    return [e["payload"] for e in collector.store.events(limit=10000)]


def of_type(collector, record_type: str | None) -> list:
    """The stored payloads of one ``meta.record_type`` (``None``: the host's own events)."""
    return [p for p in payloads(collector) if p["meta"].get("record_type") == record_type]


def deliver(make_agent) -> None:
    """A later process of the product (sessions off, so it recovers nothing) sends what is queued."""
    agent = make_agent()
    assert agent.flush(10) is True, agent.status()
    agent.shutdown(0.5)


def files_under(top: str) -> dict:
    """``{path: bytes}`` of every file below ``top``: to search all of callhome's state for a leak."""
    found = {}
    for folder, _, names in os.walk(top):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                found[os.path.join(folder, name)] = f.read()
    return found


def kill_9_when(host, ready, why: str, timeout: float = 60) -> None:
    """SIGKILL ``host`` once ``ready()`` holds (while it still runs); never leave it running."""
    try:
        assert wait_until(ready, timeout=timeout), why
        assert host.poll() is None, host.communicate()
        host.send_signal(signal.SIGKILL)
        host.wait(timeout=10)
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
