"""The OpenAPI document, told the truth about error answers.

Every error kedit returns is `{"detail": "<what to change>", "errors": [...]?}`, not
FastAPI's default validation body; and the 401/404/409/413/415/503 answers the routes can
give are listed, so clients (and schema-driven fuzzers) know what to expect.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    detail: str = Field(description="what went wrong and what to change, in one sentence")
    errors: list[dict] | None = Field(None, description="for invalid requests: each problem with its location")


_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}


def _answers(path: str, method: str, has_body: bool) -> dict[str, str]:
    answers = {"503": "the edit log (database) is unreachable, or the weights failed their replay check"}
    if has_body:
        answers["413"] = "the request body is larger than the bound"
        answers["415"] = "the body is not sent as application/json"
    if method != "get":
        answers["401"] = "an API key is configured and the request has none, or a wrong one"
    if "{" in path:
        answers["404"] = "no such edit"
    if path.endswith("/revert"):
        answers["409"] = "the edit is not applied"
    return answers


def install(app: FastAPI) -> None:
    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["ErrorBody"] = ErrorBody.model_json_schema()
        for path, operations in schema.get("paths", {}).items():
            for method, op in operations.items():
                responses = op.setdefault("responses", {})
                if "422" in responses:
                    responses["422"] = {"description": "the request is invalid; `detail` says why", "content": _ERROR}
                for code, why in _answers(path, method, "requestBody" in op).items():
                    responses.setdefault(code, {"description": why, "content": _ERROR})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to replace the schema
