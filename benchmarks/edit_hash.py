"""The weights hash after a fixed sequence of edits on SmolLM2, to check a refactor changes nothing.

Applies the first `--records` CounterFact facts in batches of `--batch-size` with a preset and
prints the weights hash after each batch, with every fact's steps and P(target) before and
after. `--out` keeps z* too; `--against` compares with such a file from another checkout:

    PYTHONPATH=../main python -P -m benchmarks.edit_hash --out /tmp/old.json  # the code before
    python -m benchmarks.edit_hash --against /tmp/old.json                    # the code after

(-P: the current folder is not put first on the module path, so `app` comes from ../main.)

Only names that exist in both checkouts are used, and C₀ comes from the WikiText corpus of the
data folder (given explicitly: the default corpus is not the same in every checkout).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import typer

from app.editing.editor import Editor
from app.editing.model import load_model
from app.editing.settings import preset
from app.editing.stats import load_key_stats
from app.eval.data import load_dataset

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main(
    records: int = typer.Option(8, help="CounterFact records (first N)"),
    batch_size: int = typer.Option(4, help="edits per batch"),
    preset_name: str = typer.Option("smollm2", "--preset", help="settings preset"),
    method: str = typer.Option("encore", help="encore | memit | alphaedit"),
    out: Path | None = typer.Option(None, help="write hashes, steps, probabilities and z* here (JSON)"),
    against: Path | None = typer.Option(None, help="compare with a file written by --out"),
    data_dir: Path = typer.Option(SHARED_DATA, help="the shared data folder (CounterFact, corpus/)"),
) -> None:
    torch.manual_seed(0)
    lm = load_model()
    settings = preset(preset_name, method)
    editor = Editor(lm, settings, load_key_stats(lm, settings, corpus=data_dir / "corpus", progress=False))
    recs = load_dataset(data_dir / "counterfact" / "counterfact.json", limit=records).records
    run: dict = {"hashes": [], "steps": [], "prob_before": [], "prob_after": [], "z_star": []}
    for b, start in enumerate(range(0, len(recs), batch_size), start=1):
        t0 = time.perf_counter()
        result = editor.apply([r.request() for r in recs[start : start + batch_size]], batch_id=b)
        run["hashes"].append(editor.weights_hash())
        for o in result.outcomes:
            run["steps"].append(o.mpes_steps)
            run["prob_before"].append(o.prob_before)
            run["prob_after"].append(o.prob_after)
            run["z_star"].append(o.z_star.tolist())
        print(f"batch {b}: {time.perf_counter() - t0:.1f} s, weights hash {run['hashes'][-1]}")
    print(f"steps {run['steps']}")
    print(f"P(target) before {[round(p, 4) for p in run['prob_before']]}")
    print(f"P(target) after  {[round(p, 4) for p in run['prob_after']]}")
    if out:
        out.write_text(json.dumps(run))
    if against:
        old = json.loads(against.read_text())
        same = old["hashes"] == run["hashes"]
        z_diff = (torch.tensor(old["z_star"]) - torch.tensor(run["z_star"])).abs().max().item()
        p_diff = max(
            abs(a - b)
            for a, b in zip(old["prob_after"] + old["prob_before"], run["prob_after"] + run["prob_before"], strict=True)
        )
        print(
            f"against {against}: weights hash {'IDENTICAL' if same else 'DIFFERENT'}; steps "
            f"{'equal' if old['steps'] == run['steps'] else 'DIFFERENT: ' + str(old['steps'])}; "
            f"max |Δz*| {z_diff:.3g}; max |ΔP(target)| {p_diff:.3g}"
        )


if __name__ == "__main__":
    typer.run(main)
