"""Plain data passed in and out of the editing core."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

MAX_PROMPT_CHARS = 512
MAX_SUBJECT_CHARS = 256
MAX_TARGET_CHARS = 128


class EditError(ValueError):
    """A request the editor cannot carry out; the message says what to change."""


@dataclass(frozen=True)
class EditRequest:
    """One fact: `prompt.format(subject)` should be completed by `target_new`."""

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None

    def validate(self) -> None:
        """Raise EditError naming the first problem a user can fix."""
        if not self.subject.strip():
            raise EditError("subject is empty")
        if self.prompt.count("{}") == 0 and self.subject and self.subject in self.prompt:
            raise EditError(
                f"prompt must contain the subject slot '{{}}' exactly once: write {self.prompt.replace(self.subject, '{}', 1)!r}"
            )
        if self.prompt.count("{}") != 1:
            raise EditError(
                f"prompt must contain the subject slot '{{}}' exactly once (found {self.prompt.count('{}')}): {self.prompt!r}"
            )
        if not self.target_new.strip():
            raise EditError("target_new is empty")
        if self.target_true is not None and not self.target_true.strip():
            raise EditError("target_true is empty (leave it out instead)")
        for name, value, bound in (
            ("prompt", self.prompt, MAX_PROMPT_CHARS),
            ("subject", self.subject, MAX_SUBJECT_CHARS),
            ("target_new", self.target_new, MAX_TARGET_CHARS),
            ("target_true", self.target_true or "", MAX_TARGET_CHARS),
        ):
            if len(value) > bound:
                raise EditError(f"{name} is {len(value)} characters long; the bound is {bound}")

    @property
    def text(self) -> str:
        return self.prompt.format(self.subject)


@dataclass
class LayerDelta:
    """The change one batch made to one layer: ΔW = u @ v.T (weights stored as d×f).

    `keys` are the batch's keys at this layer (f×B); they enter the preservation sum
    of later solves and are taken out of it again when the batch is reverted.
    """

    layer: int
    u: torch.Tensor  # (d, B) float32
    v: torch.Tensor  # (f, B) float32
    keys: torch.Tensor  # (f, B) float32

    def matrix(self) -> torch.Tensor:
        """ΔW as float32, computed in float64 so every process gets the same bits."""
        return (self.u.double() @ self.v.double().T).float()


@dataclass
class EditOutcome:
    """What happened to one fact of a batch."""

    z_star: torch.Tensor  # (d,) the target hidden state at the last edited layer
    mpes_steps: int  # optimisation steps taken (forward passes with a gradient step)
    prob_before: float  # P(target_new | prompt), first token teacher-forced, mean over tokens
    prob_after: float


@dataclass
class BatchResult:
    """Everything needed to record, replay or revert one applied batch."""

    batch_id: int
    deltas: list[LayerDelta]
    outcomes: list[EditOutcome]
    z_seconds: float = 0.0  # step 1: target vectors
    solve_seconds: float = 0.0  # step 2 in all: keys + closed-form solves + writing the weights
    keys_seconds: float = 0.0  # the part of solve_seconds spent reading keys and hidden states
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LayerNorms:
    layer: int
    weight_norm: float  # ‖W‖F
    base_norm: float  # ‖W₀‖F
    delta_norm: float  # ‖W − W₀‖F

    @property
    def growth(self) -> float:
        return self.delta_norm / self.base_norm if self.base_norm else 0.0
