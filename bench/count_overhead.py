"""Benchmark 6 (aggregates): host-thread cost of ``count()``, and how many requests
1,000,000 ``count()`` calls over 10 activities become.

The counts run in one aggregation window (the script waits for a window to begin); once the
window has closed and its grace period passed, a flush sends it. The goal is exactly one
aggregate record, hence one request, per activity and window: 10. The receiver is callhome's
collector in another process, which deduplicates by ``event_id`` and counts requests.

    python bench/count_overhead.py [--calls 1000000] [--activities 10] [--interval 20]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import _common as c


def run(calls: int, activities: int, interval: int) -> dict:
    import callhome

    names = [f"activity{i}" for i in range(activities)]
    with c.Collector() as receiver, tempfile.TemporaryDirectory(prefix="callhome-bench-count-") as state:
        agent = callhome.Agent(product_id="bench-count", api_key=c.API_KEY, endpoint=receiver.url,
                               domain="example.com", data_dir=state, call_home_interval=0, send_in_ci=True,
                               aggregate_interval=interval)
        agent.count("warm-up")  # starts the worker before the loop, as in a running host
        while time.time() % interval > 1:  # all the calls in one window
            time.sleep(0.05)
        started = time.perf_counter()
        for i in range(calls):
            agent.count(names[i % activities])
        elapsed = time.perf_counter() - started
        window_end = (time.time() // interval + 1) * interval
        time.sleep(max(window_end + interval / 4 + 1 - time.time(), 0))  # closed, and its grace passed
        flushed = agent.flush(30)
        stats = receiver.stats()
        status = agent.status()
        agent.shutdown(1)
    return {"calls": calls, "activities": activities, "interval_s": interval,
            "count_mean_us": elapsed / calls * 1e6, "flushed": flushed,
            "requests": stats.get("requests"), "aggregate_records": stats.get("aggregate"),
            "dropped": status["dropped"]}


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--activities", type=int, default=10)
    parser.add_argument("--interval", type=int, default=20, help="aggregation window, seconds")
    parser.add_argument("--json", action="store_true", help="print the raw result as JSON")
    args = parser.parse_args(argv)
    c.banner(f"6. count(): {args.calls:,} calls over {args.activities} activities, one window")
    result = run(args.calls, args.activities, args.interval)
    if args.json:
        print(json.dumps(result))
        return 0
    expected = args.activities + 1  # plus the warm-up activity
    print(f"  count() mean: {result['count_mean_us']:.2f} µs/call (goal <= 1 µs)")
    print(f"  requests for the window: {result['requests']} (goal: exactly {expected}: "
          f"{args.activities} activities + the warm-up), aggregate records stored: "
          f"{result['aggregate_records']}, flush ok: {result['flushed']}, dropped: {result['dropped'] or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
