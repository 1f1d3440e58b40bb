"""The lifelong-editing runs: one driver for the 2,000-edit CPU runs, the 10,000-edit GPU run and
8B-scale timing, and one report of their results.

    python -m benchmarks.lifelong lifelong --device cuda --data-dir DATA --model SmolLM2.gguf \
        --work /tmp/kedit-lifelong --out "$OUT" --deadline-s 500
    python -m benchmarks.lifelong llama-timing --device cuda --tokenizer TOKENIZER_DIR \
        --corpus DATA/corpus/wikitext103_train_excerpt.tokens.txt --out "$OUT"
    python -m benchmarks.lifelong report OUT/encore.json OUT/memit.json --out benchmarks/results/lifelong-gpu
    python -m benchmarks.lifelong carried --work /tmp/lifelong --carry benchmarks/results/runs \
        --out benchmarks/results/lifelong-cpu-2000

`lifelong` (one short call on a lent GPU machine; --device cpu runs the same protocol) edits all
of counterfact_extra/counterfact-train.json, then counterfact-edit.json, up to --records
(10,000), in batches of 100 on SmolLM2, once per method (default: the smollm2 preset's ENCORE
and MEMIT side by side, one process each on the same GPU; a candidate setting runs beside them
as `--method 'LABEL=encore:{"lambda_n": 40}'`). Every 1,000 edits it scores a fixed sample of 500
edited facts, WikiText perplexity, generation entropy and the norm growth of every edited layer,
and writes OUT/<label>.json at once, so a run cut short by the machine's time limit still
reports. It stops cleanly before --deadline-s at a batch boundary with its state saved under
--work; the same command on the same machine continues from there.

`llama-timing` builds a model of Llama-3-8B's shape (32 layers, 4096 wide, MLP 14,336,
vocabulary 128,256) with random weights in bf16, computes C₀ on a small text budget, and
times one batch of 100 CounterFact edits with the authors' llama3-8b ENCORE settings:
with MPES, and with 25 fixed optimisation steps (the paper: 3.31 and 8.71 s per edit).
With random weights a target rarely becomes top-1, so MPES seldom stops early there: the
figure measures the batched optimisation's cost per step, and the mean number of steps
is printed beside it. A warm-up batch runs first, untimed.

`report` turns the published <label>.json files (finished or cut short) into DIR/table.md (one
row per checkpoint and method: ES/PS/NS beside the unedited model's on the same facts,
perplexity, generation entropy, norm growth of every layer, seconds per edit) and
DIR/lifelong.png, drawn as `kedit eval compare` draws runs (app/eval/plots.py).

`carried` is the CPU protocol (issue: lifelong health): 2,000 sequential edits of SmolLM2, the
smollm2 preset against MEMIT (and against the preset before the lever screen), on facts never
used for tuning: the first --records records of counterfact_extra/counterfact-edit.json,
batches of 100, with CounterFact-style neighbourhoods (`--neighbours 10`), C₀ from WikiText
without its held-out validation file, a checkpoint every 500 edits (a fixed sample of 500
edited facts scored, WikiText perplexity, generation entropy, norms of every edited layer); the
final scores use every edited fact. Each run is a `kedit eval` folder under --work: a finished
one is skipped, a cut one resumes from its last checkpoint, so the same command picks up where
it stopped (one run after the other; --only runs one, so two shells can run two at once). With
--carry DIR the small part of each run (run.json, each batch's z*, summary.json) is kept in DIR
as it goes: commit DIR, and the same command on another machine takes the run up from there.
--out gets table.md (one row per run) and lifelong.png, as `kedit eval compare` draws them, once
every chosen run has finished.

All four are tested on CPU with a tiny model (tests/benchmarks/test_lifelong.py, test_carry.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import typer

from app.eval.data import load_dataset
from app.eval.health import HealthConfig
from app.eval.runner import RunInterrupted, RunOptions, resume_from, run_eval

# `report` and `carried` import the table and plot code (rich, matplotlib) when they run: the GPU
# machine's `lifelong` and `llama-timing` start with only the wheels the bundle brings.

ROOT = Path(__file__).resolve().parents[1]

cli = typer.Typer(help=__doc__.split("\n\n")[0], no_args_is_help=True, add_completion=False)

EDIT_FILES = ("counterfact_extra/counterfact-train.json", "counterfact_extra/counterfact-edit.json")
KEY_CORPUS = "corpus/wikitext103_train_excerpt.tokens.txt"
PPL_TEXT = "corpus/wikitext103_valid.tokens.txt"


def lifelong_records(data_dir: Path, n: int) -> list:
    """The first `n` records of the train file followed by the edit file, numbered 0…n−1."""
    records = []
    for name in EDIT_FILES:
        if len(records) >= n:
            break
        path = data_dir / name
        whole = load_dataset(path).records
        records.extend(whole[: n - len(records)])
    if len(records) < n:
        raise SystemExit(
            f"only {len(records)} records in {', '.join(EDIT_FILES)} under {data_dir}; ask for at most that"
        )
    return [replace(r, case_id=i) for i, r in enumerate(records)]


def _compact(state) -> dict:
    """What a reader needs from a partial run: scores at each checkpoint, timings, norms."""
    d = state.to_json()
    d.pop("baseline_details", None)
    return d


def _publish(out: Path, method: str, payload: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{method}.json.tmp"
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, out / f"{method}.json")


def _print_checkpoint(method: str, state) -> None:
    c = state.checkpoints[-1]
    s, b = c["scores"], c["baseline"]
    h = c.get("health") or {}
    growth = max((rows[-1]["growth"] for rows in state.norms.values()), default=0.0)
    spe = sum(x["seconds"] for x in state.batches) / max(1, sum(x["edits"] for x in state.batches))
    print(
        f"[{method}] {c['edits']} edits: ES {s['es']:.1f} PS {s['ps']:.1f} NS {s['ns']:.1f} (unedited {b['ns']:.1f}) "
        f"ppl {h.get('perplexity', float('nan')):.2f} GE {h.get('gen_entropy', float('nan')):.1f} "
        f"max growth {100 * growth:.1f}% | {spe:.3f} s/edit",
        flush=True,
    )


def parse_run(spec: str) -> tuple[str, str, dict]:
    """'encore' → ('encore', 'encore', {}); 'wide=encore:{"layers": [3,4,5,6,7,8]}' → a labelled variant."""
    label, _, rest = spec.partition("=") if "=" in spec.split(":", 1)[0] else (spec.split(":", 1)[0], "", spec)
    method, _, raw = rest.partition(":")
    try:
        overrides = json.loads(raw) if raw else {}
    except json.JSONDecodeError as e:
        raise typer.BadParameter(f"--method {spec!r}: the overrides after ':' must be a JSON object ({e})") from None
    if not isinstance(overrides, dict):
        raise typer.BadParameter(f"--method {spec!r}: the overrides after ':' must be a JSON object")
    return label or method, method, {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}


def run_one(
    spec: str,
    model: str | None,
    data_dir: Path,
    records: int,
    batch_size: int,
    checkpoint_every: int,
    checkpoint_sample: int,
    work: Path,
    out: Path,
    deadline: float,
    device: str,
    cache_dir: Path | None,
    stats_tokens: int | None,
    ppl_tokens: int,
    progress: bool,
) -> None:
    """One run: fresh, or resumed from --work; publishes OUT/<label>.json as it goes."""
    from app.config import KeditConfig
    from app.editing.build import Role, build_editor
    from app.editing.model import load_model
    from app.editing.settings import preset

    recs = lifelong_records(data_dir, records)
    label, method, overrides = parse_run(spec)
    overrides = {**({"stats_tokens": stats_tokens} if stats_tokens else {}), **overrides}
    settings = preset("smollm2", method, **overrides)
    cache_dir = cache_dir or KeditConfig().cache_dir
    lm = load_model(model, cache_dir=cache_dir, device=device)
    editor = build_editor(lm, settings, Role.EVAL, corpus=data_dir / KEY_CORPUS, cache_dir=cache_dir, progress=progress)
    options = RunOptions(
        batch_size=batch_size,
        checkpoint_every=checkpoint_every,
        checkpoint_sample=checkpoint_sample,
        health=HealthConfig(ppl_tokens=ppl_tokens, corpus=str(data_dir / PPL_TEXT)),
    )
    run_dir = work / label
    info = {
        "dataset": "counterfact-extra",
        "data": [str(data_dir / f) for f in EDIT_FILES],
        "model": lm.name,
        "preset": "smollm2",
        "device": device,
        "command": "python -m benchmarks.lifelong lifelong",
    }
    slowest = [0.0]

    def should_stop(state) -> bool:
        slowest[0] = max(slowest[0], state.batches[-1]["seconds"])
        # Room for one more batch, a scored checkpoint and the save, with a margin.
        return time.time() + 3 * slowest[0] + 30 > deadline

    def publish_partial(progress_json: dict) -> None:
        payload = {"method": label, "settings": settings.model_dump(mode="json"), "finished": False}
        _publish(out, label, {**payload, "records": len(recs), "progress": progress_json})

    def on_checkpoint(state) -> None:
        _print_checkpoint(label, state)
        publish_partial(_compact(state))

    kwargs = dict(editor=editor, run_info=info, progress=progress, should_stop=should_stop, on_checkpoint=on_checkpoint)
    try:
        if (run_dir / "checkpoint" / "progress.json").exists():
            print(f"[{label}] resuming from {run_dir}", flush=True)
            summary = resume_from(run_dir, lm, settings, recs, options, **kwargs)
        else:
            summary = run_eval(lm, settings, recs, options=options, out_dir=run_dir, **kwargs)
    except RunInterrupted:
        from app.eval.checkpoint import load_checkpoint

        _, progress_json = load_checkpoint(run_dir)
        print(
            f"[{label}] stopped at the deadline after {progress_json['batches_done']} batches; "
            f"the same command continues it",
            flush=True,
        )
        publish_partial({k: v for k, v in progress_json.items() if k != "baseline_details"})
        return
    summary.pop("per_record", None)  # 10,000 rows: the run folder keeps them
    _publish(out, label, {"method": label, "finished": True, "summary": summary})
    print(
        f"[{label}] finished: ES {summary['es']:.1f} PS {summary['ps']:.1f} NS {summary['ns']:.1f} "
        f"(unedited {summary['baseline']['ns']:.1f}) ppl {summary['health']['perplexity']:.2f} "
        f"(unedited {summary['baseline']['perplexity']:.2f}) {summary['seconds_per_edit']:.3f} s/edit",
        flush=True,
    )


@cli.command()
def lifelong(
    methods: list[str] = typer.Option(
        ["encore", "memit"],
        "--method",
        help="a run: a method of the smollm2 preset, or LABEL=METHOD:{JSON overrides} for a candidate setting, "
        "e.g. 'wide=encore:{\"layers\": [3,4,5,6,7,8]}'; repeatable",
    ),
    model: str | None = typer.Option(None, help="HF folder or .gguf (default: SmolLM2-135M-Instruct)"),
    data_dir: Path = typer.Option(..., help="folder holding counterfact_extra/ and corpus/ (the shared data layout)"),
    records: int = typer.Option(10_000, min=1, help="edits: the train file first, then the edit file"),
    batch_size: int = typer.Option(100, min=1),
    checkpoint_every: int = typer.Option(10, min=1, help="batches between scored checkpoints"),
    checkpoint_sample: int = typer.Option(500, min=1, help="edited facts scored at a checkpoint (fixed sample)"),
    work: Path = typer.Option(Path("/tmp/kedit-lifelong"), help="run folders (checkpoints to continue from)"),
    out: Path = typer.Option(Path(os.environ.get("OUT", "out")), help="where <label>.json is published ($OUT)"),
    deadline_s: float = typer.Option(500.0, help="stop cleanly, state saved, before this many seconds from now"),
    device: str = typer.Option("cuda"),
    cache_dir: Path | None = typer.Option(None, help="model/key-statistics cache"),
    stats_tokens: int | None = typer.Option(None, help="C₀ token budget (default: the preset's)"),
    ppl_tokens: int = typer.Option(4096, min=64, help="WikiText tokens scored for perplexity"),
    parallel: bool = typer.Option(True, help="one process per method at once on the same device"),
    progress: bool = typer.Option(False, help="progress bars (off: the output stays readable in a log)"),
) -> None:
    """10,000 sequential edits per method, checkpoints every 1,000, partial results published as it goes."""
    deadline = time.time() + deadline_s
    for spec in methods:
        parse_run(spec)  # a malformed --method fails here, before any process starts
    if parallel and len(methods) > 1:
        procs = []
        for m in methods:
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.lifelong",
                "lifelong",
                "--method",
                m,
                "--data-dir",
                str(data_dir),
                "--records",
                str(records),
                "--batch-size",
                str(batch_size),
                "--checkpoint-every",
                str(checkpoint_every),
                "--checkpoint-sample",
                str(checkpoint_sample),
                "--work",
                str(work),
                "--out",
                str(out),
                "--deadline-s",
                str(deadline - time.time()),
                "--device",
                device,
                "--ppl-tokens",
                str(ppl_tokens),
                "--no-parallel",
                "--no-progress",
            ]
            cmd += ["--model", model] if model else []
            cmd += ["--cache-dir", str(cache_dir)] if cache_dir else []
            cmd += ["--stats-tokens", str(stats_tokens)] if stats_tokens else []
            # The package is found from the repository root whatever the caller's working directory.
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
            procs.append(subprocess.Popen(cmd, env=env))
        codes = [p.wait() for p in procs]
        if any(codes):
            raise SystemExit(f"a method's process failed: exit codes {dict(zip(methods, codes, strict=True))}")
        return
    for m in methods:
        run_one(
            m,
            model,
            data_dir,
            records,
            batch_size,
            checkpoint_every,
            checkpoint_sample,
            work,
            out,
            deadline,
            device,
            cache_dir,
            stats_tokens,
            ppl_tokens,
            progress,
        )


def llama3_8b_shaped(tokenizer, device: str, dtype: torch.dtype, tiny: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    from app.editing.model import wrap_model

    if tiny:  # same code path, a size a CPU test runs in seconds
        shape = dict(
            hidden_size=64,
            intermediate_size=224,
            num_hidden_layers=10,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=len(tokenizer),
        )
    else:
        shape = dict(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            rope_theta=500000.0,
        )
    config = LlamaConfig(
        **shape,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return wrap_model(model, tokenizer, name="llama3-8b-shaped-random" if not tiny else "tiny-llama", device=device)


@cli.command("llama-timing")
def llama_timing(
    tokenizer_dir: Path = typer.Option(
        ..., "--tokenizer", help="a tokenizer folder (SmolLM2's serves: its ids fit the vocabulary)"
    ),
    corpus: Path = typer.Option(..., help="text for C₀"),
    data: Path = typer.Option(
        ..., help="a CounterFact file (compact or ROME format): its first --edits records are edited"
    ),
    edits: int = typer.Option(100, min=1),
    stats_tokens: int = typer.Option(
        20_000, min=1000, help="C₀ token budget (random weights: statistics only need the right shape)"
    ),
    device: str = typer.Option("cuda"),
    dtype: str = typer.Option("bfloat16", help="bfloat16 or float32"),
    tiny: bool = typer.Option(False, help="a tiny model of the same family (the CPU test)"),
    out: Path = typer.Option(Path(os.environ.get("OUT", "out")), help="where llama-timing.json goes"),
) -> None:
    """s/edit for one batch on a Llama-3-8B-shaped model: with MPES, and with 25 fixed steps."""
    from transformers import AutoTokenizer

    from app.editing.build import Role, build_editor
    from app.editing.settings import preset
    from app.editing.stats import collect_key_stats

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    t0 = time.perf_counter()
    lm = llama3_8b_shaped(tok, device, getattr(torch, dtype), tiny)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in lm.model.parameters())
    layers = (1, 2, 3, 4, 5) if tiny else (4, 5, 6, 7, 8)
    base = preset("llama3-8b", "encore", layers=layers, stats_tokens=stats_tokens)
    t0 = time.perf_counter()
    stats = collect_key_stats(lm, list(layers), corpus, stats_tokens, progress=False)
    stats_s = time.perf_counter() - t0
    print(
        f"model: {params / 1e9:.2f} B parameters ({dtype}) built in {build_s:.1f} s on {device}; "
        f"C₀ for {len(layers)} layers from {stats_tokens} tokens in {stats_s:.1f} s",
        flush=True,
    )
    requests = [r.request() for r in load_dataset(data, limit=edits).records]
    # A first batch pays for CUDA's lazy start-up (kernels, cuBLAS handles); time the ones after it.
    warm = build_editor(lm, base, Role.EVAL, key_stats=stats)
    warm.apply(requests[: min(8, len(requests))], batch_id=0)
    warm.reset()
    del warm
    rows = {}
    for label, settings in (
        ("mpes", base),
        ("fixed_25_steps", base.model_copy(update={"mpes_margin": 0, "loss_stop": 0.0, "max_steps": 25})),
    ):
        editor = build_editor(lm, settings, Role.EVAL, key_stats=stats)
        _ = editor.templates  # the context prefixes are generated once per editor, not per batch
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = editor.apply(requests, batch_id=0)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        steps = [o.mpes_steps for o in result.outcomes]
        rows[label] = {
            "seconds": wall,
            "seconds_per_edit": wall / len(requests),
            "z_seconds": result.z_seconds,
            "solve_seconds": result.solve_seconds,
            "mean_steps": sum(steps) / len(steps),
            "mean_p_after": sum(o.prob_after for o in result.outcomes) / len(steps),
        }
        editor.reset()
        print(
            f"{label}: {wall:.1f} s for {len(requests)} edits = {wall / len(requests):.3f} s/edit "
            f"(targets {result.z_seconds:.1f} s, solve {result.solve_seconds:.1f} s, "
            f"{rows[label]['mean_steps']:.1f} steps per edit)",
            flush=True,
        )
        del editor
    report = {
        "shape": "tiny" if tiny else "llama3-8b",
        "params": params,
        "dtype": dtype,
        "device": device,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "edits": len(requests),
        "layers": list(layers),
        "stats_tokens": stats_tokens,
        "stats_seconds": stats_s,
        **rows,
        "paper_seconds_per_edit": {"mpes": 3.31, "fixed_25_steps": 8.71},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "llama-timing.json").write_text(json.dumps(report, indent=1))


# --- the report of published runs ---------------------------------------------------------------


def _progress(doc: dict) -> dict:
    """The runner's progress (checkpoints, batches, norms, baseline) of a finished or partial run."""
    return doc["summary"] if doc.get("finished") else doc["progress"]


