"""Batched teacher forcing, generation and perplexity on tiny models and hand-built fakes."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from app.eval import scoring
from app.eval.data import CounterFactRecord, ZsreRecord
from app.eval.health import perplexity_windows, sequence_nll, wikitext_text
from app.eval.metrics import perplexity
from tests.utils.tiny import build_tiny_model

PAIRS = [
    ("The mother tongue of Danielle Darrieux is", "French"),
    ("Paris is the capital of", "France"),
    ("Rome is in", "Italy"),
    ("Apple was founded by", "Steve Jobs"),
    ("Therefore the answer is", "yes"),
    # Shared prompts: one-token targets are read off another target's sequence.
    ("Rome is in", "France"),
    ("Rome is in", "the south of Europe"),
    ("Apple was founded by", "Paris"),
    ("Therefore the answer is", "no"),
]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny(request):
    return build_tiny_model(request.param)


def _manual(model, tok, prompt, target):
    """One unpadded sequence, full logits: the reference computation."""
    p_ids, t_ids = scoring.encode_pair(tok, prompt, target)
    ids = torch.tensor([p_ids + t_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    rows = [len(p_ids) + j - 1 for j in range(len(t_ids))]
    lps = [logp[r, t].item() for r, t in zip(rows, t_ids, strict=True)]
    return t_ids, lps, [logp[r].argmax().item() for r in rows]


def test_teacher_force_matches_unbatched_full_logits(tiny):
    model, tok = tiny
    got = scoring.teacher_force(model, tok, PAIRS, batch_size=3)  # mixed lengths: padding is exercised
    for (prompt, target), res in zip(PAIRS, got, strict=True):
        t_ids, lps, argmax = _manual(model, tok, prompt, target)
        assert list(res.target_ids) == t_ids
        assert res.logprobs == pytest.approx(lps, abs=1e-4)
        assert list(res.argmax) == argmax
        assert res.mean_nll == pytest.approx(-sum(lps) / len(lps), abs=1e-4)


def test_shared_prompts_need_one_sequence_per_multi_token_target(tiny):
    _, tok = tiny
    encoded = [scoring.encode_pair(tok, p, t) for p, t in PAIRS]
    plan = scoring._carriers(encoded)
    # Every pair is scored exactly once, as a carrier or as a rider on a carrier with its prompt.
    assert sorted([*plan, *(i for riders in plan.values() for i in riders)]) == list(range(len(PAIRS)))
    assert all(encoded[r][0] == encoded[c][0] and len(encoded[r][1]) == 1 for c, riders in plan.items() for r in riders)
    multi = sum(len(t) > 1 for _, t in encoded)
    one_only = {tuple(p) for p, _ in encoded} - {tuple(p) for p, t in encoded if len(t) > 1}
    assert len(plan) == multi + len(one_only) < len(PAIRS)


def test_target_is_written_after_a_space(tiny):
    _, tok = tiny
    p_ids, t_ids = scoring.encode_pair(tok, "Rome is in", "Italy")
    assert tok.decode(p_ids + t_ids) == "Rome is in Italy"
    assert tok.decode(t_ids) == " Italy"


def test_selected_logits_equal_full_logits(tiny):
    model, tok = tiny
    enc = tok(["Paris is the capital of France", "Rome"], padding=True, return_tensors="pt")
    rows, cols = torch.tensor([0, 0, 1]), torch.tensor([0, 3, 0])
    with torch.no_grad():
        full = model(**enc).logits[rows, cols]
        sel = scoring.selected_logits(model, enc["input_ids"], enc["attention_mask"], rows, cols)
    assert torch.allclose(full, sel, atol=1e-5)


class _ScriptedLM(torch.nn.Module):
    """A fake causal LM whose next-token log-probabilities depend only on the current token:
    logits[t] = log P[t]. Used where the right answer must be computed by hand."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table.log(), requires_grad=False)
        self.config = SimpleNamespace(model_type="scripted")

    def forward(self, input_ids, attention_mask=None, **_):
        return SimpleNamespace(logits=self.table[input_ids])


def test_perplexity_hand_checked_bigram_case():
    P = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]])
    model = _ScriptedLM(P)
    # Sequence 0 -> 1 -> 2: P(1|0)·P(2|1) = 0.25·0.8 = 0.2 over 2 predicted tokens: ppl = 0.2^(-1/2) = √5.
    total, n = sequence_nll(model, [[0, 1, 2]])
    assert n == 2
    assert total == pytest.approx(-math.log(0.25) - math.log(0.8), abs=1e-6)
    assert perplexity(total, n) == pytest.approx(math.sqrt(5), abs=1e-5)
    # A second, shorter window in the same padded batch adds -ln P(0|2) = ln 3; total ppl = (0.2/3)^(-1/3).
    total, n = sequence_nll(model, [[0, 1, 2], [2, 0]], pad_id=0)
    assert n == 3
    assert perplexity(total, n) == pytest.approx((0.2 / 3) ** (-1 / 3), abs=1e-5)


