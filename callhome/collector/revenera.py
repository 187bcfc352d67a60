"""The collector's subset of Revenera Usage Intelligence's Reporting API v3: everything under ``/v3/``.

Paths, request bodies and the ``{"result": ...}`` answers follow Revenera's documentation (seed 002);
``docs/reports.md`` lists what this collector supports and how each number is defined. This module
is the HTTP side: routing, cookie sessions, body validation and answers. The numbers come from
:mod:`callhome.collector.usage`. Standard library only.

Authentication is Revenera's: ``POST /v3/auth/web`` with a report user's name and password sets
the ``RUI-Session-Token`` cookie, which every report needs; ``POST /v3/auth/logout`` ends the
session. No ingest or report key opens ``/v3/``: ingest keys ship inside products, and a bearer
key is simply not what this API reads. Without a configured report user every report answers 401.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from callhome.collector import usage
from callhome.collector._wsgi import read_body

if TYPE_CHECKING:
    from callhome.collector.store import Store

__all__ = ["COOKIE", "DOWNLOAD_TTL", "PREFIX", "Reporting", "Sessions", "parse_report_user"]

PREFIX = "/v3/"
COOKIE = "RUI-Session-Token"
SESSION_IDLE = 8 * 60 * 60  # an unused session dies after this many seconds
MAX_SESSIONS = 1000  # past this many, the least recently used session is dropped
DOWNLOAD_TTL = 10 * 60  # seconds a raw-export download URL stays valid
MAX_RANGE_DAYS = 3660
DEFAULT_LOST_DAYS = 30
DEFAULT_LINES, MAX_LINES = 10, 1000
DEFAULT_PAGE, MAX_PAGE = 100, 1000
#: Revenera's login sample answers ``beatInterval: 302``; the collector ignores beats.
BEAT_INTERVAL = 302
DIVISORS = ("users", "sessions", "runtime")

Reply = tuple[int, Any, dict[str, str]]
_Default = TypeVar("_Default")

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_EXPORT = re.compile(r"(\d{4}-\d{2}-\d{2})\.zip")
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")
_FILE_PATH = "rawEvents/download/file/"
_EPOCH = dt.date(1970, 1, 1)
#: Paths without a session: logging in, out, Revenera's CSRF preamble. (method, handler)
_OPEN = {"auth/web": ("POST", "_login"), "auth/logout": ("POST", "_logout"),
         "request-csrf": ("GET", "_csrf")}
#: Report path prefixes, each followed by ``{product_id}``. (method, handler)
_REPORTS = {
    "reporting/eventTracking/basic/dataTable/": ("POST", "_data_table"),
    "reporting/eventTracking/basic/timeline/": ("POST", "_timeline"),
    "reporting/engagement/usageDistribution/": ("POST", "_usage_distribution"),
    "reporting/generic/dateRange/": ("POST", "_date_range"),
    "customEventTracking/getLastLines/": ("POST", "_custom_last_lines"),
    "exceptionTracking/getLastLines/": ("POST", "_exception_last_lines"),
    "rawEvents/download/listFiles/": ("GET", "_list_files"),
    "rawEvents/download/getDownloadUrl/": ("POST", "_download_url"),
    "reporting/clientPropertyList/": ("POST", "_client_property_list"),
}
#: Revenera options that would change the numbers and that this collector does not implement:
#: refused (400) rather than silently ignored, so no report is ever quietly wrong.
_UNSUPPORTED = ("globalFilters", "levels", "segmentBy", "segments", "retDailyData")


class ApiError(Exception):
    """An answer other than 200: HTTP ``status`` and a message for ``{"error": ...}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})


def parse_report_user(text: str) -> tuple[str, str]:
    """``NAME:PASSWORD`` (the password may contain ``:``) as ``(name, password)``; ValueError otherwise."""
    name, colon, password = text.partition(":")
    if not colon or not name or not password:
        raise ValueError("a report user is NAME:PASSWORD, both non-empty")
    return name, password


class Sessions:
    """Logged-in sessions in memory: token -> user; idle expiry, bounded count; thread-safe.

    "Now" is ``time.time()`` read at each call, so a frozen clock in tests applies.
    """

    def __init__(self, idle: float = SESSION_IDLE, limit: int = MAX_SESSIONS) -> None:
        self.idle, self.limit = idle, limit
        self._tokens: OrderedDict[str, tuple[str, float]] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._tokens)

    def open(self, user: str) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = (user, time.time())
            while len(self._tokens) > self.limit:
                self._tokens.popitem(last=False)
        return token

    def user(self, token: str) -> str | None:
        """The session's user (and the session is used now), or None if unknown or idle too long."""
        now = time.time()
        with self._lock:
            found = self._tokens.get(token)
            if found is None:
                return None
            if now - found[1] > self.idle:
                del self._tokens[token]
                return None
            self._tokens[token] = (found[0], now)
            self._tokens.move_to_end(token)
            return found[0]

    def close(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)


