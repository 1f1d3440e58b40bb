"""Service configuration: environment variables with the KEDIT_ prefix (plus plain DATABASE_URL / REDIS_URL).

With neither a database nor a Redis URL the service runs embedded: SQLite under the cache dir,
an in-process queue, and the worker in a background thread of the API process.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.editing.types import MAX_PROMPT_CHARS, MAX_SUBJECT_CHARS, MAX_TARGET_CHARS


class ServiceConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEDIT_", extra="ignore", populate_by_name=True)

    # The model and how it is edited.
    model_path: str | None = Field(None, description="HF folder or .gguf; unset = the default SmolLM2")
    cache_dir: Path | None = Field(None, description="model conversions, key statistics, the embedded SQLite file")
    device: str = "cpu"
    preset: str = Field("smollm2", description="settings family: smollm2, llama3-8b, gpt2-xl")
    method: Literal["encore", "memit", "alphaedit"] = "encore"
    edit_overrides: dict[str, Any] = Field(
        default_factory=dict, description='JSON object of EditSettings fields, e.g. {"layers": [1, 2]}'
    )
    stats_corpus: Path | None = Field(None, description="text file for the key statistics C0 (default: the editor's)")

    # Engines. Both unset = embedded mode.
    database_url: str | None = Field(None, validation_alias=AliasChoices("KEDIT_DATABASE_URL", "DATABASE_URL"))
    redis_url: str | None = Field(None, validation_alias=AliasChoices("KEDIT_REDIS_URL", "REDIS_URL"))
    redis_prefix: str = Field("kedit", description="prefix of every Redis key (stream, group, channel)")
    auto_migrate: bool = Field(True, description="run `alembic upgrade head` at start; off = refuse if behind")

    # HTTP.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_key: str | None = Field(None, description="when set, mutating endpoints need it (X-API-Key or Bearer)")

    # Worker.
    batch_size: int = Field(8, ge=1, le=1024, description="B: at most this many edits per batch")
    batch_wait_ms: int = Field(500, ge=0, le=600_000, description="T: after the first edit, wait this long for more")
    reclaim_idle_ms: int = Field(60_000, ge=1000, description="pending queue entries idle this long are reclaimed")
    standby_poll_s: float = Field(2.0, gt=0, description="how often a standby worker tries the writer lock")
    sync_poll_s: float = Field(5.0, gt=0, description="API replicas re-check the log this often besides pub/sub")

    # Bounds on input.
    max_prompt_chars: int = Field(MAX_PROMPT_CHARS, ge=8, le=MAX_PROMPT_CHARS)
    max_subject_chars: int = Field(MAX_SUBJECT_CHARS, ge=1, le=MAX_SUBJECT_CHARS)
    max_target_chars: int = Field(MAX_TARGET_CHARS, ge=1, le=MAX_TARGET_CHARS)
    max_edits_per_request: int = Field(100, ge=1, le=10_000)
    max_new_tokens: int = Field(64, ge=1, le=2048)
    max_page_size: int = Field(200, ge=1, le=10_000)

    # Health.
    norm_alarm_growth: float = Field(0.5, gt=0, description="alarm when ‖W−W0‖/‖W0‖ of a layer exceeds this")
    norm_history: int = Field(20, ge=1, le=10_000, description="snapshots per layer shown by /health/norms")

    @field_validator("edit_overrides", mode="before")
    @classmethod
    def _parse_overrides(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = json.loads(v) if v.strip() else {}
        return v

    @property
    def embedded(self) -> bool:
        return not self.database_url and not self.redis_url

    def resolved_cache_dir(self) -> Path:
        from app.editing.model import default_cache_dir

        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()

    def resolved_database_url(self) -> str:
        """The configured URL, or a SQLite file in the cache dir (embedded mode)."""
        if self.database_url:
            url = self.database_url
            # Plain postgresql:// would pick psycopg2, which is not installed; psycopg 3 is.
            if url.startswith("postgres://"):
                url = "postgresql://" + url[len("postgres://"):]
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://"):]
            return url
        path = self.resolved_cache_dir() / "kedit.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
