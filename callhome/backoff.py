"""Retry timing: exponential backoff with full jitter and ``Retry-After``; pure functions."""

from __future__ import annotations

import random
from typing import Callable

__all__ = ["MAX_DELAY", "delay", "parse_retry_after"]

#: The longest a transient failure postpones delivery (one hour), and the longest Retry-After obeyed.
MAX_DELAY = 3600.0
MAX_RETRY_AFTER = 86400.0


def delay(failures: int, base: float = 1.0, cap: float = MAX_DELAY,
          rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait after ``failures`` consecutive failures: uniform in ``[0, min(cap, base·2^n)]``.

    Full jitter (rather than equal jitter) spreads a fleet of processes that failed together.
    """
    ceiling = min(cap, base * 2.0 ** min(max(failures - 1, 0), 32))
    return rng() * ceiling


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from ``now`` that a ``Retry-After`` header asks for (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        seconds = _http_date_delta(value, now)
    if seconds is None or seconds != seconds:
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _http_date_delta(value: str, now: float) -> float | None:
    from email.utils import parsedate_to_datetime

    try:
        return parsedate_to_datetime(value).timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