class Reporting:
    """The ``/v3/`` API over a :class:`~callhome.collector.store.Store`: :meth:`handle` answers a request.

    :param users: ``(name, password)`` pairs allowed to log in; none means every report is 401.
    :param max_body: larger request bodies are refused with 413.
    :param api_keys: the collector's ingest keys: a report password equal to one is refused
        (ValueError), since ingest keys ship inside products.
    """

    def __init__(self, store: Store, users: Iterable[tuple[str, str]] = (), max_body: int = 64 * 1024,
                 api_keys: Iterable[str] = ()) -> None:
        self.store = store
        self.max_body = max_body
        self._users = tuple((name.encode("utf-8"), password.encode("utf-8")) for name, password in users)
        if {password for _, password in self._users} & {key.encode("utf-8") for key in api_keys}:
            raise ValueError("a report user's password must not also be an ingest (api) key")
        self.sessions = Sessions()
        self._secret = secrets.token_bytes(32)  # signs download URLs; new per process, like the sessions

    def __repr__(self) -> str:
        return f"<Reporting users={len(self._users)} sessions={len(self.sessions)}>"

    # -- routing -----------------------------------------------------------------------------------
    def handle(self, environ: dict[str, Any], path: str, method: str) -> Reply:
        """The answer to a request for ``path`` (which starts with ``/v3/``)."""
        try:
            status, body, headers = self._dispatch(environ, _utf8(path)[len(PREFIX):], method)
        except ApiError as exc:
            status, body, headers = exc.status, {"error": exc.message}, exc.headers
        # Every answer here is usage data or a session: no cache may keep it.
        return status, body, {"Cache-Control": "no-store", **headers}

    def _dispatch(self, environ: dict[str, Any], rest: str, method: str) -> Reply:
        if rest in _OPEN:
            allowed, handler = _OPEN[rest]
            _check_method(method, allowed)
            reply: Reply = getattr(self, handler)(environ)
            return reply
        if rest.startswith(_FILE_PATH):
            _check_method(method, "GET")
            return self._download(rest[len(_FILE_PATH):])  # the signed URL is the credential
        for prefix, (allowed, handler) in _REPORTS.items():
            if rest.startswith(prefix) and len(rest) > len(prefix):
                _check_method(method, allowed)
                self._require_session(environ)  # before reading anything the caller sent
                body = self._body(environ) if allowed == "POST" else {}
                reply = getattr(self, handler)(rest[len(prefix):], body, environ)
                return reply
        raise ApiError(404, f"No such endpoint: {PREFIX}{rest}")

    def _require_session(self, environ: dict[str, Any]) -> str:
        token = _cookie(environ, COOKIE)
        user = self.sessions.user(token) if token else None
        if user is None:
            raise ApiError(401, "Not authenticated: log in with POST /v3/auth/web first")
        return user

    def _body(self, environ: dict[str, Any]) -> dict[str, Any]:
        """The JSON object the request carries; ``{}`` for an empty body."""
        data = read_body(environ, self.max_body)
        if data is None:
            raise ApiError(413, f"Body larger than {self.max_body} bytes")
        if not data.strip():
            return {}
        try:
            document = json.loads(data, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError too
            raise ApiError(400, f"Malformed JSON body: {exc}") from None
        if not isinstance(document, dict):
            raise ApiError(400, "The body must be a JSON object")
        return document

    # -- authentication ----------------------------------------------------------------------------
    def _login(self, environ: dict[str, Any]) -> Reply:
        body = self._body(environ)
        name, password = body.get("userName"), body.get("password")
        if not isinstance(name, str) or not isinstance(password, str):
            raise ApiError(400, "userName and password are required strings")
        user = self._check_password(name, password)
        if user is None:
            raise ApiError(401, "Wrong user name or password")
        cookie = f"{COOKIE}={self.sessions.open(user)}; Path=/v3; HttpOnly; SameSite=Strict"
        if environ.get("wsgi.url_scheme") == "https":
            cookie += "; Secure"
        return 200, self._account(user), {"Set-Cookie": cookie}

    def _check_password(self, name: str, password: str) -> str | None:
        """The user whose name and password both match, compared in time independent of which one."""
        given = (name.encode("utf-8"), password.encode("utf-8"))
        found = None
        for user, secret in self._users:  # no early exit: every user is compared
            match = hmac.compare_digest(user, given[0]) & hmac.compare_digest(secret, given[1])
            if match and found is None:
                found = user.decode("utf-8")
        return found

    def _account(self, user: str) -> dict[str, Any]:
        """The login answer, shaped as Revenera's sample; ``products`` are the store's product ids."""
        products = {product: {"productId": product, "productName": product}
                    for product in usage.read_products(self.store)}
        current = next(iter(products.values()), {})
        return {"account": {"userName": user}, "freeware": {}, "products": products, "userSettings": {},
                "currentProductDetails": current, "beatInterval": BEAT_INTERVAL}

    def _logout(self, environ: dict[str, Any]) -> Reply:
        token = _cookie(environ, COOKIE)
        if token:
            self.sessions.close(token)
        # 204 whether or not the session existed: logging out twice is not an error.
        return 204, b"", {"Set-Cookie": f"{COOKIE}=; Path=/v3; Max-Age=0; HttpOnly; SameSite=Strict"}

    def _csrf(self, environ: dict[str, Any]) -> Reply:
        # Revenera's clients fetch a CSRF cookie first; SameSite=Strict does that job here.
        return 204, b"", {}

    # -- reports -----------------------------------------------------------------------------------
    def _date_range(self, product: str, body: dict[str, Any], environ: dict[str, Any]) -> Reply:
        buckets = usage.Buckets(*_dates(body), _choice(body, "dateSplit", usage.SPLITS, "day"))
        statuses = _statuses(body)
        if body.get("groupBy", "clientId") not in (None, "clientId"):
            raise ApiError(400, "groupBy: only clientId is supported")
        lost_after = _integer(body, "daysUntilDeclaredLost", DEFAULT_LOST_DAYS, 1, MAX_RANGE_DAYS)
        reported = _choice(body, "dateReportedLost", usage.LOST_REPORTED, "dateDeclaredLost")
        mode = _choice(body, "resultMode", ("absolute", "percentOfActive"), "absolute")
        _refuse_unsupported(body)
        since, until = buckets.seconds
        counts: dict[str, list[Any]] = usage.date_range(
            usage.read_activity(self.store, product, since, until), usage.read_spans(self.store, product),
            buckets, usage.day_of(time.time()), lost_after, reported)
        if mode == "percentOfActive":
            counts = usage.percent_of_active(counts)
        return _result({"dates": buckets.labels, **{status: counts[status] for status in statuses}})

    def _usage_distribution(self, product: str, body: dict[str, Any], environ: dict[str, Any]) -> Reply:
        since, until = _seconds(body)
        _refuse_unsupported(body)
        return _result(usage.usage_distribution(usage.read_activity(self.store, product, since, until),
                                                usage.read_sessions(self.store, product, since, until)))

    def _data_table(self, product: str, body: dict[str, Any], environ: dict[str, Any]) -> Reply:
        since, until = _seconds(body)
        wanted = _events(body)
        _refuse_unsupported(body)
        events = usage.read_events(self.store, product, since, until)
        return _result(usage.event_table(events, None if wanted is None else set(wanted)))

    def _timeline(self, product: str, body: dict[str, Any], environ: dict[str, Any]) -> Reply:
        buckets = usage.Buckets(*_dates(body), _choice(body, "dateSplit", usage.SPLITS, "day"))
        _choice(body, "dataView", ("usageCounts",), "usageCounts")
        divisor = _choice(body, "divisor", DIVISORS, None)
        wanted = _events(body)
        _refuse_unsupported(body)
        since, until = buckets.seconds
        events = usage.read_events(self.store, product, since, until)
        activity = usage.read_activity(self.store, product, since, until) if divisor == "users" else ()
        sessions = usage.read_sessions(self.store, product, since, until) if divisor in DIVISORS[1:] else ()
        keys = usage.event_keys(events) if wanted is None else wanted
        return _result(usage.timeline(events, keys, buckets, divisor, activity, sessions))

    def _custom_last_lines(self, product: str, body: dict[str, Any], environ: dict[str, Any]) -> Reply:
        count = _integer(body, "lineCount", DEFAULT_LINES, 1, MAX_LINES)
        lines = usage.read_last(self.store, product, None, count)
        metas = usage.read_client_metas(self.store, product, usage.line_clients(lines))
        return 200, usage.last_lines(lines, known=usage.latest_values(metas, usage.LINE_PROPERTIES)), {}

    def _exception_last_lines(self, product: str, body: dict[str, Any], environ: dict[str, Any]) -> Reply:
        count = _integer(body, "lineCount", DEFAULT_LINES, 1, MAX_LINES)
        return 200, usage.last_lines(usage.read_last(self.store, product, "exception", count), True), {}

    def _client_property_list(self, product: str, body: dict[str, Any], environ: dict[str, Any]) -> Reply:
        names = _property_names(body)
        size = _integer(body, "pageSize", DEFAULT_PAGE, 1, MAX_PAGE)
        after = body.get("nextClientId")
        if after is not None and not isinstance(after, str):
            raise ApiError(400, "nextClientId must be a string (the last clientId of the previous page)")
        _refuse_unsupported(body)
        # One client more than the page: whether there is a next page.
        clients = usage.read_clients(self.store, product, after or "", size + 1)
        page, more = clients[:size], len(clients) > size
        metas = usage.read_client_metas(self.store, product, [span.client for span in page])
        return 200, {"result": usage.client_properties(page, metas, names),
                     "nextClientId": page[-1].client if more else None, "reachedEnd": not more}, {}

    # -- raw data export ---------------------------------------------------------------------------
    def _list_files(self, product: str, body: dict[str, Any], environ: dict[str, Any]) -> Reply:
        today = usage.day_of(time.time())
        files = [{"fileName": _file_name(product, day), "date": usage.iso_day(day), "open": day >= today}
                 for day in usage.read_days(self.store, product)]
        return 200, {"fileList": files}, {}

    def _download_url(self, product: str, body: dict[str, Any], environ: dict[str, Any]) -> Reply:
        name = body.get("fileName")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "fileName is required (a name from listFiles)")
        day = _export_day(product, name)
        if day is None or day not in usage.read_days(self.store, product):
            raise ApiError(404, f"No such file: {name}")
        expires = int(time.time()) + DOWNLOAD_TTL
        url = f"{_base_url(environ)}{PREFIX}{_FILE_PATH}{self._sign(product, name, expires)}"
        return 200, {"url": url, "expiresAt": usage.iso_time(expires)}, {}

    def _download(self, token: str) -> Reply:
        product, name = self._verify(token)
        day = _export_day(product, name)
        rows = usage.read_day(self.store, product, day) if day is not None else []
        if day is None or not rows:
            raise ApiError(404, f"No such file: {name}")
        data = usage.export_zip(rows, name[:-len(".zip")] + ".csv", day)
        return 200, data, {"Content-Type": "application/zip",
                           "Content-Disposition": f'attachment; filename="{_safe_name(name)}"'}

    def _sign(self, product: str, name: str, expires: int) -> str:
        """A capability naming one file until ``expires``: payload and its HMAC, both base64url."""
        payload = _b64(json.dumps([product, name, expires], separators=(",", ":")).encode("utf-8"))
        return f"{payload}.{self._mac(payload)}"

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode("utf-8"), hashlib.sha256).digest())

    def _verify(self, token: str) -> tuple[str, str]:
        payload, _, mac = token.partition(".")
        invalid = ApiError(403, "This download URL is invalid or has expired: "
                                "ask getDownloadUrl for a new one")
        if not hmac.compare_digest(mac.encode("utf-8"), self._mac(payload).encode("utf-8")):
            raise invalid
        try:
            product, name, expires = json.loads(_unb64(payload))
        except (ValueError, TypeError):  # cannot happen for a token we signed; be safe anyway
            raise invalid from None
        if not isinstance(expires, int) or expires < time.time():
            raise invalid
        return str(product), str(name)


