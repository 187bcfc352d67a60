"""Retry policy: how long to wait after a failure, which failures use up a record's attempts, and
when a backlog goes out after an outage. Pure functions.

Cheap to import (no ``random`` or ``typing`` until used): hosts read the product's shared pause
through :mod:`callhome.sender.files`, which bounds it with these constants.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see the module's docstring)
if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence

__all__ = ["BASE", "MAX_DELAY", "MAX_FAILURES", "MAX_RETRY_AFTER", "REPLAY_STRETCH", "TRANSIENT",
           "counts_against", "delay", "parse_retry_after", "replay"]

#: The longest a transient failure postpones delivery (one hour).
MAX_DELAY = 3600.0
#: The longest ``Retry-After`` obeyed (a day).
MAX_RETRY_AFTER = 86400.0
#: The ceiling of the wait after the first failure, doubled by each further one. When the server
#: goes down, every installation that was sending retries within this: with 1 s, a fleet's requests
#: in the outage's first minutes ran at 3.2x its usual rate (4.2x per second); with 8 s, at 1.9x
#: (2.2x; bench/fleet_sim.py). A record held by a blip waits a few seconds more: telemetry can.
BASE = 8.0
#: Consecutive failures beyond which the wait grows no more (2^32 times ``BASE`` is past any cap):
#: a larger count read from a shared file counts as this many.
MAX_FAILURES = 32
#: Answers that say the server or the network failed, not the record (``None``: no answer at all,
#: a connection error or a timeout). They do not use up a record's attempts: an outage of the
#: server must not drop what it would have accepted.
TRANSIENT = frozenset({None, 408, 429, 502, 503, 504})
#: After an outage a backlog goes out this much slower than it was created: with the new records,
#: an installation then sends under twice its usual rate (1 + 1/1.15), and a day's backlog is out
#: about 28 h after the server is back.
REPLAY_STRETCH = 1.15


def delay(failures: int, base: float = BASE, cap: float = MAX_DELAY,
          rng: Callable[[], float] | None = None) -> float:
    """Seconds to wait after ``failures`` consecutive failures: uniform in ``[0, min(cap, base·2^(n-1))]``.

    Full jitter (rather than equal jitter) spreads a fleet of processes that failed together.
    """
    if rng is None:
        import random  # not at import: hosts read the shared pause without ever drawing one

        rng = random.random
    ceiling = min(cap, base * 2.0 ** (min(max(failures, 1), MAX_FAILURES) - 1))
    return rng() * ceiling


def counts_against(status: int | None, transient: Collection[int | None] = TRANSIENT) -> bool:
    """Whether a failed request with this HTTP ``status`` uses up one of the record's attempts."""
    return status not in transient


def replay(created: Sequence[float], not_before: Sequence[float], held_until: float, now: float,
           longest: float, stretch: float = REPLAY_STRETCH) -> list[float]:
    """The not-before times of a backlog's batches once the server answered again, at ``now``,
    after a streak of failures that held the product back until ``held_until``.

    The batches created by then are replayed from ``now`` ``stretch`` times slower than they were
    created, oldest first, and within ``longest`` seconds: a fleet that met the same outage then
    adds less than its usual rate to the server's load, instead of hours of traffic in minutes.
    A batch created later (a run of a command after the outage) was not held back: it goes at
    once. None is made due earlier than it was. ``stretch=0``: everything at once.
    """
    held = [at for at in created if at <= held_until]
    if not held:
        return list(not_before)
    oldest = min(held)
    span = now - oldest
    scale = min(stretch, longest / span) if span > 0 else 0.0
    return [max(due, now + (at - oldest) * scale) if at <= held_until else due
            for at, due in zip(created, not_before)]


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from ``now`` that a ``Retry-After`` header asks for (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds: float | None = float(value)
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