def test_perplexity_windows_fixed_slice(tiny, tmp_path):
    _, tok = tiny
    corpus = tmp_path / "wiki.txt"
    corpus.write_text(" = Title = \n\n Paris is the capital of France @-@ a city . Rome is in Italy . \n" * 20)
    text = wikitext_text(corpus, max_chars=10_000)
    assert "= Title =" not in text and "@-@" not in text and "France-a city" in text
    windows = perplexity_windows(tok, text, n_tokens=40, window=16)
    assert [len(w) for w in windows] == [16, 16, 8]
    assert sum(windows, []) == tok(text, add_special_tokens=False)["input_ids"][:40]
    with pytest.raises(ValueError, match="fewer than"):
        perplexity_windows(tok, "Rome", n_tokens=40, window=16)


def test_scripted_counterfact_scores_by_hand():
    """A model that always puts most mass on token 1: targets made of token 1 win."""
    P = torch.tensor([[0.1, 0.8, 0.1]] * 3)
    model = _ScriptedLM(P)
    tok = _ToyTokenizer({"a": 0, "b": 1, "c": 2})
    rec = CounterFactRecord(
        case_id=0,
        prompt="{} a",
        subject="c",
        target_new="b",
        target_true="c",
        paraphrase_prompts=("a", "c"),
        neighborhood_prompts=("a", "b", "c"),
        neighborhood_true="a",
    )
    d = scoring.counterfact_record_details(model, tok, [rec])[0]
    # ES/PS: P(b)=0.8 > P(c)=0.1 everywhere. NS: the true object 'a' (0.1) never beats 'b' (0.8).
    assert d == {"es": 1.0, "ps": 1.0, "ns": 0.0}
    z = ZsreRecord(
        case_id=0,
        prompt="{} a",
        subject="c",
        target="b b c",
        true_answer="a",
        rephrase="a",
        loc_prompt="c",
        loc_answer="b a",
    )
    zd = scoring.zsre_record_details(model, tok, [z], reference_loc_argmax={0: [1, 2]})[0]
    # argmax is always token 1 ('b'): target 'b b c' -> 2/3; locality 'b a' -> 1/2; kept vs [1, 2] -> 1/2.
    assert zd["edit_acc"] == pytest.approx(2 / 3) and zd["paraphrase_acc"] == pytest.approx(2 / 3)
    assert zd["locality_acc"] == 0.5 and zd["locality_kept"] == 0.5 and zd["loc_argmax"] == [1, 1]
    agg = scoring.aggregate_zsre([zd, {**zd, "edit_acc": 0.0}])
    assert agg["edit_acc"] == pytest.approx(100 / 3) and agg["locality_kept"] == 50.0


class _ToyTokenizer:
    """Whitespace tokenizer over a fixed vocabulary (a space before a word is not a token)."""

    pad_token_id, eos_token_id, eos_token, bos_token_id = 0, None, None, None

    def __init__(self, vocab):
        self.vocab = vocab

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [self.vocab[w] for w in text.split()]}


def test_generation_is_seeded_and_bounded(tiny):
    model, tok = tiny
    prompts = ["Paris is", "The mother tongue of Danielle Darrieux is", "Rome"]
    a = scoring.generate_texts(model, tok, prompts, max_len=12, seed=1)
    b = scoring.generate_texts(model, tok, prompts, max_len=12, seed=1)
    c = scoring.generate_texts(model, tok, prompts, max_len=12, seed=2)
    assert a == b and a != c
    for p, t in zip(prompts, a, strict=True):
        assert t.startswith(p)
    ids = scoring.generate_ids(model, tok, prompts, max_len=12, seed=1)
    for p, seq in zip(prompts, ids, strict=True):
        p_ids = tok(p)["input_ids"]
        assert seq[: len(p_ids)] == p_ids
        assert len(p_ids) < len(seq) <= 12  # prompt included in the bound


def test_counterfact_generation_prompts_spread_over_records():
    recs = [CounterFactRecord(i, "{} x", "s", "a", "b", ("p",), ("n",), "b", (f"g{i}0", f"g{i}1")) for i in range(3)]
    assert scoring.counterfact_generation_prompts(recs, 4) == ["g00", "g10", "g20", "g01"]
    assert len(scoring.counterfact_generation_prompts(recs, 100)) == 6
