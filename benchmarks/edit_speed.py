"""Seconds per edit of kedit's editor, split into targets / keys / solve, and the quality it buys.

Protocol of ../shared/reference-baseline.md: SmolLM2-135M, the first 200 CounterFact
records, two sequential batches of 100, scores on all 200 at the end. By default it runs
the reference's own settings (Llama-3-8B ENCORE file with layers 4–8, λp 15000, λn 20,
margin +1) so the seconds compare like for like; `--preset smollm2` runs kedit's tuned
defaults instead.

    python -m benchmarks.edit_speed                    # reference settings
    python -m benchmarks.edit_speed --preset smollm2   # kedit's defaults
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import typer

from app.config import KeditConfig
from app.editing.build import Role, build_editor
from app.editing.editor import Editor
from app.editing.model import load_model
from app.editing.settings import EditSettings, preset
from app.editing.stats import collect_key_stats, corpus_files
from app.eval.data import load_dataset
from app.eval.scoring import score_counterfact

REFERENCE = {"seconds_per_edit": (7.14 + 6.90) / 2, "stats_seconds": 364.0, "s_after_200": 48.4}


def reference_settings(method: str = "encore", stats_tokens: int = 157_918) -> EditSettings:
    """The reference's settings: its Llama-3-8B file with the edited layers kept at 4–8 (SmolLM2 has 30)."""
    return preset("llama3-8b", method, stats_tokens=stats_tokens).model_copy(update={"layers": (4, 5, 6, 7, 8)})


def timed_batch(editor: Editor, chunk: list, batch_id: int) -> dict:
    """Apply one batch of CounterFact records; its wall seconds, split, and MPES steps per edit."""
    t0 = time.perf_counter()
    result = editor.apply([r.request() for r in chunk], batch_id=batch_id)
    wall = time.perf_counter() - t0
    return {
        "batch": batch_id,
        "edits": len(chunk),
        "wall": wall,
        "targets": result.z_seconds,
        "keys": result.keys_seconds,
        "solve": result.solve_seconds - result.keys_seconds,
        "seconds_per_edit": wall / len(chunk),
        "mean_steps": sum(o.mpes_steps for o in result.outcomes) / len(chunk),
    }


def main(
    preset_name: str = typer.Option(
        "llama3-8b", "--preset", help="settings preset: llama3-8b (the reference's) or smollm2"
    ),
    method: str = typer.Option("encore", help="encore | memit | alphaedit"),
    records: int = typer.Option(200, help="CounterFact records (first N)"),
    batch_size: int = typer.Option(100, help="edits per batch"),
    stats_tokens: int = typer.Option(157_918, help="C₀ token budget (the reference used 157,918)"),
    out: Path | None = typer.Option(None, help="write the figures as JSON here"),
) -> None:
    threads = torch.get_num_threads()
    print(f"machine: {os.cpu_count()} cores, torch threads {threads}, torch {torch.__version__}")
    cfg = KeditConfig()
    lm = load_model(cfg.model_path, cache_dir=cfg.cache_dir, device=cfg.device)
    corpus = cfg.stats_corpus or cfg.data_dir / "corpus"  # WikiText, as the reference used
    settings = (
        reference_settings(method, stats_tokens)
        if preset_name == "llama3-8b"
        else preset(preset_name, method, stats_tokens=stats_tokens)
    )
    print(f"settings: {settings.model_dump()}")

    # Key statistics for every edited layer in one pass (uncached here on purpose: it is timed).
    t0 = time.perf_counter()
    stats = collect_key_stats(lm, list(settings.layers), corpus, settings.stats_tokens)
    stats_seconds = time.perf_counter() - t0
    print(
        f"key statistics: {len(settings.layers)} layers × {settings.stats_tokens} tokens in one pass: "
        f"{stats_seconds:.1f} s "
        f"(corpus {', '.join(f.name for f in corpus_files(corpus))})"
    )

    recs = load_dataset(cfg.data_dir / "counterfact" / "counterfact.json", limit=records).records
    editor = build_editor(lm, settings, Role.EVAL, key_stats=stats)
    _ = editor.templates
    batches = []
    for b, start in enumerate(range(0, len(recs), batch_size), start=1):
        chunk = recs[start : start + batch_size]
        row = timed_batch(editor, chunk, b)
        batches.append(row)
        print(
            f"batch {b}: {row['wall']:.1f} s wall = targets {row['targets']:.1f} + keys {row['keys']:.1f} + solve "
            f"{row['solve']:.1f} (+ probability read-out) → {row['seconds_per_edit']:.2f} s/edit, "
            f"{row['mean_steps']:.1f} optimisation steps per edit"
        )
    scores = score_counterfact(lm.model, lm.tokenizer, recs)
    growth = {n.layer: round(100 * n.growth, 2) for n in editor.norms()}
    spe = sum(b["wall"] for b in batches) / len(recs)
    print(
        f"after {len(recs)} edits, records 1–{len(recs)}: ES {scores['es']:.1f} PS {scores['ps']:.1f} "
        f"NS {scores['ns']:.1f} S {scores['s']:.1f}"
    )
    print(f"‖W−W₀‖/‖W₀‖ per layer (%): {growth}")
    print(
        f"seconds per edit: {spe:.2f} (reference {REFERENCE['seconds_per_edit']:.2f} → "
        f"{REFERENCE['seconds_per_edit'] / spe:.1f}x); "
        f"key statistics {stats_seconds:.0f} s (reference {REFERENCE['stats_seconds']:.0f} s)"
    )
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {
                    "threads": threads,
                    "settings": settings.model_dump(mode="json"),
                    "stats_seconds": stats_seconds,
                    "batches": batches,
                    "seconds_per_edit": spe,
                    "scores": scores,
                    "growth_percent": growth,
                    "reference": REFERENCE,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    typer.run(main)
