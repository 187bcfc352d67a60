"""The host's exit and output: bounded exit time with a dead server, quiet stdout/stderr, no
non-daemon threads, and ``flush``/``shutdown`` timeouts honoured.

Exit times are measured on whole ``python -c`` processes against a bare ``python -c pass``
baseline (best of three each, to be robust on a loaded CI machine) and printed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, closed_port_url, host_options, run_host, start_host, wait_until

EXIT_MARGIN = 0.5  # seconds over the bare interpreter: generous, the design budget is 0.05 s




class SilentServer:
    """A TCP server that accepts connections (or only lets the kernel queue them) and never reads."""

    def __init__(self, accept: bool = True) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.connections: list = []
        self._closed = False
        if accept:
            self.sock.settimeout(0.05)
            threading.Thread(target=self._accept, daemon=True, name="silent-server").start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                connection, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections.append(connection)

    def close(self) -> None:
        self._closed = True
        for connection in self.connections:
            connection.close()
        self.sock.close()


@pytest.fixture
def silent_server():
    server = SilentServer()
    yield server
    server.close()



def timed_run(code: str, env: dict | None = None) -> tuple:
    full_env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True,
                            timeout=60)
    return time.monotonic() - started, result


# -- exit time -----------------------------------------------------------------------------------

@pytest.mark.parametrize("server", ["closed-port", "listens-never-answers"])
def test_exit_is_not_delayed_by_a_dead_server(server, make_agent, collector, state_dir):
    listener = None
    if server == "closed-port":
        endpoint = closed_port_url()
    else:
        listener = SilentServer(accept=False)  # the kernel completes the handshake; nobody reads
        endpoint = listener.url
    code = ("import callhome\n"
            f"callhome.init({host_options(collector, state_dir, endpoint=endpoint)})\n"
            "print(callhome.track('secondary1'))\n")
    try:
        baseline = min(timed_run("pass")[0] for _ in range(3))
        runs = [timed_run(code) for _ in range(3)]
    finally:
        if listener is not None:
            listener.close()
    for _, result in runs:
        assert result.returncode == 0 and result.stderr == "", result.stderr
    times = [elapsed for elapsed, _ in runs]
    print(f"\nexit with a {server} server: hosts {', '.join('%.3f' % t for t in times)}s, "
          f"bare interpreter {baseline:.3f}s, overhead (best) {min(times) - baseline:.3f}s")
    assert min(times) - baseline < EXIT_MARGIN

    # what the hosts tracked is on disk: a later process delivers it to a working collector
    ids = [result.stdout.strip() for _, result in runs]
    agent = make_agent()
    assert agent.flush(10) is True
    delivered = {e["event_id"] for e in collector.store.events(limit=100)}
    assert set(ids) <= delivered, "an event tracked right before exit was lost"


def test_exit_while_the_thread_sender_waits_for_an_answer(silent_server, make_agent, collector, state_dir):
    """The thread sender is inside a request that will never be answered when the host returns
    from main (a detached sender's request is no business of the host's exit at all)."""
    options = host_options(collector, state_dir, endpoint=silent_server.url, timeout=30, sender="thread")
    host = start_host(f"""
        import sys, callhome
        callhome.init({options})
        event_id = callhome.track("secondary1")
        sys.stdin.readline()  # the test says when: once the worker's request reached the server
        print(event_id, callhome.status()["state"], flush=True)
    """, stdin=subprocess.PIPE)
    try:
        assert wait_until(lambda: silent_server.connections, timeout=30), "the worker never connected"
        time.sleep(0.05)
        host.stdin.write("go\n")
        host.stdin.flush()
        line = host.stdout.readline()
        returned = time.monotonic()
        host.wait(timeout=30)
        exit_time = time.monotonic() - returned
        _, stderr = host.communicate()
    finally:
        if host.poll() is None:
            host.kill()
            host.communicate()
    event_id, state = line.split()
    print(f"\nexit with the worker stuck in a request: {exit_time:.3f}s after the host's last line")
    assert state == "sending" and silent_server.connections, "the worker never got into the request"
    assert host.returncode == 0 and stderr == "", stderr
    assert exit_time < EXIT_MARGIN
    # its claim is recovered by the next process (the dead sender's flush.lock is free)
    agent = make_agent()
    assert agent.flush(10) is True
    assert event_id in {e["event_id"] for e in collector.store.events(limit=100)}


def test_exit_with_nothing_tracked_creates_nothing(state_dir, collector):
    code = ("import callhome, threading\n"
            f"callhome.init({host_options(collector, state_dir)})\n"
            "print(len(threading.enumerate()))\n")
    elapsed, result = timed_run(code)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.strip() == "1"  # no worker thread without an event
    assert not os.path.exists(state_dir)  # no directory either
    assert collector.app.requests.total == 0


def test_a_run_too_short_for_the_worker_still_owes_its_call_home(state_dir, collector, make_agent):
    # init() and exit at once: the worker thread is still importing when the exit hook runs
    code = f"import callhome\ncallhome.init({host_options(collector, state_dir, call_home_interval=86400)})\n"
    for _ in range(3):
        assert run_host(code).returncode == 0
    assert make_agent().flush(10)
    assert [e["payload"]["activity_type"] for e in collector.store.events()] == ["CALL_HOME"]  # once a day


# -- flush and shutdown timeouts -------------------------------------------------------------------

def test_shutdown_with_a_hanging_server_returns_in_time(make_agent, silent_server):
    agent = make_agent(endpoint=silent_server.url, timeout=5)
    agent.track("secondary1")
    assert wait_until(lambda: silent_server.connections, timeout=10), "the worker never connected"
    time.sleep(0.05)  # the request is written; the worker waits for an answer that never comes
    started = time.monotonic()
    agent.shutdown(timeout=0.2)
    elapsed = time.monotonic() - started
    print(f"\nshutdown(0.2) with a hanging server took {elapsed:.3f}s")
    assert elapsed < 0.3 + 0.05


def test_flush_with_a_hanging_server_returns_false_in_time(make_agent, silent_server):
    agent = make_agent(endpoint=silent_server.url, timeout=5)
    agent.track("secondary1")
    assert wait_until(lambda: silent_server.connections, timeout=10), "the worker never connected"
    started = time.monotonic()
    assert agent.flush(timeout=0.3) is False
    elapsed = time.monotonic() - started
    print(f"\nflush(0.3) with a hanging server took {elapsed:.3f}s")
    assert 0.25 <= elapsed < 0.4 + 0.05
    # and a flush with nothing to wait for is not stretched by the hanging worker either
    started = time.monotonic()
    assert agent.flush(timeout=0.1) is False
    assert time.monotonic() - started < 0.25


# -- quiet -----------------------------------------------------------------------------------------

QUIET_HOST = """
import callhome
callhome.init({options})
for i in range(3):
    callhome.track("secondary1", meta={{"i": i}})
