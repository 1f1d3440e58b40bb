"""kedit against the authors' ENCORE code, side by side: same model, records, settings, machine, one run.

The protocol of ../shared/reference-baseline.md (last section): SmolLM2-135M loaded once per side
with kedit's `load_model()`, the first N CounterFact records as one batch, the reference's
settings (its Llama-3-8B ENCORE file with layers 4–8), key statistics from one WikiText file on
both sides, 2 torch threads. The authors' code runs first, then kedit; both are scored with
kedit's CounterFact scorer on the same records.

    python -m benchmarks.vs_reference --reference-dir ../refcode            # the full measurement
    python -m benchmarks.vs_reference --reference-dir ../refcode --records 4 --stats-texts 20

--reference-dir is a checkout of scalable-model-editing/knowledge-editing-regularization
(commit 6e3ba9a) kept OUTSIDE this repository. Nothing of it is copied into the project: at run
time its `encore`, `rome` and `util` packages are copied to a temporary folder, the few edits of
PATCHES are applied there (each must match, so a different commit fails clearly), and a stub
`datasets` module serves the local WikiText file to its statistics loader.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_REPO = "scalable-model-editing/knowledge-editing-regularization"
REFERENCE_COMMIT = "6e3ba9a"
REFERENCE_FILES = (
    "encore/encore_main.py",
    "encore/compute_z.py",
    "rome/layer_stats.py",
    "util/nethook.py",
    "hparams/ENCORE/llama3-8b.json",
    "globals.yml",
)
COPIED = ("encore", "rome", "util", "globals.yml")

_TUPLE_OR_TENSOR = "(lambda o: o[0] if isinstance(o, tuple) else o)"
# (file, text in their code, replacement, why). Applied to the temporary copy only.
PATCHES = (
    ("encore/encore_main.py", '"cuda"', '"cpu"', "CUDA → CPU in the update step"),
    ("encore/encore_main.py", ".cuda()", ".cpu()", "CUDA → CPU in the update step (solve result)"),
    ("encore/compute_z.py", '"cuda"', '"cpu"', "CUDA → CPU in the target-vector step"),
    (
        "encore/compute_z.py",
        "cur_out[0][",
        "(cur_out[0] if isinstance(cur_out, tuple) else cur_out)[",
        "transformers 5 decoder layers return a tensor: the edit hook accepts both",
    ),
    (
        "encore/compute_z.py",
        "tr[hparams.layer_module_tmp.format(loss_layer)].output[0]",
        f"{_TUPLE_OR_TENSOR}(tr[hparams.layer_module_tmp.format(loss_layer)].output)",
        "transformers 5 decoder layers return a tensor: the loss layer's read accepts both",
    ),
    (
        "rome/layer_stats.py",
        'dict_to_(batch, "cuda")',
        'dict_to_(batch, "cpu")',
        "CUDA → CPU in the statistics' batch transfer",
    ),
    (
        "rome/layer_stats.py",
        "download=True,",
        "download=False,",
        "no download of precomputed statistics (offline; the statistics are computed and timed)",
    ),
)


class Failure(Exception):
    """A problem reported as one line, without a traceback."""


# ----------------------------------------------------------------------------- reference checkout
def check_reference_dir(value: str | None) -> Path:
    if not value:
        raise Failure(
            f"--reference-dir is required: a checkout of {REFERENCE_REPO} (commit {REFERENCE_COMMIT}) "
            "outside this repository"
        )
    ref = Path(value).expanduser().resolve()
    if not ref.is_dir():
        raise Failure(
            f"--reference-dir {str(ref)!r} is not a folder; give a checkout of {REFERENCE_REPO} "
            f"(commit {REFERENCE_COMMIT})"
        )
    if ref == ROOT or ROOT in ref.parents:
        raise Failure(f"--reference-dir {str(ref)!r} is inside this repository; check the authors' code out elsewhere")
    missing = [f for f in REFERENCE_FILES if not (ref / f).is_file()]
    if missing:
        raise Failure(f"--reference-dir {str(ref)!r} is not a checkout of {REFERENCE_REPO}: no {', '.join(missing)}")
    return ref


def reference_commit(ref: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ref), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown (not a git work tree)"
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"


def check_patches(ref: Path) -> None:
    """Every patch must find its text in the checkout (fails before any model is loaded)."""
    for rel, old, _, why in PATCHES:
        if old not in (ref / rel).read_text(errors="replace"):
            raise Failure(
                f"the code at --reference-dir differs from commit {REFERENCE_COMMIT}: "
                f"patch '{why}' found no {old!r} in {rel}"
            )


def patched_copy(ref: Path, into: Path) -> list[str]:
    """Copy the packages their apply function needs into `into` and apply PATCHES there."""
    for name in COPIED:
        src = ref / name
        if src.is_dir():
            shutil.copytree(src, into / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, into / name)
    applied = []
    for rel, old, new, why in PATCHES:
        path = into / rel
        text = path.read_text()
        n = text.count(old)
        if n == 0:
            raise Failure(
                f"the code at --reference-dir differs from commit {REFERENCE_COMMIT}: "
                f"patch '{why}' found no {old!r} in {rel}"
            )
        path.write_text(text.replace(old, new))
        applied.append(f"{rel}: {why} ({n}×)")
    return applied


def wikitext_texts(corpus: Path) -> list[dict]:
    """One text per non-empty, non-heading line: what their statistics loader gets instead of the hub dataset."""
    out = []
    with open(corpus, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if line and not (line.startswith("= ") and line.endswith(" =")):
                out.append({"text": line})
    return out


def datasets_stub(texts: list[dict]) -> types.ModuleType:
    mod = types.ModuleType("datasets")
    mod.load_dataset = lambda *args, **kwargs: {"train": texts}
    return mod


@contextlib.contextmanager
def reference_imports(folder: Path, texts: list[dict]):
    """Their packages importable from `folder` (cwd there: their globals.yml is read relative to it)."""
    own = ("encore", "rome", "util", "datasets")
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in own}
    for k in saved:
        del sys.modules[k]
    cwd = os.getcwd()
    sys.path.insert(0, str(folder))
    sys.modules["datasets"] = datasets_stub(texts)
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(cwd)
        sys.path.remove(str(folder))
        for k in [k for k in sys.modules if k.split(".")[0] in own]:
            del sys.modules[k]
        sys.modules.update(saved)


@contextlib.contextmanager
def quiet_deprecations():
    """Their code passes transformers arguments it has deprecated since; the warnings are about
    their code, not a measurement, so they are kept out of the printout."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*pin_memory.*")
            yield
    finally:
        hf_logging.set_verbosity(level)


