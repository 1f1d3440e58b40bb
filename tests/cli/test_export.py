"""`kedit export` and `kedit import-deltas`: the edited model taken elsewhere (tiny model, embedded log).

After two edits and a revert, the exported folder loads in plain transformers with the served
model's logits; `--version N` gives version N's weights; the deltas file applied to a fresh base
gives the head's weights hash, and is refused on another base."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from fastapi.testclient import TestClient
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from app.api.main import create_app
from app.cli.service import register
from app.editing.editor import Editor
from app.editing.model import wrap_model
from tests.utils.service import FACTS, TINY_CHAT_TEMPLATE, config_env, wait_status
from tests.utils.tiny import build_tiny_model

PROMPTS = ["The mother tongue of Danielle Darrieux is", "Paris is the capital of", "Lionel Messi plays"]


def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def logits(model, tok) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([model(**tok(p, return_tensors="pt")).logits[0, -1].float() for p in PROMPTS])


def folder_hash(folder, cfg) -> str:
    """The weights hash kedit computes, of a folder loaded by plain transformers."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    lm = wrap_model(model, AutoTokenizer.from_pretrained(folder))
    return Editor(lm, cfg.edit_settings(), replica=True).weights_hash()


@pytest.fixture(scope="module")
def edited(tiny_assets, tmp_path_factory):
    """A log with two edits, the first reverted: versions 1, 2, 3 (head); the served logits at the head."""
    from tests.utils.service import tiny_config

    model_dir, corpus, cache = tiny_assets
    db = tmp_path_factory.mktemp("export") / "kedit.db"
    cfg = tiny_config(model_dir, corpus, cache, database_url=f"sqlite:///{db}")
    hashes = {}
    with TestClient(create_app(cfg)) as c:
        hashes[0] = c.get("/version").json()["weights_hash"]
        first = wait_status(c, c.post("/edits", json=FACTS[0]).json()["ids"][0])
        second = wait_status(c, c.post("/edits", json=FACTS[1]).json()["ids"][0])
        assert (first["status"], second["status"]) == ("applied", "applied")
        hashes[2] = c.get("/version").json()["weights_hash"]
        c.post(f"/edits/{first['id']}/revert")
        wait_status(c, first["id"], ("reverted",))
        head = c.get("/version").json()
        assert head["version"] == 3
        hashes[3] = head["weights_hash"]
        lm = c.app.state.ctx.host.editor.lm
        served = logits(lm.model, lm.tokenizer)
    assert len(set(hashes.values())) == 3
    return cfg, hashes, served


@pytest.fixture
def env(edited, monkeypatch):
    cfg = edited[0]
    for k, v in config_env(cfg).items():
        monkeypatch.setenv(k, v)
    return edited


def test_export_folder_loads_in_plain_transformers_with_the_served_logits(env, tmp_path):
    cfg, hashes, served = env
    out = tmp_path / "edited"
    r = CliRunner().invoke(cli(), ["export", str(out)])
    assert r.exit_code == 0, r.output
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == TINY_CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    diff = (logits(model, tok) - served).abs().max().item()
    assert diff <= 1e-4, diff
    info = json.loads((out / "kedit-export.json").read_text())
    assert info["version"] == 3 and info["weights_hash"] == hashes[3] == folder_hash(out, cfg)

    # A non-empty folder is refused with the reason.
    r = CliRunner().invoke(cli(), ["export", str(out)])
    assert r.exit_code == 1 and "not an empty folder" in r.output


def test_export_an_older_version(env, tmp_path):
    cfg, hashes, _ = env
    for version in (2, 0):
        out = tmp_path / f"v{version}"
        r = CliRunner().invoke(cli(), ["export", str(out), "--version", str(version)])
        assert r.exit_code == 0, r.output
        assert folder_hash(out, cfg) == hashes[version]
    r = CliRunner().invoke(cli(), ["export", str(tmp_path / "v9"), "--version", "9"])
    assert r.exit_code == 1 and "version 9 is not in the log" in r.output


def test_deltas_round_trip_onto_a_fresh_base(env, tmp_path):
    cfg, hashes, served = env
    f = tmp_path / "deltas.safetensors"
    r = CliRunner().invoke(cli(), ["export", "--deltas", str(f)])
    assert r.exit_code == 0, r.output
    with safe_open(str(f), framework="pt") as st:
        meta = st.metadata()
        names = set(st.keys())
    assert meta["base_hash"] == hashes[0] and meta["weights_hash"] == hashes[3]
    # Only the live batch (the revert's survivors), per layer: no full weight matrices.
    assert names == {
        f"batch{b}.layer{layer}.{t}"
        for b in json.loads(meta["batches"])
        for layer in (1, 2)
        for t in ("u", "v", "keys")
    }
    assert len(json.loads(meta["batches"])) == 1

    out = tmp_path / "imported"
    r = CliRunner().invoke(cli(), ["import-deltas", str(f), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert hashes[3] in r.output and folder_hash(out, cfg) == hashes[3]
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert (logits(model, AutoTokenizer.from_pretrained(out)) - served).abs().max().item() <= 1e-4


def test_deltas_are_refused_on_another_base(env, tmp_path):
    f = tmp_path / "deltas.safetensors"
    assert CliRunner().invoke(cli(), ["export", "--deltas", str(f)]).exit_code == 0
    other = tmp_path / "other-base"
    model, tok = build_tiny_model("llama", seed=1)
    model.save_pretrained(other)
    tok.save_pretrained(other)
    r = CliRunner().invoke(cli(), ["import-deltas", str(f), "--model", str(other)])
    assert r.exit_code == 1 and "load the same base model" in r.output
    r = CliRunner().invoke(cli(), ["import-deltas", str(tmp_path / "other-base" / "config.json")])
    assert r.exit_code == 1 and "cannot read deltas" in r.output
