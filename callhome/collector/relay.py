"""The collector as a relay: forward each new record to an upstream (Reo) through a durable queue.

The relay is the agent's own delivery path run on a server: :class:`callhome.queue.DiskQueue`
holds the records, :class:`callhome.delivery.Sender` over :class:`callhome.transport.HttpTransport`
sends them with the agent's retry, backoff and auth-pause rules. Those modules (and ``requests``)
are imported only when a :class:`Relay` is built, so a collector that does not relay stays
standard-library only.

It also decides which address a relayed record gets as ``ip_addr``: the client's, taken from
the TCP peer or, behind trusted proxies, from ``X-Forwarded-For``; and only a public one, since
Reo resolves the address to a company and a private address would only mislead it.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import threading
import time
from typing import Any

__all__ = ["PRODUCT_ID", "Relay", "client_address", "default_dir", "public_address", "read_key_file"]

logger = logging.getLogger("callhome.collector")

#: The relay's own product id (its queue's and sent log's name); opt-outs do not apply to a relay.
PRODUCT_ID = "callhome-relay"
#: Seconds between delivery cycles when nothing wakes the relay (backoff still decides what is sent).
INTERVAL = 1.0
#: The queue's file names cap the attempt counter at 99; a larger limit means "never give up".
_NEVER_GIVE_UP = 10 ** 6
#: Records kept in memory when the queue's disk refuses a write, retried every cycle.
_MAX_UNQUEUED = 10000


def read_key_file(path: str) -> str:
    """The upstream key stored in ``path``, without surrounding whitespace.

    :raises ValueError: when the file cannot be read or is empty (the message never shows the key).
    """
    try:
        with open(path, encoding="utf-8") as f:
            key = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the upstream key file {path}: {exc.__class__.__name__}") from None
    if not key:
        raise ValueError(f"the upstream key file {path} is empty")
    return key


def default_dir(db_path: str) -> str:
    """Where the relay queue lives when no directory is given: beside the database file.

    :raises ValueError: for an in-memory database, which has no "beside" that survives a restart.
    """
    if not db_path or db_path == ":memory:" or db_path.startswith("file::memory:"):
        raise ValueError("a relay needs a durable queue: give a database file or a relay directory")
    return db_path + ".relay"


def client_address(environ: dict[str, Any], trust_proxy: int = 0) -> str | None:
    """The client's address: the TCP peer, or behind ``trust_proxy`` proxies, from ``X-Forwarded-For``.

    Each trusted proxy appends the address it received the request from, so the client is the
    ``trust_proxy``-th entry from the right; anything further left was written by the client
    itself and proves nothing. Too few entries means the request skipped a proxy: no address.
    """
    if trust_proxy <= 0:
        return environ.get("REMOTE_ADDR") or None
    hops = [hop.strip() for hop in environ.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    return hops[-trust_proxy] if len(hops) >= trust_proxy else None


def public_address(address: str | None) -> str | None:
    """``address`` if it is a globally routable IP address, else None (private, loopback, link-local...)."""
    try:
        parsed = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return None
    return str(parsed) if parsed.is_global else None


class Relay:
    """Forwards records to ``endpoint`` with ``api_key`` from a queue under ``directory``; thread-safe.

    :meth:`submit` persists a record and wakes the background thread, which runs one delivery
    cycle per wake-up or per :data:`INTERVAL`. :meth:`close` stops the thread; what was not
    delivered stays on disk and goes out after the next start.

    :raises ValueError: for an unusable endpoint.
    :raises OSError: when the queue directory cannot be created.
    """

    def __init__(self, endpoint: str, api_key: str, directory: str, interval: float = INTERVAL) -> None:
        from callhome.buffer import Counters
        from callhome.delivery import Sender
        from callhome.queue import DiskQueue

        self.config = _config(endpoint, api_key)
        self.directory = directory
        self.interval = interval
        self.queue = DiskQueue(directory).open()
        self.counters = Counters()
        self.sender = Sender(self.queue, self.counters, honour_opt_outs=False)
        self._unqueued: collections.deque = collections.deque(maxlen=_MAX_UNQUEUED)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="callhome-relay", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:  # never the key
        return f"<Relay to {self.config.endpoint} queue={self.directory!r} state={self.sender.state!r}>"

    def submit(self, kind: str, payload: dict) -> None:
        """Queue one accepted record for the upstream, with its own ``event_id``, and wake the sender."""
        record = {"v": 1, "kind": kind, "payload": payload}
        if not self._persist([record]):
            # The collector already stored and acknowledged it: keep it in memory rather than lose it.
            self._unqueued.append(record)
        self._wake.set()

    def status(self) -> dict:
        """What the relay is doing: the Sender's state, records waiting, and the delivery counters."""
        waiting, _ = self.queue.depth()
        return {"upstream": self.config.endpoint, "state": self.sender.state,
                "waiting": waiting + len(self._unqueued), "counters": self.counters.snapshot()}

    def wake(self) -> None:
        """Run a delivery cycle now rather than at the next interval."""
        self._wake.set()

    def close(self, timeout: float | None = None) -> None:
        """Stop the background thread (a request on the wire may finish first); idempotent."""
        self._stop.set()
        self._wake.set()
        self._thread.join(2 * self.config.timeout + 1 if timeout is None else timeout)
        self.sender.close()

    def _persist(self, records: list) -> bool:
        from callhome.queue import frame

        try:
            self.queue.put([frame(record) for record in records], time.time())
        except OSError as exc:
            logger.error("relay: cannot write the relay queue in %s (%s); keeping records in memory",
                         self.directory, exc.__class__.__name__)
            return False
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            self._cycle()

    def _cycle(self) -> None:
        if self._unqueued:
            records = list(self._unqueued)
            if self._persist(records):
                for _ in records:
                    self._unqueued.popleft()
        try:
            self.sender.run(self.config, force=False, between=lambda: 0, stopping=self._stop.is_set)
        except Exception as exc:  # the relay thread must outlive any one bad cycle
            logger.warning("relay: delivery cycle failed: %s", exc.__class__.__name__)


def _config(endpoint: str, api_key: str):
    """The agent configuration that makes a Sender a relay's sender."""
    from callhome.config import resolve

    return resolve({
        "product_id": PRODUCT_ID, "endpoint": endpoint, "api_key": api_key, "strict": True,
        "relay": True,              # records already carry ip_addr/domain: never hold them back
        "send_in_ci": True,         # a server, not an end user's install: CI markers mean nothing
        "call_home_interval": 0,
        "max_attempts": _NEVER_GIVE_UP,  # an upstream outage must lose nothing
    }, environ={})  # a CALLHOME_IP_ADDR or CALLHOME_DOMAIN here would be stamped on every record
