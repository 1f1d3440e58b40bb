"""Reading evaluation files: format detection, conversion, and errors that name record and field."""

from __future__ import annotations

import json

import pytest

from app.eval.data import (
    FORMAT_COUNTERFACT,
    FORMAT_COUNTERFACT_COMPACT,
    FORMAT_ZSRE,
    CounterFactRecord,
    DataFormatError,
    ZsreRecord,
    build_neighbourhoods,
    load_dataset,
    parse_records,
)

CF = {
    "case_id": 0,
    "requested_rewrite": {
        "prompt": "The mother tongue of {} is",
        "subject": "Danielle Darrieux",
        "target_new": {"str": "English"},
        "target_true": {"str": "French"},
    },
    "paraphrase_prompts": ["Danielle Darrieux speaks", "Where Danielle Darrieux is from, people speak"],
    "neighborhood_prompts": ["Michel Rocard is a native speaker of"],
    "generation_prompts": ["Danielle Darrieux's mother tongue is"],
}
COMPACT = {
    "case_id": 2,
    "prompt": "Toko Yasuda, the",
    "subject": "Toko Yasuda",
    "target_new": "piano",
    "ground_truth": "guitar",
    "rephrase_prompt": "Toko Yasuda is incredible at",
    "locality_prompt": "John Lennon performs on the",
    "locality_ground_truth": "guitar",
}
ZSRE = {
    "subject": "Ramalinaceae",
    "src": "Which family does Ramalinaceae belong to?",
    "pred": "Ramalinales",
    "rephrase": "What family are Ramalinaceae?",
    "alt": "Lamiinae",
    "answers": ["Lecanorales"],
    "loc": "nq question: types of skiing in the winter olympics 2018",
    "loc_ans": "Downhill",
    "cond": "",
}


def _write(tmp_path, records, name="data.json"):
    p = tmp_path / name
    p.write_text(json.dumps(records))
    return p


def test_counterfact_original_format(tmp_path):
    ds = load_dataset(_write(tmp_path, [CF]))
    assert ds.format == FORMAT_COUNTERFACT and ds.kind == "counterfact"
    r = ds.records[0]
    assert isinstance(r, CounterFactRecord)
    assert r.rewrite_prompt == "The mother tongue of Danielle Darrieux is"
    assert (r.target_new, r.target_true, r.neighborhood_true) == ("English", "French", "French")
    assert len(r.paraphrase_prompts) == 2 and r.generation_prompts == ("Danielle Darrieux's mother tongue is",)
    req = r.request()
    req.validate()
    assert req.prompt == "The mother tongue of {} is" and req.target_true == "French"


def test_compact_format_prompt_becomes_template(tmp_path):
    ds = load_dataset(_write(tmp_path, [COMPACT]))
    assert ds.format == FORMAT_COUNTERFACT_COMPACT and ds.kind == "counterfact"
    r = ds.records[0]
    assert r.prompt == "{}, the"
    assert r.rewrite_prompt == "Toko Yasuda, the"
    assert r.paraphrase_prompts == ("Toko Yasuda is incredible at",)
    assert r.neighborhood_prompts == ("John Lennon performs on the",)
    assert (r.target_new, r.target_true, r.neighborhood_true) == ("piano", "guitar", "guitar")
    assert r.generation_prompts == ()
    r.request().validate()


def test_compact_format_replaces_only_the_first_subject_occurrence():
    rec = {**COMPACT, "prompt": "Toko Yasuda and Toko Yasuda, the"}
    r = parse_records([rec]).records[0]
    assert r.prompt == "{} and Toko Yasuda, the"


def test_zsre_format(tmp_path):
    ds = load_dataset(_write(tmp_path, [ZSRE]))
    assert ds.format == FORMAT_ZSRE and ds.kind == "zsre"
    r = ds.records[0]
    assert isinstance(r, ZsreRecord)
    assert r.question == "Which family does Ramalinaceae belong to?"
    assert r.prompt == "Which family does {} belong to?"
    assert r.target == "Lecanorales"  # answers[0], as the MEMIT/ENCORE evaluation edits
    assert r.loc_prompt == "types of skiing in the winter olympics 2018?"
    assert r.loc_answer == "Downhill"
    assert r.request().target_true is None
    alt = load_dataset(_write(tmp_path, [ZSRE]), zsre_target="alt").records[0]
    assert alt.target == "Lamiinae" and alt.request().target_true == "Lecanorales"


@pytest.mark.parametrize(
    "records, index, field",
    [
        ([CF, {**CF, "paraphrase_prompts": "not a list"}], 1, "paraphrase_prompts"),
        (
            [CF, CF, {**CF, "requested_rewrite": {**CF["requested_rewrite"], "target_new": {}}}],
            2,
            "requested_rewrite.target_new.str",
        ),
        (
            [CF, {**CF, "requested_rewrite": {**CF["requested_rewrite"], "prompt": "no slot here"}}],
            1,
            "requested_rewrite.prompt",
        ),
        ([COMPACT, {k: v for k, v in COMPACT.items() if k != "ground_truth"}], 1, "ground_truth"),
        ([COMPACT, {**COMPACT, "prompt": "Someone else, the"}], 1, "prompt"),
        ([COMPACT, {**COMPACT, "target_new": "  "}], 1, "target_new"),
        ([ZSRE, ZSRE, ZSRE, {**ZSRE, "answers": []}], 3, "answers"),
        ([ZSRE, {**ZSRE, "loc_ans": 5}], 1, "loc_ans"),
    ],
)
def test_malformed_record_error_names_record_and_field(tmp_path, records, index, field):
    path = _write(tmp_path, records)
    with pytest.raises(DataFormatError) as err:
        load_dataset(path)
    msg = str(err.value)
    assert f"record {index}" in msg
    assert f"'{field}'" in msg
    assert str(path) in msg


