"""The ``callhome`` command (also ``python -m callhome``), and the same verbs for a host's CLI.

``callhome status --product acme-cli`` reads and controls one product's local state;
``add_telemetry_commands(subparsers, product_id="acme-cli")`` mounts the same verbs as
``acme telemetry ...`` in a host's argparse CLI, and ``main(argv, product_id="acme-cli")`` runs
them for any other framework. See ``docs/cli.md``.

Exit codes: 0 success; 1 the action ran but did not fully succeed (``flush`` left events
undelivered, ``forget`` was declined); 2 bad usage.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

__all__ = ["add_telemetry_commands", "main", "product_status"]

#: The settings of the host's last run (``state/agent.json``) that the CLI reuses; never the key.
_SAVED = ("endpoint", "domain", "ip_addr", "relay", "consent", "send_in_ci")


# -- entry points ------------------------------------------------------------------------------
def main(argv: list | None = None, product_id: str | None = None, **init_options: object) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit code.

    Without ``product_id`` this is the ``callhome`` command (``--product`` on every verb). With it,
    the verbs act on that product, with ``init_options`` (as given to ``callhome.init()``) as
    defaults: ``main(["status"], product_id="acme-cli")`` from a click or typer command.
    Never exits the process: usage errors return 2 after printing the usage to stderr.
    """
    host = _Host(product_id, init_options)
    parser = argparse.ArgumentParser(prog=host.prog(), description="See and control what callhome sends.")
    verbs = _mount(parser, host)
    if product_id is None:
        _add_own_commands(verbs)
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else [str(a) for a in argv])
        return int(args.func(args) or 0)
    except SystemExit as exc:  # argparse's usage errors and --help
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)


def add_telemetry_commands(subparsers, product_id: str, name: str = "telemetry",
                           **init_options: object) -> argparse.ArgumentParser:
    """Add ``<host> telemetry [status|preview|flush|log|enable|disable|reset-id|forget|env]``.

    :param subparsers: what the host's ``parser.add_subparsers()`` returned.
    :param init_options: the options the host gives ``callhome.init()`` (``data_dir``,
        ``endpoint``, ``consent``, ...), used as defaults; ``api_key`` lets ``flush`` send.
    :return: the ``telemetry`` parser. After ``args = parser.parse_args()``, ``args.func(args)``
        runs the verb and returns its exit code.
    :raises TypeError: for an option ``callhome.init()`` does not have (an integration mistake).
    """
    host = _Host(product_id, init_options)
    parser = subparsers.add_parser(name, help=f"see and control the telemetry {product_id} sends",
                                   description=f"See and control the telemetry {product_id} sends.")
    _mount(parser, host)
    return parser


def product_status(product_id: str, data_dir: str | None = None, **init_options: object) -> dict:
    """What ``status --json`` reports, as a dict: read from the product's directory; creates nothing."""
    host = _Host(product_id, dict(init_options, **({"data_dir": data_dir} if data_dir else {})))
    return _status_report(_Target(host, product_id, None))


class _Host:
    """Who the verbs act for: a host's fixed product and ``init()`` options, or nobody yet
    (the plain ``callhome`` command, where ``--product`` says)."""

    __slots__ = ("product_id", "options")

    def __init__(self, product_id: str | None, options: dict) -> None:
        self.product_id = product_id
        self.options = {k: v for k, v in options.items() if v is not None}
        if product_id is not None:
            from .config import resolve

            resolve(dict(self.options, product_id=product_id))  # a wrong option fails at integration

    def prog(self) -> str | None:
        if self.product_id is None:
            return "callhome"
        return str(self.options.get("cli_command") or f"{self.product_id} telemetry")


