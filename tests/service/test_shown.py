"""The service tells the truth (issue 24): after a batch, and after a revert's re-apply of the batch-mates,
the worker asks its committed weights every applied fact's prompt (and question) and records whether
the greedy answer shows target_new. On the tiny model, in embedded mode and on the real PostgreSQL +
Redis.

A tiny random model shows no arbitrary target, so the cases are built from what it says: the first word
of its own greedy answer to a prompt, taken as the target, is shown; a word it never says is not. Each
recorded answer is compared with what the api serves at the recorded version (/generate and
/v1/chat/completions), so the record is what a user would have read."""

from __future__ import annotations

import re
import shutil

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.editing.answers import shows
from app.service import faults
from app.service.context import ServiceContext
from app.service.shown import NO_CHAT_TEMPLATE, PROMPT_TOKENS, QUESTION_TOKENS
from tests.utils.service import wait_for, wait_status

OWN = ("{} plays", "Lionel Messi")  # its answer's first word becomes the target: shown
OTHER = ("{} is the capital of", "Paris")  # a target it does not say: not shown
NEVER = "Zanzibar"


def generate(c, prompt: str, tokens: int) -> dict:
    return c.get("/generate", params={"prompt": prompt, "max_new_tokens": tokens}).json()


def chat(c, question: str) -> tuple[str, str]:
    model = c.get("/v1/models").json()["data"][0]["id"]
    body = {"model": model, "messages": [{"role": "user", "content": question}], "temperature": 0}
    r = c.post("/v1/chat/completions", json={**body, "max_tokens": QUESTION_TOKENS}).json()
    return r["choices"][0]["message"]["content"], r["system_fingerprint"]


def facts(c) -> list[dict]:
    own = re.search(r"[A-Za-z]+", generate(c, OWN[0].format(OWN[1]), PROMPT_TOKENS)["text"])
    assert own, "the tiny model's answer has a word to take as the target"
    return [
        # The question through the tiny chat template (the messages' text joined) reads as the prompt.
        {"prompt": OWN[0], "subject": OWN[1], "target_new": own.group(0), "question": OWN[0].format(OWN[1])},
        {"prompt": OTHER[0], "subject": OTHER[1], "target_new": NEVER, "question": f"Which country is {OTHER[1]} in?"},
    ]


def checked(c, edit_id: int, version: int) -> dict:
    """The edit once the worker recorded its check at `version` (a moment after the version's commit)."""

    def done():
        e = c.get(f"/edits/{edit_id}").json()
        return e if e["checked_version"] == version else None

    return wait_for(done, what=f"edit {edit_id} checked at version {version}")


def assert_truthful(c, e: dict, version: int) -> None:
    """The record is what the api's weights of that version answer, judged by the one rule."""
    assert e["checked_version"] == version and e["checked_at"] is not None
    filled = e["prompt"].format(e["subject"])
    g = generate(c, filled, PROMPT_TOKENS)
    assert g["version"] == version
    assert e["answer"] == g["text"]
    assert e["shown"] is shows(g["text"], e["target_new"])
    reply, fingerprint = chat(c, e["question"])
    assert fingerprint.startswith(f"kedit-v{version}-")
    assert e["question_answer"] == reply and e["question_problem"] is None
    assert e["question_shown"] is shows(reply, e["target_new"])