# -- request helpers -------------------------------------------------------------------------------
def _check_method(method: str, allowed: str) -> None:
    if method != allowed:
        raise ApiError(405, "Method Not Allowed", {"Allow": allowed})


def _result(result: Any) -> Reply:
    return 200, {"result": result}, {}


def _utf8(path: str) -> str:
    """PATH_INFO is the raw path decoded as latin-1 (PEP 3333): recover UTF-8 product ids."""
    try:
        return path.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return path


def _cookie(environ: dict[str, Any], name: str) -> str | None:
    # By hand, not http.cookies: SimpleCookie drops every cookie when one of them is malformed.
    for part in re.split(r"[;,]", environ.get("HTTP_COOKIE", "")):
        key, equals, value = part.strip().partition("=")
        if equals and key == name:
            return value.strip().strip('"') or None
    return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _base_url(environ: dict[str, Any]) -> str:
    """``scheme://host[:port][script name]`` the client used (Host header, else SERVER_NAME)."""
    scheme = environ.get("wsgi.url_scheme", "http")
    host = environ.get("HTTP_HOST", "")
    if not _HOST.fullmatch(host):  # absent or odd: the address the server listens on
        host = environ.get("SERVER_NAME", "localhost")
        host = f"[{host}]" if ":" in host else host
        port = environ.get("SERVER_PORT", "")
        if port and port != {"http": "80", "https": "443"}.get(scheme):
            host = f"{host}:{port}"
    return f"{scheme}://{host}{quote(environ.get('SCRIPT_NAME', ''))}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- body validation -------------------------------------------------------------------------------
