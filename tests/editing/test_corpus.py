"""Where the key statistics' corpus comes from when none is given."""
from pathlib import Path

import pytest

from app.editing.stats import corpus_files, default_corpus
from app.editing.types import EditError


def test_corpus_follows_the_data_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("KEDIT_CORPUS", raising=False)
    monkeypatch.setenv("KEDIT_DATA_DIR", str(tmp_path))
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "b.txt").write_text("second")
    (tmp_path / "corpus" / "a.txt").write_text("first")
    assert default_corpus() == tmp_path / "corpus"
    assert [f.name for f in corpus_files(default_corpus())] == ["a.txt", "b.txt"]


def test_explicit_corpus_wins_over_the_data_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("KEDIT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KEDIT_CORPUS", str(tmp_path / "text.txt"))
    assert default_corpus() == tmp_path / "text.txt"


def test_default_is_shared_data_next_to_the_repo(monkeypatch):
    monkeypatch.delenv("KEDIT_CORPUS", raising=False)
    monkeypatch.delenv("KEDIT_DATA_DIR", raising=False)
    repo = Path(__file__).resolve().parents[2]
    assert default_corpus() == repo.parent / "shared" / "data" / "corpus"


def test_folder_without_text_is_a_clear_error(tmp_path):
    with pytest.raises(EditError, match="no .txt files"):
        corpus_files(tmp_path)
