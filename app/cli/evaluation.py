"""`kedit eval`: run the sequential evaluation, resume it, compare runs.

kedit eval --dataset counterfact --records 200 --batch-size 100 --method encore --out runs/encore
kedit eval run ...                 (the same, spelled as a subcommand)
kedit eval --resume runs/encore    (continue from the last checkpoint)
kedit eval --dataset zsre --after runs/encore --out runs/encore-then-zsre   (on top of that run's edits)
kedit eval compare runs/encore runs/memit
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer
from rich.console import Console

from app.cli.common import fail, load_config
from app.config import KeditConfig
from app.editing.settings import Method, Preset, differences
from app.eval.checkpoint import CHECKPOINT_DIR, FINAL_DIR, TRAIL_DIR
from app.eval.data import DataFormatError, build_neighbourhoods, load_dataset
from app.eval.health import HealthConfig
from app.eval.paths import default_data_path, wikitext_path
from app.eval.runner import RUN_FILE, SUMMARY_FILE, EvalSpec, RunOptions, resume_from, run_eval

console = Console(stderr=True)

eval_app = typer.Typer(
    help=(
        "Sequential knowledge-editing evaluation (docs/method.md §5). Edits the first N records of a CounterFact "
        "or zsRE file in batches of B on one model, scores the unedited model and the edited one (ES/PS/NS/S/GE, "
        "or zsRE token accuracies) and what a user reads (greedy answers to the edit and paraphrase prompts, a chat "
        "question, neighbourhood and generic prompts), records seconds per edit and the norm of every edited "
        "matrix, and writes DIR/summary.json with scores.png, answers.png, norms.png and health.png. See docs/eval.md."
    ),
    no_args_is_help=True,
    invoke_without_command=True,
)


class DatasetName(StrEnum):
    counterfact = "counterfact"
    counterfact_extra = "counterfact-extra"
    zsre = "zsre"


class ZsreTargetName(StrEnum):
    answers = "answers"
    alt = "alt"


def _parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for p in pairs:
        if "=" not in p:
            fail(f"--set expects NAME=VALUE (e.g. --set lambda_n=10), got {p!r}")
        k, v = p.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
        if isinstance(out[k.strip()], list):
            out[k.strip()] = tuple(out[k.strip()])
    return out


@dataclass
class EvalCommand:
    """The options of `kedit eval` (and `kedit eval run`), a field each; `_run_main` gets one of these."""

    dataset: Annotated[
        DatasetName,
        typer.Option(
            help=(
                "which metrics and default file: counterfact (ROME format), counterfact-extra (compact format, "
                "20,790 edits), zsre"
            ),
        ),
    ] = DatasetName.counterfact
    data: Annotated[
        Path | None,
        typer.Option(
            help=(
                "evaluation file; default: the shared file for --dataset in the data folder (KEDIT_DATA_DIR, default "
                "../shared/data). Its format is detected from its fields"
            ),
        ),
    ] = None
    records: Annotated[int | None, typer.Option(min=1, help="edit the first N records (default: all)")] = None
    neighbours: Annotated[
        int,
        typer.Option(
            min=0,
            help=(
                "CounterFact: add up to N neighbourhood prompts per record, built like CounterFact's (the record's "
                "template asked of other subjects with the same true object, from --neighbour-pool and the rest of "
                "the file; never an edited subject). The compact files hold one each"
            ),
        ),
    ] = 0
    neighbour_pool: Annotated[
        list[Path], typer.Option(help="more CounterFact files whose subjects --neighbours may use (repeatable)")
    ] = field(default_factory=list)
    batch_size: Annotated[int, typer.Option(min=1, help="edits per batch; batches are applied one after another")] = 100
    method: Annotated[Method, typer.Option(help="editing method (a preset of EditSettings)")] = Method.ENCORE
    preset: Annotated[Preset, typer.Option(help="settings family")] = Preset.SMOLLM2
    set_: Annotated[
        list[str],
        typer.Option(
            "--set",
            help=(
                "override one EditSettings field, NAME=VALUE (JSON value); repeatable, e.g. --set lambda_n=10 --set "
                "'layers=[4,5,6]'"
            ),
        ),
    ] = field(default_factory=list)
    model: Annotated[
        str | None, typer.Option(help="Hugging Face model folder or .gguf (default: SmolLM2-135M-Instruct)")
    ] = None
    checkpoint_every: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="every K batches: score the facts edited so far, measure model health, save a checkpoint for --resume",
        ),
    ] = None
    checkpoint_sample: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="score at most M edited facts at a checkpoint (a fixed seeded sample); the final scores use all",
        ),
    ] = None
    generation_samples: Annotated[
        int, typer.Option(min=1, help="CounterFact GE: number of texts generated from the records' generation prompts")
    ] = 50
    gen_max_len: Annotated[
        int,
        typer.Option(
            min=8,
            help="tokens per generated text (prompt included) for GE and the health prompts; the reference uses 100",
        ),
    ] = 100
    health: Annotated[
        bool, typer.Option(help="measure WikiText perplexity and generation entropy (unedited, checkpoints, end)")
    ] = True
    ppl_tokens: Annotated[
        int, typer.Option(min=64, help="tokens of the WikiText-103 validation slice scored for perplexity")
    ] = 4096
    zsre_target: Annotated[
        ZsreTargetName,
        typer.Option(help="zsRE edit target: 'answers' (answers[0], as in the MEMIT/ENCORE code) or 'alt'"),
    ] = ZsreTargetName.answers
    score_batch_size: Annotated[
        int, typer.Option(min=1, help="sequences per forward pass when scoring (and per batch of greedy answers)")
    ] = 32
    answer_metrics: Annotated[
        bool,
        typer.Option(
            help="also judge the model's greedy answers: generation and chat efficacy, leak, kept, drift (docs/eval.md)"
        ),
    ] = True
    seed: Annotated[
        int,
        typer.Option(
            help=(
                "seed for generation sampling and checkpoint samples (the editor's prefixes have their own fixed seed)"
            )
        ),
    ] = 0
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu"
    cache_dir: Annotated[
        Path | None, typer.Option(help="model/key-statistics cache (KEDIT_CACHE_DIR; default ~/.cache/kedit)")
    ] = None
    corpus: Annotated[
        Path | None,
        typer.Option(
            help=(
                "text file or folder of .txt for the key statistics C0 (KEDIT_STATS_CORPUS; default: text the model "
                "generates)"
            ),
        ),
    ] = None
    out: Annotated[Path | None, typer.Option(help="output folder: summary.json, plots, run.json, checkpoint/")] = None
    resume: Annotated[
        Path | None,
        typer.Option(
            help=(
                "continue the run in this folder from its last checkpoint, or from trail/ (every batch's z*, kept "
                "after each batch: run.json and trail/ carry a run to another machine); other options are taken from "
                "its run.json"
            ),
        ),
    ] = None
    after: Annotated[
        Path | None,
        typer.Option(
            help=(
                "start from the edited model a finished run in this folder left (same method and settings), e.g. "
                "zsRE after CounterFact; that run's records (or --checkpoint-sample of them) are scored again at the "
                "end"
            ),
        ),
    ] = None
    progress: Annotated[
        bool,
        typer.Option(
            help=(
                "show progress bars; --no-progress writes a plain line per stage, batch and checkpoint instead (for a "
                "log file)"
            ),
        ),
    ] = True

    def run_json(self, env: KeditConfig) -> dict:
        """What run.json records of the run: these options, with the defaults the environment filled in."""
        return {
            "dataset": self.dataset.value,
            "data": str(self.data or default_data_path(self.dataset.value, env.data_dir)),
            "records": self.records,
            "neighbours": self.neighbours,
            "neighbour_pool": [str(p) for p in self.neighbour_pool],
            "batch_size": self.batch_size,
            "method": self.method.value,
            "preset": self.preset.value,
            "overrides": _parse_overrides(self.set_),
            "model": self.model,
            "checkpoint_every": self.checkpoint_every,
            "checkpoint_sample": self.checkpoint_sample,
            "generation_samples": self.generation_samples,
            "gen_max_len": self.gen_max_len,
            "health": self.health,
            "ppl_tokens": self.ppl_tokens,
            "zsre_target": self.zsre_target.value,
            "score_batch_size": self.score_batch_size,
            "answer_metrics": self.answer_metrics,
            "seed": self.seed,
            "device": self.device,
            "cache_dir": str(env.cache_dir),
            "corpus": str(env.stats_corpus) if env.stats_corpus else None,
            "wikitext": str(wikitext_path(env.data_dir)),
            "after": str(self.after) if self.after else None,
        }


def _with_options_of(options_type: type[EvalCommand]):
    """Make `body(ctx, options)` a typer command whose options are the fields of `options_type`:
    typer reads a command's options from its signature, so the command gets one built from them."""
    hints = get_type_hints(options_type, include_extras=True)
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    for f in dataclasses.fields(options_type):
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        params.append(
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name], default=default)
        )

    def decorate(body: Callable[[typer.Context, EvalCommand], None]) -> Callable[..., None]:
        def command(ctx: typer.Context, **options: Any) -> None:
            body(ctx, options_type(**options))

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__name__, command.__doc__ = body.__name__, body.__doc__
        return command

    return decorate