def metric(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{labels} not in /metrics")


def run_flow(c, counter_text) -> None:
    """Both branches recorded truthfully, the filter, the pages, the counter; then a revert re-checks."""
    own, other = facts(c)
    ids = c.post("/edits", json=[own, other]).json()["ids"]
    edits = [wait_status(c, i) for i in ids]
    assert [e["status"] for e in edits] == ["applied", "applied"], edits
    version = edits[0]["version"]
    edits = [checked(c, i, version) for i in ids]
    for e in edits:
        assert_truthful(c, e, version)
    shown, not_shown = edits
    assert shown["shown"] is True and shown["question_shown"] is True, shown
    assert not_shown["shown"] is False and not_shown["question_shown"] is False, not_shown

    def listed(**params) -> list[int]:
        r = c.get("/edits", params=params)
        assert r.status_code == 200, r.text
        return [e["id"] for e in r.json()["items"]]

    assert listed(shown="true") == [ids[0]] and listed(shown="false") == [ids[1]]
    assert listed(shown="unchecked") == [] and listed(shown="false", status="applied") == [ids[1]]
    r = c.get("/edits", params={"shown": "maybe"})
    assert r.status_code == 422 and "shown must be one of true, false, unchecked" in r.json()["detail"]

    page = c.get("/ui", params={"shown": "false"}).text
    assert re.findall(r'<td class="subject">([^<]*)</td>', page) == [OTHER[1]]
    assert '<option value="false" selected>' in page and ">applied, not shown<" in page
    assert ">applied, shown<" in c.get(f"/ui/edits/{ids[0]}").text
    one = c.get(f"/ui/edits/{ids[1]}").text
    assert ">applied, not shown<" in one and 'id="shown-check"' in one and other["question"] in one
    assert c.get("/ui", params={"shown": "nonsense"}).status_code == 422

    counted = counter_text()
    for kind in ("prompt", "question"):
        assert metric(counted, "kedit_edits_checked_total", kind=kind, shown="true") == 1.0
        assert metric(counted, "kedit_edits_checked_total", kind=kind, shown="false") == 1.0
    text = c.get("/metrics").text
    for kind in ("prompt", "question"):
        for label, n in (("true", 1.0), ("false", 1.0), ("unchecked", 0.0)):
            assert metric(text, "kedit_applied_edits_shown", kind=kind, shown=label) == n

    # A revert re-applies the batch-mate as a new version: it is asked again, at that version.
    c.post(f"/edits/{ids[1]}/revert")
    reverted = wait_status(c, ids[1], ("reverted",))
    kept = checked(c, ids[0], version + 1)
    assert kept["status"] == "applied" and reverted["reverted_version"] == version + 1
    assert_truthful(c, kept, version + 1)
    assert reverted["checked_version"] == version, "a reverted edit keeps what was checked while it was applied"
    counted = counter_text()
    assert metric(counted, "kedit_edits_checked_total", kind="prompt", shown=str(kept["shown"]).lower()) == (
        2.0 if kept["shown"] else 1.0
    )


def test_embedded_records_shown_and_not_shown(client):
    run_flow(client, lambda: client.get("/metrics").text)


@pytest.mark.integration
def test_production_records_shown_and_not_shown(prod_config):
    from prometheus_client import generate_latest

    cfg = prod_config()
    worker = ServiceContext.open(cfg)
    worker.start_worker()
    try:
        with TestClient(create_app(cfg, with_worker=False)) as c:
            run_flow(c, lambda: generate_latest(worker.registry).decode())
    finally:
        worker.close()


def test_a_failed_check_loses_no_edit_and_leaves_it_unchecked(client, caplog):
    """The check runs after the commit: when it fails, the edit is applied once all the same and its
    shown fields stay null ("not checked"); the next batch is checked again."""
    own, other = facts(client)
    faults.configure("worker_shown_checked:raise")
    try:
        e = wait_status(client, client.post("/edits", json=own).json()["ids"][0])
        wait_for(
            lambda: any("could not check whether edits" in r.getMessage() for r in caplog.records),
            what="the check to fail",
        )
    finally:
        faults.configure(None)
    assert e["status"] == "applied" and e["version"] == 1
    assert (e["shown"], e["answer"], e["checked_version"], e["question_shown"]) == (None, None, None, None)
    assert [x["id"] for x in client.get("/edits", params={"shown": "unchecked"}).json()["items"]] == [e["id"]]
    assert client.get(f"/ui/edits/{e['id']}").text.count("applied, not checked") == 1
    e2 = checked(client, client.post("/edits", json=other).json()["ids"][0], 2)
    assert e2["shown"] is False
    assert client.get(f"/edits/{e['id']}").json()["checked_version"] is None
    text = client.get("/metrics").text
    assert metric(text, "kedit_applied_edits_shown", kind="prompt", shown="unchecked") == 1.0


def test_a_model_without_a_chat_template_records_the_question_unasked(tiny_assets, make_config, tmp_path):
    model_dir, _, _ = tiny_assets
    bare = tmp_path / "tiny-no-chat"
    shutil.copytree(model_dir, bare)
    (bare / "chat_template.jinja").unlink()
    with TestClient(create_app(make_config(model_path=str(bare), canaries=False))) as c:
        own, _ = facts(c)
        eid = c.post("/edits", json=own).json()["ids"][0]
        e = checked(c, eid, wait_status(c, eid)["version"])
        assert e["question"] == own["question"] and e["shown"] is shows(e["answer"], own["target_new"])
        assert (e["question_shown"], e["question_answer"], e["question_problem"]) == (None, None, NO_CHAT_TEMPLATE)
        assert NO_CHAT_TEMPLATE in c.get(f"/ui/edits/{eid}").text
        text = c.get("/metrics").text
        assert metric(text, "kedit_applied_edits_shown", kind="question", shown="unchecked") == 1.0
        assert 'kedit_edits_checked_total{kind="question"' not in text, "an unasked question is not counted"
