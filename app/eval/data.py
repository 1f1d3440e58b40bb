"""Evaluation records: CounterFact (original ROME format and EasyEdit's compact format) and zsRE.

The format of a file is detected from the fields of its first record; every record is
then checked, and a malformed one raises `DataFormatError` naming the file, the record
index and the field, so a user can fix or replace the file.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from app.editing.types import EditRequest

FORMAT_COUNTERFACT = "counterfact"  # ROME: requested_rewrite{...}, paraphrase/neighborhood/generation prompts
FORMAT_COUNTERFACT_COMPACT = "counterfact-compact"  # EasyEdit: prompt with the subject written out, ...
FORMAT_ZSRE = "zsre"  # MEND: subject, src, rephrase, alt, answers, loc, loc_ans

ZsreTarget = Literal["answers", "alt"]


class DataFormatError(ValueError):
    """The data file cannot be read as an evaluation set; the message says where and why."""


@dataclass(frozen=True)
class CounterFactRecord:
    """One CounterFact case, whichever file format it came from."""

    case_id: int
    prompt: str  # template with one '{}' for the subject
    subject: str
    target_new: str
    target_true: str
    paraphrase_prompts: tuple[str, ...]
    neighborhood_prompts: tuple[str, ...]
    # The object the neighbourhood prompts should keep preferring (the true target in
    # the ROME format; `locality_ground_truth` in the compact one).
    neighborhood_true: str
    generation_prompts: tuple[str, ...] = ()

    @property
    def rewrite_prompt(self) -> str:
        return self.prompt.format(self.subject)

    def request(self) -> EditRequest:
        return EditRequest(
            prompt=self.prompt, subject=self.subject, target_new=self.target_new, target_true=self.target_true
        )


@dataclass(frozen=True)
class ZsreRecord:
    """One zsRE question. `target` is what the edit writes (see `load_records(zsre_target=...)`)."""

    case_id: int
    prompt: str  # the question with the subject replaced by '{}'
    subject: str
    target: str
    true_answer: str
    rephrase: str
    loc_prompt: str  # the NQ question, as the authors' code asks it ("nq question:" removed, '?' added)
    loc_answer: str

    @property
    def question(self) -> str:
        return self.prompt.format(self.subject)

    def request(self) -> EditRequest:
        # An edit that asks for the answer the model already should give has no "true" to replace.
        true = self.true_answer if self.true_answer.strip() != self.target.strip() else None
        return EditRequest(prompt=self.prompt, subject=self.subject, target_new=self.target, target_true=true)


Record = CounterFactRecord | ZsreRecord


@dataclass(frozen=True)
class Dataset:
    path: Path
    format: str  # one of the FORMAT_* names
    records: list[Record]

    @property
    def kind(self) -> str:
        """'counterfact' or 'zsre': which metrics apply."""
        return "zsre" if self.format == FORMAT_ZSRE else "counterfact"


# --- field access with errors that name the record and the field --------------------


def _field(rec: Any, path: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = rec
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise DataFormatError(f"{where}: field '{path}' is missing")
        value = value[part]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataFormatError(f"{where}: field '{path}' should be a {names}, got {type(value).__name__}: {value!r:.80}")
    if isinstance(value, str) and not value.strip():
        raise DataFormatError(f"{where}: field '{path}' is empty")
    return value


def _str_list(rec: Any, path: str, where: str, min_len: int = 1) -> tuple[str, ...]:
    values = _field(rec, path, list, where)
    if len(values) < min_len:
        raise DataFormatError(f"{where}: field '{path}' needs at least {min_len} item(s), has {len(values)}")
    for i, v in enumerate(values):
        if not isinstance(v, str) or not v.strip():
            raise DataFormatError(f"{where}: field '{path}[{i}]' should be a non-empty string, got {v!r:.80}")
    return tuple(values)


def _template(prompt: str, subject: str, field: str, where: str) -> str:
    """Turn a prompt with the subject written out into a '{}' template (first occurrence)."""
    if "{}" in prompt:
        raise DataFormatError(f"{where}: field '{field}' already contains '{{}}'; expected the subject written out")
    if subject not in prompt:
        raise DataFormatError(f"{where}: field '{field}' does not contain the subject {subject!r}: {prompt!r}")
    return prompt.replace(subject, "{}", 1)


def _int_id(rec: dict, index: int, where: str) -> int:
    if "case_id" not in rec:
        return index
    return _field(rec, "case_id", int, where)


# --- per-format parsers ---------------------------------------------------------------


def _parse_counterfact(rec: Any, index: int, where: str) -> CounterFactRecord:
    prompt = _field(rec, "requested_rewrite.prompt", str, where)
    if prompt.count("{}") != 1:
        raise DataFormatError(f"{where}: field 'requested_rewrite.prompt' must contain '{{}}' exactly once: {prompt!r}")
    true = _field(rec, "requested_rewrite.target_true.str", str, where)
    return CounterFactRecord(
        case_id=_int_id(rec, index, where),
        prompt=prompt,
        subject=_field(rec, "requested_rewrite.subject", str, where),
        target_new=_field(rec, "requested_rewrite.target_new.str", str, where),
        target_true=true,
        paraphrase_prompts=_str_list(rec, "paraphrase_prompts", where),
        neighborhood_prompts=_str_list(rec, "neighborhood_prompts", where),
        neighborhood_true=true,
        generation_prompts=_str_list(rec, "generation_prompts", where, min_len=0)
        if "generation_prompts" in rec
        else (),
    )


def _parse_counterfact_compact(rec: Any, index: int, where: str) -> CounterFactRecord:
    subject = _field(rec, "subject", str, where)
    return CounterFactRecord(
        case_id=_int_id(rec, index, where),
        prompt=_template(_field(rec, "prompt", str, where), subject, "prompt", where),
        subject=subject,
        target_new=_field(rec, "target_new", str, where),
        target_true=_field(rec, "ground_truth", str, where),
        paraphrase_prompts=(_field(rec, "rephrase_prompt", str, where),),
        neighborhood_prompts=(_field(rec, "locality_prompt", str, where),),
        neighborhood_true=_field(rec, "locality_ground_truth", str, where),
    )


def _loc_question(loc: str) -> str:
    # The authors' code drops the "nq question:" tag and asks the question with a '?'.
    q = loc.strip()
    if q.lower().startswith("nq question:"):
        q = q[len("nq question:") :].strip()
    return q + "?"


def _parse_zsre(rec: Any, index: int, where: str, target: ZsreTarget) -> ZsreRecord:
    subject = _field(rec, "subject", str, where)
    answers = _str_list(rec, "answers", where)
    alt = _field(rec, "alt", str, where) if target == "alt" else rec.get("alt", "")
    return ZsreRecord(
        case_id=index,
        prompt=_template(_field(rec, "src", str, where), subject, "src", where),
        subject=subject,
        target=answers[0] if target == "answers" else alt,
        true_answer=answers[0],
        rephrase=_field(rec, "rephrase", str, where),
        loc_prompt=_loc_question(_field(rec, "loc", str, where)),
        loc_answer=_field(rec, "loc_ans", str, where),
    )


# Fields that identify each format (checked on the first record).
_SIGNATURES = {
    FORMAT_COUNTERFACT: {"requested_rewrite", "paraphrase_prompts", "neighborhood_prompts"},
    FORMAT_COUNTERFACT_COMPACT: {
        "prompt",
        "subject",
        "target_new",
        "ground_truth",
        "rephrase_prompt",
        "locality_prompt",
        "locality_ground_truth",
    },
    FORMAT_ZSRE: {"subject", "src", "rephrase", "answers", "loc", "loc_ans"},
}


def detect_format(first: Any, path: Path | str = "<data>") -> str:
    """Which of the known formats a record is in, from its fields."""
    if not isinstance(first, dict):
        raise DataFormatError(f"{path}: record 0 should be a JSON object, got {type(first).__name__}")
    keys = set(first)
    for name, needed in _SIGNATURES.items():
        if needed <= keys:
            return name
    # Say which format came closest, and what it lacks, so the user can fix the file.
    best = max(_SIGNATURES, key=lambda n: len(_SIGNATURES[n] & keys))
    missing = sorted(_SIGNATURES[best] - keys)
    raise DataFormatError(
        f"{path}: unknown record format (fields {sorted(keys)}). Closest is {best!r}, which also needs "
        f"{missing}. Supported: CounterFact (ROME format, e.g. shared/data/counterfact/counterfact.json), "
        f"compact CounterFact (shared/data/counterfact_extra/*.json) and zsRE (shared/data/zsre/zsre_mem_eval.json)."
    )


def parse_records(raw: Sequence[Any], path: Path | str = "<data>", zsre_target: ZsreTarget = "answers") -> Dataset:
    """Detect the format from the first record and parse every record."""
    if not isinstance(raw, list):
        raise DataFormatError(f"{path}: expected a JSON list of records, got {type(raw).__name__}")
    if not raw:
        raise DataFormatError(f"{path}: the file holds no records")
    fmt = detect_format(raw[0], path)
    records: list[Record] = []
    for i, rec in enumerate(raw):
        where = f"{path}: record {i}"
        if not isinstance(rec, dict):
            raise DataFormatError(f"{where}: should be a JSON object, got {type(rec).__name__}")
        if fmt == FORMAT_COUNTERFACT:
            records.append(_parse_counterfact(rec, i, where))
        elif fmt == FORMAT_COUNTERFACT_COMPACT:
            records.append(_parse_counterfact_compact(rec, i, where))
        else:
            records.append(_parse_zsre(rec, i, where, zsre_target))
    return Dataset(path=Path(path), format=fmt, records=records)


def load_dataset(path: Path | str, zsre_target: ZsreTarget = "answers", limit: int | None = None) -> Dataset:
    """Read an evaluation file; `limit` keeps the first N records (only those are validated).

    `zsre_target`: what a zsRE edit writes. "answers" (default) is `answers[0]`, as in the
    MEMIT/ENCORE evaluation code, so numbers compare with their tables; "alt" is the
    counterfactual alternative, as EasyEdit uses it.
    """
    path = Path(path)
    if not path.exists():
        raise DataFormatError(
            f"{path}: no such file. Pass --data PATH or set KEDIT_DATA_DIR to the shared data folder."
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}: not valid JSON ({e})") from None
    if limit is not None and isinstance(raw, list):
        if limit < 1:
            raise DataFormatError(f"asked for {limit} records; ask for at least 1")
        if limit > len(raw):
            raise DataFormatError(f"{path}: asked for {limit} records but the file holds {len(raw)}")
        raw = raw[:limit]
    return parse_records(raw, path, zsre_target)


def build_neighbourhoods(
    records: list[Record], pool: Sequence[Record], per_record: int = 10, seed: int = 0
) -> list[Record]:
    """CounterFact-style neighbourhood prompts for records that have few (the compact files hold one).

    CounterFact's neighbourhood of a fact is its relation asked of other subjects that share its
    true object ("The mother tongue of Jean Gabin is" → French, next to Danielle Darrieux). The
    compact files carry no relation id, so the relation is the prompt template itself: a neighbour
    is the record's own template filled with the subject of another record of `pool` that has the
    same template and true object. Subjects edited in `records` are never used (their answers
    change). Up to `per_record` are added after the record's own locality prompt, drawn with a
    fixed seed; a record whose template and object no other subject shares keeps what it had.
    """
    edited = {r.subject for r in records}
    by_relation: dict[tuple[str, str], list[str]] = {}
    for r in pool:
        if isinstance(r, CounterFactRecord) and r.subject not in edited:
            subjects = by_relation.setdefault((r.prompt, r.target_true), [])
            if r.subject not in subjects:
                subjects.append(r.subject)
    rng = random.Random(seed)
    out: list[Record] = []
    for r in records:
        if not isinstance(r, CounterFactRecord):
            raise DataFormatError("neighbourhoods are built for CounterFact records only")
        # One expected object per record: only where the record's neighbours already expect its true object.
        others = by_relation.get((r.prompt, r.target_true), []) if r.neighborhood_true == r.target_true else []
        chosen = rng.sample(others, min(per_record, len(others)))
        out.append(
            dataclasses.replace(
                r, neighborhood_prompts=r.neighborhood_prompts + tuple(r.prompt.format(s) for s in chosen)
            )
        )
    return out
