"""Benchmark 5: memory and host-thread cost with the server down, over 1 000 000 ``track()`` calls.

The endpoint is a loopback port nothing listens on. Reported: RSS (current and peak) after
``import callhome``, after ``init()``, after the calls and 2 s later; ``status()`` (dropped by
reason, buffered, queued); the queue's size on disk; the mean host-thread cost per call; and
the bound these should respect: ``max_buffer`` x the size one more buffered record adds (Python
objects, measured with a recursive ``sys.getsizeof``) in memory, plus ``max_queue_events`` /
``max_queue_bytes`` on disk. The growth is counted from after one failed delivery attempt, so
that the worker's fixed cost (its thread, the HTTP stack it imports) is reported apart.

    python bench/server_down.py [--calls 1000000]
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

GOAL_US = 10.0


def _mem() -> dict:
    """Current and peak RSS in MiB (Linux ``/proc``; peak from ``getrusage`` elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return {"rss": int(fields["VmRSS"].split()[0]) / 1024, "peak": int(fields["VmHWM"].split()[0]) / 1024}
    except (OSError, KeyError, ValueError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"rss": None, "peak": peak / (1024 * 1024 if sys.platform == "darwin" else 1024)}


def deep_size(obj: object, seen: set | None = None) -> int:
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set)):
        size += sum(deep_size(v, seen) for v in obj)
    return size