def test_unknown_format_names_closest_and_missing_fields(tmp_path):
    with pytest.raises(DataFormatError, match=r"unknown record format.*Closest is 'zsre'.*loc_ans"):
        load_dataset(_write(tmp_path, [{k: v for k, v in ZSRE.items() if k != "loc_ans"}]))


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"a": 1}', "expected a JSON list"),
        ("[]", "holds no records"),
        ("[1, 2]", "record 0 should be a JSON object"),
    ],
)
def test_file_level_errors(tmp_path, content, message):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(DataFormatError, match=message):
        load_dataset(p)


def test_missing_file_and_limits(tmp_path):
    with pytest.raises(DataFormatError, match="no such file"):
        load_dataset(tmp_path / "absent.json")
    p = _write(tmp_path, [CF, CF])
    assert len(load_dataset(p, limit=1).records) == 1
    with pytest.raises(DataFormatError, match="asked for 3 records but the file holds 2"):
        load_dataset(p, limit=3)


def test_shared_files_parse(shared_data):
    cf = load_dataset(shared_data / "counterfact" / "counterfact.json")
    assert cf.format == FORMAT_COUNTERFACT and len(cf.records) == 800
    assert all(len(r.neighborhood_prompts) == 10 and len(r.generation_prompts) == 10 for r in cf.records)
    compact = load_dataset(shared_data / "counterfact_extra" / "counterfact-train.json", limit=2000)
    assert compact.format == FORMAT_COUNTERFACT_COMPACT and len(compact.records) == 2000
    assert all(r.prompt.count("{}") == 1 for r in compact.records)
    zsre = load_dataset(shared_data / "zsre" / "zsre_mem_eval.json")
    assert zsre.format == FORMAT_ZSRE and len(zsre.records) == 1037
    for r in zsre.records:
        r.request().validate()


def test_cli_malformed_data_gives_clear_error(tmp_path):
    from typer.testing import CliRunner

    from app.cli.evaluation import eval_app

    bad = _write(tmp_path, [COMPACT, COMPACT, {**COMPACT, "locality_prompt": None}])
    res = CliRunner().invoke(
        eval_app, ["--dataset", "counterfact", "--data", str(bad), "--records", "3", "--out", str(tmp_path / "run")]
    )
    assert res.exit_code == 2
    out = res.output
    assert "record 2" in out and "'locality_prompt'" in out
    assert not (tmp_path / "run" / "summary.json").exists()


def test_cli_dataset_mismatch_is_explained(tmp_path):
    from typer.testing import CliRunner

    from app.cli.evaluation import eval_app

    path = _write(tmp_path, [ZSRE])
    res = CliRunner().invoke(eval_app, ["--dataset", "counterfact", "--data", str(path), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "--dataset zsre" in res.output


def _compact(subject: str, truth: str, template: str = "The mother tongue of {} is", new: str = "English") -> dict:
    return {
        **COMPACT,
        "prompt": template.format(subject),
        "subject": subject,
        "ground_truth": truth,
        "target_new": new,
        "rephrase_prompt": f"{subject} speaks",
        "locality_prompt": f"Someone near {subject} speaks",
        "locality_ground_truth": truth,
    }


def test_neighbourhoods_are_the_template_asked_of_other_subjects_with_the_same_object(tmp_path):
    records = load_dataset(
        _write(tmp_path, [_compact("Danielle Darrieux", "French"), _compact("Ugo Tognazzi", "Italian")])
    ).records
    pool = load_dataset(
        _write(
            tmp_path,
            [
                _compact("Jean Gabin", "French"),
                _compact("Alain Delon", "French"),
                _compact("Sophia Loren", "Italian"),
                _compact("Danielle Darrieux", "French"),  # the edited subject itself: never a neighbour
                _compact("Louis de Funès", "French", template="{} was born in"),  # another relation
                _compact("Edith Piaf", "German"),  # another object
            ],
            "pool.json",
        )
    ).records
    built = build_neighbourhoods(records, pool, per_record=10)
    darrieux, tognazzi = built
    assert darrieux.neighborhood_prompts[0] == "Someone near Danielle Darrieux speaks"  # its own prompt first
    assert sorted(darrieux.neighborhood_prompts[1:]) == [
        "The mother tongue of Alain Delon is",
        "The mother tongue of Jean Gabin is",
    ]
    assert tognazzi.neighborhood_prompts[1:] == ("The mother tongue of Sophia Loren is",)
    assert (darrieux.neighborhood_true, tognazzi.neighborhood_true) == ("French", "Italian")
    assert len(build_neighbourhoods(records, pool, per_record=1)[0].neighborhood_prompts) == 2
    # An edited subject's answer changes, so it is no neighbour of another edited record either.
    both = load_dataset(
        _write(tmp_path, [_compact("Danielle Darrieux", "French"), _compact("Jean Gabin", "French")], "b.json")
    ).records
    assert all("Gabin" not in p for p in build_neighbourhoods(both, pool)[0].neighborhood_prompts)
