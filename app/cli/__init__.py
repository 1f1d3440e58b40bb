"""`kedit`: the command line. Each area registers its own commands below."""

from __future__ import annotations

import typer

from app.cli import editing, evaluation, service

app = typer.Typer(
    name="kedit",
    help="Lifelong knowledge editing for language models (ENCORE, MEMIT, AlphaEdit).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

editing.register(app)
evaluation.register(app)
service.register(app)


def main() -> None:
    app()
