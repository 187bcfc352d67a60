"""The product's state on disk as the worker opens it: directory, queue, installation id, choices.

Opened once per process; a disk that refuses (read-only home, no home at all, a directory that
is not ours) leaves a memory-only queue and a reason for ``status()``.
"""

from __future__ import annotations

import time

from .. import choices, identity
from .._fs import product_dir
from .._log import logger
from .._state import HostState
from ..memqueue import MemoryQueue
from ..notice import notice_text, show_on_terminal
from ..optout import Decision, decide
from ..queue import DiskQueue

__all__ = ["Storage"]


class Storage:
    """Where one product's records go in this process."""

    def __init__(self, state: HostState) -> None:
        self.state = state
        self.directory: str | None = None
        self.queue: DiskQueue | MemoryQueue | None = None
        self.installation_id: str | None = None
        self.disk_error: str | None = None
        self.choices = choices.Watch(None)
        #: the Decision, when the saved choices turned telemetry off
        self.refused: Decision | None = None
        #: True in the process that just showed the first-run notice on a terminal: the next run sends
        self.deferred = False

    @property
    def durable(self) -> bool:
        return self.disk_error is None and self.directory is not None

    @property
    def opened(self) -> DiskQueue | MemoryQueue:
        """The queue, for the steps that run once :meth:`setup` opened it."""
        queue = self.queue
        assert queue is not None
        return queue

    def setup(self) -> None:
        """Read the saved choices; if they allow it, open the queue and show the notice. Idempotent."""
        if self.queue is not None or self.refused is not None:
            return
        config = self.state.cfg
        directory = self.directory = self.product_directory()
        self.choices = choices.Watch(directory)
        decision = decide(config, choices=self.choices())
        if not decision.enabled:
            self.refused = decision  # decided before anything is created
            return
        self.queue, self.installation_id, self.disk_error = self.open(directory)
        if directory and self.disk_error is None:
            self._show_notice(directory, decision.is_ci)

    def product_directory(self) -> str | None:
        try:
            return product_dir(self.state.cfg.product_id, self.state.cfg.data_dir)
        except Exception:  # no home directory at all: memory-only
            return None

    def open(self, directory: str | None) -> tuple[DiskQueue | MemoryQueue, str | None, str | None]:
        """(queue, installation id, why the disk is unusable) for the current configuration."""
        try:
            if directory is None:
                raise FileNotFoundError("no home directory for callhome's state")
            config = self.state.cfg
            queue = DiskQueue(directory, config.fsync).open()
            queue.adopt_orphans(time.time())  # a killed process's open batch: its records go on
            settings = {"endpoint": config.endpoint, "domain": config.domain, "ip_addr": config.ip_addr,
                        "relay": config.relay, "consent": config.consent, "send_in_ci": config.send_in_ci,
                        "held_for": config.held_for}  # the key itself is never saved; whether one was given is
            if queue.state("agent") != settings:  # every process starts here: write only on change
                queue.set_state("agent", settings)
            installation_id = None if self.state.ephemeral_id else identity.load_or_create(
                directory, config.product_id)
            return queue, installation_id, None
        except Exception as exc:  # read-only home, not ours, no HOME at all, ...
            reason = f"{type(exc).__name__}: {exc}"
            logger().debug("callhome: disk queue unusable (%s); memory-only delivery", reason)
            return MemoryQueue(reason), None, reason

    def go_memory_only(self, exc: BaseException) -> MemoryQueue:
        """Swap the queue for one in memory, and return it."""
        self.disk_error = f"{type(exc).__name__}: {exc}"
        logger().debug("callhome: disk queue unusable (%s); memory-only delivery", self.disk_error)
        queue = self.queue = MemoryQueue(self.disk_error)
        return queue

    def retry_disk(self) -> bool:
        """Open the disk queue again (a full disk may have room now) and move what memory holds
        onto it; True when the queue is on disk again. Memory keeps the records otherwise."""
        if self.disk_error is None or self.directory is None or self.refused is not None:
            return False
        queue, installation_id, error = self.open(self.directory)
        held = self.queue
        if error is not None or not isinstance(queue, DiskQueue) or not isinstance(held, MemoryQueue):
            return False
        lines = held.take_all()
        try:
            queue.put(lines, time.time())
        except OSError as exc:
            held.put(lines, time.time())  # still no room: they stay in memory
            self.disk_error = f"{type(exc).__name__}: {exc}"
            return False
        logger().debug("callhome: the disk queue works again; %d records moved back to it", len(lines))
        self.queue, self.disk_error = queue, None
        self.installation_id = self.installation_id or installation_id
        return True

    def _show_notice(self, directory: str, is_ci: bool) -> None:
        """Once per product and notice version on a terminal, where the first send waits for the
        next run. Without one it is logged (once), which is not "shown": a later run on a
        terminal still shows it, and ``callhome status`` says which happened."""
        saved = self.choices()
        if is_ci or saved.get("notice_version") == choices.NOTICE_VERSION:
            return
        if show_on_terminal(self.state.cfg, directory):
            self.deferred = True
        elif saved.get("notice_logged_version") != choices.NOTICE_VERSION:
            logger().warning("%s", notice_text(self.state.cfg, directory))
            try:
                choices.save(directory, notice_logged_version=choices.NOTICE_VERSION, notice_logged_at=int(time.time()))
            except OSError:
                pass
