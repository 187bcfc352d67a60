"""Benchmark 2: host-thread cost of ``track()`` over N calls while the agent delivers to a
loopback receiver in another process, against PostHog's ``capture()`` and Segment's ``track()``
measured in the same run with the same harness (the shared ``anchor_overhead.py``).

The loop is the peers' loop exactly: ``a = perf_counter_ns(); call(i); lat.append(...)``, the
mean is the loop's wall time / N (so it includes the timing itself, as for the peers), and the
receiver is the shared ``sink.py`` as for the peers (callhome's collector if it is absent).

Each SDK runs --repeat times, interleaved; the run with the median mean is reported. callhome
runs with its defaults (``max_buffer`` 10 000, ``max_queue_events`` as configured: events
beyond them are dropped, and reported); once more with its worker warmed before the loop (one
event tracked and flushed first), to show how much of the mean is the worker's one-time
start-up; and once sized like the peers, whose harness sets ``max_queue_size=N+10``
(``max_buffer`` = ``max_queue_events`` = N+10), to time the delivery of all N. callhome sends
one event per request (Reo's ``{"payload": ...}``); the peers send batches of 100.

    python bench/track_overhead.py [--events 20000] [--repeat 3] [--no-warm] [--no-sized]

Goals (issue "The host path at the floor"): mean <= 5 µs, >= 20x below PostHog's, p99.9 <= 50 µs
(the peers' shared harness reports no p99.9).
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

GOAL_US = 5.0
GOAL_RATIO = 20.0
GOAL_P999_US = 50.0


# -- the measured process -----------------------------------------------------------------------
def child(n: int, kind: str, url: str, state: str, sized: bool, warm: bool = False) -> None:
    import callhome

    data_dir = tempfile.mkdtemp(prefix="callhome-bench-overhead-")
    options = dict(api_key=c.API_KEY, endpoint=url, domain="example.com", data_dir=data_dir,
                   call_home_interval=0, send_in_ci=True)
    if sized:
        options.update(max_buffer=n + 10, max_queue_events=n + 10)
    callhome.init(product_id="bench-overhead", **options)
    status = callhome.status()
    if not status["enabled"]:
        raise SystemExit(f"callhome is disabled: {status['reason']}")
    config = callhome._default.config  # the bounds actually in force, for the report
    if warm:  # start the worker, import its HTTP stack and open the connection before timing
        callhome.track("warmup")
        callhome.flush(timeout=30)
    call = lambda i: callhome.track("cli_run", meta={"i": i})  # noqa: E731 - the peers' harness shape
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        a = time.perf_counter_ns(); call(i); lat.append(time.perf_counter_ns() - a)  # noqa: E702
    t1 = time.perf_counter()
    flushed = callhome.flush(timeout=120)
    t_flush = time.perf_counter()
    status = callhome.status()
    arrived = _arrived(kind, url, state)
    while arrived < status["delivered"] and time.perf_counter() - t_flush < 10:
        time.sleep(0.02)
        arrived = _arrived(kind, url, state)
    t2 = time.perf_counter()
    callhome.shutdown(0.5)
    shutil.rmtree(data_dir, ignore_errors=True)
    lat.sort()
    print(json.dumps({
        "sdk": "callhome", "n": n, "sized": sized, "warm": warm, "mean_us": round((t1 - t0) / n * 1e6, 2),
        "p50_us": lat[n // 2] / 1000, "p99_us": lat[int(n * .99)] / 1000, "p999_us": lat[int(n * .999)] / 1000,
        "track_s": round(t1 - t0, 3), "flush_ok": flushed, "flush_s": round(t_flush - t1, 3),
        "deliver_s": round(t2 - t0, 3), "accepted": status["accepted"], "delivered": status["delivered"],
        "arrived": arrived, "dropped": status["dropped"], "dropped_total": status["dropped_total"],
        "queued": status["queued"], "buffered": status["buffered"],
        "max_buffer": config.max_buffer, "max_queue_events": config.max_queue_events,
        "requests": _requests(kind, url, state),
    }))


def _arrived(kind: str, url: str, state: str) -> int:
    try:
        if kind == "sink":
            with open(state) as f:
                return int(json.load(f)["events"])
        import urllib.request

        request = urllib.request.Request(url + "/stats", headers={"X-API-KEY": c.API_KEY})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(json.loads(answer.read())["events"])
    except Exception:
        return 0


def _requests(kind: str, url: str, state: str) -> int | None:
    if kind != "sink":
        return None
    try:
        with open(state) as f:
            return int(json.load(f)["requests"])
    except Exception:
        return None


# -- the orchestration --------------------------------------------------------------------------
def run_callhome(n: int, sized: bool, warm: bool = False) -> dict:
    with c.receiver(prefer_sink=True) as rx:
        state = getattr(rx, "state_path", "-")
        result = c.run_json(c.bench_child("track_overhead.py", "--child", n, rx.kind, rx.url, state,
                                          int(sized), int(warm)))
        result["receiver"] = rx.kind
    return result


def run_peer(sdk: str, n: int) -> dict:
    return c.run_json([sys.executable, c.peer_script("anchor_overhead.py"), sdk, str(n)])


def _median_run(runs: list) -> dict:
    """The run whose mean is the median of ``runs`` (its p50/p99 and delivery figures go with it)."""
    chosen = dict(sorted(runs, key=lambda m: m["mean_us"])[len(runs) // 2])
    chosen["means_us"] = [m["mean_us"] for m in runs]
    return chosen


def run(n: int = 20000, repeat: int = 3, sized: bool = True, warm: bool = True, quiet: bool = False) -> dict:
    say = (lambda *a: None) if quiet else print
    result: dict = {"n": n, "repeat": repeat, "peers": {}}
    sdks = c.available_peers(say)
    runs: dict = {"callhome": [], **{sdk: [] for sdk in sdks}}
    for _ in range(repeat):  # interleaved, so that a noisy moment hits every SDK alike
        runs["callhome"].append(run_callhome(n, sized=False))
        for sdk in sdks:
            runs[sdk].append(run_peer(sdk, n))
    result["default"] = _median_run(runs["callhome"])
    result["peers"] = {sdk: _median_run(runs[sdk]) for sdk in sdks}
    result["warm"] = run_callhome(n, sized=False, warm=True) if warm else None
    result["sized"] = run_callhome(n, sized=True) if sized else None
    if not quiet:
        report(result)
    return result


def report(r: dict) -> None:
    d, peers, n = r["default"], r["peers"], r["n"]
    c.banner(f"2. host-thread cost of track() over {n:,} calls while delivering (receiver: {d['receiver']}; "
             f"median of {r['repeat']} runs by mean)")
    print(f"  {'':26s} {'mean µs':>9s} {'p50 µs':>9s} {'p99 µs':>9s}  delivery")
    rows = [("callhome (defaults)", d), ("callhome (worker warmed)", r.get("warm")),
            ("callhome (sized like peers)", r.get("sized"))]
    rows += [(f"{sdk}", p) for sdk, p in peers.items()]
    for name, m in rows:
        if not m:
            continue
        if m.get("sdk") == "callhome":
            lost = (f", dropped {m['dropped_total']:,} {m['dropped']}" if m["dropped_total"]
                    else ", none dropped")
            deliv = (f"{m['delivered']:,} of {n:,} delivered in {m['deliver_s']:.2f} s "
                     f"({m['requests'] or m['delivered']:,} requests){lost}")
        else:
            deliv = (f"{m['delivered']:,} of {n:,} delivered in {m['deliver_s']:.2f} s "
                     f"({m['requests']:,} requests)")
        print(f"  {name:26s} {m['mean_us']:9.2f} {m['p50_us']:9.2f} {m['p99_us']:9.2f}  {deliv}")
    mean = d["mean_us"]
    verdict = "met" if mean <= GOAL_US else f"MISSED ({mean:.1f} µs, {mean / GOAL_US:.1f}x the goal)"
    print(f"  goal: mean <= {GOAL_US:.0f} µs: {verdict}")
    p999 = d["p999_us"]
    print(f"  goal: p99.9 <= {GOAL_P999_US:.0f} µs: {p999:.1f} µs ({'met' if p999 <= GOAL_P999_US else 'MISSED'})")
    if "posthog" in peers:
        x = c.ratio(peers["posthog"]["mean_us"], mean)
        print(f"  goal: >= {GOAL_RATIO:.0f}x lower than PostHog's capture(): {x:.1f}x lower "
              f"({'met' if x >= GOAL_RATIO else 'MISSED'})")
    if "segment" in peers:
        print(f"  Segment's track() / callhome: {c.ratio(peers['segment']['mean_us'], mean):.1f}x")
    for name, m in [("callhome", d)] + list(peers.items()):
        means = ", ".join(f"{v:.1f}" for v in m["means_us"])
        print(f"  {name} means of the {len(m['means_us'])} runs: {means} µs")
    print(f"  bounds in force: max_buffer {d['max_buffer']:,}, max_queue_events {d['max_queue_events']:,}")
    if r.get("warm"):
        print("  (worker warmed: one event tracked and flushed before the loop, so the worker's one-time "
              "start-up -- thread, queue directory, importing requests -- is not inside the timed loop)")


def rows(r: dict) -> list:
    d, peers, n = r["default"], r["peers"], r["n"]
    ph, sg = peers.get("posthog"), peers.get("segment")

    def peer(m, key, digits=1):
        return c.fmt(m[key], digits) if m else "n/a"

    def ratios(key):
        return (f"{c.fmt_ratio(c.ratio(ph and ph[key], d[key]))} / "
                f"{c.fmt_ratio(c.ratio(sg and sg[key], d[key]))}")

    x = c.ratio(ph and ph["mean_us"], d["mean_us"])
    out = [
        c.Row(f"`track()` host-thread mean µs/call ({n:,} calls, delivering)", c.fmt(d["mean_us"]),
              peer(ph, "mean_us"), peer(sg, "mean_us"), ratios("mean_us"), f"<= {GOAL_US:.0f} µs",
              d["mean_us"] <= GOAL_US),
        c.Row("`track()` p99.9 µs", c.fmt(d["p999_us"]), "n/a", "n/a", "", f"<= {GOAL_P999_US:.0f} µs",
              d["p999_us"] <= GOAL_P999_US),
        c.Row("`track()` p50 / p99 µs", f"{d['p50_us']:.1f} / {d['p99_us']:.1f}",
              f"{ph['p50_us']:.1f} / {ph['p99_us']:.1f}" if ph else "n/a",
              f"{sg['p50_us']:.1f} / {sg['p99_us']:.1f}" if sg else "n/a", "", "(info)", None),
        c.Row("`track()` mean: PostHog's / callhome's", c.fmt_ratio(x), "", "", "",
              f">= {GOAL_RATIO:.0f}x", None if x is None else x >= GOAL_RATIO),
        c.Row(f"{n:,} events with default bounds: delivered / dropped",
              f"{d['delivered']:,} / {d['dropped_total']:,} "
              f"({', '.join(f'{k} {v:,}' for k, v in d['dropped'].items()) or '-'})",
              f"{ph['delivered']:,} / 0" if ph else "n/a", f"{sg['delivered']:,} / 0" if sg else "n/a",
              "", "(report)", None),
    ]
    w = r.get("warm")
    if w:
        out.insert(1, c.Row("`track()` mean µs/call, worker warmed before the loop (steady state)",
                            c.fmt(w["mean_us"]), "", "", "", "(info)", None))
    s = r.get("sized")
    if s:
        out.append(c.Row(f"seconds until all {n:,} delivered (callhome sized like the peers; "
                         "1 event/request vs batches of 100)",
                         f"{s['deliver_s']:.1f} ({s['delivered']:,} delivered, "
                         f"{s['dropped_total']:,} dropped)",
                         peer(ph, "deliver_s"), peer(sg, "deliver_s"), "", "(info)", None))
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        n, kind, url, state, sized, warm = sys.argv[2:8]
        child(int(n), kind, url, state, sized == "1", warm == "1")
        os._exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each SDK, interleaved (median by mean)")
    parser.add_argument("--no-sized", action="store_true", help="skip the run sized like the peers")
    parser.add_argument("--no-warm", action="store_true", help="skip the run with the worker warmed first")
    args = parser.parse_args()
    run(args.events, max(args.repeat, 1), sized=not args.no_sized, warm=not args.no_warm)


if __name__ == "__main__":
    main()
