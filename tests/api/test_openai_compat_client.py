"""The OpenAI-compatible endpoints through the official `openai` package, against a real `kedit serve`
process (embedded mode, tiny model): completions, chat, streaming, bad requests, auth, an edit made
through POST /edits answering through /v1/chat/completions, system_fingerprint following the version.

One server for the module, with KEDIT_API_KEY set and generation requiring it; the default (open
generation with a key configured) is checked in-process at the end."""

from __future__ import annotations

import httpx
import pytest

openai = pytest.importorskip("openai")

from tests.utils.service import FACTS, KeditServer, tiny_server_env, wait_for  # noqa: E402

KEY = "sk-kedit-test-key"
PROMPT = "The mother tongue of Danielle Darrieux is"


@pytest.fixture(scope="module")
def server(tiny_assets, tmp_path_factory):
    model_dir, corpus, cache = tiny_assets
    root = tmp_path_factory.mktemp("openai-serve")
    env = tiny_server_env(
        model_dir,
        corpus,
        cache,
        root / "kedit.db",
        KEDIT_API_KEY=KEY,
        KEDIT_GENERATION_REQUIRES_KEY="true",
        KEDIT_MAX_NEW_TOKENS="32",
    )
    srv = KeditServer(env, root / "serve.log").wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def oa(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model_id(oa) -> str:
    (model,) = oa.models.list().data
    return model.id


def generate(server, prompt: str, n: int) -> dict:
    return httpx.get(f"{server.url}/generate", params={"prompt": prompt, "max_new_tokens": n}, timeout=120).json()


def version(server) -> dict:
    return httpx.get(f"{server.url}/version", timeout=30).json()


def fp(v: dict) -> str:
    return f"kedit-v{v['version']}-{v['weights_hash'][:16]}"


def chat(oa, model_id, content: str, **kw):
    return oa.chat.completions.create(model=model_id, messages=[{"role": "user", "content": content}], **kw)


def test_models_and_greedy_completion_equal_generate(server, oa, model_id):
    assert model_id == "tiny-llama"
    assert oa.models.retrieve(model_id).id == model_id
    raw = oa.completions.with_raw_response.create(model=model_id, prompt=PROMPT, max_tokens=6, temperature=0)
    c = raw.parse()
    v = version(server)
    assert c.system_fingerprint == fp(v) == raw.headers["x-system-fingerprint"]
    assert raw.headers["x-kedit-version"] == str(v["version"])
    # Greedy through the batching manager = greedy through model.generate on the same weights.
    assert c.choices[0].text == generate(server, PROMPT, 6)["text"]
    assert c.choices[0].finish_reason == "length"
    assert c.usage.completion_tokens == 6 and c.usage.prompt_tokens > 0


def test_chat_whole_and_streamed_agree(server, oa, model_id):
    whole = chat(oa, model_id, PROMPT, max_tokens=8, temperature=0)
    # The tiny model's chat template joins the messages' text, so the chat reads like the bare prompt.
    assert whole.choices[0].message.content == generate(server, PROMPT, 8)["text"]
    assert whole.choices[0].message.role == "assistant"
    chunks = list(
        chat(oa, model_id, PROMPT, max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True})
    )
    assert {c.system_fingerprint for c in chunks} == {whole.system_fingerprint}
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    streamed = list(oa.completions.create(model=model_id, prompt=PROMPT, max_tokens=8, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == text


def test_the_stream_ends_with_done(server, model_id):
    body = {"model": model_id, "prompt": PROMPT, "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream(
        "POST", f"{server.url}/v1/completions", json=body, timeout=120, headers={"Authorization": f"Bearer {KEY}"}
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]" and len(events) >= 2


def test_seed_sampling_and_stop(oa, model_id):
    a = chat(oa, model_id, PROMPT, max_tokens=12, temperature=1.0, top_p=0.9, seed=1234)
    b = chat(oa, model_id, PROMPT, max_tokens=12, temperature=1.0, top_p=0.9, seed=1234)
    assert a.choices[0].message.content == b.choices[0].message.content
    others = {
        chat(oa, model_id, PROMPT, max_tokens=12, temperature=1.0, seed=s).choices[0].message.content for s in (1, 2, 3)
    }
    assert len(others) > 1, "different seeds should give different samples"

    full = oa.completions.create(model=model_id, prompt=PROMPT, max_tokens=12, temperature=0).choices[0].text
    stop = full[3:5]
    cut = oa.completions.create(model=model_id, prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop]).choices[0]
    assert cut.text == full[: full.index(stop)] and cut.finish_reason == "stop"


@pytest.mark.parametrize(
    "kwargs, status, fragment",
    [
        ({"n": 2}, 400, "n=1"),
        ({"max_tokens": 10_000}, 400, "bound is 32"),
        ({"temperature": 3}, 400, "temperature"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "at most 4"),
        ({"model": "gpt-4o"}, 404, "GET /v1/models"),
        ({"extra_body": {"best_of": 3}}, 400, "best_of"),
    ],
)
def test_bad_requests_answer_a_reason_in_openai_shape(oa, model_id, kwargs, status, fragment):
    kwargs = {"model": model_id, "messages": [{"role": "user", "content": "hi"}], **kwargs}
    with pytest.raises(openai.APIStatusError) as err:
        oa.chat.completions.create(**kwargs)
    assert err.value.status_code == status
    body = err.value.body
    assert set(body) == {"message", "type", "param", "code"}, body  # the client unwraps {"error": ...}
    assert fragment in body["message"]


def test_empty_messages_and_not_json(server, oa, model_id):
    with pytest.raises(openai.BadRequestError) as err:
        oa.chat.completions.create(model=model_id, messages=[])
    assert err.value.body["param"] == "messages"
    # Found by schemathesis: a conversation that the chat template turns into no tokens at all (was a 500).
    with pytest.raises(openai.BadRequestError) as err:
        oa.chat.completions.create(model=model_id, messages=[{"role": "user", "content": ""}])
    assert "no tokens" in err.value.body["message"]
    r = httpx.post(
        f"{server.url}/v1/completions",
        content=b"{oops",
        timeout=30,
        headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_auth(server, model_id):
    wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY + "x", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        wrong.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["message"] == "wrong API key"
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    r = httpx.post(f"{server.url}/v1/completions", json={"model": model_id, "prompt": "hi"}, timeout=30)
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]["message"]
    # The other read endpoints stay open.
    assert httpx.get(f"{server.url}/generate", params={"prompt": "hi", "max_new_tokens": 1}).status_code == 200


def test_an_edit_answers_through_chat_and_the_fingerprint_follows(server, oa, model_id):
    # A seeded sample reads the whole next-token distribution, so it shows the edit even where the
    # tiny model's greedy text does not move; same seed and same weights give the same text.
    sample = dict(max_tokens=16, temperature=1.0, seed=7)
    before = chat(oa, model_id, PROMPT, max_tokens=6, temperature=0)
    sampled_before = chat(oa, model_id, PROMPT, **sample).choices[0].message.content
    v0 = version(server)
    assert before.system_fingerprint == fp(v0)

    auth = {"X-API-Key": KEY}
    eid = httpx.post(f"{server.url}/edits", json=FACTS[0], headers=auth, timeout=30).json()["ids"][0]
    edit = wait_for(
        lambda: (e := httpx.get(f"{server.url}/edits/{eid}").json())["status"] in ("applied", "failed") and e,
        300,
        "the edit to be applied",
    )
    assert edit["status"] == "applied", edit

    after = chat(oa, model_id, PROMPT, max_tokens=6, temperature=0)
    v1 = version(server)
    assert v1["version"] == edit["version"] > v0["version"]
    assert after.system_fingerprint == fp(v1) != before.system_fingerprint
    g = generate(server, PROMPT, 6)
    assert g["version"] == v1["version"] and after.choices[0].message.content == g["text"]
    assert chat(oa, model_id, PROMPT, **sample).choices[0].message.content != sampled_before

    httpx.post(f"{server.url}/edits/{eid}/revert", headers=auth, timeout=30)
    wait_for(lambda: httpx.get(f"{server.url}/edits/{eid}").json()["status"] == "reverted", 300, "the revert")
    back = chat(oa, model_id, PROMPT, max_tokens=6, temperature=0)
    v2 = version(server)
    assert back.system_fingerprint == fp(v2) and v2["weights_hash"] == v0["weights_hash"]
    assert back.choices[0].message.content == before.choices[0].message.content
    assert chat(oa, model_id, PROMPT, **sample).choices[0].message.content == sampled_before


def test_generation_is_open_by_default_even_with_a_key(make_config):
    from fastapi.testclient import TestClient

    from app.api.main import create_app

    with TestClient(create_app(make_config(api_key=KEY))) as c:
        mid = c.get("/v1/models").json()["data"][0]["id"]
        r = c.post("/v1/completions", json={"model": mid, "prompt": PROMPT, "max_tokens": 2, "temperature": 0})
        assert r.status_code == 200 and r.json()["choices"][0]["text"]
        # Edits still need the key.
        assert c.post("/edits", json=FACTS[0]).status_code == 401
