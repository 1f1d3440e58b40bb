"""The app while it starts in the background (what `kedit serve` runs): /ready and /ui say the
stage, routes that need the model answer 503 with Retry-After, liveness and edits go on; a
failed start says why. In-process on the tiny model; the spawned process is in
tests/service/test_first_start.py."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.service.context import ServiceContext
from app.service.host import ReplayMismatch
from tests.utils.service import FACTS, wait_for, wait_status
from tests.utils.tiny import build_tiny_model


@pytest.fixture
def held(monkeypatch):
    """The start-up held in its C₀ stage (41 % through) until the test releases it; then it runs
    for real. Stands in for a build of minutes, so that the routes can be read meanwhile."""
    release = threading.Event()
    real_start = ServiceContext.start

    def start(self, api: bool, worker: bool) -> None:
        self.startup.for_part("worker")
        self.startup.begin("building C0", "layers [1, 2] from 1,000 tokens", total=1000, unit="tokens")
        self.startup.advance(410)
        while not release.is_set() and not self.startup.stopped():
            time.sleep(0.01)
        self.startup.check()
        real_start(self, api, worker)

    monkeypatch.setattr(ServiceContext, "start", start)
    return release


def test_routes_answer_while_the_start_is_under_way_then_serve(held, make_config):
    with TestClient(create_app(make_config(), start_in_background=True)) as c:
        r = c.get("/ready")
        assert r.status_code == 503 and r.headers["Retry-After"]
        body = r.json()
        assert body["ready"] is False and body["stage"] == "building C0"
        assert body["progress"] == pytest.approx(0.41) and body["detail"] == "410 of 1,000 tokens"
        assert body["startup"]["part"] == "worker" and body["startup"]["error"] is None
        assert body["checks"]["database"] is True and body["checks"]["model"] is False

        assert c.get("/health").json() == {"status": "ok"}
        for path in ("/generate?prompt=Paris+is", "/version", "/health/norms"):
            r = c.get(path)
            assert r.status_code == 503, path
            assert 1 <= int(r.headers["Retry-After"]) <= 30
            assert "kedit is starting: building C0 (410 of 1,000 tokens)" in r.json()["detail"]
            assert r.json()["startup"]["stage"] == "building C0"
        r = c.get("/v1/models")
        assert r.status_code == 503 and "Retry-After" in r.headers
        assert "kedit is starting" in r.json()["error"]["message"]  # OpenAI's shape on /v1

        page = c.get("/ui")
        assert page.status_code == 503 and page.headers["content-type"].startswith("text/html")
        assert '<meta http-equiv="refresh"' in page.text and "building C0" in page.text and "41 %" in page.text
        front = c.get("/", follow_redirects=False)
        assert front.status_code == 307 and front.headers["location"] == "/ui"

        # The log is the truth and is reachable: an edit is accepted now and applied once serving.
        eid = c.post("/edits", json=FACTS[0]).json()["ids"][0]
        held.set()
        wait_for(lambda: c.get("/ready").status_code == 200, 120, "the start to finish")
        body = c.get("/ready").json()
        assert body["ready"] is True and body["stage"] in ("ready", "scoring canaries")
        assert wait_status(c, eid)["status"] == "applied"
        assert c.get("/ui").status_code == 200 and "refresh" not in c.get("/ui").text
        assert c.get("/generate", params={"prompt": "Paris is", "max_new_tokens": 2}).status_code == 200


def test_leaving_during_the_start_stops_it(held, make_config):
    app = create_app(make_config(), start_in_background=True)
    with TestClient(app) as c:
        assert c.get("/ready").json()["stage"] == "building C0"
        ctx = app.state.ctx
    # close() asked the start-up to stop; it did so at its next check instead of building on.
    assert not ctx._starter.is_alive()
    assert ctx.host is None and ctx.worker is None


def test_a_failed_start_says_why_on_ready_and_the_page(make_config, tmp_path):
    cfg = make_config()
    with TestClient(create_app(cfg)):
        pass  # the log now belongs to this model
    other = tmp_path / "other-model"
    model, tok = build_tiny_model("llama", seed=1)
    model.save_pretrained(other)
    tok.save_pretrained(other)
    failures: list[BaseException] = []
    app = create_app(
        cfg.model_copy(update={"model_path": str(other)}), start_in_background=True, on_start_failed=failures.append
    )
    with TestClient(app) as c:
        wait_for(lambda: failures, 120, "the start to fail")
        assert isinstance(failures[0], ReplayMismatch)
        r = c.get("/ready")
        assert r.status_code == 503 and "Retry-After" not in r.headers
        body = r.json()
        assert body["ready"] is False and body["stage"] == "failed"
        assert (
            "written on base weights" in body["startup"]["error"] and "load the same model" in body["startup"]["error"]
        )
        page = c.get("/ui")
        assert page.status_code == 503 and "The start-up failed" in page.text and "refresh" not in page.text
        r = c.get("/generate", params={"prompt": "Paris is"})
        assert r.status_code == 503 and "Retry-After" not in r.headers
