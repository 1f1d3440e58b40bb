"""Where the key statistics' text comes from: a configured corpus, else text the model generates."""

from pathlib import Path

import pytest
import torch

from app.config import ConfigError, KeditConfig, ServiceConfig
from app.editing.stats import CorpusError, collect_key_stats, corpus_files, load_key_stats, sample_windows
from tests.utils.editing import tiny_lm, tiny_settings


def test_data_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KEDIT_DATA_DIR", str(tmp_path))
    assert KeditConfig().data_dir == tmp_path


def test_default_data_folder_is_shared_data_next_to_the_repo(monkeypatch):
    monkeypatch.delenv("KEDIT_DATA_DIR", raising=False)
    repo = Path(__file__).resolve().parents[2]
    assert KeditConfig().data_dir == repo.parent / "shared" / "data"


def test_no_corpus_by_default(monkeypatch):
    monkeypatch.delenv("KEDIT_STATS_CORPUS", raising=False)
    assert KeditConfig().stats_corpus is None
    monkeypatch.setenv("KEDIT_STATS_CORPUS", "")
    assert KeditConfig().stats_corpus is None


def test_corpus_files_in_name_order(monkeypatch, tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    monkeypatch.setenv("KEDIT_STATS_CORPUS", str(tmp_path))
    assert [f.name for f in corpus_files(KeditConfig().stats_corpus)] == ["a.txt", "b.txt"]


def _unusable(kind: str, folder: Path) -> Path:
    if kind == "missing":
        return folder / "missing"
    if kind == "empty":
        (folder / "empty.txt").write_text("")
    return folder


@pytest.mark.parametrize(
    "kind, fragment",
    [
        ("missing", "does not exist"),
        ("no text files", "holds no .txt files"),
        ("empty", "is empty"),
    ],
)
def test_unusable_corpus_is_refused_before_anything_loads(monkeypatch, tmp_path, kind, fragment):
    path = _unusable(kind, tmp_path)
    with pytest.raises(CorpusError, match=fragment):
        corpus_files(path)
    monkeypatch.setenv("KEDIT_STATS_CORPUS", str(path))
    config = ServiceConfig(model_path=str(tmp_path / "no-model"))
    with pytest.raises(ConfigError, match=f"{fragment}.*KEDIT_STATS_CORPUS"):
        config.check_stats_corpus()
    with pytest.raises(ConfigError):  # before the (missing) model is even looked for
        config.load_editor("worker")


def test_generated_text_is_seeded_and_full_length():
    lm = tiny_lm()
    first = sample_windows(lm, 100, seq_len=24, batch_size=3)
    assert len(first) == 5 and {len(w) for w in first} == {24}
    assert all(w[0] == lm.tokenizer.eos_token_id for w in first)  # the tiny tokenizer has no BOS
    assert sample_windows(lm, 100, seq_len=24, batch_size=3) == first
    assert len({tuple(w) for w in first}) == 5


def test_default_statistics_come_from_generated_text_cached_once(tmp_path):
    lm, settings = tiny_lm(), tiny_settings(stats_tokens=1000)
    before = torch.random.get_rng_state()
    stats = load_key_stats(lm, settings, cache_dir=tmp_path, progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)  # sampling leaves the global generator alone
    folder = tmp_path / "stats" / lm.fingerprint()
    assert len(list(folder.glob("sample-*.safetensors"))) == 1
    assert len(list(folder.glob("layer*-sample0-1000tok.safetensors"))) == len(settings.layers)
    for c0 in stats.values():
        assert c0.shape == (128, 128) and torch.allclose(c0, c0.T, atol=1e-5)
    # A layer asked for later comes from the same sample: the same numbers as one fresh pass.
    again = load_key_stats(lm, settings, cache_dir=tmp_path, progress=False, layers=[0, 2])
    assert torch.equal(again[2], stats[2])
    fresh = collect_key_stats(lm, [0], None, tokens=1000, progress=False)
    assert torch.allclose(again[0], fresh[0])
