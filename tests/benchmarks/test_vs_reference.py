"""benchmarks/vs_reference.py refuses a missing or wrong --reference-dir with one clear line.

The script runs the authors' code, which is never part of this project, so the suite checks only
what happens before it: argument handling and the patch check against a fake checkout.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.procs import run_module
from benchmarks.vs_reference import PATCHES, REFERENCE_FILES, wikitext_texts

ROOT = Path(__file__).resolve().parents[2]


def _fail(*args: str) -> str:
    """Run the script expecting the one-line failure; return that line."""
    proc = run_module("benchmarks.vs_reference", *args, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vs_reference: error: "), proc.stderr
    assert proc.stdout == ""
    return lines[0]


def _fake_checkout(root: Path, text: str = "") -> Path:
    for rel in REFERENCE_FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_missing_reference_dir():
    assert "--reference-dir is required" in _fail()


@pytest.mark.parametrize("kind", ["absent", "file", "empty folder", "inside the repo"])
def test_wrong_reference_dir(tmp_path, kind):
    if kind == "absent":
        path, expect = tmp_path / "nope", "is not a folder"
    elif kind == "file":
        path, expect = tmp_path / "f.txt", "is not a folder"
        path.write_text("x")
    elif kind == "empty folder":
        path, expect = tmp_path, "is not a checkout of scalable-model-editing/knowledge-editing-regularization"
    else:
        path, expect = ROOT / "app", "is inside this repository"
    assert expect in _fail("--reference-dir", str(path))


def test_other_commit_fails_on_the_first_unmatched_patch(tmp_path):
    line = _fail("--reference-dir", str(_fake_checkout(tmp_path)))
    assert "differs from commit 6e3ba9a" in line and PATCHES[0][0] in line


def test_bad_layers(tmp_path):
    text = "\n".join(old for _, old, _, _ in PATCHES)  # every patch matches: the next check fails
    assert "--layers" in _fail("--reference-dir", str(_fake_checkout(tmp_path, text)), "--layers", "4,x")


def test_statistics_texts_skip_headings_and_blank_lines(tmp_path):
    corpus = tmp_path / "w.txt"
    corpus.write_text(" = Title = \n\n First line . \n = = Section = = \n Second line \n")
    assert wikitext_texts(corpus) == [{"text": "First line ."}, {"text": "Second line"}]


def test_missing_statistics_corpus_is_named(tmp_path, monkeypatch):
    """Past the checks on the checkout, the shared data folder is where the corpus is looked for."""
    text = "\n".join(old for _, old, _, _ in PATCHES)
    monkeypatch.setenv("KEDIT_DATA_DIR", str(tmp_path / "data"))
    line = _fail("--reference-dir", str(_fake_checkout(tmp_path / "ref", text)))
    assert f"statistics corpus '{tmp_path / 'data' / 'corpus' / 'wikitext2_raw_test.txt'}' is not a file" in line
