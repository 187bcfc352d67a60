"""Building Reo payloads from what the host passes, on the host's thread, without raising.

Everything here is cheap (no I/O, no JSON): bad input is coerced or dropped and the problem is
returned as a short string so the agent can count and debug-log it, or raise it under ``strict``.
"""

from __future__ import annotations

import math
import os
import sys
from itertools import count

from ._version import __version__
from .config import Config
from .schema import MAX_FUTURE_S, MAX_STRING, MIN_EVENT_AT, USER_ID_TYPES

__all__ = ["MAX_META_BYTES", "MAX_META_KEYS", "Rejected", "new_event_id", "coerce_event_at",
           "clean_meta", "clean_activity", "clean_name", "clean_user", "platform_triple", "user_agent",
           "static_fields"]

#: The agent adds its own keys (installation id, versions) to the host's, within the schema's 64.
MAX_META_KEYS = 50
#: Approximate serialized size of ``meta``; keys beyond it are dropped.
MAX_META_BYTES = 8 * 1024
MAX_KEY = 64
_POOL_IDS = 256
MAX_ACTIVITY = 128


class Rejected(Exception):
    """The event cannot be sent at all (no usable activity name)."""


#: Random bytes for the next 256 event ids, and the index of the next 16 (an atomic counter:
#: two threads never take the same slice; a pool shared with a forked child is replaced in it).
_POOL: tuple = (b"", count(_POOL_IDS))


def _refill() -> None:
    global _POOL
    _POOL = (b"", count(_POOL_IDS))


if hasattr(os, "register_at_fork"):  # a child drawing from its parent's pool would repeat its ids
    os.register_at_fork(after_in_child=_refill)


def new_event_id() -> str:
    """A random uuid4 string, without importing ``uuid`` (import time matters to hosts).

    The randomness comes from ``os.urandom`` 4 KiB at a time: one system call per 256 ids.
    """
    global _POOL
    data, taken = _POOL
    i = next(taken)
    if i >= _POOL_IDS:
        data, taken = os.urandom(16 * _POOL_IDS), count(1)
        _POOL, i = (data, taken), 0
    raw = bytearray(data[16 * i:16 * i + 16])
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def coerce_event_at(value: object, now: float, problems: list) -> int:
    """UNIX seconds (int) from None, int, float, numeric string, milliseconds or a datetime."""
    if value is None:
        return int(now)
    seconds = _to_seconds(value)
    if seconds is None:
        problems.append(f"event_at {_text(value)[:40]} is not a time; now used instead")
        return int(now)
    if seconds > 1e11:  # milliseconds: 1e11 s is the year 5138
        seconds /= 1000.0
    if not MIN_EVENT_AT <= seconds <= now + MAX_FUTURE_S:
        problems.append(f"event_at {_text(value)[:40]} is out of range (2000-01-01 .. tomorrow); now used instead")
        return int(now)
    return int(seconds)


