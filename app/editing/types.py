"""Plain data passed in and out of the editing core."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

MAX_PROMPT_CHARS = 512
MAX_SUBJECT_CHARS = 256
MAX_TARGET_CHARS = 128


class EditError(ValueError):
    """A request the editor cannot carry out; the message says what to change."""


# --- what a fact must be -------------------------------------------------------------------
# One rule for every way a fact comes in (the HTTP API, the CLI, the evaluation data): the API
# schemas call these per field, EditRequest.validate() calls them all. Each returns None when the
# value is good, else a sentence saying what to change.


# Characters that show nothing on their own: zero-width and other format characters (U+200B,
# U+FEFF, U+200D ...), combining marks (U+0301 ...), controls and separators. A subject, target or
# prompt made only of these is as empty as one made of spaces: the model would see no word.
_INVISIBLE = {"Cf", "Mn", "Me", "Cc", "Zs", "Zl", "Zp"}


def is_blank(text: str) -> bool:
    """True when `text` has no visible character (whitespace, zero-width and combining marks only)."""
    return all(c.isspace() or unicodedata.category(c) in _INVISIBLE for c in text)


def _emptiness(text: str) -> str:
    if not text.strip():
        return "is empty"
    return "has no visible character (only zero-width, combining or control characters)"


def prompt_problem(prompt: str, subject: str | None = None, bound: int = MAX_PROMPT_CHARS) -> str | None:
    if len(prompt) > bound:
        return f"prompt is {len(prompt)} characters long; the bound is {bound}"
    n = prompt.count("{}")
    if n != 1:
        if n == 0 and subject and subject in prompt:
            hint = f"write {prompt.replace(subject, '{}', 1)!r}"
        else:
            hint = "e.g. 'The mother tongue of {} is'"
        return f"prompt must contain the subject slot '{{}}' exactly once (found {n}): {hint}"
    rest = prompt.replace("{}", "", 1)
    if "{" in rest or "}" in rest:
        # Facts are filled with str.format in places (and by other tools reading the log).
        return "prompt may contain no braces other than the one subject slot '{}'"
    if is_blank(rest):
        return "prompt has nothing besides the subject slot; write the sentence around '{}'"
    return None


def subject_problem(subject: str, bound: int = MAX_SUBJECT_CHARS) -> str | None:
    if is_blank(subject):
        return f"subject {_emptiness(subject)}; give the entity the fact is about"
    if len(subject) > bound:
        return f"subject is {len(subject)} characters long; the bound is {bound}"
    return None


def target_problem(name: str, value: str, bound: int = MAX_TARGET_CHARS) -> str | None:
    """`name` is target_new or target_true (which is optional: None is never checked here)."""
    if is_blank(value):
        return f"{name} {_emptiness(value)}" + (" (leave target_true out instead)" if name == "target_true" else "")
    if len(value) > bound:
        return f"{name} is {len(value)} characters long; the bound is {bound}"
    return None


def question_problem(question: str, bound: int = MAX_PROMPT_CHARS) -> str | None:
    """An edit's optional natural question about the fact (asked through the chat template once the
    edit is applied): visible text on one line, as long as a prompt may be."""
    if is_blank(question):
        return f"question {_emptiness(question)}; ask about the fact in words, or leave question out"
    if len(question) > bound:
        return f"question is {len(question)} characters long; the bound is {bound}"
    for i, c in enumerate(question):
        if unicodedata.category(c) == "Cc":
            return (
                f"question contains the control character U+{ord(c):04X} at position {i}; write it as one line of text"
            )
    return None


def targets_problem(target_new: str, target_true: str | None) -> str | None:
    if target_true is not None and target_new.strip() == target_true.strip():
        return "target_new equals target_true: there is nothing to change"
    return None


@dataclass(frozen=True)
class EditRequest:
    """One fact: `prompt` with `subject` in its slot should be completed by `target_new`."""

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None

    def validate(self) -> None:
        """Raise EditError naming the first problem a user can fix."""
        problems = (
            subject_problem(self.subject),
            prompt_problem(self.prompt, self.subject),
            target_problem("target_new", self.target_new),
            target_problem("target_true", self.target_true) if self.target_true is not None else None,
            targets_problem(self.target_new, self.target_true),
        )
        for problem in problems:
            if problem:
                raise EditError(problem)

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
    # float32, or the 16-bit dtype the editor rounded them to (settings.factor_dtype)
    u: torch.Tensor  # (d, B)
    v: torch.Tensor  # (f, B)
    keys: torch.Tensor  # (f, B)

    def matrix(self) -> torch.Tensor:
        """ΔW as float32, computed in float64 so every process gets the same bits."""
        return (self.u.double() @ self.v.double().T).float()


def join_deltas(parts: Sequence[LayerDelta]) -> LayerDelta:
    """Several changes to one layer as one: their factors side by side (Σ uᵢvᵢᵀ = [u…][v…]ᵀ) and
    their keys too, so that Σ K Kᵀ gains what the parts would have added one by one."""
    layers = {d.layer for d in parts}
    if len(layers) != 1:
        raise EditError(f"only changes to one layer can be joined, got layers {sorted(layers)}")
    return LayerDelta(
        parts[0].layer,
        torch.cat([d.u for d in parts], 1),
        torch.cat([d.v for d in parts], 1),
        torch.cat([d.keys for d in parts], 1),
    )


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
    key_dim: int = 0  # f, the dimension of the layer's keys (its input)

    @property
    def growth(self) -> float:
        return self.delta_norm / self.base_norm if self.base_norm else 0.0

    def load(self, edits: int) -> float:
        """Edits per key dimension: each edit stores one key in the layer's f-dimensional input space,
        so past about 1 the keys cannot be kept apart (docs/lifelong.md, The load)."""
        return edits / self.key_dim if self.key_dim else 0.0
