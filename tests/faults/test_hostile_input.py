"""Hostile input (issue 5): a fuzzer over the OpenAPI schema and hand-made nasty requests.

The app runs as a real `kedit serve` process on the tiny model, on a loopback port: embedded mode
(SQLite + in-process queue + worker thread), and for the fuzzer and the query checks also
production mode (the real PostgreSQL and Redis), whose text rules are stricter (no NUL in text).
Nothing may answer 5xx; bad input answers 4xx with a reason; odd-but-valid input (braces in a
subject, SQL-looking text) is stored verbatim and goes through the worker like any other fact.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import httpx
import pytest

from tests.utils import faults as sup

pytestmark = pytest.mark.faults

FUZZ_EXAMPLES = int(os.environ.get("KEDIT_FUZZ_EXAMPLES", 1000 if sup.LONG else 150))
# The PostgreSQL run repeats the fuzzer for what only that database refuses, over the operations
# whose text reaches the log (not /generate and /v1, which read the weights alone), with fewer
# examples to keep the suite within its time bound (KEDIT_LONG=1: as many as on SQLite).
FUZZ_EXAMPLES_PG = int(os.environ.get("KEDIT_FUZZ_EXAMPLES_PG", FUZZ_EXAMPLES if sup.LONG else 30))
KEY = "s3cret-key-for-tests"


@pytest.fixture(scope="module")
def server(warm_cache, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    env = sup.service_env(warm_cache, f"sqlite:///{tmp / 'kedit.db'}", "", "unused")
    env.pop("DATABASE_URL")
    env.pop("REDIS_URL")
    env["KEDIT_DATABASE_URL"] = f"sqlite:///{tmp / 'kedit.db'}"
    env["KEDIT_BATCH_SIZE"] = "8"
    cl = sup.Cluster(env, tmp)
    try:
        p = cl.start("serve")
        sup.wait_ready(p)
        yield cl, p
    finally:
        cl.close()


@pytest.fixture(scope="module")
def url(server):
    cl, p = server
    return p.url


@pytest.fixture(scope="module")
def pg_served(warm_cache, module_pg_url, module_redis_prefix, tmp_path_factory):
    """`kedit serve` in production mode: the real PostgreSQL and Redis, the worker in the process."""
    tmp = tmp_path_factory.mktemp("hostile-pg")
    env = sup.service_env(warm_cache, module_pg_url, sup.REDIS, module_redis_prefix, KEDIT_BATCH_SIZE="8")
    cl = sup.Cluster(env, tmp)
    try:
        p = cl.start("serve")
        sup.wait_ready(p)
        yield p.url
    finally:
        cl.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request) -> tuple[str, str]:
    """(database, url): the embedded server, then the production one."""
    return request.param, request.getfixturevalue("url" if request.param == "sqlite" else "pg_served")


def test_schemathesis_finds_no_server_error(db_url, tmp_path):
    """Property-based fuzzing of every operation in /openapi.json (examples, coverage, fuzzing and
    stateful phases), bounded by --max-examples; the only check is "no 5xx"."""
    database, url = db_url
    examples = FUZZ_EXAMPLES if database == "sqlite" else FUZZ_EXAMPLES_PG
    st = os.path.join(os.path.dirname(sys.executable), "st")
    r = subprocess.run(
        [
            st,
            "run",
            f"{url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            str(examples),
            "--seed",
            os.environ.get("KEDIT_FAULT_SEED", "5"),
            "--workers",
            "1",
            "--request-timeout",
            "120",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
            *(["--exclude-path-regex", "^/(generate|v1/)"] if database == "postgresql" else []),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=tmp_path,  # its .schemathesis/ state stays there
    )
    tail = r.stdout[-6000:] + r.stderr[-2000:]
    print(tail[-1500:])
    assert r.returncode == 0, tail
    assert "generated" in r.stdout  # it really ran test cases


def _post(url, body=None, **kw):
    return (
        httpx.post(f"{url}/edits", json=body, timeout=60, **kw)
        if body is not None or "content" not in kw
        else httpx.post(f"{url}/edits", timeout=60, **kw)
    )


def test_oversized_bodies_are_413(url):
    big = json.dumps([{"prompt": "{} is", "subject": "x" * 200, "target_new": "y"}] * 6000).encode()
    r = httpx.post(f"{url}/edits", content=big, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and "bound" in r.json()["detail"], r.text

    def chunks():  # no Content-Length: the server must cut it off, not read it all
        yield b'"'
        for _ in range(400):
            yield b"a" * 10_000
        yield b'"'

    for path in ("/edits", "/generate"):
        r = httpx.post(f"{url}{path}", content=chunks(), headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code == 413, r.text
        assert "over the bound of 1048576 bytes" in r.json()["detail"], r.text


@pytest.mark.parametrize("length", [b"abc", b"-1", b"1e3", b"12, 13", b"0x10"])
def test_malformed_content_length_gets_the_json_error_body(url, length):
    # h11 refuses these before the app sees a request; kedit's protocol answers in the JSON body.
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /edits HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + length + b"\r\n\r\n{}"
        )
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), raw
    assert b"content-type: application/json" in head.lower(), raw
    assert "not valid HTTP/1.1" in json.loads(body)["detail"]


def _exchange(url: str, raw: bytes) -> bytes:
    """Send raw bytes on a fresh connection; everything the server sends until it closes the
    connection (the socket's timeout bounds a server that never does)."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    got = b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(raw)
        while chunk := sock.recv(65536):
            got += chunk
    return got


@pytest.mark.parametrize("te", [b"chunked", b"Chunked"])
def test_content_length_beside_transfer_encoding_is_400_and_the_connection_closes(url, te):
    """Request smuggling (RFC 9112 section 6.1): a body framed both ways is refused and the
    connection closed, so the bytes behind it (here a second request) never run."""
    host = url.removeprefix("http://").encode()
    smuggled = b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    raw = (
        b"POST /edits HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(5 + len(smuggled)).encode() + b"\r\nTransfer-Encoding: " + te + b"\r\n\r\n"
        b"0\r\n\r\n" + smuggled
    )
    try:
        got = _exchange(url, raw)
    except TimeoutError:
        raise AssertionError("the server kept the connection open after a request framed two ways") from None
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), got
    assert got.count(b"HTTP/1.1 ") == 1, got  # the smuggled GET never ran
    assert b"connection: close" in head.lower(), got
    assert "both Content-Length and Transfer-Encoding" in json.loads(body)["detail"]
    # The server lives on.
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200


