"""Every validation rule: the bad input, the 4xx, and a message a person can act on."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from tests.utils.service import tiny_config

GOOD = {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux", "target_new": "English"}


@pytest.fixture(scope="module")
def api(tiny_assets, tmp_path_factory):
    model_dir, corpus, cache = tiny_assets
    db = tmp_path_factory.mktemp("validation") / "kedit.db"
    cfg = tiny_config(
        model_dir,
        corpus,
        cache,
        database_url=f"sqlite:///{db}",
        max_prompt_chars=64,
        max_subject_chars=32,
        max_target_chars=16,
        max_edits_per_request=3,
        max_new_tokens=8,
        max_page_size=10,
    )
    with TestClient(create_app(cfg)) as c:
        yield c


def bad(api, body, fragment: str, status: int = 422, **kw):
    r = api.post("/edits", json=body, **kw)
    assert r.status_code == status, r.text
    assert fragment in r.json()["detail"], r.json()
    return r


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"prompt": "The mother tongue of Danielle Darrieux is"}, "exactly once (found 0)"),
        ({"prompt": "{} and {} speak"}, "exactly once (found 2)"),
        ({"prompt": "The {0} of {} is"}, "no braces other than the one subject slot"),
        ({"prompt": "The tongue of {} is }"}, "no braces other than the one subject slot"),
        ({"prompt": " {} "}, "nothing besides the subject slot"),
        ({"prompt": "The mother tongue of {} is" + "x" * 60}, "the bound is 64"),
        ({"subject": ""}, "subject is empty"),
        ({"subject": "   "}, "subject is empty"),
        ({"subject": "D" * 33}, "subject is 33 characters long; the bound is 32"),
        ({"target_new": ""}, "target_new is empty"),
        ({"target_new": " \t"}, "target_new is empty"),
        ({"target_new": "E" * 17}, "target_new is 17 characters long; the bound is 16"),
        ({"target_true": ""}, "target_true is empty (leave target_true out instead)"),
        ({"target_true": "F" * 17}, "target_true is 17 characters long"),
        ({"prompt": 5}, "prompt: Input should be a valid string"),
        ({"colour": "red"}, "unknown field 'colour'"),
        ({"subject": "Danielle\x00Darrieux"}, "subject contains a NUL character"),
        ({"prompt": "The mother tongue of {} is\x00"}, "prompt contains a NUL character"),
        ({"target_new": "French", "target_true": "French"}, "target_new equals target_true"),
        ({"question": ""}, "question is empty; ask about the fact in words, or leave question out"),
        ({"question": "\u200b\u200b"}, "question has no visible character"),
        ({"question": "Which language? " + "x" * 60}, "question is 76 characters long; the bound is 64"),
        ({"question": "What does she\nspeak?"}, "question contains the control character U+000A at position 13"),
        ({"question": "What\x1b[31m?"}, "question contains the control character U+001B at position 4"),
        ({"question": "Which one\x00?"}, "question contains a NUL character"),
        ({"question": 5}, "question: Input should be a valid string"),
    ],
)
def test_bad_fact_is_rejected_with_reason(api, change, fragment):
    bad(api, {**GOOD, **change}, fragment)


@pytest.mark.parametrize("missing", ["prompt", "subject", "target_new"])
def test_missing_field(api, missing):
    body = {k: v for k, v in GOOD.items() if k != missing}
    bad(api, body, f"{missing}: Field required")


def test_bad_fact_in_a_list_names_its_index(api):
    r = bad(api, [GOOD, {**GOOD, "subject": ""}], "1.subject: subject is empty")
    assert r.json()["errors"][0]["loc"] == ["body", 1, "subject"]


def test_empty_list(api):
    bad(api, [], "the list of edits is empty")


def test_list_too_long(api):
    bad(api, [GOOD] * 4, "4 edits in one request; the bound is 3")


@pytest.mark.parametrize("body", ["a string", 42, True])
def test_body_not_object_or_list(api, body):
    bad(api, body, "must be a JSON object (one fact) or a JSON array")


def test_no_body(api):
    r = api.post("/edits")
    assert r.status_code == 422 and "the request needs a JSON body" in r.json()["detail"]


def test_invalid_json_says_where_and_what(api):
    # Truncated JSON used to answer "72: JSON decode error".
    body = b'{"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux", '
    r = api.post("/edits", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["detail"] == (
        "the body is not valid JSON: Expecting property name enclosed in double quotes at line 1, column 74 "
        "(character 73)"
    )
    r = api.post(
        "/generate",
        content=b'{"prompt": "Paris",\n "max_new_tokens": 3,}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422 and "at line 2, column 22" in r.json()["detail"], r.text


@pytest.mark.parametrize("path", ["/edits", "/generate"])
@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x"])
def test_a_body_that_is_not_sent_as_json_is_415_with_the_content_type_to_use(api, path, ctype):
    # A valid fact sent as text/plain or a form used to get "the body must be a JSON object".
    import json

    r = api.post(
        path,
        content=json.dumps({**GOOD} if path == "/edits" else {"prompt": "Paris is"}).encode(),
        headers={"content-type": ctype},
    )
    assert r.status_code == 415, r.text
    assert "must be JSON sent with Content-Type: application/json" in r.json()["detail"]
    assert ctype.split(";")[0] in r.json()["detail"]


def test_json_content_types_are_accepted(api):
    import json

    for ctype in ("application/json; charset=utf-8", "application/merge-patch+json"):
        r = api.post(
            "/generate",
            content=json.dumps({"prompt": "Paris is", "max_new_tokens": 2}).encode(),
            headers={"content-type": ctype},
        )
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("field", ["subject", "target_new", "target_true"])
@pytest.mark.parametrize("value", ["\u200b", "\ufeff", "\u0301", "\u200b\u0301 \ufeff", "\u200d\u00ad"])
def test_invisible_only_subject_or_target_is_refused_like_whitespace(api, field, value):
    bad(api, {**GOOD, field: value}, f"{field} has no visible character")


def test_a_prompt_of_only_the_slot_and_invisible_characters_is_refused(api):
    bad(api, {**GOOD, "prompt": "{}\u200b"}, "prompt has nothing besides the subject slot")
    bad(api, {**GOOD, "prompt": "\ufeff{}\u0301"}, "prompt has nothing besides the subject slot")


def test_visible_text_with_combining_marks_is_accepted(api):
    r = api.post("/edits", json={**GOOD, "subject": "Rene\u0301 Magritte", "target_new": "\u200bEnglish"})
    assert r.status_code == 202, r.text


@pytest.mark.parametrize(
    "path, body, fragment",
    [
        (
            "/generate",
            {"prompt": "Paris is", "max_new_tokens": True},
            "max_new_tokens: Input should be a valid integer, not a boolean (true)",
        ),
        (
            "/generate",
            {"prompt": "Paris is", "max_new_tokens": "5"},
            "max_new_tokens: Input should be a valid integer, not a string",
        ),
        (
            "/generate",
            {"prompt": "Paris is", "max_new_tokens": 5.0},
            "max_new_tokens: Input should be a valid integer, not a number",
        ),
        ("/generate", {"prompt": ["Paris is"]}, "prompt: Input should be a valid string, not an array"),
        ("/edits", {**GOOD, "subject": 42}, "subject: Input should be a valid string, not a number"),
        ("/edits", {**GOOD, "target_new": False}, "target_new: Input should be a valid string, not a boolean"),
        ("/edits", {**GOOD, "target_true": {"x": 1}}, "target_true: Input should be a valid string, not an object"),
    ],
)
def test_wrong_json_types_are_refused_not_coerced(api, path, body, fragment):
    r = api.post(path, json=body)
    assert r.status_code == 422, r.text
    assert fragment in r.json()["detail"], r.json()


def test_body_too_large(api):
    r = api.post("/edits", content=b"[" + b" " * (1 << 20) + b"]", headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "the bound is 1048576" in r.json()["detail"]


def test_bad_input_creates_no_edit(api):
    before = api.get("/edits").json()["total"]
    bad(api, [GOOD, {**GOOD, "prompt": "no slot"}], "exactly once")
    assert api.get("/edits").json()["total"] == before


def test_idempotency_key_bounds(api):
    bad(api, GOOD, "Idempotency-Key is 256 characters long; the bound is 255", headers={"Idempotency-Key": "k" * 256})
    bad(api, GOOD, "String should have at least 1 character", headers={"Idempotency-Key": ""})


def test_idempotency_key_bound_counts_characters_not_bytes(api):
    # 255 "é" are 510 UTF-8 bytes; the bound is in characters (as PostgreSQL's varchar(255) counts).
    key = ("\u00e9" * 255).encode()
    r = api.post("/edits", json={**GOOD, "subject": "Ren\u00e9"}, headers={"Idempotency-Key": key})
    assert r.status_code == 202, r.text
    again = api.post("/edits", json={**GOOD, "subject": "Ren\u00e9"}, headers={"Idempotency-Key": key})
    assert again.json()["ids"] == r.json()["ids"] and again.headers["Idempotent-Replayed"] == "true"
    bad(api, GOOD, "Idempotency-Key is 256 characters long", headers={"Idempotency-Key": ("\u00e9" * 256).encode()})


def test_idempotency_key_reused_with_other_body(api):
    r = api.post("/edits", json=GOOD, headers={"Idempotency-Key": "reuse-1"})
    assert r.status_code == 202
    bad(
        api,
        {**GOOD, "target_new": "German"},
        "already used with a different request body",
        headers={"Idempotency-Key": "reuse-1"},
    )


# --- generate ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"prompt": ""}, "prompt: String should have at least 1 character"),
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": "x" * 65}, "prompt is 65 characters long; the bound is 64"),
        ({"prompt": "Paris is", "max_new_tokens": 0}, "greater than or equal to 1"),
        ({"prompt": "Paris is", "max_new_tokens": 9}, "max_new_tokens is 9; the bound is 8"),
        ({"prompt": "Paris is", "max_new_tokens": "many"}, "max_new_tokens: Input should be a valid integer"),
    ],
)
def test_generate_get_bounds(api, params, fragment):
    r = api.get("/generate", params=params)
    assert r.status_code == 422, r.text
    assert fragment in r.json()["detail"]


def test_generate_get_needs_prompt(api):
    r = api.get("/generate")
    assert r.status_code == 422
    assert "prompt: Field required" in r.json()["detail"]


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"prompt": "Paris is", "temperature": 1}, "unknown field 'temperature'"),
        ({"prompt": "Paris is", "max_new_tokens": 9}, "the bound is 8"),
        ({}, "prompt: Field required"),
        (["Paris is"], "must be a JSON object"),
    ],
)
def test_generate_post_bounds(api, body, fragment):
    r = api.post("/generate", json=body)
    assert r.status_code == 422, r.text
    assert fragment in r.json()["detail"]


def test_generate_ok_answers_text_and_version(api):
    for r in (
        api.get("/generate", params={"prompt": "Paris is", "max_new_tokens": 3}),
        api.post("/generate", json={"prompt": "Paris is", "max_new_tokens": 3}),
    ):
        assert r.status_code == 200, r.text
        body = r.json()
        assert isinstance(body["text"], str) and body["version"] >= 0 and len(body["weights_hash"]) == 64


# --- reading edits -------------------------------------------------------------------------


def test_list_bad_status(api):
    r = api.get("/edits", params={"status": "done"})
    assert r.status_code == 422
    assert "status must be one of queued, applying, applied, failed, reverted (got 'done')" in r.json()["detail"]


def test_list_page_bounds(api):
    r = api.get("/edits", params={"limit": 11})
    assert r.status_code == 422 and "limit is 11; the bound is 10" in r.json()["detail"]
    r = api.get("/edits", params={"limit": 0})
    assert r.status_code == 422 and "limit: Input should be greater than or equal to 1" in r.json()["detail"]
    r = api.get("/edits", params={"offset": -1})
    assert r.status_code == 422 and "offset: Input should be greater than or equal to 0" in r.json()["detail"]


def test_get_edit_bad_and_unknown_id(api):
    r = api.get("/edits/abc")
    assert r.status_code == 422 and "edit_id: Input should be a valid integer" in r.json()["detail"]
    r = api.get("/edits/999999")
    assert r.status_code == 404 and r.json()["detail"] == "no edit with id 999999"
    r = api.get("/edits/0")
    assert r.status_code == 422 and "edit_id: Input should be greater than or equal to 1" in r.json()["detail"]
    r = api.post("/edits/0/revert")
    assert r.status_code == 422 and "edit_id: Input should be greater than or equal to 1" in r.json()["detail"]


def test_revert_unknown_edit(api):
    r = api.post("/edits/999999/revert")
    assert r.status_code == 404 and "no edit with id 999999" in r.json()["detail"]


# --- /v1: strict types, and bodies that are not JSON, in OpenAI's shape ---------------------------


@pytest.mark.parametrize(
    "change, param",
    [
        ({"max_tokens": "5"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 5.0}, "max_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"stream": 1}, "stream"),
        ({"temperature": "0"}, "temperature"),
        ({"seed": "7"}, "seed"),
    ],
)
def test_v1_types_are_strict_as_on_edits(api, change, param):
    model = api.get("/v1/models").json()["data"][0]["id"]
    r = api.post("/v1/completions", json={"model": model, "prompt": "Paris is", **change})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and ", not " in err["message"], err
    # An int is still a float (JSON does not tell 1 from 1.0).
    r = api.post("/v1/completions", json={"model": model, "prompt": "Paris is", "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b'{"prompt": "\xff\xfe {}", "subject": "a", "target_new": "b"}', "byte 12 (0xff) starts no UTF-8 character"),
        (b"[" * 100_000 + b"]" * 100_000, "nests deeper than this server reads"),
    ],
)
def test_a_body_that_is_not_utf8_or_nests_too_deep_says_where(api, raw, fragment):
    for path in ("/edits", "/generate", "/v1/completions", "/v1/chat/completions"):
        r = api.post(path, content=raw, headers={"content-type": "application/json"})
        body = r.json()
        if path.startswith("/v1/"):
            assert r.status_code == 400, (path, r.text)
            assert set(body["error"]) == {"message", "type", "param", "code"}, body
            message = body["error"]["message"]
        else:
            assert r.status_code == 422, (path, r.text)
            message = body["detail"]
        assert "the body is not valid JSON" in message and fragment in message, (path, message)


def test_a_question_is_kept_with_its_fact(api):
    r = api.post("/edits", json={**GOOD, "question": "Which language did she grow up with?"})
    assert r.status_code == 202, r.text
    (e,) = r.json()["edits"]
    assert e["question"] == "Which language did she grow up with?"
    assert api.get(f"/edits/{e['id']}").json()["question"] == e["question"]
    assert api.post("/edits", json=GOOD).json()["edits"][0]["question"] is None


def test_list_bad_shown(api):
    r = api.get("/edits", params={"shown": "yes"})
    assert r.status_code == 422 and r.json()["detail"] == "shown must be one of true, false, unchecked (got 'yes')"
