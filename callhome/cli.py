"""The ``callhome`` command (also ``python -m callhome``): see ``docs/cli.md``.

Exit codes: 0 success; 1 the action ran but did not fully succeed (e.g. ``flush`` left events
undelivered); 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

__all__ = ["main"]


def main(argv: list | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        args = parser.parse_args(["status", *(argv or sys.argv[1:])])
    return int(args.func(args) or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callhome", description="See and control what callhome sends.")
    sub = parser.add_subparsers(metavar="COMMAND")
    for name, func, doc in (("status", _status, "whether telemetry is on, and why; queue and last send"),
                            ("flush", _flush, "deliver the queued backlog now")):
        command = sub.add_parser(name, help=doc, description=doc)
        command.add_argument("--product", required=True, help="the product id the host passes to init()")
        command.add_argument("--dir", help="the state directory (default: CALLHOME_DIR or the platform's)")
        command.add_argument("--json", action="store_true", help="machine-readable output")
        command.set_defaults(func=func)
    sub.choices["flush"].add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    demo = sub.add_parser("demo", help="run a collector and a small host, and show what arrives")
    demo.add_argument("--events", type=int, default=3, help="usage events the demo host sends")
    demo.set_defaults(func=_demo)
    collector = sub.add_parser("collector", help="run the Reo-compatible collector (see docs/collector.md)")
    from .collector.server import add_arguments, run

    add_arguments(collector)
    collector.set_defaults(func=run)
    return parser


def _status(args: argparse.Namespace) -> int:
    report = product_status(args.product, args.dir)
    _emit(report, args.json)
    return 0


def product_status(product_id: str, data_dir: str | None = None) -> dict:
    """What a product's local state says, read from its directory (for another process's view)."""
    from . import identity
    from ._fs import product_dir
    from .config import resolve
    from .optout import decide
    from .queue import DiskQueue

    config = resolve({"product_id": product_id, "data_dir": data_dir})
    decision = decide(config)
    directory = product_dir(product_id, config.data_dir)
    queue = DiskQueue(directory)
    queued, size = queue.depth()
    backoff, auth = queue.state("backoff"), queue.state("auth")
    return {
        "product_id": product_id, "enabled": decision.enabled, "reason": decision.reason,
        "ci": decision.is_ci, "endpoint": config.endpoint, "state_dir": directory,
        "installation_id": identity.read(directory), "queued": queued, "queued_bytes": size,
        "backoff_until": _when(backoff.get("until")), "backoff_reason": backoff.get("detail"),
        "auth_failed": _when(auth.get("until")), "last_call_home": _when(queue.state("call_home").get("at")),
    }


def _when(epoch: object) -> str | None:
    if not isinstance(epoch, (int, float)) or epoch <= 0:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _flush(args: argparse.Namespace) -> int:
    from .agent import Agent

    agent = Agent(product_id=args.product, data_dir=args.dir, call_home_interval=0,
                  **_saved_settings(args.product, args.dir))
    delivered = agent.flush(args.timeout)
    report = agent.status()
    agent.shutdown(0.5)
    _emit({"delivered_all": delivered, "delivered": report["delivered"], "state": report["state"],
           "remaining": report["queued"], "enabled": report["enabled"], "reason": report["reason"],
           "last_send": report["last_send"]}, args.json)
    return 0 if delivered else 1


def _saved_settings(product_id: str, data_dir: str | None) -> dict:
    """Where the host's agent last sent (never its key), unless the environment says otherwise."""
    from ._fs import product_dir
    from .config import ENV
    from .queue import DiskQueue

    saved = DiskQueue(product_dir(product_id, data_dir or os.environ.get("CALLHOME_DIR"))).state("agent")
    overridden = {option for name, option in ENV.items() if os.environ.get(name, "").strip()}
    return {k: v for k, v in saved.items() if k in ("endpoint", "domain", "ip_addr", "relay")
            and k not in overridden and v}


def _emit(report: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True, default=str))
        return
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key.replace('_', ' '):<{width}}  {_plain(value)}")


def _plain(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.events)
