"""``acme telemetry ...`` in a click CLI::

    import click
    from callhome.integrations.click import add_telemetry_command

    @click.group()
    def acme() -> None: ...

    add_telemetry_command(acme, product_id="acme-cli")
"""

from __future__ import annotations

import click

from ._forward import CONTEXT_SETTINGS, describe, run_verbs

__all__ = ["add_telemetry_command", "telemetry_command"]


def telemetry_command(product_id: str, name: str = "telemetry", **init_options: object) -> click.Command:
    """A click command running the verbs for ``product_id``.

    :param init_options: the options the host gives ``callhome.init()`` (``data_dir``,
        ``endpoint``, ``api_key`` so that ``flush`` can send, ...), used as defaults.
    :raises TypeError: for an option ``callhome.init()`` does not have (an integration mistake).
    """
    from ..cli._target import _Host

    _Host(product_id, init_options)  # a wrong option fails here, when the host builds its CLI

    @click.pass_context
    def telemetry(ctx: click.Context, args: tuple[str, ...]) -> None:
        ctx.exit(run_verbs(ctx.command_path, list(args), product_id, init_options))

    return click.Command(name, callback=telemetry, help=describe(product_id), add_help_option=False,
                         context_settings=dict(CONTEXT_SETTINGS),
                         params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)])


def add_telemetry_command(group: click.Group, product_id: str, name: str = "telemetry",
                          **init_options: object) -> click.Command:
    """Add :func:`telemetry_command` to ``group``; returns it."""
    command = telemetry_command(product_id, name, **init_options)
    group.add_command(command)
    return command
