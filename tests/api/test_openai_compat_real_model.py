"""The openai client against `kedit serve` on the real SmolLM2-135M-Instruct (its own chat template):
a chat answer, an edit through POST /edits on a cloze prompt that the completions endpoint then says
and that the chat endpoint answers to a question phrased differently (issue 24), the worker's record
of both (shown, question_shown), and the fingerprint following the version."""

from __future__ import annotations

import json

import httpx
import pytest

openai = pytest.importorskip("openai")

from app.editing.answers import shows  # noqa: E402
from tests.utils.service import KeditServer, wait_for  # noqa: E402

pytestmark = pytest.mark.slow


def test_openai_client_on_smollm2(shared_data, tmp_path):
    rec = json.loads((shared_data / "counterfact_extra" / "counterfact-edit.json").read_text())[0]
    fact = {
        "prompt": rec["prompt"].replace(rec["subject"], "{}"),
        "subject": rec["subject"],
        "target_new": rec["target_new"],
        "target_true": rec["ground_truth"],
    }
    prompt = fact["prompt"].format(fact["subject"])
    # Not the prompt's words: "native language" for "mother tongue", a question for a cloze.
    question = "What is the native language of Danielle Darrieux?"
    # The default model and cache (the converted model and C0 from WikiText, as the other slow tests);
    # no canaries (test_guard_real_model.py tests them on SmolLM2).
    env = {
        "KEDIT_STATS_CORPUS": str(shared_data / "corpus"),
        "KEDIT_DATABASE_URL": f"sqlite:///{tmp_path / 'k.db'}",
        "KEDIT_BATCH_WAIT_MS": "50",
        "KEDIT_SYNC_POLL_S": "0.5",
        "KEDIT_CANARIES": "false",
    }
    srv = KeditServer(env, tmp_path / "serve.log").wait_ready(900)
    try:
        oa = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=300)
        (model,) = oa.models.list().data
        assert model.id.startswith("SmolLM2-135M-Instruct")
        answer = oa.chat.completions.create(
            model=model.id,
            temperature=0,
            max_tokens=24,
            messages=[
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is the capital of France?"},
            ],
        )
        assert "Paris" in answer.choices[0].message.content, answer
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in oa.chat.completions.create(
                model=model.id,
                temperature=0,
                max_tokens=24,
                stream=True,
                messages=[
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "What is the capital of France?"},
                ],
            )
            if c.choices
        )
        assert streamed == answer.choices[0].message.content

        before = oa.completions.create(model=model.id, prompt=prompt, max_tokens=6, temperature=0)
        assert fact["target_new"] not in before.choices[0].text

        def ask() -> str:
            r = oa.chat.completions.create(
                model=model.id, temperature=0, max_tokens=24, messages=[{"role": "user", "content": question}]
            )
            return r.choices[0].message.content

        asked_before = ask()
        assert not shows(asked_before, fact["target_new"]), asked_before
        eid = httpx.post(f"{srv.url}/edits", json={**fact, "question": question}, timeout=60).json()["ids"][0]
        edit = wait_for(
            lambda: (e := httpx.get(f"{srv.url}/edits/{eid}").json())["status"] in ("applied", "failed") and e,
            900,
            "the edit",
        )
        assert edit["status"] == "applied", edit
        after = oa.completions.create(model=model.id, prompt=prompt, max_tokens=6, temperature=0)
        assert after.choices[0].text.strip().startswith(fact["target_new"]), after
        assert after.system_fingerprint != before.system_fingerprint
        assert after.system_fingerprint.startswith(f"kedit-v{edit['version']}-")
        chat = oa.chat.completions.create(
            model=model.id, temperature=0, max_tokens=16, messages=[{"role": "user", "content": prompt}]
        )
        assert chat.system_fingerprint == after.system_fingerprint

        # Asked in other words, through the chat template, the edited model answers with the new fact.
        asked_after = ask()
        assert shows(asked_after, fact["target_new"]), (asked_before, asked_after)
        # The worker asked the same (24 greedy tokens, same template) and recorded what it read.
        checked = wait_for(
            lambda: (e := httpx.get(f"{srv.url}/edits/{eid}").json())["checked_version"] is not None and e,
            120,
            "the worker's check",
        )
        assert checked["checked_version"] == edit["version"]
        assert checked["shown"] is True and checked["answer"].strip().startswith(fact["target_new"]), checked
        assert checked["question_shown"] is True and checked["question_answer"] == asked_after, checked
    finally:
        srv.stop()