# -- the parser --------------------------------------------------------------------------------
def _verbs() -> tuple:
    """(name, aliases, function, help, extra arguments) of every verb."""
    timeout = (("--timeout",), dict(dest="ch_timeout", type=float, default=30.0, metavar="S",
                                    help="give up after S seconds (default 30)"))
    count = (("-n", "--count"), dict(dest="ch_count", type=int, default=10, metavar="N",
                                     help="how many (default 10)"))
    scope = (("--global",), dict(dest="ch_global", action="store_true",
                                 help="for every product on this account, not just this one"))
    yes = (("--yes", "-y"), dict(dest="ch_yes", action="store_true", help="do not ask for confirmation"))
    return (
        ("status", (), _status, "whether telemetry is on and why; paths, id, queue, last send (default)", ()),
        ("preview", ("dump",), _preview, "the queued events and the exact next request; never sends",
         (count,)),
        ("flush", (), _flush, "deliver the queued backlog now", (timeout,)),
        ("log", (), _log, "the last requests sent (the local sent log)", (count,)),
        ("enable", ("on",), _enable, "allow telemetry (records consent; an environment opt-out still wins)",
         (scope,)),
        ("disable", ("off",), _disable, "turn telemetry off and delete the installation id and the queue",
         (scope,)),
        ("reset-id", (), _reset_id, "delete the installation id; the next run creates a new one", ()),
        ("forget", (), _forget, "delete all local state of the product", (yes,)),
        ("env", (), _env, "every environment variable callhome reads, its value and meaning", ()),
    )


def _mount(parser: argparse.ArgumentParser, host: _Host):
    """Give ``parser`` the verbs, with ``status`` when none is named; returns the sub-parsers.

    The common options live on ``parser`` and on every verb (``--json status`` and
    ``status --json`` both work); on the verbs they default to SUPPRESS so that a verb does not
    overwrite what was given before it. Every destination starts with ``ch_`` so that nothing
    clobbers a host's own arguments.
    """
    _common_options(parser, host, suppress=False)
    parser.set_defaults(func=functools.partial(_run, host, _status, parser))
    verbs = parser.add_subparsers(metavar="VERB", dest="ch_verb")
    for name, aliases, function, doc, extra in _verbs():
        verb = verbs.add_parser(name, aliases=list(aliases), help=doc, description=doc)
        _common_options(verb, host, suppress=True)
        for flags, options in extra:
            verb.add_argument(*flags, **options)
        verb.set_defaults(func=functools.partial(_run, host, function, verb))
    return verbs


def _common_options(parser: argparse.ArgumentParser, host: _Host, suppress: bool) -> None:
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    if host.product_id is None:
        parser.add_argument("--product", dest="ch_product", metavar="ID", default=default(None),
                            help="the product id the host passes to init() (default: CALLHOME_PRODUCT)")
    parser.add_argument("--dir", dest="ch_dir", metavar="DIR", default=default(None),
                        help="callhome's state directory (default: CALLHOME_DIR or the platform's)")
    parser.add_argument("--json", dest="ch_json", action="store_true", default=default(False),
                        help="machine-readable output: one JSON document on stdout")


def _add_own_commands(verbs) -> None:
    """``demo``, ``collector`` and ``report``: the plain ``callhome`` command's tools, not a host's."""
    from .collector.server import add_arguments, run

    demo = verbs.add_parser("demo", help="run a collector and a small host, and show what arrives")
    demo.add_argument("--events", type=int, default=3, help="usage events the demo host sends")
    demo.set_defaults(func=_demo)
    collector = verbs.add_parser("collector", help="run the Reo-compatible collector (see docs/collector.md)")
    add_arguments(collector)
    collector.set_defaults(func=run)
    report = verbs.add_parser("report", help="a PowerAuth-compatible usage report (CURRENT_MAU, "
                                             "USERS_IN_PAST_DAYS) from a collector or the local sent log")
    _report_arguments(report)
    report.set_defaults(func=functools.partial(_report, report))


def _run(host: _Host, verb, parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    product_id = host.product_id or getattr(args, "ch_product", None) or os.environ.get("CALLHOME_PRODUCT")
    product_id = (product_id or "").strip() or None
    if not product_id and not getattr(args, "ch_global", False):
        parser.error("--product ID is required (or set CALLHOME_PRODUCT)")
    try:
        return verb(_Target(host, product_id, args), args)
    except OSError as exc:  # a read-only or foreign state directory: say so, no traceback
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 1


class _Target:
    """One product's state as the verbs see it: its directory, settings and output mode."""

    def __init__(self, host: _Host, product_id: str | None, args: argparse.Namespace | None) -> None:
        from ._fs import default_root, product_dir

        self.product_id = product_id
        self.options = host.options
        self.embedded = host.product_id is not None
        self.json = bool(getattr(args, "ch_json", False))
        chosen = (getattr(args, "ch_dir", None) or host.options.get("data_dir")
                  or os.environ.get("CALLHOME_DIR"))
        self.root = os.path.expanduser(str(chosen)) if chosen else default_root()
        self.directory = product_dir(product_id, self.root) if product_id else None

    def kwargs(self) -> dict:
        """``init()`` options: the host's last run (``state/agent.json``), then the environment,
        then the host's own options, which win as they do in ``init()``."""
        from .config import ENV

        overridden = {option for name, option in ENV.items() if os.environ.get(name, "").strip()}
        saved = self.queue().state("agent")
        kwargs = {k: v for k, v in saved.items() if k in _SAVED and k not in overridden and v}
        kwargs.update(self.options, product_id=self.product_id, data_dir=self.root)
        return kwargs

    def config(self):
        from .config import resolve

        return resolve(self.kwargs())

    def choices(self) -> dict:
        from . import choices

        return choices.load(self.directory)

    def decision(self, with_choices: bool = True):
        from .optout import decide

        return decide(self.config(), choices=self.choices() if with_choices else None)

    def queue(self):
        from .queue import DiskQueue

        return DiskQueue(self.directory)  # reads only: nothing is created until .open()

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)


