"""Hostile answers: what one request costs callhome's sender when the server misbehaves.

A raw loopback server answers one record (after a normal answer that opens the keep-alive
connection and the imports) with: a 300 MiB body; its status line, a header or its body
trickled one byte every 0.8 s; a reset in the middle of the body; or a 200 whose body is not
JSON. Each case runs in a fresh process through callhome's own ``Sender`` (a memory queue, one
forced cycle) and the transport ``open_transport`` picks: ``http.client`` (``direct``), and
``requests`` when a proxy applies (``via proxy``: the server is then the HTTP proxy of a
loopback endpoint that nothing else serves).

One row per case: the record's outcome, the seconds the cycle took, how far the peak RSS rose
above the RSS before it, and whether the cycle ended within the request's deadline (``timeout``
of 1 s, plus 0.25 s for the cycle's own work and scheduling).

    python bench/_faults_responses.py
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import sys
import threading
import time

import _common as c

TIMEOUT = 1.0
#: The cycle's own work (claiming, settling) and scheduling on a shared machine.
ALLOWANCE = 0.25
TRICKLE_EVERY = 0.8
#: A trickling server gives up after this long (a sender without a deadline waits as long).
TRICKLE_FOR = 20.0
HUGE = 300 * 1024 * 1024
#: A huge body is this buffer sent again and again: the server allocates nothing per byte sent.
CHUNK = b"x" * 65536
SUCCESS = b'{"status": "success", "response": "Data Uploaded"}'
PATHS = ("direct", "via proxy")
_PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY")


# -- the answers: each writes to the connection, and says whether it stays open ----------------------
def _head(length: int, content_type: str = "application/json") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (
        content_type.encode(), length)


def _success(conn: socket.socket) -> bool:
    conn.sendall(_head(len(SUCCESS)) + SUCCESS)
    return True


def _trickle(at_once: bytes, trickled: bytes):
    def answer(conn: socket.socket) -> bool:
        conn.sendall(at_once)
        ends = time.monotonic() + TRICKLE_FOR
        for i in range(len(trickled)):
            if time.monotonic() > ends:
                break
            time.sleep(TRICKLE_EVERY)
            conn.sendall(trickled[i:i + 1])
        return False
    return answer


def _huge(conn: socket.socket) -> bool:
    conn.sendall(_head(HUGE))
    for _ in range(HUGE // len(CHUNK)):
        conn.sendall(CHUNK)
    return True


def _reset_mid_body(conn: socket.socket) -> bool:
    conn.sendall(_head(1000) + b" " * 100)
    time.sleep(0.1)  # the sender has the status line and headers: the reset hits the body
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() sends RST
    return False


def _not_json(conn: socket.socket) -> bool:
    body = b"<html><body>Welcome! Manage your API key here.</body></html>"
    conn.sendall(_head(len(body), "text/html") + body)
    return True


CASES = {
    "huge body (300 MiB)": _huge,
    "trickled status line": _trickle(b"", _head(len(SUCCESS)) + SUCCESS),
    "trickled headers": _trickle(b"HTTP/1.1 200 OK\r\n", b"X-Padding: " + b"a" * 100 + b"\r\n\r\n"),
    "trickled body": _trickle(_head(100), b" " * 100),
    "reset mid-body": _reset_mid_body,
    "200 not JSON": _not_json,
}


class _Server:
    """HTTP/1.1 on a raw loopback socket, one connection at a time: the n-th request gets
    ``answers[n]``, later ones a success. Runs on a daemon thread for the life of the process."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d" % self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            conn, _ = self.listener.accept()
            conn.settimeout(30.0)
            with conn:
                try:
                    while self._read_request(conn) and self._next_answer()(conn):
                        pass
                except OSError:  # the sender closed the connection (a deadline, a read cap)
                    pass

    def _next_answer(self):
        return self.answers.pop(0) if self.answers else _success

    @staticmethod
    def _read_request(conn: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536) if select.select([conn], [], [], 30.0)[0] else b""
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            body += conn.recv(65536)
        return True