@_with_options_of(EvalCommand)
def _run_main(ctx: typer.Context, command: EvalCommand) -> None:
    """Run (or resume) a sequential editing evaluation."""
    if ctx.invoked_subcommand is not None:
        return
    if command.resume is not None:
        _resume(command.resume, command.progress)
        return
    out = command.out
    if out is None:
        fail("give --out DIR (where summary.json and the plots go), or --resume DIR")
    if any((out / d).exists() for d in (CHECKPOINT_DIR, TRAIL_DIR)) and not (out / SUMMARY_FILE).exists():
        fail(f"{out} holds an unfinished run: continue it with `kedit eval --resume {out}` or choose another --out")
    env = load_config(builds_stats=True, cache_dir=command.cache_dir, stats_corpus=command.corpus)
    config = command.run_json(env)
    if command.after is not None:
        _check_after(command.after)
    out.mkdir(parents=True, exist_ok=True)
    _execute(config, out, command.progress, resume=False)


def _load_inputs(config: dict):
    from app.editing.settings import preset as make_preset

    try:
        ds = load_dataset(config["data"], zsre_target=config["zsre_target"], limit=config["records"])
    except DataFormatError as e:
        fail(str(e))
    wanted = "zsre" if config["dataset"] == "zsre" else "counterfact"
    if ds.kind != wanted:
        fail(
            f"{config['data']} holds {ds.format} records but --dataset is {config['dataset']}; pass --dataset {ds.kind}"
        )
    if config.get("neighbours"):
        if ds.kind != "counterfact":
            fail("--neighbours builds CounterFact neighbourhoods; it does not apply to zsRE")
        try:
            pool = [
                r for path in [config["data"], *config.get("neighbour_pool", [])] for r in load_dataset(path).records
            ]
        except DataFormatError as e:
            fail(str(e))
        ds = dataclasses.replace(
            ds, records=build_neighbourhoods(ds.records, pool, config["neighbours"], config["seed"])
        )
    try:
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in config["overrides"].items()}
        settings = make_preset(config["preset"], config["method"], **overrides)
    except Exception as e:  # pydantic's message names the field and the problem
        fail(f"bad settings: {e}")
    options = RunOptions(
        batch_size=config["batch_size"],
        checkpoint_every=config["checkpoint_every"],
        checkpoint_sample=config["checkpoint_sample"],
        generation_samples=config["generation_samples"],
        gen_max_len=config.get("gen_max_len", 100),
        score_batch_size=config["score_batch_size"],
        answer_metrics=config.get("answer_metrics", True),
        seed=config["seed"],
        health=HealthConfig(
            ppl_tokens=config["ppl_tokens"],
            gen_max_len=config.get("gen_max_len", 100),
            corpus=config.get("wikitext"),
            seed=config["seed"],
        )
        if config["health"]
        else None,
    )
    return ds, settings, options