# -- status ------------------------------------------------------------------------------------
def _status(target: _Target, args: argparse.Namespace) -> int:
    _emit(_status_report(target), target.json)
    return 0  # informational: a disabled product is an answer, not a failure


def _status_report(target: _Target) -> dict:
    from ._version import __version__
    from .identity import read

    config, saved = target.config(), target.choices()
    decision = target.decision()
    report = {"product_id": target.product_id, "version": __version__, "enabled": decision.enabled,
              "reason": decision.reason, "ci": decision.is_ci, "endpoint": config.endpoint,
              "api_key": "set" if config.api_key else "missing", "installation_id": read(target.directory)}
    report.update(_consent_report(target, saved))
    report.update(_paths_report(target))
    report.update(_queue_report(target, config))
    report.update(_sender_report(target))
    return report


def _consent_report(target: _Target, saved: dict) -> dict:
    from .choices import NOTICE_VERSION

    seen = saved.get("notice_version") == NOTICE_VERSION
    return {"consent": saved["consent"],
            # a host setting: only an embedded command knows it
            "consent_mode": target.options.get("consent", "opt-out") if target.embedded else None,
            "notice_shown_at": _when(saved.get("notice_at")) if seen else None,
            "notice": "shown" if seen else "not shown yet (the next run of the product shows it)"}


def _paths_report(target: _Target) -> dict:
    from . import choices, sentlog
    from .identity import ID_FILE

    global_file, product_file = choices.paths(target.directory)
    return {"state_dir": target.directory, "id_file": target.path(ID_FILE), "choice_file": product_file,
            "global_choice_file": global_file, "sent_log": target.path(sentlog.FILE)}


def _queue_report(target: _Target, config) -> dict:
    from . import sentlog

    queue = target.queue()
    queued, size = queue.depth()
    backoff, auth = queue.state("backoff"), queue.state("auth")
    last = sentlog.tail(target.path(sentlog.FILE), 1)
    return {
        "queued": queued, "queued_bytes": size,
        "held": queued if not config.has_identity else 0,  # the worker keeps them until a domain/ip_addr
        "dead_lettered": _count(queue.dir, "dead"), "corrupt": _count(queue.dir, "corrupt"),
        "backoff_until": _when(backoff.get("until")), "backoff_reason": backoff.get("detail"),
        "auth_failed": _when(auth.get("until")), "auth_reason": auth.get("detail"),
        "last_call_home": _when(queue.state("call_home").get("at")),
        "last_send": _log_row(last[-1]) if last else None,
    }


def _sender_report(target: _Target) -> dict:
    """The product's sender: running or not (its lock is held for its whole life), and what it said."""
    from ._lock import is_held
    from .sender.loop import LOCK_NAME, read_status

    queue = target.queue()
    status = read_status(queue.dir)
    running = is_held(queue.lock_path(LOCK_NAME))
    last_error = status.get("last_error") or {}
    return {"sender": ("running" if running else "not running") + (f" ({status.get('mode')})" if running else ""),
            "sender_pid": status.get("pid") if running else None,
            "sender_since": _when(status.get("started")) if running else None,
            "sender_sent": (status.get("counts") or {}).get("delivered", 0) if status else 0,
            "sender_ended": None if running else status.get("ended"),
            "sender_last_error": f"{_when(last_error.get('at'))} {last_error.get('status') or ''} "
                                 f"{last_error.get('detail') or ''}".strip() if last_error else None}


def _count(queue_dir: str, sub: str) -> int:
    try:
        return len(os.listdir(os.path.join(queue_dir, sub)))
    except OSError:
        return 0


