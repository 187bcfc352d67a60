"""``report``: a PowerAuth-compatible usage report from a collector, or from the local sent log."""

from __future__ import annotations

import argparse
import json
import sys

from ._target import _Host, _Target

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (a short-lived command waits for it)
if TYPE_CHECKING:
    from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="CURRENT_MAU or USERS_IN_PAST_DAYS (any case)")
    parser.add_argument("--product", "--application", dest="application", required=True, metavar="ID",
                        help="the product id (--application: the name PowerAuth's reports use)")
    parser.add_argument("--json", dest="ch_json", action="store_true", default=argparse.SUPPRESS,
                        help="accepted as on every verb: the report is always one JSON document")
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


def report(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Print the report's envelope as JSON: 0 for ``"status": "OK"``, 1 for an error envelope."""
    from ..collector import reports

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


def _remote_report(url: str, key: str, document: dict[str, Any], timeout: float) -> dict[str, Any] | None:
    """The collector's envelope (error statuses included), or None after saying why on stderr."""
    import urllib.error
    import urllib.request

    from ..collector.app import REPORT_PATH

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


def _sent_payloads(args: argparse.Namespace) -> list[Any]:
    """The payloads the product's agent delivered (outcome ``ok``), from its bounded sent log."""
    from .. import sentlog
    from ..sender.transport import OK

    path = _Target(_Host(None, {}), args.application, args).path(sentlog.FILE)
    return [entry.get("payload") for entry in sentlog.tail(path, sys.maxsize) if entry.get("outcome") == OK]
