"""Configuration: the one place that reads the environment (KEDIT_*, plus plain DATABASE_URL / REDIS_URL).

`KeditConfig` is what every command needs (the model, how it is edited, where files live);
`ServiceConfig` adds the service's engines, HTTP, worker and bounds. Everything below this
module (the editing core above all) takes explicit paths and settings.

With neither a database nor a Redis URL the service runs embedded: SQLite under the cache dir,
an in-process queue, and the worker in a background thread of the API process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.editing.build import Role, build_editor
from app.editing.editor import Editor
from app.editing.model import DEFAULT_CACHE_DIR, load_model
from app.editing.progress import SILENT, Monitor
from app.editing.settings import EditSettings, Method, Preset, preset
from app.editing.stats import CorpusError, corpus_files
from app.editing.types import MAX_PROMPT_CHARS, MAX_SUBJECT_CHARS, MAX_TARGET_CHARS

REPO = Path(__file__).resolve().parents[1]
STATS_CORPUS_ENV = "KEDIT_STATS_CORPUS"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class ConfigError(ValueError):
    """A setting that cannot work; the message names it and says what to set instead."""


def default_data_dir() -> Path:
    """The shared data folder (evaluation files, the WikiText corpus): ../shared/data beside the repository."""
    return REPO.parent / "shared" / "data"


class KeditConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEDIT_", extra="ignore", populate_by_name=True)

    # The model and how it is edited.
    model_path: str | None = Field(None, description="HF folder or .gguf; unset = the default SmolLM2")
    cache_dir: Path = Field(
        DEFAULT_CACHE_DIR, description="model conversions, key statistics, the embedded SQLite file"
    )
    device: str = "cpu"
    preset: Preset = Field(Preset.SMOLLM2, description="settings family: " + ", ".join(Preset))
    method: Method = Method.ENCORE
    edit_overrides: dict[str, Any] = Field(
        default_factory=dict, description='JSON object of EditSettings fields, e.g. {"layers": [1, 2]}'
    )
    stats_corpus: Path | None = Field(
        None,
        description="text file or folder of .txt files for the key statistics C0; unset = text the model generates",
    )

    # Data for evaluation and benchmarks (never needed to serve or edit).
    data_dir: Path = Field(default_factory=default_data_dir, description="the shared data folder")

    @field_validator("preset", "method", mode="before")
    @classmethod
    def _known_name(cls, v: Any, info) -> Any:
        names = Preset if info.field_name == "preset" else Method
        if isinstance(v, str) and v not in set(names):
            raise ValueError(f"unknown {info.field_name} {v!r}; choose one of {', '.join(names)}")
        return v

    @field_validator("edit_overrides", mode="before")
    @classmethod
    def _parse_overrides(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = json.loads(v) if v.strip() else {}
        return v

    @field_validator("stats_corpus", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    def edit_settings(self) -> EditSettings:
        return preset(self.preset, self.method, **self.edit_overrides)

    def check_stats_corpus(self) -> None:
        """Refuse a corpus that cannot give text, in one line saying what to set. A process that
        builds C₀ calls this before anything else, so that it stops at once rather than after
        the model has loaded (an api replica never reads the corpus, so it never checks)."""
        if self.stats_corpus is None:
            return
        try:
            corpus_files(self.stats_corpus)
        except CorpusError as e:
            raise ConfigError(
                f"stats_corpus: {e}; set {STATS_CORPUS_ENV} to a text file or a folder of .txt files, "
                "or unset it to build the key statistics from text the model generates"
            ) from None

    def load_editor(
        self,
        role: Role | str,
        templates: list[str] | None = None,
        progress: bool = False,
        monitor: Monitor = SILENT,
    ) -> Editor:
        """The model this configuration names, loaded, in an Editor built for `role`; `monitor`
        hears of each stage (converting, loading, C₀) and can stop it (app.editing.progress)."""
        if Role(role) is not Role.REPLICA:
            self.check_stats_corpus()
        lm = load_model(self.model_path, cache_dir=self.cache_dir, device=self.device, monitor=monitor)
        return build_editor(
            lm,
            self.edit_settings(),
            role,
            corpus=self.stats_corpus,
            cache_dir=self.cache_dir,
            templates=templates,
            progress=progress,
            monitor=monitor,
        )


class ServiceConfig(KeditConfig):
    # Engines. Both unset = embedded mode.
    database_url: str | None = Field(None, validation_alias=AliasChoices("KEDIT_DATABASE_URL", "DATABASE_URL"))
    redis_url: str | None = Field(None, validation_alias=AliasChoices("KEDIT_REDIS_URL", "REDIS_URL"))
    redis_prefix: str = Field("kedit", description="prefix of every Redis key (stream, group, channel)")
    auto_migrate: bool = Field(True, description="run `alembic upgrade head` at start; off = refuse if behind")

    # HTTP.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_key: str | None = Field(None, description="when set, mutating endpoints need it (X-API-Key or Bearer)")
    allowed_hosts: list[str] | None = Field(
        None,
        description="Host names the served process answers (name, or name:port; '*' = any). Unset: when "
        "bound to loopback, localhost, 127.0.0.1 and [::1] at the bound port (DNS rebinding); else any",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="origins (scheme://host:port) besides the server's own whose pages may send requests "
        "that change state (a browser front-end elsewhere); cross-site requests are refused otherwise",
    )
    http_idle_timeout_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="a connection that has not sent a complete request head this long after it opened or "
        "after its last answer is closed (idle keep-alive, or never a request)",
    )
    generation_requires_key: bool = Field(
        False, description="with api_key set: the /v1 (OpenAI) endpoints need it too (default: open, like /generate)"
    )

    # Generation (the /v1 endpoints): transformers' continuous batching with a bounded paged KV cache.
    cb_cache_blocks: int = Field(
        32,
        ge=1,
        le=1_000_000,
        description="KV-cache blocks of the batching manager (256 tokens of every layer each; 32 = 8192 tokens, "
        "~0.4 GB for SmolLM2 in float32): the tokens in flight across all requests",
    )
    serve_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of the copy the /v1 endpoints generate from; edits and replay stay float32"
    )
    cb_batch_tokens: int = Field(
        512, ge=16, le=1_000_000, description="tokens per forward pass of the batching manager"
    )
    generation_concurrency: int = Field(
        8,
        ge=1,
        le=10_000,
        description="generations in flight at once (/v1, /generate and the dashboard's answers together); "
        "more wait in the queue",
    )
    generation_queue: int = Field(
        32, ge=0, le=100_000, description="requests that may wait for a generation turn; more get 429 at once"
    )
    generation_queue_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="a request that waited this long for a generation turn gets 429"
    )
    idempotency_window_s: float = Field(
        24 * 3600,
        gt=0,
        le=365 * 24 * 3600,
        description="an Idempotency-Key is remembered this long (a retry inside it gets the same ids); older "
        "keys are purged as new ones come in",
    )

    # Worker.
    batch_size: int = Field(8, ge=1, le=1024, description="B: at most this many edits per batch")
    batch_wait_ms: int = Field(500, ge=0, le=600_000, description="T: after the first edit, wait this long for more")
    reclaim_idle_ms: int = Field(60_000, ge=1000, description="pending queue entries idle this long are reclaimed")
    standby_poll_s: float = Field(2.0, gt=0, description="how often a standby worker tries the writer lock")
    snapshot_every: int = Field(
        50,
        ge=0,
        le=1_000_000,
        description="the worker writes a weight snapshot (the dense edited layers) every this many versions, so a "
        "start replays only the versions after it; 0 = never. 50 bounds a replica's replay at ~50 batches "
        "(~5 s at SmolLM2 shapes) for one snapshot's storage (the edited layers in float32); see snapshot_keep",
    )
    snapshot_keep: int = Field(
        6,
        ge=1,
        le=1000,
        description="weight snapshots kept at most: the newest 2, then one per span of ages every·2^k "
        "(nearest first), so a revert of an old batch rebuilds from a snapshot not far before it",
    )
    factor_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="dtype the worker rounds each batch's factors (U, V, keys) to before applying them, and "
        "the log stores them in: replay stays exact since the weights received the rounded factors; bfloat16 "
        "halves the log (float16 has 3 more mantissa bits but underflows below 6e-5). float32 stays the "
        "default until the held-out comparison (docs/service.md) shows bfloat16 leaves the edits as they "
        "are; a key in KEDIT_EDIT_OVERRIDES wins",
    )
    sync_poll_s: float = Field(5.0, gt=0, description="API replicas re-check the log this often besides pub/sub")

    # Bounds on input.
    max_prompt_chars: int = Field(MAX_PROMPT_CHARS, ge=8, le=MAX_PROMPT_CHARS)
    max_subject_chars: int = Field(MAX_SUBJECT_CHARS, ge=1, le=MAX_SUBJECT_CHARS)
    max_target_chars: int = Field(MAX_TARGET_CHARS, ge=1, le=MAX_TARGET_CHARS)
    max_edits_per_request: int = Field(100, ge=1, le=10_000)
    max_new_tokens: int = Field(64, ge=1, le=2048)
    max_input_chars: int = Field(8000, ge=8, le=1_000_000, description="prompt / messages bound of the /v1 endpoints")
    max_page_size: int = Field(200, ge=1, le=10_000)

    # Health.
    norm_alarm_growth: float = Field(
        0.5,
        gt=0,
        description="alarm when ‖W−W0‖/‖W0‖ of a layer exceeds this; at "
        "0.5 ENCORE-family edits of SmolLM2 measured about +10–15 % perplexity (docs/lifelong.md)",
    )
    norm_history: int = Field(20, ge=1, le=10_000, description="snapshots per layer shown by /health/norms")

    # Canaries and the quality guard (docs/quality.md).
    canaries: bool = Field(
        True,
        description="score the canaries (facts, held-out text, generation) after every "
        "batch and revert; off = no /health/quality scores and no guard",
    )
    canary_facts: int = Field(
        300,
        ge=0,
        le=5000,
        description="canary facts kept at first start (those the unedited "
        "model answers top-1, spread over the relations)",
    )
    canary_text_tokens: int = Field(256, ge=16, le=100_000, description="tokens of held-out text scored for perplexity")
    canary_prompts: int = Field(2, ge=0, le=20, description="free-generation prompts (entropy)")
    canary_gen_tokens: int = Field(16, ge=4, le=512, description="tokens generated greedily per canary prompt")
    canary_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="dtype the canaries are scored in (a copy whose edited layers follow the float32 "
        "weights): bfloat16 halves their cost on CUDA and on CPUs with bf16 units, and takes 7× as long "
        "on CPUs without them; auto picks bfloat16 where it is fast, else float32. Canaries are chosen "
        "in the same dtype; keep one dtype for a log when it moves between kinds of machine",
    )
    guard: Literal["off", "warn", "reject"] = Field(
        "warn",
        description="what a batch that crosses a threshold gets: off = nothing; warn = applied and marked "
        "with what it broke; reject = the edits responsible are found (bisect) and fail, the rest are applied",
    )
    guard_facts_lost: int = Field(0, ge=0, description="canary facts one batch may break (vs the previous version)")
    guard_facts_lost_total: float = Field(
        0.2, ge=0, le=1, description="share of canary facts the edited model may have lost (vs the unedited model)"
    )
    guard_ppl_rise: float = Field(0.05, ge=0, description="perplexity rise one batch may cause (0.05 = +5 %)")
    guard_ppl_rise_total: float = Field(0.3, ge=0, description="perplexity rise vs the unedited model")
    guard_entropy_drop: float = Field(0.05, ge=0, le=1, description="generation-entropy drop one batch may cause")
    guard_entropy_drop_total: float = Field(
        0.1, ge=0, le=1, description="generation-entropy drop vs the unedited model"
    )

    def host_names(self) -> list[str]:
        """The Host names the served process answers ('*': any); see `allowed_hosts`."""
        if self.allowed_hosts is not None:
            return [h.strip().lower() for h in self.allowed_hosts if h.strip()]
        if self.host in LOOPBACK_HOSTS:
            names = ["localhost", "127.0.0.1", "[::1]"]
            return [f"{n}:{self.port}" for n in names] + (names if self.port == 80 else [])
        return ["*"]

    def edit_settings(self) -> EditSettings:
        return preset(self.preset, self.method, **{"factor_dtype": self.factor_dtype, **self.edit_overrides})

    @property
    def embedded(self) -> bool:
        return not self.database_url and not self.redis_url

    def resolved_database_url(self) -> str:
        """The configured URL, or a SQLite file in the cache dir (embedded mode)."""
        if self.database_url:
            url = self.database_url
            # Plain postgresql:// would pick psycopg2, which is not installed; psycopg 3 is.
            if url.startswith("postgres://"):
                url = "postgresql://" + url[len("postgres://") :]
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://") :]
            return url
        path = self.cache_dir / "kedit.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
