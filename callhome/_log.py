"""The ``callhome`` logger, only where the host uses ``logging``.

``logging.getLogger("callhome")`` with a ``NullHandler``: silent unless the host configures it.
A host that never imported ``logging`` cannot see a record either, so there callhome does not
import it (4 ms, and a module that registers fork hooks: imported by the worker during a host's
``fork()``, its hooks would run half and print a traceback): records go nowhere, as they would.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING, as mypy reads it, without importing typing or logging
if TYPE_CHECKING:
    from logging import Logger

__all__ = ["logger"]

_logger: Logger | None = None


class _Silent:
    """Stands in for the logger while the host has no ``logging``."""

    def _drop(self, *args: object, **kwargs: object) -> None:
        pass

    debug = info = warning = error = exception = _drop


#: typed as the logger it stands in for: it has every method callhome calls on one
_SILENT: Logger = _Silent()  # type: ignore[assignment]


def logger() -> Logger:
    """The ``callhome`` logger; a silent stand-in while the host has not imported ``logging``."""
    global _logger
    if _logger is None:
        if "logging" not in sys.modules:
            return _SILENT
        import logging

        log = logging.getLogger("callhome")
        if not any(isinstance(h, logging.NullHandler) for h in log.handlers):
            log.addHandler(logging.NullHandler())
        _logger = log
    return _logger
