"""The ``callhome`` logger, created on first use so that ``import callhome`` stays cheap."""

from __future__ import annotations

__all__ = ["logger"]

_logger = None


def logger():  # -> logging.Logger, untyped so that the annotation imports nothing
    """``logging.getLogger("callhome")`` with a ``NullHandler``: silent unless the host configures it."""
    global _logger
    if _logger is None:
        import logging

        log = logging.getLogger("callhome")
        if not any(isinstance(h, logging.NullHandler) for h in log.handlers):
            log.addHandler(logging.NullHandler())
        _logger = log
    return _logger
