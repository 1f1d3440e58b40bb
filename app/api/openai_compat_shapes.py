"""What the OpenAI-compatible routes do: prompts (the model's chat template), answers and stream chunks
in OpenAI's shapes, each naming the weights that produced it (`system_fingerprint`)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

from app.service.errors import ServiceError
from app.service.generation import Generation, GenerationEngine, Sampling


class OpenAIError(ServiceError):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        message: str,
        status_code: int = 400,
        param: str | None = None,
        code: str | None = None,
        type_: str | None = None,
    ):
        super().__init__(message)
        self.status_code = status_code
        self.param, self.code = param, code
        self.type = type_ or error_type(status_code)

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_type(status: int) -> str:
    return {
        401: "authentication_error",
        403: "permission_error",
        404: "invalid_request_error",
        429: "rate_limit_error",
    }.get(status, "invalid_request_error" if status < 500 else "server_error")


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def model_card(engine: GenerationEngine) -> dict:
    return {"id": engine.host.model_name, "object": "model", "created": 0, "owned_by": "kedit"}


def check_model(engine: GenerationEngine, model: str) -> None:
    if model != engine.host.model_name:
        raise OpenAIError(
            f"model {model!r} is not served here; this server serves {engine.host.model_name!r} (GET /v1/models)",
            404,
            "model",
            "model_not_found",
        )


def completion_ids(engine: GenerationEngine, prompt: str) -> list[int]:
    return list(engine.lm.tokenizer(prompt)["input_ids"])


def chat_ids(engine: GenerationEngine, messages: list[dict]) -> list[int]:
    """The conversation through the model's own chat template, ending where the assistant speaks."""
    tok = engine.lm.tokenizer
    if not getattr(tok, "chat_template", None):
        raise OpenAIError(
            f"model {engine.host.model_name!r} has no chat template; use /v1/completions",
            400,
            "messages",
            "no_chat_template",
        )
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # The template already wrote the special tokens (BOS etc.); do not add them twice.
    return list(tok(text, add_special_tokens=False)["input_ids"])


def sampling(body, default_max_tokens: int) -> Sampling:
    return Sampling(
        max_tokens=body.max_tokens or default_max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=body.stops(),
    )


def _usage(gen: Generation) -> dict:
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
    }


class Answer:
    """One request's answer, whole or streamed; `kind` is "completion" or "chat"."""

    def __init__(self, engine: GenerationEngine, kind: str, gen: Generation, include_usage: bool = False):
        self.engine, self.kind, self.gen, self.include_usage = engine, kind, gen, include_usage
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    @property
    def fingerprint(self) -> str:
        return self.gen.fingerprint

    def _head(self, obj: str) -> dict:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.engine.host.model_name,
            "system_fingerprint": self.fingerprint,
        }

    def whole(self) -> dict:
        text = self.gen.text()
        if self.kind == "chat":
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": self.gen.finish_reason,
            }
            return {**self._head("chat.completion"), "choices": [choice], "usage": _usage(self.gen)}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": self.gen.finish_reason}
        return {**self._head("text_completion"), "choices": [choice], "usage": _usage(self.gen)}

    def _chunk(self, delta: str | None, finish: str | None, first: bool = False) -> dict:
        if self.kind == "chat":
            d: dict = {}
            if first:
                d["role"] = "assistant"
            if delta is not None:
                d["content"] = delta
            choice = {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice]}

    def events(self) -> Iterator[str]:
        """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
        try:
            if self.kind == "chat":
                yield _sse(self._chunk("", None, first=True))
            for piece in self.gen.deltas():
                if piece:
                    yield _sse(self._chunk(piece, None))
            yield _sse(self._chunk(None if self.kind == "chat" else "", self.gen.finish_reason))
            if self.include_usage:
                yield _sse(
                    {
                        **self._head("chat.completion.chunk" if self.kind == "chat" else "text_completion"),
                        "choices": [],
                        "usage": _usage(self.gen),
                    }
                )
        except Exception as e:
            # The status line (200) is gone already: the error travels as an event, as OpenAI's does.
            yield _sse(error_body(f"generation failed: {e}", "server_error"))
        yield "data: [DONE]\n\n"


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
