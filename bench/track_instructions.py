"""Benchmark: instructions per call on the host's thread, counted by valgrind's callgrind.

Instruction counts do not depend on the machine's load, unlike times. Each SDK runs twice
under ``valgrind --tool=callgrind --separate-threads=yes`` (``_instr_host.py``): N1 and N2
calls (N1 = 2000, N2 = 20000 for callhome; 1000 and 6000 for the peers, whose queues hold
10,000), the server down (a closed port) so that nothing is delivered. The main thread's totals
of the two runs differ by the calls alone (start-up, imports and the worker's work are on
other threads or the same in both), so instructions per call = difference / (N2 − N1). The
loop around the call (``for i in range(n): call``) is included, as for every SDK.

- ``callhome``: ``track("paced", meta={"seq": i})`` in the default mode, the worker started;
  ``callhome-count``: ``count("paced")``; ``callhome-refused``: ``track()`` after
  ``DO_NOT_TRACK=1`` (an opted-out product: the call is refused).
- ``posthog``: ``capture("paced", distinct_id=..., properties={"seq": i})``;
  ``segment``: ``track("user-1", "paced", {"seq": i})``.

Each callhome kind runs 3 times (the median is reported).

    python bench/track_instructions.py [--calls 2000 20000] [--repeat 3] [--kind KIND] [--json PATH]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import tempfile

import _common as c

GOAL_INSTRUCTIONS = 8000
GOAL_RATIO = 20.0
KINDS = ("callhome", "callhome-count", "callhome-refused", "posthog", "segment")
#: The peers' queues hold 10,000 events; beyond, their calls take a cheaper path (the event is dropped).
PEER_CALLS = (1000, 6000)


def main_thread_instructions(out_dir: str) -> int:
    """The ``totals:`` of callgrind's file for thread 1 (the main thread) of the measured process
    (the largest: a process that starts another leaves a small file for the child before its exec)."""
    return max(_totals(p) for p in glob.glob(os.path.join(out_dir, "callgrind.out.*-01")))


def _totals(path: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def count(kind: str, calls: int) -> int:
    with tempfile.TemporaryDirectory(prefix="callhome-bench-instr-") as tmp:
        cmd = ["valgrind", "--tool=callgrind", "--separate-threads=yes",
               f"--callgrind-out-file={tmp}/callgrind.out.%p", *c.bench_child("_instr_host.py", kind, calls, tmp)]
        proc = subprocess.run(cmd, env=c.child_env(), capture_output=True, text=True, timeout=900)
        if proc.returncode:
            raise RuntimeError(f"{kind}: {proc.stderr[-2000:]}")
        return main_thread_instructions(tmp)


def run(calls: tuple = (2000, 20000), kinds: tuple = KINDS, repeat: int = 3, say=print) -> dict:
    """callhome's kinds ``repeat`` times at ``calls`` (the median is reported: a garbage collection
    of the whole heap, or not, makes rare outliers), the peers once at PEER_CALLS."""
    if shutil.which("valgrind") is None:
        say("valgrind is not installed: nothing measured")
        return {"skipped": "valgrind not installed"}
    peers = c.available_peers(say)
    out: dict = {"calls": list(calls), "peer_calls": list(PEER_CALLS)}
    for kind in kinds:
        is_peer = kind in ("posthog", "segment")
        if is_peer and kind not in peers:
            continue
        n1, n2 = PEER_CALLS if is_peer else calls
        samples = []
        for _ in range(1 if is_peer else repeat):
            low, high = count(kind, n1), count(kind, n2)
            samples.append({"totals": [low, high], "per_call": round((high - low) / (n2 - n1))})
        out[kind] = dict(sorted(samples, key=lambda s: s["per_call"])[len(samples) // 2],
                         runs=[s["per_call"] for s in samples])
        say(f"  {kind:18} {out[kind]['per_call']:>9,} instructions per call (runs: {out[kind]['runs']})")
    ours = out.get("callhome", {}).get("per_call")
    for peer in ("posthog", "segment"):
        if peer in out and ours:
            out[peer]["ratio"] = round(out[peer]["per_call"] / ours, 1)
    return out


def rows(r: dict) -> list:
    if "skipped" in r or "callhome" not in r:
        return []
    ours = r["callhome"]["per_call"]
    peer = lambda name: f"{r[name]['per_call']:,}" if name in r else "n/a"  # noqa: E731
    ratio = lambda name: c.fmt_ratio(r[name].get("ratio")) if name in r else "n/a"  # noqa: E731
    out = [c.Row("instructions per `track()` on the host thread (callgrind)", f"{ours:,}", peer("posthog"),
                 peer("segment"), f"{ratio('posthog')} / {ratio('segment')}", f"<= {GOAL_INSTRUCTIONS:,}",
                 ours <= GOAL_INSTRUCTIONS)]
    for kind, what in (("callhome-count", "`count()`"), ("callhome-refused", "a refused `track()` (opted out)")):
        if kind in r:
            out.append(c.Row(f"instructions per {what} (callgrind)", f"{r[kind]['per_call']:,}", "", "", "",
                             "(info)", None))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs=2, default=(2000, 20000), metavar=("N1", "N2"),
                        help="callhome's two loop sizes (the peers': 1000 and 6000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each callhome kind (median reported)")
    parser.add_argument("--kind", action="append", choices=KINDS, help="only these (default: all)")
    parser.add_argument("--json", metavar="PATH", help="save the raw results as JSON")
    args = parser.parse_args()
    c.banner(f"instructions per call on the host's thread (callgrind; {args.calls[0]} vs {args.calls[1]} calls)")
    print(f"code measured: {c.source_state()}")
    r = run(tuple(args.calls), tuple(args.kind or KINDS), args.repeat)
    if "callhome" in r:
        ours = r["callhome"]["per_call"]
        verdict = "met" if ours <= GOAL_INSTRUCTIONS else "NOT met"
        print(f"track(): {ours:,} instructions (goal <= {GOAL_INSTRUCTIONS:,}: {verdict})")
        for peer in ("posthog", "segment"):
            if peer in r:
                goal = f"; goal >= {GOAL_RATIO:g}x" if peer == "posthog" else ""
                print(f"  {peer}: {r[peer]['per_call']:,} ({r[peer]['ratio']}x callhome{goal})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