def _when(epoch: object) -> str | None:
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or epoch <= 0:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


# -- preview -----------------------------------------------------------------------------------
def _preview(target: _Target, args: argparse.Namespace) -> int:
    """The queued events and the request the next send would make; reads only, never sends."""
    config, decision = target.config(), target.decision()
    records = list(_queued_records(target.queue().dir, max(args.ch_count, 1)))
    report = {"enabled": decision.enabled, "reason": decision.reason, "sent": False,
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


def _queued_records(queue_dir: str, limit: int):
    """Up to ``limit`` records in sending order: ``ready/`` by name, then ``inflight/``.

    Opens the files read-only; a batch claimed or deleted meanwhile is skipped.
    """
    from .queue import parse_entry, unframe

    shown = 0
    for sub in ("ready", "inflight"):
        for name in _listing(os.path.join(queue_dir, sub)):
            entry = parse_entry(name.split(".chq")[0] + ".chq")
            if entry is None:
                continue
            for line in _read_lines(os.path.join(queue_dir, sub, name))[entry.done:]:
                record = unframe(line)
                if record is not None and shown < limit:
                    shown += 1
                    yield record
            if shown >= limit:
                return


def _listing(path: str) -> list:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _read_lines(path: str) -> list:
    try:
        with open(path, "rb") as f:
            return f.read(16 * 1024 * 1024).splitlines(keepends=True)
    except OSError:
        return []


def _call_home_record(target: _Target, is_ci: bool) -> dict:
    """The automatic CALL_HOME, built by the agent's own code in debug mode (no thread, no file)."""
    from .agent import Agent
    from .identity import read

    agent = Agent(**dict(target.kwargs(), debug=True, call_home_interval=0, sessions=False))
    record = agent.add_client_properties(agent.call_home_record({"automatic": True}))
    installation_id = None if is_ci else read(target.directory)
    if installation_id:  # the worker adds it when it persists the record
        record["payload"]["meta"]["installation_id"] = installation_id
    return record


def _request(config, record: dict) -> dict:
    """Method, URL, headers (key masked) and body, as ``HttpTransport.send`` would make them."""
    from ._version import __version__
    from .sender.delivery import fill_identity
    from .schema import AGGREGATE_PATH, USAGE_PATH

    payload = fill_identity(record["payload"], config)
    path = AGGREGATE_PATH if record.get("kind") == "aggregate" else USAGE_PATH
    headers = {"Content-Type": "application/json", "User-Agent": f"callhome/{__version__}",
               "X-API-KEY": "***" if config.api_key else "(not set)",
               "Idempotency-Key": str(payload.get("event_id", ""))}
    return {"method": "POST", "url": config.endpoint + path, "headers": headers, "body": {"payload": payload}}


def _print_preview(report: dict) -> None:
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


# -- flush -------------------------------------------------------------------------------------
def _flush(target: _Target, args: argparse.Namespace) -> int:
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
    from .agent import Agent

    # the product's sender, in the foreground (a detached one already running takes part)
    agent = Agent(**dict(target.kwargs(), call_home_interval=0, sessions=False, sender="thread"))
    delivered_all = _flush_with_progress(agent, args.ch_timeout, total)
    status = agent.status()
    agent.shutdown(0.5)
    report = {"delivered_all": delivered_all, "delivered": status["delivered"], "total": total,
              "remaining": target.queue().depth()[0], "enabled": status["enabled"],
              "reason": status["reason"], "state": status["state"], "last_send": status["last_send"]}
    return _flush_summary(target, report)


def _flush_with_progress(agent, timeout: float, total: int) -> bool:
    """``agent.flush(timeout)``, drawing ``delivered n/total`` on stderr when it is a terminal."""
    if not _is_terminal(sys.stderr):
        return bool(agent.flush(timeout))
    import threading

    outcome: list = []
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


def _flush_summary(target: _Target, report: dict) -> int:
    if target.json:
        _emit(report, True)
    elif not report["enabled"]:
        print(f"nothing sent: telemetry is off ({report['reason']}); {report['total']} event(s) stay queued")
    else:
        print(f"delivered {report['delivered']} of {report['total']} queued event(s); "
              f"{report['remaining']} remain ({report['state']})")
    return 0 if report["delivered_all"] else 1


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False


# -- log ---------------------------------------------------------------------------------------
def _log(target: _Target, args: argparse.Namespace) -> int:
    from . import sentlog

    path = target.path(sentlog.FILE)
    entries = sentlog.tail(path, max(args.ch_count, 0))
    if target.json:
        _emit({"sent_log": path, "entries": entries}, True)
    elif not entries:
        print(f"nothing sent yet ({path})")
    else:
        _table([list(_log_row(e).values()) for e in entries])
    return 0


def _log_row(entry: dict) -> dict:
    """One sent-log entry as a short row: time, outcome, status, activity, event id."""
    payload = entry.get("payload") if isinstance(entry.get("payload"), dict) else {}
    return {"at": _when(entry.get("at")), "outcome": entry.get("outcome"), "status": entry.get("status"),
            "activity": payload.get("activity_type"), "event_id": payload.get("event_id"),
            "detail": entry.get("detail") or ""}


# -- enable / disable --------------------------------------------------------------------------
def _enable(target: _Target, args: argparse.Namespace) -> int:
    """Save consent (which also counts as having seen the notice); warn when something still wins."""
    from . import choices

    fields: dict = {"disabled": False, "consent": True}
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


def _disable(target: _Target, args: argparse.Namespace) -> int:
    """Save the opt-out, then delete what identifies this installation and what waits to be sent."""
    from . import choices

    saved_to = choices.save(_anchor(target), "global" if args.ch_global else "product",
                            disabled=True, consent=False)
    directories = _product_dirs(target.root) if args.ch_global else [target.directory]
    wiped = [_wipe(directory) for directory in directories]
    report = {"saved_to": saved_to, "scope": "global" if args.ch_global else "product", "enabled": False,
              "deleted_installation_ids": [old for old, _ in wiped if old],
              "deleted_events": sum(events for _, events in wiped)}
    which = "every product" if args.ch_global else target.product_id
    ids, events = len(report["deleted_installation_ids"]), report["deleted_events"]
    _emit_saved(target, report, f"telemetry is off for {which}; deleted {ids} installation id(s) and "
                                f"{events} queued event(s)")
    return 0


def _saved_veto(target: _Target) -> str:
    """The warning for a ``disable`` that survives this ``enable`` (the global one wins)."""
    from . import choices

    path = target.choices().get("disabled_by")
    hint = "run `enable --global`" if path == choices.paths(target.directory)[0] else "run `enable`"
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
    from .config import env_flag
    from .optout import OPT_OUT_VARIABLES, detect_ci

    for name in OPT_OUT_VARIABLES:
        if env_flag(os.environ.get(name)):
            return f"disabled by {name}={os.environ[name].strip()}"
    return "CI detected" if detect_ci(os.environ) else None


def _product_dirs(root: str) -> list:
    return [path for path in (os.path.join(root, name) for name in _listing(root)) if os.path.isdir(path)]


def _wipe(directory: str) -> tuple:
    """Delete the installation id, the salt and every queued record; (old id, records deleted)."""
    from . import identity
    from ._fs import unlink_quietly
    from .privacy import SALT_FILE
    from .queue import DiskQueue

    old = identity.read(directory)
    identity.reset(directory)
    unlink_quietly(os.path.join(directory, SALT_FILE))
    queue = DiskQueue(directory)
    events = queue.purge()
    for sub in ("tmp", "dead", "corrupt"):  # unpublished writes and kept copies are records too
        for name in _listing(os.path.join(queue.dir, sub)):
            unlink_quietly(os.path.join(queue.dir, sub, name))
    return old, events


def _emit_saved(target: _Target, report: dict, summary: str) -> None:
    if target.json:
        _emit(report, True)
    else:
        print(f"Saved to {report['saved_to']}")
        print(summary + (f" ({report['reason']})" if report.get("reason") else ""))


# -- reset-id / forget -------------------------------------------------------------------------
def _reset_id(target: _Target, args: argparse.Namespace) -> int:
    """Delete the id (and the salt of ``salted_hash``, which would link old and new)."""
    from . import identity
    from ._fs import unlink_quietly
    from .privacy import SALT_FILE

    old = identity.read(target.directory)
    identity.reset(target.directory)
    unlink_quietly(target.path(SALT_FILE))
    report = {"old_installation_id": old, "deleted": old is not None,
              "id_file": target.path(identity.ID_FILE)}
    if target.json:
        _emit(report, True)
    elif old:
        print(f"deleted installation id {old}; the next run of {target.product_id} creates a new one")
    else:
        print(f"no installation id was stored for {target.product_id}")
    return 0


def _forget(target: _Target, args: argparse.Namespace) -> int:
    """Delete the product's whole directory, after ``--yes`` or a "y" typed on a terminal."""
    import shutil

    directory = target.directory
    existed = os.path.isdir(directory)
    if existed and not args.ch_yes:
        if not _is_terminal(sys.stdin):
            print(f"forget deletes {directory}: confirm with --yes", file=sys.stderr)
            return 2
        if not _confirm(f"Delete all local callhome state of {target.product_id} ({directory})? [y/N] "):
            print("nothing deleted", file=sys.stderr)
            return 1
    if existed:
        shutil.rmtree(directory)
    report = {"deleted": existed, "state_dir": directory}
    if target.json:
        _emit(report, True)
    else:
        print(f"deleted {directory}" if existed else f"nothing stored for {target.product_id} ({directory})")
    return 0


def _confirm(prompt: str) -> bool:
    sys.stderr.write(prompt)  # stderr: stdout stays clean for --json
    sys.stderr.flush()
    try:
        return sys.stdin.readline().strip().lower() in ("y", "yes")
    except (OSError, KeyboardInterrupt):
        return False


# -- env ---------------------------------------------------------------------------------------
_SECRET = ("CALLHOME_API_KEY", "REO_API_KEY")


def _env(target: _Target, args: argparse.Namespace) -> int:
    """Every variable callhome reads, its raw value (keys masked) and what it does here."""
    rows = _optout_rows(target) + _option_rows(target) + _ci_rows()
    if not target.embedded:
        meaning = _if_set("CALLHOME_PRODUCT", "the product when --product is not given")
        rows.append(_row("CALLHOME_PRODUCT", meaning))
    if target.json:
        _emit({"variables": rows}, True)
    else:
        _table([[r["name"], _shown(r["value"]), r["meaning"]] for r in rows])
    return 0


def _row(name: str, meaning: str) -> dict:
    raw = os.environ.get(name)
    value = "***" if raw is not None and name in _SECRET else raw
    return {"name": name, "value": value, "set": raw is not None, "meaning": meaning}


def _if_set(name: str, meaning: str) -> str:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return "not set" if raw is None else "not set (empty)"
    return meaning


def _flag(name: str, effect: str) -> str:
    """The one boolean rule (``config.env_flag``) spelled out for one variable."""
    from .config import env_flag

    return _if_set(name, effect if env_flag(os.environ.get(name)) else "ignored: explicit negative")


def _optout_rows(target: _Target) -> list:
    from .optout import OPT_OUT_VARIABLES, product_variable

    config = target.config()
    names = (*OPT_OUT_VARIABLES, product_variable(config), *config.optout_env)
    rows = [_row(name, _flag(name, "opts out")) for name in names]
    rows.append(_row("CALLHOME_DEBUG", _flag("CALLHOME_DEBUG", "debug: print payloads, send nothing")))
    rows.append(_row("CALLHOME_LOG_FILE", _if_set("CALLHOME_LOG_FILE", "sent requests also go to this file")))
    return rows


def _option_rows(target: _Target) -> list:
    from .config import ENV

    return [_row(name, _if_set(name, _option_meaning(target, name, option))) for name, option in ENV.items()]


def _option_meaning(target: _Target, name: str, option: str) -> str:
    """What a set option variable does: sets the option, or why it is ignored."""
    from .config import ENV, resolve

    if option in target.options:
        return f"ignored: the host sets {option}"
    names = [n for n, o in ENV.items() if o == option]
    earlier = [n for n in names[:names.index(name)] if os.environ.get(n, "").strip()]
    if earlier:
        return f"ignored: {earlier[0]} wins"
    problems = resolve({"product_id": target.product_id}, {name: os.environ.get(name, "")}).problems
    return problems[0] if problems and name not in _SECRET else f"sets {option}"


def _ci_rows() -> list:
    from .optout import CI_VARIABLES

    rows = [_row("CI", _flag("CI", "CI detected"))]
    rows += [_row(name, _if_set(name, "CI detected")) for name in CI_VARIABLES]
    paired = any(os.environ.get(n, "").strip() for n in ("BUILD_URL", "PROJECT_ID"))
    rows.append(_row("BUILD_ID", _if_set("BUILD_ID", "CI detected" if paired else
                                         "ignored without BUILD_URL or PROJECT_ID")))
    has_id = bool(os.environ.get("BUILD_ID", "").strip())
    with_id = "CI detected (with BUILD_ID)" if has_id else "ignored without BUILD_ID"
    rows += [_row(name, _if_set(name, with_id)) for name in ("BUILD_URL", "PROJECT_ID")]
    return rows


def _shown(value: object) -> str:
    """A raw value as typed; quoted when blanks around it (or its absence of text) matter."""
    if value is None:
        return "-"
    return repr(value) if value != str(value).strip() or value == "" else str(value)


# -- output ------------------------------------------------------------------------------------
def _emit(report: dict, as_json: bool) -> None:
    """``report`` as one JSON document, or as aligned ``key  value`` lines."""
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
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value) or "-"
    return str(value)


