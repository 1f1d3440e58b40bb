"""What every command shares: the configuration read once, and errors as one line."""

from __future__ import annotations

from typing import Any, NoReturn, TypeVar, overload

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from app.config import ConfigError, KeditConfig

console = Console(stderr=True)
C = TypeVar("C", bound=KeditConfig)


def fail(message: str) -> NoReturn:
    """Print `error: message` on one line and exit with status 2 (a usage error, no traceback)."""
    # Escaped: messages quote user input, which may hold [brackets] that rich would read as markup.
    console.print(f"[red]error:[/red] {escape(' '.join(message.split()))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@overload
def load_config(cls: type[C], builds_stats: bool = False, **given: Any) -> C: ...
@overload
def load_config(*, builds_stats: bool = False, **given: Any) -> KeditConfig: ...
def load_config(cls: type[KeditConfig] = KeditConfig, builds_stats: bool = False, **given: Any) -> KeditConfig:
    """The configuration from the environment, with the options given on the command line
    (those not None) taking precedence; a setting that cannot work stops the command here.
    `builds_stats`: the command computes key statistics, so its corpus must hold text."""
    try:
        config = cls(**{k: v for k, v in given.items() if v is not None})
        if builds_stats:
            config.check_stats_corpus()
        return config
    except ConfigError as e:
        fail(str(e))
    except ValidationError as e:
        fail(
            "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {str(err['msg']).removeprefix('Value error, ')}"
                for err in e.errors(include_url=False)
            )
        )
