"""What the same small piece of the worker's work costs hot, and after its thread slept.

    python bench/cold_wake.py [--rounds N]

The worker wakes every 50 ms while the host tracks, so it always runs "cold": after a pause,
the first touch of code and data costs far more than the work itself on some machines (a
virtual machine whose caches other guests and the hypervisor refill meanwhile). This measures
one ``Buffer.drain()`` of 20 raw calls (the first thing a cycle does) with the thread's own CPU
clock: back to back, and after sleeping or spinning for a while. The ratio is the machine's,
not callhome's: it bounds what trimming the worker's per-cycle code can save there.
"""

from __future__ import annotations

import argparse
import statistics
import time

from callhome.buffer import RAW_WEIGHT, Buffer

CALLS = 20


def fill(buffer: Buffer) -> None:
    for i in range(CALLS):
        buffer.extend((RAW_WEIGHT, "paced", None, None, {"seq": i}, None, None, 1.0, "id"))


def spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def drain_cost(buffer: Buffer, pause) -> float:
    """µs of this thread's CPU for one drain after ``pause()``."""
    fill(buffer)
    pause()
    started = time.thread_time()
    buffer.drain()
    return (time.thread_time() - started) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    rounds = parser.parse_args().rounds
    buffer = Buffer(50000)
    pauses = [("back to back", lambda: None), ("after sleep(1 ms)", lambda: time.sleep(0.001)),
              ("after sleep(50 ms)", lambda: time.sleep(0.05)), ("after a 50 ms spin", lambda: spin(0.05))]
    for _ in range(200):  # warm up the code paths
        drain_cost(buffer, lambda: None)
    print(f"one Buffer.drain() of {CALLS} raw calls, thread CPU, median of {rounds}:")
    hot = None
    for label, pause in pauses:
        cost = statistics.median(drain_cost(buffer, pause) for _ in range(rounds))
        hot = hot or cost
        print(f"  {label:20s} {cost:7.1f} µs  ({cost / hot:4.1f}x)")


if __name__ == "__main__":
    main()
