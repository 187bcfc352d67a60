"""Inter-process file locks for the worker and the sender, cheap to import.

On POSIX this is ``fcntl.flock`` on a file that is never deleted: the kernel releases the lock
when its holder dies, so a lock held means a live holder (the sender's whole-life lock relies on
that). ``filelock`` would do the same but costs a host about 30 ms of import on the worker's
thread, time during which a fork would leave the child an import lock held forever; it is used
only where ``fcntl`` does not exist (Windows, where ``msvcrt.locking`` has the same meaning).
"""

from __future__ import annotations

import os
import time

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["Busy", "FileLock", "is_held"]


class Busy(TimeoutError):
    """The lock is held by someone else (within the time asked); an OSError, as filelock's Timeout."""


class FileLock:
    """An exclusive lock on ``path``; not reentrant, not shared between threads."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._fallback: object = None

    @property
    def held(self) -> bool:
        return self._fd is not None or self._fallback is not None

    def acquire(self, timeout: float = 0.0, poll: float = 0.01) -> FileLock:
        """Take the lock within ``timeout`` seconds. :raises Busy: when it stays held;
        :raises OSError: when the file cannot be opened or the filesystem has no locks."""
        if fcntl is None:
            return self._acquire_with_filelock(timeout)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + max(timeout, 0.0)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self._fd = fd
                    return self
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise Busy(f"{self.path} is held") from None
                    time.sleep(poll)
        except BaseException:
            os.close(fd)
            raise

    def _acquire_with_filelock(self, timeout: float) -> FileLock:
        import filelock

        lock = filelock.FileLock(self.path, timeout=timeout)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise Busy(f"{self.path} is held") from None
        self._fallback = lock
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)  # closing the descriptor releases the flock
            except OSError:
                pass
        fallback, self._fallback = self._fallback, None
        if fallback is not None:
            fallback.release()  # type: ignore[attr-defined]

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def is_held(path: str) -> bool:
    """True when another open file holds ``path``'s lock (a live sender); False when free or absent."""
    if not os.path.exists(path):
        return False
    probe = FileLock(path)
    try:
        probe.acquire(0)
    except Busy:
        return True
    except OSError:
        return False
    probe.release()
    return False
