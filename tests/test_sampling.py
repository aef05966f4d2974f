"""Samplers: the pure functions, and both loops on the trained tiny checkpoint (top-p in detail:
test_top_p.py)."""

from __future__ import annotations

import pytest
import torch

from gpt2xl.errors import ConfigError
from gpt2xl.sampling import (
    SamplingConfig,
    generate,
    generate_reference,
    logits_to_probs,
    make_generator,
    sample_next,
)
from gpt2xl.tokenizer import encode

NEWLINE = 198  # greedy decoding of the tiny model falls into runs of "\n": a handy stop token


@pytest.mark.parametrize("k", [1, 3, 17])
def test_top_k_keeps_exactly_k_candidates_even_with_ties(k):
    logits = torch.tensor([[2.0] * 20 + [0.0] * 30, list(range(50))], dtype=torch.float32)  # row 0: 20-way tie
    probs = logits_to_probs(logits, temperature=1.0, top_k=k)
    assert (probs > 0).sum(dim=-1).tolist() == [k, k]
    assert torch.allclose(probs.sum(-1), torch.ones(2))
    assert set(torch.nonzero(probs[1]).flatten().tolist()) == set(range(50 - k, 50))


def test_top_k_none_zero_and_above_vocab_keep_everything():
    logits = torch.randn(3, 11, generator=torch.Generator().manual_seed(0))
    full = logits_to_probs(logits, temperature=0.7, top_k=None)
    for k in (0, 11, 10_000):
        torch.testing.assert_close(logits_to_probs(logits, temperature=0.7, top_k=k), full)
    torch.testing.assert_close(full, torch.softmax(logits / 0.7, dim=-1))


def test_top_k_one_and_temperature_zero_are_greedy():
    logits = torch.randn(4, 50257, generator=torch.Generator().manual_seed(1))
    greedy = logits.argmax(-1)
    assert torch.equal(sample_next(logits, temperature=0.0, top_k=None, generator=None), greedy)
    for seed in range(3):
        drawn = sample_next(logits, temperature=1.3, top_k=1, generator=make_generator(seed))
        assert torch.equal(drawn, greedy)


def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    cold = logits_to_probs(logits, temperature=0.1, top_k=None)[0, 2].item()
    hot = logits_to_probs(logits, temperature=10.0, top_k=None)[0, 2].item()
    assert cold > 0.99 and 1 / 3 < hot < 0.4


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(max_new_tokens=5, temperature=-0.1),
        dict(max_new_tokens=5, temperature=float("nan")),
        dict(max_new_tokens=5, top_k=-1),
        dict(max_new_tokens=-1),
        dict(max_new_tokens=5, top_k=2.5),
        dict(max_new_tokens=5, top_p=0.0),
        dict(max_new_tokens=5, top_p=1.5),
        dict(max_new_tokens=5, top_p=float("nan")),
    ],
)
def test_bad_sampling_values_are_refused(kwargs):
    with pytest.raises(ConfigError):
        SamplingConfig(**kwargs)


@pytest.mark.parametrize("top_p", [None, 0.9])
def test_same_seed_same_output_other_seed_other_output(tiny_shakespeare, top_p):
    model = tiny_shakespeare.model
    prompt = [encode("ROMEO:\n")] * 3
    cfg = SamplingConfig(max_new_tokens=30, temperature=1.0, top_k=100, top_p=top_p, stop_at_eot=False)
    a = generate(model, prompt, cfg, generator=make_generator(7)).tokens
    b = generate(model, prompt, cfg, generator=make_generator(7)).tokens
    c = generate(model, prompt, cfg, generator=make_generator(8)).tokens
    assert a == b and a != c
    assert len({tuple(row) for row in a}) == 3  # rows of one batch draw independently


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(0.0, None, None), (0.8, 40, None), (1.0, None, None), (1.5, 5, None), (1.0, None, 0.9), (1.2, 50, 0.8)],
)
def test_reference_and_cached_samplers_agree(tiny_shakespeare, temperature, top_k, top_p):
    model = tiny_shakespeare.model
    prompt = [encode("JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?")] * 2
    # 140 new tokens run past the 128-token context: both loops must crop the same way.
    cfg = SamplingConfig(max_new_tokens=140, temperature=temperature, top_k=top_k, top_p=top_p, stop_at_eot=False)
    ref = generate_reference(model, prompt, cfg, generator=make_generator(3))
    cached = generate(model, prompt, cfg, generator=make_generator(3))
    assert ref.tokens == cached.tokens
    assert ref.steps == cached.steps == 140


def test_end_of_text_stops_each_sequence_on_its_own(tiny_shakespeare):
    model = tiny_shakespeare.model
    prompts = [encode("KING HENRY:\nWhat say you"), encode("First Citizen:\nBefore we proceed any further, hear me")]
    free = generate(model, prompts, SamplingConfig(max_new_tokens=40, temperature=0.0, stop_at_eot=False))
    first_stop = [row.index(NEWLINE) for row in free.tokens]
    assert first_stop[0] != first_stop[1]  # the rows stop at different steps
    stopped = generate(model, prompts, SamplingConfig(max_new_tokens=40, temperature=0.0, eot_id=NEWLINE))
    assert stopped.hit_eot == [True, True]
    assert stopped.tokens == [row[:i] for row, i in zip(free.tokens, first_stop)]
    assert stopped.steps == max(first_stop) + 1  # the loop ends once every row has stopped
    ref = generate_reference(model, [prompts[0]], SamplingConfig(max_new_tokens=40, temperature=0.0, eot_id=NEWLINE))
    assert ref.tokens == [stopped.tokens[0]] and ref.hit_eot == [True]


def test_ragged_batch_equals_one_prompt_at_a_time(tiny_shakespeare):
    model = tiny_shakespeare.model
    prompts = [encode("ROMEO:"), encode("Now is the winter of our discontent\nMade glorious summer"), encode("A")]
    cfg = SamplingConfig(max_new_tokens=25, temperature=0.0, stop_at_eot=False)
    batched = generate(model, prompts, cfg).tokens
    assert batched == [generate(model, [p], cfg).tokens[0] for p in prompts]


def test_long_and_empty_prompts(tiny_shakespeare):
    model = tiny_shakespeare.model
    long_prompt = encode("To be, or not to be, that is the question. " * 40)  # ~440 tokens > 128 context
    cfg = SamplingConfig(max_new_tokens=10, temperature=0.0, stop_at_eot=False)
    out = generate(model, [long_prompt], cfg)
    assert out.prompt_tokens[0] == long_prompt[-128:]
    assert out.tokens == generate(model, [long_prompt[-128:]], cfg).tokens
    empty = generate(model, [[]], cfg)
    assert empty.prompt_tokens == [[50256]] and len(empty.tokens[0]) == 10
    assert generate(model, [long_prompt], SamplingConfig(max_new_tokens=0)).tokens == [[]]


def test_timings_are_reported(tiny_shakespeare):
    out = generate(tiny_shakespeare.model, [[1, 2, 3]] * 2, SamplingConfig(max_new_tokens=8, stop_at_eot=False))
    assert out.prefill_s > 0 and out.decode_s > 0
    assert out.decode_tokens_per_s == pytest.approx(2 * 7 / out.decode_s)
    assert out.tokens_per_s == pytest.approx(2 * 8 / (out.prefill_s + out.decode_s))
