"""Cross-site requests that change state are refused whatever the key setting; the served
process answers only its allowed Host names (app/api/origin.py).

The embedded `client` runs with no API key (the default `make run`): there the only thing between
a page on another site and a revert is this check. TestClient's own Host is `testserver`.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.api.origin import HostGuard, host_allowed
from app.config import ServiceConfig
from tests.utils.service import FACTS

OWN = "http://testserver"
BROWSER_ELSEWHERE = [
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://localhost:3000"},  # another port on the same machine is another origin
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"},
    {"Sec-Fetch-Site": "same-origin", "Origin": "http://evil.example"},
]


@pytest.mark.parametrize("headers", BROWSER_ELSEWHERE)
def test_a_cross_site_revert_or_submit_is_403_without_an_api_key(client, headers):
    assert client.app.state.ctx.config.api_key is None
    for method, path, kw in (
        ("POST", "/edits", {"json": FACTS[0]}),
        ("POST", "/edits/1/revert", {}),
        ("POST", "/v1/completions", {"json": {"model": "x", "prompt": "hi"}}),
    ):
        r = client.request(method, path, headers=headers, **kw)
        assert r.status_code == 403, (path, headers, r.status_code, r.text)
        detail = r.json()["error"]["message"] if path.startswith("/v1/") else r.json()["detail"]
        assert "another" in detail and "KEDIT_ALLOWED_ORIGINS" in detail, detail
    for path in ("/ui/submit", "/ui/edits/1/revert"):
        r = client.post(path, data={"prompt": "{} is", "subject": "x", "target_new": "y"}, headers=headers)
        assert r.status_code == 403 and "text/html" in r.headers["content-type"], (path, headers, r.text)
    assert client.get("/edits").json()["total"] == 0  # nothing got in


def test_clients_that_are_not_browsers_and_kedits_own_pages_pass(client):
    # curl, scripts, the openai client: no Origin, no fetch metadata.
    assert client.post("/edits", json=FACTS[0]).status_code == 202
    # A browser on kedit's own origin.
    assert client.post("/edits", json=FACTS[1], headers={"Origin": OWN}).status_code == 202
    r = client.post("/edits", json=FACTS[2], headers={"Sec-Fetch-Site": "same-origin", "Origin": OWN})
    assert r.status_code == 202
    # Reads are never refused, wherever they come from.
    assert client.get("/edits", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


@pytest.mark.parametrize(
    "headers, status",
    [
        ({}, 403),  # no word from a browser at all: not from kedit's page
        ({"Sec-Fetch-Site": "same-site"}, 403),
        ({"Sec-Fetch-Site": "none"}, 403),
        ({"Sec-Fetch-Site": "same-origin"}, 303),
        ({"Origin": OWN}, 303),  # a browser without fetch metadata still sends Origin on a POST
    ],
)
def test_the_dashboard_forms_need_a_same_origin_post(client, headers, status):
    form = {"prompt": FACTS[1]["prompt"], "subject": FACTS[1]["subject"], "target_new": FACTS[1]["target_new"]}
    r = client.post("/ui/submit", data=form, headers=headers, follow_redirects=False)
    assert r.status_code == status, (headers, r.text)
    if status == 403:
        assert "own pages" in r.text


def test_an_allowed_origin_may_change_state(make_config):
    from app.api.main import create_app

    with TestClient(create_app(make_config(allowed_origins=["https://front.example"]))) as c:
        headers = {"Origin": "https://front.example", "Sec-Fetch-Site": "cross-site"}
        assert c.post("/edits", json=FACTS[0], headers=headers).status_code == 202
        assert c.post("/edits", json=FACTS[1], headers={"Origin": "https://other.example"}).status_code == 403


def test_host_names_default_to_loopback_at_the_port_when_bound_to_loopback():
    names = ServiceConfig(host="127.0.0.1", port=8123).host_names()
    assert names == ["localhost:8123", "127.0.0.1:8123", "[::1]:8123"]
    for host in ("localhost:8123", "127.0.0.1:8123", "[::1]:8123", "LOCALHOST:8123"):
        assert host_allowed(host, names), host
    for host in ("evil.example:8123", "localhost:9999", "127.0.0.1", "", "localhost.evil.example:8123"):
        assert not host_allowed(host, names), host
    assert ServiceConfig(host="0.0.0.0").host_names() == ["*"]  # behind a proxy or in a container: set it
    assert ServiceConfig(host="0.0.0.0", allowed_hosts=["kedit.internal"]).host_names() == ["kedit.internal"]
    assert host_allowed("kedit.internal:8000", ["kedit.internal"])


def test_the_host_guard_refuses_other_names_with_the_reason(make_config):
    from app.api.main import create_app

    app = HostGuard(create_app(make_config()), ["localhost:8000", "127.0.0.1:8000"])
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        assert c.get("/health").status_code == 200
        r = c.get("/health", headers={"Host": "rebound.evil.example:8000"})
        assert r.status_code == 400 and "KEDIT_ALLOWED_HOSTS" in r.json()["detail"], r.text
