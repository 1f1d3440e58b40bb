"""The editing core's long steps tell a Monitor how far they got and stop when it asks them to."""

from __future__ import annotations

import pytest

from app.editing.progress import Cancelled, Monitor
from app.editing.stats import key_second_moments, load_key_stats, sample_windows
from tests.utils.editing import tiny_lm, tiny_settings
from tests.utils.tiny import TRAINING_TEXT


class Recorder(Monitor):
    """Keeps what it hears; asks to stop once `stop_after` units of a stage are reported."""

    def __init__(self, stop_after: int | None = None):
        self.stages: list[tuple[str, int | None, str]] = []
        self.done: list[int] = []
        self.stop_after = stop_after

    def begin(self, stage, detail="", *, total=None, unit="", expected_s=None):
        self.stages.append((stage, total, unit))
        self.done = []

    def advance(self, done):
        self.done.append(done)

    def stopped(self):
        return self.stop_after is not None and bool(self.done) and self.done[-1] >= self.stop_after


def windows(n: int, length: int = 32) -> list[list[int]]:
    lm = tiny_lm()
    ids = lm.tokenizer("\n".join(TRAINING_TEXT * 20))["input_ids"]
    return [ids[i * length : (i + 1) * length] for i in range(n)]


def test_key_statistics_report_every_chunk_and_the_total():
    lm, rec = tiny_lm(), Recorder()
    key_second_moments(lm, [1, 2], windows(20), batch_size=8, progress=False, monitor=rec)
    assert rec.stages == [("building C0", 20 * 32, "tokens")]
    assert rec.done == [8 * 32, 16 * 32, 20 * 32]


def test_key_statistics_stop_at_the_next_chunk_when_asked():
    lm, rec = tiny_lm(), Recorder(stop_after=1)
    with pytest.raises(Cancelled):
        key_second_moments(lm, [1, 2], windows(20), batch_size=8, progress=False, monitor=rec)
    assert rec.done == [8 * 32]  # the first chunk finished, the second never did
    # The hooks are gone: the model runs as before, and a fresh pass gives full statistics.
    again = Recorder()
    key_second_moments(lm, [1, 2], windows(20), batch_size=8, progress=False, monitor=again)
    assert again.done[-1] == 20 * 32


def test_sampling_reports_tokens_and_stops_between_steps():
    lm, rec = tiny_lm(), Recorder()
    sample_windows(lm, 48, seq_len=24, batch_size=2, monitor=rec)
    assert rec.stages == [("sampling text for C0", 48, "tokens")]
    assert rec.done[-1] == 48 and rec.done == sorted(rec.done)
    stopping = Recorder(stop_after=10)
    with pytest.raises(Cancelled):
        sample_windows(lm, 48, seq_len=24, batch_size=2, monitor=stopping)
    assert stopping.done[-1] < 48


def test_a_cancelled_build_caches_nothing(tmp_path):
    lm, settings = tiny_lm(), tiny_settings(stats_tokens=3000)  # 12 windows of 256: two chunks
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TRAINING_TEXT * 40))
    with pytest.raises(Cancelled):
        load_key_stats(lm, settings, corpus=corpus, cache_dir=tmp_path, progress=False, monitor=Recorder(1))
    assert not list((tmp_path / "stats").rglob("layer*.safetensors"))
    stats = load_key_stats(lm, settings, corpus=corpus, cache_dir=tmp_path, progress=False)
    assert sorted(stats) == list(settings.layers)
