"""The CPU lifelong run (issue: lifelong health): 2,000 sequential edits of SmolLM2, the smollm2
preset against MEMIT (and against the preset before the lever screen), on facts never used for tuning.

The first --records records of counterfact_extra/counterfact-edit.json, batches of 100, with
CounterFact-style neighbourhoods (`--neighbours 10`), C₀ from WikiText without its held-out
validation file, a checkpoint every 500 edits (a fixed sample of 500 edited facts scored,
WikiText perplexity, generation entropy, norms of every edited layer); the final scores use
every edited fact. Each run is a `kedit eval` folder under --work: a finished one is skipped,
a cut one resumes from its last checkpoint, so the same command picks up where it stopped
(one run after the other; --only runs one, so two shells can run two at once). With --carry DIR
the small part of each run (run.json, each batch's z*, summary.json) is kept in DIR as it goes:
commit DIR, and the same command on another machine takes the run up from there.

    python benchmarks/lifelong_cpu.py --work /tmp/lifelong --carry benchmarks/results/runs \
        --out benchmarks/results/lifelong-cpu-2000

--out gets table.md (one row per run) and lifelong.png (ES/PS/NS, perplexity, entropy and the
growth of every edited layer against the number of edits, the runs overlaid), as `kedit eval
compare` draws them, once every chosen run has finished.
"""

from __future__ import annotations

from pathlib import Path

import typer
from levers import Lever, command, run_carried  # benchmarks/levers.py: the same `kedit eval` command line

from app.config import KeditConfig
from app.eval.compare import compare

RUNS = [
    Lever("encore-preset", "ENCORE with the smollm2 preset (the service's default: λp 2500, λn 20, margin 3)"),
    Lever("memit", "MEMIT with the smollm2 preset's layers, λp and C₀ (no MPES, no norm constraint)", method="memit"),
    Lever(
        "encore-old-preset",
        "ENCORE with the smollm2 preset before the lever screen (λp 1000, λn 10, margin 3)",
        overrides={"lambda_p": 1000.0, "lambda_n": 10.0},
    ),
]


def main(
    work: Path = typer.Option(
        Path("/tmp/kedit-lifelong"), help="run folders (kept: a rerun skips finished runs and resumes cut ones)"
    ),
    out: Path | None = typer.Option(
        None, help="folder for table.md and lifelong.png (written once the chosen runs have finished)"
    ),
    only: list[str] = typer.Option([], help="run only these (repeatable): " + ", ".join(r.label for r in RUNS)),
    records: int = typer.Option(2000, min=1, help="sequential edits per run"),
    batch_size: int = typer.Option(100, min=1),
    checkpoint_edits: int = typer.Option(500, min=1, help="a checkpoint every this many edits"),
    checkpoint_sample: int = typer.Option(500, min=1, help="edited facts scored at a checkpoint"),
    device: str = typer.Option("cpu", help="cpu, or cuda on a lent GPU (the same protocol, minutes instead of hours)"),
    carry: Path | None = typer.Option(
        None,
        help="keep each run's run.json, summary.json and trail/ (a few MB) here "
        "as it goes and take a run up from here: commit it to go on in another session",
    ),
) -> None:
    by_label = {r.label: r for r in RUNS}
    unknown = [o for o in only if o not in by_label]
    if unknown:
        raise typer.BadParameter(f"unknown run(s) {unknown}; choose from {', '.join(by_label)}")
    chosen = [by_label[o] for o in only] if only else RUNS
    data_dir = KeditConfig().data_dir
    work.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parent.parent
    for run in chosen:
        run_dir = work / f"{run.label}-{records}"
        log = work / f"{run.label}-{records}.log"
        print(f"{run.label}: {run.why} (log: {log})", flush=True)
        rc = run_carried(
            lambda run=run, run_dir=run_dir: command(
                run,
                run_dir,
                data_dir,
                work,
                records,
                batch_size,
                data_file="counterfact-edit.json",
                checkpoint_every=max(1, checkpoint_edits // batch_size),
                checkpoint_sample=checkpoint_sample,
                device=device,
            ),
            run_dir,
            log,
            repo,
            carry,
        )
        if rc != 0:
            print(f"{run.label}: exited {rc}; see {log} (run the same command again to resume)", flush=True)
            raise typer.Exit(1)
        print(f"{run.label}: finished ({run_dir})", flush=True)
    done = [d for d in (work / f"{r.label}-{records}" for r in chosen) if (d / "summary.json").exists()]
    if out and len(done) == len(chosen):
        out.mkdir(parents=True, exist_ok=True)
        table, png = compare(done, out / "lifelong.png", out / "table.md")
        print(f"wrote {out / 'table.md'} and {png}")


if __name__ == "__main__":
    typer.run(main)
