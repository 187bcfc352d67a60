"""``status`` (is telemetry on, and why; paths, id, queue, sender, last send) and ``log`` (what was sent)."""

from __future__ import annotations

import argparse
import os

from ._output import _emit, _table, _when
from ._target import _Target

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (a short-lived command waits for it)
if TYPE_CHECKING:
    from typing import Any

    from ..config import Config
    from ..queue import DiskQueue


def status(target: _Target, args: argparse.Namespace) -> int:
    _emit(status_report(target), target.json)
    return 0  # informational: a disabled product is an answer, not a failure


def products(target: _Target) -> int:
    """``callhome`` or ``callhome status`` without a product: every product that ran here."""
    from .. import choices, sentlog
    from ..queue import DiskQueue
    from .consent import product_names

    rows = []
    for name in product_names(target.root):
        directory = os.path.join(target.root, name)
        saved = choices.load(directory)
        log = os.path.join(directory, sentlog.FILE)
        rows.append({"product": name, "choice": "disabled" if saved["disabled"] else "enabled",
                     "queued": DiskQueue(directory).depth()[0],
                     "last_send": _when(os.path.getmtime(log)) if os.path.exists(log) else None})
    if target.json:
        _emit({"state_dir": target.root, "products": rows}, True)
    elif rows:
        _table([["product", "saved choice", "queued", "last send"]] + [list(row.values()) for row in rows])
        print(f"\n`callhome status --product NAME` for one of them (state in {target.root}).")
    else:
        print(f"no product has run callhome on this machine (nothing in {target.root})")
    return 0


def status_report(target: _Target) -> dict[str, Any]:
    """What ``status --json`` prints; reads only, creates nothing."""
    from .._version import __version__
    from ..identity import read

    config, saved = target.config(), target.choices()
    decision = target.decision()
    report: dict[str, Any] = {
        "product_id": target.product_id, "version": __version__, "enabled": decision.enabled,
        "reason": decision.reason, "ci": decision.is_ci, "endpoint": config.endpoint,
        "api_key": "set" if config.api_key else "missing", "installation_id": read(target.product_directory)}
    report.update(_consent_report(target, saved))
    report.update(_paths_report(target))
    report.update(_queue_report(target, config))
    report.update(_sender_report(target))
    return report


def _consent_report(target: _Target, saved: dict[str, Any]) -> dict[str, Any]:
    from ..choices import NOTICE_VERSION

    seen = saved.get("notice_version") == NOTICE_VERSION
    logged = saved.get("notice_logged_version") == NOTICE_VERSION
    if seen:
        notice = "shown"
    elif logged:
        notice = "logged to the product's logger, never shown on a terminal (the next run on one shows it)"
    else:
        notice = "not shown yet (the next run of the product on a terminal shows it)"
    return {"consent": saved["consent"],
            # a host setting: only an embedded command knows it
            "consent_mode": target.options.get("consent", "opt-out") if target.embedded else None,
            "notice_shown_at": _when(saved.get("notice_at")) if seen else None,
            "notice_logged_at": _when(saved.get("notice_logged_at")) if logged else None,
            "notice": notice}


def _paths_report(target: _Target) -> dict[str, Any]:
    from .. import choices, sentlog
    from ..identity import ID_FILE

    global_file, product_file = choices.paths(target.product_directory)
    return {"state_dir": target.directory, "id_file": target.path(ID_FILE), "choice_file": product_file,
            "global_choice_file": global_file, "sent_log": target.path(sentlog.FILE)}


def _queue_report(target: _Target, config: Config) -> dict[str, Any]:
    import time

    from .. import sentlog
    from ..sender.files import auth_until, backoff_state

    queue = target.queue()
    queued, size = queue.depth()
    backoff, auth = queue.state("backoff"), queue.state("auth")
    paused = backoff_state(queue, time.time()).until  # bounded, as every sender reads it
    last = sentlog.tail(target.path(sentlog.FILE), 1)
    return {
        "queued": queued, "queued_bytes": size,
        "held": queued if _held(queue, config) else 0,
        "dead_lettered": _count(queue.dir, "dead"), "corrupt": _count(queue.dir, "corrupt"),
        "backoff_until": _when(paused or None), "backoff_reason": backoff.get("detail") if paused else None,
        "auth_failed": _when(auth_until(queue, config.api_key, time.time()) or None), "auth_reason": auth.get("detail"),
        "last_call_home": _when(queue.state("call_home").get("at")),
        "last_send": _log_row(last[-1]) if last else None,
    }


def _held(queue: DiskQueue, config: Config) -> bool:
    """Whether the queued records wait for a setting. The API key is never saved, so this command
    rarely has it: what the product's last run said it lacked counts, and the settings given here
    (an identity, a key in the environment) only when they complete what it lacked."""
    saved = queue.state("agent")
    if "held_for" not in saved:  # a run of an older version: judged by this command's settings
        return config.held_for is not None
    return saved["held_for"] is not None and config.held_for is not None


def _sender_report(target: _Target) -> dict[str, Any]:
    """The product's sender: running or not (its lock is held for its whole life), and what it said."""
    from .._lock import is_held
    from ..sender.files import LOCK_NAME, read_status

    queue = target.queue()
    said = read_status(queue.dir)
    running = is_held(queue.lock_path(LOCK_NAME))
    last_error = said.get("last_error") or {}
    mode = f" ({said.get('mode')})" if running else ""
    return {"sender": ("running" if running else "not running") + mode,
            "sender_pid": said.get("pid") if running else None,
            "sender_since": _when(said.get("started")) if running else None,
            "sender_sent": (said.get("counts") or {}).get("delivered", 0) if said else 0,
            "sender_ended": None if running else said.get("ended"),
            "sender_last_error": f"{_when(last_error.get('at'))} {last_error.get('status') or ''} "
                                 f"{last_error.get('detail') or ''}".strip() if last_error else None}


def _count(queue_dir: str, sub: str) -> int:
    try:
        return len(os.listdir(os.path.join(queue_dir, sub)))
    except OSError:
        return 0


# -- log ---------------------------------------------------------------------------------------
def log(target: _Target, args: argparse.Namespace) -> int:
    from .. import sentlog

    path = target.path(sentlog.FILE)
    entries = sentlog.tail(path, max(args.ch_count, 0))
    if target.json:
        _emit({"sent_log": path, "entries": entries}, True)
    elif not entries:
        print(f"nothing sent yet ({path})")
    else:
        _table([list(_log_row(e).values()) for e in entries])
    return 0


def _log_row(entry: dict[str, Any]) -> dict[str, Any]:
    """One sent-log entry as a short row: time, outcome, status, activity, event id."""
    payload = entry.get("payload")
    payload = payload if isinstance(payload, dict) else {}
    return {"at": _when(entry.get("at")), "outcome": entry.get("outcome"), "status": entry.get("status"),
            "activity": payload.get("activity_type"), "event_id": payload.get("event_id"),
            "detail": entry.get("detail") or ""}
