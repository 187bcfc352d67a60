"""callhome: an in-app telemetry agent for Reo.Dev's Product Usage API.

One line in the host::

    import callhome
    callhome.init(product_id="acme-cli", api_key="...")

then ``callhome.track("secondary1")`` wherever usage happens. Events go to a bounded buffer,
a durable on-disk queue shared by the host's processes, and a background thread that delivers
them. No call raises into the host, blocks it, or prints to stdout; opt-outs (``DO_NOT_TRACK``,
``CALLHOME_DISABLED``, ``<PRODUCT>_TELEMETRY_DISABLED``) are honoured before anything is created.
"""

from __future__ import annotations

from ._version import __version__
from .agent import Agent

TYPE_CHECKING = False  # typing.TYPE_CHECKING, as mypy reads it, without importing typing
if TYPE_CHECKING:
    from typing import Any

    from .agent import _SessionScope
    from .privacy import mask_args, redact_path, salted_hash  # loaded on first use: see __getattr__

__all__ = ["Agent", "__version__", "call_home", "count", "end_session", "flush", "init", "mask_args", "notice_text",
           "redact_path", "salted_hash", "session", "set_license", "set_property", "shutdown", "start_session",
           "status", "track", "track_exception"]

#: Public names loaded on first use, so that ``import callhome`` stays cheap.
_LAZY = {"mask_args": "privacy", "redact_path": "privacy", "salted_hash": "privacy"}


if not TYPE_CHECKING:  # the type checker sees the lazy names' imports above (and a misspelt name is an error)
    def __getattr__(name: str) -> object:
        if name in _LAZY:
            import importlib

            return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        raise AttributeError(f"module 'callhome' has no attribute {name!r}")

del TYPE_CHECKING  # not a public name

_default: Agent | None = None


def _agent() -> Agent:
    global _default
    if _default is None:
        _default = Agent()
    return _default


def init(product_id: str | None = None, **options: object) -> None:
    """Configure the default agent (again, if called twice); see ``docs/configuration.md``.

    ``callhome.track`` and ``callhome.count`` then become the default agent's own methods (the
    functions below only stand in for them before the first ``init()``): one Python call less on
    the host's hottest paths.
    """
    agent = _agent()
    agent.init(product_id=product_id, **options)
    globals().update(track=agent.track, count=agent.count)


def track(activity: str, user_id: str | None = None, user_id_type: str | None = None,
          meta: dict[str, Any] | None = None, event_at: object = None, category: str | None = None) -> str | None:
    """Queue one usage event; returns its ``event_id``, or None when it was not queued."""
    return _default.track(activity, user_id, user_id_type, meta, event_at, category) if _default else None


def track_exception(exc: BaseException | None = None) -> str | None:
    """Queue an ``EXCEPTION`` record (class, function, scrubbed stack) for ``exc`` or the one being handled."""
    return _default.track_exception(exc) if _default else None


def start_session(session_id: str) -> bool:
    """Open an explicit session (id of 10–64 characters, never reused); True when opened."""
    return _default.start_session(session_id) if _default else False


def end_session(session_id: str) -> bool:
    """Close an explicit session; its duration is sent as a ``SESSION`` record."""
    return _default.end_session(session_id) if _default else False


def session(session_id: str | None = None) -> _SessionScope:
    """``with callhome.session("id"):`` — an explicit session around a block (a random id if None)."""
    return _agent().session(session_id)


def set_property(slot: int, value: object) -> bool:
    """Set custom client property ``slot`` (1–20) for this run; None clears it."""
    return _default.set_property(slot, value) if _default else False


def set_license(type: str | None = None, expired: bool | None = None, activated: bool | None = None,
                blocked: bool | None = None, allowed: bool | None = None, key: str | None = None) -> bool:
    """The product's license; the key is sent only as an HMAC keyed with ``license_secret``."""
    if _default is None:
        return False
    return _default.set_license(type, expired, activated, blocked, allowed, key)


def count(activity: str, n: int = 1, meta: dict[str, Any] | None = None) -> bool:
    """Add ``n`` to ``activity``'s count; one aggregate record per activity and window is sent."""
    return _default.count(activity, n, meta) if _default else False


def call_home(meta: dict[str, Any] | None = None) -> str | None:
    """Queue a ``CALL_HOME`` event now."""
    return _default.call_home(meta) if _default else None


def flush(timeout: float = 10.0) -> bool:
    """Deliver everything queued so far; True when all of it was delivered within ``timeout``."""
    return _default.flush(timeout) if _default else True


def shutdown(timeout: float = 1.0) -> None:
    """Flush within ``timeout``, keep the rest on disk for the next process, stop the worker."""
    if _default is not None:
        _default.shutdown(timeout)


def notice_text() -> str:
    """The first-run notice callhome shows (what is sent, where the id lives, how to opt out)."""
    return _agent().notice_text()


def status() -> dict[str, Any]:
    """Whether telemetry is on and why, queue depth, drops by reason, the last send's result."""
    return _agent().status()
