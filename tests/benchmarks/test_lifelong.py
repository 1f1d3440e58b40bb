"""benchmarks/lifelong.py on CPU with a tiny model: the script a GPU session runs unattended.

It must publish partial results at every checkpoint, stop at its deadline with the state
saved, continue from there when run again, and time a batch on a model of Llama's family.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from benchmarks.procs import run_module
from tests.utils.tiny import build_tiny_model


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = run_module("benchmarks.lifelong", *args, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def layout(tmp_path_factory, shared_data: Path) -> dict:
    """A data folder in the shared layout with 6 + 6 CounterFact records, and a tiny 10-layer Llama."""
    root = tmp_path_factory.mktemp("lifelong")
    data = root / "data"
    (data / "counterfact_extra").mkdir(parents=True)
    (data / "corpus").mkdir()
    records = json.loads((shared_data / "counterfact_extra" / "counterfact-val.json").read_text())
    (data / "counterfact_extra" / "counterfact-train.json").write_text(json.dumps(records[:6]))
    (data / "counterfact_extra" / "counterfact-edit.json").write_text(json.dumps(records[6:12]))
    for name, size in (("wikitext103_train_excerpt.tokens.txt", 60_000), ("wikitext103_valid.tokens.txt", 20_000)):
        text = (shared_data / "corpus" / name).read_text(encoding="utf-8")[:size]
        (data / "corpus" / name).write_text(text, encoding="utf-8")
    model, tok = build_tiny_model("llama", n_layer=10)  # the smollm2 preset edits layers 4–8
    model.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    return {"root": root, "data": data, "model": root / "tiny"}


def _lifelong(layout: dict, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return _run(
        "lifelong",
        "--method",
        "encore",
        "--model",
        str(layout["model"]),
        "--data-dir",
        str(layout["data"]),
        "--records",
        "8",
        "--batch-size",
        "2",
        "--checkpoint-every",
        "2",
        "--checkpoint-sample",
        "3",
        "--work",
        str(layout["root"] / "work"),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--cache-dir",
        str(layout["root"] / "cache"),
        "--stats-tokens",
        "2000",
        "--ppl-tokens",
        "256",
        "--no-parallel",
        *extra,
    )


def test_lifelong_stops_at_deadline_publishes_and_resumes(layout):
    out = layout["root"] / "out"
    # A deadline that has already passed: the first batch is written, its state saved, and it stops.
    first = _lifelong(layout, out, "--deadline-s", "0")
    assert "stopped at the deadline after 1 batches" in first.stdout
    partial = json.loads((out / "encore.json").read_text())
    assert partial["finished"] is False and partial["progress"]["batches_done"] == 1
    assert partial["records"] == 8
    (out / "partial.json").write_text(json.dumps(partial))

    second = _lifelong(layout, out, "--deadline-s", "3600")
    assert "resuming from" in second.stdout
    assert "[encore] 4 edits:" in second.stdout  # the scored checkpoint after batch 2 was printed
    done = json.loads((out / "encore.json").read_text())
    assert done["finished"] is True
    summary = done["summary"]
    assert summary["edits"] == 8 and len(summary["batches"]) == 4
    assert [c["edits"] for c in summary["checkpoints"]] == [4]  # after batch 2; batch 4 is the final scoring
    assert all(c["scored"] == 3 for c in summary["checkpoints"])
    assert set(summary["norms"]) == {"4", "5", "6", "7", "8"}
    assert summary["health"]["perplexity"] > 0

    # The report of a cut run and a finished one: a row per scored point, the runs overlaid.
    _run("report", str(out / "partial.json"), str(out / "encore.json"), "--out", str(out / "report"))
    table = (out / "report" / "table.md").read_text()
    assert [line.split(" | ")[1] for line in table.splitlines() if line.startswith("| encore |")] == ["4", "8"]
    assert (out / "report" / "lifelong.png").stat().st_size > 0


def test_the_gpu_bundles_name_still_runs():
    """docs/eval.md's calls on the GPU machine name benchmarks.lifelong_gpu."""
    proc = run_module("benchmarks.lifelong_gpu", "--help", timeout=120)
    assert proc.returncode == 0 and "llama-timing" in proc.stdout and "lifelong" in proc.stdout


def test_llama_timing_on_a_tiny_model(layout, tmp_path):
    out = tmp_path / "out"
    proc = _run(
        "llama-timing",
        "--tiny",
        "--device",
        "cpu",
        "--dtype",
        "bfloat16",
        "--tokenizer",
        str(layout["model"]),
        "--corpus",
        str(layout["data"] / "corpus" / "wikitext103_train_excerpt.tokens.txt"),
        "--data",
        str(layout["data"] / "counterfact_extra" / "counterfact-train.json"),
        "--edits",
        "4",
        "--stats-tokens",
        "1000",
        "--out",
        str(out),
    )
    report = json.loads((out / "llama-timing.json").read_text())
    assert report["shape"] == "tiny" and report["edits"] == 4 and report["dtype"] == "bfloat16"
    # 25 fixed steps never stop early; MPES may stop sooner but never later.
    assert report["fixed_25_steps"]["mean_steps"] >= report["mpes"]["mean_steps"]
    assert report["fixed_25_steps"]["seconds_per_edit"] > 0
    assert "fixed_25_steps:" in proc.stdout


def test_runs_are_methods_or_labelled_candidates():
    import typer

    from benchmarks.lifelong import parse_run

    assert parse_run("memit") == ("memit", "memit", {})
    assert parse_run('wide=encore:{"layers": [3, 4, 5], "lambda_n": 40}') == (
        "wide",
        "encore",
        {"layers": (3, 4, 5), "lambda_n": 40},
    )
    with pytest.raises(typer.BadParameter, match="JSON object"):
        parse_run("wide=encore:[1]")
