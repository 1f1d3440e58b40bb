"""The API-key guard with a non-ASCII key: the header's bytes are compared with the key's UTF-8."""

from types import SimpleNamespace

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from app.api.deps import require_api_key
from app.service.errors import ServiceError

KEY = "clé-ßecret-ключ"


@pytest.fixture(scope="module")
def client():
    app = FastAPI()
    app.state.ctx = SimpleNamespace(config=SimpleNamespace(api_key=KEY))

    @app.exception_handler(ServiceError)
    async def refused(_request, exc: ServiceError):
        from fastapi.responses import JSONResponse

        return JSONResponse({"detail": exc.message}, status_code=exc.status_code)

    @app.post("/guarded", dependencies=[Depends(require_api_key)])
    def guarded():
        return {"ok": True}

    with TestClient(app) as c:
        yield c


def test_a_non_ascii_key_sent_as_utf8_matches(client):
    assert client.post("/guarded", headers={"X-API-Key": KEY.encode()}).status_code == 200
    assert client.post("/guarded", headers={"Authorization": b"Bearer " + KEY.encode()}).status_code == 200


@pytest.mark.parametrize("given", [KEY.encode("latin-1", "replace"), KEY[:-1].encode(), b"cle-secret", b""])
def test_other_keys_are_refused(client, given):
    r = client.post("/guarded", headers={"X-API-Key": given})
    assert r.status_code == 401 and r.json()["detail"] == "wrong API key"
