"""The sequential runner on a tiny model: summary.json and plots, checkpoints, resume, compare, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.eval.checkpoint import flatten_state, load_checkpoint, unflatten_state
from app.eval.data import CounterFactRecord
from app.eval.health import HealthConfig
from app.eval.plots import ANSWERS_PNG, HEALTH_PNG, NORMS_PNG, SCORES_PNG
from app.eval.runner import RunInterrupted, RunOptions, resume_from, run_eval
from tests.utils.tiny import build_tiny_model

FACTS = [
    ("The mother tongue of {} is", "Danielle Darrieux", "English", "French"),
    ("{} is the capital of", "Paris", "Italy", "France"),
    ("{} was founded by", "Apple", "Lionel Messi", "Steve Jobs"),
    ("{} is a company from", "Toyota", "France", "Japan"),
    ("{} plays", "Michael Jordan", "soccer", "basketball"),
    ("{} played music in", "The Beatles", "Paris", "London"),
]
RECORDS = [
    CounterFactRecord(
        case_id=i,
        prompt=p,
        subject=s,
        target_new=new,
        target_true=true,
        paraphrase_prompts=(f"Because it rained, {p.format(s)}",),
        neighborhood_prompts=("Rome is in", "The Eiffel Tower is in"),
        neighborhood_true=true,
        generation_prompts=(f"{s} is",),
    )
    for i, (p, s, new, true) in enumerate(FACTS)
]


@pytest.fixture
def corpus(tmp_path) -> Path:
    from tests.utils.tiny import TRAINING_TEXT as _TRAINING_TEXT

    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(_TRAINING_TEXT * 30))
    return path


def _settings(method: str = "encore"):
    from app.editing.settings import EditSettings

    return EditSettings(
        method=method,
        layers=(1, 2),
        lambda_p=100.0,
        lambda_n=1.0 if method == "encore" else 0.0,
        mpes_margin=1 if method == "encore" else 0,
        max_steps=4,
        n_prefixes=1,
        prefix_tokens=3,
        stats_tokens=1000,
    )


def _lm():
    from app.editing.model import wrap_model

    model, tok = build_tiny_model("llama")
    return wrap_model(model, tok, name="tiny-llama")


def _options(corpus: Path, **kw) -> RunOptions:
    health = HealthConfig(
        ppl_tokens=96, ppl_window=48, gen_max_len=16, gen_prompts=("Paris is", "Rome"), corpus=str(corpus)
    )
    return RunOptions(batch_size=2, generation_samples=4, gen_max_len=16, health=health, **kw)


def _key_stats(lm, settings, corpus, tmp_path):
    from app.editing.stats import load_key_stats

    return load_key_stats(lm, settings, corpus=corpus, cache_dir=tmp_path / "cache", progress=False)


def test_sequential_run_writes_summary_and_plots(tmp_path, corpus):
    lm, settings = _lm(), _settings()
    out = tmp_path / "run"
    summary = run_eval(
        lm,
        settings,
        RECORDS,
        options=_options(corpus, checkpoint_every=1),
        key_stats=_key_stats(lm, settings, corpus, tmp_path),
        out_dir=out,
        progress=False,
    )
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["weights_hash"] == summary["weights_hash"]
    for key in (
        "es",
        "ps",
        "ns",
        "s",
        "ge",
        "seconds_per_edit",
        "z_seconds",
        "solve_seconds",
        "baseline",
        "checkpoints",
        "norms",
        "settings",
    ):
        assert key in on_disk, key
    for key in ("es", "ps", "ns", "s"):
        assert 0.0 <= on_disk[key] <= 100.0 and 0.0 <= on_disk["baseline"][key] <= 100.0
    assert on_disk["ge"] > 0 and on_disk["baseline"]["ge"] > 0
    assert on_disk["edits"] == 6 and len(on_disk["batches"]) == 3
    assert all(b["z_seconds"] >= 0 and b["solve_seconds"] >= 0 for b in on_disk["batches"])
    assert on_disk["seconds_per_edit"] > 0
    # Per batch of facts: final and unedited scores; weighted by size they give the totals.
    assert [(b["batch"], b["records"]) for b in on_disk["by_batch"]] == [(0, 2), (1, 2), (2, 2)]
    for key in ("es", "ps", "ns"):
        assert sum(b["scores"][key] for b in on_disk["by_batch"]) / 3 == pytest.approx(on_disk[key])
        assert sum(b["baseline"][key] for b in on_disk["by_batch"]) / 3 == pytest.approx(on_disk["baseline"][key])
    # Checkpoints after batches 1 and 2 (the last batch is the final score), on the facts edited so far.
    assert [(c["edits"], c["scored"]) for c in on_disk["checkpoints"]] == [(2, 2), (4, 4)]
    assert all("perplexity" in c["health"] for c in on_disk["checkpoints"])
    # Norms per layer, per batch; the edits moved the weights away from W0.
    assert sorted(on_disk["norms"]) == ["1", "2"]
    for rows in on_disk["norms"].values():
        assert [r["edits"] for r in rows] == [2, 4, 6]
        assert all(r["delta"] > 0 and r["base"] > 0 for r in rows)
        assert rows[-1]["growth"] == pytest.approx(rows[-1]["delta"] / rows[-1]["base"])
        assert rows[-1]["load"] == pytest.approx(rows[-1]["edits"] / lm.model.config.intermediate_size)
    assert on_disk["settings"]["method"] == "encore" and on_disk["settings"]["layers"] == [1, 2]
    assert on_disk["baseline"]["perplexity"] > 1 and on_disk["health"]["perplexity"] > 1
    for png in (SCORES_PNG, NORMS_PNG, HEALTH_PNG):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    # What a user reads, at every point; the tiny tokenizer has no chat template: chat is absent, not 0.
    points = [on_disk, on_disk["baseline"], *(c[k] for c in on_disk["checkpoints"] for k in ("scores", "baseline"))]
    for scores in points:
        for key in ("gen_es", "gen_es_begins", "gen_ps", "gen_ps_begins", "gen_leak", "gen_ns_true", "drift"):
            assert 0.0 <= scores[key] <= 100.0, key
        assert scores["chat_es"] is None and scores["chat_old"] is None
    assert on_disk["baseline"]["gen_leak"] == 0.0 and on_disk["baseline"]["drift"] == 0.0
    # Four of the six test templates are not CounterFact's: they fall back to the generic question, counted.
    assert on_disk["chat_questions"] == {"chat_template": False, "records": 6, "generic": 4}
    assert 0 < on_disk["answer_seconds"] < on_disk["wall_seconds"]
    assert all(isinstance(r["gen_answer"], str) and "nb_answers" not in r for r in on_disk["per_record"])
    assert (out / ANSWERS_PNG).read_bytes()[:4] == b"\x89PNG"


def test_resumed_run_ends_with_the_same_weights(tmp_path, corpus):
    settings = _settings()
    lm = _lm()
    stats = _key_stats(lm, settings, corpus, tmp_path)
    unedited = _lm()
    from app.editing.editor import Editor

    unedited_hash = Editor(unedited, settings, stats).weights_hash()

    straight = run_eval(
        lm,
        settings,
        RECORDS,
        options=_options(corpus, checkpoint_every=1),
        key_stats=stats,
        out_dir=tmp_path / "straight",
        progress=False,
    )

    out = tmp_path / "interrupted"
    with pytest.raises(RunInterrupted):
        run_eval(
            _lm(),
            settings,
            RECORDS,
            options=_options(corpus, checkpoint_every=1),
            key_stats=stats,
            out_dir=out,
            progress=False,
            stop_after_batches=1,
        )
    assert not (out / "summary.json").exists()
    _, progress = load_checkpoint(out)
    assert progress["batches_done"] == 1

    resumed = resume_from(
        out, _lm(), settings, RECORDS, _options(corpus, checkpoint_every=1), key_stats=stats, progress=False
    )
    assert resumed["weights_hash"] == straight["weights_hash"] != unedited_hash
    assert len(resumed["batches"]) == 3 and [c["edits"] for c in resumed["checkpoints"]] == [2, 4]
    assert resumed["es"] == straight["es"] and resumed["baseline"] == straight["baseline"]


def test_run_resumed_from_its_trail_alone_ends_with_the_same_weights(tmp_path, corpus, capsys):
    """Only run.json and trail/ (each batch's z*) travel: the resume writes those batches again from
    their z* and goes on, to the weights of a run that was never stopped."""
    import shutil

    from app.eval.checkpoint import load_trail

    settings = _settings()
    stats = _key_stats(_lm(), settings, corpus, tmp_path)
    opts = _options(corpus, checkpoint_every=1)
    straight = run_eval(
        _lm(), settings, RECORDS, options=opts, key_stats=stats, out_dir=tmp_path / "straight", progress=False
    )
    out = tmp_path / "cut"
    with pytest.raises(RunInterrupted):
        run_eval(
            _lm(), settings, RECORDS, options=opts, key_stats=stats, out_dir=out, progress=False, stop_after_batches=2
        )
    shutil.rmtree(out / "checkpoint")
    z_stars, progress, saved = load_trail(out)
    assert progress["batches_done"] == 2 and [tuple(z.shape) for z in z_stars] == [(2, 64), (2, 64)]
    assert saved == settings.model_dump(mode="json")
    # z* mean something only under the settings they were made with: a changed preset is refused.
    with pytest.raises(ValueError, match="lambda_n: 1.0 there, 2.0 here"):
        resume_from(
            out, _lm(), settings.model_copy(update={"lambda_n": 2.0}), RECORDS, opts, key_stats=stats, progress=False
        )

    capsys.readouterr()
    opts.log_lines = True  # as in a log file: the rewrite says what it is doing
    resumed = resume_from(out, _lm(), settings, RECORDS, opts, key_stats=stats, progress=False)
    assert "writing the 2 saved batches into the unedited model again" in capsys.readouterr().out
    assert resumed["weights_hash"] == straight["weights_hash"]
    assert [c["edits"] for c in resumed["checkpoints"]] == [2, 4] and len(resumed["batches"]) == 3
    assert resumed["es"] == straight["es"]


ANSWER_KEYS = ("gen_es", "gen_es_begins", "gen_ps", "gen_ps_begins", "chat_es", "chat_old", "gen_leak", "gen_kept")
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}<assistant>"


def _strip_answers(d: dict) -> dict:
    """A summary or progress as written before the answer metrics existed."""
    drop = {*ANSWER_KEYS, "gen_ns_true", "drift", "gen_known", "gen_kept_n", "nb_answers", "question_written"}
    drop |= {"gen_answer", "chat_answer", "drift_reference", "answer_seconds", "chat_questions"}
    if isinstance(d, dict):
        return {k: _strip_answers(v) for k, v in d.items() if k not in drop}
    if isinstance(d, list):
        return [_strip_answers(v) for v in d]
    return d


def test_answer_metrics_with_a_chat_template_survive_a_resume_of_an_older_run(tmp_path, corpus):
    """With a chat template, chat efficacy is measured; a run checkpointed before the answer metrics
    existed resumes with them (the unedited answers taken before its edits are written back); compare
    shows them and still reads a summary that lacks them."""
    from app.eval.compare import compare_rows

    def lm():
        model = _lm()
        model.tokenizer.chat_template = CHAT_TEMPLATE
        return model

    settings = _settings()
    stats = _key_stats(_lm(), settings, corpus, tmp_path)
    opts = _options(corpus, checkpoint_every=1)
    opts.health = None
    out = tmp_path / "run"
    with pytest.raises(RunInterrupted):
        run_eval(
            lm(), settings, RECORDS, options=opts, key_stats=stats, out_dir=out, progress=False, stop_after_batches=1
        )
    progress_file = out / "checkpoint" / "progress.json"
    saved = json.loads(progress_file.read_text())
    assert len(saved["drift_reference"]) >= 20 and all("nb_answers" in d for d in saved["baseline_details"])
    assert saved["checkpoints"][0]["scores"]["chat_es"] is not None
    progress_file.write_text(json.dumps(_strip_answers(saved)))
    (out / "trail" / "progress.json").unlink()  # resume from the (older) checkpoint

    summary = resume_from(out, lm(), settings, RECORDS, opts, key_stats=stats, progress=False)
    for scores in (summary, summary["baseline"], summary["checkpoints"][1]["scores"]):
        assert all(scores[k] is not None for k in ANSWER_KEYS if k != "gen_kept"), scores  # kept: None if none known
        assert 0.0 <= scores["chat_es"] <= 100.0 and 0.0 <= scores["drift"] <= 100.0
    assert summary["baseline"]["gen_leak"] == 0.0 and summary["baseline"]["drift"] == 0.0
    assert "gen_es" not in summary["checkpoints"][0]["scores"]  # scored by the older run
    assert summary["chat_questions"]["chat_template"] is True
    assert all(isinstance(r["chat_answer"], str) for r in summary["per_record"])
    assert all("gen_es" in b["scores"] and "gen_es" in b["baseline"] for b in summary["by_batch"])

    header, rows = compare_rows([summary, _strip_answers(summary)], ["new", "old"])
    for name in ("gen ES", "gen ES begins", "gen PS", "chat ES", "chat old", "leak", "kept", "drift"):
        assert name in header, name
    col = header.index("chat ES")
    assert rows[0][col] == f"{summary['chat_es']:.1f} ({summary['baseline']['chat_es']:.1f})"
    assert rows[1][col] == "–" and rows[1][header.index("ES")] == rows[0][header.index("ES")]
    from app.eval.plots import plot_compare, plot_run

    plot_compare([summary, _strip_answers(summary)], ["new", "old"], tmp_path / "cmp.png")
    (tmp_path / "old").mkdir()
    plot_run(_strip_answers(summary), tmp_path / "old")  # an older summary plots without the answers
    assert not (tmp_path / "old" / ANSWERS_PNG).exists() and (tmp_path / "cmp.png").exists()


def test_checkpoint_state_roundtrip():
    import torch

    state = (
        {"batch0.layer1.u": torch.arange(6.0).reshape(2, 3), "x": torch.ones(2, dtype=torch.float64)},
        {"settings": {"layers": [1, 2]}, "batches": [0], 4: None, "t": (1, "a")},
    )
    skeleton, tensors = flatten_state(state)
    json.dumps(skeleton)  # JSON-able: no pickle anywhere
    back = unflatten_state(json.loads(json.dumps(skeleton)), tensors)
    assert isinstance(back, tuple) and back[1] == state[1]
    assert torch.equal(back[0]["batch0.layer1.u"], state[0]["batch0.layer1.u"])
    assert back[0]["x"].dtype == torch.float64


def test_checkpoint_sample_is_fixed_size_and_weights_can_be_restored(tmp_path, corpus):
    from app.editing.build import Role, build_editor

    lm, settings = _lm(), _settings("memit")
    opts = _options(corpus, checkpoint_every=1, checkpoint_sample=3)
    opts.health = None
    editor = build_editor(lm, settings, Role.EVAL, key_stats=_key_stats(lm, settings, corpus, tmp_path))
    before = editor.weights_hash()
    summary = run_eval(lm, settings, RECORDS, options=opts, editor=editor, progress=False, restore_weights=True)
    assert [(c["edits"], c["scored"]) for c in summary["checkpoints"]] == [(2, 2), (4, 3)]
    assert len(summary["per_record"]) == 6  # the final scores use every edited fact
    assert summary["weights_hash"] != before and editor.weights_hash() == before


def _tiny_eval_args(model_dir, cache, max_steps: int, generation_samples: int) -> list[str]:
    """The options the CLI tests give `kedit eval` for the tiny model: two layers, short runs."""
    # reedit_passes 0: a random tiny model shows few facts, so the passes would only triple the run.
    sets = {
        "layers": "[1,2]",
        "stats_tokens": "1000",
        "max_steps": str(max_steps),
        "n_prefixes": "1",
        "reedit_passes": "0",
    }
    return [
        *("--model", str(model_dir), "--cache-dir", str(cache), "--batch-size", "2"),
        *(arg for name, value in sets.items() for arg in ("--set", f"{name}={value}")),
        *("--generation-samples", str(generation_samples), "--gen-max-len", "12", "--no-progress"),
    ]


def test_cli_run_resume_and_compare(tmp_path, tiny_model_dir, shared_data, monkeypatch):
    from typer.testing import CliRunner

    from app.cli.evaluation import eval_app

    monkeypatch.setenv("KEDIT_STATS_CORPUS", str(shared_data / "corpus" / "wikitext103_valid.tokens.txt"))
    cache = tmp_path / "cache"
    base = [
        *_tiny_eval_args(tiny_model_dir, cache, max_steps=3, generation_samples=4),
        "--records",
        "4",
        "--ppl-tokens",
        "128",
        "--checkpoint-every",
        "1",
    ]
    runner = CliRunner()
    res = runner.invoke(eval_app, ["run", *base, "--method", "encore", "--out", str(tmp_path / "encore")])
    assert res.exit_code == 0, res.output
    first = json.loads((tmp_path / "encore" / "summary.json").read_text())
    assert first["run"]["command"]["records"] == 4 and first["settings"]["layers"] == [1, 2]
    # No bars: the log still says where the run is, one plain line per batch and checkpoint.
    assert "batch 1/2: 2 edits in" in res.output and "batch 2/2: 2 edits in" in res.output
    assert "checkpoint at 2 edits (2 facts scored): ES " in res.output
    assert "\r" not in res.output

    # Resume from the last checkpoint (after batch 1 of 2) as if the run had stopped there.
    (tmp_path / "encore" / "summary.json").unlink()
    res = runner.invoke(eval_app, ["--resume", str(tmp_path / "encore"), "--no-progress"])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "encore" / "summary.json").read_text())
    assert again["weights_hash"] == first["weights_hash"]

    res = runner.invoke(
        eval_app, [*base, "--method", "memit", "--no-health", "--neighbours", "3", "--out", str(tmp_path / "memit")]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "memit" / "run.json").read_text())["neighbours"] == 3
    res = runner.invoke(
        eval_app,
        [
            "compare",
            str(tmp_path / "encore"),
            str(tmp_path / "memit"),
            "--out",
            str(tmp_path / "cmp.png"),
            "--markdown",
            str(tmp_path / "cmp.md"),
        ],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 0, res.output
    assert "encore" in res.output and "memit" in res.output
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "cmp.md").read_text().splitlines()
    assert md[2].startswith("| run | method | edits | ES | PS | NS | S | GE |") and md[2].endswith("| ppl | entropy |")
    assert md[4].startswith("| encore | encore | 4 |") and md[5].startswith("| memit | memit | 4 |")

    res = runner.invoke(eval_app, ["compare", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_run_after_an_earlier_run_continues_its_model(tmp_path, corpus):
    """Records 0–3 then, on top of that run's final state, records 4–5: the same weights as one
    run over 0–5 (same batch size), the baseline still the unedited model's, the first run's
    records scored again at the end."""
    from app.eval.checkpoint import FINAL_DIR

    settings = _settings()
    stats = _key_stats(_lm(), settings, corpus, tmp_path)
    straight = run_eval(_lm(), settings, RECORDS, options=_options(corpus), key_stats=stats, progress=False)

    run_eval(
        _lm(),
        settings,
        RECORDS[:4],
        options=_options(corpus),
        key_stats=stats,
        out_dir=tmp_path / "first",
        progress=False,
    )
    final_state, progress = load_checkpoint(tmp_path / "first", FINAL_DIR)
    assert progress["batches_done"] == 2
    alone = run_eval(_lm(), settings, RECORDS[4:], options=_options(corpus), key_stats=stats, progress=False)
    second = run_eval(
        _lm(),
        settings,
        RECORDS[4:],
        options=_options(corpus),
        key_stats=stats,
        progress=False,
        start_state=final_state,
        earlier_records=RECORDS[:4],
    )

    assert second["weights_hash"] == straight["weights_hash"] != alone["weights_hash"]
    assert second["baseline"]["es"] == alone["baseline"]["es"]  # scored before the earlier edits were loaded
    assert second["run"]["prior_edits"] == 4 and [b["batch"] for b in second["batches"]] == [0]
    assert second["earlier_records"]["records"] == second["earlier_records"]["scored"] == 4
    assert 0 <= second["earlier_records"]["es"] <= 100


def test_cli_after_needs_a_finished_run_with_the_same_settings(tmp_path, tiny_model_dir, shared_data, monkeypatch):
    from typer.testing import CliRunner

    from app.cli.evaluation import eval_app
    from app.editing.settings import preset

    monkeypatch.setenv("KEDIT_STATS_CORPUS", str(shared_data / "corpus" / "wikitext103_valid.tokens.txt"))
    base = [*_tiny_eval_args(tiny_model_dir, tmp_path / "cache", max_steps=2, generation_samples=2), "--no-health"]
    runner = CliRunner()
    res = runner.invoke(eval_app, [*base, "--records", "2", "--out", str(tmp_path / "cf")])
    assert res.exit_code == 0, res.output

    res = runner.invoke(
        eval_app, [*base, "--records", "2", "--after", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]
    )
    assert res.exit_code == 2 and "no finished run there" in " ".join(res.output.split())
    res = runner.invoke(
        eval_app,
        [*base, "--set", "lambda_n=3", "--records", "2", "--after", str(tmp_path / "cf"), "--out", str(tmp_path / "y")],
    )
    saved = preset("smollm2", "encore").lambda_n  # the first run took the preset's
    assert res.exit_code == 2 and f"(lambda_n: {saved} there, 3.0 here)" in " ".join(res.output.split())

    res = runner.invoke(
        eval_app,
        [
            *base,
            "--dataset",
            "zsre",
            "--records",
            "2",
            "--after",
            str(tmp_path / "cf"),
            "--checkpoint-sample",
            "1",
            "--out",
            str(tmp_path / "zsre"),
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "zsre" / "summary.json").read_text())
    assert summary["run"]["prior_edits"] == 2 and summary["earlier_records"]["kind"] == "counterfact"
    assert summary["earlier_records"]["records"] == 2 and summary["earlier_records"]["scored"] == 1
    assert "edit_acc" in summary and summary["run"]["command"]["after"] == str(tmp_path / "cf")
