"""Client properties: what the product says about itself, what is detected once, custom slots, license.

They ride in the ``meta`` of CALL_HOME, session and exception records (``docs/data.md`` lists
every key). Detection reads the environment and a few well-known files, so it runs on the
worker's thread, once per process; nothing here names the host or the user.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from .config import Config

__all__ = ["MAX_CUSTOM", "PRODUCT_FIELDS", "custom_key", "detected", "license_fields", "product_fields"]

MAX_CUSTOM = 20
#: init() option -> meta key
PRODUCT_FIELDS = {"product_version": "product_version", "product_build": "product_build",
                  "product_edition": "product_edition", "product_language": "product_language"}
_LICENSE_FLAGS = ("expired", "activated", "blocked", "allowed")
_CONTAINER_MARKERS = ("/.dockerenv", "/run/.containerenv")
_CONTAINER_CGROUP_WORDS = ("docker", "kubepods", "containerd", "lxc", "libpod")
_IMPLEMENTATIONS = {"cpython": "CPython", "pypy": "PyPy", "graalpy": "GraalPy", "ironpython": "IronPython"}


def product_fields(config: Config) -> dict[str, str]:
    """The product's own description, re-asserted by every ``init()`` (never persisted)."""
    return {key: getattr(config, option) for option, key in PRODUCT_FIELDS.items() if getattr(config, option)}


def custom_key(slot: object) -> str:
    """``custom_01`` .. ``custom_20``. :raises ValueError: for any other slot."""
    if type(slot) is not int or not 1 <= slot <= MAX_CUSTOM:
        raise ValueError(f"custom property slot must be an int from 1 to {MAX_CUSTOM}, not {slot!r}")
    return f"custom_{slot:02d}"


def license_fields(license_type: object, flags: Mapping[str, object], key: object, secret: str | None,
                   problems: list[str]) -> dict[str, str | bool]:
    """The license's meta keys; the key only as an HMAC-SHA256 with the vendor's secret.

    ``None`` leaves a value unchanged (the caller merges), as Revenera's ``-1``.
    """
    fields: dict[str, str | bool] = {}
    if license_type is not None:
        text = str(license_type).encode("utf-8", "replace").decode("utf-8")  # a lone surrogate cannot be sent
        text = " ".join(text.split())[:64]
        if text:
            fields["license_type"] = text.lower()
    for name in _LICENSE_FLAGS:
        value = _flag(flags.get(name), name, problems)
        if value is not None:
            fields["license_" + name] = value
    if key is not None:
        if not secret:
            problems.append("license key not sent: set license_secret in init() to send it as an HMAC")
        else:
            import hashlib
            import hmac

            fields["license_key_hmac"] = hmac.new(secret.encode("utf-8"), str(key).strip().encode("utf-8"),
                                                  hashlib.sha256).hexdigest()
    return fields


_TRUE_WORDS, _FALSE_WORDS = ("true", "yes", "1"), ("false", "no", "0")


def _flag(value: object, name: str, problems: list[str]) -> bool | None:
    """A license flag: a bool, 0/1, or true/false/yes/no; None and Revenera's -1 leave it
    unchanged. Anything else is refused (``bool("false")`` is True: no guessing)."""
    if value is None or isinstance(value, bool):
        return value
    if type(value) is int and value in (-1, 0, 1):
        return None if value == -1 else bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS + _FALSE_WORDS + ("-1",):
        word = value.strip().lower()
        return None if word == "-1" else word in _TRUE_WORDS
    shown = repr(value)[:40] if isinstance(value, (str, int, float)) else f"<{type(value).__name__}>"
    problems.append(f"set_license({name}={shown}) ignored: use True/False, 1/0 (-1: unchanged) or "
                    "'true'/'false'/'yes'/'no'")
    return None


def detected(is_ci: bool) -> dict[str, Any]:
    """OS, architecture, Python, locale, CPUs, container and CI flags; computed once by the worker."""
    from .payload import platform_triple

    system, release, machine = platform_triple()
    return {"os": system, "os_version": release, "arch": machine,
            "python_version": "%d.%d.%d" % sys.version_info[:3],
            "python_impl": _IMPLEMENTATIONS.get(sys.implementation.name, sys.implementation.name),
            "locale": _locale(), "cpu_count": os.cpu_count() or 0, "container": _in_container(),
            "is_ci": bool(is_ci)}


def _locale() -> str:
    """``en_US`` from the POSIX variables (as a program's messages would use), else the system's."""
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(name, "").strip()
        if value:
            return value.split(".")[0].split("@")[0][:32] or "C"
    try:
        import locale

        return (locale.getlocale()[0] or "unknown")[:32]
    except (ValueError, AttributeError):
        return "unknown"


def _in_container() -> bool:
    if os.environ.get("KUBERNETES_SERVICE_HOST") or os.environ.get("container"):
        return True
    if any(os.path.exists(marker) for marker in _CONTAINER_MARKERS):
        return True
    try:
        with open("/proc/1/cgroup", encoding="utf-8", errors="replace") as f:
            text = f.read(65536)
    except OSError:
        return False
    return any(word in text for word in _CONTAINER_CGROUP_WORDS)