def _growth_at(norms: dict, edits: int) -> dict[str, float]:
    return {
        layer: next(r["growth"] for r in rows if r["edits"] == edits)
        for layer, rows in sorted(norms.items(), key=lambda x: int(x[0]))
    }


def rows_of(doc: dict) -> list[dict]:
    p = _progress(doc)
    out = []
    points = list(p["checkpoints"])
    if doc.get("finished"):
        s = doc["summary"]
        points.append(
            {
                "edits": s["edits"],
                "batches": len(s["batches"]),
                "scores": {k: s[k] for k in ("es", "ps", "ns")},
                "baseline": s["baseline"],
                "health": s["health"],
                "scored": s["edits"],
            }
        )
    for c in points:
        n_batches = c.get("batches", len(p["batches"]))
        done = [b for b in p["batches"] if b["batch"] < n_batches]
        spe = sum(b["seconds"] for b in done) / max(1, sum(b["edits"] for b in done))
        out.append(
            {
                "method": doc["method"],
                "edits": c["edits"],
                "scored": c.get("scored"),
                **c["scores"],
                "ns_unedited": c["baseline"]["ns"],
                "ppl": (c.get("health") or {}).get("perplexity"),
                "entropy": (c.get("health") or {}).get("gen_entropy"),
                "growth": _growth_at(p["norms"], c["edits"]),
                "s_per_edit": spe,
            }
        )
    return out


