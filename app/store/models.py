"""The edit log. Postgres (or SQLite, embedded) is the source of truth.

Current weights = base + the deltas of live batches (removed_version IS NULL) in the order of
the versions that created them. Every change of the weights is one row of `versions`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

EDIT_STATUSES = ("queued", "applying", "applied", "failed", "reverted")
# How the error of an edit the quality guard refused begins (the reason follows).
GUARD_REFUSAL = "refused by the quality guard: "


def text_problem(name: str, value: str) -> str | None:
    """Why `value` cannot be stored or searched as text in the log, or None. PostgreSQL text holds
    no NUL character and no database holds an unpaired UTF-16 surrogate (JSON can spell one), so
    every piece of client text that reaches a query is checked here first: a 422, never a 500."""
    if "\x00" in value:
        return f"{name} contains a NUL character (\\u0000); remove it"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{name} contains an unpaired UTF-16 surrogate (\\ud800-\\udfff); send valid Unicode text"
    return None


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class ModelInfo(Base):
    """The model this log belongs to: replaying deltas onto different base weights is refused."""

    __tablename__ = "model_info"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    name: Mapped[str] = mapped_column(String(512))
    base_hash: Mapped[str] = mapped_column(String(64))
    layers: Mapped[list] = mapped_column(JSON)
    settings: Mapped[dict] = mapped_column(JSON)
    # The editor's context prefixes, generated once from the base weights: every later worker
    # start reuses them (same prompts for the keys, and no minute of generation per start).
    templates: Mapped[list | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Version(Base):
    """One change of the weights: a batch applied, or a revert (remove one batch, add its survivors)."""

    __tablename__ = "versions"
    # Assigned by the single writer as head + 1; the primary key fences off a second writer.
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16))  # "batch" | "revert"
    added_batch_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    removed_batch_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    edit_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the reverted edit
    weights_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Batch(Base):
    __tablename__ = "batches"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    created_version: Mapped[int] = mapped_column(ForeignKey("versions.id"), index=True)
    removed_version: Mapped[int | None] = mapped_column(ForeignKey("versions.id"), nullable=True)
    kind: Mapped[str] = mapped_column(String(16))  # "edit" (ENCORE ran) | "reapply" (survivors of a revert)
    source_batch_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    size: Mapped[int] = mapped_column(Integer)
    z_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    solve_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LayerDeltaRow(Base):
    """ΔW = U Vᵀ of one batch at one layer, plus its keys; safetensors bytes (never pickle)."""

    __tablename__ = "layer_deltas"
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"), primary_key=True)
    layer: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


# Edit ids live in an `integer` column: 32-bit in PostgreSQL (SQLite's is wider). That bounds every
# id (and offset) the API accepts; 2³¹−1 edits is decades of edits at one solve per second.
MAX_EDIT_ID = 2**31 - 1


class Edit(Base):
    __tablename__ = "edits"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prompt: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(Text)
    target_new: Mapped[str] = mapped_column(Text)
    target_true: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batches.id"), nullable=True)  # the live batch holding it
    applied_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reverted_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    revert_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    z_star: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    mpes_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    prob_before: Mapped[float | None] = mapped_column(Float, nullable=True)
    prob_after: Mapped[float | None] = mapped_column(Float, nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The quality guard's word on this edit: what it broke (warn), or why it was refused (reject).
    guard: Mapped[str | None] = mapped_column(Text, nullable=True)
    # A natural question about the fact, asked through the chat template after it is applied.
    question: Mapped[str | None] = mapped_column(Text, nullable=True)
    # What a user reads (app/service/shown.py), checked once the version holding the edit is committed:
    # the greedy answer to the filled prompt and whether it shows target_new; the same for the
    # question. None = not checked (yet, or the check was lost in a crash); question_problem says why
    # a question was not asked (a model without a chat template, a question beyond the context).
    shown: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    question_shown: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    question_answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    question_problem: Mapped[str | None] = mapped_column(Text, nullable=True)
    checked_version: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the weights that answered
    checked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    __table_args__ = (Index("ix_edits_status_id", "status", "id"), Index("ix_edits_shown_id", "shown", "id"))


class NormSnapshot(Base):
    __tablename__ = "norm_snapshots"
    version: Mapped[int] = mapped_column(ForeignKey("versions.id"), primary_key=True)
    layer: Mapped[int] = mapped_column(Integer, primary_key=True)
    weight_norm: Mapped[float] = mapped_column(Float)
    base_norm: Mapped[float] = mapped_column(Float)
    delta_norm: Mapped[float] = mapped_column(Float)


# Characters, as PostgreSQL's varchar counts them (SQLite does not enforce it; the API does).
MAX_IDEMPOTENCY_KEY_CHARS = 255


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    key: Mapped[str] = mapped_column(String(MAX_IDEMPOTENCY_KEY_CHARS), primary_key=True)
    body_hash: Mapped[str] = mapped_column(String(64))
    edit_ids: Mapped[list] = mapped_column(JSON)
    # Indexed: keys expire after a window and are purged by age (repo.purge_idempotency).
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class WeightSnapshot(Base):
    """The dense edited layers at one version (safetensors bytes, never pickle), so a start replays
    only the batches after it. Usable while every batch in `batch_ids` is still live: then the live
    batches are exactly these (in order) plus newer ones, and adding the newer ones in order gives
    the bits a full replay gives. `sha256` is of `data`, checked before parsing; after loading, the
    weights must also hash to the version's stored `weights_hash`."""

    __tablename__ = "weight_snapshots"
    version: Mapped[int] = mapped_column(ForeignKey("versions.id"), primary_key=True)
    batch_ids: Mapped[list] = mapped_column(JSON)  # the live batches at `version`, in replay order
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


CANARY_KINDS = ("fact", "text", "prompt")


class Canary(Base):
    """A fixed probe of the model's health, chosen once per model from the unedited weights.

    fact: a prompt the unedited model completes with `expected` (top-1 first token, `token_id`);
    text: a slice of held-out prose for perplexity; prompt: a free-generation prompt for entropy."""

    __tablename__ = "canaries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)  # the filled-in prompt, the prose, or the generation prompt
    subject: Mapped[str | None] = mapped_column(Text, nullable=True)
    expected: Mapped[str | None] = mapped_column(Text, nullable=True)
    token_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    relation: Mapped[str | None] = mapped_column(String(64), nullable=True)


class QualityScore(Base):
    """The canaries scored on the weights of one version (0: the unedited model), and what the guard
    decided about the change that made it."""

    __tablename__ = "quality_scores"
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    live_edits: Mapped[int] = mapped_column(Integer)  # applied edits in these weights
    facts_total: Mapped[int] = mapped_column(Integer)
    facts_kept: Mapped[int] = mapped_column(Integer)
    # The canary facts these weights no longer answer as the unedited model did:
    # [{"canary": id, "prompt": …, "expected": …, "now": …}]
    lost: Mapped[list] = mapped_column(JSON)
    perplexity: Mapped[float] = mapped_column(Float)
    entropy: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    # {"policy": off|warn|reject, "verdict": ok|warn|reject, "crossed": [...], "rejected": [edit ids]}
    guard: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