def _disk(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def child(calls: int, port: int) -> None:
    mem = {"start": _mem()}
    import callhome

    mem["imported"] = _mem()
    data_dir = tempfile.mkdtemp(prefix="callhome-bench-down-")
    callhome.init(product_id="bench-down", api_key=c.API_KEY, endpoint=f"http://127.0.0.1:{port}",
                  domain="example.com", data_dir=data_dir, call_home_interval=0, send_in_ci=True)
    status = callhome.status()
    if not status["enabled"]:
        raise SystemExit(f"callhome is disabled: {status['reason']}")
    agent = callhome._default
    config = agent.config
    try:  # one record as the buffer holds it (a private method: None if it changed)
        record = agent._build("cli_run", None, None, {"i": 123456}, None)
        seen: set = set()
        deep_size(record, seen)  # what records share (the static strings) is counted once, here
        record = agent._build("cli_run", None, None, {"i": 123457}, None)
        record_bytes = deep_size(record, seen)  # what each further record adds
        frame_bytes = len(json.dumps(record, separators=(",", ":")).encode()) + 10
    except Exception:
        record_bytes = frame_bytes = None
    mem["initialised"] = _mem()
    # One event and a failed flush first: the worker's fixed cost (thread, queue, the HTTP stack it
    # imports for its first attempt) is then in the baseline, and what follows is per event.
    callhome.track("warmup")
    callhome.flush(timeout=5)
    time.sleep(0.5)
    mem["warmed"] = _mem()
    track = callhome.track
    t0 = time.perf_counter()
    for i in range(calls):
        track("cli_run", meta={"i": i})
    elapsed = time.perf_counter() - t0
    mem["after_calls"] = _mem()
    status_after = callhome.status()
    time.sleep(2.0)
    mem["after_2s"] = _mem()
    status_later = callhome.status()
    disk = _disk(data_dir)
    callhome.shutdown(0.2)
    shutil.rmtree(data_dir, ignore_errors=True)
    keep = ("accepted", "delivered", "dropped", "dropped_total", "buffered", "queued", "state", "last_send")
    print(json.dumps({
        "calls": calls, "seconds": round(elapsed, 3), "mean_us": round(elapsed / calls * 1e6, 2), "mem": mem,
        "status": {k: status_after.get(k) for k in keep}, "status_2s": {k: status_later.get(k) for k in keep},
        "disk_bytes": disk, "record_bytes": record_bytes, "frame_bytes": frame_bytes,
        "max_buffer": config.max_buffer, "max_queue_events": config.max_queue_events,
        "max_queue_bytes": config.max_queue_bytes,
    }, default=str))


def run(calls: int = 1_000_000, quiet: bool = False) -> dict:
    port = c.free_port()  # closed: nothing listens there
    result = c.run_json(c.bench_child("server_down.py", "--child", calls, port), timeout=900)
    mem = result["mem"]
    result["fixed_mib"] = mem["warmed"]["peak"] - mem["imported"]["peak"]
    result["growth_mib"] = mem["after_calls"]["peak"] - mem["warmed"]["peak"]
    if result["record_bytes"]:
        buffer = result["max_buffer"] * result["record_bytes"] / 2 ** 20
        framed = result["max_buffer"] * result["frame_bytes"] / 2 ** 20
        result["bound_mib"] = buffer  # the documented bound: max_buffer records in memory
        # What the design allows at worst: the worker holds one whole drained buffer (records,
        # then their framed lines) while the host fills the buffer again.
        result["worst_mib"] = 2 * buffer + framed
    else:
        result["bound_mib"] = result["worst_mib"] = None
    if not quiet:
        report(result)
    return result


def report(r: dict) -> None:
    c.banner(f"5. server down: {r['calls']:,} track() calls to a closed port")
    mem = r["mem"]
    for label in ("start", "imported", "initialised", "warmed", "after_calls", "after_2s"):
        m = mem[label]
        print(f"  RSS {label.replace('_', ' '):12s} {c.fmt(m['rss'])} MiB (peak {m['peak']:.1f} MiB)")
    s, s2 = r["status"], r["status_2s"]
    print(f"  host-thread mean: {r['mean_us']:.2f} µs/call ({r['seconds']:.1f} s for {r['calls']:,}); "
          f"goal <= {GOAL_US:.0f} µs: {'met' if r['mean_us'] <= GOAL_US else 'MISSED'}")
    print(f"  status() right after: accepted {s['accepted']:,}, buffered {s['buffered']:,}, "
          f"queued {s['queued']:,}, "
          f"dropped {s['dropped_total']:,} {s['dropped']}, state {s['state']!r}")
    print(f"  status() 2 s later:   buffered {s2['buffered']:,}, queued {s2['queued']:,}, "
          f"dropped {s2['dropped_total']:,} {s2['dropped']}")
    print(f"  queue on disk: {r['disk_bytes'] / 2 ** 20:.1f} MiB")
    rb = r["record_bytes"]
    if rb:
        print(f"  bound: buffer max_buffer {r['max_buffer']:,} x {rb:,} B/record (Python objects) = "
              f"{r['bound_mib']:.1f} MiB in memory; disk: max_queue_events {r['max_queue_events']:,} x "
              f"~{r['frame_bytes']} B/line, capped at max_queue_bytes "
              f"{r['max_queue_bytes'] / 2 ** 20:.0f} MiB")
        print("  fixed cost (worker thread, queue, HTTP stack; after one failed attempt): "
              f"{r['fixed_mib']:.1f} MiB")
        print(f"  peak RSS growth over that, from the {r['calls']:,} calls: {r['growth_mib']:.1f} MiB; "
              f"documented bound (one full buffer) {r['bound_mib']:.1f} MiB; worst case of the design "
              "(a drained buffer being framed by the worker while the host refills the buffer) "
              f"{r['worst_mib']:.1f} MiB")


def rows(r: dict) -> list:
    s = r["status"]
    bound = (f"bounded: {r['bound_mib']:.1f} MiB documented (max_buffer x record), "
             f"{r['worst_mib']:.1f} MiB design worst case" if r.get("bound_mib") else "bounded")
    return [
        c.Row(f"server down, {r['calls']:,} calls: peak RSS growth MiB "
              f"(after a {r['fixed_mib']:.1f} MiB fixed cost)",
              c.fmt(r["growth_mib"]), "", "", "", bound, None),
        c.Row("server down: `track()` mean µs/call", c.fmt(r["mean_us"]), "", "", "", f"<= {GOAL_US:.0f} µs",
              r["mean_us"] <= GOAL_US),
        c.Row("server down: status() after the calls",
              f"buffered {s['buffered']:,}, queued {s['queued']:,}, dropped {s['dropped_total']:,} "
              f"({', '.join(f'{k} {v:,}' for k, v in s['dropped'].items()) or '-'})",
              "", "", "", "(report)", None),
    ]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), int(sys.argv[3]))
        os._exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    args = parser.parse_args()
    run(args.calls)


if __name__ == "__main__":
    main()
