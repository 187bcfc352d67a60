"""``python -m callhome demo``: a collector, a small host with the one-line init, and what arrived."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, as mypy reads it, without importing typing
if TYPE_CHECKING:
    from typing import Any

__all__ = ["run_demo"]

HOST = textwrap.dedent("""\
    import json, callhome
    callhome.init(product_id="demo-cli", api_key="demo-key", endpoint={url!r},
                  domain="example.com", product_version="1.0.0", send_in_ci=True)
    for run in range({events}):
        callhome.track("secondary1", meta={{"command": "build", "run": run}})
    callhome.track("primary", user_id="dev@example.com", user_id_type="EMAIL")
    callhome.flush(timeout=10)
    print(json.dumps(callhome.status()))
""")


def run_demo(events: int = 3) -> int:
    from .collector import CollectorServer

    with tempfile.TemporaryDirectory(prefix="callhome-demo-") as tmp:
        with CollectorServer(api_keys=["demo-key"], db=os.path.join(tmp, "events.sqlite3")) as server:
            code = HOST.format(url=server.url, events=events)
            print(f"collector listening on {server.url} (key 'demo-key')\n")
            print("host program:\n" + textwrap.indent(code, "    "))
            status, elapsed = _run_host(code, os.path.join(tmp, "state"))
            print(f"host ran in {elapsed * 1000:.0f} ms; its callhome.status():")
            _show_status(status)
            # the session record the host queued as it exited goes out through the product's sender
            waited = _until_delivered(os.path.join(tmp, "state", "demo-cli"))
            print(f"\nafter the host exited, its sender delivered what it left ({waited * 1000:.0f} ms); "
                  f"the collector received {server.store.count()} event(s):")
            for event in reversed(server.store.events(limit=50)):
                _show_event(event["payload"])
            print("\nthe same host with DO_NOT_TRACK=1:")
            before = server.store.count()
            status, _ = _run_host(code, os.path.join(tmp, "state"), DO_NOT_TRACK="1")
            print(f"    enabled={status.get('enabled')} reason={status.get('reason')!r}; "
                  f"new events at the collector: {server.store.count() - before}")
    return 0


def _until_delivered(product_dir: str, timeout: float = 15.0) -> float:
    """Seconds until the product's queue is empty (its detached sender delivered it)."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        waiting = [name for sub in ("ready", "inflight")
                   for name in _listing(os.path.join(product_dir, "queue-v1", sub))]
        if not waiting:
            break
        time.sleep(0.05)
    return time.perf_counter() - started


def _listing(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _run_host(code: str, state_dir: str, **extra_env: str) -> tuple[dict[str, Any], float]:
    env = dict(os.environ, CALLHOME_DIR=state_dir, **extra_env)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - started
    if done.stderr.strip():
        print(textwrap.indent(done.stderr.strip(), "    stderr: "))
    try:
        return json.loads(done.stdout.strip().splitlines()[-1]), elapsed
    except (ValueError, IndexError):
        return {}, elapsed


def _show_status(status: dict[str, Any]) -> None:
    keys = ("enabled", "reason", "installation_id", "state", "accepted", "delivered", "queued",
            "dropped_total", "last_send")
    for key in keys:
        print(f"    {key:<16} {status.get(key)}")
    sender = status.get("sender") or {}
    print(f"    {'sender':<16} {sender.get('mode')}, pid {sender.get('pid')}, sent {sender.get('sent')}")


def _show_event(payload: dict[str, Any]) -> None:
    meta = {k: v for k, v in (payload.get("meta") or {}).items() if k != "installation_id"}
    user = f" user={payload['user_id']}({payload['user_id_type']})" if payload.get("user_id") else ""
    print(f"    {payload['activity_type']:<11} event_id=…{payload['event_id'][-12:]} "
          f"event_at={payload['event_at']} domain={payload.get('domain')}{user} meta={json.dumps(meta)}")
