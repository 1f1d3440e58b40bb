"""`kedit serve` as a user starts it on a machine of their own: the real process, embedded mode,
no data folder, an empty cache. The key statistics then come from text the model generates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from benchmarks.procs import REPO, clean_env, free_port
from tests.utils.service import FACTS, TINY_OVERRIDES, KeditServer, wait_for


def serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return clean_env(
        KEDIT_CACHE_DIR=str(tmp_path / "cache"),  # empty: nothing converted or computed yet
        KEDIT_DATA_DIR=str(tmp_path / "no-such-data-folder"),
        KEDIT_EDIT_OVERRIDES=json.dumps(TINY_OVERRIDES),
        KEDIT_BATCH_WAIT_MS="50",
        **extra,
    )


def test_serve_with_no_data_folder_and_an_empty_cache(tiny_assets, tmp_path):
    model_dir, _, _ = tiny_assets
    srv = KeditServer(serve_env(tmp_path, KEDIT_MODEL_PATH=str(model_dir)), tmp_path / "serve.log")
    url = srv.url
    try:
        srv.wait_ready(300)
        eid = httpx.post(f"{url}/edits", json=FACTS[0]).json()["ids"][0]
        edit = wait_for(
            lambda: (e := httpx.get(f"{url}/edits/{eid}").json())["status"] in ("applied", "failed") and e,
            300,
            "the edit to finish",
        )
        assert edit["status"] == "applied", edit
        assert list((tmp_path / "cache" / "stats").glob("*/sample-*.safetensors")), "the generated text is cached"
    finally:
        srv.stop()


@pytest.mark.parametrize("kind, fragment", [("missing", "does not exist"), ("empty folder", "holds no .txt files")])
def test_unusable_corpus_is_one_line_at_start(tmp_path, kind, fragment):
    corpus = tmp_path / "corpus"
    if kind == "empty folder":
        corpus.mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(free_port())],
        cwd=REPO,
        env=serve_env(tmp_path, KEDIT_STATS_CORPUS=str(corpus)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: stats_corpus:") and fragment in lines[0] and "KEDIT_STATS_CORPUS" in lines[0]
