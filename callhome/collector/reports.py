"""PowerAuth-compatible telemetry reports: ``CURRENT_MAU`` and ``USERS_IN_PAST_DAYS``.

The envelope and the computation follow Wultra's ``powerauth-server`` Telemetry API
(``POST /rest/v3/telemetry/report``), with the resolutions of ``research/target_apis.md`` §3.4:
``days`` is 1..365 and may be an integer or an integral numeric string; names are matched
case-insensitively and echoed upper-case; ``CURRENT_MAU`` forces ``days`` to 30; the extension
parameter ``window`` chooses PowerAuth's rolling window (the default) or whole UTC days (P6).

Everything here is pure: :func:`generate` takes the request document and a *source*, a callable
``source(application, since, until)`` returning the distinct ``(user_id, installation_id)`` pairs
of the application's records whose ``event_at`` lies in ``[since, until]``. :func:`store_source`
reads them from the collector's :class:`~callhome.collector.store.Store`, :func:`payload_source`
from any iterable of payloads (the agent's local sent log), so both answer identically.
Standard library only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

if TYPE_CHECKING:
    from callhome.collector.store import Store

__all__ = ["CURRENT_MAU", "DEFAULT_IDENTITY", "DEFAULT_WINDOW", "IDENTITIES", "MAX_DAYS", "REPORTS",
           "USERS_IN_PAST_DAYS", "WINDOWS", "ReportError", "ReportRequest", "count_identities",
           "error_envelope", "generate", "handle", "parse_request", "payload_source", "store_source",
           "window"]

CURRENT_MAU = "CURRENT_MAU"
USERS_IN_PAST_DAYS = "USERS_IN_PAST_DAYS"
REPORTS = (CURRENT_MAU, USERS_IN_PAST_DAYS)
MAU_DAYS = 30
MAX_DAYS = 365
DAY = 24 * 60 * 60
#: ``user``: the user id, or the installation id for anonymous events; ``install``: installations.
IDENTITIES = ("user", "install")
DEFAULT_IDENTITY = "user"
#: ``rolling``: ``now - days x 24 h`` to now, as PowerAuth computes it; ``calendar``: from the start
#: of the UTC day ``days - 1`` days ago to now (``days=1`` is "today so far").
WINDOWS = ("rolling", "calendar")
DEFAULT_WINDOW = "rolling"

ERROR_TELEMETRY = "ERROR_TELEMETRY"
ERROR_HTTP_REQUEST = "ERROR_HTTP_REQUEST"

Pair = tuple[Any, Any]
#: ``source(application, since, until)`` -> distinct (user_id, installation_id) pairs in the window.
Source = Callable[[str, float, float], Iterable[Pair]]


class ReportError(Exception):
    """A request the report service refuses: HTTP ``status``, PowerAuth error ``code``, ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def envelope(self) -> dict[str, Any]:
        return error_envelope(self.code, self.message)


class ReportRequest(NamedTuple):
    name: str
    application: str
    days: int
    identity: str
    window: str = DEFAULT_WINDOW


def error_envelope(code: str, message: str) -> dict[str, Any]:
    """PowerAuth's error body: ``{"status": "ERROR", "responseObject": {"code", "message"}}``."""
    return {"status": "ERROR", "responseObject": {"code": code, "message": message}}