IDLE_TIMEOUT_S = 1


@pytest.fixture(scope="module")
def short_idle_url(warm_cache, tmp_path_factory):
    """kedit serve (embedded) with a short idle timeout, so that waiting for it is cheap."""
    tmp = tmp_path_factory.mktemp("idle")
    env = sup.service_env(warm_cache, "", "", "unused", KEDIT_HTTP_IDLE_TIMEOUT_S=str(IDLE_TIMEOUT_S))
    env.pop("DATABASE_URL")
    env.pop("REDIS_URL")
    env["KEDIT_DATABASE_URL"] = f"sqlite:///{tmp / 'kedit.db'}"
    cl = sup.Cluster(env, tmp)
    try:
        p = cl.start("serve")
        sup.wait_ready(p, 600)
        yield p.url
    finally:
        cl.close()


def test_idle_connections_are_closed_after_the_idle_timeout(short_idle_url):
    """A connection that never sends a request, one that sends half a request head and stops,
    and one idle after its answer are all closed by the server (KEDIT_HTTP_IDLE_TIMEOUT_S); the
    30 s socket timeout of _exchange is the bound against one held open."""
    url = short_idle_url
    host = url.removeprefix("http://").encode()
    cases = {
        "no request at all": b"",
        "half a request head": b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\n",
        "an answered request": b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\n\r\n",
    }
    for what, raw in cases.items():
        try:
            got = _exchange(url, raw)
        except TimeoutError:
            raise AssertionError(f"a connection with {what} was held open") from None
        if what == "an answered request":
            assert got.startswith(b"HTTP/1.1 200") and got.count(b"HTTP/1.1 ") == 1, got
        else:
            assert got == b"", got  # closed without an answer: there was no request to answer
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200


def test_the_served_process_answers_only_its_host_names(short_idle_url):
    """DNS rebinding: bound to loopback, `kedit serve` answers localhost, 127.0.0.1 and [::1] at
    its port (KEDIT_ALLOWED_HOSTS unset), and refuses any other Host with the reason."""
    url = short_idle_url
    port = url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert httpx.get(f"{url}/health", headers={"Host": host}, timeout=30).status_code == 200, host
    for host in (f"rebound.evil.example:{port}", "localhost:1", "evil.example"):
        r = httpx.get(f"{url}/edits", headers={"Host": host}, timeout=30)
        assert r.status_code == 400 and "KEDIT_ALLOWED_HOSTS" in r.json()["detail"], (host, r.text)