def growth(model, names: dict[int, str], before: dict) -> dict[int, float]:
    """‖W−W₀‖/‖W₀‖ in % per edited layer."""
    out = {}
    params = dict(model.named_parameters())
    for layer, name in names.items():
        w, w0 = params[name].detach().double(), before[layer].double()
        out[layer] = round(100 * float((w - w0).norm() / w0.norm()), 2)
    return out


def run_reference(ref: Path, recs: list, corpus: Path, layers: list[int], n_texts: int, log) -> dict:
    import torch

    from app.editing.model import load_model
    from app.eval.scoring import score_counterfact

    texts = wikitext_texts(corpus)
    lm = load_model()
    model, tok = lm.model, lm.tokenizer
    # Their Llama code paths (no attention mask in generation, features kept on the CPU) key on the name.
    model.config._name_or_path = model.name_or_path = f"{lm.name}-llama"
    with tempfile.TemporaryDirectory(prefix="kedit-vs-reference-") as tmp:
        applied = patched_copy(ref, Path(tmp))
        with reference_imports(Path(tmp), texts), contextlib.redirect_stdout(log), quiet_deprecations():
            import encore.encore_main as em
            from encore.encore_hparams import ENCOREHyperParams

            hp = ENCOREHyperParams.from_json(str(ref / "hparams" / "ENCORE" / "llama3-8b.json"))
            hp.layers = list(layers)
            hp.v_loss_layer = lm.num_layers - 1
            hp.lm_head_module = "model.embed_tokens"  # tied embeddings: no separate lm_head parameter
            hp.mom2_dataset = "wikitext"  # a name their loader accepts; the stub serves `corpus` under it
            hp.mom2_n_samples = n_texts
            hp.sequential = True  # set by their experiment script, read by the update step

            tokens = {}
            layer_stats = em.layer_stats

            def counted_stats(model, tok, layer_name, *args, **kwargs):
                stat, feats = layer_stats(model, tok, layer_name, *args, **kwargs)
                tokens[layer_name] = int(stat.mom2.count)
                return stat, feats

            em.layer_stats = counted_stats
            stats_seconds = {}
            for layer in layers:
                t0 = time.perf_counter()
                em.get_cov(
                    model,
                    tok,
                    hp.rewrite_module_tmp.format(layer),
                    hp.mom2_dataset,
                    hp.mom2_n_samples,
                    hp.mom2_dtype,
                    force_recompute=False,
                    hparams=hp,
                )
                stats_seconds[layer] = time.perf_counter() - t0

            torch.manual_seed(0)
            em.get_context_templates(model, tok)

            steps = []
            compute_z = em.compute_z

            def counted_z(model, *args, **kwargs):
                n = [0]
                hook = model.register_forward_pre_hook(lambda m, a: n.__setitem__(0, n[0] + 1))
                try:
                    return compute_z(model, *args, **kwargs)
                finally:
                    hook.remove()
                    steps.append(n[0])

            em.compute_z = counted_z
            names = {layer: f"{hp.rewrite_module_tmp.format(layer)}.weight" for layer in layers}
            params = dict(model.named_parameters())
            before = {layer: params[n].detach().clone() for layer, n in names.items()}
            requests = [
                {
                    "case_id": r.case_id,
                    "prompt": r.prompt,
                    "subject": r.subject,
                    "target_new": {"str": r.target_new},
                    "target_true": {"str": r.target_true},
                }
                for r in recs
            ]
            t0 = time.perf_counter()
            _, _, _, z_seconds, insert_seconds = em.apply_encore_to_model(model, tok, requests, hp, copy=False)
            wall = time.perf_counter() - t0
    return {
        "commit": reference_commit(ref),
        "patches": applied,
        "stats_texts": n_texts,
        "stats_texts_available": len(texts),
        "stats_tokens_per_layer": tokens,
        "stats_seconds": sum(stats_seconds.values()),
        "stats_seconds_per_layer": stats_seconds,
        "wall": wall,
        "seconds_per_edit": wall / len(recs),
        "targets": z_seconds,
        "insertion": insert_seconds,
        "mean_steps": sum(steps) / len(steps),
        "scores": score_counterfact(model, tok, recs),
        "growth_percent": growth(model, names, before),
    }


