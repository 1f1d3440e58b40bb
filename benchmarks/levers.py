"""Screen the levers that might keep SmolLM2 healthy over thousands of edits (issue: lifelong health).

Each lever is one `kedit eval` run of N sequential edits (default 500, batches of 100) on the
tuning slice `counterfact_extra/counterfact-val.json` (never the edit file), with
CounterFact-style neighbourhoods built for it (`--neighbours 10`, subjects from the val and
train files), scored with ES / PS / NS, WikiText perplexity, generation entropy and the norm
growth of every edited layer. Runs are folders under --work: a finished one is skipped, an
interrupted one continues from its last checkpoint, so the same command picks up where it
stopped. The table goes to --table (markdown) and --table with .json.

    python -m benchmarks.levers --work /tmp/levers --table benchmarks/results/levers-smollm2.md
    python -m benchmarks.levers --work /tmp/levers --only preset --only lambda-n-40 --records 1000
    python -m benchmarks.levers --work /tmp/levers --report --table benchmarks/results/levers-smollm2-500.md

The levers and why each is here are in LEVERS; `--list` prints them.
"""

from __future__ import annotations

import filecmp
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import typer

from app.config import KeditConfig
from app.eval.compare import load_summary, markdown_table


@dataclass(frozen=True)
class Lever:
    label: str
    why: str
    method: str = "encore"
    overrides: dict = field(default_factory=dict)
    corpus: str = "wikitext"  # key of CORPORA
    stats_tokens: int = 150_000


# The C₀ corpora: WikiText without its validation file (held out for perplexity), and plain Wikipedia.
CORPORA = {
    "wikitext": ("corpus", ["wikitext103_train_excerpt.tokens.txt", "wikitext2_raw_test.txt"]),
    "enwiki": ("corpus_extra", None),
}

LEVERS = [
    Lever(
        "preset",
        "the smollm2 preset the screen started from (λp 1000, λn 10, margin 3), C₀ from 150k WikiText tokens",
        overrides={"lambda_p": 1000.0, "lambda_n": 10.0},
    ),
    Lever("lambda-n-40", "ENCORE's norm constraint 4× stronger", overrides={"lambda_n": 40.0}),
    Lever("lambda-p-5000", "preservation of generic text 5× stronger", overrides={"lambda_p": 5000.0}),
    # SmolLM2's C₀ has mean eigenvalue 0.018 (layer 4) to 0.033 (layer 8): AlphaEdit's absolute 0.02 calls
    # 65–80 % of the directions "null". The least-used 5 % of the energy is 400–470 of 1,536 directions; a
    # ridge of 300·tr(C₀)/f is 5–10, today's 10 where the keys are largest.
    Lever(
        "alphaedit-energy",
        "AlphaEdit with a scale-free null space (the 5 % least-used energy of C₀), its ridge "
        "scaled to C₀, plus MPES (margin 3)",
        method="alphaedit",
        overrides={
            "nullspace_threshold": None,
            "nullspace_energy": 0.05,
            "lambda_n_relative": True,
            "lambda_n": 300.0,
            "mpes_margin": 3,
            "lr": 0.5,
        },
    ),
    Lever(
        "c0-wiki-900k",
        "the smollm2 preset (λp 2500, λn 20) with C₀ from all of WikiText but the held-out file (~0.9M tokens)",
        stats_tokens=900_000,
    ),
    Lever(
        "c0-enwiki-3m",
        "the smollm2 preset (λp 2500, λn 20) with C₀ from 3M tokens of plain Wikipedia (corpus_extra)",
        corpus="enwiki",
        stats_tokens=3_000_000,
    ),
    Lever(
        "neighbour-keys-5",
        "per fact, the outputs of 5 other (model-generated) subjects asked with the fact's own "
        "prompt are kept in this batch's solve",
        overrides={"neighbour_keys": 5},
    ),
    Lever(
        "lambda-n-relative",
        "λn scaled to each layer's C₀ (390·tr(C₀)/f: 7 at layer 4 to 13 at layer 8, 10 on average)",
        overrides={"lambda_n_relative": True, "lambda_n": 390.0},
    ),
    # At 500 edits λn 40 and λp 5000 each cut the norm growth by a quarter, at 5 and 11 points of ES:
    # half of each should keep most of both gains for less ES.
    Lever(
        "lambda-n-20-p-2500",
        "half of each of the two strongest levers together (λn 20, λp 2500)",
        overrides={"lambda_n": 20.0, "lambda_p": 2500.0},
    ),
    # The last edited layer grows most: it takes whatever of each fact's residual the layers below
    # did not (59 % at layer 8 against 21–38 % at 4–7 after 500 edits). More layers share it.
    Lever(
        "layers-3-10",
        "the preset the screen started from, over 8 layers (3–10) instead of 5 (4–8)",
        overrides={"layers": [3, 4, 5, 6, 7, 8, 9, 10], "lambda_p": 1000.0, "lambda_n": 10.0},
    ),
    # The service's log stores each batch's factors in 16 bits and its worker applies them rounded
    # (KEDIT_FACTOR_DTYPE): the same edits with float32 factors and with the rounded ones.
    Lever(
        "factors-float32",
        "today's smollm2 preset, its factors applied in float32",
        overrides={"factor_dtype": "float32"},
    ),
    Lever(
        "factors-bfloat16",
        "today's smollm2 preset, its factors (U, V, keys) rounded to bfloat16 before they are applied, as the "
        "service's worker does by default",
        overrides={"factor_dtype": "bfloat16"},
    ),
]


