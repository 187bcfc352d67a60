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

import ipaddress
import logging
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from callhome.config import Config

__all__ = ["MAX_MEMORY_BYTES", "MAX_MEMORY_RECORDS", "PRODUCT_ID", "Relay", "check_key", "client_address",
           "default_dir", "public_address", "read_key_file"]

logger = logging.getLogger("callhome.collector")

#: The relay's own product id (its queue's and sent log's name); opt-outs do not apply to a relay.
PRODUCT_ID = "callhome-relay"
#: Seconds between delivery cycles when nothing wakes the relay (backoff still decides what is sent).
INTERVAL = 1.0
#: The queue's file names cap the attempt counter at 99; a larger limit means "never give up".
_NEVER_GIVE_UP = 10 ** 6
#: Records held in memory while the queue's directory refuses writes (retried every cycle, and at
#: close). Past either bound a record is refused and counted as ``dropped.memory_full``: the
#: collector's memory must stay bounded whatever happens to its disk.
MAX_MEMORY_RECORDS = 10000
MAX_MEMORY_BYTES = 32 * 1024 * 1024
#: Printable ASCII without spaces: the key goes out as an HTTP header, so a stray second line or a
#: non-ASCII character would make every request fail (or, with a line break, inject a header).
_KEY_CHARACTERS = frozenset(chr(code) for code in range(0x21, 0x7F))


def read_key_file(path: str) -> str:
    """The upstream key stored in ``path``, without surrounding whitespace.

    :raises ValueError: when the file cannot be read, is empty or holds more than one key; the
        message shows neither the key nor ``path`` (a key typed where its file's path belongs must
        not end up on the terminal or in a service's journal).
    """
    try:
        with open(path, encoding="utf-8") as f:
            key = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the upstream key file ({exc.__class__.__name__})") from None
    check_key(key)
    return key


