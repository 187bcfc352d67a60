"""One HTTP request per record, and what its answer means (``classify``).

Two transports with one interface: :class:`ClientTransport` (``http.client``, one keep-alive
connection) where no proxy applies, which costs the sender about a fifth
of the CPU per record of :class:`HttpTransport` (``requests``, which honours proxies and CA
bundles from the environment); :func:`open_transport` picks. Both run in the sender only.
"""

from __future__ import annotations

import json
import os
import time

from .._version import __version__
from ..backoff import parse_retry_after
from ..schema import AGGREGATE_PATH, USAGE_PATH

__all__ = ["AUTH", "OK", "REJECTED", "RETRY", "ClientTransport", "HttpTransport", "SendResult", "classify",
           "open_transport", "preload"]

OK = "ok"                #: delivered
AUTH = "auth"            #: the key was refused: pause sending, keep the queue
REJECTED = "rejected"    #: the server will never take this record: dead-letter it
RETRY = "retry"          #: try again later (network, 408, 429, 5xx, misconfigured endpoint)

_PATHS = {"usage": USAGE_PATH, "aggregate": AGGREGATE_PATH}
#: Answers that mean "wrong endpoint" rather than "bad record": keep the queue, retry slowly.
_MISCONFIGURED = {301, 302, 303, 307, 308, 404, 405, 501, 505}
MISCONFIGURED_DELAY = 300.0
#: The most of an answer's body that is read: Reo answers with a few dozen bytes.
MAX_BODY = 64 * 1024


class SendResult:
    """What one request came to."""

    __slots__ = ("outcome", "status", "retry_after", "detail")

    def __init__(self, outcome: str, status: int | None = None, retry_after: float | None = None,
                 detail: str = "") -> None:
        self.outcome = outcome
        self.status = status
        self.retry_after = retry_after
        self.detail = detail

    def __repr__(self) -> str:
        return f"SendResult({self.outcome}, status={self.status}, detail={self.detail!r})"


def classify(status: int, body: object, retry_after: str | None = None, now: float | None = None) -> SendResult:
    """Map an HTTP answer to an outcome, following ``docs/architecture.md`` (delivery states).

    Reo signals an authentication failure as ``{"response_code": 400, "response":
    "Authentication Failure", "status": "failure"}`` whatever the HTTP status, and success as
    2xx with ``status: success``; a 2xx whose body says failure is not a delivery.
    """
    now = time.time() if now is None else now
    detail = _detail(body)
    if _is_auth_failure(status, body):
        return SendResult(AUTH, status, None, detail or "authentication failure")
    said_failure = isinstance(body, dict) and str(body.get("status", "success")).lower() != "success"
    if 200 <= status < 300:
        return SendResult(REJECTED if said_failure else OK, status, None, detail)
    if status in (408, 429) or (500 <= status < 600 and status not in _MISCONFIGURED):
        return SendResult(RETRY, status, parse_retry_after(retry_after, now), detail)
    if status in _MISCONFIGURED:
        return SendResult(RETRY, status, MISCONFIGURED_DELAY, detail or "endpoint answered %d" % status)
    return SendResult(REJECTED, status, None, detail)


def _detail(body: object) -> str:
    if isinstance(body, dict):
        return str(body.get("response") or body.get("message") or "")[:300]
    return ""


def _is_auth_failure(status: int, body: object) -> bool:
    if status in (401, 403):
        return True
    text = _detail(body).lower()
    return "authentication" in text or "unauthori" in text or "api key" in text


class HttpTransport:
    """Posts ``{"payload": ...}`` to the endpoint over one keep-alive ``requests.Session``."""

    def __init__(self, endpoint: str, api_key: str | None, timeout: float) -> None:
        import requests

        self._requests = requests
        self.endpoint = endpoint
        self.timeout = (min(3.0, timeout), timeout)
        self.session = _session(requests, endpoint)
        headers = {"Content-Type": "application/json", "User-Agent": f"callhome/{__version__}"}
        if api_key:
            headers["X-API-KEY"] = api_key
        # One prepared request per endpoint, copied per record: preparing a request from
        # scratch costs a quarter of a loopback round trip.
        self._templates = {kind: self.session.prepare_request(requests.Request(
            "POST", endpoint + path, headers=headers, data=b"{}")) for kind, path in _PATHS.items()}
        self._pools: dict = {}

    def url(self, kind: str) -> str:
        return self.endpoint + _PATHS[kind]

    def send(self, kind: str, payload: dict) -> SendResult:
        """POST one record; never raises."""
        body = _ENCODER.encode({"payload": payload}).encode()
        event_id = str(payload.get("event_id", ""))
        pool = self._direct_pool(kind)
        if pool is not None:
            return self._send_direct(pool, kind, body, event_id)
        request = self._templates[kind].copy()
        request.prepare_body(body, None)
        request.headers["Idempotency-Key"] = event_id
        try:
            response = self.session.send(request, timeout=self.timeout, allow_redirects=False,
                                         proxies=self.session.proxies, verify=self.session.verify)
        except self._requests.RequestException as exc:
            return SendResult(RETRY, None, None, _describe(exc))
        return classify(response.status_code, _json(response.content), response.headers.get("Retry-After"))

    def _direct_pool(self, kind: str):
        """The session's own keep-alive connection pool for this endpoint, when no proxy applies.

        Posting through the pool skips the ``Session``/``Response`` machinery that a
        one-record request does not use (cookies, hooks, redirects), about 40 % of the
        client's work per request on loopback. Through a proxy, the session does it all.
        """
        if self.session.proxies:
            return None
        if kind not in self._pools:
            template = self._templates[kind]
            adapter = self.session.get_adapter(template.url)
            if hasattr(adapter, "get_connection_with_tls_context"):  # requests >= 2.32.2
                pool = adapter.get_connection_with_tls_context(template, self.session.verify)
            else:
                pool = adapter.get_connection(template.url)
                adapter.cert_verify(pool, template.url, self.session.verify, None)
            self._pools[kind] = pool
        return self._pools[kind]

    def _send_direct(self, pool, kind: str, body: bytes, event_id: str) -> SendResult:
        import urllib3

        headers = dict(self._templates[kind].headers, **{"Idempotency-Key": event_id,
                                                         "Content-Length": str(len(body))})
        try:
            response = pool.urlopen("POST", self._templates[kind].path_url, body=body, headers=headers,
                                    retries=False, redirect=False, assert_same_host=False,
                                    timeout=urllib3.Timeout(connect=self.timeout[0], read=self.timeout[1]),
                                    preload_content=True)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return SendResult(RETRY, None, None, _describe(exc))
        return classify(response.status, _json(response.data), response.headers.get("Retry-After"))

    def close(self) -> None:
        self.session.close()