def _to_seconds(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond any float
            return None
        return seconds if math.isfinite(seconds) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    timestamp = getattr(value, "timestamp", None)  # datetime; naive means local time, as in Python
    if callable(timestamp):
        try:
            return float(timestamp())
        except (TypeError, ValueError, OverflowError, OSError):
            return None
    return None


def _one_line(text: str, limit: int) -> str:
    """One line of valid Unicode (a lone surrogate cannot be sent as UTF-8), at most ``limit`` long."""
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    if "\n" in text or "\r" in text:
        text = text.replace("\r", " ").replace("\n", " ")
    return text.strip()[:limit]


def clean_activity(activity: object, problems: list) -> str:
    """The ``activity_type``: trimmed, inner whitespace collapsed, non-empty, at most 128 characters."""
    cleaned = clean_name(activity, problems, "activity")
    if not cleaned:
        raise Rejected("activity is empty")
    return cleaned


def clean_name(name: object, problems: list, what: str = "category") -> str:
    """An event name or category as Revenera conditions them: trimmed, whitespace runs made one
    space, at most 128 characters. :raises Rejected: when ``name`` is not a string."""
    if not isinstance(name, str):
        raise Rejected(f"{what} {_text(name)[:40]} is not a string")
    if len(name) <= MAX_ACTIVITY and name.isprintable() and name.strip(" ") == name and "  " not in name:
        return name  # the common case, checked cheaply: track() runs on the host's thread
    cleaned = _one_line(name, len(name))
    if "  " in cleaned or "\t" in cleaned or not cleaned.isprintable():
        cleaned = " ".join(cleaned.split())
    cleaned = cleaned[:MAX_ACTIVITY].rstrip()  # a cut may end on the space between two words
    if cleaned != name:
        problems.append(f"{what} {name[:40]!r} trimmed")
    return cleaned


def clean_user(user_id: object, user_id_type: object, problems: list) -> tuple[str, str] | None:
    """``(user_id, user_id_type)`` when both are given and valid, else None (counted)."""
    if user_id is None and user_id_type is None:
        return None
    if not isinstance(user_id, str) or not user_id.strip() or not isinstance(user_id_type, str):
        problems.append("user_id and user_id_type must be given together as strings; both dropped")
        return None
    kind = user_id_type.strip().upper()
    if kind not in USER_ID_TYPES:
        problems.append(f"user_id_type {user_id_type[:40]!r} is not one of {', '.join(USER_ID_TYPES)}; "
                        "user fields dropped")
        return None
    return _one_line(user_id, MAX_STRING), kind


def clean_meta(meta: object, problems: list) -> dict:
    """A flat, JSON-safe, size-capped copy of the host's ``meta``."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        problems.append(f"meta of type {type(meta).__name__} dropped: it must be a dict")
        return {}
    cleaned: dict = {}
    size = 2
    for key, value in meta.items():
        if value is None:
            continue
        name = _one_line(key if isinstance(key, str) else _text(key), MAX_KEY)
        flat = _flat_value(value, problems, name)
        size += len(name) + (len(flat) if isinstance(flat, str) else 8) + 6
        if len(cleaned) >= MAX_META_KEYS or size > MAX_META_BYTES or not name:
            problems.append(f"meta key {name!r} dropped: meta is capped at {MAX_META_KEYS} keys, "
                            f"{MAX_META_BYTES} bytes")
            continue
        cleaned[name] = flat
    return cleaned


def _flat_value(value: object, problems: list, name: str) -> object:
    if isinstance(value, bool) or isinstance(value, int) and abs(value) < 2 ** 53:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, str):
        cleaned = _one_line(value, MAX_STRING)
        if len(cleaned) != len(value.strip()):
            problems.append(f"meta[{name!r}] truncated to one line of {MAX_STRING} characters")
        return cleaned
    problems.append(f"meta[{name!r}] of type {type(value).__name__} turned into a string")
    return _one_line(_text(value), MAX_STRING)


def _text(value: object) -> str:
    """``value`` as a string (ISO format for dates), whatever its ``__str__`` does."""
    try:
        isoformat = getattr(value, "isoformat", None)
        text = isoformat() if callable(isoformat) else str(value)
    except Exception:  # a huge int, or the host's own __str__ failing
        text = None
    return text if isinstance(text, str) else f"<{type(value).__name__}>"


def user_agent(config: Config) -> str:
    """``product/version callhome/version (OS release; machine) Python/x.y.z``; no host or user name."""
    product = config.product_id + (f"/{config.product_version}" if config.product_version else "")
    system, release, machine = platform_triple()
    python = "%d.%d.%d" % sys.version_info[:3]
    return _one_line(f"{product} callhome/{__version__} ({system} {release}; {machine}) Python/{python}",
                     MAX_STRING)


def platform_triple() -> tuple[str, str, str]:
    """``(system, release, machine)``, e.g. ``('Linux', '6.1.0', 'x86_64')``; never the host name."""
    if hasattr(os, "uname"):
        uname = os.uname()  # nodename (the host name) is deliberately never read
        return uname.sysname, uname.release, uname.machine
    version = sys.getwindowsversion()  # type: ignore[attr-defined]
    arch = os.environ.get("PROCESSOR_ARCHITECTURE", "unknown")
    return "Windows", f"{version.major}.{version.minor}.{version.build}", arch


def static_fields(config: Config) -> dict:
    """The fields every payload of this agent shares."""
    fields = {"source": config.source, "environment": config.environment,
              "product_id": config.product_id, "user_agent": user_agent(config)}
    return {k: v for k, v in fields.items() if v}

