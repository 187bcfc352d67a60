"""One HTTP request per record, and what its answer means (``classify``).

Two transports with one interface: :class:`ClientTransport` (``http.client``, one keep-alive
connection) where no proxy applies, which costs the sender about a fifth
of the CPU per record of :class:`HttpTransport` (``requests``, which honours proxies and CA
bundles from the environment); :func:`open_transport` picks. Both run in the sender only.

Both bound what a server can make a request cost: at most :data:`MAX_BODY` of an answer is
read, and a whole request (connect, send, status line, headers, body) ends within its
``timeout`` however the server paces its bytes (:func:`_deadline`).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import io
import json
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..backoff import parse_retry_after
from ..schema import AGGREGATE_PATH, USAGE_PATH

if TYPE_CHECKING:
    import ssl
    from collections.abc import Iterator
    from types import ModuleType

    from requests import Session
    from requests.adapters import HTTPAdapter
    from urllib3 import BaseHTTPResponse
    from urllib3.connectionpool import HTTPConnectionPool

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
#: The most a connection attempt waits (within the request's deadline).
CONNECT_TIMEOUT = 3.0


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
    2xx with ``status: success``; a 2xx whose body says failure is not a delivery, a 2xx without
    a JSON body is one.
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
    """401, 403, or Reo's documented body; nothing else. An auth failure pauses every process of
    the product for an hour, so a message that merely mentions a key (a success note, a rate
    limit "per API key", a proxy's error page) must not count as one."""
    if status in (401, 403):
        return True
    return (isinstance(body, dict) and body.get("response_code") in (400, "400")
            and _word(body.get("response")) == "authentication failure"
            and _word(body.get("status")) == "failure")


def _word(value: object) -> str:
    return value.strip().lower() if isinstance(value, str) else ""


class HttpTransport:
    """Posts ``{"payload": ...}`` to the endpoint over one keep-alive ``requests.Session``."""

    def __init__(self, endpoint: str, api_key: str | None, timeout: float) -> None:
        import requests
        import urllib3

        self._errors = (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
                        OSError)
        self.endpoint = endpoint
        self.timeout = (min(CONNECT_TIMEOUT, timeout), timeout)
        self.session = _session(requests, endpoint)
        # No compressed answers: what is read of one is capped, and decompressing it would not be.
        headers = {"Content-Type": "application/json", "User-Agent": f"callhome/{__version__}",
                   "Accept-Encoding": "identity"}
        if api_key:
            headers["X-API-KEY"] = api_key
        # One prepared request per endpoint, copied per record: preparing a request from
        # scratch costs a quarter of a loopback round trip.
        self._templates = {kind: self.session.prepare_request(requests.Request(
            "POST", endpoint + path, headers=headers, data=b"{}")) for kind, path in _PATHS.items()}
        self._pools: dict[str, HTTPConnectionPool] = {}

    def url(self, kind: str) -> str:
        return self.endpoint + _PATHS[kind]

    def send(self, kind: str, payload: dict[str, Any]) -> SendResult:
        """POST one record; never raises."""
        body = _ENCODER.encode({"payload": payload}).encode()
        event_id = str(payload.get("event_id", ""))
        with _deadline(self.timeout[1]):
            try:
                pool = self._direct_pool(kind)
                if pool is not None:
                    response = self._send_direct(pool, kind, body, event_id)
                else:
                    response = self._send_adapter(kind, body, event_id)
                data = _read_capped(response)
            except self._errors as exc:
                return _failed(exc, self.timeout[1])
        return classify(response.status, _json(data), response.headers.get("Retry-After"))

    def _send_adapter(self, kind: str, body: bytes, event_id: str) -> BaseHTTPResponse:
        """Through the session's adapter (which knows proxies), not ``Session.send``: that one reads
        the whole body of a redirect, whatever its size."""
        request = self._templates[kind].copy()
        request.prepare_body(body, None)
        request.headers["Idempotency-Key"] = event_id
        adapter = self.session.get_adapter(request.url)  # type: ignore[arg-type]  # a prepared request has its URL
        raw: BaseHTTPResponse = adapter.send(request, stream=True, timeout=self.timeout, verify=self.session.verify,
                                             proxies=self.session.proxies).raw
        return raw

    def _direct_pool(self, kind: str) -> HTTPConnectionPool | None:
        """The session's own keep-alive connection pool for this endpoint, when no proxy applies.

        Posting through the pool skips the ``Session``/``Response`` machinery that a
        one-record request does not use (cookies, hooks, redirects), about 40 % of the
        client's work per request on loopback. Through a proxy, the session does it all.
        """
        if self.session.proxies:
            return None
        if kind not in self._pools:
            template = self._templates[kind]
            url: str = template.url  # type: ignore[assignment]  # a prepared request has its URL
            adapter: HTTPAdapter = self.session.get_adapter(url)  # type: ignore[assignment]  # _session mounts one
            if hasattr(adapter, "get_connection_with_tls_context"):  # requests >= 2.32.2
                pool = adapter.get_connection_with_tls_context(template, self.session.verify)
            else:
                pool = adapter.get_connection(url)
                adapter.cert_verify(pool, url, self.session.verify, None)
            self._pools[kind] = pool
        return self._pools[kind]

    def _send_direct(self, pool: HTTPConnectionPool, kind: str, body: bytes, event_id: str) -> BaseHTTPResponse:
        import urllib3

        headers = dict(self._templates[kind].headers, **{"Idempotency-Key": event_id,
                                                         "Content-Length": str(len(body))})
        # the template's headers are all str (requests types them str | bytes)
        return pool.urlopen("POST", self._templates[kind].path_url, body=body, headers=headers,  # type: ignore[arg-type]
                            retries=False, redirect=False, assert_same_host=False,
                            timeout=urllib3.Timeout(connect=self.timeout[0], read=self.timeout[1]),
                            preload_content=False, decode_content=False)

    def close(self) -> None:
        self.session.close()


def _read_capped(response: BaseHTTPResponse) -> bytes:
    """At most :data:`MAX_BODY` of a ``urllib3`` answer's body. Its connection goes back to the
    pool only when the body was read to its end: what is left of a larger one is not drained
    (it may never end), and the connection is closed instead."""
    data = response.read(MAX_BODY, decode_content=False)
    if not response.closed:
        response.close()
    response.release_conn()
    return data


def preload(endpoint: str) -> None:
    """Import now what :func:`open_transport` and the first request will import: a thread sender
    runs in the host, which may fork while that thread is importing."""
    import encodings.idna  # noqa: F401  (host names)
    import hashlib  # noqa: F401  (auth.json names the key by a hash)

    if endpoint.startswith("https://"):
        _tls_context()
    if _needs_requests(endpoint):
        import requests  # noqa: F401


def open_transport(endpoint: str, api_key: str | None, timeout: float) -> HttpTransport | ClientTransport:
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
        self._connection: _ClientConnection | None = None

    def url(self, kind: str) -> str:
        return self.endpoint + _PATHS[kind]

    def send(self, kind: str, payload: dict[str, Any]) -> SendResult:
        """POST one record; never raises."""
        body = _ENCODER.encode({"payload": payload}).encode()
        headers = dict(self._headers, **{"Idempotency-Key": str(payload.get("event_id", "")),
                                         "Content-Length": str(len(body))})
        with _deadline(self.timeout):
            try:
                return self._answer(self._request(self._prefix + _PATHS[kind], body, headers))
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                return _failed(exc, self.timeout)

    def _request(self, path: str, body: bytes, headers: dict[str, str]) -> http.client.HTTPResponse:
        """Send the request; the answer with its status line and headers read."""
        reused = self._connection is not None
        try:
            return self._exchange(path, body, headers)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            if not reused:
                raise
        # the server closed a kept-alive connection before answering: once more, afresh (an
        # answer that breaks off once begun is not sent again: the server may have the record)
        self.close()
        return self._exchange(path, body, headers)

    def _exchange(self, path: str, body: bytes, headers: dict[str, str]) -> http.client.HTTPResponse:
        connection = self._connection or self._connect()
        connection.request("POST", path, body, headers)
        return connection.getresponse()

    def _answer(self, response: http.client.HTTPResponse) -> SendResult:
        data = response.read(MAX_BODY)
        if response.will_close or not response.isclosed():  # closing, or a body larger than we read
            self.close()
        return classify(response.status, _json(data), response.getheader("Retry-After"))

    def _connect(self) -> _ClientConnection:
        https, host, port = self._target
        self._connection = _ClientConnection(host, port, _tls_context() if https else None)
        self._connection.connect()
        return self._connection

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


# -- the deadline of a request ------------------------------------------------------------------
# A socket's timeout counts per call: a server sending one byte per call, just within it, would
# hold a request for as long as it likes. So every blocking step of a request (connect, TLS
# handshake, each send, each read of the status line, headers and body) waits only for what is
# left of the request's deadline. The deadline is the sending thread's, not the connection's:
# urllib3 builds its connections itself, and a thread makes one request at a time.

_current = threading.local()


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """The request made on this thread within the block ends within ``seconds``."""
    _current.deadline = time.monotonic() + seconds
    try:
        yield
    finally:
        del _current.deadline


def _time_left() -> float:
    left: float = _current.deadline - time.monotonic()
    if left <= 0:  # (a zero timeout would make the socket non-blocking, not time out)
        raise socket.timeout("timed out")
    return left


def _failed(exc: BaseException, seconds: float) -> SendResult:
    """A request that broke off: the deadline, when it passed, whatever the library made of it."""
    if time.monotonic() >= _current.deadline:
        return SendResult(RETRY, None, None, f"Timeout: no complete answer within {seconds:g} s")
    return SendResult(RETRY, None, None, _describe(exc))


class _DeadlineReader(io.RawIOBase):
    """A connection's socket reader whose every read waits only for what is left of the deadline."""

    def __init__(self, sock: Any, raw: io.RawIOBase) -> None:
        super().__init__()
        self._sock, self._raw = sock, raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self._sock.settimeout(_time_left())
        return self._raw.readinto(buffer)

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineResponse(http.client.HTTPResponse):
    """An answer whose status line, headers and body are read within the request's deadline."""

    def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp = io.BufferedReader(_DeadlineReader(sock, self.fp.detach()))


class _DeadlineConnection(http.client.HTTPConnection):
    """A connection that sends and reads within the request's deadline (the base of ours and,
    mixed in, of urllib3's)."""

    response_class = _DeadlineResponse

    def send(self, data: Any) -> None:
        if self.sock is not None:  # else http.client connects first, within the deadline too
            self.sock.settimeout(_time_left())
        super().send(data)


class _ClientConnection(_DeadlineConnection):
    """``http.client``'s connection, with TLS set up here so that the handshake, too, waits only
    for what is left of the deadline (``HTTPSConnection`` gives it the connect's timeout again)."""

    def __init__(self, host: str, port: int | None, tls: ssl.SSLContext | None) -> None:
        if tls is not None:
            self.default_port = http.client.HTTPS_PORT  # before __init__ resolves a missing port
        super().__init__(host, port)
        self._tls = tls

    def connect(self) -> None:
        self.timeout = min(CONNECT_TIMEOUT, _time_left())
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            self.sock.settimeout(_time_left())
            self.sock = self._tls.wrap_socket(self.sock, server_hostname=self.host)


@functools.cache
def _deadline_pools() -> dict[str, type[HTTPConnectionPool]]:
    """urllib3's connection pools by scheme, with connections that keep the request's deadline."""
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    def connection(base: Any) -> type:
        def _new_conn(self: Any) -> socket.socket:
            sock: socket.socket = base._new_conn(self)
            sock.settimeout(_time_left())  # the TLS handshake that may follow waits only for what is left
            return sock

        return type(base.__name__, (_DeadlineConnection, base), {"_new_conn": _new_conn})

    return {scheme: type(pool.__name__, (pool,), {"ConnectionCls": connection(pool.ConnectionCls)})
            for scheme, pool in (("http", HTTPConnectionPool), ("https", HTTPSConnectionPool))}


@functools.cache
def _deadline_adapter() -> type[HTTPAdapter]:
    """A ``requests`` adapter whose pools, direct or through a proxy, are :func:`_deadline_pools`."""
    import requests

    class DeadlineAdapter(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = _deadline_pools()

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **kwargs)
            if not proxy.lower().startswith("socks"):  # a SOCKS proxy's pools are its own (no deadline)
                manager.pool_classes_by_scheme = _deadline_pools()
            return manager

    return DeadlineAdapter


def _host_port(address: str) -> tuple[str, int | None]:
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    host, _, port = address.partition(":")
    return host, int(port) if port else None


def _tls_context() -> ssl.SSLContext:
    """Verified TLS with the CA bundle ``requests`` would use: ``REQUESTS_CA_BUNDLE`` or
    ``CURL_CA_BUNDLE`` (a file or a directory), else certifi's, else the system's."""
    import ssl

    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        if os.path.isdir(bundle):
            return ssl.create_default_context(capath=bundle)
        return ssl.create_default_context(cafile=bundle)
    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:
        return ssl.create_default_context()


def _session(requests: ModuleType, endpoint: str) -> Session:
    """A session that honours the environment's proxies and CA bundle, resolved once.

    ``requests`` re-reads every proxy variable on each request (a scan of ``os.environ``
    that costs more than the request itself on loopback); resolving it once per session
    keeps the same behaviour at a fraction of the cost. Its connections keep the request's deadline.
    """
    session: Session = requests.Session()
    adapter = _deadline_adapter()()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
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