def _dates(body: dict[str, Any]) -> tuple[int, int]:
    """``startDate`` and ``stopDate`` (inclusive) as epoch days."""
    first, last = _date(body, "startDate"), _date(body, "stopDate")
    if last < first:
        raise ApiError(400, "stopDate must not be before startDate")
    if last - first + 1 > MAX_RANGE_DAYS:
        raise ApiError(400, f"The date range must be at most {MAX_RANGE_DAYS} days")
    return first, last


def _seconds(body: dict[str, Any]) -> tuple[int, int]:
    """The date range as inclusive UNIX seconds."""
    first, last = _dates(body)
    return first * usage.DAY, (last + 1) * usage.DAY - 1


def _date(body: dict[str, Any], key: str) -> int:
    value = body.get(key)
    problem = ApiError(400, f"{key} is required, a date YYYY-MM-DD (UTC)")
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        raise problem
    try:
        return (dt.date.fromisoformat(value) - _EPOCH).days
    except ValueError:  # e.g. 2024-02-30
        raise problem from None


def _choice(body: dict[str, Any], key: str, allowed: Sequence[str], default: _Default) -> str | _Default:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, str) or value not in allowed:
        raise ApiError(400, f"{key} must be one of: {', '.join(allowed)}")
    return value


def _integer(body: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, f"{key} must be an integer from {low} to {high}")
    return value


