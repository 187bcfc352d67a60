"""The host path: what ``track()`` and ``count()`` do on the host's thread, and what they leave
to the worker. In the default mode ``track()`` hands the raw call over (a ``deque.extend``);
the worker cleans, validates and encodes it. Real agents, a real collector on loopback, real
subprocesses for fork and process-level checks.
"""

from __future__ import annotations

import json
import tracemalloc

import pytest

import callhome
from callhome.agent import Agent
from callhome.payload import MAX_KEY, MAX_META_BYTES, MAX_META_KEYS, MAX_STRING, clean_meta

from conftest import API_KEY, PRODUCT, host_options, is_uuid4, run_host


def warm_id(collector) -> str:
    return next(e["event_id"] for e in collector.store.events(limit=100000) if e["payload"]["activity_type"] == "warm")


def payloads(collector) -> dict:
    return {e["event_id"]: e["payload"] for e in collector.store.events(limit=100000)}


# -- the default mode defers; debug and strict check at the call --------------------------------

def test_the_worker_cleans_what_track_handed_over(make_agent, collector):
    agent = make_agent()
    ok = agent.track("  open\tfile ", user_id="dev@example.com", user_id_type="email", category=" files ",
                     meta={"line": "a\nb", "n": 3, "skip": None}, event_at=1_700_000_000_000)
    assert agent.flush(10)
    payload = payloads(collector)[ok]
    assert payload["activity_type"] == "open file"
    assert (payload["user_id"], payload["user_id_type"]) == ("dev@example.com", "EMAIL")
    assert payload["event_at"] == 1_700_000_000
    assert payload["meta"]["line"] == "a b" and payload["meta"]["n"] == 3 and "skip" not in payload["meta"]
    assert payload["meta"]["category"] == "files"
    assert payload["meta"]["installation_id"] and payload["meta"]["callhome_version"] == callhome.__version__


