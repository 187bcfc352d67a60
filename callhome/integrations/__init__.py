"""The ``telemetry`` verbs mounted in a host's click or typer CLI with one call.

``callhome.integrations.click`` and ``callhome.integrations.typer`` (extras ``callhome[click]``
and ``callhome[typer]``) wrap :func:`callhome.cli.main`, which argparse hosts reach through
:func:`callhome.cli.add_telemetry_commands`. Each is imported only by a host that uses it.
"""
