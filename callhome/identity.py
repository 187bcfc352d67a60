"""The per-product installation id: random, created once, never derived from the machine."""

from __future__ import annotations

import os
import re

from ._fs import publish_once, unlink_quietly
from .payload import new_event_id

__all__ = ["ID_FILE", "load_or_create", "read", "reset"]

ID_FILE = "installation_id"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
_EXPLAIN = ("# callhome installation id for product {product}: a random number, not derived from this\n"
            "# machine or its user. Delete this file to get a new one; see docs/data.md.\n")


def load_or_create(directory: str, product_id: str) -> str | None:
    """The id stored in ``directory``, creating it atomically (mode 0600) on first use.

    Returns None when it cannot be persisted: no id at all is better than a new one per run.
    """
    path = os.path.join(directory, ID_FILE)
    existing = _read(path)
    if existing:
        return existing
    content = f"{new_event_id()}\n{_EXPLAIN.format(product=product_id)}".encode()
    try:
        publish_once(path, content)  # two processes creating it at once agree on one id
    except OSError:
        return None
    return _read(path)


def reset(directory: str) -> None:
    """Forget the installation id; the next run creates a new one."""
    unlink_quietly(os.path.join(directory, ID_FILE))


def read(directory: str) -> str | None:
    """The installation id stored in ``directory``, or None."""
    return _read(os.path.join(directory, ID_FILE))


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return first if _UUID.match(first) else None