def _table(rows: list) -> None:
    """Rows of cells, each column as wide as its widest cell (the last one is not padded)."""
    widths = [max(len(_plain(row[i])) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [f"{_plain(cell):<{width}}" for cell, width in zip(row, widths)]
        print("  ".join([*cells, _plain(row[-1])]).rstrip())


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.events)


# -- report ------------------------------------------------------------------------------------
def _report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="CURRENT_MAU or USERS_IN_PAST_DAYS (any case)")
    parser.add_argument("--application", required=True, metavar="ID", help="the product id")
    parser.add_argument("--days", type=int, metavar="N", help="USERS_IN_PAST_DAYS: 1..365 days back")
    parser.add_argument("--identity", choices=("user", "install"),
                        help="count user ids with installation ids for anonymous events (user, the "
                             "default) or installations only (install)")
    parser.add_argument("--window", choices=("rolling", "calendar"),
                        help="rolling: the last days x 24 h (the default); calendar: from midnight UTC "
                             "days - 1 days ago")
    parser.add_argument("--url", help="ask this collector (its base URL); without it, count the "
                                      "product's local sent log")
    parser.add_argument("--report-key", metavar="KEY", help="the collector's report key (with --url)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S", help="with --url (default 30)")
    parser.add_argument("--dir", dest="ch_dir", metavar="DIR", default=argparse.SUPPRESS,
                        help="callhome's state directory, for the sent log (default: CALLHOME_DIR or the "
                             "platform's)")


