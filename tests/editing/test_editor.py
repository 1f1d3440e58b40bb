"""The Editor on tiny random models: factors, removal, replay, rollback, methods."""

import pytest
import torch

from app.editing import solve as solve_module
from app.editing.editor import Editor
from app.editing.keys import states_at_lookup
from app.editing.settings import EditSettings
from app.editing.types import EditError, EditRequest
from tests.utils.editing import FACTS, TEMPLATES, tiny_lm, tiny_settings, tiny_stats

MORE = [
    EditRequest("{} is in", "The Eiffel Tower", "Rome", "Paris"),
    EditRequest("{} was founded by", "Apple", "Toyota", "Steve Jobs"),
]


@pytest.fixture(params=["llama", "gpt2"])
def setup(request, tmp_path):
    lm = tiny_lm(request.param)
    s = tiny_settings(max_steps=4)
    return lm, s, tiny_stats(lm, s.layers, tmp_path)


def test_factors_equal_the_applied_change(setup):
    lm, s, stats = setup
    editor = Editor(lm, s, stats)
    before = {layer: editor._w(layer).detach().clone() for layer in s.layers}
    result = editor.apply(FACTS, batch_id=1)
    assert [d.layer for d in result.deltas] == list(s.layers)
    for d in result.deltas:
        assert d.u.shape == (lm.hidden_size, len(FACTS)) and d.v.shape[1] == len(FACTS)
        change = editor._w(d.layer).detach() - before[d.layer]
        assert change.abs().max() > 0
        assert torch.allclose(change, d.matrix(), rtol=1e-5, atol=1e-6)
    assert len(result.outcomes) == len(FACTS)
    assert all(o.z_star.shape == (lm.hidden_size,) for o in result.outcomes)


def test_gpt2_edits_the_transposed_conv1d_weight():
    lm = tiny_lm("gpt2")
    s = tiny_settings(max_steps=2, lambda_p=0.0)
    editor = Editor(lm, s)
    module = lm.adapter.edited_module(lm.model, 1)
    raw_before = module.weight.detach().clone()  # Conv1D: (f, d)
    result = editor.apply(FACTS[:1], batch_id=1)
    assert torch.allclose(module.weight.detach() - raw_before, result.deltas[0].matrix().T, atol=1e-6)


def test_removing_the_last_batch_restores_the_weights_exactly(setup):
    lm, s, stats = setup
    editor = Editor(lm, s, stats)
    editor.apply(FACTS, batch_id=1)
    weights = {layer: editor._w(layer).detach().clone() for layer in s.layers}
    preserved = {layer: p.clone() for layer, p in editor.preserved.items()}
    h = editor.weights_hash()
    editor.apply(MORE, batch_id=2)
    assert editor.weights_hash() != h
    editor.remove_batch(2)
    assert editor.weights_hash() == h
    for layer in s.layers:
        assert torch.equal(editor._w(layer).detach(), weights[layer])
        assert torch.allclose(editor.preserved[layer], preserved[layer])
    editor.remove_batch(1)
    for layer in s.layers:
        assert torch.equal(editor._w(layer).detach(), editor.base[layer])


def test_replay_of_the_live_log_gives_the_same_weights(setup):
    lm, s, stats = setup
    editor = Editor(lm, s, stats)
    r1 = editor.apply(FACTS, batch_id=1)
    r2 = editor.apply(MORE, batch_id=2)
    editor.remove_batch(1)  # a revert in the middle of the log
    r3 = editor.reapply(FACTS[1:], [o.z_star for o in r1.outcomes[1:]], batch_id=3)
    live_hash = editor.weights_hash()

    fresh_lm = tiny_lm(lm.adapter.family if lm.adapter.family != "llama" else "llama")
    replica = Editor(fresh_lm, s, stats)
    for batch_id, result in ((2, r2), (3, r3)):
        replica.add_batch(batch_id, result.deltas)
    assert replica.weights_hash() == live_hash
    assert replica.batch_ids == editor.batch_ids == [2, 3]


