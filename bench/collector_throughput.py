"""How many single events per second the built-in collector stores, posted by client processes.

Starts a :class:`callhome.collector.CollectorServer` (SQLite file in WAL mode, or ``--memory``) in
this process and has ``--clients`` processes post ``--events`` single usage events between them,
each over one keep-alive connection, one request at a time, each waiting for its answer (a 200
means the record is committed). ``--client`` chooses how the clients post:

- ``agent`` (default): callhome's own sender, :class:`callhome.transport.HttpTransport`, the
  code an agent's worker runs per event (a ``requests.Session``'s urllib3 keep-alive pool);
- ``requests``: ``requests.Session().post(url, json=...)``, what a plain script would write
  (about twice the client CPU of ``agent``);
- ``http.client``: the standard library's ``HTTPConnection``, the cheapest client.

The clients and the server share the machine's CPUs, so the rate depends on both: the server's
and the clients' CPU time per event are printed too (other load on the machine moves them far
less than events/s). The run is repeated ``--repeat`` times, each with a new server and database,
and the median is compared with the goal.

    python bench/collector_throughput.py --events 10000 --clients 2 --repeat 3

``--url URL`` posts to a collector that is already running instead (for example the app under
another WSGI server); the stored count is then checked through its ``GET /stats`` (with
``--api-key``), and the server's CPU is not measured.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any, Callable, NamedTuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from callhome.collector import CollectorServer  # noqa: E402
from callhome.schema import USAGE_PATH  # noqa: E402

#: Issue 5's goal for one machine (2 cores, clients included).
GOAL = 2000.0
CLIENTS = ("agent", "requests", "http.client")


class Run(NamedTuple):
    rate: float  # events stored per second, from the start signal to the last answer
    server_us: float | None  # the server process's CPU per event (all its threads); None if external
    client_us: float  # one client process's CPU per event, mean over the clients


def _payload(run: str, client: int, number: int) -> dict:
    return {"activity_type": "CALL_HOME", "source": "TELEMETRY", "ip_addr": "192.0.2.1",
            "event_id": f"bench-{run}-{client}-{number}", "event_at": int(time.time()),
            "product_id": "bench", "user_agent": "callhome-bench/1"}


def _agent_poster(url: str, api_key: str | None) -> Callable[[dict], None]:
    from callhome.sender.transport import HttpTransport

    transport = HttpTransport(url, api_key, timeout=10.0)

    def post(payload: dict) -> None:
        result = transport.send("usage", payload)
        if result.status != 200:
            raise RuntimeError(f"collector answered {result}")

    return post


def _requests_poster(url: str, api_key: str | None) -> Callable[[dict], None]:
    import requests

    session = requests.Session()
    session.trust_env = False  # as the agent's transport: no proxy scan of os.environ per request
    session.headers.update(_key_header(api_key))

    def post(payload: dict) -> None:
        session.post(url + USAGE_PATH, json={"payload": payload}, timeout=10).raise_for_status()

    return post


def _http_client_poster(url: str, api_key: str | None) -> Callable[[dict], None]:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    headers = {"Content-Type": "application/json", **_key_header(api_key)}

    def post(payload: dict) -> None:
        connection.request("POST", USAGE_PATH, json.dumps({"payload": payload}).encode(), headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"collector answered {response.status}")

    return post


_POSTERS = {"agent": _agent_poster, "requests": _requests_poster, "http.client": _http_client_poster}


def _key_header(api_key: str | None) -> dict:
    return {"X-API-KEY": api_key} if api_key else {}


def _client(kind: str, url: str, api_key: str | None, run: str, client: int, count: int, ready: Any,
            start: Any, cpu: Any) -> None:
    post = _POSTERS[kind](url, api_key)
    post(_payload(run, client, -1))  # connect (and import) before timing
    ready.release()
    start.wait()
    began = time.process_time()
    for number in range(count):
        post(_payload(run, client, number))
    cpu.put(time.process_time() - began)


def measure(events: int, clients: int, db: str, kind: str = "agent", url: str | None = None,
            api_key: str | None = None) -> Run:
    """One run: ``clients`` processes posting ``events`` between them to a new built-in server on
    ``db``, or to the collector already running at ``url``."""
    if url is not None:
        return _measure(events, clients, kind, url, api_key, lambda: _stored(url, api_key), None)
    with CollectorServer(db=db) as server:
        return _measure(events, clients, kind, server.url, None, server.store.count, time.process_time)


def _measure(events: int, clients: int, kind: str, url: str, api_key: str | None,
             stored: Callable[[], int], server_clock: Callable[[], float] | None) -> Run:
    context = multiprocessing.get_context("spawn")
    ready, start, cpu = context.Semaphore(0), context.Event(), context.Queue()
    share, run = events // clients, uuid.uuid4().hex[:8]
    workers = [context.Process(target=_client, args=(kind, url, api_key, run, n, share, ready, start, cpu))
               for n in range(clients)]
    for worker in workers:
        worker.start()
    for _ in workers:
        if not ready.acquire(timeout=60):
            _fail(workers, "a client did not start")
    before = stored()
    began, server_cpu = time.perf_counter(), server_clock() if server_clock else 0.0
    start.set()
    client_cpu = [_result(cpu, workers) for _ in workers]  # arrives as each client finishes
    elapsed = time.perf_counter() - began
    server_cpu = server_clock() - server_cpu if server_clock else None
    for worker in workers:
        worker.join()
    count = stored() - before
    if count != share * clients or any(worker.exitcode for worker in workers):
        sys.exit(f"expected {share * clients} events stored, found {count}")
    return Run(count / elapsed, None if server_cpu is None else server_cpu / count * 1e6,
               sum(client_cpu) / count * 1e6)


def _stored(url: str, api_key: str | None) -> int:
    """How many records the collector at ``url`` holds, from its ``GET /stats``."""
    from urllib.request import Request, urlopen

    with urlopen(Request(url + "/stats", headers=_key_header(api_key)), timeout=10) as answer:
        return json.load(answer)["events"]


def _result(cpu: Any, workers: list) -> float:
    """The next client's CPU seconds; exits if a client died instead of finishing."""
    while True:
        try:
            return cpu.get(timeout=1)
        except queue.Empty:
            if any(worker.exitcode for worker in workers):
                _fail(workers, "a client failed")


