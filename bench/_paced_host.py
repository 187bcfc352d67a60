"""A host that tracks at a steady rate, for ``delivery.py kill`` and ``delivery.py cpu``.

    python bench/_paced_host.py SDK URL RATE SECONDS DATA_DIR [IDS_FILE] [WARMUP]

SDK is ``callhome``, ``posthog``, ``segment`` or ``none`` (the pacing loop alone). Every 10 ms the
host makes RATE/100 calls (event ``paced``, ``{"seq": i}`` in meta / properties) for SECONDS
seconds, then delivers what is left (callhome: ``flush(timeout=120)``; the peers: ``flush()`` and
``shutdown()``) and prints one JSON line. ``cpu_s`` is the process's own CPU (user + system, every
thread: what ``os.times()`` sums, read with ``time.process_time()``, whose resolution is finer than
its 10 ms ticks) from just before the SDK's client is created to the end of that delivery;
importing the SDK is reported apart (``import_cpu_s``). With WARMUP > 0 the host first tracks
at the same rate for WARMUP seconds (a long-running host's steady state: its threads started,
its connections open) and ``cpu_s`` starts after that (``warmup_cpu_s`` is the part before; ``measured``: the calls
after it). With IDS_FILE, ``seq event_id`` of every
call is written to it and flushed to the OS every tick, so a SIGKILL loses at most one tick's.
"""
import json
import sys
import time

TICK = 0.01


def cpu() -> float:
    return time.process_time()


def with_callhome(url: str, data_dir: str):
    import callhome

    callhome.init(product_id="bench-paced", api_key="bench-key", endpoint=url, domain="example.com",
                  data_dir=data_dir, call_home_interval=0, send_in_ci=True)

    def finish() -> dict:
        return {"flush_ok": callhome.flush(timeout=120)}

    def after() -> dict:
        time.sleep(1.2)  # the host reads the sender's sender.json at most once a second
        s = callhome.status()
        keys = ("delivered", "accepted", "dropped", "queued", "state", "internal_errors", "sender")
        return {key: s[key] for key in keys}

    return (lambda i: callhome.track("paced", meta={"seq": i})), finish, after


def with_posthog(url: str, data_dir: str):
    from posthog import Posthog

    client = Posthog("phc_key", host=url)
    return (lambda i: client.capture("paced", distinct_id="user-1", properties={"seq": i})), \
        (lambda: client.flush() or client.shutdown() or {}), dict


def with_segment(url: str, data_dir: str):
    from segment.analytics import Client

    client = Client("wkey", host=url)
    return (lambda i: client.track("user-1", "paced", {"seq": i})), \
        (lambda: client.flush() or client.shutdown() or {}), dict


def with_none(url: str, data_dir: str):
    return (lambda i: None), dict, dict


def pace(call, i: int, per_tick: int, ticks: int, ids, late: float = 0.0) -> tuple:
    """``per_tick`` calls every TICK for ``ticks`` ticks; the next ``i`` and the worst lateness."""
    start = time.monotonic()
    for k in range(ticks):
        lines = []
        for _ in range(per_tick):
            lines.append(f"{i} {call(i)}\n")
            i += 1
        if ids:
            ids.write("".join(lines))
            ids.flush()
        delay = start + (k + 1) * TICK - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            late = max(late, -delay)
    return i, late


def main() -> None:
    sdk, url, data_dir = sys.argv[1], sys.argv[2], sys.argv[5]
    rate, seconds = float(sys.argv[3]), float(sys.argv[4])
    ids = open(sys.argv[6], "w") if len(sys.argv) > 6 and sys.argv[6] != "-" else None
    warmup = float(sys.argv[7]) if len(sys.argv) > 7 else 0.0
    before_import = cpu()
    __import__({"callhome": "callhome", "posthog": "posthog", "segment": "segment.analytics"}.get(sdk, "os"))
    cpu0 = cpu()
    call, finish, after = globals()["with_" + sdk](url, data_dir)
    per_tick = max(1, round(rate * TICK))
    i, late = 0, 0.0
    if warmup > 0:
        i, late = pace(call, i, per_tick, int(warmup / TICK), None)
    cpu_warm, warm_tracked = cpu(), i
    start = time.monotonic()
    i, late = pace(call, i, per_tick, int(seconds / TICK), ids, late)
    tracked_s = time.monotonic() - start
    result = finish()
    cpu1 = cpu()
    result.update(sdk=sdk, tracked=i, measured=i - warm_tracked, import_cpu_s=round(cpu0 - before_import, 4),
                  warmup_cpu_s=round(cpu_warm - cpu0, 4), cpu_s=round(cpu1 - cpu_warm, 4),
                  tracked_s=round(tracked_s, 3),
                  wall_s=round(time.monotonic() - start, 3), late_max_ms=round(late * 1000, 1), **after())
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