def test_prompt_beyond_the_context_is_422_and_the_connection_lives_on(url):
    # 300 emoji (inside the 512-character bound) are ~1,200 tokens; the tiny model has 256 positions.
    with httpx.Client(base_url=url, timeout=60) as c:
        for r in (
            c.get("/generate", params={"prompt": "\U0001f600" * 300, "max_new_tokens": 8}),
            c.post("/generate", json={"prompt": "\U0001f600" * 300, "max_new_tokens": 8}),
        ):
            assert r.status_code == 422, r.text
            assert "the model reads at most 256" in r.json()["detail"]
        assert c.get("/generate", params={"prompt": "Paris is", "max_new_tokens": 2}).status_code == 200


def test_idempotency_key_that_is_not_utf8_is_422(url):
    body = {"prompt": "{} is", "subject": "Idem8", "target_new": "x"}
    r = _post(url, body, headers={"Idempotency-Key": b"\xff\xfe-key"})
    assert r.status_code == 422 and "Idempotency-Key is not UTF-8 text" in r.json()["detail"], r.text
    key = ("\u00e9" * 255).encode()  # 510 bytes, 255 characters: within the bound
    a, b = _post(url, body, headers={"Idempotency-Key": key}), _post(url, body, headers={"Idempotency-Key": key})
    assert a.status_code == b.status_code == 202 and a.json()["ids"] == b.json()["ids"], (a.text, b.text)


@pytest.mark.parametrize("path", ["/edits", "/generate"])
def test_deeply_nested_json_is_4xx(url, path):
    for doc in ("[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000):
        r = httpx.post(f"{url}{path}", content=doc.encode(), headers={"content-type": "application/json"}, timeout=60)
        assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    nested = {"prompt": "{} is", "subject": "a", "target_new": "b", "target_true": None}
    for _ in range(200):
        nested = {"prompt": nested}
    r = httpx.post(f"{url}{path}", json=nested, timeout=60)
    assert r.status_code == 422, r.text[:300]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"prompt": "\xff\xfe {}", "subject": "a", "target_new": "b"}',
        b'{"prompt": "The mother tongue of {} is", "subject": "\xc3\x28", "target_new": "b"}',
        b'{"prompt": "\\ud800 {}", "subject": "a", "target_new": "b"}',  # a lone surrogate
        b'{"prompt": "{} is", "subject": "\\udfff", "target_new": "b"}',
        b"\x00\x01\x02",
        b"",
        b"null",
        b"12",
    ],
)
def test_invalid_encodings_and_shapes_are_4xx(url, raw):
    for path in ("/edits", "/generate"):
        r = httpx.post(f"{url}{path}", content=raw, headers={"content-type": "application/json"}, timeout=60)
        assert 400 <= r.status_code < 500, (path, raw, r.status_code, r.text[:300])
        assert r.json()["detail"]


@pytest.mark.parametrize("value", ["100000000000000000000000", "-1", "0", "1e309", "nan", "inf", "65", "", "0x10"])
def test_huge_or_bad_max_new_tokens_is_422(url, value):
    r = httpx.get(f"{url}/generate", params={"prompt": "hi", "max_new_tokens": value}, timeout=60)
    assert r.status_code == 422, r.text
    for raw in (
        f'{{"prompt": "hi", "max_new_tokens": {value}}}',
        '{"prompt": "hi", "max_new_tokens": 1e400}',
        '{"prompt": "hi", "max_new_tokens": 10000000000000000000000000000}',
    ):
        r = httpx.post(
            f"{url}/generate", content=raw.encode(), headers={"content-type": "application/json"}, timeout=60
        )
        assert 400 <= r.status_code < 500, (raw, r.status_code, r.text)


@pytest.mark.parametrize(
    "q",
    [
        "/edits/99999999999999999999",
        "/edits/-5",
        "/edits/abc",
        "/edits?offset=9223372036854775808",
        "/edits?limit=99999999999999999999",
        "/edits?status=%00",
        "/edits?status=queued%27%20OR%201%3D1--",
        "/edits?subject=%00",
        "/edits?subject=Paris%00x",
    ],
)
def test_out_of_range_ids_and_queries_are_4xx(db_url, q):
    _, url = db_url
    r = httpx.get(f"{url}{q}", timeout=60)
    assert 400 <= r.status_code < 500, (q, r.status_code, r.text)
    r = httpx.post(f"{url}{q.split('?')[0]}/revert", timeout=60)
    assert 400 <= r.status_code < 500, (q, r.status_code, r.text)


