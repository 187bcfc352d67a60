"""Benchmark 8 (usage intelligence): what sessions, categories, exceptions and properties cost the
host's thread, and how fast the collector answers each Revenera-style report over a fleet.

Host side: mean cost per call of ``track()`` with and without ``category``, ``start_session``
+ ``end_session``, ``track_exception()``, ``set_property()`` (best of 5 rounds, the worker
running but idle). Collector side: a fleet of ``--clients`` installations over ``--days`` days
(one CALL_HOME, one session and ``--events`` categorised events per client per active day,
an exception every tenth day) is written into a collector's database, then every ``/v3/``
report is asked 5 times over the whole range through HTTP with a logged-in session; the
median time is printed.

    python bench/usage_intelligence.py [--clients 200] [--days 90] [--events 5]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
import urllib.request

import _common as c

DAY = 86400
USER = ("bench", "bench-password")
REPORTS = [
    ("reporting/eventTracking/basic/dataTable", "POST", {}),
    ("reporting/eventTracking/basic/timeline", "POST", {"dateSplit": "week", "divisor": "users"}),
    ("reporting/engagement/usageDistribution", "POST", {}),
    ("reporting/generic/dateRange", "POST", {"dateSplit": "week", "daysUntilDeclaredLost": 14}),
    ("customEventTracking/getLastLines", "POST", {"lineCount": 100}),
    ("exceptionTracking/getLastLines", "POST", {"lineCount": 100}),
    ("rawEvents/download/listFiles", "GET", None),
    ("reporting/clientPropertyList", "POST", {"pageSize": 100}),
]


def host_costs(rounds: int = 5, calls: int = 20000) -> dict:
    import callhome

    state = tempfile.mkdtemp(prefix="callhome-bench-ui-")
    try:
        agent = callhome.Agent(product_id="bench-ui", api_key=c.API_KEY, endpoint="http://127.0.0.1:9",
                               domain="example.com", data_dir=state, call_home_interval=0, send_in_ci=True,
                               flush_interval=3600, max_buffer=10 ** 7)
        agent.track("warm-up")
        time.sleep(0.5)
        try:
            error = ValueError("bench")
            raise error
        except ValueError:
            pass
        ids = iter(f"bench-session-{i:08d}" for i in range(10 ** 7))
        cases = {
            "track()": lambda: agent.track("secondary1"),
            "track(category=)": lambda: agent.track("export", category="files"),
            "start_session + end_session": lambda: _session(agent, next(ids)),
            "track_exception(exc)": lambda: agent.track_exception(error),
            "set_property()": lambda: agent.set_property(1, "team-plan"),
        }
        results = {}
        for name, call in cases.items():
            best = float("inf")
            for _ in range(rounds):
                agent.buffer.drain()
                started = time.perf_counter()
                for _ in range(calls):
                    call()
                best = min(best, (time.perf_counter() - started) / calls)
            results[name] = round(best * 1e6, 2)
        agent.buffer.drain()
        agent.shutdown(0)
    finally:
        shutil.rmtree(state, ignore_errors=True)  # the worker may still be writing its last batch
    return results


def _session(agent, session_id: str) -> None:
    agent.start_session(session_id)
    agent.end_session(session_id)


def fleet(clients: int, days: int, events: int, seed: int = 7) -> list:
    """``(kind, payload)`` records shaped as the agent sends them (see docs/data.md)."""
    rng = random.Random(seed)
    start = int(time.time()) // DAY * DAY - days * DAY
    records = []
    for n in range(clients):
        client = f"client-{n:05d}"
        props = {"installation_id": client, "os": rng.choice(["Linux", "Darwin", "Windows"]),
                 "python_version": "3.11.7", "product_version": rng.choice(["1.0", "1.1", "2.0"])}
        for day in range(days):
            if rng.random() > 0.4:
                continue
            at = start + day * DAY + rng.randrange(DAY - 7200)
            records.append(_usage("CALL_HOME", at, {**props, "record_type": "call_home"}))
            duration = rng.randrange(60, 7200)
            records.append(_usage("SESSION", at + duration, {
                **props, "record_type": "session", "session_id": f"{client}-{day}", "session_kind": "process",
                "session_start": at, "session_end": at + duration, "duration": float(duration),
                "closed_by": "exit"}))
            for e in range(events):
                records.append(_usage(f"feature{rng.randrange(20)}", at + e,
                                      {"installation_id": client, "category": f"cat{e % 4}"}))
            if day % 10 == 0:
                records.append(_usage("EXCEPTION", at + 1, {
                    **props, "record_type": "exception", "exception_class": rng.choice(["KeyError", "OSError"]),
                    "exception_function": "main", "stack": "app.py:1 in main", "handled": False}))
    return records


def _usage(activity: str, at: int, meta: dict) -> tuple:
    from callhome.payload import new_event_id

    return "usage", {"activity_type": activity, "source": "TELEMETRY", "environment": "PRODUCTION",
                     "product_id": "bench-ui", "event_id": new_event_id(), "event_at": at,
                     "domain": "example.com", "user_agent": "bench", "meta": meta}


def report_times(records: list, days: int) -> dict:
    from callhome.collector import CollectorServer
    from callhome.collector.store import Store

    with tempfile.TemporaryDirectory(prefix="callhome-bench-reports-") as folder:
        store = Store(f"{folder}/events.sqlite3")
        for kind, payload in records:
            store.add(kind, payload)
        with CollectorServer(db=store.path, report_users=[USER]) as server:
            cookie = _login(server.url)
            today = time.strftime("%Y-%m-%d", time.gmtime())
            first = time.strftime("%Y-%m-%d", time.gmtime(time.time() - days * DAY))
            times = {}
            for path, method, body in REPORTS:
                dated = path.startswith("reporting/")  # the others take no date range
                request_body = body if body is None or not dated else {"startDate": first, "stopDate": today, **body}
                samples = []
                for _ in range(5):
                    started = time.perf_counter()
                    _ask(server.url, f"/v3/{path}/bench-ui", method, request_body, cookie)
                    samples.append(time.perf_counter() - started)
                times[path] = round(statistics.median(samples) * 1000, 1)
        store.close()
    return times


def _login(url: str) -> str:
    request = urllib.request.Request(url + "/v3/auth/web", method="POST",
                                     data=json.dumps({"userName": USER[0], "password": USER[1]}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.headers["Set-Cookie"].split(";")[0]


def _ask(url: str, path: str, method: str, body, cookie: str) -> None:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, method=method, data=data,
                                     headers={"Content-Type": "application/json", "Cookie": cookie})
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--events", type=int, default=5)
    args = parser.parse_args()
    print("host thread, mean µs per call (best of 5 rounds of 20,000):")
    for name, micros in host_costs().items():
        print(f"  {name:30s} {micros:8.2f}")
    records = fleet(args.clients, args.days, args.events)
    print(f"collector: {len(records):,} records, {args.clients} clients, {args.days} days; "
          "median ms per report over the whole range (5 asks):")
    for path, millis in report_times(records, args.days).items():
        print(f"  {path:48s} {millis:8.1f}")


if __name__ == "__main__":
    main()
