"""`kedit`: the command line. Each area registers its own commands below."""
from __future__ import annotations

import typer

app = typer.Typer(
    name="kedit",
    help="Lifelong knowledge editing for language models (ENCORE, MEMIT, AlphaEdit).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# --- command registration (one line per area; each module defines register(app)) ---
from app.editing.cli import register as _register_editing  # noqa: E402

_register_editing(app)
from app.eval.cli import register as _register_eval  # noqa: E402

_register_eval(app)
from app.cli_service import register as _register_service  # noqa: E402

_register_service(app)
# --- end of command registration ---


def main() -> None:
    app()
