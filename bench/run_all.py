"""Run every benchmark in sequence and print one summary table (callhome / posthog / segment).

    python bench/run_all.py                 # the full set (about 8-10 minutes on 2 cores)
    python bench/run_all.py --quick         # smaller counts, for a smoke test (about 2 minutes)
    python bench/run_all.py --json out.json # also save every raw figure

Peer figures are measured in the same run (never copied from elsewhere): ratios are
``peer / callhome``, so above 1x means callhome costs less.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import _common as c
import cli_startup
import delivery
import import_time
import server_down
import throughput
import track_instructions
import track_overhead


def _git() -> str:
    try:
        head = subprocess.run(["git", "-C", c.REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", c.REPO, "status", "--porcelain", "--", "callhome"],
                               capture_output=True, text=True).stdout.split("\n")
        changed = [line[3:] for line in dirty if line.strip()]
        return head + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")
    except OSError:
        return "unknown"


def _load() -> str:
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "load average unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (smoke test, not for the docs)")
    parser.add_argument("--json", metavar="PATH", help="save the raw results as JSON")
    args = parser.parse_args()
    q = args.quick
    sizes = {"import_runs": 7 if q else 9, "events": 5000 if q else 20000, "cli_runs": 5 if q else 15,
             "throughput": 1000 if q else 5000, "down_calls": 100_000 if q else 1_000_000}

    print(f"callhome benchmarks: {c.machine()}")
    print(f"commit {_git()}; {_load()}")
    try:
        if os.getloadavg()[0] > (os.cpu_count() or 1):
            print("WARNING: the machine is busy (1-minute load above the core count): wall times and "
                  "the track() means will be inflated; prefer the ratios and the CPU figures, or re-run "
                  "when idle")
    except OSError:
        pass
    if c.removed_optouts():
        print(f"note: removed from the children's environment: {', '.join(c.removed_optouts())}")
    started = time.perf_counter()
    results: dict = {"sizes": sizes, "machine": c.machine(), "commit": _git(), "load_before": _load()}
    rows: list = []

    results["import"] = r = import_time.run(sizes["import_runs"])
    rows += import_time.rows(r)
    results["overhead"] = r = track_overhead.run(sizes["events"])
    rows += track_overhead.rows(r)
    results["instructions"] = r = track_instructions.run(kinds=("callhome", "callhome-count", "posthog", "segment")
                                                         if not q else ("callhome",))
    rows += track_instructions.rows(r)
    results["cli"] = r = cli_startup.run(sizes["cli_runs"])
    rows += cli_startup.rows(r)
    results["throughput"] = r = throughput.run(sizes["throughput"], peers=results["overhead"]["peers"])
    rows += throughput.rows(r)
    results["server_down"] = r = server_down.run(sizes["down_calls"])
    rows += server_down.rows(r)
    results["delivery"] = r = delivery.run(quick=q)
    rows += delivery.rows(r)

    elapsed = time.perf_counter() - started
    results["seconds"] = round(elapsed, 1)
    results["load_after"] = _load()
    c.banner(f"summary ({elapsed:.0f} s; {_load()})")
    print(c.table(rows, markdown=False))
    print("\nmarkdown:\n")
    print(c.table(rows, markdown=True))
    missed = [row.what for row in rows if row.met is False]
    print(f"\ngoals missed: {len(missed)}" + "".join(f"\n  - {what}" for what in missed))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
        print(f"raw results: {args.json}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
