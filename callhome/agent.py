"""The agent: what the host calls. Builds records on the host's thread and hands them over.

Nothing here touches the disk, a lock or the network; the :class:`~callhome.worker.Worker` does.
Every public method is guarded: it returns normally whatever happens, except that ``strict=True``
turns the host's own mistakes (bad arguments) into ``ValueError`` while integrating.
"""

from __future__ import annotations

import atexit
import os
import sys
import _thread  # get_ident without threading, which init() imports when it needs it
import time
import weakref

from ._version import __version__
from .buffer import OWN_THREADS, Buffer, Counters, deque
from .config import Config, resolve
from .optout import Decision, decide
from .payload import (Rejected, clean_activity, clean_meta, clean_name, clean_user, coerce_event_at, new_event_id,
                      static_fields)
from .sessions import Sessions, clean_session_id, session_event_id, session_meta

__all__ = ["Agent"]


def _guarded(method):
    """Never let an error reach the host, except a ValueError/TypeError it asked for with ``strict``.

    A refused call returns what "not done" means for the method: False for those returning a bool.
    """
    refused = False if method.__annotations__.get("return") in ("bool", bool) else None

    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (ValueError, TypeError):
            if self._strict:
                raise
            self.counters.add("dropped.invalid")
        except Exception:
            self.counters.add("internal_errors")
        return refused

    guarded.__name__, guarded.__qualname__, guarded.__doc__ = method.__name__, method.__qualname__, method.__doc__
    guarded.__wrapped__ = method  # as functools.wraps would (not imported: it costs the host's import)
    return guarded


