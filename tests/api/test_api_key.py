"""The API-key guards (/edits and /v1) with a non-ASCII key: the header's bytes are compared with the
key's UTF-8, the same way on both; an empty header counts as absent."""

from types import SimpleNamespace

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from app.api.deps import require_api_key
from app.api.openai_compat_shapes import OpenAIError
from app.api.routes.openai_compat import require_generation_key
from app.service.errors import ServiceError

KEY = "clé-ßecret-ключ"


@pytest.fixture(scope="module")
def client():
    app = FastAPI()
    app.state.ctx = SimpleNamespace(config=SimpleNamespace(api_key=KEY, generation_requires_key=True))

    @app.exception_handler(ServiceError)
    async def refused(_request, exc: ServiceError):
        from fastapi.responses import JSONResponse

        if isinstance(exc, OpenAIError):
            return JSONResponse(exc.body(), status_code=exc.status_code)
        return JSONResponse({"detail": exc.message}, status_code=exc.status_code)

    @app.post("/guarded", dependencies=[Depends(require_api_key)])
    def guarded():
        return {"ok": True}

    @app.post("/v1/guarded", dependencies=[Depends(require_generation_key)])
    def guarded_v1():
        return {"ok": True}

    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize("path", ["/guarded", "/v1/guarded"])
def test_a_non_ascii_key_sent_as_utf8_matches_on_both_apis(client, path):
    assert client.post(path, headers={"X-API-Key": KEY.encode()}).status_code == 200
    assert client.post(path, headers={"Authorization": b"Bearer " + KEY.encode()}).status_code == 200


@pytest.mark.parametrize("given", [KEY.encode("latin-1", "replace"), KEY[:-1].encode(), b"cle-secret"])
def test_other_keys_are_refused(client, given):
    r = client.post("/guarded", headers={"X-API-Key": given})
    assert r.status_code == 401 and r.json()["detail"] == "wrong API key"
    r = client.post("/v1/guarded", headers={"Authorization": b"Bearer " + given})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", r.text


@pytest.mark.parametrize("path", ["/guarded", "/v1/guarded"])
def test_an_empty_header_counts_as_absent(client, path):
    both = {"X-API-Key": b"", "Authorization": b"Bearer " + KEY.encode()}
    assert client.post(path, headers=both).status_code == 200
    r = client.post(path, headers={"X-API-Key": b""})
    assert r.status_code == 401, r.text
    assert "needs" in (r.json()["detail"] if path == "/guarded" else r.json()["error"]["message"]), r.text