def check_key(key: str | None) -> None:
    """:raises ValueError: unless ``key`` can be sent as an ``X-API-KEY`` header (never shows it)."""
    if not key:
        raise ValueError("the upstream key is empty")
    if not set(key) <= _KEY_CHARACTERS:
        raise ValueError("the upstream key must be one line of printable ASCII without spaces")


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
    Some proxies write ``address:port``; the port is dropped.
    """
    if trust_proxy <= 0:
        return environ.get("REMOTE_ADDR") or None
    hops = [hop.strip() for hop in environ.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    return _without_port(hops[-trust_proxy]) if len(hops) >= trust_proxy else None


def _without_port(hop: str) -> str:
    """``192.0.2.1:443`` -> ``192.0.2.1``, ``[2001:db8::1]:443`` -> ``2001:db8::1``; else unchanged."""
    if hop.startswith("["):
        return hop[1:].partition("]")[0]
    host, colon, port = hop.partition(":")
    return host if colon and "." in host and port.isdigit() else hop


def public_address(address: str | None) -> str | None:
    """``address`` if it is a globally routable IP address, else None (private, loopback, link-local...).

    An IPv4 client of a dual-stack listener (``--host ::``) shows up as ``::ffff:a.b.c.d``: that
    is judged, and returned, as the IPv4 address it carries.
    """
    try:
        parsed = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    return str(parsed) if parsed.is_global else None


class Relay:
    """Forwards records to ``endpoint`` with ``api_key`` from a queue under ``directory``; thread-safe.

    :meth:`submit` persists a record and wakes the background thread, which runs one delivery
    cycle per wake-up or per :data:`INTERVAL`. If the directory refuses a write, the record is held
    in memory (bounded, counted, shown by :meth:`status`) and written as soon as the directory
    takes it again. :meth:`close` stops the thread and writes what memory holds; what was not
    delivered stays on disk and goes out after the next start.

    :raises ValueError: for an unusable endpoint or key, or a queue directory that cannot be created.
    """

    def __init__(self, endpoint: str, api_key: str, directory: str, interval: float = INTERVAL) -> None:
        from callhome.buffer import Counters
        from callhome.queue import DiskQueue
        from callhome.sender.delivery import Sender

        check_key(api_key)
        self.config = _config(endpoint, api_key)
        self.directory = directory
        self.interval = interval
        try:
            self.queue = DiskQueue(directory).open()
        except OSError as exc:  # refused like any other bad setting, and said as what it is
            raise ValueError(f"cannot create the relay queue in {directory} ({_reason(exc)})") from None
        # Nothing else sweeps tmp/ for a relay: drop writes a crash left there (nothing is pruned).
        self.queue.prune(time.time(), sys.maxsize, sys.maxsize, float("inf"))
        self.counters = Counters()
        self.sender = Sender(self.queue, self.counters, honour_opt_outs=False)
        # Requests arrive on many threads, and DiskQueue.put (built for one worker thread) would
        # give two of them the same temporary file name: every write goes through this lock.
        self._lock = threading.Lock()
        self._memory: list[bytes] = []  # framed records the directory refused, oldest first
        self._memory_bytes = 0
        self.disk_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="callhome-relay", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:  # never the key
        return f"<Relay to {self.config.endpoint} queue={self.directory!r} state={self.sender.state!r}>"

    def submit(self, kind: str, payload: dict[str, Any]) -> bool:
        """Queue one record for the upstream, with its own ``event_id``, and wake the sender.

        False when neither the disk nor the bounded memory could take it: the collector then
        refuses the request (503), so the agent keeps the record and retries.
        """
        from callhome.queue import frame

        line = frame({"v": 1, "kind": kind, "payload": payload})
        with self._lock:
            kept = self._put([line]) or self._hold(line)
        self._wake.set()
        return kept

    def status(self) -> dict[str, Any]:
        """What the relay is doing: the Sender's state, records waiting (``memory`` of them only in
        memory), whether the queue's directory takes writes (``disk``), and the delivery counters."""
        waiting, _ = self.queue.depth()
        with self._lock:
            memory, disk_error = len(self._memory), self.disk_error
        return {"upstream": self.config.endpoint, "state": self.sender.state, "waiting": waiting + memory,
                "memory": memory, "disk": "ok" if disk_error is None else f"failing: {disk_error}",
                "counters": self.counters.snapshot()}

    def wake(self) -> None:
        """Run a delivery cycle now rather than at the next interval."""
        self._wake.set()

    def close(self, timeout: float | None = None) -> None:
        """Stop the background thread (a request on the wire may finish first), then write what
        memory holds to the queue: what still cannot be written is counted and logged; idempotent."""
        self._stop.set()
        self._wake.set()
        self._thread.join(2 * self.config.timeout + 1 if timeout is None else timeout)
        self.sender.close()
        with self._lock:
            self._write_memory()
            lost, self._memory, self._memory_bytes = len(self._memory), [], 0
        if lost:
            self.counters.add("dropped.shutdown", lost)
            logger.error("relay: %d records held in memory could not be written to %s and are lost",
                         lost, self.directory)

    def _put(self, lines: list[bytes]) -> bool:
        """Publish ``lines`` on disk (the caller holds the lock); False when the directory refuses."""
        try:
            self.queue.put(lines, time.time())
        except OSError as exc:
            if self.disk_error is None:  # once per episode, not once per record
                logger.error("relay: cannot write the relay queue in %s (%s); holding records in memory "
                             "(at most %d)", self.directory, _reason(exc), MAX_MEMORY_RECORDS)
            self.disk_error = _reason(exc)
            return False
        if self.disk_error is not None:
            logger.warning("relay: the relay queue in %s takes writes again", self.directory)
            self.disk_error = None
        return True

    def _hold(self, line: bytes) -> bool:
        """Keep a record the directory refused, within the bounds (the caller holds the lock)."""
        if len(self._memory) >= MAX_MEMORY_RECORDS or self._memory_bytes + len(line) > MAX_MEMORY_BYTES:
            if not self.counters.get("refused.memory_full"):
                logger.error("relay: the relay queue's disk is failing and memory is full; refusing records")
            self.counters.add("refused.memory_full")
            return False
        self._memory.append(line)
        self._memory_bytes += len(line)
        return True

    def _write_memory(self) -> None:
        """Move held records to disk, a batch at a time, oldest first (the caller holds the lock).

        A batch leaves memory only once it is published, so a failure halfway neither loses a
        record nor writes one twice.
        """
        from callhome.queue import MAX_BATCH

        while self._memory:
            batch = self._memory[:MAX_BATCH]
            if not self._put(batch):
                return
            del self._memory[:len(batch)]
            self._memory_bytes -= sum(map(len, batch))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            self._cycle()

    def _cycle(self) -> None:
        with self._lock:
            if self._memory:
                self._write_memory()
        try:
            self.sender.run(self.config, force=False, stopping=self._stop.is_set)
        except Exception as exc:  # the relay thread must outlive any one bad cycle
            logger.warning("relay: delivery cycle failed: %s", exc.__class__.__name__)


def _reason(exc: OSError) -> str:
    """``PermissionError: Permission denied``: why, without a long path or anything else."""
    return f"{exc.__class__.__name__}: {exc.strerror or exc}"


def _config(endpoint: str, api_key: str) -> Config:
    """The agent configuration that makes a Sender a relay's sender."""
    from callhome.config import resolve

    return resolve({
        "product_id": PRODUCT_ID, "endpoint": endpoint, "api_key": api_key, "strict": True,
        "relay": True,              # records already carry ip_addr/domain: never hold them back
        "send_in_ci": True,         # a server, not an end user's install: CI markers mean nothing
        "call_home_interval": 0,
        "max_attempts": _NEVER_GIVE_UP,  # an upstream outage must lose nothing
    }, environ={})  # a CALLHOME_IP_ADDR or CALLHOME_DOMAIN here would be stamped on every record