#: Metas of plain keys and values that cleaning changes, or nearly does: the worker encodes a
#: plain meta as it is when cleaning could not change it, and must never be wrong about that.
EDGE_METAS = [
    {"k": " lead"}, {"k": "trail "}, {" k": 1}, {"k ": 1}, {"": 1}, {" ": 1}, {"k": " "}, {"k": ""},
    {"k": "a\tb"}, {"k": "a\nb"}, {"k": "\x00"}, {"k": "caf\u00e9"}, {"k": "\u2003x\u2003"}, {"k": 'say "hi"'},
    {"k": "back\\slash"}, {"k": "\ud800"}, {"k": "NaN"}, {"k": float("nan")}, {"k": float("-inf")},
    {"k": 2 ** 53 - 1}, {"k": 2 ** 53}, {"k": -(2 ** 53)}, {"k": 10 ** 15}, {"k": 10 ** 16}, {"k": 10 ** 5000},
    {"k": 1e15}, {"k": 1e16}, {"k": 0.1 + 0.2}, {"k": True}, {"k": False}, {"k": -0.0},
    {"k": "x" * (MAX_STRING - 10)}, {"k": "x" * MAX_STRING}, {"k": "x" * (MAX_STRING + 1)},
    {"k" * MAX_KEY: 1}, {"k" * (MAX_KEY + 1): 1}, {f"k{i}": i for i in range(MAX_META_KEYS)},
    {f"k{i}": i for i in range(MAX_META_KEYS + 1)}, {f"k{i}": "v" * 200 for i in range(45)},
    {f"k{i}": 1 for i in range(MAX_META_BYTES // 80)}, {"installation_id": "mine", "n": 1},
    {"callhome_version": "0", "n": 1}, {"a": 1, "b": "two", "c": 3.5, "d": True},
]


def test_a_plain_meta_is_sent_exactly_as_cleaning_would_send_it(make_agent, collector):
    agent = make_agent()
    bare = agent.track("warm")
    sent = [(agent.track("edge", meta=dict(meta)), meta) for meta in EDGE_METAS]
    assert agent.flush(10)
    stored = payloads(collector)
    added = stored[bare]["meta"]  # the keys the agent adds to every record
    for event_id, meta in sent:
        assert stored[event_id]["meta"] == {**clean_meta(meta, []), **added}, meta


def test_a_call_the_worker_cannot_send_is_dropped_counted_and_named(make_agent, collector):
    agent = make_agent()
    agent.track("warm")  # starts the worker: the calls below are handed over raw
    bad = agent.track(" \t ")  # nothing left of the name once cleaned
    hostile = agent.track("export", event_at=_Hostile())  # a timestamp() that raises
    good = agent.track("export")
    assert bad and hostile and good  # accepted: the default mode checks on the worker thread
    assert agent.flush(10)
    assert set(payloads(collector)) - {warm_id(collector)} == {good}
    status = agent.status()
    assert status["dropped"] == {"invalid": 2}
    assert status["accepted"] == 4
    problems = " | ".join(status["problems"])
    assert "track(' \\t ') dropped: activity is empty" in problems
    assert "track('export') dropped: RuntimeError while reading its arguments" in problems


def test_a_coerced_call_is_sent_and_its_problem_names_the_activity(make_agent, collector):
    agent = make_agent()
    event_id = agent.track("export", event_at="yesterday")
    assert agent.flush(10)
    assert event_id in payloads(collector)
    assert any(p.startswith("track('export'): event_at yesterday is not a time") for p in agent.status()["problems"])
    assert agent.status()["coerced"] == 1


@pytest.mark.parametrize("mode", ["strict", "debug"])
def test_debug_and_strict_modes_check_at_the_call(make_agent, mode, capsys):
    agent = make_agent(**{mode: True})
    if mode == "strict":
        with pytest.raises(ValueError, match="event_at"):
            agent.track("export", event_at="yesterday")
    else:
        assert agent.track("export", event_at="yesterday")
        assert "event_at yesterday is not a time" in " ".join(agent.status()["problems"])
        assert "[callhome] (not sent: debug mode)" in capsys.readouterr().err


def test_meta_is_copied_at_the_call(make_agent, collector):
    agent = make_agent()
    meta = {"step": 1}
    first = agent.track("export", meta=meta)
    meta["step"] = 2  # a host reusing its dict must not change what it already tracked
    second = agent.track("export", meta=meta)
    assert agent.flush(10)
    sent = payloads(collector)
    assert (sent[first]["meta"]["step"], sent[second]["meta"]["step"]) == (1, 2)


def test_a_meta_that_is_not_a_dict_is_checked_at_the_call(make_agent, collector):
    agent = make_agent()
    assert agent.track("export", meta=[("k", 1)])  # sent without it, as before
    assert "meta of type list dropped" in " ".join(agent.status()["problems"])


# -- refusals are cheap and counted ----------------------------------------------------------------

def test_refused_calls_return_none(monkeypatch):
    agent = Agent()
    assert agent.track("export") is None  # not initialised
    assert agent.count("export") is False
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    opted_out = Agent(product_id=PRODUCT, api_key=API_KEY)
    assert opted_out.track("export") is None and opted_out.count("export") is False
    assert opted_out.status()["accepted"] == 0


def test_the_buffer_is_bounded_in_bytes_and_refuses_with_a_count(make_agent, collector):
    agent = make_agent(max_buffer_bytes=1 << 20)
    agent.track("warm")
    assert agent.flush(10)
    big = "x" * 10_000
    tracemalloc.start()
    with agent.state.persist_lock:  # the worker cannot take what is buffered meanwhile
        before = tracemalloc.get_traced_memory()[0]
        accepted = [agent.track("export", meta={"blob": big + str(i)}) for i in range(2000)]
        grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    taken = sum(1 for event_id in accepted if event_id)
    assert 50 < taken < 110  # 1 MiB of ~10 KiB calls
    assert agent.status()["dropped"]["buffer_full"] == 2000 - taken
    assert grown < 3 * (1 << 20), grown  # the strings themselves and what holds them
    assert agent.flush(20)
    assert len(payloads(collector)) == taken + 1


def test_max_buffer_holds_that_many_calls_with_a_small_meta(make_agent):
    agent = make_agent(max_buffer=100)
    agent.track("warm")
    assert agent.flush(10)
    with agent.state.persist_lock:  # the worker cannot take what is buffered meanwhile
        ids = [agent.track("export", meta={"seq": i, "name": "x" * 50, "ok": True}) for i in range(150)]
        assert sum(1 for event_id in ids if event_id) == 100
        assert agent.status()["dropped"] == {"buffer_full": 50}
    assert agent.flush(10)


def test_a_burst_of_20000_calls_drops_nothing_with_the_default_bounds(state_dir, tmp_path):
    """The worker may not run at all during a burst (it persists every 50 ms): the default
    bounds hold the whole burst. Nothing is delivered (the endpoint refuses connections)."""
    host = run_host(f"""
        import json, callhome
        callhome.init(product_id={PRODUCT!r}, api_key="k", endpoint="http://127.0.0.1:9", domain="example.com",
                      data_dir={state_dir!r}, call_home_interval=0, sessions=False, sender="thread")
        ids = [callhome.track("burst", meta={{"seq": i, "name": "item-%d" % i}}) for i in range(20000)]
        status = callhome.status()
        print(json.dumps({{"ids": sum(1 for i in ids if i), "distinct": len(set(ids)),
                          "dropped": status["dropped"], "accepted": status["accepted"]}}))
    """)
    assert host.returncode == 0, host.stderr
    report = json.loads(host.stdout)
    assert report == {"ids": 20000, "distinct": 20000, "dropped": {}, "accepted": 20000}


# -- event ids ---------------------------------------------------------------------------------------

def test_event_ids_are_uuid4_shaped_and_unique_across_threads_forks_and_processes(tmp_path):
    code = """
        import json, os, sys, threading, callhome
        from callhome.payload import make_event_ids, new_event_id
        make_event_ids()  # ids made ahead, as the worker does: a child must not hand them out
        ids = []
        def take():
            ids.extend(new_event_id() for _ in range(3000))
        threads = [threading.Thread(target=take) for _ in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(write, json.dumps([new_event_id() for _ in range(2000)]).encode())
            os._exit(0)
        os.close(write)
        child = json.loads(os.fdopen(read).read())
        os.waitpid(pid, 0)
        print(json.dumps(ids + child + [new_event_id() for _ in range(2000)]))
    """
    runs = [json.loads(run_host(code).stdout) for _ in range(2)]
    everything = runs[0] + runs[1]
    assert len(everything) == 2 * 16000
    assert len(set(everything)) == len(everything)
    assert all(is_uuid4(event_id) for event_id in everything[::97])


# -- count() ------------------------------------------------------------------------------------------

def test_count_remembers_a_cleaned_name_and_reports_its_problem_once(make_agent):
    agent = make_agent()
    assert all(agent.count("  open\tfile ") for _ in range(5))
    assert [p for p in agent.status()["problems"] if "trimmed" in p] == ["activity '  open\\tfile ' trimmed"]
    assert agent.status()["coerced"] == 1


def test_count_meta_is_kept_for_a_bounded_number_of_activities(make_agent):
    from callhome.agent import MAX_COUNTED

    agent = make_agent()
    for i in range(MAX_COUNTED + 50):
        agent.count(f"activity-{i}", meta={"blob": "x" * 100})
    assert len(agent.state.count_meta) == MAX_COUNTED
    assert any("is not kept" in problem for problem in agent.status()["problems"])


# -- the module functions --------------------------------------------------------------------------

def test_the_module_functions_are_the_default_agent_once_initialised(collector, state_dir):
    host = run_host(f"""
        import callhome
        print(callhome.track("early"), callhome.count("early"))
        callhome.init({host_options(collector, state_dir)})
        print(callhome.track.__self__ is callhome._default, callhome.count.__self__ is callhome._default)
        print(bool(callhome.track("later")), callhome.flush(10))
    """)
    assert host.returncode == 0, host.stderr
    assert host.stdout.split() == ["None", "False", "True", "True", "True", "True"]


class _Hostile:
    def timestamp(self):
        raise RuntimeError("no time")
