"""The Reo.Dev Product Usage API's documented payload rules, as pure checks.

One place states what a valid ``{"payload": {...}}`` is, for both endpoints, resolving the
documentation's inconsistencies as ``docs/data.md`` explains (string ``event_id``, integer
``event_at``, ``ip_addr`` or ``domain``, both-or-neither user id, no empty-string placeholders).
The agent builds payloads that pass these checks; the collector rejects payloads that do not.
"""

from __future__ import annotations

import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any, TypeGuard

__all__ = [
    "AGGREGATE_PATH",
    "MODES",
    "SOURCES",
    "USAGE_PATH",
    "USER_ID_TYPES",
    "FieldError",
    "validate",
]

USAGE_PATH = "/api/product/usage"
AGGREGATE_PATH = "/api/product/aggregateusage"

SOURCES = ("TELEMETRY", "PRODUCT_CLOUD")
USER_ID_TYPES = ("EMAIL", "SOCIAL", "LINKEDIN", "GITHUB", "USERNAME")
MODES = ("DOMAIN", "USER")

#: 2000-01-01T00:00:00Z: the documentation's own example (1990) is not a plausible event time.
MIN_EVENT_AT = 946684800
#: How far in the future an ``event_at`` may lie (clock skew between host and receiver).
MAX_FUTURE_S = 86400
MAX_STRING = 1024
MAX_META_KEYS = 64

_COMMON = {"activity_type", "source", "environment", "user_id", "user_id_type", "ip_addr", "domain",
           "event_id", "event_at", "product_id", "user_agent", "meta"}
_FIELDS = {"usage": _COMMON, "aggregate": _COMMON | {"mode", "count"}}
_DOMAIN = (r"^(?=.{1,253}$)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
           r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$")  # compiled on first use: import cost


class FieldError:
    """One rule a payload breaks: the field's name and what is wrong with it."""

    __slots__ = ("field", "message")

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message

    def __repr__(self) -> str:
        return f"FieldError({self.field!r}, {self.message!r})"

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


def validate(payload: object, kind: str = "usage", now: float | None = None) -> list[FieldError]:
    """Every rule ``payload`` breaks for endpoint ``kind`` (``"usage"`` or ``"aggregate"``).

    :param payload: the object inside ``{"payload": ...}``.
    :param now: the receiver's clock, for the ``event_at`` range check (defaults to ``time.time()``).
    :return: an empty list when the payload is valid.
    """
    if not isinstance(payload, dict):
        return [FieldError("payload", "must be a JSON object")]
    errors: list[FieldError] = []
    for key in sorted(set(payload) - _FIELDS[kind]):
        errors.append(FieldError(key, "is not a documented field"))
    for key, value in payload.items():
        if value == "":
            errors.append(FieldError(key, "must be omitted rather than sent as an empty string"))
    errors += _check_required_strings(payload)
    errors += _check_source_and_identity(payload, kind)
    errors += _check_event_id(payload.get("event_id"), required=True)
    errors += _check_event_at(payload.get("event_at"), time.time() if now is None else now)
    errors += _check_meta(payload.get("meta"))
    if kind == "aggregate":
        errors += _check_aggregate(payload)
    return errors


def _is_str(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and value != ""


def _check_required_strings(payload: dict[str, Any]) -> list[FieldError]:
    errors = []
    for key in ("activity_type", "product_id"):
        if not _is_str(payload.get(key)):
            errors.append(FieldError(key, "is required and must be a non-empty string"))
    for key in ("activity_type", "product_id", "environment", "user_id", "user_agent", "domain"):
        value = payload.get(key)
        if value is not None and not isinstance(value, str):
            errors.append(FieldError(key, "must be a string"))
        elif isinstance(value, str) and (len(value) > MAX_STRING or "\n" in value or "\r" in value):
            errors.append(FieldError(key, f"must be one line of at most {MAX_STRING} characters"))
    return errors


def _check_source_and_identity(payload: dict[str, Any], kind: str) -> list[FieldError]:
    errors = []
    source = payload.get("source")
    if source not in SOURCES:
        errors.append(FieldError("source", f"must be one of {', '.join(SOURCES)}"))
    user_id, user_id_type = payload.get("user_id"), payload.get("user_id_type")
    if (user_id is None) != (user_id_type is None):
        errors.append(FieldError("user_id_type", "user_id and user_id_type go together (both or neither)"))
    if user_id_type is not None and user_id_type not in USER_ID_TYPES:
        errors.append(FieldError("user_id_type", f"must be one of {', '.join(USER_ID_TYPES)}"))
    ip_addr, domain = payload.get("ip_addr"), payload.get("domain")
    if ip_addr is not None and not _is_ip(ip_addr):
        errors.append(FieldError("ip_addr", "must be an IPv4 or IPv6 address"))
    if _is_str(domain) and not _is_domain(domain):
        errors.append(FieldError("domain", "must be a domain name"))
    if source == "TELEMETRY" and not (_is_str(ip_addr) or _is_str(domain)):
        errors.append(FieldError("ip_addr", "either ip_addr or domain is required"))
    if kind == "usage" and user_id is None and not _is_str(payload.get("user_agent")):
        errors.append(FieldError("user_agent", "is required when user_id is not sent"))
    return errors


def _is_domain(value: str) -> bool:
    import re

    return re.match(_DOMAIN, value) is not None


def _is_ip(value: object) -> bool:
    if not isinstance(value, str):
        return False
    import ipaddress

    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _check_event_id(value: object, required: bool) -> list[FieldError]:
    if value is None:
        return [FieldError("event_id", "is required")] if required else []
    if not isinstance(value, str) or not value or len(value) > 128:
        return [FieldError("event_id", "must be a non-empty string of at most 128 characters")]
    return []


def _check_event_at(value: object, now: float) -> list[FieldError]:
    if isinstance(value, bool) or not isinstance(value, int):
        return [FieldError("event_at", "is required and must be an integer (UNIX seconds)")]
    if value < MIN_EVENT_AT or value > now + MAX_FUTURE_S:
        return [FieldError("event_at", "must be UNIX seconds between 2000-01-01 and tomorrow")]
    return []


def _check_meta(meta: object) -> list[FieldError]:
    if meta is None:
        return []
    if not isinstance(meta, dict):
        return [FieldError("meta", "must be a JSON object")]
    if len(meta) > MAX_META_KEYS:
        return [FieldError("meta", f"must have at most {MAX_META_KEYS} keys")]
    for key, value in meta.items():
        if value is not None and not isinstance(value, (str, int, float, bool)):
            return [FieldError(f"meta.{key}", "must be a string, number, boolean or null (meta is flat)")]
    return []


def _check_aggregate(payload: dict[str, Any]) -> list[FieldError]:
    errors = []
    mode, source = payload.get("mode"), payload.get("source")
    if mode not in MODES:
        errors.append(FieldError("mode", f"must be one of {', '.join(MODES)}"))
    elif mode == "USER" and (source != "PRODUCT_CLOUD" or payload.get("user_id") is None):
        errors.append(FieldError("mode", "USER mode needs source PRODUCT_CLOUD and a user_id"))
    elif mode == "DOMAIN" and payload.get("user_id") is not None:
        errors.append(FieldError("user_id", "must be omitted in DOMAIN mode"))
    count = payload.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        errors.append(FieldError("count", "is required and must be an integer of at least 1"))
    return errors