def test_state_dict_round_trip(setup):
    lm, s, stats = setup
    editor = Editor(lm, s, stats)
    editor.apply(FACTS, batch_id=7)
    tensors, meta = editor.state_dict()
    restored = Editor(tiny_lm(lm.adapter.family), s, stats)
    restored.load_state_dict(tensors, meta)
    assert restored.weights_hash() == editor.weights_hash()
    assert restored.templates == editor.templates


def test_a_failed_batch_leaves_the_weights_untouched(setup, monkeypatch):
    lm, s, stats = setup
    editor = Editor(lm, s, stats)
    editor.apply(FACTS[:1], batch_id=1)
    h = editor.weights_hash()
    calls = {"n": 0}
    real = solve_module.solve_update

    def fail_on_second_layer(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr("app.editing.editor.solve_update", fail_on_second_layer)
    with pytest.raises(RuntimeError, match="injected"):
        editor.apply(MORE, batch_id=2)
    assert editor.weights_hash() == h
    assert editor.batch_ids == [1]


def test_methods_are_configurations_of_one_code(tmp_path):
    lm = tiny_lm()
    layers = (1, 2, 3)
    stats = tiny_stats(lm, layers, tmp_path)
    z = Editor(lm, tiny_settings(max_steps=4), stats).apply(FACTS, batch_id=1).outcomes
    z_stars = [o.z_star for o in z]
    configs = {
        "memit": EditSettings(method="memit", layers=layers, lambda_p=10.0, lambda_n=0.0, mpes_margin=0),
        "encore": EditSettings(method="encore", layers=layers, lambda_p=10.0, lambda_n=5.0, mpes_margin=1),
        "alphaedit": EditSettings(
            method="alphaedit",
            layers=layers,
            lambda_p=0.0,
            lambda_n=5.0,
            mpes_margin=0,
            nullspace_threshold=float(torch.linalg.eigvalsh(stats[1].double())[40]),
        ),
    }
    updates = {}
    for name, settings in configs.items():
        fresh = tiny_lm()
        editor = Editor(fresh, settings, stats, templates=["{}", "The river is in Paris. {}"])
        updates[name] = editor.reapply(FACTS, z_stars, batch_id=1).deltas[0].matrix()
    names = list(updates)
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.allclose(updates[names[i]], updates[names[j]], atol=1e-7), (names[i], names[j])
    # The norm constraint makes ENCORE's update smaller than MEMIT's from the same targets.
    assert updates["encore"].norm() < updates["memit"].norm()


def test_bad_requests_are_refused_before_any_work(setup):
    lm, s, stats = setup
    editor = Editor(lm, s, stats)
    h = editor.weights_hash()
    with pytest.raises(EditError, match="exactly once"):
        editor.apply([EditRequest("The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "English")], 1)
    with pytest.raises(EditError, match="target_new is empty"):
        editor.apply([EditRequest("{} is", "Paris", "  ")], 1)
    with pytest.raises(EditError, match="bound is 128"):
        editor.apply([EditRequest("{} is", "Paris", "x" * 129)], 1)
    with pytest.raises(EditError, match="at least one fact"):
        editor.apply([], 1)
    editor.apply(FACTS[:1], 1)
    with pytest.raises(EditError, match="already applied"):
        editor.apply(FACTS[:1], 1)
    with pytest.raises(EditError, match="not applied"):
        editor.remove_batch(99)
    assert editor.batch_ids == [1]
    assert h != editor.weights_hash()


def test_settings_must_fit_the_model(setup):
    lm, _, stats = setup
    with pytest.raises(EditError, match="model has 6 layers"):
        Editor(lm, tiny_settings(layers=(4, 5, 6)), stats)
    with pytest.raises(EditError, match="key statistics"):
        Editor(lm, tiny_settings(), None)


def test_norms_report_growth(setup):
    lm, s, stats = setup
    editor = Editor(lm, s, stats)
    assert all(n.delta_norm == 0 for n in editor.norms())
    editor.apply(FACTS, batch_id=1)
    norms = editor.norms()
    assert [n.layer for n in norms] == list(s.layers)
    assert all(n.delta_norm > 0 and n.growth == n.delta_norm / n.base_norm for n in norms)


def test_reset_drops_every_batch_in_one_rebuild(setup):
    lm, s, stats = setup
    editor = Editor(lm, s, stats)
    editor.apply(FACTS, batch_id=1)
    editor.apply(MORE, batch_id=2)
    editor.reset()
    assert editor.batch_ids == []
    for layer in s.layers:
        assert torch.equal(editor._w(layer).detach(), editor.base[layer])
        assert not editor.preserved[layer].any()


def test_a_replica_replays_without_statistics_and_never_solves(setup):
    lm, s, stats = setup
    worker = Editor(lm, s, stats)
    result = worker.apply(FACTS[:1], batch_id=1)
    replica = Editor(tiny_lm(lm.adapter.family), s, None, replica=True)
    replica.add_batch(1, result.deltas)
    assert replica.weights_hash() == worker.weights_hash()
    assert replica.preserved == {}  # it never solves, so it keeps no preservation sum
    replica.remove_batch(1)
    assert replica.weights_hash() == Editor(tiny_lm(lm.adapter.family), s, None, replica=True).weights_hash()
    replica.add_batch(1, result.deltas)
    with pytest.raises(EditError, match="replica"):
        replica.apply(MORE, batch_id=2)
    assert replica.batch_ids == [1]


def test_states_at_lookup_keep_the_input_order():
    """Rows are read in length-sorted chunks; the results must come back in input order."""
    from app.editing.keys import states_at_lookup
    from app.editing.prompts import encode_with_subject

    lm = tiny_lm()
    prompts = [
        ("{} is", "Paris"),
        ("The long mother tongue of the man {} is", "Danielle Darrieux"),
        ("{} plays", "Michael Jordan"),
    ]
    encoded = [encode_with_subject(lm.tokenizer, p, s) for p, s in prompts]
    keys, out = states_at_lookup(lm, encoded, [1, 2], output_layer=3, max_rows=2)
    for i, e in enumerate(encoded):
        one_keys, one_out = states_at_lookup(lm, [e], [1, 2], output_layer=3)
        assert torch.allclose(keys[1][i], one_keys[1][0], atol=1e-5)
        assert torch.allclose(keys[2][i], one_keys[2][0], atol=1e-5)
        assert torch.allclose(out[i], one_out[0], atol=1e-4)


def test_scale_free_settings_follow_the_key_statistics(tmp_path):
    lm = tiny_lm()
    layers = (1, 2, 3)
    stats = tiny_stats(lm, layers, tmp_path)
    f = stats[1].shape[0]
    rel = Editor(
        lm, EditSettings(method="encore", layers=layers, lambda_p=10.0, lambda_n=3.0, lambda_n_relative=True), stats
    )
    for layer in layers:
        assert rel.lambda_n[layer] == pytest.approx(3.0 * float(stats[layer].double().trace()) / f)
    alpha = Editor(
        lm, EditSettings(method="alphaedit", layers=layers, lambda_p=0.0, lambda_n=1.0, nullspace_energy=0.05), stats
    )
    for layer in layers:
        eigvals = torch.linalg.eigvalsh(stats[layer].double())
        kept = round(float(alpha.projector[layer].trace()))
        assert 0 < kept < f and float(eigvals[:kept].sum()) <= 0.05 * float(eigvals.sum())
    with pytest.raises(ValueError, match="one of nullspace_threshold or nullspace_energy"):
        EditSettings(method="alphaedit", layers=layers, nullspace_threshold=0.02, nullspace_energy=0.05)
    with pytest.raises(ValueError, match="only used by alphaedit"):
        EditSettings(method="encore", layers=layers, nullspace_energy=0.05)


def test_neighbour_keys_keep_other_subjects_outputs(tmp_path):
    # The same facts and z* written with and without neighbour keys: the outputs of the edited
    # layers for other subjects asked the same relation must move less with them.
    lm = tiny_lm()
    stats = tiny_stats(lm, (1, 2, 3), tmp_path)
    z_stars = [o.z_star for o in Editor(lm, tiny_settings(max_steps=4), stats).apply(FACTS, batch_id=1).outcomes]
    moved = {}
    for k in (0, 4):
        fresh = tiny_lm()
        editor = Editor(fresh, tiny_settings(neighbour_keys=k, lambda_p=0.1, lambda_n=0.1), stats, templates=TEMPLATES)
        probe = Editor(fresh, tiny_settings(neighbour_keys=4), stats, templates=TEMPLATES)._encode_neighbour_prompts(
            FACTS
        )
        before = states_at_lookup(fresh, probe, [3], output_layer=3)[1]
        editor.reapply(FACTS, z_stars, batch_id=1)
        moved[k] = float((states_at_lookup(fresh, probe, [3], output_layer=3)[1] - before).norm())
    assert len(probe) == 4 * len(FACTS)
    assert all(
        s not in {f.subject for f in FACTS}
        for s in Editor(tiny_lm(), tiny_settings(neighbour_keys=4), stats).neighbour_subjects
    )
    assert moved[4] < 0.5 * moved[0], moved


def test_reedit_passes_write_again_the_facts_that_do_not_show_and_replay_to_the_same_bits(tmp_path):
    # Two optimisation steps leave a tiny random model's greedy answers without the targets, so the
    # passes have facts to write again.
    settings = tiny_settings(max_steps=2, reedit_passes=2)
    stats = tiny_stats(tiny_lm(), settings.layers, tmp_path)
    once = Editor(tiny_lm(), settings.model_copy(update={"reedit_passes": 0}), stats, templates=TEMPLATES)
    once.apply(FACTS, batch_id=1)
    unshown = once.not_shown(FACTS)
    assert unshown, "the first insertion should leave a fact unshown on a tiny model"

    editor = Editor(tiny_lm(), settings, stats, templates=TEMPLATES)
    result = editor.apply(FACTS, batch_id=1)
    passes = result.extra["reedited"]
    assert passes[0] == len(unshown) and 1 <= len(passes) <= 2
    for d in result.deltas:  # one factor column per written fact, first insertion and passes alike
        assert d.u.shape[1] == d.v.shape[1] == d.keys.shape[1] == len(FACTS) + sum(passes)
        assert torch.equal(editor._w(d.layer).detach(), editor.base[d.layer] + d.matrix())
        k = d.keys.double()
        assert torch.allclose(editor.preserved[d.layer], k @ k.T)
    assert editor.not_shown(FACTS) != unshown or len(passes) == 2  # it stopped early only when all showed

    replica = Editor(tiny_lm(), settings, stats, templates=TEMPLATES)
    replica.add_batch(1, result.deltas)
    assert replica.weights_hash() == editor.weights_hash()

    # A revert's re-apply writes the known z* again for the facts that do not show, the same way.
    editor.remove_batch(1)
    again = editor.reapply(FACTS, [o.z_star for o in result.outcomes], batch_id=2)
    replica = Editor(tiny_lm(), settings, stats, templates=TEMPLATES)
    replica.add_batch(2, again.deltas)
    assert replica.weights_hash() == editor.weights_hash()
    assert again.deltas[0].u.shape[1] == len(FACTS) + sum(again.extra.get("reedited", []))


def test_a_failed_reedit_pass_leaves_the_weights_untouched(tmp_path, monkeypatch):
    settings = tiny_settings(max_steps=2, reedit_passes=1)
    editor = Editor(tiny_lm(), settings, tiny_stats(tiny_lm(), settings.layers, tmp_path), templates=TEMPLATES)
    h = editor.weights_hash()
    monkeypatch.setattr(editor, "not_shown", lambda requests: (_ for _ in ()).throw(RuntimeError("injected")))
    with pytest.raises(RuntimeError, match="injected"):
        editor.apply(FACTS, batch_id=1)
    assert editor.weights_hash() == h and editor.batch_ids == []
    assert all(not p.any() for p in editor.preserved.values())
