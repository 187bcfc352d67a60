"""Who and what the verbs act on: the host (``_Host``) and one product's state (``_Target``)."""

from __future__ import annotations

import argparse
import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (a short-lived command waits for it)
if TYPE_CHECKING:
    from typing import Any

    from ..config import Config
    from ..optout import Decision
    from ..queue import DiskQueue

#: The settings of the host's last run (``state/agent.json``) that the CLI reuses; never the key.
_SAVED = ("endpoint", "domain", "ip_addr", "relay", "consent", "send_in_ci")


class _Host:
    """Who the verbs act for: a host's fixed product and ``init()`` options, or nobody yet
    (the plain ``callhome`` command, where ``--product`` says)."""

    __slots__ = ("product_id", "options")

    def __init__(self, product_id: str | None, options: dict[str, object]) -> None:
        self.product_id = product_id
        self.options = {k: v for k, v in options.items() if v is not None}
        if product_id is not None:
            from ..config import resolve, unknown_options

            unknown = unknown_options(self.options)
            if unknown:  # a wrong option fails at integration, not when a person runs the verb
                raise TypeError("; ".join(unknown))
            resolve(dict(self.options, product_id=product_id))

    def prog(self) -> str | None:
        if self.product_id is None:
            return "callhome"
        return str(self.options.get("cli_command") or f"{self.product_id} telemetry")


class _Target:
    """One product's state as the verbs see it: its directory, settings and output mode."""

    def __init__(self, host: _Host, product_id: str | None, args: argparse.Namespace | None) -> None:
        from .._fs import default_root, product_dir

        self.product_id = product_id
        self.options = host.options
        self.embedded = host.product_id is not None
        self.json = bool(getattr(args, "ch_json", False))
        chosen = (getattr(args, "ch_dir", None) or host.options.get("data_dir")
                  or os.environ.get("CALLHOME_DIR"))
        self.root = os.path.expanduser(str(chosen)) if chosen else default_root()
        self.directory = product_dir(product_id, self.root) if product_id else None

    @property
    def product_directory(self) -> str:
        """:attr:`directory`, for what acts on one product (``_run`` makes sure there is one)."""
        assert self.directory is not None, "no product"
        return self.directory

    def kwargs(self) -> dict[str, Any]:
        """``init()`` options: the host's last run (``state/agent.json``), then the environment,
        then the host's own options, which win as they do in ``init()``."""
        from ..config import ENV

        overridden = {option for name, option in ENV.items() if os.environ.get(name, "").strip()}
        saved = self.queue().state("agent")
        kwargs = {k: v for k, v in saved.items() if k in _SAVED and k not in overridden and v}
        kwargs.update(self.options, product_id=self.product_id, data_dir=self.root)
        return kwargs

    def config(self) -> Config:
        from ..config import resolve

        return resolve(self.kwargs())

    def choices(self) -> dict[str, Any]:
        from .. import choices

        return choices.load(self.product_directory)

    def decision(self, with_choices: bool = True) -> Decision:
        from ..optout import decide

        return decide(self.config(), choices=self.choices() if with_choices else None)

    def queue(self) -> DiskQueue:
        from ..queue import DiskQueue

        return DiskQueue(self.product_directory)  # reads only: nothing is created until .open()

    def path(self, name: str) -> str:
        return os.path.join(self.product_directory, name)