callhome.flush(2)
callhome.call_home()
"""


@pytest.mark.parametrize("failure", ["ok", "503", "auth", "reset", "closed-port", "bad-options"])
def test_host_output_stays_empty(failure, collector, state_dir):
    overrides = {}
    if failure == "503":
        collector.app.fail_all(503)
    elif failure == "auth":
        collector.app.fail_all("auth")
    elif failure == "reset":
        collector.app.fail_all("reset")
    elif failure == "closed-port":
        overrides["endpoint"] = closed_port_url()
    elif failure == "bad-options":
        overrides.update(endpoint="ftp://example.com/x", timeout=-3, flush_interval="soon")
    result = run_host(QUIET_HOST.format(options=host_options(collector, state_dir, **overrides)))
    assert result.returncode == 0
    assert result.stdout == "", result.stdout
    assert result.stderr == "", result.stderr
    if failure == "ok":
        assert collector.store.count(activity_type="secondary1") == 3
        # the CALL_HOME queued right before exit is on disk, or was delivered within exit_timeout
        assert collector.store.count() <= 4


def test_host_output_stays_empty_under_warnings_as_errors_and_dev_mode(collector, state_dir):
    collector.app.fail_all(503)
    code = QUIET_HOST.format(options=host_options(collector, state_dir))
    full_env = dict(os.environ, PYTHONPATH=ROOT, PYTHONWARNINGS="error")
    result = subprocess.run([sys.executable, "-X", "dev", "-W", "error", "-c", code], env=full_env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == "", result.stderr


def test_debug_logging_in_the_host_neither_recurses_nor_floods(collector, state_dir):
    collector.app.fail_all(503)
    result = run_host(f"""
        import logging, callhome
        logging.basicConfig(level=logging.DEBUG)
        callhome.init({host_options(collector, state_dir, flush_interval=0.05)})
        for i in range(20):
            callhome.track("secondary1")
        for _ in range(3):
            callhome.flush(0.5)
    """)
    assert result.returncode == 0
    assert result.stdout == ""  # logging goes to stderr, the host's choice
    lines = result.stderr.splitlines()
    print(f"\nstderr with root logging at DEBUG and a failing server: {len(lines)} lines")
    assert "Traceback" not in result.stderr and "RecursionError" not in result.stderr
    assert len(lines) < 100, "\n".join(lines[:30])


def test_a_logging_handler_that_tracks_does_not_feed_back(collector, state_dir):
    """A host forwarding its log records to telemetry must not get a loop through callhome's own logs
    (the worker's debug lines and those of the HTTP library it uses)."""
    result = run_host(f"""
        import logging, time, callhome

        class Forward(logging.Handler):
            def emit(self, record):
                callhome.track("log", meta={{"logger": record.name}})

        logging.getLogger().addHandler(Forward())
        logging.getLogger().setLevel(logging.DEBUG)
        callhome.init({host_options(collector, state_dir, flush_interval=0.05)})
        logging.getLogger("host").info("one line of the host's own")
        callhome.flush(5)
        time.sleep(1.0)
        callhome.flush(5)
        print(callhome.status()["accepted"])
    """)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    accepted = int(result.stdout)
    received = collector.store.count()
    print(f"\nlogging handler that tracks: accepted {accepted}, received {received}")
    assert received >= 1
    assert accepted <= 5 and received <= 5, f"feedback loop: {accepted} events from one log line"


# -- threads ---------------------------------------------------------------------------------------

def test_only_daemon_threads_in_a_host(collector, state_dir):
    result = run_host(f"""
        import threading, callhome
        callhome.init({host_options(collector, state_dir, call_home_interval=3600)})
        callhome.track("secondary1")
        assert callhome.flush(10)
        others = [t for t in threading.enumerate() if t is not threading.main_thread()]
        print(" ".join(f"{{t.name}}:{{t.daemon}}" for t in others))
    """)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    threads = result.stdout.split()
    assert threads, "no worker thread at all"
    assert all(t.endswith(":True") for t in threads), threads
    assert any(t.startswith("callhome-worker:") for t in threads), threads


def _collector_thread(thread: threading.Thread) -> bool:
    """One of the in-process collector's request handlers (named differently before Python 3.10)."""
    target = getattr(thread, "_target", None)
    return thread.name.startswith("callhome-collector") or getattr(target, "__name__", "") == "process_request_thread"


def test_only_daemon_threads_in_process(make_agent, collector):
    before = set(threading.enumerate())
    agent = make_agent()
    agent.track("secondary1")
    assert agent.flush(10) is True
    # new threads, except the collector's request handlers (it runs in this process)
    ours = [t for t in threading.enumerate() if t not in before and not _collector_thread(t)]
    assert ours, "no worker thread at all"
    assert all(t.daemon for t in ours), [(t.name, t.daemon) for t in ours]
    assert [t.name for t in ours] == ["callhome-worker"]
