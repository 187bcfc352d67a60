"""A small HTTP/1.1 keep-alive WSGI gateway on top of :class:`http.server.BaseHTTPRequestHandler`.

``wsgiref`` closes the connection after every request; ``http.server`` writes headers and body
separately (Nagle plus the client's delayed ACK then cost ~40 ms per keep-alive request) and
parses headers with :mod:`email` (~0.1 ms a request). This handler answers in one write, on a
``TCP_NODELAY`` socket, with a Content-Length on every response.

It is on the path of every event, so the per-request work is kept small: the header block is
parsed from the read buffer in one pass when it has arrived whole, the connection's fixed part of
the WSGI environ is built once, and the ``Date`` header is formatted once a second.
"""

from __future__ import annotations

import email.utils
import logging
import socket
import struct
import sys
import time
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import unquote

from callhome.collector.faults import AbortConnection

if TYPE_CHECKING:
    from callhome.collector.server import _HTTPServer

__all__ = ["IDLE_TIMEOUT", "WSGIRequestHandler"]

logger = logging.getLogger("callhome.collector")

#: Seconds a connection may sit idle (or a client take over one read) before it is closed.
IDLE_TIMEOUT = 30.0
#: Unread request bodies up to this size are drained so the connection can be reused.
DRAIN_LIMIT = 1 << 20
#: After refusing a larger body, how long to swallow it so the client can read the answer.
LINGER_SECONDS = 5.0
_MAX_LINE = 65536
_MAX_HEADERS = 100
_OWN_HEADERS = {"content-length", "connection", "date", "server", "transfer-encoding"}


