"""``preview``: the queued events and the exact request the next send would make; never sends."""

from __future__ import annotations

import argparse
import json

from ._output import _emit, _when
from ._target import _Target

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (a short-lived command waits for it)
if TYPE_CHECKING:
    from typing import Any

    from ..config import Config


def preview(target: _Target, args: argparse.Namespace) -> int:
    """The queued events and the request the next send would make; reads only, never sends."""
    config, decision = target.config(), target.decision()
    records = target.queue().peek(max(args.ch_count, 1))
    report: dict[str, Any] = {"enabled": decision.enabled, "reason": decision.reason, "sent": False,
                              "queued": target.queue().depth()[0], "events": [r["payload"] for r in records]}
    if records:
        report["next_request_is"] = "the first queued event"
        report["next_request"] = _request(config, records[0])
    else:
        report["next_request_is"] = f"the {config.call_home_activity} this product would send now"
        report["next_request"] = _request(config, _call_home_record(target, decision.is_ci))
    if target.json:
        _emit(report, True)
    else:
        _print_preview(report)
    return 0


def _call_home_record(target: _Target, is_ci: bool) -> dict[str, Any]:
    """The automatic CALL_HOME, built by the agent's own code in debug mode (no thread, no file)."""
    from ..agent import Agent
    from ..identity import read

    agent = Agent(**dict(target.kwargs(), debug=True, call_home_interval=0, sessions=False))
    call_home = agent.call_home_record({"automatic": True})
    assert call_home is not None  # debug mode builds it even with telemetry off
    record = agent.add_client_properties(call_home)
    installation_id = None if is_ci else read(target.product_directory)
    if installation_id:  # the worker adds it when it persists the record
        record["payload"]["meta"]["installation_id"] = installation_id
    return record


def _request(config: Config, record: dict[str, Any]) -> dict[str, Any]:
    """Method, URL, headers (key masked) and body, as ``HttpTransport.send`` would make them."""
    from .._version import __version__
    from ..schema import AGGREGATE_PATH, USAGE_PATH
    from ..sender.delivery import fill_identity

    payload = fill_identity(record["payload"], config)
    path = AGGREGATE_PATH if record.get("kind") == "aggregate" else USAGE_PATH
    headers = {"Content-Type": "application/json", "User-Agent": f"callhome/{__version__}",
               "X-API-KEY": "***" if config.api_key else "(not set)",
               "Idempotency-Key": str(payload.get("event_id", ""))}
    return {"method": "POST", "url": config.endpoint + path, "headers": headers, "body": {"payload": payload}}


def _print_preview(report: dict[str, Any]) -> None:
    if not report["enabled"]:
        print(f"telemetry is off ({report['reason']}): nothing would be sent\n")
    shown = f" (showing {len(report['events'])})" if report["queued"] else ""
    print(f"queued events: {report['queued']}{shown}")
    for payload in report["events"]:
        print(f"  {_when(payload.get('event_at')) or '-'}  {payload.get('activity_type')}  "
              f"event_id={payload.get('event_id')}")
    request = report["next_request"]
    print(f"\nnext request ({report['next_request_is']}; not sent):")
    print(f"{request['method']} {request['url']}")
    for name, value in request["headers"].items():
        print(f"{name}: {value}")
    print("\n" + json.dumps(request["body"], indent=2, sort_keys=True))
