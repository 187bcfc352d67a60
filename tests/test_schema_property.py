"""Every record the agent queues passes the collector's strict schema, whatever the host calls.

Hypothesis generates arbitrary ``track()``, ``count()``, ``call_home()``, ``set_property()`` and
``set_license()`` calls (strings with control characters and lone surrogates, huge and negative
numbers, NaN, nested and odd objects) against one real agent and a real collector. The seed is
fixed and the examples bounded, so CI runs the same cases each time.
"""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callhome import Agent
from callhome.schema import validate

from conftest import API_KEY, PRODUCT

TEXT = st.text(max_size=200) | st.sampled_from(["", " ", "\n", "\x00", "\ud800", "a" * 5000, "ÜNÏ ✓"])
NUMBER = st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.just(10 ** 400)
SCALAR = TEXT | NUMBER | st.booleans() | st.none()
VALUE = SCALAR | st.lists(SCALAR, max_size=3) | st.dictionaries(TEXT, SCALAR, max_size=3) | st.builds(object)
#: metas of every shape, and large plain ones (which meet the schema's cap on meta keys)
META = (st.dictionaries(TEXT | st.integers() | st.booleans(), VALUE, max_size=70) | st.none() | VALUE
        | st.dictionaries(st.from_regex(r"k[0-9]{1,3}", fullmatch=True), st.integers(0, 9), min_size=40, max_size=60))
NAME = TEXT | st.none() | st.integers()
CALLS = st.one_of(
    st.tuples(st.just("track"), st.fixed_dictionaries({"activity": NAME}, optional={
        "user_id": SCALAR, "user_id_type": TEXT | st.sampled_from(["email", "EMAIL", "github", "PHONE"]),
        "meta": META, "event_at": NUMBER | TEXT | st.none(), "category": NAME})),
    st.tuples(st.just("count"), st.fixed_dictionaries({"activity": NAME}, optional={
        "n": st.integers(min_value=-5, max_value=10 ** 12) | st.floats(), "meta": META})),
    st.tuples(st.just("call_home"), st.fixed_dictionaries({}, optional={"meta": META})),
    st.tuples(st.just("set_property"), st.fixed_dictionaries({"slot": st.integers(1, 20) | st.integers(-1, 22) | TEXT,
                                                              "value": TEXT | VALUE})),
    st.tuples(st.just("set_license"), st.fixed_dictionaries({}, optional={
        "type": NAME, "expired": VALUE, "activated": VALUE, "blocked": VALUE, "allowed": VALUE, "key": SCALAR})),
)


def test_every_record_the_agent_queues_passes_the_schema(collector, state_dir):
    agent = Agent(product_id=PRODUCT, api_key=API_KEY, endpoint=collector.url, domain="example.com",
                  data_dir=state_dir, call_home_interval=0, sessions=True, aggregate_interval=1,
                  license_secret="secret", flush_interval=0.2)
    calls = 0

    @settings(max_examples=150, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(CALLS, max_size=6))
    def host_calls(batch: list) -> None:
        nonlocal calls
        for method, kwargs in batch:
            getattr(agent, method)(**kwargs)  # never raises in the default mode
            calls += 1

    host_calls()
    assert calls > 300, calls
    with agent.session("property-session"):
        pass
    flushed = agent.flush(60)
    assert flushed, json.dumps({k: v for k, v in agent.status().items() if k != "problems"}, default=str)
    status = agent.status()
    assert status["rejected"] == 0, "the collector refused records the agent built"
    assert status["internal_errors"] == 0, status
    stored = collector.store.events(limit=100000)
    assert len(stored) > 50
    for event in stored:
        kind = "aggregate" if event["payload"].get("mode") else "usage"
        assert validate(event["payload"], kind) == [], event["payload"]
        assert all(not isinstance(v, float) or math.isfinite(v) for v in event["payload"].get("meta", {}).values())
    agent.shutdown(1)
