"""``acme telemetry ...`` in a typer CLI::

    import typer
    from callhome.integrations.typer import add_telemetry_command

    app = typer.Typer()
    add_telemetry_command(app, product_id="acme-cli")
"""

from __future__ import annotations

import typer

from ._forward import CONTEXT_SETTINGS, describe, run_verbs

__all__ = ["add_telemetry_command"]


def add_telemetry_command(app: typer.Typer, product_id: str, name: str = "telemetry",
                          **init_options: object) -> None:
    """Register the verbs for ``product_id`` as ``app``'s command ``name``.

    :param init_options: the options the host gives ``callhome.init()``, used as defaults.
    :raises TypeError: for an option ``callhome.init()`` does not have (an integration mistake).
    """
    from ..cli._target import _Host

    _Host(product_id, init_options)  # a wrong option fails here, when the host builds its CLI

    def telemetry(ctx: typer.Context) -> None:
        raise typer.Exit(run_verbs(ctx.command_path, list(ctx.args), product_id, init_options))

    telemetry.__doc__ = describe(product_id)
    app.command(name, context_settings=dict(CONTEXT_SETTINGS), add_help_option=False)(telemetry)
