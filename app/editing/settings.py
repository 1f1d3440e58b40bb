"""Editing hyper-parameters: one typed object, three methods, named presets.

ENCORE, MEMIT and AlphaEdit differ only in these numbers (docs/method.md §3):
- MEMIT:     lambda_n = 0, MPES off.
- ENCORE:    lambda_n > 0 (the Frobenius-norm constraint), MPES on.
- AlphaEdit: keys projected onto the null space of C₀ (nullspace_threshold set),
             lambda_p = 0, lambda_n is its ridge term, MPES off.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Method(StrEnum):
    """The editing methods; a StrEnum so that config, settings and the CLIs share one type and
    every member still compares, hashes and serialises as its plain name."""

    ENCORE = "encore"
    MEMIT = "memit"
    ALPHAEDIT = "alphaedit"


class Preset(StrEnum):
    """Named settings families (one per model family the numbers were chosen for)."""

    SMOLLM2 = "smollm2"
    LLAMA3_8B = "llama3-8b"
    GPT2_XL = "gpt2-xl"


# The user's side of the chat contexts (settings.chat_contexts): requests that any fact answers, so
# that no evaluation question is ever among them.
CHAT_USER_TURNS = ("Tell me a fact.", "Complete the sentence.", "What do you know?")


class EditSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Method = Method.ENCORE
    layers: tuple[int, ...] = Field(description="edited MLP down-projections, ascending")

    # Step 1: target vectors z* = z + δ at the last edited layer.
    lr: float = Field(0.5, gt=0, description="Adam learning rate for δ")
    max_steps: int = Field(25, ge=1, le=1000, description="at most this many forward passes per fact")
    clamp_norm_factor: float = Field(0.75, gt=0, description="hard clamp ‖δ‖ ≤ c·‖z‖")
    kl_factor: float = Field(0.0625, ge=0, description="weight of KL('{subject} is a') to the unedited model")
    delta_penalty: float = Field(0.5, ge=0, description="weight of ‖δ‖/‖z‖²")
    mpes_margin: int = Field(
        1, ge=0, description="MPES: stop once the target was top-1 everywhere 1+margin times; 0 turns MPES off"
    )
    loss_stop: float = Field(5e-2, ge=0, description="stop a fact's optimisation when its loss falls below this")
    n_prefixes: int = Field(5, ge=0, le=5, description="generated context prefixes ('The …', 'Therefore …', …)")
    prefix_tokens: int = Field(10, ge=2, le=40, description="length of each generated prefix, in tokens")
    chat_contexts: int = Field(
        0,
        ge=0,
        le=len(CHAT_USER_TURNS),
        description="context templates that put the fact in the assistant's turn of the model's chat template, "
        "after a generic user request (so that the edit holds where users ask through chat); 0 turns it off",
    )

    # After the update: what the written weights answer.
    reedit_passes: int = Field(
        0,
        ge=0,
        le=5,
        description="after writing a batch, ask each fact's prompt greedily; the facts whose answer does not "
        "show target_new are edited again (new targets from the edited weights), at most this many times",
    )

    # Step 2: the closed-form update per layer.
    lambda_p: float = Field(15000.0, ge=0, description="weight of the key second moment C₀ (preservation)")
    lambda_n: float = Field(20.0, ge=0, description="Frobenius-norm constraint λn·I (AlphaEdit: its ridge)")
    preserve_previous: bool = Field(True, description="add Σ K_prev K_prevᵀ of earlier edits to the solve")
    neighbour_keys: int = Field(
        0,
        ge=0,
        le=50,
        description="per fact, also keep the outputs of this many other subjects asked with the fact's "
        "own prompt (subjects the model generates once), so that the edit stays with its subject; 0 turns it off",
    )
    nullspace_threshold: float | None = Field(
        None, gt=0, description="AlphaEdit: project onto eigenvectors of C₀ with eigenvalue below this"
    )
    nullspace_energy: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="AlphaEdit, scale-free: project onto the least-used eigenvectors of C₀ that "
        "together hold at most this fraction of its trace (instead of nullspace_threshold)",
    )
    lambda_n_relative: bool = Field(
        False, description="multiply λn by C₀'s mean eigenvalue tr(C₀)/f, so that it weighs the same at any key scale"
    )

    # What is written: the factors (U, V and the keys) rounded to this dtype before they enter the
    # weights, so that a log storing them in it holds exactly what the weights received.
    factor_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype the factors U, V and the keys are rounded to before they are applied"
    )

    # Key statistics C₀ = E[k kᵀ].
    stats_tokens: int = Field(150_000, ge=1000, description="token budget for C₀")

    @model_validator(mode="after")
    def _check(self) -> EditSettings:
        if not self.layers:
            raise ValueError("layers must name at least one layer")
        if list(self.layers) != sorted(set(self.layers)) or self.layers[0] < 0:
            raise ValueError(f"layers must be distinct, ascending and non-negative, got {list(self.layers)}")
        nullspace = [n for n in ("nullspace_threshold", "nullspace_energy") if getattr(self, n) is not None]
        if self.method == "alphaedit" and len(nullspace) != 1:
            raise ValueError("alphaedit needs one of nullspace_threshold or nullspace_energy")
        if self.method != "alphaedit" and nullspace:
            raise ValueError(f"{nullspace[0]} is only used by alphaedit")
        return self

    @property
    def last_layer(self) -> int:
        return self.layers[-1]

    @property
    def needs_key_stats(self) -> bool:
        """Whether solving uses C₀: as the preservation term (λp > 0), for AlphaEdit's null space or to scale λn."""
        return self.lambda_p > 0 or self.method == Method.ALPHAEDIT or self.lambda_n_relative


