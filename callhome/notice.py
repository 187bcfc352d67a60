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

__all__ = ["is_terminal", "notice_text", "show_on_terminal"]


def notice_text(config: Config, state_dir: str | None = None) -> str:
    """The notice for this product and configuration, as printed (several lines, no trailing
    newline). It says what this configuration sends: never "anonymous", since the product may
    attach user ids to its events."""
    host = re.sub(r"^https?://", "", config.endpoint)
    where = os.path.join(state_dir, "installation_id") if state_dir else "callhome's state directory"
    lines = [
        f"[callhome] {config.product_id} sends usage data to {host} (Reo.Dev):",
        "  activity names and times; product, callhome, OS and Python versions;",
        f"  {_identity(config)}; a random installation id, stored in",
        f"  {where}.",
    ]
    if config.capture_exceptions:
        lines.append("  Crashes: the exception's type and where it happened"
                     + (", and its message." if config.exception_messages else " (not its message)."))
    lines += [
        "  User ids (an e-mail, a user name) only where the product attaches them to an event.",
        "  Never the machine's or the login's name, paths, arguments, environment values or files.",
        f"  Opt out: DO_NOT_TRACK=1, {product_variable(config)}=1, or `{_command(config, 'disable')}`.",
        f"  See what is sent: `{_command(config, 'preview')}`, or CALLHOME_DEBUG=1.",
    ]
    return "\n".join(lines)


def show_on_terminal(config: Config, directory: str) -> bool:
    """Write the notice to stderr when it is a person's terminal and record it as shown (the
    only way a notice counts as shown); False when stderr is not a terminal."""
    import sys
    import time

    from . import choices

    if not is_terminal(sys.stderr):
        return False
    sys.stderr.write(notice_text(config, directory) + "\n")
    try:
        choices.save(directory, notice_version=choices.NOTICE_VERSION, notice_at=int(time.time()))
    except OSError:
        pass  # shown all the same; the next run shows it again
    return True


def _identity(config: Config) -> str:
    """Who the records say the company is: what this configuration sends."""
    if config.domain:
        return f"the company domain {config.domain}"
    if config.ip_addr:
        return f"the IP address {config.ip_addr}"
    return "the company domain or IP address the product configures"


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
