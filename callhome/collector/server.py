"""A built-in server for the collector's WSGI app: threaded, HTTP/1.1 keep-alive, loopback by default.

:class:`CollectorServer` runs it on a background thread (the test-suite's fixture), :func:`serve`
in the foreground; :func:`add_arguments` and :func:`run` are the ``collector`` command.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import socketserver
import sys
import threading
from collections.abc import Sequence
from typing import Any, Callable

from callhome.collector._gateway import WSGIRequestHandler
from callhome.collector.app import DEFAULT_MAX_BODY, CollectorApp, make_app
from callhome.collector.relay import read_key_file
from callhome.collector.revenera import parse_report_user
from callhome.collector.store import Store

__all__ = ["CollectorServer", "add_arguments", "main", "run", "serve"]

logger = logging.getLogger("callhome.collector")


class _HTTPServer(socketserver.ThreadingTCPServer):
    # TCPServer, not http.server.HTTPServer, whose server_bind() does a reverse DNS lookup.
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: Callable[..., Any], verbose: bool) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        self.verbose = verbose
        self.connections = 0  # accepted so far: tests use it to see keep-alive at work
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(address, WSGIRequestHandler)

    def track(self, connection: socket.socket, opened: bool) -> None:
        with self._lock:
            if opened:
                self.connections += 1
                self._open.add(connection)
            else:
                self._open.discard(connection)

    def close_connections(self) -> None:
        """Wake every handler blocked on a keep-alive connection, so none outlives the server."""
        with self._lock:
            connections = list(self._open)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client vanishing mid-request is routine here; never print tracebacks to stderr.
        logger.debug("error serving %s", client_address, exc_info=True)


class CollectorServer:
    """The collector on a background daemon thread; a context manager. ``port=0`` picks a free port.

    ``db``, ``api_keys``, ``max_body``, ``strict``, ``fill_ip_addr``, ``report_keys`` and the relay's
    ``relay_to``, ``upstream_key``, ``relay_dir``, ``trust_proxy`` and ``report_users`` build the app (see
    :func:`~callhome.collector.app.make_app`) when ``app`` is not given.
    :meth:`stop` leaves the store open, so what was received can still be read afterwards; it stops
    the relay's thread, leaving what it did not deliver in its queue.
    """

    def __init__(self, app: CollectorApp | Callable[..., Any] | None = None, host: str = "127.0.0.1",
                 port: int = 0, db: str = ":memory:", api_keys: Sequence[str] = (), *,
                 max_body: int = DEFAULT_MAX_BODY, strict: bool = True, fill_ip_addr: bool = False,
                 verbose: bool = False, report_keys: Sequence[str] = (), relay_to: str | None = None,
                 upstream_key: str | None = None, relay_dir: str | None = None, trust_proxy: int = 0,
                 report_users: Sequence[tuple[str, str]] = ()) -> None:
        # Typed as the collector's own app, as every documented use reads it (``server.app.script``);
        # a foreign WSGI app is only served.
        self.app: CollectorApp = app if app is not None else make_app(  # type: ignore[assignment]
            Store(db), api_keys, max_body, strict, fill_ip_addr, report_keys, relay_to=relay_to,
            upstream_key=upstream_key, relay_dir=relay_dir, trust_proxy=trust_proxy,
            report_users=report_users)
        # None for a foreign WSGI app, typed as the own app's Store for the same reason
        self.store: Store = getattr(self.app, "store", None)  # type: ignore[assignment]
        try:
            self._server = _HTTPServer((host, port), self.app, verbose)
        except OSError:
            _close_relay(self.app)  # its thread would outlive a server that never started
            raise
        self.host = host
        self.port: int = self._server.server_address[1]
        self._stopped = False
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"callhome-collector-{self.port}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def connections(self) -> int:
        """How many TCP connections the server has accepted."""
        return self._server.connections

    def __repr__(self) -> str:
        return f"<CollectorServer {self.url} {'stopped' if self._stopped else 'running'}>"

    def __enter__(self) -> CollectorServer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop accepting, close the listening socket and every open connection; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        self._thread.join(timeout=5)
        _close_relay(self.app)


def _close_relay(app: Any) -> None:
    relay = getattr(app, "relay", None)
    if relay is not None:
        relay.close()


def serve(host: str = "127.0.0.1", port: int = 8765, db: str = "callhome-events.sqlite3",
          api_keys: Sequence[str] = (), verbose: bool = False, *, max_body: int = DEFAULT_MAX_BODY,
          strict: bool = True, fill_ip_addr: bool = False, report_keys: Sequence[str] = (),
          relay_to: str | None = None, upstream_key: str | None = None, relay_dir: str | None = None,
          trust_proxy: int = 0, report_users: Sequence[tuple[str, str]] = ()) -> None:
    """Run the collector in the foreground until SIGINT or SIGTERM.

    Warnings and errors go to stderr; with ``verbose``, one line per request too.
    """
    _log_to_stderr(logging.INFO if verbose else logging.WARNING)
    server = CollectorServer(host=host, port=port, db=db, api_keys=api_keys, max_body=max_body,
                             strict=strict, fill_ip_addr=fill_ip_addr, verbose=verbose,
                             report_keys=report_keys, relay_to=relay_to, upstream_key=upstream_key,
                             relay_dir=relay_dir, trust_proxy=trust_proxy, report_users=report_users)
    stop = threading.Event()
    previous = _on_signals(lambda *_: stop.set())
    try:
        relaying = f", relaying to {relay_to}" if relay_to else ""  # never the key
        print(f"callhome collector listening on {server.url} (db: {db}{relaying})", file=sys.stderr,
              flush=True)
        while not stop.wait(0.5):  # a timeout keeps the wait interruptible everywhere
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        server.stop()
        server.store.close()


def _on_signals(handler: Callable[..., None]) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}  # signal handlers can only be set from the main thread
    return {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}


def _log_to_stderr(level: int) -> None:
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)


def _port(text: str) -> int:
    """A TCP port for argparse: a usage error, not a traceback from ``bind()``."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0 to 65535)")
    return port


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``collector`` command's options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default: %(default)s, this machine only)")
    parser.add_argument("--port", type=_port, default=8765, help="TCP port, 0 to 65535 (default: %(default)s)")
    parser.add_argument("--db", default="callhome-events.sqlite3",
                        help="SQLite database file, or :memory: (default: %(default)s)")
    parser.add_argument("--api-key", dest="api_keys", action="append", default=[], metavar="KEY",
                        help="accept this X-API-KEY (repeatable); without any, every request is accepted")
    parser.add_argument("--report-key", dest="report_keys", action="append", default=[], metavar="KEY",
                        help="accept this Authorization: Bearer key on POST /rest/v3/telemetry/report "
                             "(repeatable); without any, reports answer 401 to everyone")
    parser.add_argument("--report-user", dest="report_users", action="append", default=[],
                        type=_report_user, metavar="NAME:PASSWORD",
                        help="let NAME log in to the Revenera-style Reporting API under /v3/ "
                             "(repeatable); without any, /v3/ reports answer 401. Other local users can "
                             "see a command line: on a shared machine, keep the collector's command in a "
                             "file only you can read")
    parser.add_argument("--max-body", type=int, default=DEFAULT_MAX_BODY, metavar="BYTES",
                        help="refuse larger request bodies with 413 (default: %(default)s)")
    parser.add_argument("--lenient", action="store_true",
                        help='also accept what Reo\'s samples send: "" placeholders, integer event_id, ...')
    parser.add_argument("--fill-ip-addr", action="store_true",
                        help="give records with neither ip_addr nor domain the connection's address "
                             "(for agents with relay=True)")
    _add_relay_arguments(parser)
    parser.add_argument("--verbose", "-v", action="store_true", help="log every request to stderr")
    return parser


