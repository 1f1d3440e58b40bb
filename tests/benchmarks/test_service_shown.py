"""benchmarks/service_shown.py end to end on the tiny model: a real `kedit serve`, facts through
POST /edits with their questions, answers read back through the OpenAI endpoints."""

from __future__ import annotations

import json

from benchmarks.procs import run_module
from tests.utils.service import TINY_OVERRIDES


def test_service_shown_edits_through_the_service_and_writes_its_table(tiny_assets, shared_data, tmp_path):
    model_dir, corpus, cache = tiny_assets
    env = {
        "KEDIT_MODEL_PATH": model_dir,
        "KEDIT_STATS_CORPUS": corpus,
        "KEDIT_CACHE_DIR": cache,
        "KEDIT_EDIT_OVERRIDES": json.dumps(TINY_OVERRIDES),
        "KEDIT_BATCH_WAIT_MS": "50",
    }
    out = tmp_path / "out"
    proc = run_module(
        "benchmarks.service_shown",
        *("--records", "3", "--out", str(out), "--timeout", "300"),
        *(a for k, v in env.items() for a in ("--env", f"{k}={v}")),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "service-shown.json").read_text())
    assert result["records"] == 3 and result["applied"] + result["failed"] == 3
    assert result["served"]["model"] == model_dir.name and result["settings"]["layers"] == TINY_OVERRIDES["layers"]
    assert set(result["edited"]) == {"prompt", "prompt_begins", "paraphrase", "chat", "chat_old", "leak"}
    # The tiny model's chat template joins the messages, so its chat answer is the question's continuation.
    assert all(set(a["after"]) == {"prompt", "paraphrase", "neighbour", "chat"} for a in result["answers"])
    assert "| the chat question (old object) |" in (out / "table.md").read_text()
