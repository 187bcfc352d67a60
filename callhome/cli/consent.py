"""``enable``, ``disable`` (the saved choice), ``reset-id`` and ``forget`` (deleting what identifies
this installation)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from ..notice import is_terminal as _is_terminal
from ._output import _emit
from ._target import _Target

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (a short-lived command waits for it)
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any


# -- enable / disable --------------------------------------------------------------------------
def enable(target: _Target, args: argparse.Namespace) -> int:
    """Save consent (which also counts as having seen the notice); warn when something still wins."""
    from .. import choices

    fields: dict[str, object] = {"disabled": False, "consent": True}
    if not args.ch_global:
        fields.update(notice_version=choices.NOTICE_VERSION, notice_at=int(time.time()))
    saved_to = choices.save(_anchor(target), "global" if args.ch_global else "product", **fields)
    warnings = [f"{reason}: the environment wins over `enable`, telemetry stays off"
                for reason in [_environment_veto(target)] if reason]
    warnings += [_saved_veto(target)] if target.product_id and target.choices()["disabled"] else []
    decision = target.decision() if target.product_id else None
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    report = {"saved_to": saved_to, "scope": "global" if args.ch_global else "product",
              "enabled": decision.enabled if decision else not warnings,
              "reason": decision.reason if decision else None, "warnings": warnings}
    which = target.product_id or "every product"  # what `enabled` was judged for
    _emit_saved(target, report, f"telemetry is on for {which}" if report["enabled"]
                else f"telemetry stays off for {which}")
    return 0


def disable(target: _Target, args: argparse.Namespace) -> int:
    """Save the opt-out, then delete what identifies this installation and what waits to be sent."""
    from .. import choices
    from ..queue import DiskQueue

    saved_to = choices.save(_anchor(target), "global" if args.ch_global else "product",
                            disabled=True, consent=False)
    directories = _product_dirs(target.root) if args.ch_global else [target.product_directory]
    for directory in directories:  # first, so that it writes nothing after the wipe
        _this_process_follows(directory, "disabled")
    wiped = [(_delete_id(directory), DiskQueue(directory).wipe()) for directory in directories]
    report: dict[str, Any] = {"saved_to": saved_to, "scope": "global" if args.ch_global else "product",
                              "enabled": False, "deleted_installation_ids": [old for old, _ in wiped if old],
                              "deleted_events": sum(events for _, events in wiped)}
    which = "every product" if args.ch_global else target.product_id
    ids, events = len(report["deleted_installation_ids"]), report["deleted_events"]
    _emit_saved(target, report, f"telemetry is off for {which}; deleted {ids} installation id(s) and "
                                f"{events} queued event(s)")
    return 0


def _saved_veto(target: _Target) -> str:
    """The warning for a ``disable`` that survives this ``enable`` (the global one wins)."""
    from .. import choices

    path = target.choices().get("disabled_by")
    hint = "run `enable --global`" if path == choices.paths(target.product_directory)[0] else "run `enable`"
    return f"still disabled by `disable` (saved in {path}): {hint}"


def _anchor(target: _Target) -> str:
    """A product directory for ``choices.save``: the global file sits next to every product's,
    so ``--global`` without ``--product`` only needs the root (the name below is never created)."""
    return target.directory or os.path.join(target.root, "-")


def _environment_veto(target: _Target) -> str | None:
    """Why the environment (or the host) keeps telemetry off whatever the saved choice says."""
    if target.product_id:
        decision = target.decision(with_choices=False)
        return None if decision.enabled else decision.reason
    from ..config import env_flag
    from ..optout import OPT_OUT_VARIABLES, detect_ci

    for name in OPT_OUT_VARIABLES:
        if env_flag(os.environ.get(name)):
            return f"disabled by {name}={os.environ[name].strip()}"
    return "CI detected" if detect_ci(os.environ) else None


def product_names(root: str) -> list[str]:
    """The products with state under ``root``, as their directories are named."""
    return [os.path.basename(path) for path in _product_dirs(root)]


def _product_dirs(root: str) -> list[str]:
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    return [path for path in (os.path.join(root, name) for name in names) if os.path.isdir(path)]


def _emit_saved(target: _Target, report: dict[str, Any], summary: str) -> None:
    if target.json:
        _emit(report, True)
    else:
        print(f"Saved to {report['saved_to']}")
        print(summary + (f" ({report['reason']})" if report.get("reason") else ""))


# -- reset-id / forget -------------------------------------------------------------------------
def reset_id(target: _Target, args: argparse.Namespace) -> int:
    """Delete the installation id; the next run of the product creates a new one."""
    from ..identity import ID_FILE

    old = _delete_id(target.product_directory)
    _this_process_follows(target.product_directory, "id_reset")
    report = {"old_installation_id": old, "deleted": old is not None, "id_file": target.path(ID_FILE)}
    if target.json:
        _emit(report, True)
    elif old:
        print(f"deleted installation id {old}; the next run of {target.product_id} creates a new one")
    else:
        print(f"no installation id was stored for {target.product_id}")
    return 0


def _delete_id(directory: str) -> str | None:
    """Delete the installation id and the salt of ``salted_hash``, which would link old and new;
    returns the old id."""
    from .. import identity
    from .._fs import unlink_quietly
    from ..privacy import SALT_FILE

    old = identity.read(directory)
    identity.reset(directory)
    unlink_quietly(os.path.join(directory, SALT_FILE))
    return old


def forget(target: _Target, args: argparse.Namespace) -> int:
    """Delete the product's whole directory, after ``--yes`` or a "y" typed on a terminal."""
    import shutil

    directory = target.product_directory
    existed = os.path.isdir(directory)
    if existed and not args.ch_yes:
        if not _is_terminal(sys.stdin):
            print(f"forget deletes {directory}: confirm with --yes", file=sys.stderr)
            return 2
        if not _confirm(f"Delete all local callhome state of {target.product_id} ({directory})? [y/N] "):
            print("nothing deleted", file=sys.stderr)
            return 1
    _this_process_follows(directory, "forgotten")  # its worker may be creating the directory right now
    if existed or os.path.isdir(directory):
        existed = True
        _stop_the_sender(target)
        _remove_tree(shutil, directory)
    report = {"deleted": existed, "state_dir": directory}
    if target.json:
        _emit(report, True)
    else:
        print(f"deleted {directory}" if existed else f"nothing stored for {target.product_id} ({directory})")
    return 0


