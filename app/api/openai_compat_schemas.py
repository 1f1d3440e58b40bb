"""Request bodies of the OpenAI-compatible endpoints (/v1/completions, /v1/chat/completions).

The fields are OpenAI's, with its defaults (temperature 1, top_p 1, completions max_tokens 16).
Fields kedit cannot honour are refused with a reason rather than silently ignored, except those
that change nothing here (`user`, zero penalties, `logprobs: false`), which common clients send.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

MAX_STOP = 4  # OpenAI's bound on stop sequences


def _bound(info: ValidationInfo, name: str, default: int) -> int:
    cfg = (info.context or {}).get("config")
    return int(getattr(cfg, name, default)) if cfg is not None else default


def _clean_text(v: str, what: str) -> str:
    if "\x00" in v:
        raise ValueError(f"{what} contains a NUL character (\\u0000); remove it")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} contains an unpaired UTF-16 surrogate; send valid Unicode text") from None
    return v


class _Common(BaseModel):
    # strict, as the /edits bodies: "5" is not a number of tokens, "yes" not a boolean (an int
    # is still a float: JSON does not tell 1 from 1.0).
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(description="the id from GET /v1/models")
    max_tokens: int | None = Field(None, ge=1, description="tokens to generate (bounded by KEDIT_MAX_NEW_TOKENS)")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 = greedy (batched with other requests)")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, description="only 1")
    stream: bool = False
    stream_options: dict[str, Any] | None = Field(None, description='{"include_usage": true} adds a usage chunk')
    stop: str | list[str] | None = Field(None, description="up to 4 strings; the text ends before the first one")
    seed: int | None = Field(None, description="same seed, version and request → same text (sampling)")
    user: str | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    @field_validator("n")
    @classmethod
    def _one(cls, v: int) -> int:
        if v != 1:
            raise ValueError(f"n is {v}; kedit returns one choice per request (n=1): send {v} requests instead")
        return v

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _no_penalty(cls, v: float, info: ValidationInfo) -> float:
        if v != 0:
            raise ValueError(f"{info.field_name} is not supported; leave it at 0")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str] | None:
        stops = [v] if isinstance(v, str) else v
        if stops is None:
            return None
        if len(stops) > MAX_STOP:
            raise ValueError(f"stop holds {len(stops)} strings; give at most {MAX_STOP}")
        for stop in stops:
            if not stop:
                raise ValueError("stop holds an empty string; remove it")
            if len(stop) > 256:
                raise ValueError(f"a stop string is {len(stop)} characters long; the bound is 256")
            _clean_text(stop, "stop")
        return stops

    @field_validator("stream_options")
    @classmethod
    def _options(cls, v: dict | None) -> dict | None:
        if v is not None and set(v) - {"include_usage"}:
            raise ValueError(
                f"stream_options: unknown option(s) {sorted(set(v) - {'include_usage'})}; "
                "only include_usage is supported"
            )
        return v

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens(cls, v: int | None, info: ValidationInfo) -> int | None:
        bound = _bound(info, "max_new_tokens", 64)
        if v is not None and v > bound:
            raise ValueError(f"max_tokens is {v}; this server's bound is {bound} (KEDIT_MAX_NEW_TOKENS)")
        return v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int | None) -> int | None:
        if v is not None and not -(2**63) <= v < 2**63:
            raise ValueError("seed must fit in a signed 64-bit integer")
        return v

    def stops(self) -> tuple[str, ...]:
        return tuple(self.stop or ())

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionIn(_Common):
    prompt: str | list[str] = Field(description="the text to continue (one prompt)")
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | list[str], info: ValidationInfo) -> str:
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError(f"prompt is a list of {len(v)} prompts; send one prompt per request")
            v = v[0]
        if not v.strip():
            raise ValueError("prompt is empty; give the text to continue")
        bound = _bound(info, "max_input_chars", 8000)
        if len(v) > bound:
            raise ValueError(f"prompt is {len(v)} characters long; the bound is {bound} (KEDIT_MAX_INPUT_CHARS)")
        return _clean_text(v, "prompt")

    def prompt_text(self) -> str:
        """The prompt as validated: one string (a list of one is unwrapped)."""
        assert isinstance(self.prompt, str)
        return self.prompt

    @model_validator(mode="after")
    def _unsupported(self) -> CompletionIn:
        if self.logprobs:
            raise ValueError("logprobs are not supported; leave logprobs unset")
        if self.echo:
            raise ValueError("echo is not supported; the prompt is not repeated in the answer")
        if self.suffix:
            raise ValueError("suffix (insertion) is not supported; leave it unset")
        return self


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatIn(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="the newer name of max_tokens")
    logprobs: bool = False

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> ChatIn:
        if self.logprobs:
            raise ValueError("logprobs are not supported; leave logprobs unset")
        if self.max_completion_tokens is not None:
            if self.max_tokens is not None and self.max_tokens != self.max_completion_tokens:
                raise ValueError("max_tokens and max_completion_tokens differ; send one of them")
            bound = _bound(info, "max_new_tokens", 64)
            if self.max_completion_tokens > bound:
                raise ValueError(
                    f"max_completion_tokens is {self.max_completion_tokens}; this server's bound is "
                    f"{bound} (KEDIT_MAX_NEW_TOKENS)"
                )
            self.max_tokens = self.max_completion_tokens
        total = sum(len(m.text()) for m in self.messages)
        bound = _bound(info, "max_input_chars", 8000)
        if total > bound:
            raise ValueError(f"the messages hold {total} characters; the bound is {bound} (KEDIT_MAX_INPUT_CHARS)")
        for m in self.messages:
            _clean_text(m.text(), "a message")
        return self