class _Body:
    """``wsgi.input``: the request body, never read past its Content-Length."""

    def __init__(self, rfile: Any, length: int) -> None:
        self._rfile = rfile
        self.remaining = length

    def read(self, size: int | None = -1) -> bytes:
        return self._take(self._rfile.read, size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._take(self._rfile.readline, size)

    def readlines(self, hint: int = -1) -> list[bytes]:
        return list(self)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    def _take(self, reader: Callable[[int], bytes], size: int | None) -> bytes:
        size = self.remaining if size is None or size < 0 else min(size, self.remaining)
        data = reader(size) if size else b""
        self.remaining -= len(data)
        return data


class WSGIRequestHandler(BaseHTTPRequestHandler):
    """Serves ``self.server.app``; the server also provides ``verbose`` and ``track()``."""

    protocol_version = "HTTP/1.1"
    server_version = "callhome-collector"
    timeout = IDLE_TIMEOUT  # StreamRequestHandler.setup() applies it to the socket
    server: _HTTPServer
    raw_requestline: bytes  # read by BaseHTTPRequestHandler.handle_one_request() before parse_request()
    # Not http.server's email Message: parse_request() builds a plain dict (see _read_headers).
    headers: dict[str, str]  # type: ignore[assignment]  # lower-case names, repeated headers joined with ","

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, opened=True)
        self._base_environ = self._connection_environ()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, opened=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if getattr(self.server, "verbose", False):
            logger.info("%s %s", self.address_string(), format % args)

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        if getattr(self.server, "verbose", False):  # checked first: it is called for every request
            super().log_request(code, size)

    def parse_request(self) -> bool:
        """The request line and headers; on a malformed request, answer it and return False."""
        # Not http.server's default "HTTP/0.9": error answers need their status line and headers.
        self.command, self.request_version = "", "HTTP/1.0"
        self.close_connection = True
        self.requestline = self.raw_requestline.decode("iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) != 3 or words[2] not in ("HTTP/1.0", "HTTP/1.1"):
            self.send_error(HTTPStatus.BAD_REQUEST, "Bad request line")
            return False
        self.command, self.path, self.request_version = words
        try:
            self.headers = _read_headers(self.rfile)
        except ValueError as exc:
            self.send_error(HTTPStatus.BAD_REQUEST, str(exc))
            return False
        tokens = self.headers.get("connection", "").lower()
        self.close_connection = "close" in tokens or (words[2] == "HTTP/1.0" and "keep-alive" not in tokens)
        if self.headers.get("expect", "").lower() == "100-continue" and words[2] == "HTTP/1.1":
            return self.handle_expect_100()
        return True

    def _serve_wsgi(self) -> None:
        length = _content_length(self.headers)
        if length is None:  # chunked or nonsense: the body's end cannot be found, so close after
            self.close_connection = True
            self._write("411 Length Required", [("Content-Type", "application/json")],
                        b'{"status": "failure", "response": "A valid Content-Length is required"}')
            return
        body = _Body(self.rfile, length)
        try:
            status, headers, data = _call_app(self.server.app, self._environ(body))
        except AbortConnection:
            # Read the body first: a client still sending it would swallow the reset in its send
            # and then see a plain end of stream.
            self._settle_body(body)
            self._reset()
            return
        linger = self._settle_body(body)
        self._write(status, headers, data)
        if linger:
            self._lingering_close()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve_wsgi

    def _connection_environ(self) -> dict[str, Any]:
        """The part of the WSGI environ that is the same for every request of this connection."""
        host, port = self.server.server_address[:2]
        return {
            "SCRIPT_NAME": "", "SERVER_NAME": str(host), "SERVER_PORT": str(port),
            "REMOTE_ADDR": self.client_address[0], "REMOTE_PORT": str(self.client_address[1]),
            "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input_terminated": True,
            "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }

    def _environ(self, body: _Body) -> dict[str, Any]:
        path, _, query = self.path.partition("?")
        environ = self._base_environ.copy()  # a copy: the app may change its environ
        environ.update({
            "REQUEST_METHOD": self.command, "PATH_INFO": unquote(path, "latin-1"), "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("content-type", ""),
            "CONTENT_LENGTH": str(body.remaining) if "content-length" in self.headers else "",
            "SERVER_PROTOCOL": self.request_version, "wsgi.input": body,
        })
        for name, value in self.headers.items():
            key = _environ_key(name)
            if key is not None:
                environ[key] = value
        return environ

    def _settle_body(self, body: _Body) -> bool:
        """Drain a small unread body to keep the connection; True if it is too big and must linger."""
        if body.remaining and body.remaining <= DRAIN_LIMIT:
            try:
                body.read()
            except OSError:
                self.close_connection = True
        if body.remaining:
            self.close_connection = True
        return body.remaining > DRAIN_LIMIT

    def _write(self, status: str, headers: Iterable[tuple[str, str]], data: bytes) -> None:
        lines = [f"HTTP/1.1 {status}"]
        lines += [f"{name}: {value}" for name, value in headers if name.lower() not in _OWN_HEADERS]
        lines += [f"Server: {self.server_version}", f"Date: {_http_date()}", f"Content-Length: {len(data)}"]
        if self.close_connection:
            lines.append("Connection: close")
        elif self.request_version == "HTTP/1.0":
            lines.append("Connection: keep-alive")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:  # one write: a separate body write would meet Nagle and the client's delayed ACK
            self.wfile.write(head if self.command == "HEAD" else head + data)
        except OSError:  # the client gave up (a read timeout, a reset): nothing left to tell it
            self.close_connection = True
        self.log_request(status.split(" ", 1)[0], len(data))

    def _reset(self) -> None:
        """Close with SO_LINGER 0, so the client sees a connection reset instead of an answer."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.rfile.close()  # the descriptor closes with the socket's last file object

    def _lingering_close(self) -> None:
        """Swallow what a client still sends after a refusal, so it reads our answer, not a reset."""
        deadline = time.monotonic() + LINGER_SECONDS
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(LINGER_SECONDS)
            while time.monotonic() < deadline and self.rfile.read1(65536):
                pass
        except OSError:
            pass


def _read_headers(rfile: Any) -> dict[str, str]:
    """Header lines up to the blank line, as lower-case names; ValueError when malformed."""
    # The header block usually arrives whole, with the request line: then it is parsed from the
    # read buffer in one pass instead of one readline() per header.
    buffered = rfile.peek(_MAX_LINE)
    end = buffered.find(b"\r\n\r\n")
    # Not for a block without headers (its blank line comes first) or with a bare LF line end.
    bare_lf = buffered.count(b"\n", 0, end) != buffered.count(b"\r\n", 0, end)
    if end <= 0 or buffered.startswith(b"\r\n") or bare_lf:
        return _read_header_lines(rfile)
    lines = rfile.read(end + 4)[:end].decode("iso-8859-1").split("\r\n")
    if len(lines) >= _MAX_HEADERS:
        raise ValueError("Too many headers")
    headers: dict[str, str] = {}
    for line in lines:
        _add_header(headers, line)
    return headers


def _read_header_lines(rfile: Any) -> dict[str, str]:
    """:func:`_read_headers` one line at a time, for a header block not (yet) buffered whole."""
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS):
        line = rfile.readline(_MAX_LINE + 1)
        if line in (b"\r\n", b"\n"):
            return headers
        _add_header(headers, line.decode("iso-8859-1"))
    raise ValueError("Too many headers")


def _add_header(headers: dict[str, str], line: str) -> None:
    """Add one header line to ``headers`` (a repeated name's values joined); ValueError if malformed."""
    name, colon, value = line.partition(":")
    # No space in or after the name, no folded lines: request-smuggling vectors (RFC 9112).
    if not colon or name.split() != [name] or len(line) > _MAX_LINE:
        raise ValueError("Malformed header line" if line else "Incomplete request")
    name, value = name.lower(), value.strip()
    headers[name] = f"{headers[name]},{value}" if name in headers else value


#: Header name -> environ key (None: not passed on); bounded, so odd names cannot grow it forever.
_ENVIRON_KEYS: dict[str, str | None] = {}


def _environ_key(name: str) -> str | None:
    key = _ENVIRON_KEYS.get(name, "")
    if key == "":
        # "x_api_key" must not pass for "x-api-key" (as in wsgiref); the two CONTENT_* are set apart.
        key = None if "_" in name or name in ("content-type", "content-length") else \
            "HTTP_" + name.upper().replace("-", "_")
        if len(_ENVIRON_KEYS) < 256:
            _ENVIRON_KEYS[name] = key
    return key


class _Clock:
    """The ``Date`` header's text, formatted once a second rather than for every answer."""

    second = -1
    text = ""


def _http_date() -> str:
    now = int(time.time())
    if now != _Clock.second:
        # The text before the second: a thread that sees the new second also sees its text.
        _Clock.text, _Clock.second = email.utils.formatdate(now, usegmt=True), now
    return _Clock.text


def _content_length(headers: dict[str, str]) -> int | None:
    """The body's length (0 when absent), or None when it cannot be known."""
    if "transfer-encoding" in headers:
        return None
    value = headers.get("content-length", "0").strip()
    return int(value) if value.isascii() and value.isdigit() else None


def _call_app(app: Callable[..., Any], environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    """Run a WSGI app to completion: (status, headers, body); a crash becomes a 500."""
    started: list[Any] = []
    chunks: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        started[:] = [status, headers]
        return chunks.append

    try:
        result = app(environ, start_response)
        try:
            chunks.extend(result)
        finally:
            getattr(result, "close", lambda: None)()
    except AbortConnection:
        raise
    except Exception:
        logger.exception("collector app failed on %s %s", environ["REQUEST_METHOD"], environ["PATH_INFO"])
        return "500 Internal Server Error", [("Content-Type", "application/json")], \
            b'{"status": "failure", "response": "Internal Server Error"}'
    return started[0], started[1], b"".join(chunks)
