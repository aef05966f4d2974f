"""Sliding-window perplexity, its normalisations and LAMBADA: hand-computed cases, a uniform model
(perplexity exactly V), and parity with a plain transformers loop on the tiny checkpoint."""

from __future__ import annotations

import math

import pytest
import torch

from gpt2xl.config import GPTConfig
from gpt2xl.errors import ConfigError
from gpt2xl.model import GPT
from gpt2xl.perplexity import (
    NLLResult,
    Window,
    encode_pair,
    lambada_eval,
    perplexity_report,
    score_spans,
    sliding_window_nll,
    span_batches,
    window_plan,
    window_spans,
    windows_nll,
)
from tests.conftest import SHARED_DATA

VOCAB = 97


@pytest.fixture(scope="module")
def uniform_model() -> GPT:
    """Tied embeddings all zero → every logit is 0 → the next-token distribution is uniform."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=16, vocab_size=VOCAB)).eval()
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
    return model


@pytest.fixture(scope="module")
def tinyshakespeare_ids() -> list[int]:
    from gpt2xl.data import eval_split, load_corpus

    return list(eval_split(load_corpus("tinyshakespeare", data_dir=SHARED_DATA)).token_ids)


# ---------------------------------------------------------------- window plan (hand-computed)


def test_window_plan_overlapping_stride_scores_every_token_but_the_first_once():
    plan = window_plan(10, max_length=4, stride=2)
    # HF loop: begin 0: end 4, trg 4 → scores 1..3; begin 2: end 6, trg 2 → 4..5;
    # begin 4: end 8 → 6..7; begin 6: end 10 → 8..9; stops at the end.
    assert plan == [
        Window(begin=0, end=4, first_scored=1),
        Window(begin=2, end=6, first_scored=4),
        Window(begin=4, end=8, first_scored=6),
        Window(begin=6, end=10, first_scored=8),
    ]
    assert sum(w.num_scored for w in plan) == 9


def test_window_plan_stride_equal_to_context_skips_each_windows_first_token():
    plan = window_plan(10, max_length=4, stride=4)
    assert plan == [
        Window(begin=0, end=4, first_scored=1),
        Window(begin=4, end=8, first_scored=5),
        Window(begin=8, end=10, first_scored=9),
    ]
    assert sum(w.num_scored for w in plan) == 10 - 3


def test_window_plan_edge_cases():
    assert window_plan(0, max_length=4, stride=2) == []
    assert window_plan(1, max_length=4, stride=2) == []
    assert window_plan(3, max_length=4, stride=2) == [Window(begin=0, end=3, first_scored=1)]
    with pytest.raises(ConfigError, match="stride"):
        window_plan(10, max_length=4, stride=5)
    with pytest.raises(ConfigError):
        window_plan(10, max_length=4, stride=0)


# ---------------------------------------------------------------- uniform model: ppl == V


@pytest.mark.parametrize("stride", [16, 5])
def test_uniform_model_has_perplexity_exactly_vocab(uniform_model, stride):
    ids = [(7 * i) % VOCAB for i in range(100)]
    nll = sliding_window_nll(uniform_model, ids, stride=stride, batch_size=3)
    expected_scored = 99 if stride < 16 else 100 - nll.num_windows
    assert nll.tokens_scored == expected_scored
    assert nll.nll_sum == pytest.approx(expected_scored * math.log(VOCAB), rel=1e-6)
    report = perplexity_report(nll, num_words=50, num_bytes=400)
    assert report.token_perplexity == pytest.approx(VOCAB, rel=1e-6)
    assert report.bits_per_byte == pytest.approx(expected_scored * math.log2(VOCAB) / 400, rel=1e-6)
    assert report.word_perplexity == pytest.approx(VOCAB ** (expected_scored / 50), rel=1e-6)


def test_perplexity_report_definitions_by_hand():
    nll = NLLResult(nll_sum=20.0, tokens_scored=10, num_tokens=11, num_windows=1, context_length=16, stride=16)
    r = perplexity_report(nll, num_words=5, num_bytes=40)
    assert r.token_perplexity == pytest.approx(math.exp(2.0))
    assert r.word_perplexity == pytest.approx(math.exp(4.0))
    assert r.bits_per_byte == pytest.approx(20.0 / (40 * math.log(2)))
    assert r.to_dict()["mean_nll_nats"] == pytest.approx(2.0)


def test_text_too_short_scores_nothing_and_report_refuses(uniform_model):
    nll = sliding_window_nll(uniform_model, [5], batch_size=2)
    assert nll.tokens_scored == 0 and nll.nll_sum == 0.0
    with pytest.raises(ConfigError, match="No token"):
        perplexity_report(nll, num_words=1, num_bytes=1)
    with pytest.raises(ConfigError):
        perplexity_report(sliding_window_nll(uniform_model, [1, 2, 3]), num_words=0, num_bytes=3)


def test_score_spans_rejects_a_span_longer_than_context_plus_one(uniform_model):
    with pytest.raises(ConfigError, match="span"):
        score_spans(uniform_model, [(list(range(18)), 1)], batch_size=1)
    with pytest.raises(ConfigError):
        score_spans(uniform_model, [([1, 2], 2)], batch_size=1)


def test_span_batches_are_the_batches_score_spans_runs(uniform_model):
    spans = [([1, 2, 3, 4, 5], 1), ([1, 2, 3], 1), ([6, 7, 8, 9, 10], 2), ([1, 2], 1)]
    assert span_batches(spans, batch_size=2) == [[3, 1], [0, 2]]  # by length, ties in order, cut every 2
    calls: list[int] = []
    original = uniform_model.forward

    def counting(ids, *args, **kwargs):
        calls.append(ids.shape[0])
        return original(ids, *args, **kwargs)

    uniform_model.forward = counting
    try:
        score_spans(uniform_model, spans, batch_size=2)
    finally:
        del uniform_model.forward
    assert calls == [2, 2]


def test_a_scorer_elsewhere_is_reduced_as_here_and_a_missing_score_is_refused(uniform_model):
    ids = list(range(60))
    asked: list[int] = []

    def scorer(spans, *, batch_size, progress=False, progress_desc="scoring"):
        asked.append(len(spans))
        return score_spans(uniform_model, spans, batch_size=batch_size, progress=progress, progress_desc=progress_desc)

    there = sliding_window_nll(uniform_model, ids, stride=8, batch_size=3, scorer=scorer)
    assert there == sliding_window_nll(uniform_model, ids, stride=8, batch_size=3)
    plan = window_plan(60, max_length=16, stride=8)
    assert asked == [len(plan)]
    scored = score_spans(uniform_model, window_spans(ids, plan), batch_size=3)
    with pytest.raises(ConfigError, match="windows but"):
        windows_nll(plan, scored[:-1], num_tokens=60, context_length=16, stride=8)


def test_progress_callback_counts_windows(uniform_model):
    seen = []
    sliding_window_nll(uniform_model, list(range(60)), stride=8, batch_size=2, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] == len(window_plan(60, max_length=16, stride=8))


# ---------------------------------------------------------------- trained tiny model


def test_batching_does_not_change_the_result(tiny_shakespeare, tinyshakespeare_ids):
    ids = tinyshakespeare_ids[:400]
    one = sliding_window_nll(tiny_shakespeare.model, ids, stride=50, batch_size=1)
    many = sliding_window_nll(tiny_shakespeare.model, ids, stride=50, batch_size=16)
    assert one.tokens_scored == many.tokens_scored == 399
    assert many.nll_sum == pytest.approx(one.nll_sum, rel=1e-6)


def _hf_reference(hf_model, ids: list[int], *, max_length: int, stride: int) -> tuple[float, int]:
    """The Hugging Face perplexity guide's loop, token-weighted: loss * (labels scored)."""
    input_ids = torch.tensor(ids)[None]
    seq_len = input_ids.size(1)
    nll_sum, n_scored, prev_end = 0.0, 0, 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        window = input_ids[:, begin:end]
        labels = window.clone()
        labels[:, :-trg_len] = -100
        with torch.no_grad():
            loss = hf_model(window, labels=labels).loss
        k = int((labels[:, 1:] != -100).sum())
        nll_sum += float(loss) * k
        n_scored += k
        prev_end = end
        if end == seq_len:
            break
    return nll_sum, n_scored


