"""A Reo-compatible receiver for callhome events: an emulator for development, tests and self-hosting.

:func:`make_app` is the WSGI application (run it under any WSGI server), :class:`CollectorServer`
runs it on a background thread (the test-suite's fixture), :func:`serve` in the foreground, and
:class:`Store` keeps what it receives in SQLite. Standard library only.
"""

from __future__ import annotations

from callhome.collector.app import CollectorApp, make_app
from callhome.collector.server import CollectorServer, serve
from callhome.collector.store import Store

__all__ = ["CollectorApp", "CollectorServer", "Store", "make_app", "serve"]
