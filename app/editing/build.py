"""Building an Editor for what a process does with it: the one place that decides what each role needs."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import torch

from app.editing.editor import Editor
from app.editing.model import DEFAULT_CACHE_DIR, LoadedModel
from app.editing.progress import SILENT, Monitor
from app.editing.settings import EditSettings
from app.editing.stats import load_key_stats


class Role(StrEnum):
    REPLICA = "replica"  # serves the weights: replays stored batches, never solves (no C₀, no context templates)
    WORKER = "worker"  # solves the service's edits; the log records the context templates it solves with
    EVAL = "eval"  # solves an evaluation's edits; a checkpoint it resumes from brings its own templates


def build_editor(
    lm: LoadedModel,
    settings: EditSettings,
    role: Role | str,
    *,
    key_stats: dict[int, torch.Tensor] | None = None,
    corpus: Path | str | None = None,
    cache_dir: Path | str = DEFAULT_CACHE_DIR,
    templates: list[str] | None = None,
    progress: bool = False,
    monitor: Monitor = SILENT,
) -> Editor:
    """An Editor on `lm` for `role`.

    A solving role gets the key statistics C₀ when its settings use them: `key_stats` if given,
    else from the cache in `cache_dir` (computed once from `corpus`; None = text the model
    generates). A worker's context templates are `templates` (the ones the log recorded), or
    generated now, from the base weights, before anything is replayed onto them. `monitor`
    hears of each stage (C₀, then preparing the solver) and can stop the build between steps.
    """
    role = Role(role)
    if role is Role.REPLICA:
        return Editor(lm, settings, None, replica=True)
    if settings.needs_key_stats and key_stats is None:
        key_stats = load_key_stats(lm, settings, corpus=corpus, cache_dir=cache_dir, progress=progress, monitor=monitor)
    monitor.check()
    # The null-space projector, the neighbour subjects and the context templates: seconds on a CPU.
    monitor.begin("preparing the editor", "solver, neighbour subjects, context templates", expected_s=5.0)
    editor = Editor(lm, settings, key_stats if settings.needs_key_stats else None, templates=templates)
    monitor.check()
    if role is Role.WORKER:
        _ = editor.templates
    return editor
