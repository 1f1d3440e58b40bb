"""A real `kedit serve` on a fresh cache: it listens at once, /ready tells the stage while C₀ is
being built, SIGTERM in the middle of it ends the process (the build is stopped, not finished),
and a start that cannot work exits non-zero with its reason in the log.

The model is a small random Llama (hidden 256, four layers) with a corpus of 100,000 tokens, so
that its C₀ takes seconds to minutes on a CPU: long enough to be seen, never waited for.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.utils.service import TINY_OVERRIDES, KeditServer, wait_for
from tests.utils.tiny import TRAINING_TEXT, random_llama, train_tiny_tokenizer

STATS_TOKENS = 100_000
WINDOWS_TOKENS = 391 * 256  # the corpus packed into windows of 256 tokens until the budget is met
STOP_BOUND_S = 5  # what the service promises for SIGTERM at any stage


@pytest.fixture(scope="module")
def slow_assets(tmp_path_factory) -> tuple[Path, Path]:
    import torch

    root = tmp_path_factory.mktemp("first-start")
    tok = train_tiny_tokenizer()
    torch.manual_seed(0)
    model = random_llama(tok, hidden_size=256, intermediate_size=1024, num_hidden_layers=4, initializer_range=0.02)
    model_dir, corpus = root / "llama-256", root / "corpus.txt"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    per_copy = len(tok("\n".join(TRAINING_TEXT) + "\n")["input_ids"])
    corpus.write_text("\n".join(TRAINING_TEXT * (STATS_TOKENS // per_copy + 50)))
    return model_dir, corpus


def env(model_dir: Path, corpus: Path, root: Path, **over) -> dict[str, str]:
    return {
        "KEDIT_MODEL_PATH": str(model_dir),
        "KEDIT_STATS_CORPUS": str(corpus),
        "KEDIT_CACHE_DIR": str(root / "cache"),
        "KEDIT_DATABASE_URL": f"sqlite:///{root / 'kedit.db'}",
        "KEDIT_EDIT_OVERRIDES": json.dumps({**TINY_OVERRIDES, "stats_tokens": STATS_TOKENS, **over}),
    }


def ready_body(server: KeditServer) -> dict | None:
    assert server.proc.poll() is None, f"kedit serve exited with {server.proc.returncode}:\n{server.log.read_text()}"
    try:
        r = httpx.get(f"{server.url}/ready", timeout=5)
    except httpx.TransportError:
        return None
    assert r.status_code == 503, r.text  # the build is far from over: never ready in this test
    return r.json()


def test_ready_tells_the_c0_stage_and_sigterm_ends_the_start(slow_assets, tmp_path):
    model_dir, corpus = slow_assets
    server = KeditServer(env(model_dir, corpus, tmp_path), tmp_path / "serve.log", log_level="info")
    try:

        def building() -> dict | None:
            body = ready_body(server)
            if body and body["stage"] == "building C0" and (body["progress"] or 0) > 0:
                return body
            return None

        body = wait_for(building, 300, "/ready to tell the C0 stage with some progress", interval=0.1)
        assert body["ready"] is False and body["startup"]["part"] == "worker"
        assert 0 < body["progress"] < 1
        done, total = body["detail"].removesuffix(" tokens").split(" of ")
        assert int(total.replace(",", "")) == WINDOWS_TOKENS and 0 < int(done.replace(",", "")) < WINDOWS_TOKENS
        assert body["startup"]["seconds_left"] > 0 and body["checks"]["database"] is True
        assert httpx.get(f"{server.url}/health", timeout=5).json() == {"status": "ok"}
        page = httpx.get(f"{server.url}/ui", timeout=5)
        assert page.status_code == 503 and "building C0" in page.text and 'http-equiv="refresh"' in page.text

        server.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        try:
            server.proc.wait(timeout=STOP_BOUND_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"kedit serve still runs {STOP_BOUND_S} s after SIGTERM:\n{server.log.read_text()[-3000:]}")
        print(f"SIGTERM in the C0 stage: exited {server.proc.returncode} after {time.monotonic() - t0:.2f} s")
    finally:
        server.stop()
    assert server.proc.returncode in (0, -signal.SIGTERM)
    # Stopped, not finished: no key statistics were written.
    assert not list((tmp_path / "cache").rglob("layer*.safetensors"))
    log = server.log.read_text()
    assert f"start-up (worker): building C0: layers [1, 2] from {WINDOWS_TOKENS:,} tokens" in log
    assert " tokens/s on " in log  # the expected duration, measured on the first chunk
    assert "start-up stopped at stage 'building C0'" in log


def test_a_start_that_cannot_work_exits_non_zero_with_its_reason(slow_assets, tmp_path):
    model_dir, corpus = slow_assets
    server = KeditServer(env(model_dir, corpus, tmp_path, layers=[1, 9]), tmp_path / "serve.log")
    try:
        code = server.proc.wait(timeout=300)
    finally:
        server.stop()
    log = server.log.read_text()
    assert code == 3, log
    assert "start-up failed: settings edit layer(s) [9] but the model has 4 layers (0–3); choose others" in log
