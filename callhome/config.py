"""Every option of ``callhome.init()``, its environment variable, and how it is resolved.

Resolution is pure: ``resolve(kwargs, environ)`` returns a frozen :class:`Config`. A host's
argument wins over the environment, except for the options an end user must control (opt-outs,
``debug``), which ``optout`` reads. Bad environment values fall back to the default (an end user
must never be able to crash the host); bad arguments raise ``ValueError`` only under ``strict``.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: init() runs on the host's thread
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

__all__ = ["DEFAULT_ENDPOINT", "ENV", "Config", "env_flag", "resolve", "unknown_options"]

DEFAULT_ENDPOINT = "https://ingest.reo.dev"

#: Environment variables read by :func:`resolve`, with the option each one sets.
ENV = {
    "CALLHOME_ENDPOINT": "endpoint",
    "CALLHOME_API_KEY": "api_key",
    "REO_API_KEY": "api_key",
    "CALLHOME_ENVIRONMENT": "environment",
    "CALLHOME_DOMAIN": "domain",
    "CALLHOME_IP_ADDR": "ip_addr",
    "CALLHOME_DIR": "data_dir",
    "CALLHOME_FLUSH_INTERVAL": "flush_interval",
    "CALLHOME_CALL_HOME_INTERVAL": "call_home_interval",
    "CALLHOME_TIMEOUT": "timeout",
    "CALLHOME_RELAY": "relay",
    "CALLHOME_AGGREGATE_INTERVAL": "aggregate_interval",
    "CALLHOME_HEARTBEAT_INTERVAL": "heartbeat_interval",
    "CALLHOME_SENDER": "sender",
    "CALLHOME_SENDER_IDLE": "sender_idle_timeout",
}

_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


class Config:
    """The resolved settings of one agent. Immutable: ``init()`` again builds a new one."""

    __slots__ = (
        "product_id", "api_key", "endpoint", "environment", "source", "domain", "ip_addr",
        "relay", "product_version", "product_build", "product_edition", "product_language",
        "sessions", "session_activity", "heartbeat_interval", "exception_activity",
        "capture_exceptions", "exception_messages", "license_secret", "data_dir", "flush_interval",
        "call_home_interval", "call_home_activity", "timeout", "exit_timeout", "debug", "strict", "enabled",
        "send_in_ci", "env_prefix", "optout_env", "consent", "cli_command", "aggregate_interval",
        "activity_modes", "max_buffer", "max_buffer_bytes", "max_queue_events",
        "max_queue_bytes", "max_age", "max_attempts", "max_event_bytes", "fsync",
        "sender", "sender_idle_timeout", "sender_lifetime", "problems", "endpoint_refused",
    )

    product_id: str
    api_key: str | None
    endpoint: str
    environment: str
    source: str
    domain: str | None
    ip_addr: str | None
    relay: bool
    product_version: str | None
    product_build: str | None
    product_edition: str | None
    product_language: str | None
    sessions: bool
    session_activity: str
    heartbeat_interval: float
    exception_activity: str
    capture_exceptions: bool
    exception_messages: bool
    license_secret: str | None
    data_dir: str | None
    flush_interval: float
    call_home_interval: float
    call_home_activity: str
    timeout: float
    exit_timeout: float
    debug: bool
    strict: bool
    enabled: bool
    send_in_ci: bool
    env_prefix: str | None
    optout_env: tuple[str, ...]
    consent: str
    cli_command: str | None
    aggregate_interval: float
    activity_modes: dict[str, str]
    max_buffer: int
    max_buffer_bytes: int
    max_queue_events: int
    max_queue_bytes: int
    max_age: float
    max_attempts: int
    max_event_bytes: int
    fsync: bool
    sender: str
    sender_idle_timeout: float
    sender_lifetime: float
    #: what was wrong with the arguments and the environment (ignored values, unknown options)
    problems: list[str]
    #: why nothing is sent: the endpoint that applies was refused (None: it was not)
    endpoint_refused: str | None

    def __init__(self, **values: object) -> None:
        for name in self.__slots__:
            object.__setattr__(self, name, values[name])

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Config is immutable; call init() again to change it")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Config is immutable; call init() again to change it")

    def to_dict(self) -> dict[str, Any]:
        """Every field, for the sender process (which gets it over a pipe: it holds the key)."""
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """The inverse of :meth:`to_dict` after a JSON round trip. :raises KeyError, TypeError: when
        ``values`` is not a whole configuration."""
        values = dict(values)
        values["optout_env"] = tuple(values["optout_env"])
        return cls(**values)

    def __repr__(self) -> str:
        shown = {n: getattr(self, n) for n in self.__slots__ if n not in ("api_key", "license_secret")}
        shown["api_key"] = "***" if self.api_key else None
        shown["license_secret"] = "***" if self.license_secret else None
        return f"Config({shown})"

    @property
    def held_for(self) -> str | None:
        """Why records wait on disk instead of being sent (``status()``: ``held: <why>``): Reo needs
        an ``ip_addr`` or ``domain`` and the API key. None when they can go, or when a relay,
        which keeps the key and adds the identity, receives them."""
        if self.relay:
            return None
        if not (self.domain or self.ip_addr):
            return "no ip_addr or domain configured"
        if not self.api_key:
            return "no api_key configured (CALLHOME_API_KEY or REO_API_KEY)"
        return None


#: option → (default, environment variables, parser). ``None`` parser means "a string".
_OPTIONS: dict[str, tuple[object, tuple[str, ...], str | None]] = {
    "api_key": (None, ("CALLHOME_API_KEY", "REO_API_KEY"), None),
    "endpoint": (DEFAULT_ENDPOINT, ("CALLHOME_ENDPOINT",), "endpoint"),
    "environment": ("PRODUCTION", ("CALLHOME_ENVIRONMENT",), None),
    "source": ("TELEMETRY", (), "source"),
    "domain": (None, ("CALLHOME_DOMAIN",), "domain"),
    "ip_addr": (None, ("CALLHOME_IP_ADDR",), "ip"),
    "relay": (False, ("CALLHOME_RELAY",), "bool"),
    "product_version": (None, (), None),
    "product_build": (None, (), None),
    "product_edition": (None, (), None),
    "product_language": (None, (), None),
    "sessions": (True, (), "bool"),
    "session_activity": ("SESSION", (), None),
    "heartbeat_interval": (300.0, ("CALLHOME_HEARTBEAT_INTERVAL",), "interval"),
    "exception_activity": ("EXCEPTION", (), None),
    "capture_exceptions": (False, (), "bool"),
    "exception_messages": (False, (), "bool"),
    "license_secret": (None, (), None),
    "data_dir": (None, ("CALLHOME_DIR",), None),
    "flush_interval": (5.0, ("CALLHOME_FLUSH_INTERVAL",), "seconds"),
    "call_home_interval": (86400.0, ("CALLHOME_CALL_HOME_INTERVAL",), "seconds"),
    "call_home_activity": ("CALL_HOME", (), None),
    "timeout": (5.0, ("CALLHOME_TIMEOUT",), "seconds"),
    "exit_timeout": (0.05, (), "seconds"),
    "debug": (False, (), "bool"),
    "strict": (False, (), "bool"),
    "enabled": (True, (), "bool"),
    "send_in_ci": (False, (), "bool"),
    "env_prefix": (None, (), None),
    "optout_env": ((), (), "names"),
    "consent": ("opt-out", (), "consent"),
    "aggregate_interval": (3600.0, ("CALLHOME_AGGREGATE_INTERVAL",), "interval"),
    "activity_modes": ({}, (), "modes"),
    "cli_command": (None, (), None),
    "max_buffer": (50000, (), "count"),
    "max_buffer_bytes": (16 * 1024 * 1024, (), "count"),
    "max_queue_events": (50000, (), "count"),
    "max_queue_bytes": (32 * 1024 * 1024, (), "count"),
    "max_age": (7 * 86400.0, (), "seconds"),
    "max_attempts": (12, (), "count"),
    "max_event_bytes": (32 * 1024, (), "count"),
    "fsync": (False, (), "bool"),
    "sender": ("auto", ("CALLHOME_SENDER",), "sender"),
    "sender_idle_timeout": (30.0, ("CALLHOME_SENDER_IDLE",), "seconds"),
    "sender_lifetime": (3600.0, (), "interval"),
}


def resolve(kwargs: Mapping[str, object], environ: Mapping[str, str] | None = None) -> Config:
    """Build the :class:`Config` for ``init(**kwargs)`` under ``environ``.

    A bad environment value is recorded in ``Config.problems`` and ignored, even under
    ``strict``: whoever runs the product must not be able to crash it.

    An option that does not exist (a misspelling) is ignored and named in ``problems`` with the
    nearest valid name; everything else still applies.

    :raises ValueError: for a bad argument when ``strict=True``, or a missing ``product_id``.
    :raises TypeError: for an option that does not exist, when ``strict=True``.
    """
    environ = os.environ if environ is None else environ
    strict = bool(kwargs.get("strict", False))
    product_id = kwargs.get("product_id")
    if not isinstance(product_id, str) or not product_id.strip():
        raise ValueError("product_id is required: a non-empty string such as 'acme-cli'")
    problems = unknown_options(kwargs)
    if problems and strict:
        raise TypeError("; ".join(problems))
    values: dict[str, Any] = {"product_id": product_id.strip(), "problems": problems}
    refused = _refused_endpoint(kwargs, environ)
    if refused and strict and kwargs.get("endpoint") is not None:
        raise ValueError(refused[1])
    for name, (default, env_names, kind) in _OPTIONS.items():
        if name == "endpoint" and refused:
            values[name] = refused[0]
            problems.append(refused[1])
            continue
        values[name] = _resolve_one(name, kwargs, environ, default, env_names, kind, problems, strict)
    values["debug"] = values["debug"] or env_flag(environ.get("CALLHOME_DEBUG"))
    values["data_dir"] = os.path.expanduser(values["data_dir"]) if values["data_dir"] else None
    values["endpoint_refused"] = refused[1] if refused else None
    return Config(**values)


def _refused_endpoint(kwargs: Mapping[str, object], environ: Mapping[str, str]) -> tuple[str, str] | None:
    """``(endpoint as given, why nothing is sent)`` when the endpoint that applies is refused.

    Never the default in its place: an operator who meant to keep the data in-house (a plain
    ``http://`` collector on the network, a typo) must not have it sent to a third party.
    """
    given = kwargs.get("endpoint")
    where = "argument endpoint"
    if given is None:
        where, given = next(((name, environ.get(name)) for name in _OPTIONS["endpoint"][1]
                             if (environ.get(name) or "").strip()), (where, None))
    if given is None or _parse(given, "endpoint") is not _BAD:
        return None
    shown = str(given).strip()[:200]
    return shown, f"{where}={shown!r} was refused ({_HINTS['endpoint']}): nothing is sent"


def _resolve_one(name: str, kwargs: Mapping[str, object], environ: Mapping[str, str], default: object,
                 env_names: tuple[str, ...], kind: str | None, problems: list[str], strict: bool) -> object:
    if kwargs.get(name) is not None:
        parsed = _parse(kwargs[name], kind)
        if parsed is not _BAD:
            return parsed
        message = _invalid(f"argument {name}={kwargs[name]!r}", kind)
        if strict:
            raise ValueError(message)
        problems.append(message)
    for env_name in env_names:
        raw = environ.get(env_name)
        if raw is None or not raw.strip():
            continue
        parsed = _parse(raw.strip(), kind)
        if parsed is not _BAD:
            return parsed
        problems.append(_invalid(f"{env_name}={raw!r}", kind))
    return default


def unknown_options(options: Mapping[str, object]) -> list[str]:
    """A problem for each option ``init()`` does not have, naming the one probably meant."""
    return [_unknown(name) for name in sorted(set(options) - set(_OPTIONS) - {"product_id"}, key=str)]


def _unknown(name: object) -> str:
    """A problem naming an option that does not exist, and the one probably meant."""
    import difflib  # only for a mistake: not on the way of every init()

    close = difflib.get_close_matches(str(name), [*_OPTIONS, "product_id"], n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"init() got an unknown option {str(name)[:64]!r}{hint}; it is ignored"


_BAD = object()
_HINTS = {"endpoint": "use https://, or http:// only to a loopback address, with no path",
          "source": "use TELEMETRY or PRODUCT_CLOUD", "seconds": "use a number of seconds >= 0",
          "count": "use a whole number > 0", "bool": "use true or false",
          "consent": "use 'opt-out' or 'opt-in'", "interval": "use seconds from 1 to 31 days",
          "modes": "use {activity: 'single' | 'aggregate' | 'both'}",
          "sender": "use 'auto', 'process' or 'thread'",
          "domain": "use the company's domain name, such as acme.example; records wait for a valid one",
          "ip": "use an IPv4 or IPv6 address; records wait for a valid one"}


def _invalid(what: str, kind: str | None) -> str:
    return f"{what} ignored: {_HINTS.get(kind or '', 'use a non-empty string')}"


def _parse(value: object, kind: str | None) -> object:
    try:
        if kind is None:
            return str(value).strip() or _BAD
        if kind == "bool":
            return value if isinstance(value, bool) else env_flag(str(value))
        if kind == "seconds":
            seconds = float(value)  # type: ignore[arg-type]
            return seconds if 0 <= seconds < 10 ** 9 else _BAD
        if kind == "count":
            count = int(value)  # type: ignore[call-overload]
            return count if count > 0 else _BAD
        if kind == "names":
            return (value,) if isinstance(value, str) else tuple(str(v) for v in value)  # type: ignore[attr-defined]
        if kind == "endpoint":
            return _endpoint(str(value))
        if kind == "source":
            return _source(str(value))
        if kind == "consent":
            return value if value in ("opt-out", "opt-in") else _BAD
        if kind == "interval":
            seconds = float(value)  # type: ignore[arg-type]
            return seconds if 1 <= seconds <= 31 * 86400 else _BAD
        if kind == "modes":
            return _modes(value)
        if kind == "sender":
            mode = str(value).strip().lower()
            return mode if mode in ("auto", "process", "thread") else _BAD
        if kind == "domain":
            return _domain(str(value))
        if kind == "ip":
            import ipaddress  # only for a host that sends an address

            return str(ipaddress.ip_address(str(value).strip()))
    except (TypeError, ValueError):
        pass
    return _BAD


def _domain(value: str) -> object:
    """A domain name, lower case, without a trailing dot. What has one obvious meaning is read
    as its host: a URL (``https://acme.example/path``), an e-mail address, a ``host:port``."""
    host = value.strip()
    host = host.partition("://")[2] if "://" in host else host
    host = host.split("/", 1)[0].rsplit("@", 1)[-1].split(":", 1)[0].lower().rstrip(".")
    if not host.isascii():
        host = host.encode("idna").decode("ascii")  # UnicodeError is a ValueError: refused
    labels = host.split(".")
    if len(host) > 253 or len(labels) < 2 or labels[-1].isdigit() or not all(map(_is_label, labels)):
        return _BAD  # one label, an IP address, a character a host name cannot have
    return host


def _is_label(label: str) -> bool:
    return 0 < len(label) <= 63 and label[0] != "-" and label[-1] != "-" and label.replace("-", "").isalnum()


_FALSE = ("", "0", "false", "no", "off", "n", "f", "disabled", "disable")


def env_flag(raw: str | None) -> bool:
    """The one boolean rule for callhome's variables (decision 3 of the research notes).

    Trimmed and case-insensitive: unset, empty or an explicit negative
    (``0/false/no/off/n/f/disabled``) is False; any other value is True. Never raises.
    """
    return raw is not None and raw.strip().lower() not in _FALSE


def _endpoint(endpoint: str) -> object:
    """``https://host[:port]``, or ``http://`` to loopback only (the collector in development).

    Parsed by hand: ``re`` would be the costliest import of ``init()``.
    """
    scheme, sep, rest = endpoint.strip().partition("://")
    rest = rest[:-1] if rest.endswith("/") else rest
    if not sep or scheme not in ("http", "https") or not rest or "/" in rest or "@" in rest:
        return _BAD
    host, port = (rest[:rest.index("]") + 1], rest[rest.index("]") + 1:]) if rest.startswith("[") \
        else (rest.partition(":")[0], rest[len(rest.partition(":")[0]):])
    if not host or (port and not (port.startswith(":") and port[1:].isdigit())):
        return _BAD
    if scheme == "https" or host.lower() in _LOOPBACK_HOSTS:
        return f"{scheme}://{rest}"
    return _BAD


def _modes(value: object) -> object:
    """``{activity: "single" | "aggregate" | "both"}``: how ``track()`` of each activity is sent."""
    if not isinstance(value, dict):
        return _BAD
    modes = {str(k).strip(): str(v).strip().lower() for k, v in value.items()}
    return modes if all(v in ("single", "aggregate", "both") for v in modes.values()) else _BAD


def _source(source: str) -> object:
    upper = source.strip().upper()
    if upper == "SAAS_PRODUCT":  # an older name of the same source in Reo's documentation
        return "PRODUCT_CLOUD"
    return upper if upper in ("TELEMETRY", "PRODUCT_CLOUD") else _BAD
