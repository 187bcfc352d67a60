"""The collector's WSGI application: Reo's two ingest endpoints, read-only views and fault injection.

It answers like Reo's documentation says Reo answers (including the string ``"200"`` in the
success body), but validates with :mod:`callhome.schema`, the documented rules as this project
reads them: it is an emulator for development, tests and self-hosting, not Reo's real validation.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any, Callable
from urllib.parse import parse_qs

from callhome import schema
from callhome.collector import dashboard, reports, revenera
from callhome.collector._wsgi import read_body
from callhome.collector.faults import AbortConnection, Fault, FaultInjection
from callhome.collector.relay import Relay, client_address, default_dir, public_address
from callhome.collector.store import KINDS, Store

__all__ = ["AUTH_FAILURE", "DEFAULT_MAX_BODY", "REPORT_PATH", "SUCCESS", "CollectorApp", "RequestCounter", "make_app"]

logger = logging.getLogger("callhome.collector")

SUCCESS = {"response_code": "200", "response": "Data Uploaded", "status": "success"}
AUTH_FAILURE = {"response_code": 400, "response": "Authentication Failure", "status": "failure"}
DEFAULT_MAX_BODY = 64 * 1024
MAX_EVENTS_LIMIT = 10000
_INGEST = {schema.USAGE_PATH: "usage", schema.AGGREGATE_PATH: "aggregate"}
#: PowerAuth's telemetry report service; every other path under ``/rest/`` answers in its envelope.
REPORT_PATH = "/rest/v3/telemetry/report"
_REST_PREFIX = "/rest/"

#: (HTTP status, JSON-serialisable body, extra headers)
Reply = tuple[int, Any, dict[str, str]]
StartResponse = Callable[..., Any]


class RequestCounter:
    """How many requests each path got; thread-safe. ``counter[path]`` and ``counter.total``."""

    def __init__(self, known_paths: Iterable[str]) -> None:
        # Unknown paths share one bucket, so a scanner cannot grow this without bound.
        self._known = frozenset(known_paths)
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, path: str) -> None:
        key = path if path in self._known else "other"
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def __getitem__(self, path: str) -> int:
        return self._counts.get(path, 0)

    @property
    def total(self) -> int:
        return sum(self.as_dict().values())

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def __repr__(self) -> str:
        return f"RequestCounter({self.as_dict()!r})"


class CollectorApp(FaultInjection):
    """The WSGI callable; keeps the store, the request counters and the fault script.

    Fault injection (:meth:`script`, :meth:`fail_all`, :meth:`clear_faults`) comes from
    :class:`~callhome.collector.faults.FaultInjection`.
    """

    def __init__(self, store: Store, api_keys: Iterable[str] = (), max_body: int = DEFAULT_MAX_BODY,
                 strict: bool = True, fill_ip_addr: bool = False, report_keys: Iterable[str] = (), *,
                 relay: Relay | None = None, trust_proxy: int = 0,
                 report_users: Iterable[tuple[str, str]] = ()) -> None:
        if max_body < 1:
            raise ValueError("max_body must be positive")
        super().__init__()
        self.store = store
        self.api_keys = tuple(api_keys)
        self._keys = _encoded(self.api_keys)
        self._report_keys = _encoded(report_keys)
        if set(self._keys) & set(self._report_keys):
            # Ingest keys ship inside products; one that also read reports would leak the usage data.
            raise ValueError("a report key must not also be an ingest (api) key")
        self.max_body = max_body
        self.strict = strict
        self.fill_ip_addr = fill_ip_addr
        #: a :class:`~callhome.collector.relay.Relay` forwarding new records upstream, or None
        self.relay = relay
        self.trust_proxy = max(int(trust_proxy), 0)
        #: the Revenera-style Reporting API under /v3/ (cookie sessions of ``report_users``)
        self.revenera = revenera.Reporting(store, report_users, max_body, self.api_keys)
        self._views = {"/events": self._events_view, "/stats": self._stats_view,
                       "/healthz": self._health_view, "/": self._dashboard_view,
                       "/dashboard": self._dashboard_view}
        self.requests = RequestCounter([*_INGEST, *self._views, REPORT_PATH])

    def __repr__(self) -> str:
        return (f"<CollectorApp store={self.store!r} keys={len(self._keys)} "
                f"report_keys={len(self._report_keys)} strict={self.strict} "
                f"fill_ip_addr={self.fill_ip_addr}>")

    @property
    def received(self) -> int:
        """How many distinct records the store holds."""
        return self.store.count()

    def _apply_fault(self, fault: Fault, path: str) -> Reply | None:
        self.store.bump("faults")
        logger.debug("injecting fault %r on %s", fault, path)
        if fault.kind == "reset":
            raise AbortConnection(path)
        if fault.kind == "hang":
            time.sleep(fault.seconds)
            return None
        if fault.kind == "auth":
            return 400, AUTH_FAILURE, {}
        body = fault.body
        if body is None:
            body = _failure_body(fault.status, f"{_status_line(fault.status)[4:]} (injected fault)")
        return fault.status, body, dict(fault.headers)

    # -- WSGI -------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        path = environ.get("PATH_INFO") or "/"
        self.requests.add(path)
        status, body, headers = self._route(environ, path)
        # bytes are a ready page (the dashboard, with its own Content-Type); anything else is JSON.
        data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", **headers}
        start_response(_status_line(status), [("Content-Length", str(len(data))), *headers.items()])
        return [data]

    def _route(self, environ: dict[str, Any], path: str) -> Reply:
        method = environ.get("REQUEST_METHOD", "GET")
        if path in _INGEST:
            return self._ingest(environ, _INGEST[path]) if method == "POST" else _not_allowed("POST")
        if path == REPORT_PATH or path.startswith(_REST_PREFIX):
            return self._report(environ, path, method)
        if path.startswith(revenera.PREFIX):
            return self.revenera.handle(environ, path, method)
        view = self._views.get(path)
        if view is None:
            return _failure(404, f"No such endpoint: {path}")
        return view(environ) if method in ("GET", "HEAD") else _not_allowed("GET, HEAD")

    def _ingest(self, environ: dict[str, Any], kind: str) -> Reply:
        self.store.bump("requests")
        fault = self.next_fault()
        reply = None if fault is None else self._apply_fault(fault, environ.get("PATH_INFO", ""))
        if reply is not None:
            return reply
        if not self._authorized(environ):
            self.store.bump("auth_failures")
            return 400, AUTH_FAILURE, {}
        payload, problem = self._read_payload(environ)
        errors = [] if problem else schema.validate(payload, kind)
        if problem or errors:
            self.store.bump("rejected")
            return problem or _invalid(errors)
        if self.relay is not None and not self._stored(kind, payload):
            # Queued upstream before it is stored: a crash between the two then means a retry that
            # is forwarded again (same event_id), never a stored record that never went upstream.
            if not self.relay.submit(kind, payload):
                status, body, _ = _failure(503, "The relay cannot queue records now; retry later")
                return status, body, {"Retry-After": "60"}
        self.store.add(kind, payload, peer=environ.get("REMOTE_ADDR"))
        return 200, SUCCESS, {}

    def _stored(self, kind: str, payload: dict[str, Any]) -> bool:
        rows = self.store.query("SELECT 1 FROM events WHERE kind = ? AND event_id = ?",
                                (kind, str(payload["event_id"])))
        return bool(rows)

    def _authorized(self, environ: dict[str, Any]) -> bool:
        if not self._keys:
            return True
        return _matches(environ.get("HTTP_X_API_KEY", ""), self._keys)

    # -- PowerAuth-compatible reports -------------------------------------------------------

    def _report(self, environ: dict[str, Any], path: str, method: str) -> Reply:
        if path != REPORT_PATH:
            return _rest_error(404, "ERROR_NOT_FOUND", f"No such endpoint: {path}")
        if method != "POST":
            status, body, _ = _rest_error(405, "ERROR_HTTP_REQUEST", "Method Not Allowed")
            return status, body, {"Allow": "POST"}
        # No report key configured means nobody may read: usage data is never open by default.
        scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").strip().partition(" ")
        if not (self._report_keys and scheme.lower() == "bearer"
                and _matches(token.strip(), self._report_keys)):
            return _rest_error(401, "ERROR_UNAUTHORIZED", "Authentication failed: a report key is required "
                                                          "(Authorization: Bearer KEY)")
        body = read_body(environ, self.max_body)
        if body is None:
            return _rest_error(413, "ERROR_HTTP_REQUEST", f"Body larger than {self.max_body} bytes")
        status, envelope = reports.handle(body, reports.store_source(self.store))
        return status, envelope, {}

    def _read_payload(self, environ: dict[str, Any]) -> tuple[Any, Reply | None]:
        media_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            return None, _failure(415, "Content-Type must be application/json")
        body = read_body(environ, self.max_body)
        if body is None:
            return None, _failure(413, f"Body larger than {self.max_body} bytes")
        try:
            document = json.loads(body, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError too
            return None, _failure(400, f"Malformed JSON body: {exc}")
        if not isinstance(document, dict) or "payload" not in document:
            return None, _failure(400, 'Body must be a JSON object {"payload": {...}}')
        try:  # "\ud800" escapes parse into strings no UTF-8 store can hold
            json.dumps(document, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return None, _failure(400, "Strings must be valid Unicode (a lone surrogate was sent)")
        return self._normalise(document["payload"], self._client_address(environ)), None

    def _client_address(self, environ: dict[str, Any]) -> str | None:
        address = client_address(environ, self.trust_proxy)
        # Upstream, Reo maps ip_addr to a company: a private or loopback address would mislead it.
        return public_address(address) if self.relay is not None else address

    def _normalise(self, payload: Any, peer: str | None) -> Any:
        if not self.strict:
            payload = _lenient(payload)
        if self.fill_ip_addr and isinstance(payload, dict) and peer and not (
                payload.get("ip_addr") or payload.get("domain")):
            # What an agent with relay=True expects: the address its connection came from.
            payload = {**payload, "ip_addr": peer}
        return payload

    # -- read-only views --------------------------------------------------------------------

    def _events_view(self, environ: dict[str, Any]) -> Reply:
        if not self._authorized(environ):
            return _failure(401, "Authentication Failure")
        params = {key: values[-1] for key, values in parse_qs(environ.get("QUERY_STRING", "")).items()}
        try:
            limit = min(int(params.get("limit", 100)), MAX_EVENTS_LIMIT)
            since = float(params["since"]) if "since" in params else None
        except ValueError:
            return _failure(400, "limit must be an integer and since a number (UNIX seconds)")
        kind = params.get("kind")
        if kind is not None and kind not in KINDS:
            return _failure(400, f"kind must be one of {', '.join(KINDS)}")
        events = self.store.events(limit=max(limit, 0), product_id=params.get("product_id"),
                                   activity_type=params.get("activity_type"), kind=kind, since=since)
        return 200, {"events": events}, {}

    def _stats_view(self, environ: dict[str, Any]) -> Reply:
        if not self._authorized(environ):
            return _failure(401, "Authentication Failure")
        relay = {"relay": self.relay.status()} if self.relay is not None else {}
        return 200, {**self.store.stats(), "paths": self.requests.as_dict(), **relay}, {}

    def _health_view(self, environ: dict[str, Any]) -> Reply:
        return 200, {"status": "ok"}, {}

    def _dashboard_view(self, environ: dict[str, Any]) -> Reply:
        # A read view like the reports: their key when one is configured, else the ingest key as
        # for /events; also as ?key=, which is all a browser's address bar can send.
        keys = self._report_keys or self._keys
        if keys and not _matches(dashboard.request_key(environ), keys):
            return 401, dashboard.unauthorized_page(), dict(dashboard.HEADERS)
        return 200, dashboard.render_page(self.store, time.time()), dict(dashboard.HEADERS)


def make_app(store: Store | str, api_keys: Iterable[str] = (), max_body: int = DEFAULT_MAX_BODY,
             strict: bool = True, fill_ip_addr: bool = False, report_keys: Iterable[str] = (), *,
             relay_to: str | None = None, upstream_key: str | None = None, relay_dir: str | None = None,
             trust_proxy: int = 0, report_users: Iterable[tuple[str, str]] = ()) -> CollectorApp:
    """The collector as a WSGI application; ``store`` is a :class:`Store` or a database path.

    :param api_keys: accepted ``X-API-KEY`` values; empty accepts any request.
    :param max_body: larger request bodies are refused with 413.
    :param strict: ``False`` also accepts what Reo's own samples send (``""`` placeholders,
        integer ``event_id``, string ``event_at``, no ``event_id``) by normalising it first.
    :param fill_ip_addr: a record with neither ``ip_addr`` nor ``domain`` gets the connection's
        address as ``ip_addr`` (for agents configured with ``relay=True``).
    :param report_keys: accepted ``Authorization: Bearer`` keys of ``POST /rest/v3/telemetry/report``;
        empty refuses every report request (401). Must not overlap ``api_keys``.
    :param relay_to: also forward each new record to this upstream (see :mod:`callhome.collector.relay`),
        with ``upstream_key``, through a queue in ``relay_dir`` (default: ``<database>.relay``).
    :param trust_proxy: how many proxies in front of the collector append to ``X-Forwarded-For``;
        the client address (``fill_ip_addr``) is then read from there instead of the TCP peer.
    :param report_users: ``(name, password)`` pairs who may log in to the Revenera-style Reporting
        API under ``/v3/`` (see :mod:`callhome.collector.revenera`); none refuses every report (401).
    """
    store = Store(store) if isinstance(store, str) else store
    app = CollectorApp(store, api_keys, max_body, strict, fill_ip_addr, report_keys, trust_proxy=trust_proxy,
                       report_users=report_users)
    if relay_to:  # last: the relay starts a thread, which nothing would stop if the app were refused
        app.relay = _relay(store, app.api_keys, relay_to, upstream_key, relay_dir)
    return app


def _relay(store: Store, api_keys: Iterable[str], relay_to: str, upstream_key: str | None,
           relay_dir: str | None) -> Relay:
    if not upstream_key:
        raise ValueError("a relay needs the upstream key (--upstream-key-file)")
    if upstream_key in set(api_keys):
        # Agent-facing keys ship inside products; the upstream key must not leak with them.
        raise ValueError("the upstream key must not also be an agent-facing (api) key")
    return Relay(relay_to, upstream_key, relay_dir or default_dir(store.path))


def _encoded(keys: Iterable[str]) -> tuple[bytes, ...]:
    return tuple(key.encode("utf-8") for key in keys if key)


def _matches(given: str, keys: tuple[bytes, ...]) -> bool:
    """Whether ``given`` is one of ``keys``, in time independent of which one (or how much) matched."""
    # WSGI hands header values over as latin-1 decoded strings: this recovers the raw bytes.
    raw = given.encode("latin-1", "replace")
    matched = False
    for key in keys:  # no early exit
        matched |= hmac.compare_digest(raw, key)
    return matched


def _rest_error(status: int, code: str, message: str) -> Reply:
    return status, reports.error_envelope(code, message), {}


def _lenient(payload: Any) -> Any:
    """Normalise what Reo's own samples send into what :func:`schema.validate` accepts."""
    if not isinstance(payload, dict):
        return payload
    fixed = {key: value for key, value in payload.items() if value != ""}
    event_id, event_at = fixed.get("event_id"), fixed.get("event_at")
    if isinstance(event_id, int) and not isinstance(event_id, bool):
        fixed["event_id"] = str(event_id)
    if isinstance(event_at, str) and event_at.isascii() and event_at.isdigit():
        fixed["event_at"] = int(event_at)
    # The aggregate docs call event_id optional; such records get a fresh id, so no deduplication.
    fixed.setdefault("event_id", uuid.uuid4().hex)
    return fixed


def _no_constant(name: str) -> Any:
    # NaN and Infinity are Python's extensions, not JSON: stored, they would make /events invalid.
    raise ValueError(f"{name} is not JSON")


def _invalid(errors: list[schema.FieldError]) -> Reply:
    body = _failure_body(400, f"Invalid payload: {errors[0]}")
    body["errors"] = [error.as_dict() for error in errors]
    return 400, body, {}


def _not_allowed(allow: str) -> Reply:
    status, body, _ = _failure(405, "Method Not Allowed")
    return status, body, {"Allow": allow}


def _failure(status: int, message: str) -> Reply:
    return status, _failure_body(status, message), {}


def _failure_body(status: int, message: str) -> dict[str, Any]:
    return {"response_code": status, "response": message, "status": "failure"}


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"