def as_summary(doc: dict) -> dict:
    """A published run in the shape of a `kedit eval` summary, for app/eval/plots.py: a finished
    run is one; a partial run ends at its last checkpoint."""
    if doc.get("finished"):
        return doc["summary"]
    p = doc["progress"]
    last = p["checkpoints"][-1] if p["checkpoints"] else {"edits": 0, "scores": {}, "health": None}
    return {
        **p,
        "settings": doc.get("settings", {}),
        "edits": last["edits"],
        **last["scores"],
        "health": last.get("health"),
    }


@cli.command()
def report(
    files: list[Path] = typer.Argument(..., help="<label>.json files published by `lifelong`"),
    out: Path = typer.Option(..., help="folder for table.md and lifelong.png"),
) -> None:
    """table.md and lifelong.png of published runs, finished or cut short by a deadline."""
    from app.eval.compare import markdown_table
    from app.eval.plots import plot_compare

    docs = [json.loads(f.read_text()) for f in files]
    out.mkdir(parents=True, exist_ok=True)
    base = _progress(docs[0])["baseline"]
    header = ["method", "edits", "ES", "PS", "NS", "NS unedited", "NS kept", "perplexity", "entropy"]
    header += ["‖W−W₀‖/‖W₀‖ per layer (%)", "s/edit"]
    rows = [
        [
            doc["method"],
            str(r["edits"]),
            f"{r['es']:.1f}",
            f"{r['ps']:.1f}",
            f"{r['ns']:.1f}",
            f"{r['ns_unedited']:.1f}",
            f"{100 * r['ns'] / r['ns_unedited']:.0f} %",
            f"{r['ppl']:.2f}",
            f"{r['entropy']:.1f}",
            " / ".join(f"{100 * g:.0f}" for g in r["growth"].values()),
            f"{r['s_per_edit']:.3f}",
        ]
        for doc in docs
        for r in rows_of(doc)
    ]
    text = (
        f"Unedited SmolLM2: perplexity {base['perplexity']:.2f}, generation entropy {base['gen_entropy']:.1f}. "
        "ES/PS/NS on a fixed sample of the facts edited so far; NS (unedited) on the same facts.\n\n"
        + markdown_table(header, rows)
    )
    (out / "table.md").write_text(text)
    print(text, end="")
    png = plot_compare([as_summary(d) for d in docs], [d["method"] for d in docs], out / "lifelong.png")
    print(f"wrote {out / 'table.md'} and {png}")


