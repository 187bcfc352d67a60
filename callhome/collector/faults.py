"""Fault-injection actions for the collector: what a test asks the next ingest request to suffer.

An action is an int status (``503``), ``(status, headers)``, ``(status, headers, body)``,
``"auth"`` (Reo's authentication failure), ``"reset"`` (drop the connection unanswered) or
``"hang:SECONDS"`` (sleep, then answer normally). :func:`parse_action` checks one up front, so a
mistyped action fails in the test that scripts it rather than in the request that meets it.
"""

from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple, Union

__all__ = ["AbortConnection", "Action", "Fault", "FaultInjection", "parse_action"]

Action = Union[int, str, tuple[Any, ...]]


class AbortConnection(Exception):
    """Raised by the app to ask the server to drop the connection without answering.

    The built-in server resets the connection; another WSGI server will answer 500 instead.
    """


class Fault(NamedTuple):
    """A checked action: ``kind`` is ``"respond"``, ``"auth"``, ``"reset"`` or ``"hang"``."""

    kind: str
    status: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    body: Any | None = None  # None: the app writes a failure body naming the status
    seconds: float = 0.0


class FaultInjection:
    """The fault script of :class:`~callhome.collector.app.CollectorApp` (a mixin)."""

    def __init__(self) -> None:
        self._script: deque[Fault] = deque()  # appends and pops of a deque are atomic
        self._fail_all: Fault | None = None

    def script(self, *actions: Action) -> None:
        """Queue actions, each consumed by one POST to an ingest endpoint before normal handling.

        ``503`` answers that status; ``(429, {"Retry-After": "2"})`` adds headers;
        ``(status, headers, body)`` sets the JSON body too; ``"auth"`` answers Reo's auth failure;
        ``"reset"`` drops the connection unanswered; ``"hang:0.5"`` sleeps, then answers normally.
        """
        self._script.extend([parse_action(action) for action in actions])

    def fail_all(self, action: Action | None) -> None:
        """Apply ``action`` to every ingest POST once the script is empty; ``None`` clears it."""
        self._fail_all = None if action is None else parse_action(action)

    def clear_faults(self) -> None:
        """Forget the script and any :meth:`fail_all` action."""
        self._script.clear()
        self._fail_all = None

    @property
    def pending_faults(self) -> int:
        """How many scripted actions are still to be consumed."""
        return len(self._script)

    def next_fault(self) -> Fault | None:
        """The action for the request at hand: the next scripted one, else the fail-all one."""
        try:
            return self._script.popleft()
        except IndexError:
            return self._fail_all


def parse_action(action: Action) -> Fault:
    """Check and normalise one action; ValueError if it is not one."""
    if isinstance(action, int) and not isinstance(action, bool):
        return _respond(action)
    if isinstance(action, tuple) and len(action) in (2, 3):
        return _respond(*action)
    if action in ("auth", "reset"):
        return Fault(str(action))
    if isinstance(action, str) and action.startswith("hang:"):
        try:
            seconds = float(action[len("hang:"):])
        except ValueError:
            seconds = -1.0
        if seconds >= 0:
            return Fault("hang", seconds=seconds)
    raise ValueError(f"not a fault action: {action!r}")


def _respond(status: int, headers: dict[str, object] | None = None, body: Any = None) -> Fault:
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise ValueError(f"a fault's status must be an int from 200 to 599, not {status!r}")
    pairs = tuple((str(name), str(value)) for name, value in (headers or {}).items())
    return Fault("respond", status, pairs, body)