def handle(body: bytes, source: Source, now: float | None = None) -> tuple[int, dict[str, Any]]:
    """The HTTP answer to a raw request body: ``(status, envelope)``."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError too
        return 400, error_envelope(ERROR_HTTP_REQUEST, f"Malformed JSON body: {exc}")
    return generate(document, source, now)


def generate(document: Any, source: Source, now: float | None = None) -> tuple[int, dict[str, Any]]:
    """``(status, envelope)`` for a parsed request ``{"requestObject": {"name", "parameters"}}``.

    ``now`` defaults to ``time.time()``, read at call time so a frozen clock in tests applies.
    """
    try:
        request = parse_request(document)
    except ReportError as exc:
        return exc.status, exc.envelope()
    since, until = window(request.days, time.time() if now is None else now, request.window)
    users = count_identities(source(request.application, since, until), request.identity)
    data = {"application": request.application, "days": request.days, "users": users}
    return 200, {"status": "OK", "responseObject": {"name": request.name, "reportData": data}}


def window(days: int, now: float, kind: str = DEFAULT_WINDOW) -> tuple[float, float]:
    """The report's window ``[since, now]``, both ends included.

    ``rolling`` (PowerAuth's): ``since = now - days x 24 h``. ``calendar``: ``since`` is midnight
    UTC at the start of the day ``days - 1`` days before today, so ``days`` counts whole UTC days,
    today's included.
    """
    if kind == "calendar":
        # UNIX time has no leap seconds: every UTC day is exactly DAY seconds, starting at a multiple.
        return (now // DAY - (days - 1)) * DAY, now
    return now - days * DAY, now


def count_identities(pairs: Iterable[Pair], identity: str = DEFAULT_IDENTITY) -> int:
    """How many distinct identities the ``(user_id, installation_id)`` pairs hold."""
    seen = set()
    for user_id, installation_id in pairs:
        # Tagged, so a user id never collides with an installation id; str() makes any JSON value
        # hashable and counts 7 and "7" once, as the same id.
        if identity == "user" and user_id is not None:
            seen.add(("user", str(user_id)))
        elif installation_id is not None:
            seen.add(("install", str(installation_id)))
    return len(seen)


# -- validation --------------------------------------------------------------------------------
def parse_request(document: Any) -> ReportRequest:
    """The validated request; :class:`ReportError` with PowerAuth's code and message otherwise."""
    name, parameters = _envelope_fields(document)
    upper = name.strip().upper()
    if upper not in REPORTS:
        raise _telemetry(f"Unknown report name: {name}")
    # PowerAuth's CURRENT_MAU silently overrides a caller's days (P5): so does this.
    days = MAU_DAYS if upper == CURRENT_MAU else _days(parameters)
    return ReportRequest(upper, _application(parameters), days, _identity(parameters), _window(parameters))


def _envelope_fields(document: Any) -> tuple[str, dict[str, Any]]:
    request = document.get("requestObject") if isinstance(document, dict) else None
    if not isinstance(request, dict):
        raise _http_request('Body must be a JSON object {"requestObject": {"name", "parameters"}}')
    name, parameters = request.get("name"), request.get("parameters")
    if not isinstance(name, str) or not name.strip():
        raise _http_request("requestObject.name - must not be blank")
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise _http_request("requestObject.parameters - must be a JSON object")
    return name, parameters


def _days(parameters: dict[str, Any]) -> int:
    if parameters.get("days") is None:
        raise _telemetry("Missing parameter 'days'.")
    value = parameters["days"]
    days = _integral(value)
    if days is None:
        raise _telemetry(f"The parameter 'days' must be an integer. Provided: {value!r}")
    if not 1 <= days <= MAX_DAYS:
        raise _telemetry(f"The parameter 'days' must be between 1 and {MAX_DAYS}. Provided: {days}")
    return days


def _integral(value: Any) -> int | None:
    """An int, or a string of one (P4); None for anything else (bool and 30.0 included)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text[:1] in "+-" else text
        if digits.isascii() and digits.isdigit() and len(digits) <= 18:  # bounded: no huge-int parsing
            return int(text)
    return None


def _application(parameters: dict[str, Any]) -> str:
    application = parameters.get("application")
    if application is None:
        raise _telemetry("Missing parameter 'application'.")
    if not isinstance(application, str) or not application.strip():
        raise _telemetry("The parameter 'application' must be a non-empty string.")
    return application


def _identity(parameters: dict[str, Any]) -> str:
    identity = parameters.get("identity", DEFAULT_IDENTITY)
    if not isinstance(identity, str) or identity.strip().lower() not in IDENTITIES:
        raise _telemetry(f"The parameter 'identity' must be 'user' or 'install'. Provided: {identity!r}")
    return identity.strip().lower()


def _window(parameters: dict[str, Any]) -> str:
    window = parameters.get("window", DEFAULT_WINDOW)
    if not isinstance(window, str) or window.strip().lower() not in WINDOWS:
        raise _telemetry(f"The parameter 'window' must be 'rolling' or 'calendar'. Provided: {window!r}")
    return window.strip().lower()


def _telemetry(message: str) -> ReportError:
    return ReportError(400, ERROR_TELEMETRY, message)


def _http_request(message: str) -> ReportError:
    return ReportError(400, ERROR_HTTP_REQUEST, message)


# -- sources -----------------------------------------------------------------------------------
def store_source(store: Store) -> Source:
    """Read the window from a collector store (its :meth:`identities` query)."""
    return store.identities


def payload_source(payloads: Iterable[dict[str, Any]]) -> Source:
    """Read the window from payloads (dicts as sent to Reo), e.g. the agent's local sent log."""
    kept = [p for p in payloads if isinstance(p, dict)]

    def source(application: str, since: float, until: float) -> list[Pair]:
        return [_pair(p) for p in kept if p.get("product_id") == application and _within(p, since, until)]

    return source


def _within(payload: dict[str, Any], since: float, until: float) -> bool:
    event_at = payload.get("event_at")
    return isinstance(event_at, (int, float)) and not isinstance(event_at, bool) and since <= event_at <= until


def _pair(payload: dict[str, Any]) -> Pair:
    meta = payload.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    return payload.get("user_id"), meta.get("installation_id")