class Agent:
    """One product's telemetry: ``init()``, ``track()``, ``call_home()``, ``flush()``, ``status()``.

    The module-level functions of :mod:`callhome` use a default instance; a plugin that needs
    its own product id can create another.
    """

    def __init__(self, product_id: str | None = None, **options: object) -> None:
        self.config: Config | None = None
        self.decision = Decision(False, "init() was not called")
        self.buffer = Buffer(10000)
        self.counters = Counters()
        self.ephemeral_id = False
        self._strict = bool(options.get("strict"))
        self._static: dict = {}
        self._base_meta: dict = {}
        self._problems = deque(maxlen=20)
        self.counter = None  # aggregate counts, created by the first count()
        self.count_meta: dict = {}
        self.sessions = Sessions()
        self.process_session: str | None = None
        #: custom properties and license fields set by the host, merged into client properties
        self.properties: dict = {}
        self._hooks_installed = False
        self._lock = _thread.allocate_lock()
        self._forget_worker()
        self._exit_hooked = False
        self._closed = False
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(before=_weak_call(self, "_before_fork"),
                                after_in_child=_weak_call(self, "_after_fork"))
        if product_id is not None:
            self.init(product_id=product_id, **options)

    # -- configuration -------------------------------------------------------------------------
    @_guarded
    def init(self, product_id: str | None = None, **options: object) -> None:
        """Configure (or reconfigure) the agent; see ``docs/configuration.md`` for every option.

        Opt-outs are checked first: an opted-out agent creates no thread, file or socket.
        :raises ValueError: only with ``strict=True``, for a bad argument.
        """
        self._strict = bool(options.get("strict"))
        config = resolve(dict(options, product_id=product_id))
        decision = decide(config)
        with self._lock:
            self.config, self.decision = config, decision
            self._static = static_fields(config)
            self._base_meta = {"callhome_version": __version__}
            if config.product_version:
                self._base_meta["product_version"] = config.product_version
            if decision.is_ci:
                self._base_meta["is_ci"] = True
            self.buffer.maxlen = config.max_buffer
            self.ephemeral_id = decision.is_ci
            self._closed = False
        self._problems.extend(config.problems)
        if not (decision.enabled or config.debug):
            return
        if config.capture_exceptions and not self._hooks_installed:
            from .exceptions import install_hooks

            install_hooks(self._record_crash)
            self._hooks_installed = True
        if config.sessions and self.process_session is None:
            self.process_session = self._start_session(new_event_id(), "process")
            self._hook_exit()
        if config.debug:
            if config.call_home_interval > 0:
                self.queue_call_home({"automatic": True})  # shows what the automatic one would send
        elif config.call_home_interval > 0 or config.sessions:
            self._ensure_worker()  # it decides whether this process owes a CALL_HOME, journals sessions

    # -- events --------------------------------------------------------------------------------
    @_guarded
    def track(self, activity: str, user_id: str | None = None, user_id_type: str | None = None,
              meta: dict | None = None, event_at: object = None, category: str | None = None) -> str | None:
        """Queue one event for ``/api/product/usage``; returns its ``event_id`` (None if not queued).

        Cheap and non-blocking: the record is built here and handed to the worker. ``category``
        groups events in reports (``meta.category``).
        """
        if _thread.get_ident() in OWN_THREADS:
            self.counters.add("dropped.recursion")
            return None
        record = self.build_record(activity, user_id, user_id_type, meta, event_at, category)
        mode = self.config.activity_modes.get(record["payload"]["activity_type"]) if record else None
        if mode in ("aggregate", "both"):
            self.count(record["payload"]["activity_type"])
        return None if mode == "aggregate" else self._accept(record)

    @_guarded
    def count(self, activity: str, n: int = 1, meta: dict | None = None) -> bool:
        """Add ``n`` to ``activity``'s count in the current window, sent as one aggregate record.

        Cheap and non-blocking (an in-memory counter). ``meta`` is attached to the records this
        process sends for ``activity``: use it for properties that do not change per call.
        :return: True when counted.
        """
        if _thread.get_ident() in OWN_THREADS:
            self.counters.add("dropped.recursion")
            return False
        if not self._tracking():
            return False
        config = self.config
        problems: list = []
        try:
            name = clean_activity(activity, problems)
        except Rejected as exc:
            self._note([str(exc)])
            self.counters.add("dropped.invalid")
            return False
        if type(n) is not int or not 1 <= n < 2 ** 53:
            self._note([f"count n={n!r} is not a whole number >= 1; not counted"])
            self.counters.add("dropped.invalid")
            return False
        if meta is not None:
            self.count_meta[name] = clean_meta(meta, problems)
        if problems:
            self._note(problems)
        if config.debug or not self.decision.enabled:
            sys.stderr.write(f"[callhome] (not sent: {self.decision.reason or 'debug mode'}) count {name} +{n}\n")
            return True
        return self._count(name, n)

    def _count(self, name: str, n: int) -> bool:
        counter = self.counter or self._new_counter()
        if not counter.add(name, n, time.time()):
            self.counters.add("dropped.aggregate_cap")
            return False
        if self._thread is None:
            self._ensure_worker()
        return True

    def _new_counter(self):
        from .aggregate import Counter

        with self._lock:
            if self.counter is None:
                self.counter = Counter(self.config.aggregate_interval)
            return self.counter

    @_guarded
    def call_home(self, meta: dict | None = None) -> str | None:
        """Queue a ``CALL_HOME`` event (the key is ``call_home_activity``) now."""
        if _thread.get_ident() in OWN_THREADS:
            self.counters.add("dropped.recursion")
            return None
        return self.queue_call_home(meta)

    def queue_call_home(self, meta: dict | None) -> str | None:
        """``call_home()`` without the recursion guard, for the worker's automatic CALL_HOME."""
        return self._accept(self.call_home_record(meta))

    def call_home_record(self, meta: dict | None) -> dict | None:
        """The CALL_HOME record (``callhome preview`` shows the automatic one); no I/O."""
        activity = self.config.call_home_activity if self.config else "CALL_HOME"
        record = self.build_record(activity, None, None, meta, None)
        if record is not None:
            record["payload"]["meta"]["record_type"] = "call_home"
            record["props"] = True
        return record

    def add_client_properties(self, record: dict) -> dict:
        """Detect the client properties here and now, as the worker does when it writes a record
        flagged for them: for debug output and previews, which have no worker."""
        if record.pop("props", False):
            from .properties import detected

            record["payload"]["meta"].update(self.client_properties(detected(self.decision.is_ci)))
        return record

    def build_record(self, activity, user_id, user_id_type, meta, event_at, category=None) -> dict | None:
        """The queue record ``track()`` would hand over (``callhome preview`` shows it); no I/O.

        None when telemetry is off (outside debug mode) or the activity is unusable.
        """
        if not self._tracking():
            return None
        problems: list = []
        try:
            name = clean_activity(activity, problems)
            extra = clean_meta(meta, problems)
            if category is not None:
                category = _category(category, problems)
                if category:
                    extra["category"] = category
        except Rejected as exc:
            self._note([str(exc)])
            self.counters.add("dropped.invalid")
            return None
        record = self._record(name, extra, coerce_event_at(event_at, time.time(), problems))
        user = clean_user(user_id, user_id_type, problems)
        if user:
            record["payload"]["user_id"], record["payload"]["user_id_type"] = user
        if problems:
            self._note(problems)
        return record

    def _record(self, activity: str, meta: dict, event_at: int, event_id: str | None = None) -> dict:
        """A usage record of this agent around ``meta`` (already clean)."""
        config = self.config
        payload = dict(self._static, activity_type=activity, event_id=event_id or new_event_id(), event_at=event_at)
        if config.domain:
            payload["domain"] = config.domain
        if config.ip_addr:
            payload["ip_addr"] = config.ip_addr
        meta.update(self._base_meta)
        payload["meta"] = meta
        return {"v": 1, "kind": "usage", "payload": payload}

    def _internal_record(self, activity: str, meta: dict, event_at: float, event_id: str | None = None) -> dict | None:
        """A session or exception record: the worker adds the client properties when it writes it."""
        config = self.config
        if config is None or not (self.decision.enabled or config.debug):
            return None
        record = self._record(activity, meta, int(event_at), event_id)
        record["props"] = True
        return record

    def client_properties(self, detected: dict) -> dict:
        """What rides in CALL_HOME, session and exception records, given the detected properties."""
        from .properties import product_fields

        return {**detected, **product_fields(self.config), **self.properties}

    # -- sessions ----------------------------------------------------------------------------------
    def _start_session(self, session_id: str, kind: str) -> str:
        self.sessions.start(session_id, kind, time.time())
        if self.decision.enabled and not self.config.debug:  # the worker journals it
            if self._thread is None:  # a forked child whose first call this is
                self._ensure_worker()
            elif not self.wake.is_set():
                self.wake.set()
        return session_id

    @_guarded
    def start_session(self, session_id: str) -> bool:
        """Open an explicit session (10–64 characters, unique); True when opened."""
        if not (self._tracking() and self.config.sessions):
            return False
        self._start_session(clean_session_id(session_id), "explicit")
        return True

    @_guarded
    def end_session(self, session_id: str) -> bool:
        """Close an explicit session: its record (activity ``session_activity``) is queued."""
        if not (self._tracking() and self.config.sessions):
            return False
        session_id = clean_session_id(session_id)
        kind, start = self.sessions.end(session_id)
        self.accept_session(session_id, kind, start, time.time(), "end")
        return True

    def session(self, session_id: str | None = None) -> "_SessionScope":
        """``with agent.session("id"):`` — an explicit session around a block (a random id if None)."""
        return _SessionScope(self, session_id)

    def accept_session(self, session_id: str, kind: str, start: float, end: float, closed_by: str) -> None:
        """Queue the record of an ended session (also the worker's, for a crashed process's ones)."""
        config = self.config
        if config is None:
            return
        meta = session_meta(session_id, kind, start, end, closed_by)
        if self.process_session and kind == "explicit":
            meta["process_session_id"] = self.process_session
        event_id = session_event_id(config.product_id, session_id, start)
        self._accept(self._internal_record(config.session_activity, meta, end, event_id))

    def _end_sessions(self) -> None:
        now = time.time()
        for session_id, kind, start in self.sessions.end_all():
            self.accept_session(session_id, kind, start, now, "exit")

    def _tracking(self) -> bool:
        config = self.config
        return config is not None and not self._closed and (self.decision.enabled or config.debug)

    # -- exceptions, properties, license -------------------------------------------------------------
    @_guarded
    def track_exception(self, exc: BaseException | None = None) -> str | None:
        """Queue an ``EXCEPTION`` record for ``exc`` (default: the one being handled)."""
        if _thread.get_ident() in OWN_THREADS:
            self.counters.add("dropped.recursion")
            return None
        if exc is None:
            exc = sys.exc_info()[1]
        if not isinstance(exc, BaseException):
            raise TypeError("track_exception() needs an exception, or to be called in an except block")
        return self._exception(exc, True)

    def _record_crash(self, exc: BaseException, tb) -> None:
        """The interpreter hooks' entry: an uncaught exception, recorded if capture is still on."""
        try:
            config = self.config
            if config is not None and config.capture_exceptions and _thread.get_ident() not in OWN_THREADS:
                if exc.__traceback__ is None and tb is not None:
                    exc = exc.with_traceback(tb)
                self._exception(exc, False)
        except Exception:
            self.counters.add("internal_errors")

    def _exception(self, exc: BaseException, handled: bool) -> str | None:
        if not self._tracking():
            return None
        from .exceptions import exception_meta

        meta = exception_meta(exc, handled, self.config.exception_messages)
        if self.process_session:
            meta["session_id"] = self.process_session
        return self._accept(self._internal_record(self.config.exception_activity, meta, time.time()))

    @_guarded
    def set_property(self, slot: int, value: object) -> bool:
        """Set custom property ``slot`` (1–20) for this run; None clears it. True when set."""
        from .properties import custom_key

        key = custom_key(slot)
        if value is None:
            self.properties.pop(key, None)
            return True
        problems: list = []
        self.properties[key] = clean_meta({key: value}, problems).get(key)
        if problems:
            self._note(problems)
        return True

    @_guarded
    def set_license(self, type: str | None = None, expired: bool | None = None, activated: bool | None = None,
                    blocked: bool | None = None, allowed: bool | None = None, key: str | None = None) -> bool:
        """The product's license, sent with the client properties; ``None`` leaves a value as it was.

        The key leaves the machine only as an HMAC-SHA256 keyed with ``license_secret``.
        """
        from .properties import license_fields

        if self.config is None:
            return False
        problems: list = []
        flags = {"expired": expired, "activated": activated, "blocked": blocked, "allowed": allowed}
        self.properties.update(license_fields(type, flags, key, self.config.license_secret, problems))
        if problems:
            self._note(problems)
        return True

    def _note(self, problems: list) -> None:
        """Count the host's mistakes; ``strict`` makes them errors, otherwise ``status()`` lists them."""
        if self._strict:
            raise ValueError("; ".join(problems))
        self.counters.add("coerced", len(problems))
        self._problems.extend(problems)

    def _accept(self, record: dict | None) -> str | None:
        if record is None:
            return None
        if self.config.debug or not self.decision.enabled:
            self._print(record)
            return record["payload"]["event_id"]
        if not self.buffer.put(record):
            self.counters.add("dropped.buffer_full")
            return None
        self.counters.add("accepted")
        if self._thread is None:
            self._ensure_worker()
        if not self.wake.is_set():
            self.wake.set()
        return record["payload"]["event_id"]

    def _print(self, record: dict) -> None:
        """Debug mode: show the request that would be made, on stderr, and send nothing."""
        import json

        why = "debug mode" if self.decision.enabled else self.decision.reason
        self.add_client_properties(record)
        request = {"method": "POST", "url": self.config.endpoint + "/api/product/" +
                   ("usage" if record["kind"] == "usage" else "aggregateusage"),
                   "headers": {"X-API-KEY": "***" if self.config.api_key else "(none)"},
                   "body": {"payload": record["payload"]}}
        sys.stderr.write(f"[callhome] (not sent: {why}) {json.dumps(request, sort_keys=True)}\n")

    # -- delivery --------------------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        import threading

        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run_worker, name="callhome-worker", daemon=True)
                self._thread.start()
        self._hook_exit()

    def _hook_exit(self) -> None:
        if not self._exit_hooked:
            self._exit_hooked = True
            atexit.register(_weak_call(self, "_at_exit"))

    def _run_worker(self) -> None:
        import threading

        from .worker import Worker  # the agent's only heavy imports, made on the worker's thread

        self._worker = Worker(self, threading.current_thread())
        self._worker_ready.set()
        self._worker.run()

    def _worker_within(self, timeout: float):
        """The Worker, waiting up to ``timeout`` for its thread to build it; None if not started."""
        if self._thread is None:
            return None
        if self._worker is None and not self._worker_ready.wait(timeout):
            from .worker import Worker  # the thread is slow to start (a loaded machine): act here

            return Worker(self, self._thread)
        return self._worker

    @_guarded
    def flush(self, timeout: float = 10.0) -> bool:
        """Deliver everything queued so far (and any backlog on disk); True if it all went."""
        if self.config is None or not self.decision.enabled or self.config.debug:
            return True
        deadline = time.monotonic() + timeout
        self._ensure_worker()
        worker = self._worker_within(timeout)
        return bool(worker.flush(max(deadline - time.monotonic(), 0)))

    @_guarded
    def shutdown(self, timeout: float = 1.0) -> None:
        """Flush within ``timeout``, persist what remains for the next process, stop the thread."""
        deadline = time.monotonic() + timeout
        self._end_sessions()
        worker = self._worker_within(timeout)
        if worker is not None:
            worker.flush(max(deadline - time.monotonic(), 0))
            worker.stop(max(deadline - time.monotonic(), 0))
        self._closed = True
        self._forget_worker()

    def refuse(self, decision: Decision) -> None:
        """The worker found telemetry off (a saved ``disable``, or no consent yet): keep nothing."""
        self.decision = decision
        self.counters.add("dropped.opted_out", len(self.buffer.drain()))

    def _at_exit(self) -> None:
        try:
            self._end_sessions()
            worker = self._worker_within(0) if self.config is not None else None
            if worker is not None:
                worker.stop(self.config.exit_timeout)
        except Exception:
            pass  # never a traceback at the host's exit

    def _before_fork(self) -> None:
        # A worker thread that is still importing its modules holds their import locks, which a
        # child would inherit held: its first use of them (at the latest its exit hook) would hang.
        thread = self._thread
        if thread is not None and thread.is_alive() and not self._worker_ready.is_set():
            self._worker_ready.wait(1.0)

    def _after_fork(self) -> None:
        # The parent owns the records it buffered and its threads are gone here: start clean.
        OWN_THREADS.clear()
        self.buffer = Buffer(self.buffer.maxlen)
        self.counter = None  # the parent merges its own counts
        self.counters = Counters()
        # the parent's sessions stay the parent's: a forked child (a pool worker) is part of its run
        self.sessions = Sessions()
        self.process_session = None
        self._lock = _thread.allocate_lock()
        self._forget_worker()

    def _forget_worker(self) -> None:
        import threading

        self.wake = threading.Event()
        #: Held while records taken from the buffer are being written: exit waits for it.
        self.persist_lock = threading.Lock()
        self._worker, self._thread = None, None
        self._worker_ready = threading.Event()

    # -- transparency ----------------------------------------------------------------------------
    @_guarded
    def notice_text(self) -> str:
        """The first-run notice, for hosts that show it themselves (e.g. in ``--help``)."""
        from ._fs import product_dir
        from .notice import notice_text

        config = self.config
        if config is None:
            return ""
        directory = product_dir(config.product_id, config.data_dir) if config.data_dir else None
        return notice_text(config, directory)

    @_guarded
    def status(self) -> dict:
        """What the agent is doing and why, without touching the disk (see ``docs/architecture.md``)."""
        config, worker = self.config, self._worker
        sender = worker.sender if worker else None
        dropped = self.counters.snapshot("dropped.")
        report = {
            "version": __version__,
            "product_id": config.product_id if config else None,
            "enabled": self.decision.enabled,
            "reason": self.decision.reason,
            "debug": bool(config and config.debug),
            "endpoint": config.endpoint if config else None,
            "api_key": "set" if config and config.api_key else "missing",
            "installation_id": worker.installation_id if worker else None,
            "disk": "memory-only: " + worker.disk_error if worker and worker.disk_error else "ok",
            "queue_dir": getattr(worker.queue, "dir", None) if worker else None,
            "state": sender.state if sender else "idle",
            "buffered": len(self.buffer),
            "counting": len(self.counter) if self.counter else 0,
            "sessions": len(self.sessions),
            "queued": worker.depth[0] if worker else 0,
            "accepted": self.counters.get("accepted"),
            "delivered": self.counters.get("delivered"),
            "rejected": self.counters.get("rejected"),
            "dropped": dropped,
            "dropped_total": sum(dropped.values()),
            "coerced": self.counters.get("coerced"),
            "internal_errors": self.counters.get("internal_errors"),
            "last_send": sender.last_send if sender else None,
            "problems": list(self._problems),
        }
        report["held"] = report["queued"] if report["state"].startswith("held") else 0
        return report


def _category(category: object, problems: list) -> str:
    """The cleaned category; an unusable one is left out (and counted), the event is still sent."""
    try:
        return clean_name(category, problems)
    except Rejected as exc:
        problems.append(f"{exc}; the event is sent without it")
        return ""


def _weak_call(obj: object, name: str):
    """A callback that does nothing once ``obj`` is gone (exit and fork hooks must not keep it alive)."""
    ref = weakref.ref(obj)

    def call() -> None:
        target = ref()
        if target is not None:
            getattr(target, name)()

    return call


class _SessionScope:
    """``with agent.session(...)``: opens on entry, closes on exit (also when the block raises)."""

    def __init__(self, agent: Agent, session_id: str | None) -> None:
        self.agent = agent
        self.session_id = new_event_id() if session_id is None else session_id
        self.started = False

    def __enter__(self) -> str:
        self.started = bool(self.agent.start_session(self.session_id))
        return self.session_id

    def __exit__(self, *exc_info: object) -> None:
        if self.started:  # a refused id (a duplicate, say) must not end the session that holds it
            self.agent.end_session(self.session_id)
