"""How the verbs print: one JSON document for ``--json``, aligned plain text otherwise."""

from __future__ import annotations

import json
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (a short-lived command waits for it)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any


def _emit(report: dict[str, Any], as_json: bool) -> None:
    """``report`` as one JSON document, or as aligned ``key  value`` lines."""
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True, default=str))
        return
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key.replace('_', ' '):<{width}}  {_plain(value)}")


def _plain(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value) or "-"
    return str(value)


def _table(rows: Sequence[Sequence[object]]) -> None:
    """Rows of cells, each column as wide as its widest cell (the last one is not padded)."""
    widths = [max(len(_plain(row[i])) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [f"{_plain(cell):<{width}}" for cell, width in zip(row, widths)]
        print("  ".join([*cells, _plain(row[-1])]).rstrip())


def _when(epoch: object) -> str | None:
    """A time from a state file (which a person or another version may have edited) as UTC ISO 8601."""
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not 0 < epoch < 253402300800:  # year 10000
        return None  # NaN fails the comparison too
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