@pytest.mark.parametrize("stride", [128, 50])
def test_matches_transformers_reference_loop(tiny_shakespeare, tiny_shakespeare_dir, tinyshakespeare_ids, stride):
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(str(tiny_shakespeare_dir), local_files_only=True).eval()
    ids = tinyshakespeare_ids[:1500]
    ref_sum, ref_n = _hf_reference(hf, ids, max_length=hf.config.n_positions, stride=stride)
    ours = sliding_window_nll(tiny_shakespeare.model, ids, stride=stride, batch_size=8)
    assert ours.tokens_scored == ref_n
    assert math.exp(ours.mean_nll) == pytest.approx(math.exp(ref_sum / ref_n), rel=1e-4)


# ---------------------------------------------------------------- LAMBADA


class _Ex:
    def __init__(self, context: str, target: str) -> None:
        self.context, self.target = context, target


def test_encode_pair_moves_trailing_spaces_to_the_target():
    ctx, tgt = encode_pair("Hello ", "world")
    ctx2, tgt2 = encode_pair("Hello", " world")
    assert (ctx, tgt) == (ctx2, tgt2)
    assert len(tgt) == 1


def test_lambada_uniform_model_by_hand():
    # LAMBADA text uses real GPT-2 ids, so this uniform model has the full 50257-token vocabulary.
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=4, block_size=8)).eval()
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
    examples = [_Ex("one two three four five six seven eight nine ten", " eleven"), _Ex("x", " y")]
    result = lambada_eval(model, examples, batch_size=2)
    n_tokens = [len(encode_pair(e.context, e.target)[1]) for e in examples]
    v = model.config.vocab_size
    assert result.target_tokens == sum(n_tokens)
    assert result.perplexity == pytest.approx(math.exp(sum(n * math.log(v) for n in n_tokens) / 2), rel=1e-6)
    assert result.token_perplexity == pytest.approx(v, rel=1e-6)
    assert result.num_cropped == 1  # the first context is longer than 8 tokens
    assert result.accuracy == 0.0  # argmax of equal logits is token 0, never the target


def test_lambada_accuracy_on_a_memorised_continuation(tiny_shakespeare):
    with pytest.raises(ConfigError):
        lambada_eval(tiny_shakespeare.model, [], batch_size=2)
    result = lambada_eval(tiny_shakespeare.model, [_Ex("First Citizen:\nBefore we proceed any further, hear me", " speak")],
                          batch_size=1)
    assert result.num_examples == 1 and 0.0 <= result.accuracy <= 1.0 and result.perplexity > 1.0