def corpus_path(name: str, data_dir: Path, work: Path) -> Path:
    """A folder of the corpus's files (symbolic links), so that held-out files stay out of C₀."""
    sub, files = CORPORA[name]
    if files is None:
        return data_dir / sub
    folder = work / f"corpus-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        link = folder / f
        if not link.exists():
            link.symlink_to(data_dir / sub / f)
    return folder


def command(
    lever: Lever,
    run_dir: Path,
    data_dir: Path,
    work: Path,
    records: int,
    batch_size: int,
    data_file: str = "counterfact-val.json",
    checkpoint_every: int | None = None,
    checkpoint_sample: int | None = None,
    device: str = "cpu",
) -> list[str]:
    """The `kedit eval` command of one lever: a new run, or the resumption of a cut one."""
    corpus = corpus_path(lever.corpus, data_dir, work)  # also what a carried run.json names
    if (run_dir / "checkpoint").exists() or (run_dir / "trail" / "progress.json").exists():
        return [sys.executable, "-m", "app.cli", "eval", "--resume", str(run_dir), "--no-progress"]
    extra = data_dir / "counterfact_extra"
    sets = [f"--set={k}={json.dumps(v)}" for k, v in {**lever.overrides, "stats_tokens": lever.stats_tokens}.items()]
    every = checkpoint_every or max(1, -(-records // batch_size // 2))
    sample = ["--checkpoint-sample", str(checkpoint_sample)] if checkpoint_sample else []
    return [
        sys.executable,
        "-m",
        "app.cli",
        "eval",
        "--dataset",
        "counterfact-extra",
        "--data",
        str(extra / data_file),
        "--records",
        str(records),
        "--batch-size",
        str(batch_size),
        "--neighbours",
        "10",
        "--neighbour-pool",
        str(extra / "counterfact-train.json"),
        "--method",
        lever.method,
        *sets,
        "--corpus",
        str(corpus),
        "--checkpoint-every",
        str(every),
        *sample,
        "--device",
        device,
        "--out",
        str(run_dir),
        "--no-progress",
    ]


# What of a run folder carries it to another machine: enough to resume it (run.json and trail/, the
# z* of every batch done) or to report it (summary.json); a few MB, not the editor's checkpoints.
CARRIED = ("run.json", "summary.json")


def batches_done(run_dir: Path) -> float:
    if (run_dir / "summary.json").exists():
        return float("inf")
    progress = run_dir / "trail" / "progress.json"
    return json.loads(progress.read_text())["batches_done"] if progress.exists() else 0


def sync_run(src: Path, dst: Path) -> None:
    """Copy the carried part of run folder `src` to `dst` (files that changed only)."""
    finished = (src / "summary.json").exists()
    files = [src / n for n in CARRIED if (src / n).is_file()]
    if not finished and (src / "trail").is_dir():
        # Batch files before progress.json, so that a copy cut halfway never names a batch it lacks.
        trail = sorted(f for f in (src / "trail").iterdir() if f.is_file() and not f.name.endswith(".tmp"))
        files += [f for f in trail if f.name != "progress.json"] + [f for f in trail if f.name == "progress.json"]
    for f in files:
        target = dst / f.relative_to(src)
        if not target.exists() or not filecmp.cmp(f, target, shallow=False):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
    if finished:
        shutil.rmtree(dst / "trail", ignore_errors=True)


def run_carried(make_command, run_dir: Path, log: Path, cwd: Path, carry: Path | None) -> int:
    """Run one `kedit eval` (built by `make_command()`), taking up a carried copy of the run from
    `carry` first if it is further along, and keeping that copy current while the run goes on
    (every 30 s and at the end), so that committing `carry` saves a long run between sessions."""
    saved = carry / run_dir.name if carry else None
    if saved is not None and batches_done(saved) > batches_done(run_dir):
        sync_run(saved, run_dir)
    if (run_dir / "summary.json").exists():
        return 0
    with open(log, "a") as out:
        proc = subprocess.Popen(make_command(), cwd=cwd, stdout=out, stderr=out)
        while True:
            try:
                rc = proc.wait(timeout=30)
                break
            except subprocess.TimeoutExpired:
                if saved is not None and run_dir.exists():
                    sync_run(run_dir, saved)
    if saved is not None and run_dir.exists():
        sync_run(run_dir, saved)
    return rc


def row(lever: Lever, summary: dict, edits: int | None = None) -> dict:
    """The table row of a finished run, or (`edits`) of its checkpoint after that many edits."""
    base = summary["baseline"]
    if edits is None or edits == summary.get("edits"):
        point = {"scores": summary, "baseline": base, "health": summary["health"]}
        edits = summary["edits"]
        batches = summary["batches"]
    else:
        point = next(c for c in summary["checkpoints"] if c["edits"] == edits)
        batches = summary["batches"][: point["batches"]]
    growth = {layer: next(r["growth"] for r in rows if r["edits"] == edits) for layer, rows in summary["norms"].items()}
    return {
        "lever": lever.label,
        "why": lever.why,
        "method": lever.method,
        "overrides": lever.overrides,
        "corpus": lever.corpus,
        "stats_tokens": lever.stats_tokens,
        "edits": edits,
        "from_run": summary.get("edits", summary.get("n_records")),
        "es": point["scores"]["es"],
        "ps": point["scores"]["ps"],
        "ns": point["scores"]["ns"],
        "ns_unedited": point["baseline"]["ns"],
        "ppl": point["health"]["perplexity"],
        "ppl_unedited": base["perplexity"],
        "entropy": point["health"]["gen_entropy"],
        "entropy_unedited": base["gen_entropy"],
        "growth": growth,
        "max_growth": max(growth.values()),
        "s_per_edit": sum(b["seconds"] for b in batches) / sum(b["edits"] for b in batches),
    }


def finished_rows(folders: list[Path], records: int) -> list[dict]:
    """A row per lever with a finished run of `records` edits in one of `folders`, or else a longer
    run (finished, or cut with its progress saved) with a checkpoint at `records` edits: a 1,000-edit
    confirmation screens at 500 too."""
    rows = []
    for lv in LEVERS:
        runs = sorted(
            (int(d.name.rsplit("-", 1)[1]), d)
            for work in folders
            for d in work.glob(f"{lv.label}-*")
            if d.is_dir() and d.name.rsplit("-", 1)[1].isdigit() and d.name.rsplit("-", 1)[0] == lv.label
        )
        for n, d in runs:
            progress = [p for p in (d / "trail" / "progress.json", d / "checkpoint" / "progress.json") if p.exists()]
            if (d / "summary.json").exists():
                summary = load_summary(d)
            elif progress:
                summary = json.loads(progress[0].read_text())
            else:
                continue
            if n == records and "edits" in summary or any(c["edits"] == records for c in summary["checkpoints"]):
                rows.append(row(lv, summary, records))
                break
    return rows


def write_table(rows: list[dict], path: Path) -> None:
    header = [
        "lever",
        "settings",
        "edits",
        "ES",
        "PS",
        "NS (unedited)",
        "NS kept %",
        "ppl (Δ %)",
        "entropy",
        "max ‖W−W₀‖/‖W₀‖ %",
        "s/edit",
    ]
    cells = []
    for r in rows:
        settings = ", ".join(f"{k} {v}" for k, v in r["overrides"].items()) or "preset"
        settings = f"{r['method']}: {settings}; C₀ {r['corpus']} {r['stats_tokens']:,}"
        edits = f"{r['edits']}" + (f" (of {r['from_run']})" if r.get("from_run", r["edits"]) != r["edits"] else "")
        cells.append(
            [
                r["lever"],
                settings,
                edits,
                f"{r['es']:.1f}",
                f"{r['ps']:.1f}",
                f"{r['ns']:.1f} ({r['ns_unedited']:.1f})",
                f"{100 * r['ns'] / r['ns_unedited']:.0f}",
                f"{r['ppl']:.2f} ({100 * (r['ppl'] / r['ppl_unedited'] - 1):+.0f})",
                f"{r['entropy']:.0f} ({r['entropy_unedited']:.0f})",
                f"{100 * r['max_growth']:.0f}",
                f"{r['s_per_edit']:.2f}",
            ]
        )
    note = (
        "Sequential edits of counterfact_extra/counterfact-val.json (the tuning slice) on SmolLM2-135M-Instruct, "
        "batches of 100; NS over the record's locality prompt plus up to 10 neighbourhood prompts built like "
        "CounterFact's; perplexity on 4,096 held-out WikiText-103 validation tokens; unedited model in brackets. "
        "Produced by `python -m benchmarks.levers`. s/edit is the wall time of the edits on whatever machine "
        "ran the lever and whatever else ran beside it: compare it only between rows of one sitting. "
        '"500 (of 1000)": the 500-edit checkpoint of a 1,000-edit run.\n\n'
    )
    path.write_text(
        note + markdown_table(header, cells) + "\n" + "\n".join(f"- **{r['lever']}**: {r['why']}" for r in rows) + "\n"
    )
    path.with_suffix(".json").write_text(json.dumps(rows, indent=1))


def main(
    work: Path = typer.Option(
        Path("/tmp/kedit-levers"), help="run folders (kept: a rerun skips finished levers and resumes cut ones)"
    ),
    table: Path | None = typer.Option(None, help="markdown table of the finished levers (and .json beside it)"),
    only: list[str] = typer.Option([], help="run only these levers (repeatable); default: all, in order"),
    records: int = typer.Option(500, min=1, help="sequential edits per lever"),
    batch_size: int = typer.Option(100, min=1),
    device: str = typer.Option("cpu", help="cpu or cuda (a lent GPU screens a lever in minutes)"),
    list_: bool = typer.Option(False, "--list", help="print the levers and exit"),
    report: bool = typer.Option(
        False, help="run nothing: only print (and with --table write) the table of what --work holds"
    ),
    carry: Path | None = typer.Option(
        None,
        help="keep each run's run.json, summary.json and trail/ (its z*, a few MB) "
        "here while it goes on, and take a run up from here: commit it to continue a "
        "run on another machine, e.g. benchmarks/results/runs",
    ),
) -> None:
    by_label = {lv.label: lv for lv in LEVERS}
    if list_:
        for lv in LEVERS:
            print(f"{lv.label:20s} {lv.why}")
        return
    unknown = [o for o in only if o not in by_label]
    if unknown:
        raise typer.BadParameter(f"unknown lever(s) {unknown}; --list shows them")
    data_dir = KeditConfig().data_dir
    chosen = [by_label[o] for o in only] if only else LEVERS
    work.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parent.parent
    for lv in [] if report else chosen:
        run_dir = work / f"{lv.label}-{records}"
        if (run_dir / "summary.json").exists() or carry and (carry / run_dir.name / "summary.json").exists():
            print(f"{lv.label}: finished earlier ({run_dir})", flush=True)
            continue
        print(f"{lv.label}: {lv.why}", flush=True)
        log = work / f"{lv.label}-{records}.log"
        rc = run_carried(
            lambda lv=lv, run_dir=run_dir: command(lv, run_dir, data_dir, work, records, batch_size, device=device),
            run_dir,
            log,
            repo,
            carry,
        )
        if rc != 0:
            print(f"{lv.label}: exited {rc}; see {log} (rerun to resume)", flush=True)
    rows = finished_rows([work, carry] if carry else [work], records)
    if table and table.with_suffix(".json").exists():
        # Rows measured earlier (their run folders may be gone, e.g. on another machine) stay in the
        # table unless this run measured the same lever again.
        fresh = {r["lever"] for r in rows}
        kept = [
            r
            for r in json.loads(table.with_suffix(".json").read_text())
            if r["lever"] not in fresh and r["edits"] == records
        ]
        order = {lv.label: i for i, lv in enumerate(LEVERS)}
        rows = sorted(rows + kept, key=lambda r: order.get(r["lever"], len(order)))
    for r in rows:
        print(
            f"{r['lever']:20s} ES {r['es']:.1f} PS {r['ps']:.1f} NS {r['ns']:.1f} ({r['ns_unedited']:.1f}) "
            f"ppl {r['ppl']:.2f} ({r['ppl_unedited']:.2f}) entropy {r['entropy']:.0f} "
            f"max growth {100 * r['max_growth']:.0f}% "
            f"{r['s_per_edit']:.2f} s/edit",
            flush=True,
        )
    if table and rows:
        table.parent.mkdir(parents=True, exist_ok=True)
        write_table(rows, table)
        print(f"wrote {table}")


if __name__ == "__main__":
    typer.run(main)