# --- the CPU protocol: `kedit eval` runs carried from session to session ------------------------

RUN_LABELS = ("encore-preset", "memit", "encore-old-preset")


def carried_runs() -> list:
    """The runs of `carried`, as benchmarks/levers.py describes a `kedit eval` run (RUN_LABELS)."""
    from benchmarks.levers import Lever

    return [
        Lever("encore-preset", "ENCORE with the smollm2 preset (the service's default: λp 2500, λn 20, margin 3)"),
        Lever(
            "memit", "MEMIT with the smollm2 preset's layers, λp and C₀ (no MPES, no norm constraint)", method="memit"
        ),
        Lever(
            "encore-old-preset",
            "ENCORE with the smollm2 preset before the lever screen (λp 1000, λn 10, margin 3)",
            overrides={"lambda_p": 1000.0, "lambda_n": 10.0},
        ),
    ]


@cli.command()
def carried(
    work: Path = typer.Option(
        Path("/tmp/kedit-lifelong"), help="run folders (kept: a rerun skips finished runs and resumes cut ones)"
    ),
    out: Path | None = typer.Option(
        None, help="folder for table.md and lifelong.png (written once the chosen runs have finished)"
    ),
    only: list[str] = typer.Option([], help="run only these (repeatable): " + ", ".join(RUN_LABELS)),
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
    """2,000 sequential edits per run as `kedit eval` folders, resumable and carried between machines."""
    from app.config import KeditConfig
    from app.eval.compare import compare
    from benchmarks.levers import command, run_carried  # the same `kedit eval` command line

    runs = carried_runs()
    by_label = {r.label: r for r in runs}
    unknown = [o for o in only if o not in by_label]
    if unknown:
        raise typer.BadParameter(f"unknown run(s) {unknown}; choose from {', '.join(by_label)}")
    chosen = [by_label[o] for o in only] if only else runs
    data_dir = KeditConfig().data_dir
    work.mkdir(parents=True, exist_ok=True)
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
            ROOT,
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
    cli()
