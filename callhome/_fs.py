"""Small filesystem helpers: where state lives, private directories, atomic writes.

Only the worker (and the CLI) call these; the host's thread never touches the disk.
"""

from __future__ import annotations

import json
import os
import re

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any

__all__ = ["atomic_write", "default_root", "ensure_private_dir", "fsync_dir", "mtime_ns", "pid_alive", "product_dir",
           "publish_once", "read_json", "unlink_quietly", "write_json"]


def default_root() -> str:
    """The platform's per-user state directory for callhome (``platformdirs``, imported here)."""
    import platformdirs

    return platformdirs.user_state_dir("callhome", appauthor=False)


def product_dir(product_id: str, root: str | None = None) -> str:
    """``<root>/<product>``: one directory per product so two vendors never share state."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", product_id)[:48].strip("._") or "product"
    if slug != product_id:
        from ._digest import sha256  # only for ids that are not already a clean name

        slug += "-" + sha256(product_id.encode()).hexdigest()[:8]
    return os.path.join(root or default_root(), slug)


def ensure_private_dir(path: str) -> str:
    """Create ``path`` (0700) if needed and check that it is a directory this user owns.

    :raises OSError: when it cannot be created or is not ours (e.g. left behind by ``sudo``).
    """
    _make_private_dirs(path)
    info = os.stat(path)
    if not os.path.isdir(path):
        raise NotADirectoryError(path)
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user")
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"{path} is not writable")
    return path


def _make_private_dirs(path: str) -> None:
    """``makedirs`` that gives every directory it creates mode 0700, not only the last one."""
    missing = []
    while path and not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass


def atomic_write(path: str, data: bytes, fsync: bool = False) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new content, never a mix.

    ``fsync``: the new content and its name survive a power loss once this returns (the file,
    then its directory, flushed to the device).
    """
    tmp = f"{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise
    if fsync:
        fsync_dir(os.path.dirname(path))


def fsync_dir(path: str) -> None:
    """Make the names created or renamed in ``path`` survive a power loss (POSIX; a no-op where
    directories cannot be opened, as on Windows)."""
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish_once(path: str, data: bytes, fsync: bool = True) -> None:
    """Create ``path`` (mode 0600) holding ``data``, unless it exists: the first process wins.

    Written to a private temporary file and published with ``link()``, which fails when the
    name exists, so a reader never sees a half-written file and racers agree on one content.

    :raises OSError: when the file cannot be written (an existing ``path`` is not an error).
    """
    tmp = f"{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        unlink_quietly(tmp)
    if fsync:
        fsync_dir(os.path.dirname(path))


def read_json(path: str) -> dict[str, Any]:
    """The JSON object stored at ``path``, or ``{}`` when it is missing or unreadable."""
    try:
        with open(path, "rb") as f:
            value = json.loads(f.read(65536))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_json(path: str, value: dict[str, Any], fsync: bool = False) -> None:
    atomic_write(path, json.dumps(value, sort_keys=True).encode(), fsync)


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (True when it cannot be told)."""
    if os.name == "nt":
        return True  # os.kill(pid, 0) would terminate it there: callers rely on age instead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists (another user's), or a platform where we cannot tell
    return True


def mtime_ns(path: str) -> int | None:
    """When ``path`` last changed (a cheap "has it changed?" stamp), or None when it is absent."""
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None
