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

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing, which a host would pay for
if TYPE_CHECKING:
    from collections import deque
    from typing import Any
else:
    from .buffer import deque  # the C type, without importing collections

__all__ = ["MAX_META_BYTES", "MAX_META_KEYS", "IDS_AHEAD", "Rejected", "make_event_ids", "new_event_id",
           "ready_ids", "coerce_event_at", "call_label", "clean_meta", "clean_activity", "clean_category", "clean_name",
           "clean_user", "platform_triple", "user_agent", "static_fields"]

#: The agent adds its own keys (installation id, versions) to the host's, within the schema's 64.
MAX_META_KEYS = 50
#: Approximate serialized size of ``meta``; keys beyond it are dropped.
MAX_META_BYTES = 8 * 1024
MAX_KEY = 64
MAX_ACTIVITY = 128


class Rejected(Exception):
    """The event cannot be sent at all (no usable activity name)."""


def _new_series() -> tuple[str, count[int]]:
    """A fresh random prefix (74 bits: the uuid4 layout's random bits less the last 48) and the
    counter of blocks that make the last 48 bits: a block number of 10 hex digits (started at a
    random point in [16**9, 8 * 16**9), so it never needs an 11th) and 2 more for the id in it."""
    h = os.urandom(16).hex()
    variant = "89ab"[int(h[16], 16) & 3]
    prefix = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-"
    return prefix, count((1 << 36) + (int(h[20:30], 16) >> 3))


#: Ids are made a block at a time: the block's start formatted once, then one concatenation per id.
_SUFFIXES = tuple("%02x" % i for i in range(256))
#: How many ids the worker keeps ready.
IDS_AHEAD = 1024
#: This process's id prefix and counter of blocks; a forked child draws a series of its own.
_SERIES: tuple[str, count[int]] = _new_series()
#: Ids made ahead (by the worker thread, or by a call that found none), so that ``track()`` only pops one.
ready_ids: deque[str] = deque()


def _reseed() -> None:
    global _SERIES
    ready_ids.clear()  # the parent's: a child handing them out would repeat its ids
    _SERIES = _new_series()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)


def new_event_id() -> str:
    """A uuid4-shaped id: this process's random prefix and a counter value.

    Unique across processes (74 random bits per process) and within one (``next()`` on an
    ``itertools.count`` and ``deque.popleft`` are atomic), without a system call or a lock:
    ``track()`` takes one per call on the host's thread, also from a signal handler. Formatting
    costs more than taking one ready, so ids are made a block at a time.
    """
    if ready_ids:
        try:
            return ready_ids.popleft()
        except IndexError:  # another thread took the last one
            pass
    block = _block()  # the worker has not made any yet, or a burst used them up
    ready_ids.extend(block[1:])
    return block[0]


def _block() -> list[str]:
    prefix, blocks = _SERIES
    head = "%s%010x" % (prefix, next(blocks))
    return [head + suffix for suffix in _SUFFIXES]


def make_event_ids() -> None:
    """Worker side: top up the ids ``track()`` takes."""
    while len(ready_ids) < IDS_AHEAD:
        ready_ids.extend(_block())


def coerce_event_at(value: object, now: float, problems: list[str]) -> int:
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


def clean_activity(activity: object, problems: list[str]) -> str:
    """The ``activity_type``: trimmed, inner whitespace collapsed, non-empty, at most 128 characters."""
    cleaned = clean_name(activity, problems, "activity")
    if not cleaned:
        raise Rejected("activity is empty")
    return cleaned


def clean_name(name: object, problems: list[str], what: str = "category") -> str:
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


def call_label(activity: object) -> str:
    """How ``status()["problems"]`` names a ``track()`` call: ``track('name')``."""
    shown = repr(activity[:40]) if isinstance(activity, str) else f"<{type(activity).__name__}>"
    return f"track({shown})"


def clean_category(category: object, problems: list[str]) -> str:
    """The cleaned category; an unusable one is left out (and counted), the event is still sent."""
    try:
        return clean_name(category, problems)
    except Rejected as exc:
        problems.append(f"{exc}; the event is sent without it")
        return ""


def clean_user(user_id: object, user_id_type: object, problems: list[str]) -> tuple[str, str] | None:
    """``(user_id, user_id_type)`` when both are given and valid, else None (counted)."""
    if user_id is None and user_id_type is None:
        return None
    if not isinstance(user_id, str) or not user_id.strip() or not isinstance(user_id_type, str):
        problems.append("user_id and user_id_type must be given together as strings (user_id_type one of "
                        f"{', '.join(USER_ID_TYPES)}); the event is sent without them")
        return None
    kind = user_id_type.strip().upper()
    if kind not in USER_ID_TYPES:
        problems.append(f"user_id_type {user_id_type[:40]!r} is not one of {', '.join(USER_ID_TYPES)}; "
                        "the event is sent without user_id")
        return None
    return _one_line(user_id, MAX_STRING), kind


def clean_meta(meta: object, problems: list[str]) -> dict[str, Any]:
    """A flat, JSON-safe, size-capped copy of the host's ``meta``."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        problems.append(f"meta of type {type(meta).__name__} dropped: it must be a dict")
        return {}
    cleaned: dict[str, Any] = {}
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


def _flat_value(value: object, problems: list[str], name: str) -> str | int | float:
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


def static_fields(config: Config) -> dict[str, str]:
    """The fields every payload of this agent shares."""
    fields = {"source": config.source, "environment": config.environment,
              "product_id": config.product_id, "user_agent": user_agent(config)}
    return {k: v for k, v in fields.items() if v}