def _llama3_8b(method: Method) -> EditSettings:
    # The authors' published settings (hparams/{ENCORE,AlphaEdit}/llama3-8b.json).
    base = dict(layers=(4, 5, 6, 7, 8), lambda_p=15000.0, clamp_norm_factor=0.75, kl_factor=0.0625, delta_penalty=0.5)
    if method == "encore":
        return EditSettings(method="encore", lambda_n=20.0, mpes_margin=1, lr=0.5, max_steps=25, **base)
    if method == "memit":
        return EditSettings(method="memit", lambda_n=0.0, mpes_margin=0, lr=0.5, max_steps=25, **base)
    return EditSettings(
        method="alphaedit",
        lambda_n=10.0,
        mpes_margin=0,
        lr=0.1,
        max_steps=25,
        nullspace_threshold=2e-2,
        **{**base, "lambda_p": 0.0},
    )


def _gpt2_xl(method: Method) -> EditSettings:
    # hparams/ENCORE/gpt2-xl.json: layers 13–17, λp 20000, λn 10, prob_cutoff −4 (margin +3).
    base = dict(layers=(13, 14, 15, 16, 17), lambda_p=20000.0, clamp_norm_factor=0.75, max_steps=20, lr=0.5)
    if method == "encore":
        return EditSettings(method="encore", lambda_n=10.0, mpes_margin=3, **base)
    if method == "memit":
        return EditSettings(method="memit", lambda_n=0.0, mpes_margin=0, **base)
    return EditSettings(
        method="alphaedit", lambda_n=10.0, mpes_margin=0, nullspace_threshold=2e-2, **{**base, "lambda_p": 0.0}
    )


def _smollm2(method: Method) -> EditSettings:
    # Chosen by measurement on counterfact_extra/counterfact-val.json, never on the records of
    # the evaluations (docs/lifelong.md). The sweeps (sweep-smollm2-*.md) found λp 1000, λn 10,
    # margin 3 the best single batch of edits (ES ≥ 95); over a lifetime of edits that setting
    # lets the last edited layer grow past the norm alarm after ~350 edits and perplexity rise
    # by a third by 1,000. The lever screen (levers-smollm2-500.md, confirmed at 1,000:
    # levers-smollm2-1000.md) put λn 20 with λp 2500 on the best point of the frontier for a
    # model that is edited for months: 12 points less perplexity rise and 15 less growth at
    # 1,000 edits for 3.5 points of ES. MEMIT shares the layers, λp and C₀, so that a comparison
    # measures what ENCORE adds (MPES and λn). Two re-edit passes and three chat contexts make
    # the edits show in greedy and chat answers (benchmarks/results/shown-levers-val100, held out
    # in shown-levers-edit100: the edit prompt's answer 63 → 89 %, chat 47 → 70 %, NS and
    # perplexity within noise) for about 1.5× the edit time.
    base = dict(layers=(4, 5, 6, 7, 8), lambda_p=2500.0, clamp_norm_factor=0.75)
    if method == "encore":
        return EditSettings(method="encore", lambda_n=20.0, mpes_margin=3, reedit_passes=2, chat_contexts=3, **base)
    if method == "memit":
        return EditSettings(method="memit", lambda_n=0.0, mpes_margin=0, **base)
    return EditSettings(
        method="alphaedit", lambda_n=10.0, mpes_margin=0, lr=0.1, nullspace_threshold=2e-2, **{**base, "lambda_p": 0.0}
    )


PRESETS = {Preset.SMOLLM2: _smollm2, Preset.LLAMA3_8B: _llama3_8b, Preset.GPT2_XL: _gpt2_xl}


def preset(name: Preset | str = Preset.SMOLLM2, method: Method | str = Method.ENCORE, **overrides) -> EditSettings:
    """Settings for a named model family and method, with any field overridden."""
    try:
        make = PRESETS[Preset(name)]
    except ValueError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
    try:
        method = Method(method)
    except ValueError:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(Method)}") from None
    # Rebuilt rather than copied so that overrides are validated too.
    return EditSettings(**{**make(method).model_dump(), **overrides})


def differences(saved: dict, settings: EditSettings) -> str:
    """'name: value there, value here' for each setting where `saved` (a stored dump) and `settings`
    differ, '' when none does; fields added since `saved` was written take their defaults."""
    then = EditSettings(**saved).model_dump(mode="json")
    now = settings.model_dump(mode="json")
    return ", ".join(f"{k}: {then.get(k)} there, {v} here" for k, v in now.items() if then.get(k) != v)
