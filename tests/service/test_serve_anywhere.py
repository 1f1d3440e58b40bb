"""`kedit serve` as a user starts it on a machine of their own: the real process, embedded mode,
no data folder, an empty cache. The key statistics then come from text the model generates."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.utils.service import FACTS, TINY_OVERRIDES, wait_for

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEDIT_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        {
            "KEDIT_CACHE_DIR": str(tmp_path / "cache"),  # empty: nothing converted or computed yet
            "KEDIT_DATA_DIR": str(tmp_path / "no-such-data-folder"),
            "KEDIT_EDIT_OVERRIDES": json.dumps(TINY_OVERRIDES),
            "KEDIT_BATCH_WAIT_MS": "50",
            **extra,
        }
    )
    return env


def test_serve_with_no_data_folder_and_an_empty_cache(tiny_assets, tmp_path):
    model_dir, _, _ = tiny_assets
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = serve_env(tmp_path, KEDIT_MODEL_PATH=str(model_dir))
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--log-level", "warning"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def ready() -> bool:
            assert proc.poll() is None, f"kedit serve exited with {proc.returncode}:\n{log.read_text()}"
            try:
                return httpx.get(f"{url}/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 300, "kedit serve to be ready")
        eid = httpx.post(f"{url}/edits", json=FACTS[0]).json()["ids"][0]
        edit = wait_for(
            lambda: (e := httpx.get(f"{url}/edits/{eid}").json())["status"] in ("applied", "failed") and e,
            300,
            "the edit to finish",
        )
        assert edit["status"] == "applied", edit
        assert list((tmp_path / "cache" / "stats").glob("*/sample-*.safetensors")), "the generated text is cached"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


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