# -- one case, in its own process ---------------------------------------------------------------
def _memory_probe():
    """A function giving, in MiB, how far the peak RSS rose above the RSS of now."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: the peak RSS (VmHWM) starts again from the RSS of now
        start = _proc_status_mib("VmRSS")
        return lambda: _proc_status_mib("VmHWM") - start
    except OSError:  # elsewhere: the process's peak, which a case raises only past any earlier peak
        start = _maxrss_mib()
        return lambda: _maxrss_mib() - start


def _proc_status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def _maxrss_mib() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def _endpoint(server_url: str, path: str) -> str:
    """The endpoint to send to; through the server as the HTTP proxy for ``via proxy``."""
    for name in _PROXY_VARIABLES:  # a proxy of the machine must not carry loopback traffic
        os.environ.pop(name, None)
    if path == "direct":
        return server_url
    os.environ["HTTP_PROXY"] = server_url
    return "http://127.0.0.1:9"  # loopback: plain http is refused elsewhere; the proxy is asked for it


def _deliver_one(sender, config) -> str:
    """Queue one record and run one forced cycle; the record's outcome."""
    from callhome.payload import new_event_id
    from callhome.queue import frame

    payload = {"activity_type": "secondary1", "source": "TELEMETRY", "domain": "bench.example",
               "event_id": new_event_id(), "event_at": int(time.time()), "product_id": "bench-faults",
               "user_agent": "bench-faults callhome", "meta": {}}
    sender.queue.put([frame({"v": 1, "kind": "usage", "payload": payload})], time.time())
    sender.run(config, force=True)
    return sender.last_send["outcome"]


def measure(case: str, path: str) -> dict:
    """One hostile answer through callhome's Sender, after a normal one on the same connection."""
    from callhome.buffer import Counters
    from callhome.config import resolve
    from callhome.memqueue import MemoryQueue
    from callhome.sender.delivery import Sender

    server = _Server(_success, CASES[case])
    config = resolve({"product_id": "bench-faults", "endpoint": _endpoint(server.url, path),
                      "api_key": c.API_KEY, "domain": "bench.example", "timeout": TIMEOUT,
                      "call_home_interval": 0, "send_in_ci": True}, environ={})
    # no opt-out of the bench machine may skip the measurement
    sender = Sender(MemoryQueue("bench"), Counters(), honour_opt_outs=False)
    if _deliver_one(sender, config) != "ok":  # the imports done, the connection open
        raise RuntimeError(f"{case}, {path}: the answer before it failed: {sender.last_send}")
    growth = _memory_probe()
    started = time.monotonic()
    outcome = _deliver_one(sender, config)
    seconds = time.monotonic() - started
    rise = growth()
    sender.close()
    return {"case": f"{case}, {path}", "outcome": outcome, "seconds": round(seconds, 3),
            "rss_growth_mib": round(max(rise, 0.0), 1), "within_deadline": seconds <= TIMEOUT + ALLOWANCE}


def run() -> list[dict]:
    """One row per hostile answer and path, each measured in a fresh process."""
    return [c.run_json(c.bench_child("_faults_responses.py", "--one", case, path), timeout=120)
            for path in PATHS for case in CASES]


def print_table(rows: list) -> None:
    print(f"{'case':<38} {'outcome':<8} {'seconds':>8} {'RSS growth MiB':>15}  within deadline")
    for row in rows:
        print(f"{row['case']:<38} {row['outcome']:<8} {row['seconds']:>8.3f} {row['rss_growth_mib']:>15.1f}  "
              f"{'yes' if row['within_deadline'] else 'NO'}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(measure(sys.argv[2], sys.argv[3])))
    else:
        print(f"hostile answers, timeout {TIMEOUT:g} s (deadline allowance {ALLOWANCE:g} s):")
        print_table(run())
