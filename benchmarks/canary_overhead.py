"""What the canaries cost per batch: editor seconds vs canary-scoring seconds, side by side.

On the configured model (default SmolLM2-135M-Instruct) in one process: the canaries are chosen
once from the unedited weights (timed), then batches of B CounterFact facts (default 5 batches of
8, the service's default B) are applied one after the other, each followed by what the worker
does after every batch: score the canaries on the new weights. With the guard's `reject` policy
the worker also saves the edited layers before each batch; that copy is timed too. Prints a table
and writes it (markdown + JSON) to --out.

    .venv/bin/python -m benchmarks.canary_overhead --corpus /path/to/wikitext --out benchmarks/results/canary-overhead
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch
import typer

from app.config import KeditConfig
from app.editing.build import Role
from app.editing.model import LoweredCopy
from app.editing.types import EditRequest
from app.eval import canaries as probes
from app.eval.data import load_dataset

CANARY_DTYPES = ("float32", "bfloat16")


def main(
    model: str | None = typer.Option(None, help="model folder or GGUF (default: SmolLM2-135M-Instruct)"),
    corpus: Path | None = typer.Option(None, help="text for C₀ (default: KEDIT_STATS_CORPUS or generated)"),
    data: Path | None = typer.Option(
        None, help="CounterFact records (default: counterfact_extra/counterfact-val.json in the data folder)"
    ),
    batches: int = typer.Option(5),
    batch_size: int = typer.Option(8),
    facts: int = typer.Option(300, help="canary facts (the service's KEDIT_CANARY_FACTS)"),
    text_tokens: int = typer.Option(256),
    prompts: int = typer.Option(2),
    gen_tokens: int = typer.Option(16),
    dtype: str = typer.Option("bfloat16", help="KEDIT_CANARY_DTYPE: " + ", ".join(CANARY_DTYPES)),
    out: Path | None = typer.Option(None, help="write OUT.md and OUT.json"),
) -> None:
    """What the canaries cost per batch: editor seconds vs canary-scoring seconds, side by side."""
    if dtype not in CANARY_DTYPES:
        raise typer.BadParameter(f"{dtype!r} is not one of {', '.join(CANARY_DTYPES)}", param_hint="--dtype")

    over = {k: v for k, v in (("model_path", model), ("stats_corpus", corpus)) if v is not None}
    cfg = KeditConfig(**over)
    editor = cfg.load_editor(Role.WORKER, progress=True)
    lm = editor.lm
    data = data or cfg.data_dir / "counterfact_extra" / "counterfact-val.json"
    records = load_dataset(data, limit=batches * batch_size).records

    copy = LoweredCopy(lm, editor.layers, getattr(torch, dtype))

    def score() -> probes.Scores:  # what the worker's guard does after a batch: refresh its copy, score
        t0 = time.perf_counter()
        copy.refresh()
        s = probes.score(copy.model, lm.tokenizer, chosen, gen_tokens)
        s.seconds = time.perf_counter() - t0
        return s

    t0 = time.perf_counter()
    chosen = probes.choose(copy.model, lm.tokenizer, facts, text_tokens, prompts)
    choose_s = time.perf_counter() - t0
    base = score()
    print(
        f"canaries: {len(chosen.facts)} facts of {len(probes.bundled_facts())} candidates, "
        f"{len(lm.tokenizer(chosen.text)['input_ids'])} text tokens, {len(chosen.prompts)} prompts; chosen in "
        f"{choose_s:.1f} s; unedited perplexity {base.perplexity:.2f}, entropy {base.entropy:.1f}",
        flush=True,
    )

    rows = []
    for b in range(batches):
        batch = records[b * batch_size : (b + 1) * batch_size]
        requests = [
            EditRequest(prompt=r.prompt, subject=r.subject, target_new=r.target_new, target_true=r.target_true)
            for r in batch
        ]
        t0 = time.perf_counter()
        point = editor.save_point()
        save_s = time.perf_counter() - t0
        del point
        t0 = time.perf_counter()
        editor.apply(requests, b + 1)
        edit_s = time.perf_counter() - t0
        scores = score()
        rows.append(
            {
                "batch": b + 1,
                "edit_s": edit_s,
                "canary_s": scores.seconds,
                "save_point_s": save_s,
                "facts_kept": len(chosen.facts) - len(scores.lost(chosen.facts)),
                "perplexity": scores.perplexity,
                "entropy": scores.entropy,
            }
        )
        r = rows[-1]
        print(
            f"batch {b + 1}: edit {edit_s:.2f} s, canaries {scores.seconds:.2f} s "
            f"({100 * scores.seconds / edit_s:.1f} %), save point {save_s:.3f} s; facts kept "
            f"{r['facts_kept']}/{len(chosen.facts)}, perplexity {scores.perplexity:.2f}, entropy {scores.entropy:.1f}",
            flush=True,
        )

    edit_total = sum(r["edit_s"] for r in rows)
    canary_total = sum(r["canary_s"] for r in rows)
    summary = {
        "model": lm.name,
        "dtype": dtype,
        "text_tokens": text_tokens,
        "prompts": prompts,
        "gen_tokens": gen_tokens,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "batch_size": batch_size,
        "batches": batches,
        "canary_facts": len(chosen.facts),
        "candidates": len(probes.bundled_facts()),
        "choose_s": choose_s,
        "edit_s_median": statistics.median(r["edit_s"] for r in rows),
        "canary_s_median": statistics.median(r["canary_s"] for r in rows),
        "overhead": canary_total / edit_total,
        "overhead_reject": (canary_total + sum(r["save_point_s"] for r in rows)) / edit_total,
        "rows": rows,
    }
    print(
        f"overhead of the canaries: {100 * summary['overhead']:.1f} % of the editor's time per batch of "
        f"{batch_size} ({canary_total:.1f} s of {edit_total:.1f} s); with reject's save point "
        f"{100 * summary['overhead_reject']:.1f} %",
        flush=True,
    )
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
        lines = [
            f"Canary overhead per batch on {lm.name} ({summary['threads']} torch threads, {summary['cpu']}; "
            f"canaries in "
            f"{dtype}: {text_tokens} text tokens, {prompts} prompts × {gen_tokens} tokens), "
            f"batches of {batch_size} CounterFact facts; produced by `python -m benchmarks.canary_overhead`.",
            "",
            f"Canaries: {len(chosen.facts)} facts (of {summary['candidates']} bundled candidates), chosen once in "
            f"{choose_s:.1f} s.",
            "",
            "| batch | editor s | canaries s | overhead | save point s | facts kept | perplexity | entropy |",
            "|---|---|---|---|---|---|---|---|",
            *[
                f"| {r['batch']} | {r['edit_s']:.2f} | {r['canary_s']:.2f} | "
                f"{100 * r['canary_s'] / r['edit_s']:.1f} % | "
                f"{r['save_point_s']:.3f} | {r['facts_kept']} | {r['perplexity']:.2f} | {r['entropy']:.1f} |"
                for r in rows
            ],
            "",
            f"**Overhead: {100 * summary['overhead']:.1f} %** of the editor's time (canaries {canary_total:.1f} s, "
            f"editor {edit_total:.1f} s); {100 * summary['overhead_reject']:.1f} % with the save point of `reject`.",
        ]
        out.with_suffix(".md").write_text("\n".join(lines) + "\n")
        print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    typer.run(main)
