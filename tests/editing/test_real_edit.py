"""End to end on the real SmolLM2-135M-Instruct: edits must change its answers.

Slow (model conversion on a fresh machine, key statistics once, then a few edits); the
converted model and the statistics are cached outside the repo between runs.
"""

import json

import pytest
from typer.testing import CliRunner

from app.cli import app
from app.editing.build import Role, build_editor
from app.editing.model import load_model
from app.editing.settings import preset
from app.editing.types import EditRequest
from app.eval.scoring import teacher_force

pytestmark = pytest.mark.slow


def _prefers(lm, prompts, a, b):
    """For each prompt: does the model prefer continuation a over b (mean per-token NLL)?"""
    pairs = [(p, t) for p in prompts for t in (a, b)]
    scored = teacher_force(lm.model, lm.tokenizer, pairs)
    return [scored[2 * i].mean_nll < scored[2 * i + 1].mean_nll for i in range(len(prompts))]


def test_ten_counterfact_facts_in_one_batch(smollm2, shared_data):
    """The first 10 CounterFact records in one batch with the default preset. Like any
    editor's, its success rate is below 100 % (measured: 8 of these 10 flip in one batch,
    91 of the first 100 in the 800-record run), so the bar is per batch: every new target
    gains probability, at least 7 of 10 become the preferred answer (the unedited model
    prefers at most 2), and the neighbourhood prompts (other subjects, same relation)
    mostly keep their preference."""
    records = json.loads((shared_data / "counterfact" / "counterfact.json").read_text())[:10]
    requests = [
        EditRequest(
            r["requested_rewrite"]["prompt"],
            r["requested_rewrite"]["subject"],
            r["requested_rewrite"]["target_new"]["str"],
            r["requested_rewrite"]["target_true"]["str"],
        )
        for r in records
    ]
    before_rewrite = [_prefers(smollm2, [q.text], q.target_new, q.target_true)[0] for q in requests]
    before_neigh = [
        _prefers(smollm2, r["neighborhood_prompts"], q.target_true, q.target_new)
        for r, q in zip(records, requests, strict=True)
    ]
    assert sum(before_rewrite) <= 2, "the unedited model already prefers most new targets: a useless test"

    settings = preset("smollm2", "encore")
    # WikiText C₀, the statistics the measured success rates above were made with.
    editor = build_editor(smollm2, settings, Role.EVAL, corpus=shared_data / "corpus")
    result = editor.apply(requests, batch_id=1)
    try:
        flipped = [_prefers(smollm2, [q.text], q.target_new, q.target_true)[0] for q in requests]
        assert all(o.prob_after > o.prob_before for o in result.outcomes)
        assert sum(flipped) >= 7, [q.text for q, f in zip(requests, flipped, strict=True) if not f]
        kept = []
        for r, q, before in zip(records, requests, before_neigh, strict=True):
            after = _prefers(smollm2, r["neighborhood_prompts"], q.target_true, q.target_new)
            kept.append(sum(a == b for a, b in zip(after, before, strict=True)))
        assert sum(kept) >= 85 and min(kept) >= 6, f"neighbourhood prompts kept per fact: {kept}"
    finally:
        editor.remove_batch(1)


def test_cli_edit_changes_the_real_models_answer(shared_data, monkeypatch):
    # The WikiText C₀ the other SmolLM2 tests share: the default (generated text) is built by
    # tests/editing/test_corpus.py on a tiny model, and on SmolLM2 it takes minutes of sampling.
    monkeypatch.setenv("KEDIT_STATS_CORPUS", str(shared_data / "corpus"))
    result = CliRunner().invoke(
        app,
        [
            "edit",
            "--subject",
            "Danielle Darrieux",
            "--prompt",
            "The mother tongue of {} is",
            "--target",
            "English",
            "--max-new-tokens",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = {line.split(maxsplit=1)[0]: line for line in result.output.splitlines() if line.strip()}
    assert "French" in lines["before"] and "English" not in lines["before"], result.output
    assert "English" in lines["after"], result.output


def test_concurrent_first_conversions_do_not_corrupt_the_cache(tmp_path):
    """Two processes converting the GGUF into one empty cache at once: both get a loadable model."""
    import subprocess
    import sys

    code = (
        "import sys; from app.editing.model import convert_gguf, smollm2_gguf; "
        "print(convert_gguf(smollm2_gguf(), __import__('pathlib').Path(sys.argv[1])))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1]
    lm = load_model(cache_dir=tmp_path)
    assert lm.num_layers == 30
    leftovers = [p.name for p in (tmp_path / "models").iterdir() if p.name.startswith(".convert-")]
    assert leftovers == []
