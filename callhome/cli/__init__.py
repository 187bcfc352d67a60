"""The ``callhome`` command (also ``python -m callhome``), and the same verbs for a host's CLI.

``callhome status --product acme-cli`` reads and controls one product's local state;
``add_telemetry_commands(subparsers, product_id="acme-cli")`` mounts the same verbs as
``acme telemetry ...`` in a host's argparse CLI, and ``main(argv, product_id="acme-cli")`` runs
them for any other framework. See ``docs/cli.md``.

Exit codes: 0 success; 1 the action ran but did not fully succeed (``flush`` left events
undelivered, ``forget`` was declined); 2 bad usage.

This module builds the parser; each verb lives in the module named after it (``status`` also
has ``log``; ``consent`` has ``enable``, ``disable``, ``reset-id`` and ``forget``).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

from . import consent, env, flush, preview, report, status
from ._target import _Host, _Target

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (a short-lived command waits for it)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]
    _VerbFunction = Callable[[_Target, argparse.Namespace], int]
    _Option = tuple[tuple[str, ...], dict[str, Any]]  # add_argument()'s flags and keyword arguments

__all__ = ["add_telemetry_commands", "main", "product_status"]


# -- entry points ------------------------------------------------------------------------------
def main(argv: list[str] | None = None, product_id: str | None = None, **init_options: object) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit code.

    Without ``product_id`` this is the ``callhome`` command (``--product`` on every verb). With it,
    the verbs act on that product, with ``init_options`` (as given to ``callhome.init()``) as
    defaults: ``main(["status"], product_id="acme-cli")`` from a click or typer command.
    Never exits the process: usage errors return 2 after printing the usage to stderr.
    """
    host = _Host(product_id, init_options)
    parser = argparse.ArgumentParser(prog=host.prog(), description="See and control what callhome sends.")
    from .._version import __version__

    parser.add_argument("--version", action="version", version=f"callhome {__version__}")
    verbs = _mount(parser, host)
    if product_id is None:
        _add_own_commands(verbs)
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else [str(a) for a in argv])
        return int(args.func(args) or 0)
    except SystemExit as exc:  # argparse's usage errors and --help
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)


def add_telemetry_commands(subparsers: _Subparsers, product_id: str, name: str = "telemetry",
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


def product_status(product_id: str, data_dir: str | None = None, **init_options: object) -> dict[str, Any]:
    """What ``status --json`` reports, as a dict: read from the product's directory; creates nothing."""
    host = _Host(product_id, dict(init_options, **({"data_dir": data_dir} if data_dir else {})))
    return status.status_report(_Target(host, product_id, None))


# -- the parser --------------------------------------------------------------------------------
def _verbs() -> tuple[tuple[str, tuple[str, ...], _VerbFunction, str, tuple[_Option, ...]], ...]:
    """(name, aliases, function, help, extra arguments) of every verb."""
    timeout = (("--timeout",), dict(dest="ch_timeout", type=float, default=30.0, metavar="S",
                                    help="give up after S seconds (default 30)"))
    count = (("-n", "--count"), dict(dest="ch_count", type=int, default=10, metavar="N",
                                     help="how many (default 10)"))
    scope = (("--global",), dict(dest="ch_global", action="store_true",
                                 help="for every product on this account, not just this one"))
    yes = (("--yes", "-y"), dict(dest="ch_yes", action="store_true", help="do not ask for confirmation"))
    force = (("--force",), dict(dest="ch_force", action="store_true",
                                help="act even if the product has never run on this machine (no typo check)"))
    return (
        ("status", (), status.status,
         "whether telemetry is on and why; paths, id, queue, last send (default)", ()),
        ("preview", ("dump",), preview.preview,
         "the queued events and the exact next request; never sends", (count,)),
        ("flush", (), flush.flush, "deliver the queued backlog now", (timeout,)),
        ("log", (), status.log, "the last requests sent (the local sent log)", (count,)),
        ("enable", ("on",), consent.enable,
         "allow telemetry (records consent; an environment opt-out still wins)", (scope, force)),
        ("disable", ("off",), consent.disable,
         "turn telemetry off and delete the installation id and the queue", (scope, force)),
        ("reset-id", (), consent.reset_id, "delete the installation id; the next run creates a new one", ()),
        ("forget", (), consent.forget, "delete all local state of the product", (yes,)),
        ("env", (), env.env, "every environment variable callhome reads, its value and meaning", ()),
    )


def _mount(parser: argparse.ArgumentParser, host: _Host) -> _Subparsers:
    """Give ``parser`` the verbs, with ``status`` when none is named; returns the sub-parsers.

    The common options live on ``parser`` and on every verb (``--json status`` and
    ``status --json`` both work); on the verbs they default to SUPPRESS so that a verb does not
    overwrite what was given before it. Every destination starts with ``ch_`` so that nothing
    clobbers a host's own arguments.
    """
    _common_options(parser, host, suppress=False)
    parser.set_defaults(func=functools.partial(_run, host, status.status, parser))
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


def _add_own_commands(verbs: _Subparsers) -> None:
    """``demo``, ``collector`` and ``report``: the plain ``callhome`` command's tools, not a host's."""
    from ..collector.server import add_arguments, run

    demo = verbs.add_parser("demo", help="run a collector and a small host, and show what arrives")
    demo.add_argument("--events", type=int, default=3, help="usage events the demo host sends")
    demo.set_defaults(func=_demo)
    collector = verbs.add_parser("collector", help="run the Reo-compatible collector (see docs/collector.md)")
    add_arguments(collector)
    collector.set_defaults(func=run)
    reporting = verbs.add_parser("report", help="a PowerAuth-compatible usage report (CURRENT_MAU, "
                                                "USERS_IN_PAST_DAYS) from a collector or the local sent log")
    report.add_arguments(reporting)
    reporting.set_defaults(func=functools.partial(report.report, reporting))


def _run(host: _Host, verb: _VerbFunction, parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    product_id = host.product_id or getattr(args, "ch_product", None) or os.environ.get("CALLHOME_PRODUCT")
    product_id = (product_id or "").strip() or None
    if not product_id and verb is status.status:  # bare `callhome`: what ran on this machine
        return status.products(_Target(host, None, args))
    if not product_id and not getattr(args, "ch_global", False):
        parser.error("--product ID is required (or set CALLHOME_PRODUCT)")
    try:
        target = _Target(host, product_id, args)
        if _unknown_product(target, args):
            return 1
        return verb(target, args)
    except BrokenPipeError:  # `callhome preview | head`: the reader has what it wanted
        _quiet_stdout()
        return 0
    except OSError as exc:  # a read-only or foreign state directory: say so, no traceback
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 1


def _quiet_stdout() -> None:
    """Point stdout at devnull: flushing what is left into a closed pipe at exit would print an error."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)


def _unknown_product(target: _Target, args: argparse.Namespace) -> bool:
    """``enable``/``disable`` typed for a product that never ran here (a typo, ``acme_cli`` for
    ``acme-cli``): say so and name those that did, rather than report a success that changes nothing.
    A host's own ``telemetry`` command cannot mistype its product: it is never checked."""
    if (target.embedded or not target.directory or getattr(args, "ch_force", True) or getattr(args, "ch_global", False)
            or os.path.isdir(target.directory)):
        return False
    known = consent.product_names(target.root)
    print(f"{target.product_id!r} has never run callhome on this machine (nothing in {target.root}). "
          + (f"Products that have: {', '.join(known)}. " if known else "No product has. ")
          + "Use --force to act anyway (to opt out ahead of its first run).", file=sys.stderr)
    return True


def _demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(args.events)