def _check_after(run_dir: Path) -> None:
    if not (run_dir / FINAL_DIR / "progress.json").exists() or not (run_dir / RUN_FILE).exists():
        fail(
            f"--after {run_dir}: no finished run there (it needs {RUN_FILE} and {FINAL_DIR}/ written at the end "
            "of `kedit eval --out DIR`); finish or resume that run first"
        )


def _earlier_run(config: dict, settings):
    """(final editor state, records) of the run named by --after, checked against these settings."""
    from app.eval.checkpoint import load_checkpoint

    run_dir = Path(config["after"])
    _check_after(run_dir)
    earlier_config = json.loads((run_dir / RUN_FILE).read_text())
    earlier, _, _ = _load_inputs(earlier_config)
    state, _ = load_checkpoint(run_dir, FINAL_DIR)
    saved = state[1]["settings"] if isinstance(state, (list, tuple)) else state["settings"]
    changed = differences(saved, settings)
    if changed:
        fail(
            f"--after {run_dir}: that run used other settings ({changed}); "
            f"give the same --method/--preset/--set as {run_dir / RUN_FILE}"
        )
    if (earlier_config.get("model") or None) != (config.get("model") or None):
        fail(
            f"--after {run_dir}: that run edited model {earlier_config.get('model') or 'SmolLM2-135M-Instruct'}, "
            f"this one asks for {config.get('model') or 'SmolLM2-135M-Instruct'}"
        )
    return state, earlier.records


