"""Choose kedit's SmolLM2 settings by measurement: edited layers × MPES margin × λp × λn.

For each layer set and margin the target vectors z* of a slice of CounterFact are
optimised once; every (λp, λn) pair then inserts the same z* (the closed-form step is
cheap) and is scored on ES / PS / NS / S with the norm growth of the edited matrices.
The slice comes from counterfact_extra/counterfact-val.json by default: disjoint from
the 800 records of the final evaluation.

    python -m benchmarks.sweep --records 100 --out benchmarks/results/sweep-smollm2.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.table import Table
from safetensors.torch import load_file, save_file

from app.config import KeditConfig
from app.editing.build import Role, build_editor
from app.editing.model import load_model
from app.editing.settings import preset
from app.editing.stats import load_key_stats
from app.editing.targets import compute_targets
from app.eval.data import load_dataset
from app.eval.scoring import score_counterfact


def _layers(spec: str) -> tuple[int, ...]:
    if "-" in spec:
        a, b = spec.split("-")
        return tuple(range(int(a), int(b) + 1))
    return tuple(int(x) for x in spec.split(","))


def main(
    data: Path | None = typer.Option(None, help="CounterFact file (default: counterfact_extra/counterfact-val.json)"),
    records: int = typer.Option(100, help="how many records of the slice"),
    batch_size: int | None = typer.Option(
        None,
        help="insert the slice as sequential batches of this size (default: one batch); each batch "
        "is solved with the earlier ones in place, as in a sequential run",
    ),
    layers: list[str] = typer.Option(["4-8", "3-7", "2-6", "2-8"], help="layer sets, '4-8' or '2,4,6' (repeatable)"),
    margin: list[int] = typer.Option([1, 3], help="MPES margins (repeatable; 0 = MPES off)"),
    lambda_p: str = typer.Option("200,1000,5000,15000", help="comma-separated λp values"),
    lambda_n: str = typer.Option("5,20", help="comma-separated λn values"),
    out: Path | None = typer.Option(None, help="write the rows here as JSON (and a .md table beside it)"),
    z_cache: Path | None = typer.Option(None, help="keep each configuration's z* here and reuse it on a rerun"),
) -> None:
    console = Console()
    cfg = KeditConfig()
    lm = load_model(cfg.model_path, cache_dir=cfg.cache_dir, device=cfg.device)
    corpus = cfg.stats_corpus or cfg.data_dir / "corpus"  # WikiText, as in the committed sweeps
    path = data or cfg.data_dir / "counterfact_extra" / "counterfact-val.json"
    recs = load_dataset(path, limit=records).records
    reqs = [r.request() for r in recs]
    baseline = score_counterfact(lm.model, lm.tokenizer, recs)
    console.print(f"unedited on {len(recs)} records of {path.name}: {baseline}")
    rows = []
    for layer_spec in layers:
        ls = _layers(layer_spec)
        stats = load_key_stats(lm, preset("smollm2", "encore", layers=ls), corpus=corpus, cache_dir=cfg.cache_dir)
        for m in margin:
            settings = preset("smollm2", "encore", layers=ls, mpes_margin=m)
            editor = build_editor(lm, settings, Role.EVAL, key_stats=stats)
            key = f"{path.stem}-{len(reqs)}-{layer_spec}-m{m}"
            cached = z_cache / f"{key}.safetensors" if z_cache else None
            if cached and cached.exists():  # z* depends only on the layers, the margin and the slice
                saved = load_file(cached)
                z_star, steps, z_seconds = saved["z_star"], saved["steps"].tolist(), float(saved["seconds"])
            else:
                t0 = time.perf_counter()
                tv = compute_targets(lm, reqs, editor.templates, settings)
                z_seconds = time.perf_counter() - t0
                z_star, steps = tv.z_star, tv.steps
                if cached:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    save_file(
                        {
                            "z_star": z_star.contiguous(),
                            "steps": torch.tensor(steps),
                            "seconds": torch.tensor(z_seconds),
                        },
                        cached,
                    )
            for lp in [float(x) for x in lambda_p.split(",")]:
                for ln in [float(x) for x in lambda_n.split(",")]:
                    trial = build_editor(
                        lm,
                        settings.model_copy(update={"lambda_p": lp, "lambda_n": ln}),
                        Role.EVAL,
                        key_stats=stats,
                        templates=editor.templates,
                    )
                    size = batch_size or len(reqs)
                    for b, start in enumerate(range(0, len(reqs), size)):
                        trial.reapply(reqs[start : start + size], list(z_star[start : start + size]), batch_id=b)
                    scores = score_counterfact(lm.model, lm.tokenizer, recs)
                    growth = [n.growth for n in trial.norms()]
                    for b in reversed(trial.batch_ids):
                        trial.remove_batch(b)
                    row = {
                        "layers": layer_spec,
                        "margin": m,
                        "lambda_p": lp,
                        "lambda_n": ln,
                        **scores,
                        "max_growth": max(growth),
                        "mean_steps": sum(steps) / len(reqs),
                        "z_seconds_per_edit": z_seconds / len(reqs),
                    }
                    rows.append(row)
                    console.print(row)
    shape = f"batches of {batch_size}" if batch_size else "one batch"
    table = Table(title=f"SmolLM2 sweep, {len(recs)} records of {path.name} ({shape})")
    cols = [
        "layers",
        "margin",
        "lambda_p",
        "lambda_n",
        "es",
        "ps",
        "ns",
        "s",
        "max_growth",
        "mean_steps",
        "z_seconds_per_edit",
    ]
    for c in cols:
        table.add_column(c)
    for r in sorted(rows, key=lambda r: -r["s"]):
        table.add_row(*[f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols])
    console.print(table)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {
                    "data": str(path.name),
                    "records": len(recs),
                    "batch_size": batch_size,
                    "baseline": baseline,
                    "rows": rows,
                },
                indent=1,
            )
        )
        md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        md += [
            "| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |"
            for r in sorted(rows, key=lambda r: -r["s"])
        ]
        out.with_suffix(".md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    typer.run(main)
