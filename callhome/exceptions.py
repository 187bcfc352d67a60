"""Exception records: class, function and a scrubbed stack, and the opt-in interpreter hooks.

A stack keeps file *base names*, line numbers and function names only: no directory (which
would name the user's home or the vendor's build machine) and never a local variable. The
message is left out unless the vendor asks for it, and then paths under the home directory
are shortened to ``~``.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING, as mypy reads it, without importing typing
if TYPE_CHECKING:
    from collections import deque
    from threading import ExceptHookArgs
    from types import CodeType, TracebackType
    from typing import Any, Callable

__all__ = ["MAX_STACK", "exception_meta", "install_hooks", "scrub_home"]

MAX_STACK = 1024  # one meta string
_SEPARATOR = " > "


def exception_meta(exc: BaseException, handled: bool, with_message: bool) -> dict[str, Any]:
    """The ``meta`` of an exception record (see ``docs/data.md``)."""
    frames = _frames(exc.__traceback__)
    kind = type(exc)
    module = getattr(kind, "__module__", "") or ""
    name = kind.__qualname__ if module in ("builtins", "") else f"{module}.{kind.__qualname__}"
    meta: dict[str, Any] = {"record_type": "exception", "exception_class": name[:128], "handled": handled}
    if frames:  # an exception never raised has none
        meta["stack"] = _stack(frames)
        filename, line, function = frames[-1]
        meta.update(exception_function=function[:128], exception_file=filename, exception_line=line)
    if with_message:
        meta["exception_message"] = " ".join(scrub_home(_message(exc)).split())[:MAX_STACK]
    return meta


def _frames(tb: TracebackType | None) -> list[tuple[str, int, str]]:
    """Outermost to innermost; of a very deep stack the innermost ones (where it was raised),
    as many as a full ``stack`` can show (a frame takes at least 8 characters)."""
    from collections import deque

    frames: deque[tuple[CodeType, int | None]] = deque(maxlen=MAX_STACK // 8)
    while tb is not None:
        frames.append((tb.tb_frame.f_code, tb.tb_lineno))
        tb = tb.tb_next
    return [(os.path.basename(code.co_filename) or "?", line or 0, code.co_name) for code, line in frames]


def _stack(frames: list[tuple[str, int, str]]) -> str:
    """Outermost to innermost; when too long the outermost frames go (the innermost explain most).

    Built from the innermost end, stopping once full: a deep recursion costs the host's thread
    no more than a shallow one.
    """
    parts: list[str] = []
    size = 0
    for filename, line, function in reversed(frames):
        part = f"{filename}:{line} in {function}"
        if parts and size + len(_SEPARATOR) + len(part) > MAX_STACK - len("..." + _SEPARATOR):
            parts.append("...")
            break
        parts.append(part)
        size += len(part) + len(_SEPARATOR)
    return _SEPARATOR.join(reversed(parts))[-MAX_STACK:]


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # the host's own __str__ failing
        return ""


def scrub_home(text: str) -> str:
    """``text`` with the home directory (and the user's name inside it) replaced by ``~``."""
    for home in _homes():
        text = text.replace(home, "~")
    return text


def _homes() -> list[str]:
    homes = {os.path.expanduser("~"), os.environ.get("HOME", ""), os.environ.get("USERPROFILE", "")}
    real = {os.path.realpath(h) for h in homes if h}
    # longest first: /home/alice/projects must not become ~/projects' prefix twice
    return sorted((h for h in homes | real if len(h) > 1), key=len, reverse=True)


def install_hooks(record: Callable[[BaseException, TracebackType | None], None]) -> None:
    """Chain ``record(exc, traceback)`` in front of ``sys.excepthook`` and ``threading.excepthook``.

    The previous hooks always run afterwards (the host's own crash reporting, the traceback on
    stderr); ``record`` is the agent's guarded method and never raises. Ctrl-C and ``SystemExit``
    are not crashes and are not recorded.
    """
    import threading

    previous_sys = sys.excepthook

    def sys_hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        try:
            if not issubclass(kind, (KeyboardInterrupt, SystemExit)):
                record(value if value is not None else kind(), tb)
        finally:
            previous_sys(kind, value, tb)

    previous_threading = threading.excepthook

    def threading_hook(args: ExceptHookArgs) -> None:
        try:
            kind, value = args.exc_type, args.exc_value
            if kind is not None and not issubclass(kind, (KeyboardInterrupt, SystemExit)):
                record(value if value is not None else kind(), args.exc_traceback)
        finally:
            previous_threading(args)

    sys.excepthook = sys_hook
    threading.excepthook = threading_hook