@pytest.mark.parametrize("subject", ["%00", "Paris%00x"])
def test_a_nul_in_a_search_is_422_with_the_reason_on_every_database(db_url, subject):
    _, url = db_url
    r = httpx.get(f"{url}/edits?subject={subject}", timeout=60)
    assert r.status_code == 422 and "subject contains a NUL character" in r.json()["detail"], r.text
    r = httpx.get(f"{url}/ui?subject={subject}", timeout=60)
    assert r.status_code == 422 and "subject contains a NUL character" in r.text, r.text
    assert "\x00" not in r.text


@pytest.mark.parametrize(
    "prompt",
    ["{0} is {}", "{subject} is {}", "{{}} {}", "{} is {}", "{}{}", "{ } is", "{} is {!r}", "{} is {0:>10}", "{}"],
)
def test_brace_patterns_in_prompts_are_422(url, prompt):
    r = httpx.post(f"{url}/edits", json={"prompt": prompt, "subject": "Paris", "target_new": "Japan"}, timeout=60)
    assert r.status_code == 422 and "prompt" in r.json()["detail"], r.text


NASTY = [
    {"prompt": "The mother tongue of {} is", "subject": "{}", "target_new": "English"},
    {"prompt": "The mother tongue of {} is", "subject": "{0}", "target_new": "{subject}"},
    {"prompt": "{} is the capital of", "subject": "{subject}", "target_new": "{{}}"},
    {"prompt": "{} plays", "subject": "{{}}", "target_new": "{0!r:>{1}}"},
    {"prompt": "%s {} was founded by %d", "subject": "%s %d %(x)s", "target_new": "${HOME} `id`"},
    {"prompt": "{} is in", "subject": "Robert'); DROP TABLE edits;--", "target_new": "1' OR '1'='1"},
    {"prompt": "{} is in", "subject": 'x" UNION SELECT * FROM versions --', "target_new": "; DELETE FROM batches"},
    {"prompt": "You can see {} from", "subject": "<script>alert(1)</script>", "target_new": "\u202eevil"},
    {"prompt": "{} is", "subject": "e\u0301\u200b\ufeff", "target_new": "😀" * 10},
]


def test_brace_and_sql_injection_is_stored_verbatim_and_handled(url):
    """Braces in subjects/targets and SQL-looking text are valid facts: accepted, stored byte for
    byte, and the worker takes them to `applied` or `failed` with a reason (never stuck, never 5xx)."""
    r = httpx.post(f"{url}/edits", json=NASTY, timeout=60)
    assert r.status_code == 202, r.text
    ids = r.json()["ids"]
    for eid, fact in zip(ids, NASTY, strict=True):
        got = httpx.get(f"{url}/edits/{eid}", timeout=60).json()
        for k, v in fact.items():
            assert got[k] == v, (k, got[k], v)

    def settled():
        rows = [httpx.get(f"{url}/edits/{eid}", timeout=60).json() for eid in ids]
        return rows if all(e["status"] in ("applied", "failed") for e in rows) else None

    rows = sup.wait_for(settled, 240, "the nasty facts to be applied or failed")
    for e in rows:
        assert e["status"] == "applied" or e["error"], e
    # The tables the SQL-looking strings name are all still there and answering.
    assert httpx.get(f"{url}/edits", params={"limit": 200}, timeout=60).json()["total"] >= len(NASTY)
    assert httpx.get(f"{url}/version", timeout=60).status_code == 200
    for fact in NASTY:
        text = fact["prompt"].replace("{}", fact["subject"])
        g = httpx.get(f"{url}/generate", params={"prompt": text, "max_new_tokens": 3}, timeout=60)
        assert g.status_code == 200, g.text
        g = httpx.post(f"{url}/generate", json={"prompt": fact["subject"] + " {0} {}", "max_new_tokens": 2}, timeout=60)
        assert g.status_code == 200, g.text


def test_idempotency_key_edge_cases_are_4xx_or_handled(url):
    body = {"prompt": "{} is", "subject": "Idem", "target_new": "x"}
    assert _post(url, body, headers={"Idempotency-Key": "k" * 256}).status_code == 422
    assert _post(url, body, headers={"Idempotency-Key": ""}).status_code in (202, 422)
    a = _post(url, body, headers={"Idempotency-Key": "'; DROP TABLE idempotency_keys;--"})
    b = _post(url, body, headers={"Idempotency-Key": "'; DROP TABLE idempotency_keys;--"})
    assert a.status_code == b.status_code == 202 and a.json()["ids"] == b.json()["ids"]
    c = _post(url, {**body, "target_new": "y"}, headers={"Idempotency-Key": "'; DROP TABLE idempotency_keys;--"})
    assert c.status_code == 422 and "Idempotency-Key" in c.json()["detail"]