# ----------------------------------------------------------------------------- kedit
def run_kedit(recs: list, corpus: Path, layers: list[int], stats_tokens: int) -> dict:
    from app.editing.build import Role, build_editor
    from app.editing.model import load_model
    from app.editing.stats import collect_key_stats
    from app.eval.scoring import score_counterfact
    from benchmarks.edit_speed import reference_settings, timed_batch

    lm = load_model()
    settings = reference_settings("encore", stats_tokens).model_copy(update={"layers": tuple(layers)})
    t0 = time.perf_counter()
    stats = collect_key_stats(lm, list(settings.layers), corpus, settings.stats_tokens)
    stats_seconds = time.perf_counter() - t0
    editor = build_editor(lm, settings, Role.EVAL, key_stats=stats)
    _ = editor.templates
    row = timed_batch(editor, recs, 1)
    return {
        **row,
        "settings": settings.model_dump(mode="json"),
        "stats_tokens": stats_tokens,
        "stats_seconds": stats_seconds,
        "scores": score_counterfact(lm.model, lm.tokenizer, recs),
        "growth_percent": {n.layer: round(100 * n.growth, 2) for n in editor.norms()},
    }


# ----------------------------------------------------------------------------- report
def summary(ref: dict, ked: dict, n: int, threads: int, corpus: Path, load: tuple[float, float]) -> str:
    rs, ks = ref["scores"], ked["scores"]
    tok = sorted(set(ref["stats_tokens_per_layer"].values()))

    def quality(s):
        return f"{s['es']:.1f} / {s['ps']:.1f} / {s['ns']:.1f} / {s['s']:.1f}"

    rows = [
        (
            "s/edit (apply wall / edits)",
            f"{ref['seconds_per_edit']:.2f}",
            f"{ked['seconds_per_edit']:.2f}",
            f"{ref['seconds_per_edit'] / ked['seconds_per_edit']:.2f}×",
        ),
        (
            "split (s)",
            f"target vectors {ref['targets']:.1f}, insertion {ref['insertion']:.1f}",
            f"targets {ked['targets']:.1f}, keys {ked['keys']:.1f}, solve {ked['solve']:.1f}",
            "",
        ),
        ("optimisation steps per edit", f"{ref['mean_steps']:.1f}", f"{ked['mean_steps']:.1f}", ""),
        (
            "key statistics (s)",
            f"{ref['stats_seconds']:.0f} ({len(ref['stats_seconds_per_layer'])} passes)",
            f"{ked['stats_seconds']:.0f} (one pass)",
            f"{ref['stats_seconds'] / ked['stats_seconds']:.2f}×",
        ),
        ("statistics tokens per layer", ", ".join(f"{t:,}" for t in tok), f"{ked['stats_tokens']:,} (budget)", ""),
        ("ES / PS / NS / S after the batch", quality(rs), quality(ks), ""),
        (
            "max ‖W−W₀‖/‖W₀‖ (%)",
            f"{max(ref['growth_percent'].values()):.2f}",
            f"{max(ked['growth_percent'].values()):.2f}",
            "",
        ),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows + [("", f"authors' code ({ref['commit']})")])
    w2 = max(len(r[2]) for r in rows + [("", "", "kedit")])
    lines = [
        f"side by side: the first {n} CounterFact records as one batch, SmolLM2-135M, reference settings "
        f"(Llama-3-8B ENCORE file, layers {ked['settings']['layers']}), statistics from {corpus.name}, "
        f"{threads} torch threads, {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"1-minute load average {load[0]:.2f} at the start, {load[1]:.2f} at the end",
        f"{'':{w0}}  {'authors code (' + ref['commit'] + ')':{w1}}  {'kedit':{w2}}  ratio",
    ]
    lines += [f"{a:{w0}}  {b:{w1}}  {c:{w2}}  {d}" for a, b, c, d in rows]
    lines.append(
        "‖W−W₀‖/‖W₀‖ per layer (%): authors "
        + json.dumps(ref["growth_percent"])
        + ", kedit "
        + json.dumps(ked["growth_percent"])
    )
    lines.append("patches applied to a temporary copy of the authors' code: " + "; ".join(ref["patches"]))
    return "\n".join(lines)


