"""How many single events per second the built-in collector takes over loopback keep-alive.

Starts a :class:`callhome.collector.CollectorServer` in this process and posts ``--events``
single usage events from ``--clients`` processes, each over one ``requests.Session``. The
sessions do not read proxy settings from the environment on every request (``trust_env``),
as the agent's transport does not: on loopback that scan costs more than the server's work.
Also printed: the server process's CPU time per event, a figure other load on the machine
barely moves, unlike events/s.

    python bench/collector_throughput.py --events 10000 --clients 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time

import requests

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from callhome.collector import CollectorServer
from callhome.schema import USAGE_PATH


def _payload(client: int, number: int) -> dict:
    return {"payload": {
        "activity_type": "CALL_HOME", "source": "TELEMETRY", "ip_addr": "192.0.2.1",
        "event_id": f"bench-{client}-{number}", "event_at": int(time.time()),
        "product_id": "bench", "user_agent": "callhome-bench/1",
    }}


def _client(url: str, client: int, count: int, ready: object, start: object) -> None:
    with requests.Session() as session:
        session.trust_env = False
        session.post(url, json=_payload(client, -1), timeout=10).raise_for_status()  # connect before timing
        ready.release()  # type: ignore[attr-defined]
        start.wait()  # type: ignore[attr-defined]
        for number in range(count):
            session.post(url, json=_payload(client, number), timeout=10).raise_for_status()


def measure(events: int, clients: int, db: str) -> tuple[float, float]:
    """Events per second over ``clients`` processes, from the start signal to the last answer,
    and the server's CPU seconds per event."""
    context = multiprocessing.get_context("spawn")
    ready, start = context.Semaphore(0), context.Event()
    with CollectorServer(db=db) as server:
        url = server.url + USAGE_PATH
        share = events // clients
        workers = [context.Process(target=_client, args=(url, n, share, ready, start))
                   for n in range(clients)]
        for worker in workers:
            worker.start()
        for _ in workers:
            ready.acquire()
        began, cpu = time.perf_counter(), time.process_time()
        start.set()
        for worker in workers:
            worker.join()
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
        stored = server.store.count() - clients
        if stored != share * clients or any(worker.exitcode for worker in workers):
            sys.exit(f"expected {share * clients} events stored, found {stored}")
    return stored / elapsed, cpu / stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10000)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--memory", action="store_true", help="use an in-memory database, not a file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = ":memory:" if args.memory else os.path.join(tmp, "bench.sqlite3")
        rate, cpu = measure(args.events, args.clients, db)
    print(f"{args.events // args.clients * args.clients} events from {args.clients} client process(es) "
          f"over keep-alive: {rate:.0f} events/s; server CPU {cpu * 1e6:.0f} us/event "
          f"({'memory' if args.memory else 'file'} db, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
