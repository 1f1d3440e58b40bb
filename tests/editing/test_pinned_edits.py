"""A fixed sequence of edits on tiny models gives the figures recorded here.

The figures were recorded with the code before step 1 was split into targets.py, fast_forward.py
and torch.optim.Adam, and they still hold: a change to the method moves them, float rounding does
not. (Not the weights hash: that also depends on the CPU's float kernels.)
"""

import pytest

from app.editing.editor import Editor
from app.editing.types import EditRequest
from tests.utils.editing import FACTS, TEMPLATES, tiny_lm, tiny_settings, tiny_stats

MORE = [
    EditRequest("{} is in", "The Eiffel Tower", "Rome", "Paris"),
    EditRequest("{} was founded by", "Apple", "Toyota", "Steve Jobs"),
]
# Per batch: steps per fact, P(target) after the batch per fact, ‖W − W₀‖ per edited layer.
PINNED = {
    "llama": [
        ([5, 5, 5], [0.000901, 0.001581, 0.00039], [0.918808, 1.151211, 1.657357]),
        ([5, 5], [0.002081, 0.001087], [1.282654, 1.434699, 2.364532]),
    ],
    "gpt2": [
        ([5, 5, 5], [0.000766, 0.001621, 0.001367], [1.46434, 1.626108, 1.810302]),
        ([5, 5], [0.021897, 0.000372], [1.904518, 2.039264, 2.259297]),
    ],
}


@pytest.mark.parametrize("arch", sorted(PINNED))
def test_a_fixed_sequence_of_edits_gives_the_recorded_figures(arch, tmp_path):
    lm = tiny_lm(arch)
    s = tiny_settings(max_steps=6)
    editor = Editor(lm, s, tiny_stats(lm, s.layers, tmp_path), templates=TEMPLATES)
    for batch_id, (facts, (steps, prob_after, delta_norms)) in enumerate(
        zip([FACTS, MORE], PINNED[arch], strict=True), start=1
    ):
        result = editor.apply(facts, batch_id=batch_id)
        assert [o.mpes_steps for o in result.outcomes] == steps
        assert [o.prob_after for o in result.outcomes] == pytest.approx(prob_after, rel=1e-3, abs=2e-6)
        assert [n.delta_norm for n in editor.norms()] == pytest.approx(delta_norms, rel=1e-4)
