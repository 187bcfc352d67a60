"""The first-run notice: what is collected, where the id lives, how to opt out and to look.

Shown once per product (again when ``choices.NOTICE_VERSION`` changes). On a terminal it goes to
stderr and the first send waits for the next run, so a person can opt out before anything
leaves the machine; without a terminal it is logged once through the ``callhome`` logger.
"""

from __future__ import annotations

import os
import re

from .config import Config
from .optout import product_variable

__all__ = ["is_terminal", "notice_text"]


def notice_text(config: Config, state_dir: str | None = None) -> str:
    """The notice for this product, as printed (several lines, no trailing newline)."""
    host = re.sub(r"^https?://", "", config.endpoint)
    where = os.path.join(state_dir, "installation_id") if state_dir else "callhome's state directory"
    return "\n".join([
        f"[callhome] {config.product_id} sends anonymous usage data to {host} (Reo.Dev):",
        "  activity names and times; product, callhome, OS and Python versions; the company",
        "  domain or IP address configured; a random installation id, stored in",
        f"  {where}.",
        "  Never host or user names, paths, arguments, environment values or file contents.",
        f"  Opt out: DO_NOT_TRACK=1, {product_variable(config)}=1, or `{_command(config, 'disable')}`.",
        f"  See what is sent: `{_command(config, 'preview')}`, or CALLHOME_DEBUG=1.",
    ])


def _command(config: Config, verb: str) -> str:
    """How a person runs ``verb``: the host's own ``<cli> telemetry`` if it mounted one."""
    if config.cli_command:
        return f"{config.cli_command} {verb}"
    return f"callhome {verb} --product {config.product_id}"


def is_terminal(stream: object) -> bool:
    """Whether ``stream`` is a person's terminal (False when the host replaced or closed it)."""
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False
