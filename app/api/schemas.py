"""Request and response bodies (pydantic v2). Unknown fields are rejected everywhere.

Length bounds come from the running config through the validation context, so an operator can
tighten them without code changes; the hard ceilings are the editing core's own limits.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from app.editing.types import (
    MAX_PROMPT_CHARS,
    MAX_SUBJECT_CHARS,
    MAX_TARGET_CHARS,
    prompt_problem,
    question_problem,
    subject_problem,
    target_problem,
    targets_problem,
)
from app.store.models import text_problem


def _limit(info: ValidationInfo, name: str, default: int) -> int:
    cfg = (info.context or {}).get("config")
    return int(getattr(cfg, name, default)) if cfg is not None else default


def _check_length(v: str, info: ValidationInfo, setting: str, default: int) -> None:
    bound = _limit(info, setting, default)
    if len(v) > bound:
        raise ValueError(f"{info.field_name} is {len(v)} characters long; the bound is {bound}")


def _raise(problem: str | None) -> None:
    if problem:
        raise ValueError(problem)


class Strict(BaseModel):
    # strict: a JSON value of the wrong type is refused, never coerced (true is not 1 token, "5"
    # is not 5, 5.0 is not 5): a client that sends those has a bug it should hear about.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False, strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, v: Any, info: ValidationInfo) -> Any:
        # PostgreSQL text cannot hold NUL, and no fact needs one: say so (a 422), never fail in the database.
        if isinstance(v, str) and (problem := text_problem(info.field_name or "value", v)):
            raise ValueError(problem)
        return v


class EditIn(Strict):
    prompt: str = Field(
        description="the fact's prompt with the subject slot {} exactly once", examples=["The mother tongue of {} is"]
    )
    subject: str = Field(description="the entity the fact is about", examples=["Danielle Darrieux"])
    target_new: str = Field(description="the completion to teach", examples=["English"])
    target_true: str | None = Field(None, description="the current completion, if known", examples=["French"])
    question: str | None = Field(
        None,
        description="a natural question about the fact, phrased as a user would ask it; once the edit is "
        "applied it is asked through the model's chat template and the answer is checked for target_new "
        "(question_shown)",
        examples=["What language did Danielle Darrieux grow up speaking?"],
    )

    # The rules are the editing core's (app/editing/types.py), checked per field so that each
    # error names its field; the length bounds are the running config's.
    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str, info: ValidationInfo) -> str:
        _raise(prompt_problem(v, bound=_limit(info, "max_prompt_chars", MAX_PROMPT_CHARS)))
        return v

    @field_validator("subject")
    @classmethod
    def _subject(cls, v: str, info: ValidationInfo) -> str:
        _raise(subject_problem(v, bound=_limit(info, "max_subject_chars", MAX_SUBJECT_CHARS)))
        return v

    @field_validator("target_new", "target_true")
    @classmethod
    def _target(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            assert info.field_name is not None  # a field validator's info names its field
            _raise(target_problem(info.field_name, v, bound=_limit(info, "max_target_chars", MAX_TARGET_CHARS)))
        return v

    @field_validator("question")
    @classmethod
    def _question(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            _raise(question_problem(v, bound=_limit(info, "max_prompt_chars", MAX_PROMPT_CHARS)))
        return v

    @model_validator(mode="after")
    def _targets_differ(self) -> EditIn:
        _raise(targets_problem(self.target_new, self.target_true))
        return self


class EditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    status: str
    prompt: str
    subject: str
    target_new: str
    target_true: str | None
    error: str | None = None
    batch_id: int | None = Field(None, description="the live batch holding this edit's change")
    version: int | None = Field(None, validation_alias="applied_version", description="weights version that applied it")
    reverted_version: int | None = None
    revert_requested: bool = False
    prob_before: float | None = Field(None, description="P(target_new | prompt) before the edit")
    prob_after: float | None = Field(None, description="P(target_new | prompt) after the edit")
    mpes_steps: int | None = Field(None, description="optimisation steps taken for this fact")
    seconds: float | None = Field(None, description="editor seconds, the batch's time shared over its edits")
    guard: str | None = Field(
        None,
        description="the quality guard's word on this edit: the canaries it broke "
        "(policy warn) or why it was refused (policy reject)",
    )
    question: str | None = Field(None, description="the natural question sent with the fact, if any")
    shown: bool | None = Field(
        None,
        description="whether the greedy answer to the filled prompt (10 tokens) showed target_new once applied; "
        "null: not checked",
    )
    answer: str | None = Field(None, description="that answer")
    question_shown: bool | None = Field(
        None,
        description="whether the greedy chat answer to `question` (24 tokens) showed target_new; null: no "
        "question, not checked, or not asked (question_problem says why)",
    )
    question_answer: str | None = Field(None, description="that chat answer")
    question_problem: str | None = Field(None, description="why the question was not asked")
    checked_version: int | None = Field(None, description="the weights version that gave these answers")
    checked_at: datetime | None = Field(None, description="when they were checked")
    created_at: datetime
    updated_at: datetime

    @field_validator("created_at", "updated_at", "checked_at")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        # SQLite hands timestamps back without their zone; they were written in UTC.
        return v if v is None or v.tzinfo else v.replace(tzinfo=UTC)


class EditsAccepted(BaseModel):
    ids: list[int]
    edits: list[EditOut]


class EditPage(BaseModel):
    items: list[EditOut]
    total: int
    limit: int
    offset: int


class GenerateIn(Strict):
    prompt: str = Field(min_length=1, examples=["The mother tongue of Danielle Darrieux is"])
    max_new_tokens: int = Field(16, ge=1)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str, info: ValidationInfo) -> str:
        if not v.strip():
            raise ValueError("prompt is empty")
        _check_length(v, info, "max_prompt_chars", MAX_PROMPT_CHARS)
        return v

    @field_validator("max_new_tokens")
    @classmethod
    def _tokens(cls, v: int, info: ValidationInfo) -> int:
        bound = _limit(info, "max_new_tokens", 64)
        if v > bound:
            raise ValueError(f"max_new_tokens is {v}; the bound is {bound}")
        return v


class GenerateOut(BaseModel):
    prompt: str
    text: str = Field(description="the continuation (without the prompt)")
    version: int = Field(description="the weights version that produced it")
    weights_hash: str


class NormPoint(BaseModel):
    version: int
    weight_norm: float
    delta_norm: float
    growth: float


class LayerNormsOut(BaseModel):
    layer: int
    weight_norm: float
    base_norm: float
    delta_norm: float
    growth: float = Field(description="‖W−W0‖F / ‖W0‖F")
    load: float = Field(
        description="applied edits per key dimension of this layer (edits / f): each edit stores one key in "
        "the layer's f-dimensional input; ENCORE's 10,000 edits on Llama-3-8B are 0.70 (docs/lifelong.md)"
    )
    key_dim: int = Field(description="f, the dimension of the layer's keys")
    alarm: bool
    history: list[NormPoint]


class NormsOut(BaseModel):
    version: int
    applied_edits: int = Field(description="edits live in the served weights")
    threshold: float
    alarm: bool
    layers: list[LayerNormsOut]


class VersionOut(BaseModel):
    version: int
    head: int = Field(description="the newest version in the log (this process may briefly lag)")
    weights_hash: str
    base_hash: str
    model: str
    layers: list[int]
    method: str


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    ready: bool
    stage: str = Field(
        description="what the process is doing: starting, converting the model, loading the model, replaying the "
        "log, sampling text for C0, building C0, preparing the editor, scoring canaries, ready, failed, stopping"
    )
    progress: float | None = Field(description="share of the stage done (0 to 1); null for a stage not counted")
    detail: str = Field(description="e.g. '61,440 of 150,000 tokens', '120 of 400 batches'")
    startup: dict[str, Any] = Field(
        description="the stage in full: part (whose copy of the model: api or worker), progress, detail, "
        "stage_seconds, seconds_left (an estimate), started_seconds_ago, error (why the start-up failed)"
    )
    checks: dict[str, Any]


class LostFact(BaseModel):
    canary: int
    prompt: str
    expected: str = Field(description="what the unedited model answers")
    now: str = Field(description="what these weights answer")


class QualityPoint(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    version: int = Field(description="weights version scored (0: the unedited model)")
    live_edits: int = Field(description="applied edits in these weights")
    facts_total: int
    facts_kept: int = Field(description="canary facts still answered as the unedited model did")
    lost: list[LostFact]
    perplexity: float = Field(description="perplexity on the held-out canary text")
    entropy: float = Field(description="n-gram entropy (×100) of greedy generation from the canary prompts")
    seconds: float = Field(description="seconds the scoring took")
    guard: dict | None = Field(None, description="the guard's decision on the change that made this version")


class QualityOut(BaseModel):
    enabled: bool = Field(description="false when KEDIT_CANARIES=false: nothing is scored")
    policy: str = Field(description="the guard's policy: off, warn or reject")
    thresholds: dict[str, float]
    baseline: QualityPoint | None = Field(None, description="the unedited model")
    latest: QualityPoint | None
    history: list[QualityPoint] = Field(description="oldest first, the newest KEDIT_NORM_HISTORY versions")
