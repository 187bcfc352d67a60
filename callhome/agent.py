"""The agent: what the host calls. Builds records on the host's thread and hands them over.

Nothing here touches the disk, a lock or the network; the :class:`~callhome.worker.Worker` does.
Every public method is guarded: it returns normally whatever happens, except that ``strict=True``
turns the host's own mistakes (bad arguments) into ``ValueError`` while integrating.
"""

from __future__ import annotations

import _thread  # get_ident without threading, which init() imports when it needs it
import atexit
import os
import sys
import time
from _weakref import ref as _weak_ref  # the C type: the weakref module costs a host ~1 ms to import

from ._state import HostPort, HostState
from ._version import __version__
from .buffer import KEY_WEIGHT, OWN_THREADS, RAW_WEIGHT, RECORD_WEIGHT, Buffer, Counters, Waker
from .config import Config, resolve
from .optout import Decision, decide
from .payload import (
    Rejected,
    call_label,
    clean_activity,
    clean_category,
    clean_meta,
    clean_user,
    coerce_event_at,
    new_event_id,
    ready_ids,
    static_fields,
)
from .sessions import clean_session_id, session_event_id, session_meta

TYPE_CHECKING = False  # typing.TYPE_CHECKING, as mypy reads it, without importing typing (nor threading)
if TYPE_CHECKING:
    import threading
    from types import TracebackType
    from typing import Any, Callable, TypeVar

    from ._worker.worker import Worker
    from .aggregate import Counter

    _Method = TypeVar("_Method", bound=Callable[..., Any])

__all__ = ["Agent"]

#: How long a fork waits for the worker thread to finish its imports (normally milliseconds).
FORK_WAIT = 5.0
#: How long the exit hook waits for the worker thread to be built (normally milliseconds).
EXIT_WAIT = 1.0


_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def _raised_by_host(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc`` ran outside callhome (in an object the host passed)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and not os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE)


#: What a refused call returns, made fresh, by the method's declared return type: "not done"
#: (False, an empty string or dict) where the type has no None for it.
_REFUSED: dict[object, Callable[[], object]] = {"bool": bool, bool: bool, "str": str, "dict[str, Any]": dict}