def _statuses(body: dict[str, Any]) -> list[str]:
    """``clientStatus`` in the answer's order (new, active, lost); all three by default."""
    order = ("new", "active", "lost")
    value = body.get("clientStatus")
    if value is None:
        return list(order)
    if not isinstance(value, list) or not value or not all(isinstance(s, str) and s in order for s in value):
        raise ApiError(400, "clientStatus must be a non-empty list of: new, active, lost")
    return [status for status in order if status in value]


def _events(body: dict[str, Any]) -> list[tuple[str, str]] | None:
    """The ``events`` filter as ``(category, name)`` keys; None (every event) when absent."""
    value = body.get("events")
    if value is None:
        return None
    problem = ApiError(400, 'events must be a list of {"category": ..., "name": ...} objects')
    if not isinstance(value, list):
        raise problem
    keys: list[tuple[str, str]] = []
    for item in value:
        if not isinstance(item, dict):
            raise problem
        category, name = item.get("category"), item.get("name")
        if not isinstance(name, str) or not name.strip() or not isinstance(category, (str, type(None))):
            raise problem
        # The agent conditions names this way before sending: a filter written by hand matches too.
        key = (" ".join((category or "").split()), " ".join(name.split()))
        if key not in keys:
            keys.append(key)
    return keys


def _property_names(body: dict[str, Any]) -> list[str]:
    value = body.get("properties")
    if value is None:
        return list(usage.CLIENT_PROPERTIES)
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ApiError(400, "properties must be a list of property names")
    unknown = [name for name in value if name not in usage.CLIENT_PROPERTIES]
    if unknown:
        raise ApiError(400, f"Unknown properties: {', '.join(unknown)} (see docs/reports.md)")
    return list(dict.fromkeys(value))


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for key in _UNSUPPORTED:
        if body.get(key) not in (None, {}, [], ""):
            raise ApiError(400, f"{key} is not supported by this collector")


# -- export file names -----------------------------------------------------------------------------
def _file_name(product: str, day: int) -> str:
    return f"{product}_{usage.iso_day(day)}.zip"


def _export_day(product: str, name: str) -> int | None:
    """The epoch day a ``<product>_<YYYY-MM-DD>.zip`` name stands for, or None."""
    prefix = f"{product}_"
    match = _EXPORT.fullmatch(name[len(prefix):]) if name.startswith(prefix) else None
    if match is None:
        return None
    try:
        return (dt.date.fromisoformat(match.group(1)) - _EPOCH).days
    except ValueError:
        return None


def _safe_name(name: str) -> str:
    # A product id may hold any character; a header value may not.
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)