def _execute(config: dict, out: Path, progress: bool, resume: bool) -> None:
    from app.editing.build import Role, build_editor
    from app.editing.model import load_model
    from app.editing.types import EditError

    ds, settings, options = _load_inputs(config)
    options.log_lines = not progress  # no bars (a log file): a plain line per stage, batch and checkpoint
    start_state, earlier_records = _earlier_run(config, settings) if config.get("after") else (None, None)
    if not resume:
        (out / RUN_FILE).write_text(json.dumps(config, indent=1))
    console.print(f"loading model {config['model'] or 'SmolLM2-135M-Instruct'} …")
    cache_dir = config["cache_dir"] or load_config().cache_dir  # run.json of older runs may hold none
    try:
        lm = load_model(config["model"], cache_dir=cache_dir, device=config["device"])
        editor = build_editor(
            lm, settings, Role.EVAL, corpus=config.get("corpus"), cache_dir=cache_dir, progress=progress
        )
    except EditError as e:
        fail(str(e))
    run_info = {
        "dataset": config["dataset"],
        "data": config["data"],
        "format": ds.format,
        "model": lm.name,
        "preset": config["preset"],
        "command": config,
    }
    spec = EvalSpec(
        options=options,
        editor=editor,
        out_dir=out,
        run_info=run_info,
        progress=progress,
        start_state=start_state,  # read by a new run only: a resumed one has its own state
        earlier_records=earlier_records,
    )
    if resume:
        try:
            summary = resume_from(out, lm, settings, ds.records, spec=spec)
        except ValueError as e:  # the saved run does not fit these settings or records
            fail(str(e))
    else:
        summary = run_eval(lm, settings, ds.records, spec)
    _report(summary, out)


def _resume(run_dir: Path, progress: bool) -> None:
    if not (run_dir / RUN_FILE).exists():
        fail(
            f"{run_dir / RUN_FILE} not found: --resume needs the --out folder of a run started with --checkpoint-every"
        )
    if not (run_dir / CHECKPOINT_DIR).exists() and not (run_dir / TRAIL_DIR / "progress.json").exists():
        fail(f"{run_dir} has no checkpoint yet: start again, with --checkpoint-every K so checkpoints are written")
    config = json.loads((run_dir / RUN_FILE).read_text())
    _execute(config, run_dir, progress, resume=True)


def _wide_console() -> Console:
    # Logs and pipes default to 80 columns, which squeezes the table into ellipses.
    c = Console()
    return c if c.is_terminal else Console(width=180)


def _report(summary: dict, out: Path) -> None:
    from rich.table import Table

    from app.eval.compare import compare_rows

    header, rows = compare_rows([summary], [out.name])
    table = Table(title=f"{out}: final scores (unedited model in brackets)")
    for h in header:
        table.add_column(h)
    for r in rows:
        table.add_row(*r)
    _wide_console().print(table)
    console.print(f"wrote {out / SUMMARY_FILE} and the plots in {out}")


eval_app.callback(invoke_without_command=True)(_run_main)
eval_app.command("run", help="Run (or resume) a sequential editing evaluation; the same options as `kedit eval`.")(
    _run_main
)


@eval_app.command("compare")
def compare_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="--out folders of finished runs"),
    out: Path | None = typer.Option(None, help="plot path (default: compare.png next to the first run folder)"),
    markdown: Path | None = typer.Option(None, help="also write the table as markdown to this file"),
) -> None:
    """Overlay several runs (e.g. ENCORE vs MEMIT vs AlphaEdit) in one plot and one table."""
    from app.eval.compare import compare

    try:
        table, path = compare(run_dirs, out, markdown)
    except FileNotFoundError as e:
        fail(str(e))
    _wide_console().print(table)
    console.print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