def _fail(workers: list, why: str) -> None:
    for worker in workers:
        worker.terminate()
    sys.exit(f"{why} (its traceback is above)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10000, help="per run, across all clients")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--client", choices=CLIENTS, default="agent", help="how clients post (see above)")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the median is reported")
    parser.add_argument("--memory", action="store_true", help="use an in-memory database, not a file")
    parser.add_argument("--url", help="post to this running collector instead of a built-in one")
    parser.add_argument("--api-key", help="the running collector's X-API-KEY (with --url)")
    args = parser.parse_args()
    server = args.url or f"the built-in server, {'memory' if args.memory else 'file'} db"
    print(f"{args.events // args.clients * args.clients} single events per run from {args.clients} "
          f"'{args.client}' client process(es) over keep-alive to {server}; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    runs = []
    for number in range(1, args.repeat + 1):
        with tempfile.TemporaryDirectory() as tmp:
            db = ":memory:" if args.memory else os.path.join(tmp, "bench.sqlite3")
            runs.append(measure(args.events, args.clients, db, args.client, args.url, args.api_key))
        print(f"  run {number}: {runs[-1].rate:,.0f} events/s; CPU per event: {_cpu(runs[-1:])}")
    rate = statistics.median(run.rate for run in runs)
    print(f"median {rate:,.0f} events/s = {rate / GOAL:.2f}x the goal of {GOAL:,.0f}/s "
          f"({'met' if rate >= GOAL else 'NOT met'}); CPU per event: {_cpu(runs)}; "
          f"load average {os.getloadavg()[0]:.1f}")


def _cpu(runs: list[Run]) -> str:
    """The runs' median CPU per event, server and clients."""
    servers = [run.server_us for run in runs if run.server_us is not None]
    server = f"{statistics.median(servers):.0f} us" if servers else "not measured"
    return f"server {server}, clients {statistics.median(run.client_us for run in runs):.0f} us"


if __name__ == "__main__":
    main()