# --- auth ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_client(warm_cache, tmp_path_factory):
    from fastapi.testclient import TestClient

    from app.api.main import create_app
    from app.config import ServiceConfig

    model_dir, corpus, cache = warm_cache
    db = tmp_path_factory.mktemp("auth") / "kedit.db"
    cfg = ServiceConfig(
        model_path=str(model_dir),
        cache_dir=cache,
        stats_corpus=corpus,
        edit_overrides=dict(sup.TINY_OVERRIDES),
        database_url=f"sqlite:///{db}",
        api_key=KEY,
        batch_wait_ms=50,
    )
    with TestClient(create_app(cfg)) as c:
        yield c


def _mutating_operations(client) -> list[tuple[str, str]]:
    """Every operation of the OpenAPI schema that changes state (POST /generate and the OpenAI-compatible
    /v1 generation endpoints only read; whether they need the key is KEDIT_GENERATION_REQUIRES_KEY,
    tested in tests/api/test_openai_compat_client.py)."""
    ops = []
    for path, methods in client.get("/openapi.json").json()["paths"].items():
        for method in methods:
            if method in ("post", "put", "patch", "delete") and path != "/generate" and not path.startswith("/v1/"):
                ops.append((method, path))
    return ops


def test_every_mutating_endpoint_refuses_a_missing_or_wrong_key(keyed_client):
    ops = _mutating_operations(keyed_client)
    assert ("post", "/edits") in ops and ("post", "/edits/{edit_id}/revert") in ops
    body = {"prompt": "{} is", "subject": "Auth", "target_new": "x"}
    wrong = [
        {},
        {"X-API-Key": "wrong"},
        {"X-API-Key": KEY[:-1]},
        {"X-API-Key": KEY + "x"},
        {"X-API-Key": ""},
        {"Authorization": f"Bearer {KEY[:-1]}"},
        {"Authorization": KEY},
        {"Authorization": f"Basic {KEY}"},
        {"X-API-Key": KEY.upper()},
        {"X-API-Key": ("é" * len(KEY)).encode()},
    ]
    for method, path in ops:
        p = path.replace("{edit_id}", "1")
        for headers in wrong:
            r = keyed_client.request(method.upper(), p, json=body, headers=headers)
            assert r.status_code in (401, 403), (method, path, headers, r.status_code, r.text)
            assert r.json()["detail"]
    # Nothing got in.
    assert keyed_client.get("/edits").json()["total"] == 0
    # The right key, either way, passes the guard.
    r = keyed_client.post("/edits", json=body, headers={"X-API-Key": KEY})
    assert r.status_code == 202, r.text
    r = keyed_client.post("/edits", json={**body, "subject": "Auth2"}, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 202, r.text
    eid = r.json()["ids"][0]
    r = keyed_client.post(f"/edits/{eid}/revert", headers={"X-API-Key": KEY})
    assert r.status_code in (202, 409), r.text  # 409 until the worker applied it: past the guard
    # Reads stay open.
    assert keyed_client.get(f"/edits/{eid}").status_code == 200
    assert keyed_client.get("/generate", params={"prompt": "hi", "max_new_tokens": 2}).status_code == 200


def test_key_comparison_is_constant_time():
    """Read the guard: the secret is compared with hmac.compare_digest (constant time), never with
    == or startswith, in the one check that both header paths (X-API-Key, Bearer) and the
    dashboard's forms go through."""
    from app.api import deps
    from app.api.routes import openai_compat, ui

    check = inspect.getsource(deps.check_api_key).split('"""')[-1]
    callers = (
        inspect.getsource(deps.require_api_key).split('"""')[-1]
        + inspect.getsource(deps.sent_key).split('"""')[-1]
        + inspect.getsource(openai_compat.require_generation_key).split('"""')[-1]
        + inspect.getsource(ui)
    )
    assert check.count("hmac.compare_digest(") == 1 and "compare_digest" not in callers
    for bad in (
        "== expected",
        "expected ==",
        "!= expected",
        "expected !=",
        ".startswith(expected",
        "in expected",
        "api_key ==",
        "== ctx.config.api_key",
    ):
        assert bad not in check and bad not in callers, bad
    assert "given = authorization" in callers and callers.count("check_api_key(") >= 3  # headers, /v1, forms
