"""Benchmark 4: delivery throughput of single events to a loopback receiver in another process.

N events are tracked (callhome's defaults, ``call_home_interval=0`` so that exactly N are sent),
then ``flush(timeout=120)``; events/s = N delivered / seconds from the first ``track()`` to the
end of the flush. The receiver is callhome's collector (``python -m callhome collector``, SQLite
file database; its stored count is checked), and, to tell the agent's cost from the collector's,
the shared ``sink.py`` (which does nothing but count). The CPU time both sides spend per event
(``os.times()`` in the agent's process, ``/proc/PID/stat`` for the receiver) says where the time goes.

Reo's API takes one record per request, so callhome makes N requests; PostHog and Segment batch
100 events per request, so their delivery rates (from benchmark 2) are shown for context only.

    python bench/throughput.py [--events 5000] [--no-sink]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import _common as c

GOAL_EPS = 1000.0


def child(n: int, url: str) -> None:
    import callhome

    data_dir = tempfile.mkdtemp(prefix="callhome-bench-throughput-")
    callhome.init(product_id="bench-throughput", api_key=c.API_KEY, endpoint=url, domain="example.com",
                  data_dir=data_dir, call_home_interval=0, send_in_ci=True)
    status = callhome.status()
    if not status["enabled"]:
        raise SystemExit(f"callhome is disabled: {status['reason']}")
    cpu0 = os.times()
    t0 = time.perf_counter()
    for i in range(n):
        callhome.track("cli_run", meta={"i": i})
    t1 = time.perf_counter()
    flushed = callhome.flush(timeout=120)
    t2 = time.perf_counter()
    cpu1 = os.times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    status = callhome.status()
    callhome.shutdown(0.5)
    shutil.rmtree(data_dir, ignore_errors=True)
    print(json.dumps({"n": n, "track_s": round(t1 - t0, 3), "seconds": round(t2 - t0, 3), "flush_ok": flushed,
                      "delivered": status["delivered"], "dropped": status["dropped"],
                      "queued": status["queued"],
                      "events_per_s": round(status["delivered"] / (t2 - t0), 1),
                      "cpu_s": round(cpu, 3),
                      "cpu_us_per_event": round(cpu / max(status["delivered"], 1) * 1e6, 1)}))


def run_one(n: int, rx) -> dict:
    rx_cpu0 = c.process_cpu_seconds(rx.proc.pid)
    result = c.run_json(c.bench_child("throughput.py", "--child", n, rx.url))
    time.sleep(0.2)  # the sink writes its count every 50 ms
    rx_cpu1 = c.process_cpu_seconds(rx.proc.pid)
    result["received"] = rx.events()
    result["rx_cpu_us_per_event"] = (round((rx_cpu1 - rx_cpu0) / max(result["received"], 1) * 1e6, 1)
                                     if rx_cpu0 is not None and rx_cpu1 is not None else None)
    result["receiver"] = rx.kind
    return result


def run(n: int = 5000, sink: bool = True, peers: dict | None = None, quiet: bool = False) -> dict:
    result: dict = {"n": n}
    with c.Collector() as collector:
        result["collector"] = run_one(n, collector)
    result["sink"] = None
    if sink and c.peer_script("sink.py"):
        with c.Sink() as s:
            result["sink"] = run_one(n, s)
    result["peers"] = {sdk: {"events_per_s": round(p["delivered"] / p["deliver_s"], 1),
                             "requests": p["requests"], "n": p["n"]}
                       for sdk, p in (peers or {}).items()}
    if not quiet:
        report(result)
    return result


def report(r: dict) -> None:
    c.banner(f"4. delivery throughput: {r['n']:,} single events, track() then flush(timeout=120)")
    for label in ("collector", "sink"):
        m = r.get(label)
        if not m:
            continue
        print(f"  to {label:9s}: {m['events_per_s']:8,.0f} events/s  ({m['delivered']:,} delivered in "
              f"{m['seconds']:.2f} s, {m['received']:,} received, flush ok: {m['flush_ok']}, "
              f"dropped: {m['dropped'] or 'none'})")
        if m.get("rx_cpu_us_per_event") is not None:
            cores = os.cpu_count() or 1
            both = m["cpu_us_per_event"] + m["rx_cpu_us_per_event"]
            print(f"    CPU per event: callhome's process {m['cpu_us_per_event']:,.0f} µs, the {label} "
                  f"{m['rx_cpu_us_per_event']:,.0f} µs: at most ~{cores * 1e6 / both:,.0f} events/s on "
                  f"{cores} cores if both ran flat out in parallel, ~{1e6 / m['cpu_us_per_event']:,.0f}/s "
                  "for callhome's process alone (one interpreter lock)")
    rate = r["collector"]["events_per_s"]
    print(f"  goal >= {GOAL_EPS:,.0f} events/s to the collector: "
          f"{'met' if rate >= GOAL_EPS else 'MISSED (%.0f%% of the goal)' % (100 * rate / GOAL_EPS)}")
    for sdk, p in r["peers"].items():
        print(f"  context: {sdk} delivered {p['n']:,} events at {p['events_per_s']:,.0f} events/s in "
              f"{p['requests']} requests (batches of 100: not comparable with one event per request)")


def rows(r: dict) -> list:
    m = r["collector"]
    peers = r["peers"]
    out = [c.Row(f"delivery, events/s ({r['n']:,} single events to the collector)",
                 c.fmt(m["events_per_s"], 0),
                 "", "", "", f">= {GOAL_EPS:,.0f}/s", m["events_per_s"] >= GOAL_EPS)]
    if r.get("sink"):
        out.append(c.Row(f"delivery, events/s ({r['n']:,} single events to the shared sink)",
                         c.fmt(r["sink"]["events_per_s"], 0),
                         c.fmt(peers.get("posthog", {}).get("events_per_s"), 0),
                         c.fmt(peers.get("segment", {}).get("events_per_s"), 0),
                         "peers batch 100/request: not comparable", "(info)", None))
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), sys.argv[3])
        os._exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--no-sink", action="store_true", help="only the collector")
    args = parser.parse_args()
    run(args.events, sink=not args.no_sink)


if __name__ == "__main__":
    main()
