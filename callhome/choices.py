"""What the person running the product decided, saved on disk: opt-out, consent, notice seen.

``callhome disable`` / ``enable`` write these files (globally or per product); the worker and the
CLI read them. Read on the worker thread only (never on the host's), at start and before sends.

    <root>/choices.json              {"disabled": true}            every product on this account
    <root>/<product>/choice.json     {"disabled": false, "consent": true, "notice_version": 1, ...}
"""

from __future__ import annotations

import os
import time

from ._fs import atomic_write, ensure_private_dir, mtime_ns, read_json

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any

__all__ = ["GLOBAL_FILE", "NOTICE_VERSION", "PRODUCT_FILE", "Watch", "load", "paths", "save"]

GLOBAL_FILE = "choices.json"
PRODUCT_FILE = "choice.json"
#: Raised whenever the set of collected fields changes, so that the notice is shown again.
NOTICE_VERSION = 1


def paths(product_dir: str) -> tuple[str, str]:
    """(global file, product file) for the product whose state lives in ``product_dir``."""
    return os.path.join(os.path.dirname(product_dir), GLOBAL_FILE), os.path.join(product_dir, PRODUCT_FILE)


def load(product_dir: str) -> dict[str, Any]:
    """The saved choices: ``disabled`` (with ``disabled_by``: the file), ``consent``, notice fields.

    A global ``disabled`` wins over the product's own ``enable``: opting out is absorbing.
    """
    global_path, product_path = paths(product_dir)
    saved_global, saved_product = read_json(global_path), read_json(product_path)
    choices = {k: v for k, v in saved_product.items() if k not in ("disabled", "consent")}
    for path, saved in ((global_path, saved_global), (product_path, saved_product)):
        if saved.get("disabled") is True and "disabled_by" not in choices:
            choices["disabled"], choices["disabled_by"] = True, path
    choices.setdefault("disabled", False)
    choices["consent"] = bool(saved_product.get("consent") or saved_global.get("consent"))
    choices["loaded"] = True  # consent="opt-in" can only be judged once the files were read
    return choices


class Watch:
    """The saved choices as they are now: ``callhome disable`` may run while a sender sends.

    Asked before every request, so the files are read again only when they changed.
    """

    def __init__(self, product_dir: str | None) -> None:
        self.product_dir = product_dir
        self._stamp: tuple[int | None, ...] = ()
        self._choices: dict[str, Any] = {}

    def __call__(self) -> dict[str, Any]:
        if self.product_dir is None:
            return {}
        stamp = tuple(mtime_ns(path) for path in paths(self.product_dir))
        if stamp != self._stamp:
            self._choices, self._stamp = load(self.product_dir), stamp
        return self._choices


def save(product_dir: str, scope: str = "product", **fields: object) -> str:
    """Merge ``fields`` into the product's (or, with ``scope="global"``, every product's) file.

    :return: the path written. :raises OSError: when it cannot be written.
    """
    global_path, product_path = paths(product_dir)
    path = global_path if scope == "global" else product_path
    ensure_private_dir(os.path.dirname(path))
    saved = read_json(path)
    saved.update(fields, updated_at=int(time.time()))
    atomic_write(path, _dump(saved), fsync=True)  # a person's decision must outlive a power loss
    return path


def _dump(value: dict[str, Any]) -> bytes:
    import json

    return json.dumps(value, indent=2, sort_keys=True).encode() + b"\n"
