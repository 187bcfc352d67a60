"""``flush``: deliver the queued backlog now, with a progress bar on a terminal."""

from __future__ import annotations

import argparse
import sys

from ..notice import is_terminal as _is_terminal
from ._output import _emit
from ._target import _Target

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (a short-lived command waits for it)
if TYPE_CHECKING:
    from typing import Any

    from ..agent import Agent
    from ..config import Config


def flush(target: _Target, args: argparse.Namespace) -> int:
    """Deliver the backlog with the host's last settings; the key comes from the environment."""
    decision = target.decision()
    total = target.queue().depth()[0]
    if not decision.enabled or total == 0:  # nothing to do: do not create an agent (or any file)
        report = {"delivered_all": decision.enabled, "delivered": 0, "total": total, "remaining": total,
                  "enabled": decision.enabled, "reason": decision.reason, "state": "idle"}
        return _flush_summary(target, report)
    config = target.config()
    if not config.api_key:
        print("warning: no API key (set CALLHOME_API_KEY or REO_API_KEY); the endpoint will refuse "
              "the events", file=sys.stderr)
    from ..agent import Agent

    _notice_first(target, config)
    # the product's sender, in the foreground (a detached one already running takes part)
    agent = Agent(**dict(target.kwargs(), call_home_interval=0, sessions=False, sender="thread"))
    delivered_all = _flush_with_progress(agent, args.ch_timeout, total)
    status = agent.status()
    agent.shutdown(0.5)
    report = {"delivered_all": delivered_all, "delivered": status["delivered"], "total": total,
              "remaining": target.queue().depth()[0], "enabled": status["enabled"],
              "reason": status["reason"], "state": status["state"], "last_send": status["last_send"]}
    return _flush_summary(target, report)


def _notice_first(target: _Target, config: Config) -> None:
    """A person asked to send, on a terminal the notice never reached: show it, then send (the
    request is explicit, so this run is not the deferred first run a product's own would be)."""
    from .. import choices
    from ..notice import show_on_terminal

    if target.choices().get("notice_version") != choices.NOTICE_VERSION:
        show_on_terminal(config, target.product_directory)


def _flush_with_progress(agent: Agent, timeout: float, total: int) -> bool:
    """``agent.flush(timeout)``, drawing ``delivered n/total`` on stderr when it is a terminal."""
    if not _is_terminal(sys.stderr):
        return bool(agent.flush(timeout))
    import threading

    outcome: list[bool] = []
    flusher = threading.Thread(target=lambda: outcome.append(agent.flush(timeout)), daemon=True)
    flusher.start()
    while flusher.is_alive():
        _draw_progress(agent.status()["delivered"], total)
        flusher.join(0.1)
    _draw_progress(agent.status()["delivered"], total)
    sys.stderr.write("\n")
    return bool(outcome and outcome[0])


def _draw_progress(done: int, total: int, width: int = 30) -> None:
    filled = width * min(done, total) // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] delivered {done}/{total}")
    sys.stderr.flush()


def _flush_summary(target: _Target, report: dict[str, Any]) -> int:
    if target.json:
        _emit(report, True)
    elif not report["enabled"]:
        print(f"nothing sent: telemetry is off ({report['reason']}); {report['total']} event(s) stay queued")
    else:
        print(f"delivered {report['delivered']} of {report['total']} queued event(s); "
              f"{report['remaining']} remain ({report['state']})")
    return 0 if report["delivered_all"] else 1
