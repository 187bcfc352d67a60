"""What the click and typer commands share: hand the raw arguments to the verbs' own parser."""

from __future__ import annotations

from ..cli import main

#: The framework must not parse the verbs' arguments, nor answer ``--help`` itself: the verbs'
#: parser does both, so that ``<host> telemetry --help`` lists them.
CONTEXT_SETTINGS = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


def run_verbs(command_path: str, args: list[str], product_id: str, init_options: dict[str, object]) -> int:
    """Run ``args`` as ``<host> telemetry ...``; the usage and help show the host's command path
    (``acme telemetry``), and so does the first-run notice unless the host named another."""
    options = dict(init_options)
    options.setdefault("cli_command", command_path)
    return main(args, product_id=product_id, **options)


def describe(product_id: str) -> str:
    return f"See and control the telemetry {product_id} sends (status, preview, disable, ...)."
