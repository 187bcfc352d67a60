"""A full disk, for ``faults.py``: the disk fills while a host tracks and the server is down.

    python bench/_faults_disk.py

Each case runs a host (``_disk_host.py``) that tracks 2,000 events while every write under its
queue fails with ENOSPC (an ``os.write`` shim, on while a marker file exists) and the collector
answers 503. ``freed``: the marker is removed (space frees) while the host runs; ``still full``:
it stays. Then the queue left on disk is counted. Nothing the disk could hold may be lost, and
whatever is lost must be counted in ``status()["dropped"]``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

EVENTS = 2000


def one(collector: c.FaultyCollector, freed: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="callhome-bench-disk-") as tmp:
        marker, data_dir = os.path.join(tmp, "full"), os.path.join(tmp, "data")
        open(marker, "w").close()
        started = time.monotonic()
        result = c.run_json(c.bench_child("_disk_host.py", collector.url, data_dir, marker, EVENTS, int(freed)))
        from callhome.queue import DiskQueue

        on_disk = DiskQueue(os.path.join(data_dir, "bench-disk"), False).open().depth()[0]
        dropped = result["end"]["dropped"]
        kept = on_disk + result["end"]["delivered"]
        return {"case": "full, then freed" if freed else "full to the end", "tracked": EVENTS,
                "kept_on_disk": on_disk, "dropped": dropped, "printed": result["printed"],
                "all_kept_or_counted": kept + sum(dropped.values()) >= EVENTS,
                "nothing_lost_that_fit": (not freed) or on_disk >= EVENTS,
                "seconds": round(time.monotonic() - started, 1)}


def run() -> list:
    with c.FaultyCollector() as collector:
        collector.fail_all(503)
        return [one(collector, freed) for freed in (True, False)]


def main() -> None:
    for row in run():
        print("  ".join(f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