def _guarded(method: _Method) -> _Method:
    """Never let an error reach the host, except a ValueError/TypeError it asked for with ``strict``.

    A refused call returns what "not done" means for the method: False for those returning a
    bool, an empty string or dict for those returning one, None for the others.
    """
    refused = _REFUSED.get(method.__annotations__.get("return"))

    def guarded(self: Agent, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (ValueError, TypeError, OverflowError, RecursionError):  # a value no call could take
            if self._strict:
                raise
            self.state.counters.add("dropped.invalid")
        except Exception as exc:
            # the host's own object fought back (its __str__, __float__, __hash__ raising): a
            # refused call; an error raised in callhome's own code is ours
            self.state.counters.add("dropped.invalid" if _raised_by_host(exc) else "internal_errors")
        return refused() if refused is not None else None

    guarded.__name__, guarded.__qualname__, guarded.__doc__ = method.__name__, method.__qualname__, method.__doc__
    # as functools.wraps would (not imported: it costs the host's import)
    guarded.__wrapped__ = method  # type: ignore[attr-defined]
    # the method's own signature: a refused call returns a value of its return type (see _REFUSED)
    return guarded  # type: ignore[return-value]


class Agent:
    """One product's telemetry: ``init()``, ``track()``, ``call_home()``, ``flush()``, ``status()``.

    The module-level functions of :mod:`callhome` use a default instance; a plugin that needs
    its own product id can create another.
    """

    # set by _forget_worker(): the worker, once its thread built it; the thread; set once it did
    _worker: Worker | None
    _thread: threading.Thread | None
    _worker_ready: threading.Event
    # set by _set_handoff(), read by track() only while _raw (the waker is then not None)
    _buffer: Buffer
    _waker: Waker | None

    def __init__(self, product_id: str | None = None, **options: object) -> None:
        self.state = HostState()
        self._strict = bool(options.get("strict"))
        self.process_session: str | None = None
        self._hooks_installed = False
        self._lock = _thread.allocate_lock()
        self._forget_worker()
        self._exit_hooked = False
        self._closed = False
        #: set once the exit hook has run: later calls are refused and counted, not accepted and lost
        self._exited = False
        #: ``track()`` hands the raw call over; ``_off``: it is refused (see :meth:`_set_handoff`)
        self._raw, self._off = False, True
        #: activity names ``count()`` has cleaned, as the host passed them → as counted
        self._counted: dict[str, str] = {}
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(before=_weak_call(self, "_before_fork"),
                                after_in_child=_weak_call(self, "_after_fork"))
        if product_id is not None:
            self.init(product_id=product_id, **options)

    @property
    def config(self) -> Config | None:
        return self.state.config

    @property
    def decision(self) -> Decision:
        return self.state.decision

    @property
    def counters(self) -> Counters:
        return self.state.counters

    @property
    def buffer(self) -> Buffer:
        return self.state.buffer

    # -- configuration -------------------------------------------------------------------------
    @_guarded
    def init(self, product_id: str | None = None, **options: object) -> None:
        """Configure (or reconfigure) the agent; see ``docs/configuration.md`` for every option.

        Opt-outs are checked first: an opted-out agent creates no thread, file or socket.
        :raises ValueError: only with ``strict=True``, for a bad argument.
        """
        self._strict = bool(options.get("strict"))
        config = resolve(dict(options, product_id=product_id))
        old = self.state.config
        if old is not None and (old.product_id, old.data_dir) != (config.product_id, config.data_dir):
            self._leave_product()
        decision = decide(config)
        with self._lock:
            self.state.config, self.state.decision = config, decision
            self.state.static = static_fields(config)
            self.state.base_meta = {"callhome_version": __version__}
            if config.product_version:
                self.state.base_meta["product_version"] = config.product_version
            if decision.is_ci:
                self.state.base_meta["is_ci"] = True
            self.state.buffer.resize(config.max_buffer, config.max_buffer_bytes)
            self.state.ephemeral_id = decision.is_ci
            self._closed = False
            self._set_handoff()
        self.state.problems.extend(config.problems)
        if config.held_for and decision.enabled and not config.debug:
            self.state.problems.append(f"events are kept on disk, not sent: {config.held_for}")
        if config.problems:  # a misspelt option, a bad value: said once per init(), to a logger the host may show
            from ._log import logger

            for problem in config.problems:
                logger().warning("callhome: %s", problem)
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
    def track(self, activity: str, user_id: str | None = None, user_id_type: str | None = None,
              meta: dict[str, Any] | None = None, event_at: object = None, category: str | None = None) -> str | None:
        """Queue one event for ``/api/product/usage``; returns its ``event_id`` (None if not queued).

        Cheap and non-blocking. In the default mode the raw call (with a shallow copy of
        ``meta``) is handed to the worker, which cleans and encodes it; debug and strict modes
        check it here, so a mistake is reported at the line that made it. ``category`` groups
        events in reports (``meta.category``).
        """
        if self._raw:
            buffer = self._buffer
            if buffer.bytes >= buffer.limit and buffer.full():
                self.state.counters.add("dropped.buffer_full")
                return None
            weight = RAW_WEIGHT
            if meta is not None:  # weighed here, inline (the hottest path): what the call keeps alive
                if type(meta) is not dict:
                    return self._track(activity, user_id, user_id_type, meta, event_at, category)
                weight += KEY_WEIGHT * len(meta)  # a key, a number: a flat rate; a string: its length
                for key in meta:
                    if type(meta[key]) is str:
                        weight += len(meta[key])
            if _ident() not in OWN_THREADS:
                if ready_ids:  # made ahead by the worker
                    try:
                        event_id = _take_id()
                    except IndexError:  # another thread took the last one
                        event_id = new_event_id()
                else:
                    event_id = new_event_id()
                buffer.extend((weight, activity, user_id, user_id_type, None if meta is None else meta.copy(),
                               event_at, category, _now(), event_id))  # RAW_FIELDS, in order
                buffer.bytes += weight  # accepted: counted by the buffer (Buffer.accepted)
                if self._waker.sleeping:  # type: ignore[union-attr]  # set whenever _raw is
                    self._waker.poke()  # type: ignore[union-attr]
                return event_id
        elif self._off:  # not initialised, opted out or shut down: refused at once
            return None
        return self._track(activity, user_id, user_id_type, meta, event_at, category)

    @_guarded
    def _track(self, activity: object, user_id: object, user_id_type: object, meta: object, event_at: object,
               category: object) -> str | None:
        """``track()`` checked on the host's thread: debug, strict, per-activity modes, an
        activity that is not a ``str`` or a meta that is not a ``dict``, a call from callhome's
        own threads, the worker not started."""
        if _thread.get_ident() in OWN_THREADS:
            self.state.counters.add("dropped.recursion")
            return None
        record = self.build_record(activity, user_id, user_id_type, meta, event_at, category)
        if record is None:
            return None
        name = record["payload"]["activity_type"]
        mode = self.state.cfg.activity_modes.get(name)
        if mode in ("aggregate", "both"):
            self.count(name)
        return None if mode == "aggregate" else self._accept(record)

    def _set_handoff(self) -> None:
        """Whether ``track()`` may hand the raw call over: the default mode, sending, a worker
        started, no per-activity modes (which need the cleaned name on the host)."""
        config, state = self.state.config, self.state
        self._buffer, self._waker = state.buffer, state.waker
        self._off = not self._tracking()
        self._raw = bool(config is not None and state.decision.enabled and not (config.debug or config.strict)
                         and not config.activity_modes and not (self._closed or self._exited)
                         and self._thread is not None and state.waker is not None)

    def count(self, activity: str, n: int = 1, meta: dict[str, Any] | None = None) -> bool:
        """Add ``n`` to ``activity``'s count in the current window, sent as one aggregate record.

        Cheap and non-blocking (an in-memory counter). ``meta`` is attached to the records this
        process sends for ``activity``: use it for properties that do not change per call.
        :return: True when counted.
        """
        if self._raw and meta is None and type(activity) is str and type(n) is int:
            name = self._counted.get(activity)  # seen and cleaned before: only the sum is left to do
            if name is not None and 0 < n < 1 << 53 and _thread.get_ident() not in OWN_THREADS:
                return self._count(name, n)
        return False if self._off else self._count_checked(activity, n, meta)

    @_guarded
    def _count_checked(self, activity: object, n: object, meta: object) -> bool:
        """``count()`` with its arguments checked (a name not seen yet, ``meta``, a refusal)."""
        if _thread.get_ident() in OWN_THREADS:
            self.state.counters.add("dropped.recursion")
            return False
        if not self._tracking():
            return False
        config = self.state.cfg
        problems: list[str] = []
        try:
            name = clean_activity(activity, problems)
        except Rejected as exc:
            self._note([str(exc)])
            self.state.counters.add("dropped.invalid")
            return False
        if type(n) is not int or not 1 <= n < 2 ** 53:
            self._note([f"count n={n!r} is not a whole number >= 1; not counted"])
            self.state.counters.add("dropped.invalid")
            return False
        if meta is not None:
            if name in self.state.count_meta or len(self.state.count_meta) < MAX_COUNTED:
                self.state.count_meta[name] = clean_meta(meta, problems)
            else:  # bounded: a window sends at most 100 activities anyway
                problems.append(f"count meta of more than {MAX_COUNTED} activities is not kept; "
                                f"{name!r} counted without it")
        if problems:
            self._note(problems)
        if config.debug or not self.state.decision.enabled:
            sys.stderr.write(f"[callhome] (not sent: {self.state.decision.reason or 'debug mode'}) count {name} +{n}\n")
            return True
        if type(activity) is str:
            if len(self._counted) >= MAX_COUNTED:
                self._counted.clear()
            self._counted[activity] = name
        return self._count(name, n)

    def _count(self, name: str, n: int) -> bool:
        """Add to the count of a cleaned ``name`` (``n`` checked)."""
        counter = self.state.counter or self._new_counter()
        if not counter.add_clean(name, n, time.time()):
            self.state.counters.add("dropped.aggregate_cap")
            return False
        if self._thread is None:
            self._ensure_worker()
        return True

    def _new_counter(self) -> Counter:
        from .aggregate import Counter

        with self._lock:
            if self.state.counter is None:
                self.state.counter = Counter(self.state.cfg.aggregate_interval)
            return self.state.counter

    @_guarded
    def call_home(self, meta: dict[str, Any] | None = None) -> str | None:
        """Queue a ``CALL_HOME`` event (the key is ``call_home_activity``) now."""
        if _thread.get_ident() in OWN_THREADS:
            self.state.counters.add("dropped.recursion")
            return None
        return self._accept(self.call_home_record(meta))

    def queue_call_home(self, meta: dict[str, Any] | None) -> str | None:
        """The worker's automatic CALL_HOME (also queued by the exit hook of a short run)."""
        return self._accept(self.call_home_record(meta), internal=True)

    def call_home_record(self, meta: dict[str, Any] | None) -> dict[str, Any] | None:
        """The CALL_HOME record (``callhome preview`` shows the automatic one); no I/O."""
        activity = self.state.config.call_home_activity if self.state.config else "CALL_HOME"
        record = self.build_record(activity, None, None, meta, None)
        if record is not None:
            record["payload"]["meta"]["record_type"] = "call_home"
            record["props"] = True
        return record

    def add_client_properties(self, record: dict[str, Any]) -> dict[str, Any]:
        """Detect the client properties here and now, as the worker does when it writes a record
        flagged for them: for debug output and previews, which have no worker."""
        if record.pop("props", False):
            from .properties import detected

            record["payload"]["meta"].update(self.client_properties(detected(self.state.decision.is_ci)))
        return record

    def build_record(self, activity: object, user_id: object, user_id_type: object, meta: object, event_at: object,
                     category: object = None) -> dict[str, Any] | None:
        """The queue record ``track()`` would hand over (``callhome preview`` shows it); no I/O.

        None when telemetry is off (outside debug mode) or the activity is unusable.
        """
        if not self._tracking():
            return None
        problems: list[str] = []
        try:
            name = clean_activity(activity, problems)
            extra = clean_meta(meta, problems)
            if category is not None:
                category = clean_category(category, problems)
                if category:
                    extra["category"] = category
        except Rejected as exc:
            self._note([f"{call_label(activity)} dropped: {exc}"])
            self.state.counters.add("dropped.invalid")
            return None
        record = self._record(name, extra, coerce_event_at(event_at, time.time(), problems))
        user = clean_user(user_id, user_id_type, problems)
        if user:
            record["payload"]["user_id"], record["payload"]["user_id_type"] = user
        if problems:
            self._note([f"{call_label(activity)}: {problem}" for problem in problems])
        return record

    def _record(self, activity: str, meta: dict[str, Any], event_at: int,
                event_id: str | None = None) -> dict[str, Any]:
        """A usage record of this agent around ``meta`` (already clean)."""
        config = self.state.cfg
        payload: dict[str, Any] = dict(self.state.static, activity_type=activity,
                                       event_id=event_id or new_event_id(), event_at=event_at)
        if config.domain:
            payload["domain"] = config.domain
        if config.ip_addr:
            payload["ip_addr"] = config.ip_addr
        meta.update(self.state.base_meta)
        payload["meta"] = meta
        return {"v": 1, "kind": "usage", "payload": payload}

    def _internal_record(self, activity: str, meta: dict[str, Any], event_at: float,
                         event_id: str | None = None) -> dict[str, Any] | None:
        """A session or exception record: the worker adds the client properties when it writes it."""
        config = self.state.config
        if config is None or not (self.state.decision.enabled or config.debug):
            return None
        record = self._record(activity, meta, int(event_at), event_id)
        record["props"] = True
        return record

    def client_properties(self, detected: dict[str, Any]) -> dict[str, Any]:
        """What rides in CALL_HOME, session and exception records, given the detected properties."""
        from .properties import product_fields

        return {**detected, **product_fields(self.state.cfg), **self.state.properties}

    # -- sessions ----------------------------------------------------------------------------------
    def _start_session(self, session_id: str, kind: str) -> str:
        self.state.sessions.start(session_id, kind, time.time())
        if self.state.decision.enabled and not self.state.cfg.debug:  # the worker journals it
            waker = self.state.waker
            if self._thread is None or waker is None:  # a forked child whose first call this is
                self._ensure_worker()
            else:
                waker.poke()
        return session_id

    @_guarded
    def start_session(self, session_id: str) -> bool:
        """Open an explicit session (10–64 characters, unique); True when opened."""
        if not (self._tracking() and self.state.cfg.sessions):
            return False
        self._start_session(clean_session_id(session_id), "explicit")
        return True

    @_guarded
    def end_session(self, session_id: str) -> bool:
        """Close an explicit session: its record (activity ``session_activity``) is queued."""
        if not (self._tracking() and self.state.cfg.sessions):
            return False
        session_id = clean_session_id(session_id)
        kind, start = self.state.sessions.end(session_id)
        self.accept_session(session_id, kind, start, time.time(), "end", internal=False)
        return True

    def session(self, session_id: str | None = None) -> _SessionScope:
        """``with agent.session("id"):`` — an explicit session around a block (a random id if None)."""
        return _SessionScope(self, session_id)

    def accept_session(self, session_id: str, kind: str, start: float, end: float, closed_by: str,
                       internal: bool = True) -> None:
        """Queue the record of an ended session (also the worker's, for a crashed process's ones)."""
        config = self.state.config
        if config is None:
            return
        meta = session_meta(session_id, kind, start, end, closed_by)
        if self.process_session and kind == "explicit":
            meta["process_session_id"] = self.process_session
        event_id = session_event_id(config.product_id, session_id, start)
        self._accept(self._internal_record(config.session_activity, meta, end, event_id), internal)

    def _end_sessions(self) -> None:
        now = time.time()
        for session_id, kind, start in self.state.sessions.end_all():
            self.accept_session(session_id, kind, start, now, "exit")

    def _tracking(self) -> bool:
        config = self.state.config
        return config is not None and not self._closed and (self.state.decision.enabled or config.debug)

    # -- exceptions, properties, license -------------------------------------------------------------
    @_guarded
    def track_exception(self, exc: BaseException | None = None) -> str | None:
        """Queue an ``EXCEPTION`` record for ``exc`` (default: the one being handled)."""
        if _thread.get_ident() in OWN_THREADS:
            self.state.counters.add("dropped.recursion")
            return None
        if exc is None:
            exc = sys.exc_info()[1]
        if not isinstance(exc, BaseException):
            raise TypeError("track_exception() needs an exception, or to be called in an except block")
        return self._exception(exc, True)

    def _record_crash(self, exc: BaseException, tb: TracebackType | None) -> None:
        """The interpreter hooks' entry: an uncaught exception, recorded if capture is still on."""
        try:
            config = self.state.config
            if config is not None and config.capture_exceptions and _thread.get_ident() not in OWN_THREADS:
                if exc.__traceback__ is None and tb is not None:
                    exc = exc.with_traceback(tb)
                self._exception(exc, False)
        except Exception:
            self.state.counters.add("internal_errors")

    def _exception(self, exc: BaseException, handled: bool) -> str | None:
        if not self._tracking():
            return None
        from .exceptions import exception_meta

        config = self.state.cfg
        meta = exception_meta(exc, handled, config.exception_messages)
        if self.process_session:
            meta["session_id"] = self.process_session
        return self._accept(self._internal_record(config.exception_activity, meta, time.time()))

    @_guarded
    def set_property(self, slot: int, value: object) -> bool:
        """Set custom property ``slot`` (1–20) for this run; None clears it. True when set."""
        from .properties import custom_key

        key = custom_key(slot)
        if value is None:
            self.state.properties.pop(key, None)
            return True
        problems: list[str] = []
        self.state.properties[key] = clean_meta({key: value}, problems).get(key)
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

        if self.state.config is None:
            return False
        problems: list[str] = []
        flags = {"expired": expired, "activated": activated, "blocked": blocked, "allowed": allowed}
        self.state.properties.update(license_fields(type, flags, key, self.state.config.license_secret, problems))
        if problems:
            self._note(problems)
        return True

    def _note(self, problems: list[str]) -> None:
        """Count the host's mistakes; ``strict`` makes them errors, otherwise ``status()`` lists them."""
        if self._strict:
            raise ValueError("; ".join(problems))
        self.state.counters.add("coerced", len(problems))
        self.state.problems.extend(problems)

    def _accept(self, record: dict[str, Any] | None, internal: bool = False) -> str | None:
        """Hand a record to the worker: a ``deque.append`` and a lock-free count, nothing more."""
        if record is None:
            return None
        state = self.state
        if self._exited and not internal:
            state.counters.add("dropped.after_exit")
            return None
        event_id: str = record["payload"]["event_id"]
        if state.cfg.debug or not state.decision.enabled:
            self._print(record)
            return event_id
        if not state.buffer.put(record, RECORD_WEIGHT):
            state.counters.add("dropped.buffer_full")
            return None
        state.counters.add("accepted")
        waker = state.waker
        if self._thread is None or waker is None:
            self._ensure_worker()
        else:
            waker.poke()
        return event_id

    def _print(self, record: dict[str, Any]) -> None:
        """Debug mode: show the request that would be made, on stderr, and send nothing."""
        import json

        why = "debug mode" if self.state.decision.enabled else self.state.decision.reason
        self.add_client_properties(record)
        config = self.state.cfg
        request = {"method": "POST", "url": config.endpoint + "/api/product/" +
                   ("usage" if record["kind"] == "usage" else "aggregateusage"),
                   "headers": {"X-API-KEY": "***" if config.api_key else "(none)"},
                   "body": {"payload": record["payload"]}}
        sys.stderr.write(f"[callhome] (not sent: {why}) {json.dumps(request, sort_keys=True)}\n")

    # -- delivery --------------------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        import threading

        # not blocking: a signal handler's track() while init() holds the lock must not wait
        if not self._lock.acquire(False):
            return
        try:
            if self._thread is None:
                if self.state.waker is None:
                    self.state.waker = Waker()
                self._thread = threading.Thread(target=self._run_worker, name="callhome-worker", daemon=True)
                self._thread.start()
                self._set_handoff()
        finally:
            self._lock.release()
        self._hook_exit()

    def _hook_exit(self) -> None:
        if not self._exit_hooked:
            self._exit_hooked = True
            atexit.register(_weak_call(self, "_at_exit"))

    def _run_worker(self) -> None:
        import threading

        try:
            # the agent's only heavy imports, made on the worker's thread, all before it is ready
            from ._worker.worker import Worker, preload

            preload(self.state.cfg)
            worker = self._worker = Worker(self.state, self._port(), threading.current_thread())
        finally:
            self._worker_ready.set()
        if not self._exited:  # a run so short that its exit hook does the worker's job itself
            worker.run()

    def _port(self) -> HostPort:
        return HostPort(self.queue_call_home, self.accept_session, self.refuse, self.client_properties)

    def _worker_within(self, timeout: float) -> Worker | None:
        """The Worker, waiting up to ``timeout`` for its thread to build it; None if not started."""
        if self._thread is None:
            return None
        if self._worker is None and not self._worker_ready.wait(timeout):
            from ._worker.worker import Worker  # the thread is slow to start (a loaded machine): act here

            return Worker(self.state, self._port(), self._thread)
        return self._worker

    @_guarded
    def flush(self, timeout: float = 10.0) -> bool:
        """Deliver everything queued so far (and any backlog on disk); True if it all went."""
        if self.state.config is None or not self.state.decision.enabled or self.state.config.debug:
            return True
        deadline = time.monotonic() + timeout
        self._ensure_worker()
        worker = self._worker_within(timeout)  # None: another thread is starting it right now
        return bool(worker is not None and worker.flush(max(deadline - time.monotonic(), 0)))

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
        self._set_handoff()

    def refuse(self, decision: Decision) -> None:
        """The worker found telemetry off (a saved ``disable``, or no consent yet): keep nothing."""
        self.state.decision = decision
        self._set_handoff()
        self.state.counters.add("dropped.opted_out", len(self.state.buffer.drain()))

    def local_state_changed(self, directory: str, change: str) -> None:
        """A ``telemetry`` verb changed ``directory`` in this very process (a click or typer
        group's callback called ``init()`` before the verb ran): ``disabled`` and ``forgotten``
        stop this agent as an opt-out does, ``id_reset`` gives it the new id. Either way what it
        buffered, which carries the id just deleted, is dropped and counted."""
        config = self.state.config
        if config is None or not _same_directory(directory, config):
            return
        worker = self._worker_within(EXIT_WAIT)
        if change == "id_reset":
            if worker is not None:
                worker.take_new_id()
            return
        decision = Decision(False, f"{change} by the telemetry command in this process")
        if worker is not None:
            worker.forsake(decision)
        else:
            self.refuse(decision)

    def _at_exit(self) -> None:
        try:
            self._end_sessions()
            self._exited = True
            self._set_handoff()
            # the thread's own Worker, once built (milliseconds): a second one built here would
            # leave records the thread had taken in an open batch nobody publishes
            worker = self._worker_within(EXIT_WAIT) if self.state.config is not None else None
            if worker is not None:
                worker.stop(self.state.cfg.exit_timeout, exiting=True)
        except Exception:
            pass  # never a traceback at the host's exit

    def _before_fork(self) -> None:
        # A worker thread that is still importing its modules holds their import locks, which a
        # child would inherit held: its first use of them (at the latest its exit hook) would hang.
        thread = self._thread
        if thread is not None and thread.is_alive() and not self._worker_ready.is_set():
            self._worker_ready.wait(FORK_WAIT)

    def _after_fork(self) -> None:
        # The parent owns the records it buffered, its threads are gone here and its pipe is its
        # own: start clean, keeping only the configuration.
        OWN_THREADS.clear()
        old = self.state
        if old.waker is not None:
            old.waker.close()
        state = self.state = HostState(old.buffer.maxlen, old.buffer.max_bytes)
        state.config, state.decision = old.config, old.decision
        state.static, state.base_meta = old.static, old.base_meta
        state.ephemeral_id, state.properties, state.count_meta = old.ephemeral_id, old.properties, old.count_meta
        # the parent's counts and sessions stay the parent's: a forked child (a pool worker) is part of its run
        self.process_session = None
        self._lock = _thread.allocate_lock()
        self._forget_worker()
        self._set_handoff()  # until the child's first call starts its worker
        if old.config is not None and (old.decision.enabled and not old.config.debug):
            _finalize_with_multiprocessing(self)

    def _leave_product(self) -> None:
        """``init()`` for another product or ``data_dir``: everything per product switches. The
        first product's worker saves what it holds under that product (its own queue, id and
        choices) and stops; the new one starts from a clean state, so nothing of one product is
        sent as, or despite the choices of, the other."""
        self._end_sessions()
        worker, thread = self._worker_within(EXIT_WAIT), self._thread
        if worker is not None:
            worker.stop(0)
        if thread is not None:
            thread.join(EXIT_WAIT)
        old = self.state
        if old.waker is not None and not (thread is not None and thread.is_alive()):
            old.waker.close()
        self.state = HostState(old.buffer.maxlen, old.buffer.max_bytes)
        self.process_session = None
        self._counted = {}
        self._forget_worker()
        self._set_handoff()

    def _forget_worker(self) -> None:
        import threading

        self._worker, self._thread = None, None
        self._worker_ready = threading.Event()

    # -- transparency ----------------------------------------------------------------------------
    @_guarded
    def notice_text(self) -> str:
        """The first-run notice, for hosts that show it themselves (e.g. in ``--help``)."""
        from ._fs import product_dir
        from .notice import notice_text

        config = self.state.config
        if config is None:
            return ""
        directory = product_dir(config.product_id, config.data_dir) if config.data_dir else None
        return notice_text(config, directory)

    @_guarded
    def status(self) -> dict[str, Any]:
        """What the agent is doing and why, without touching the disk (see ``docs/architecture.md``).

        Merges two snapshots: this process's counters, and the worker's (queue, sender), whose
        counts include what the product's sender process did since this process started.
        """
        config, state, worker = self.state.config, self.state, self._worker
        seen = worker.snapshot() if worker else {}
        counts = worker.counts() if worker else state.counters.snapshot()
        dropped = {k[len("dropped."):]: v for k, v in counts.items() if k.startswith("dropped.")}
        report: dict[str, Any] = {
            "version": __version__,
            "product_id": config.product_id if config else None,
            "enabled": state.decision.enabled,
            "reason": state.decision.reason,
            "debug": bool(config and config.debug),
            "endpoint": config.endpoint if config else None,
            "api_key": "set" if config and config.api_key else "missing",
            "installation_id": seen.get("installation_id"),
            "disk": seen.get("disk", "ok"),
            "queue_dir": seen.get("queue_dir"),
            "state": seen.get("state", "idle"),
            "sender": seen.get("sender"),
            "buffered": len(state.buffer),
            "counting": len(state.counter) if state.counter else 0,
            "sessions": len(state.sessions),
            "queued": seen.get("queued", 0),
            "accepted": counts.get("accepted", 0) + state.buffer.accepted(),
            "delivered": counts.get("delivered", 0),
            "rejected": counts.get("rejected", 0),
            "dropped": dropped,
            "dropped_total": sum(dropped.values()),
            "coerced": counts.get("coerced", 0),
            "internal_errors": counts.get("internal_errors", 0),
            "last_send": seen.get("last_send"),
            "problems": list(self.state.problems),
        }
        report["held"] = report["queued"] if report["state"].startswith("held") else 0
        return report


def _same_directory(directory: str, config: Config) -> bool:
    from ._fs import product_dir

    try:
        return os.path.realpath(directory) == os.path.realpath(product_dir(config.product_id, config.data_dir))
    except Exception:  # no home directory at all: this agent has no directory to share
        return False


def _finalize_with_multiprocessing(agent: Agent) -> None:
    """A ``multiprocessing`` child ends with ``os._exit`` and skips ``atexit``; its own exit
    functions run, so the child's records are saved there. The finaliser is registered from
    multiprocessing's own after-fork step, which runs after it clears the parent's finalisers."""
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util.register_after_fork(agent, _finalize_at_exit)


def _finalize_at_exit(agent: Agent) -> None:
    import multiprocessing.util

    multiprocessing.util.Finalize(None, _weak_call(agent, "_at_exit"), exitpriority=-100)


_now, _ident, _take_id = time.time, _thread.get_ident, ready_ids.popleft
#: Activity names whose cleaned form (and whose meta) ``count()`` keeps: a product has tens; a bound all the same.
MAX_COUNTED = 1024


def _weak_call(obj: object, name: str) -> Callable[[], None]:
    """A callback that does nothing once ``obj`` is gone (exit and fork hooks must not keep it alive)."""
    ref = _weak_ref(obj)

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
