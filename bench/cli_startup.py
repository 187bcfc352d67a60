"""Benchmark 3: a short-lived CLI that inits, tracks one event and exits: wall time and peak RSS
added over a bare interpreter (``python -c pass``), medians of --runs runs each, interleaved.

callhome's CLI is ``bench/_cli_host.py`` (the one-line init with callhome's defaults, one
``track()``, no explicit flush) against callhome's collector in another process. The peers run
the shared ``anchor_cli.py`` (``capture``/``track`` then ``shutdown()``, which delivers before
exiting) against the shared ``sink.py`` (the collector answers their ``/batch`` paths with 404).
Everything runs twice: in this interpreter, and in a clean one (a throw-away venv without the
``.pth`` hooks this interpreter's site-packages may hold, which can pre-import half the stdlib
into the bare baseline).
Each run is forked by ``_launch.py``, a small process that reports the run's wall time and its
own ``ru_maxrss`` from ``os.wait4``.

After the runs, the report says how many of the CLI's events reached the collector during the
runs themselves, and what was left queued on disk (sent with ``python -m callhome flush``).

    python bench/cli_startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

import _common as c

GOAL_WALL_MS = 20.0
GOAL_RSS_MIB = 5.0
_RSS_PER_MIB = 1024 * 1024 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere


def spawn(cmd: list, env: dict) -> tuple[float, float, float]:
    """(wall seconds from fork to reaped, peak RSS MiB, CPU seconds) of one run of ``cmd``.

    Run through ``_launch.py``, so that the RSS is the command's own.
    """
    with tempfile.TemporaryFile() as err:
        done = subprocess.run([sys.executable, "-S", os.path.join(c.BENCH, "_launch.py"), *cmd], env=env,
                              stdout=subprocess.PIPE, stderr=err, cwd=c.REPO, timeout=120)
        fields = done.stdout.split()[-4:]
        if done.returncode or len(fields) != 4 or fields[2] != b"0":
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stdout[-500:]!r}\n"
                               f"{err.read().decode()[-2000:]}")
    return float(fields[0]), int(fields[1]) / _RSS_PER_MIB, float(fields[3])


def measure(commands: dict, env: dict, runs: int) -> dict:
    samples: dict = {name: [] for name in commands}
    for cmd in commands.values():  # warm-up: bytecode cache, page cache
        spawn(cmd, env)
    for _ in range(runs):
        for name, cmd in commands.items():
            samples[name].append(spawn(cmd, env))
    return {name: {"wall_ms": c.median([w for w, _, _ in s]) * 1000,
                   "rss_mib": c.median([r for _, r, _ in s]),
                   "cpu_ms": c.median([u for _, _, u in s]) * 1000,
                   "wall_ms_all": [round(w * 1000, 1) for w, _, _ in s]}
            for name, s in samples.items()}


def collector_events(collector: c.Collector) -> list:
    request = urllib.request.Request(collector.url + "/events?limit=1000", headers={"X-API-KEY": c.API_KEY})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())["events"]


def run(runs: int = 15, clean: bool = True, quiet: bool = False) -> dict:
    say = (lambda *a: None) if quiet else print
    env = c.child_env()
    peers = c.available_peers(say)
    result: dict = {"runs": runs, "peers": peers}
    with c.Collector() as collector, tempfile.TemporaryDirectory(prefix="callhome-bench-cli-") as state:
        sink = c.Sink() if peers else None
        try:
            commands = {"bare": [sys.executable, "-c", "pass"],
                        "callhome": c.bench_child("_cli_host.py", collector.url, state)}
            for sdk in peers:
                commands[sdk] = [sys.executable, c.peer_script("anchor_cli.py"), sdk, sink.url]
            result["this"] = measure(commands, env, runs)
            result["peer_events"] = sink.events() if sink else None
        finally:
            if sink:
                sink.close()
        tracked = runs + 1
        time.sleep(0.5)
        during = collector_events(collector)
        # What the runs left on disk: deliver it now, to see that nothing was lost.
        flush_env = dict(env, CALLHOME_ENDPOINT=collector.url, CALLHOME_API_KEY=c.API_KEY)
        subprocess.run([sys.executable, "-m", "callhome", "flush", "--product", "bench-cli", "--dir", state,
                        "--timeout", "30"], env=flush_env, capture_output=True, cwd=c.REPO)
        after = collector_events(collector)
        kinds = lambda events: {k: sum(1 for e in events if e.get("activity_type") == k)  # noqa: E731
                                for k in sorted({e.get("activity_type") for e in events})}
        result["delivery"] = {"tracked": tracked, "during_runs": kinds(during), "after_flush": kinds(after)}
    if clean:
        with tempfile.TemporaryDirectory(prefix="callhome-bench-cli-clean-") as tmp:
            python, clean_env = c.clean_python(tmp)
            if python is None:
                say(f"  clean interpreter: skipped: {clean_env}")
                result["clean"] = None
            else:
                with c.Collector() as collector:
                    sink = c.Sink() if peers else None
                    try:
                        commands = {"bare": [python, "-c", "pass"],
                                    "callhome": [python, os.path.join(c.BENCH, "_cli_host.py"), collector.url,
                                                 os.path.join(tmp, "state")]}
                        for sdk in peers:
                            commands[sdk] = [python, c.peer_script("anchor_cli.py"), sdk, sink.url]
                        result["clean"] = measure(commands, clean_env, runs)
                    finally:
                        if sink:
                            sink.close()
    for label in ("this", "clean"):
        m = result.get(label)
        if m:
            for name in m:
                m[name]["added_wall_ms"] = m[name]["wall_ms"] - m["bare"]["wall_ms"]
                m[name]["added_rss_mib"] = m[name]["rss_mib"] - m["bare"]["rss_mib"]
                m[name]["added_cpu_ms"] = m[name]["cpu_ms"] - m["bare"]["cpu_ms"]
    if not quiet:
        report(result)
    return result


def report(r: dict) -> None:
    c.banner(f"3. one-event CLI: added over `python -c pass` (medians of {r['runs']} runs)")
    m = r["this"]
    print(f"  {'':22s} {'wall ms':>9s} {'added ms':>9s} {'RSS MiB':>9s} {'added MiB':>10s} "
          f"{'CPU ms':>8s} {'added':>7s}")
    lines = list(m.items()) + [(name + " (clean venv)", v) for name, v in (r.get("clean") or {}).items()]
    for name, v in lines:
        print(f"  {name:22s} {v['wall_ms']:9.1f} {v['added_wall_ms']:9.1f} {v['rss_mib']:9.1f} "
              f"{v['added_rss_mib']:10.1f} {v['cpu_ms']:8.1f} {v['added_cpu_ms']:7.1f}")
    ch = m["callhome"]
    for key, goal, unit in (("added_wall_ms", GOAL_WALL_MS, "ms"), ("added_rss_mib", GOAL_RSS_MIB, "MiB")):
        ok = ch[key] <= goal
        print(f"  goal: {key.replace('_', ' ')} <= {goal:g} {unit}: "
              f"{'met' if ok else 'MISSED by %.1f %s' % (ch[key] - goal, unit)}")
        for sdk in r["peers"]:
            print(f"    {sdk} / callhome: {c.fmt_ratio(c.ratio(m[sdk][key], ch[key]))}")
    d = r["delivery"]
    print(f"  callhome: {d['tracked']} CLI runs tracked one `cli_run` each (plus the automatic CALL_HOME "
          f"due on the first run); reached the collector during the runs: {d['during_runs'] or 'nothing'}; "
          f"after `python -m callhome flush` of what they left on disk: {d['after_flush'] or 'nothing'}")
    if r.get("peer_events") is not None:
        print(f"  peers: the sink received {r['peer_events']} events for {(r['runs'] + 1) * len(r['peers'])} "
              "runs (each run delivers before exiting)")


def _ratios(m: dict, key: str) -> str:
    """``posthog / callhome`` and ``segment / callhome`` for ``key`` of one set of medians."""
    ours = m["callhome"][key]
    return " / ".join(c.fmt_ratio(c.ratio(m.get(sdk, {}).get(key), ours)) for sdk in ("posthog", "segment"))


def rows(r: dict) -> list:
    m = r["this"]
    ch = m["callhome"]
    out = []
    for key, goal, what in (("added_wall_ms", GOAL_WALL_MS,
                             "one-event CLI: added wall ms over `python -c pass`"),
                            ("added_rss_mib", GOAL_RSS_MIB, "one-event CLI: added peak RSS MiB")):
        unit = "ms" if "wall" in key else "MiB"
        out.append(c.Row(what, c.fmt(ch[key]), c.fmt(m.get("posthog", {}).get(key)),
                         c.fmt(m.get("segment", {}).get(key)),
                         _ratios(m, key),
                         f"<= {goal:g} {unit}", ch[key] <= goal))
    out.append(c.Row("one-event CLI: added CPU ms (user+system; less sensitive to machine load)",
                     c.fmt(ch["added_cpu_ms"]), c.fmt(m.get("posthog", {}).get("added_cpu_ms")),
                     c.fmt(m.get("segment", {}).get("added_cpu_ms")),
                     _ratios(m, "added_cpu_ms"),
                     "(info)", None))
    cl = r.get("clean")
    if cl:
        def pair(name):
            v = cl.get(name)
            return f"{v['added_wall_ms']:.1f} / {v['added_rss_mib']:.1f}" if v else "n/a"

        ch2 = cl["callhome"]
        out.append(c.Row("one-event CLI, clean interpreter (no .pth hooks): added ms / MiB", pair("callhome"),
                         pair("posthog"), pair("segment"),
                         _ratios(cl, "added_wall_ms") + " (wall)",
                         f"<= {GOAL_WALL_MS:g} ms / <= {GOAL_RSS_MIB:g} MiB",
                         ch2["added_wall_ms"] <= GOAL_WALL_MS and ch2["added_rss_mib"] <= GOAL_RSS_MIB))
    d = r["delivery"]
    during = sum(d["during_runs"].values())
    out.append(c.Row(f"one-event CLI: events at the collector after {d['tracked']} runs (then after a flush)",
                     f"{during} ({', '.join(f'{k} {v}' for k, v in d['after_flush'].items()) or 'nothing'})",
                     "all" if "posthog" in r["peers"] else "n/a", "all" if "segment" in r["peers"] else "n/a",
                     "", "(report)", None))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per command (default 15)")
    parser.add_argument("--no-clean", action="store_true", help="skip the clean-interpreter variant")
    args = parser.parse_args()
    run(max(args.runs, 1), clean=not args.no_clean)


if __name__ == "__main__":
    main()