def _this_process_follows(directory: str, change: str) -> None:
    """The verbs may run inside the product's own process (a click or typer group whose callback
    called ``init()``): its agent holds records, a session at least, that would reach the disk
    at exit with the id just deleted. It drops them; for ``disabled`` and ``forgotten`` it stops."""
    agent = getattr(sys.modules.get("callhome"), "_default", None)
    if agent is not None:
        agent.local_state_changed(directory, change)


def _stop_the_sender(target: _Target, wait: float = 2.0) -> None:
    """Ask the product's sender to end and wait for it (a bounded while): it would write its
    status into the directory being deleted."""
    from .._lock import is_held
    from ..sender.files import LOCK_NAME, request_retirement

    queue = target.queue()
    if not is_held(queue.lock_path(LOCK_NAME)):
        return
    request_retirement(queue.dir, "", time.time(), "the product's state was forgotten")
    deadline = time.monotonic() + wait
    while is_held(queue.lock_path(LOCK_NAME)) and time.monotonic() < deadline:
        time.sleep(0.02)


def _remove_tree(shutil: ModuleType, directory: str, attempts: int = 5) -> None:
    """``rmtree``, again if a process of the product wrote into it meanwhile."""
    for _ in range(attempts - 1):
        try:
            shutil.rmtree(directory)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)
    shutil.rmtree(directory, ignore_errors=True)


def _confirm(prompt: str) -> bool:
    sys.stderr.write(prompt)  # stderr: stdout stays clean for --json
    sys.stderr.flush()
    try:
        return sys.stdin.readline().strip().lower() in ("y", "yes")
    except (OSError, KeyboardInterrupt):
        return False