def preload(endpoint: str) -> None:
    """Import now what :func:`open_transport` and the first request will import: a thread sender
    runs in the host, which may fork while that thread is importing."""
    import encodings.idna  # noqa: F401  (host names)
    import hashlib  # noqa: F401  (auth.json names the key by a hash)
    import http.client  # noqa: F401

    if endpoint.startswith("https://"):
        _tls_context()
    if _needs_requests(endpoint):
        import requests  # noqa: F401


def open_transport(endpoint: str, api_key: str | None, timeout: float):
    """The cheapest transport that behaves as ``requests`` would for this endpoint and environment."""
    if _needs_requests(endpoint):
        return HttpTransport(endpoint, api_key, timeout)
    return ClientTransport(endpoint, api_key, timeout)


def _needs_requests(endpoint: str) -> bool:
    """A proxy applies to the endpoint: ``requests`` knows how to go through it."""
    import urllib.request

    scheme, _, address = endpoint.partition("://")
    proxies = urllib.request.getproxies()
    host = _host_port(address.partition("/")[0])[0]
    return bool(proxies.get(scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(host)


class ClientTransport:
    """Posts ``{"payload": ...}`` over one keep-alive ``http.client`` connection."""

    def __init__(self, endpoint: str, api_key: str | None, timeout: float) -> None:
        import http.client

        self._http = http.client
        self.endpoint = endpoint
        scheme, _, address = endpoint.partition("://")
        address, _, base = address.partition("/")  # a base path, as requests would keep it
        self._prefix = "/" + base.rstrip("/") if base else ""
        host, port = _host_port(address)
        self._target = (scheme == "https", host, port)
        self.timeout = timeout
        self._headers = {"Content-Type": "application/json", "User-Agent": f"callhome/{__version__}"}
        if api_key:
            self._headers["X-API-KEY"] = api_key
        self._connection = None

    def url(self, kind: str) -> str:
        return self.endpoint + _PATHS[kind]

    def send(self, kind: str, payload: dict) -> SendResult:
        """POST one record; never raises."""
        body = _ENCODER.encode({"payload": payload}).encode()
        headers = dict(self._headers, **{"Idempotency-Key": str(payload.get("event_id", "")),
                                         "Content-Length": str(len(body))})
        reused = self._connection is not None
        try:
            return self._post(self._prefix + _PATHS[kind], body, headers)
        except (self._http.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
            self.close()
            if not reused:
                return SendResult(RETRY, None, None, _describe(exc))
        except (OSError, self._http.HTTPException) as exc:
            self.close()
            return SendResult(RETRY, None, None, _describe(exc))
        # the server closed a kept-alive connection before reading the request: once more, afresh
        try:
            return self._post(self._prefix + _PATHS[kind], body, headers)
        except (OSError, self._http.HTTPException) as exc:
            self.close()
            return SendResult(RETRY, None, None, _describe(exc))

    def _post(self, path: str, body: bytes, headers: dict) -> SendResult:
        connection = self._connection or self._connect()
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        data = response.read(MAX_BODY)
        if response.will_close or not response.isclosed():  # closing, or a body larger than we read
            self.close()
        return classify(response.status, _json(data), response.getheader("Retry-After"))

    def _connect(self):
        https, host, port = self._target
        if https:
            self._connection = self._http.HTTPSConnection(host, port, timeout=self.timeout, context=_tls_context())
        else:
            self._connection = self._http.HTTPConnection(host, port, timeout=self.timeout)
        self._connection.connect()
        import socket

        self._connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._connection

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


def _host_port(address: str) -> tuple:
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    host, _, port = address.partition(":")
    return host, int(port) if port else None


def _tls_context():
    """Verified TLS with the CA bundle ``requests`` would use: ``REQUESTS_CA_BUNDLE`` or
    ``CURL_CA_BUNDLE`` (a file or a directory), else certifi's, else the system's."""
    import ssl

    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        return ssl.create_default_context(**{"capath" if os.path.isdir(bundle) else "cafile": bundle})
    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:
        return ssl.create_default_context()


def _session(requests, endpoint: str):
    """A session that honours the environment's proxies and CA bundle, resolved once.

    ``requests`` re-reads every proxy variable on each request (a scan of ``os.environ``
    that costs more than the request itself on loopback); resolving it once per session
    keeps the same behaviour at a fraction of the cost.
    """
    session = requests.Session()
    session.proxies = requests.utils.get_environ_proxies(endpoint)
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    session.trust_env = False
    return session


_ENCODER = json.JSONEncoder(separators=(",", ":"))  # one encoder: json.dumps(..., separators) builds one per call


def _json(data: bytes) -> object:
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None


def _describe(exc: BaseException) -> str:
    """A one-line reason for a network failure, without the URL's query or any header."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