def _report_user(text: str) -> tuple[str, str]:
    try:
        return parse_report_user(text)
    except ValueError as exc:  # the message, never the value: it holds a password
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_relay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--relay-to", metavar="URL",
                        help="also forward each new record to this upstream, e.g. https://ingest.reo.dev "
                             "(implies --fill-ip-addr)")
    parser.add_argument("--upstream-key-file", metavar="PATH",
                        help="file holding the upstream's X-API-KEY (required with --relay-to)")
    parser.add_argument("--relay-dir", metavar="DIR",
                        help="the relay's durable queue (default: beside the database, <db>.relay)")
    parser.add_argument("--trust-proxy", type=int, default=0, metavar="N",
                        help="N proxies in front append to X-Forwarded-For: take the client address "
                             "N entries from the right (default: 0, the TCP peer)")


def _relay_options(args: argparse.Namespace) -> dict[str, Any]:
    """The relay's keyword arguments of :func:`serve`; reads the key file. :raises ValueError:"""
    if args.upstream_key_file and not args.relay_to:
        raise ValueError("--upstream-key-file needs --relay-to")
    key = read_key_file(args.upstream_key_file) if args.upstream_key_file else None
    return {"relay_to": args.relay_to, "upstream_key": key, "relay_dir": args.relay_dir,
            "trust_proxy": args.trust_proxy}


def run(args: argparse.Namespace) -> int:
    """Run the collector with parsed ``args``; the exit status."""
    try:
        # a relay fills ip_addr: an agent with relay=True counts on it (public addresses only)
        serve(host=args.host, port=args.port, db=args.db, api_keys=args.api_keys, verbose=args.verbose,
              max_body=args.max_body, strict=not args.lenient,
              fill_ip_addr=args.fill_ip_addr or bool(args.relay_to), report_keys=args.report_keys,
              report_users=args.report_users, **_relay_options(args))
    except OSError as exc:
        print(f"callhome collector: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # e.g. a key given both as --api-key and --report-key
        print(f"callhome collector: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="callhome collector",
                                     description="Receive callhome events like Reo.Dev's Product Usage API.")
    return run(add_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
