"""``env``: every environment variable callhome reads, its value and what it does here."""

from __future__ import annotations

import argparse
import os

from ._output import _emit, _table
from ._target import _Target

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (a short-lived command waits for it)
if TYPE_CHECKING:
    from typing import Any

_SECRET = ("CALLHOME_API_KEY", "REO_API_KEY")


def env(target: _Target, args: argparse.Namespace) -> int:
    """Every variable callhome reads, its raw value (keys masked) and what it does here."""
    rows = _optout_rows(target) + _option_rows(target) + _ci_rows()
    if not target.embedded:
        meaning = _if_set("CALLHOME_PRODUCT", "the product when --product is not given")
        rows.append(_row("CALLHOME_PRODUCT", meaning))
    if target.json:
        _emit({"variables": rows}, True)
    else:
        _table([[r["name"], _shown(r["value"]), r["meaning"]] for r in rows])
    return 0


def _row(name: str, meaning: str) -> dict[str, Any]:
    raw = os.environ.get(name)
    value = "***" if raw is not None and name in _SECRET else raw
    return {"name": name, "value": value, "set": raw is not None, "meaning": meaning}


def _if_set(name: str, meaning: str) -> str:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return "not set" if raw is None else "not set (empty)"
    return meaning


def _flag(name: str, effect: str) -> str:
    """The one boolean rule (``config.env_flag``) spelled out for one variable."""
    from ..config import env_flag

    return _if_set(name, effect if env_flag(os.environ.get(name)) else "ignored: explicit negative")


def _optout_rows(target: _Target) -> list[dict[str, Any]]:
    from ..optout import OPT_OUT_VARIABLES, product_variable

    config = target.config()
    names = (*OPT_OUT_VARIABLES, product_variable(config), *config.optout_env)
    rows = [_row(name, _flag(name, "opts out")) for name in names]
    rows.append(_row("CALLHOME_DEBUG", _flag("CALLHOME_DEBUG", "debug: print payloads, send nothing")))
    rows.append(_row("CALLHOME_LOG_FILE", _if_set("CALLHOME_LOG_FILE", "sent requests also go to this file")))
    return rows


def _option_rows(target: _Target) -> list[dict[str, Any]]:
    from ..config import ENV

    return [_row(name, _if_set(name, _option_meaning(target, name, option))) for name, option in ENV.items()]


def _option_meaning(target: _Target, name: str, option: str) -> str:
    """What a set option variable does: sets the option, or why it is ignored."""
    from ..config import ENV, resolve

    if option in target.options:
        return f"ignored: the host sets {option}"
    names = [n for n, o in ENV.items() if o == option]
    earlier = [n for n in names[:names.index(name)] if os.environ.get(n, "").strip()]
    if earlier:
        return f"ignored: {earlier[0]} wins"
    problems = resolve({"product_id": target.product_id}, {name: os.environ.get(name, "")}).problems
    return problems[0] if problems and name not in _SECRET else f"sets {option}"


def _ci_rows() -> list[dict[str, Any]]:
    from ..optout import CI_VARIABLES

    rows = [_row("CI", _flag("CI", "CI detected"))]
    rows += [_row(name, _if_set(name, "CI detected")) for name in CI_VARIABLES]
    paired = any(os.environ.get(n, "").strip() for n in ("BUILD_URL", "PROJECT_ID"))
    rows.append(_row("BUILD_ID", _if_set("BUILD_ID", "CI detected" if paired else
                                         "ignored without BUILD_URL or PROJECT_ID")))
    has_id = bool(os.environ.get("BUILD_ID", "").strip())
    with_id = "CI detected (with BUILD_ID)" if has_id else "ignored without BUILD_ID"
    rows += [_row(name, _if_set(name, with_id)) for name in ("BUILD_URL", "PROJECT_ID")]
    return rows


def _shown(value: object) -> str:
    """A raw value as typed; quoted when blanks around it (or its absence of text) matter."""
    if value is None:
        return "-"
    return repr(value) if value != str(value).strip() or value == "" else str(value)