def main(
    reference_dir: str | None = typer.Option(
        None, help=f"a checkout of {REFERENCE_REPO} (commit {REFERENCE_COMMIT}) outside this repo"
    ),
    records: int = typer.Option(100, help="the first N CounterFact records, one batch (100)"),
    stats_texts: int = typer.Option(
        1200, help="texts their statistics draw (1200 = 157,918 tokens); kedit gets the same token count"
    ),
    corpus: Path | None = typer.Option(
        None, help="statistics text file (default: corpus/wikitext2_raw_test.txt of the shared data)"
    ),
    layers: str = typer.Option("4,5,6,7,8", help="edited layers (4,5,6,7,8)"),
    threads: int = typer.Option(2, help="torch threads (2)"),
    reference_log: Path | None = typer.Option(None, help="write the authors' code's printout here"),
    out: Path | None = typer.Option(None, help="write the figures as JSON here and the summary beside it (.txt)"),
) -> None:
    """Speed of kedit's ENCORE against the authors' code, side by side on this machine."""
    try:
        ref = check_reference_dir(reference_dir)
        check_patches(ref)
        try:
            layer_ids = [int(x) for x in layers.split(",") if x.strip()]
        except ValueError:
            raise Failure(f"--layers {layers!r}: give comma-separated layer numbers, e.g. 4,5,6,7,8") from None
        if records < 1 or stats_texts < 1 or threads < 1 or not layer_ids:
            raise Failure("--records, --stats-texts, --threads and --layers must be positive / non-empty")

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch

        from app.eval.data import load_dataset
        from app.eval.paths import data_dir

        corpus = corpus or data_dir() / "corpus" / "wikitext2_raw_test.txt"
        if not corpus.is_file():
            raise Failure(f"statistics corpus {str(corpus)!r} is not a file (--corpus)")
        torch.set_num_threads(threads)
        recs = load_dataset(data_dir() / "counterfact" / "counterfact.json", limit=records).records
        load_start = os.getloadavg()[0]
        print(
            f"machine: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, torch {torch.__version__}; "
            f"load average {load_start:.2f}",
            flush=True,
        )

        log_cm = open(reference_log, "w") if reference_log else open(os.devnull, "w")
        with log_cm as log:
            print(f"authors' code ({ref}): statistics, then one batch of {len(recs)} …", flush=True)
            ref_figs = run_reference(ref, recs, corpus, layer_ids, stats_texts, log)
        print(
            f"authors' code: {ref_figs['seconds_per_edit']:.2f} s/edit (targets {ref_figs['targets']:.1f} s, "
            f"insertion {ref_figs['insertion']:.1f} s, {ref_figs['mean_steps']:.1f} steps per edit), statistics "
            f"{ref_figs['stats_seconds']:.0f} s, scores {ref_figs['scores']}; kedit next …",
            flush=True,
        )
        if out:  # a run cut during kedit's half still leaves the authors' figures
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"records": len(recs), "reference": ref_figs}, indent=1, default=str))
        tokens = max(ref_figs["stats_tokens_per_layer"].values())
        ked_figs = run_kedit(recs, corpus, layer_ids, tokens)
    except Failure as exc:
        print(f"vs_reference: error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    load = (load_start, os.getloadavg()[0])
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {
                    "records": len(recs),
                    "threads": threads,
                    "cores": os.cpu_count(),
                    "corpus": corpus.name,
                    "load_average_start_end": load,
                    "reference": ref_figs,
                    "kedit": ked_figs,
                    "ratio_seconds_per_edit": ref_figs["seconds_per_edit"] / ked_figs["seconds_per_edit"],
                    "ratio_stats": ref_figs["stats_seconds"] / ked_figs["stats_seconds"],
                },
                indent=1,
                default=str,
            )
        )
    text = summary(ref_figs, ked_figs, len(recs), threads, corpus, load)
    print(text)
    if out:
        out.with_suffix(".txt").write_text(text + "\n")


if __name__ == "__main__":
    typer.run(main)
