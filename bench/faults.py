"""The fault tortures, all of them, as one table per kind of fault.

    python bench/faults.py [files] [responses] [disk] [--json PATH]

- ``files`` (``_faults_files.py``): bad files planted in a product's queue beside good records —
  each must be quarantined or skipped, ``flush()`` must return True once the good records are
  out, and nothing may be printed;
- ``responses`` (``_faults_responses.py``): hostile answers (a huge body, a trickle, a reset in
  the middle of the body, a 200 that is not JSON) — each request ends within its deadline, and
  the sender's memory stays within 10 MiB of normal;
- ``disk`` (``_faults_disk.py``): the disk fills while a host tracks with the server down, then
  space frees (or not) — nothing the disk could hold is lost, the rest is counted.

Fleet behaviour after an outage is ``fleet_sim.py``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PARTS = {"files": "_faults_files", "responses": "_faults_responses", "disk": "_faults_disk"}


def table(rows: list) -> str:
    """``rows`` (dicts with the same keys) as a Markdown table."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row.get(key, "")) for key in keys) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", help=f"some of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--json", help="also write every row to this file")
    args = parser.parse_args()
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s): {', '.join(unknown)}")
    results = {}
    for part in args.parts or PARTS:
        print(f"\n### {part}\n", flush=True)
        results[part] = importlib.import_module(PARTS[part]).run()
        print(table(results[part]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