def _report(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Print the report's envelope as JSON: 0 for ``"status": "OK"``, 1 for an error envelope."""
    from .collector import reports

    parameters = {"application": args.application}
    options = (("days", args.days), ("identity", args.identity), ("window", args.window))
    parameters.update((k, v) for k, v in options if v is not None)
    document = {"requestObject": {"name": args.name, "parameters": parameters}}
    if args.url:
        if not args.report_key:
            parser.error("--report-key KEY is required with --url")
        envelope = _remote_report(args.url, args.report_key, document, args.timeout)
        if envelope is None:
            return 1
    else:
        _, envelope = reports.generate(document, reports.payload_source(_sent_payloads(args)))
    print(json.dumps(envelope, indent=2, sort_keys=True))
    return 0 if envelope.get("status") == "OK" else 1


def _remote_report(url: str, key: str, document: dict, timeout: float) -> dict | None:
    """The collector's envelope (error statuses included), or None after saying why on stderr."""
    import urllib.error
    import urllib.request

    from .collector.app import REPORT_PATH

    target = url if url.rstrip("/").endswith(REPORT_PATH) else url.rstrip("/") + REPORT_PATH
    request = urllib.request.Request(target, data=json.dumps(document).encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:  # 4xx/5xx still carry the envelope
        body = exc.read()
    except (OSError, ValueError) as exc:  # URLError is an OSError; ValueError: a malformed URL
        print(f"callhome report: cannot reach {target}: {exc}", file=sys.stderr)
        return None
    try:
        envelope = json.loads(body)
    except ValueError:
        envelope = None
    if not isinstance(envelope, dict) or "status" not in envelope:
        print(f"callhome report: {target} did not answer with a report envelope", file=sys.stderr)
        return None
    return envelope


def _sent_payloads(args: argparse.Namespace) -> list:
    """The payloads the product's agent delivered (outcome ``ok``), from its bounded sent log."""
    from . import sentlog
    from .sender.transport import OK

    path = _Target(_Host(None, {}), args.application, args).path(sentlog.FILE)
    return [entry.get("payload") for entry in sentlog.tail(path, sys.maxsize) if entry.get("outcome") == OK]
