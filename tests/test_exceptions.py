"""Exception records (issue 6): ``track_exception()``, the opt-in interpreter hooks chained in
front of the host's own, and the scrubbing of stacks and messages.

Hooks are exercised in real host processes (an uncaught exception ends the interpreter); the
home directory is the per-test ``HOME`` conftest sets, and a host's code file lives under it.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

import callhome.exceptions

from conftest import closed_port_url, deliver, files_under, host_options, of_type, payloads, run_host


class LockTimeout(Exception):
    pass


def line_of(marker: str, path: str = __file__) -> int:
    with open(path) as f:
        return next(n for n, line in enumerate(f, 1) if marker in line and "line_of(" not in line)


def fail_deep_inside():
    raise LockTimeout("waited too long")  # <- raise site


def call_it():
    fail_deep_inside()


# -- track_exception() ---------------------------------------------------------------------------

def test_track_exception_in_an_except_block(make_agent, collector):
    agent = make_agent()
    try:
        call_it()
    except LockTimeout:
        event_id = agent.track_exception()
    assert event_id
    assert agent.flush(10)
    (record,) = of_type(collector, "exception")
    meta = record["meta"]
    assert record["event_id"] == event_id and record["activity_type"] == "EXCEPTION"
    assert meta["exception_class"] == f"{LockTimeout.__module__}.LockTimeout"
    assert meta["exception_function"] == "fail_deep_inside"
    assert meta["exception_file"] == "test_exceptions.py"
    assert meta["exception_line"] == line_of("# <- raise site")
    assert meta["handled"] is True
    frames = meta["stack"].split(" > ")
    assert frames[0].endswith("in test_track_exception_in_an_except_block")  # outermost: where it was caught
    assert frames[1:] == [f"test_exceptions.py:{line_of('    fail_deep_inside()')} in call_it",
                          f"test_exceptions.py:{line_of('# <- raise site')} in fail_deep_inside"]
    assert "exception_message" not in meta and "waited too long" not in json.dumps(record)
    assert meta["os"] and "cpu_count" in meta  # client properties ride along


def test_track_exception_given_an_exception(make_agent, collector):
    agent = make_agent(exception_activity="App Error")
    try:
        {}["missing"]
    except KeyError as exc:
        caught = exc
    never_raised = OSError(2, "No such file")
    assert agent.track_exception(caught)  # outside the except block now
    assert agent.track_exception(never_raised)
    assert agent.flush(10)
    records = {p["meta"]["exception_class"]: p for p in of_type(collector, "exception")}
    assert sorted(records) == ["FileNotFoundError", "KeyError"]  # OSError(2, ...) is FileNotFoundError
    assert {p["activity_type"] for p in records.values()} == {"App Error"}
    key_error = records["KeyError"]["meta"]
    assert key_error["exception_function"] == "test_track_exception_given_an_exception"
    assert key_error["handled"] is True
    assert "exception_function" not in records["FileNotFoundError"]["meta"]  # it has no traceback
    assert "stack" not in records["FileNotFoundError"]["meta"]  # no empty-string placeholder either


def test_track_exception_outside_an_except_block(make_agent, collector):
    agent = make_agent()
    assert agent.track_exception() is None
    assert agent.track_exception("not an exception") is None
    assert agent.status()["dropped"] == {"invalid": 2}
    strict = make_agent(strict=True)
    with pytest.raises(TypeError):
        strict.track_exception()
    assert agent.flush(10)
    assert of_type(collector, "exception") == []


def test_messages_only_on_request_with_the_home_directory_shortened(make_agent, collector, tmp_path):
    home = os.environ["HOME"]
    agent = make_agent(exception_messages=True)
    try:
        raise PermissionError(f"cannot read {home}/projects/acme/secret.toml:\n  denied")
    except PermissionError:
        agent.track_exception()
    assert agent.flush(10)
    (record,) = of_type(collector, "exception")
    assert record["meta"]["exception_message"] == "cannot read ~/projects/acme/secret.toml: denied"
    assert home not in json.dumps(record)


def test_a_deep_stack_is_cut_keeping_the_innermost_frames(make_agent, collector):
    def innermost_boom():
        raise ValueError("bottom")

    def dive(n):
        if n == 0:
            innermost_boom()
        dive(n - 1)

    def recurse():
        recurse()

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(5000)
    agent = make_agent()
    try:
        try:
            dive(2000)
        except ValueError:
            agent.track_exception()
    finally:
        sys.setrecursionlimit(limit)
    try:
        recurse()
    except RecursionError:
        agent.track_exception()
    assert agent.flush(10)
    records = {p["meta"]["exception_class"]: p["meta"] for p in of_type(collector, "exception")}
    deep, recursion = records["ValueError"], records["RecursionError"]
    for meta, innermost in ((deep, "innermost_boom"), (recursion, "recurse")):
        assert len(meta["stack"]) <= callhome.exceptions.MAX_STACK
        assert meta["stack"].startswith("... > "), meta["stack"][:80]
        assert meta["stack"].endswith(f"in {innermost}")
        assert meta["exception_function"] == innermost
    assert deep["stack"].split(" > ")[-2].endswith("in dive")
    assert deep["exception_line"] == line_of('raise ValueError("bottom")')


# -- the interpreter hooks ---------------------------------------------------------------------------

def test_an_uncaught_exception_runs_the_host_hook_and_is_recorded(collector, state_dir, make_agent):
    host = run_host(f"""
        import sys, callhome

        def own_hook(kind, value, tb):
            print("host hook saw", kind.__name__, flush=True)

        sys.excepthook = own_hook  # installed first: callhome must chain to it, not replace it
        callhome.init({host_options(collector, state_dir, capture_exceptions=True)})

        def crash():
            raise RuntimeError("boom")

        crash()
    """)
    assert host.returncode == 1
    assert host.stdout == "host hook saw RuntimeError\n"
    assert host.stderr == ""  # the host's hook replaced Python's traceback printer, as it asked
    deliver(make_agent)
    (record,) = of_type(collector, "exception")
    meta = record["meta"]
    assert meta["handled"] is False and meta["exception_class"] == "RuntimeError"
    assert meta["exception_function"] == "crash" and meta["exception_file"] == "<string>"
    assert meta["stack"].endswith("in crash")


def test_without_a_host_hook_python_still_prints_the_traceback(collector, state_dir, make_agent):
    host = run_host(f"""
        import callhome
        callhome.init({host_options(collector, state_dir, capture_exceptions=True)})
        raise LookupError("shown")
    """)
    assert host.returncode == 1
    assert "Traceback (most recent call last)" in host.stderr and "LookupError: shown" in host.stderr
    deliver(make_agent)
    assert [p["meta"]["exception_class"] for p in of_type(collector, "exception")] == ["LookupError"]


def test_thread_exceptions_chain_to_the_host_threading_hook(collector, state_dir, make_agent):
    host = run_host(f"""
        import sys, threading, callhome

        def own_hook(args):
            print("host thread hook saw", args.exc_type.__name__, flush=True)

        threading.excepthook = own_hook
        callhome.init({host_options(collector, state_dir, capture_exceptions=True, sessions=True)})

        def worker_body():
            raise ConnectionError("peer went away")

        def quits():
            sys.exit(3)

        def interrupted():
            raise KeyboardInterrupt

        for target in (worker_body, quits, interrupted):
            thread = threading.Thread(target=target)
            thread.start()
            thread.join()
        callhome.track("still running")
    """)
    assert host.returncode == 0, host.stderr
    assert host.stdout.splitlines() == ["host thread hook saw ConnectionError", "host thread hook saw SystemExit",
                                        "host thread hook saw KeyboardInterrupt"]
    deliver(make_agent)
    (record,) = of_type(collector, "exception")
    meta = record["meta"]
    assert meta["exception_class"] == "ConnectionError" and meta["handled"] is False
    assert meta["exception_function"] == "worker_body"
    session = next(p for p in payloads(collector) if p["meta"].get("record_type") == "session")
    assert meta["session_id"] == session["meta"]["session_id"]
    assert "still running" in [p["activity_type"] for p in payloads(collector)]


def test_ctrl_c_is_not_a_crash(collector, state_dir, make_agent):
    """(``SystemExit`` never reaches ``sys.excepthook``; in threads it does, tested above.)"""
    host = run_host(f"""
        import callhome
        callhome.init({host_options(collector, state_dir, capture_exceptions=True)})
        callhome.track("before the end")
        raise KeyboardInterrupt
    """)
    assert host.returncode in (-2, 1, 130), host.stderr
    assert "KeyboardInterrupt" in host.stderr  # Python's own hook still ran
    deliver(make_agent)
    assert [p["activity_type"] for p in payloads(collector)] == ["before the end"]


def test_capture_turned_off_by_a_later_init_keeps_the_chain(collector, state_dir, make_agent):
    host = run_host(f"""
        import sys, callhome
        sys.excepthook = lambda kind, value, tb: print("host hook saw", kind.__name__)
        callhome.init({host_options(collector, state_dir, capture_exceptions=True)})
        callhome.init({host_options(collector, state_dir, capture_exceptions=False)})
        callhome.track("reconfigured")
        raise RuntimeError("not recorded")
    """)
    assert host.returncode == 1 and host.stdout == "host hook saw RuntimeError\n"
    deliver(make_agent)
    assert [p["activity_type"] for p in payloads(collector)] == ["reconfigured"]


# -- scrubbing ------------------------------------------------------------------------------------

def test_no_home_path_leaves_the_machine(collector, state_dir, make_agent, tmp_path):
    """A host whose code lives under the home directory; its exceptions name files there.

    Nothing of the path may reach the queue files, the sent log or the collector: base names,
    line numbers and function names only, and no message unless asked for.
    """
    home = os.environ["HOME"]
    marker = "privdir_q7x"  # a directory name that must never be sent
    code_dir = os.path.join(home, marker, "acme")
    os.makedirs(code_dir)
    with open(os.path.join(code_dir, "acme_lib.py"), "w") as f:
        f.write("import os\n"
                "\n"
                "def load_config():\n"
                "    path = os.path.join(os.path.dirname(__file__), 'settings.toml')\n"
                "    secret_local = 'hunter2-local-value'\n"
                "    return open(path).read()\n")
    options = host_options(collector, state_dir, endpoint=closed_port_url(), capture_exceptions=True, sessions=True)
    with open(os.path.join(code_dir, "acme_main.py"), "w") as f:
        f.write("import callhome\n"
                "import acme_lib\n"
                "\n"
                "def main():\n"
                "    try:\n"
                "        acme_lib.load_config()\n"
                "    except OSError:\n"
                "        callhome.track_exception()\n"
                "    acme_lib.load_config()\n"
                "\n"
                f"callhome.init({options})\n"
                "main()\n")
    host = run_host(f"""
        import runpy, sys
        sys.path.insert(0, {code_dir!r})
        sys.argv = [{os.path.join(code_dir, "acme_main.py")!r}]
        runpy.run_path(sys.argv[0], run_name="__main__")
    """, cwd=code_dir)
    assert host.returncode == 1
    assert code_dir in host.stderr  # Python's own traceback on the user's terminal is untouched

    def leaks(data: bytes) -> list:
        return [s for s in (home, marker, str(tmp_path), "settings.toml", "hunter2") if s.encode() in data]

    queued = files_under(state_dir)
    assert any(b'"record_type":"exception"' in data for data in queued.values()), "nothing queued"
    for path, data in queued.items():
        assert not leaks(data), f"{path} holds {leaks(data)}"

    deliver(make_agent)
    records = of_type(collector, "exception")
    assert sorted(p["meta"]["handled"] for p in records) == [False, True]
    for record in records:
        meta = record["meta"]
        assert meta["exception_class"] == "FileNotFoundError"
        assert meta["exception_file"] == "acme_lib.py" and meta["exception_function"] == "load_config"
        assert meta["exception_line"] == 6
        assert meta["stack"].endswith("acme_main.py:9 in main > acme_lib.py:6 in load_config") or \
            meta["stack"].endswith("acme_main.py:6 in main > acme_lib.py:6 in load_config")
        assert "exception_message" not in meta
    for entry in collector.store.events(limit=10000):
        assert not leaks(json.dumps(entry["payload"]).encode())
    for path, data in files_under(state_dir).items():  # the sent log included
        assert not leaks(data), f"{path} holds {leaks(data)}"
    assert any(path.endswith("sent.log") for path in files_under(state_dir))
