"""The public surface: ``__all__``, what ``import callhome`` costs the host, the logger, ``py.typed``."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil

import pytest
from test_layering import is_stdlib

import callhome

from conftest import ROOT, host_options, run_host

HEAVY = ("requests", "filelock", "platformdirs", "sqlite3", "urllib3")


def test_all_is_sorted_and_is_exactly_the_public_names():
    assert callhome.__all__ == sorted(callhome.__all__)
    assert len(set(callhome.__all__)) == len(callhome.__all__)
    public = {name for name, value in vars(callhome).items()
              if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"}
    assert set(callhome.__all__) == public | set(callhome._LAZY) | {"__version__"}
    assert all(callable(getattr(callhome, name)) for name in callhome._LAZY)  # loaded on first use
    assert {"init", "track", "call_home", "flush", "shutdown", "status", "Agent"} <= set(callhome.__all__)


def _modules():
    names = ["callhome"] + [m.name for m in pkgutil.walk_packages(callhome.__path__, "callhome.")]
    return sorted(n for n in names if n != "callhome.__main__")  # __main__ runs the CLI on import


@pytest.mark.parametrize("name", _modules())
def test_module_all_names_exist(name):
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", [])
    assert len(set(exported)) == len(exported)
    assert [n for n in exported if not hasattr(module, n)] == []


IMPORTS = """
    import json, sys, threading
    HEAVY = {heavy!r}
    def heavy(names):
        return sorted({{n.split(".")[0] for n in names}} & set(HEAVY))
    class Spy:
        \"\"\"Records which thread imports each module for the first time.\"\"\"
        seen = []
        def find_spec(self, name, path=None, target=None):
            self.seen.append((name, threading.current_thread() is threading.main_thread()))
    spy = Spy()
    preloaded = set(heavy(sys.modules))
    sys.meta_path.insert(0, spy)
    import callhome
    after_import = heavy(sys.modules)
    callhome.init({options})
    callhome.track("secondary1")
    on_host_thread = heavy(n for n, main in spy.seen if main)
    flushed = callhome.flush(10)
    print(json.dumps({{"preloaded": sorted(preloaded), "after_import": after_import, "flushed": flushed,
                      "on_host_thread": heavy(n for n, main in spy.seen if main),
                      "before_flush": on_host_thread,
                      "on_worker": heavy(n for n, main in spy.seen if not main)}}))
"""


@pytest.mark.parametrize("sender", ["process", "thread"])
@pytest.mark.parametrize("interval", [0, 3600], ids=["track starts the worker", "init starts the worker"])
def test_host_thread_never_imports_heavy_packages(collector, state_dir, interval, sender):
    options = host_options(collector, state_dir, call_home_interval=interval, sender=sender)
    done = run_host(IMPORTS.format(heavy=HEAVY, options=options))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    preloaded = set(report["preloaded"])  # by the interpreter's site hooks, if any: not callhome's doing
    assert set(report["after_import"]) - preloaded == set()
    assert report["before_flush"] == [] and report["on_host_thread"] == []
    assert report["flushed"] is True
    # the process sender keeps the network stack out of the host's process; the thread sender
    # needs only http.client without a proxy; filelock is never needed where fcntl exists
    assert set(report["on_worker"]) & {"requests", "urllib3", "filelock"} == set()


def test_import_callhome_imports_no_third_party_package():
    code = """
        import sys
        before = set(sys.modules)
        import callhome
        new = {n.split(".")[0] for n in set(sys.modules) - before}
        print(" ".join(sorted(n for n in new if n != "callhome")))
    """
    done = run_host(code)
    assert done.returncode == 0, done.stderr
    new = done.stdout.split()
    assert set(new) & set(HEAVY) == set()
    assert [name for name in new if not is_stdlib(name)] == []


LOGGING = """
    import json, logging, callhome
    {configure}
    callhome.init({options})
    callhome.track("secondary1")
    callhome.flush(5)
    log = logging.getLogger("callhome")
    print(json.dumps({{"handlers": [type(h).__name__ for h in log.handlers],
                      "outcome": (callhome.status()["last_send"] or {{}}).get("outcome")}}))
"""


@pytest.mark.parametrize("configured", [False, True], ids=["host without logging", "host with logging"])
def test_callhome_logs_through_its_logger_with_a_null_handler(collector, state_dir, configured):
    collector.app.fail_all("auth")  # callhome warns that the key was refused
    configure = "logging.basicConfig(level=logging.WARNING, format='%(name)s %(message)s')" if configured else ""
    done = run_host(LOGGING.format(configure=configure, options=host_options(collector, state_dir)))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["outcome"] == "auth"
    assert report["handlers"] == ["NullHandler"]
    if configured:
        assert "callhome" in done.stderr and "API key" in done.stderr
        assert "test-key" not in done.stderr
    else:
        assert done.stderr == ""  # no "lastResort" warning printed on the host's stderr


def test_py_typed_is_shipped():
    assert os.path.isfile(os.path.join(os.path.dirname(callhome.__file__), "py.typed"))
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        assert "py.typed" in f.read()


def test_init_for_another_product_switches_everything_per_product(collector, state_dir):
    """Product B was disabled on this machine: a host that re-inits from A to B must send none of
    B's events, and A's calls stay A's (sent as A, from A's queue)."""
    from callhome import choices

    choices.save(os.path.join(state_dir, "product-b"), disabled=True)
    host = run_host(f"""
        import json, callhome
        callhome.init({host_options(collector, state_dir, product_id="product-a")})
        a_ids = [callhome.track("secondary1", meta={{"p": "a"}}) for _ in range(5)]
        callhome.init({host_options(collector, state_dir, product_id="product-b")})
        b_ids = [callhome.track("secondary1", meta={{"p": "b"}}) for _ in range(10)]
        callhome.flush(3)  # B's worker reads B's saved choices
        print(json.dumps({{"a": a_ids, "b": b_ids, "status": callhome.status()}}))
    """)
    assert host.returncode == 0 and host.stderr == "", host.stderr
    report = json.loads(host.stdout)
    flusher = run_host(f"""
        import callhome
        callhome.init({host_options(collector, state_dir, product_id="product-a")})
        print(callhome.flush(10))
    """)
    assert flusher.stdout.strip() == "True", flusher.stderr
    stored = collector.store.events(limit=1000)
    assert not [e for e in stored if e["payload"]["meta"].get("p") == "b"], "product B's events were sent"
    assert {e["payload"]["product_id"] for e in stored} == {"product-a"}
    assert sorted(e["event_id"] for e in stored if e["payload"]["meta"].get("p") == "a") == sorted(report["a"])
    status = report["status"]
    assert status["enabled"] is False and "disable" in status["reason"], status
    assert status["installation_id"] is None  # nothing was created for B
