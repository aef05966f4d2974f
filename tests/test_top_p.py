"""Nucleus (top-p) sampling: hand-computed cases, HF's own warpers, and HF ``generate``.

The rule under test (``sampling.logits_to_probs``): after temperature and top-k, keep the
smallest set of the most likely tokens whose probability reaches p (>= p), renormalise over it;
equal probabilities rank by token id, the higher id first; p = 1 (or None) changes nothing.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GPT2LMHeadModel
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from gpt2xl.errors import ConfigError
from gpt2xl.sampling import SamplingConfig, generate, generate_reference, logits_to_probs, make_generator
from gpt2xl.tokenizer import encode

# Token i's probability at temperature 1; ranked: id 1 (0.5), id 3 (0.3), id 0 (0.15), id 2 (0.05).
PROBS = [0.15, 0.5, 0.05, 0.3]
LOGITS = torch.tensor([[math.log(q) for q in PROBS]])


def nucleus(p: float, *, temperature: float = 1.0, top_k: int | None = None, logits=LOGITS) -> torch.Tensor:
    return logits_to_probs(logits, temperature=temperature, top_k=top_k, top_p=p)


def hf_probs(logits: torch.Tensor, *, temperature: float, top_k: int | None, top_p: float) -> torch.Tensor:
    """HF's warpers in the order ``generate`` builds them, then its softmax."""
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    warpers.append(TopPLogitsWarper(top_p))
    no_ids = torch.LongTensor(logits.shape[0], 0)  # the warpers ignore the tokens so far
    return torch.softmax(warpers(no_ids, logits.float()), dim=-1)


# --- hand-computed distributions --------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (1e-9, [0, 1, 0, 0]),  # a tiny p keeps the most likely token only
        (0.4, [0, 1, 0, 0]),  # 0.5 already reaches 0.4
        (0.6, [0, 0.5 / 0.8, 0, 0.3 / 0.8]),  # 0.5 < 0.6 <= 0.5 + 0.3
        (0.85, [0.15 / 0.95, 0.5 / 0.95, 0, 0.3 / 0.95]),  # 0.8 < 0.85 <= 0.95
        (0.99, PROBS),  # needs all four
    ],
)
def test_kept_set_is_the_smallest_reaching_p_renormalised(p, expected):
    torch.testing.assert_close(nucleus(p), torch.tensor([expected], dtype=torch.float32))


def test_temperature_applies_before_top_p():
    # T=2: probabilities ~ sqrt(PROBS) = [0.208, 0.379, 0.120, 0.294]: 0.379 no longer reaches 0.4.
    tempered = torch.tensor([[math.sqrt(q) for q in PROBS]])
    tempered /= tempered.sum()
    kept = tempered * torch.tensor([[0, 1, 0, 1]])
    torch.testing.assert_close(nucleus(0.4, temperature=2.0), kept / kept.sum())
    torch.testing.assert_close(nucleus(0.4, temperature=1.0), torch.tensor([[0.0, 1, 0, 0]]))


def test_top_k_applies_before_top_p():
    # top-2 leaves ids 1 and 3 at 0.625 / 0.375, and 0.625 reaches 0.6: only id 1 stays. Top-p on
    # the full distribution first (0.5 < 0.6) would have kept both.
    torch.testing.assert_close(nucleus(0.6, top_k=2), torch.tensor([[0.0, 1, 0, 0]]))
    torch.testing.assert_close(nucleus(0.7, top_k=2), torch.tensor([[0, 0.625, 0, 0.375]]))


@pytest.mark.parametrize(
    ("p", "kept"),
    [(1e-9, [3]), (0.2, [3]), (0.3, [2, 3]), (0.5, [2, 3]), (0.6, [1, 2, 3]), (0.75, [1, 2, 3]), (0.8, [0, 1, 2, 3])],
)
def test_ties_keep_only_as_many_as_needed_higher_ids_first(p, kept):
    four = torch.zeros(1, 4)  # four tokens of exactly 0.25: the mass reaches p at exact multiples of 0.25
    probs = nucleus(p, logits=four)
    assert torch.nonzero(probs[0]).flatten().tolist() == kept
    torch.testing.assert_close(probs[0, kept], torch.full((len(kept),), 1 / len(kept)))
    # HF's TopPLogitsWarper keeps the same tokens on a row this short (its sort leaves ties in place).
    assert torch.equal(probs > 0, hf_probs(four, temperature=1.0, top_k=None, top_p=p) > 0)


def test_ties_on_a_long_row_are_deterministic_and_as_many_as_hf_keeps():
    # 0.170 for id 0, then 36 tokens of 0.0230: 0.170 + 5 x 0.0230 < 0.3 <= 0.170 + 6 x 0.0230.
    row = torch.tensor([[3.0] + [1.0] * 36])
    probs = nucleus(0.3, logits=row)
    assert torch.nonzero(probs[0]).flatten().tolist() == [0, 31, 32, 33, 34, 35, 36]
    # HF's unstable sort picks other tied ids on this row, but as many of them.
    assert int((hf_probs(row, temperature=1.0, top_k=None, top_p=0.3) > 0).sum()) == 7


def test_a_huge_temperature_ranks_by_the_logits_it_rounds_together():
    # At T=1e45 the two probabilities round to 0.5 each: a nucleus of 0.5 is the larger logit.
    probs = nucleus(0.5, temperature=1e45, logits=torch.tensor([[0.0, -1.0]]))
    assert torch.equal(probs, torch.tensor([[1.0, 0.0]]))


def test_the_most_likely_token_survives_any_p_even_when_nearly_uniform():
    logits = torch.randn(3, 50257, generator=torch.Generator().manual_seed(0))
    for p in (5e-324, 1e-12, 1e-6):
        probs = logits_to_probs(logits, temperature=1e3, top_k=None, top_p=p)  # top token ~2e-5
        assert torch.equal(probs, torch.nn.functional.one_hot(logits.argmax(-1), 50257).float())


@pytest.mark.parametrize("temperature", [5e-324, 1e-30, 0.7, 1.0, 3.0, 1e308])
@pytest.mark.parametrize("top_k", [None, 0, 1, 40, 50257])
def test_p_one_is_exactly_no_top_p(temperature, top_k):
    logits = torch.randn(2, 50257, generator=torch.Generator().manual_seed(1)) * 4
    off = logits_to_probs(logits, temperature=temperature, top_k=top_k)
    assert torch.equal(logits_to_probs(logits, temperature=temperature, top_k=top_k, top_p=1.0), off)
    assert torch.equal(logits_to_probs(logits, temperature=temperature, top_k=top_k, top_p=1), off)
    assert torch.equal(logits_to_probs(logits, temperature=temperature, top_k=top_k, top_p=None), off)


# --- against HF's warpers ---------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.5, 0.8, 1.0, 1.7])
@pytest.mark.parametrize("top_k", [None, 1, 5, 50, 400])
def test_equals_hf_warpers_on_random_logits(temperature, top_k):
    g = torch.Generator().manual_seed(int(temperature * 100) + (top_k or 0))
    logits = torch.randn(4, 1000, generator=g) * 3
    for p in (0.05, 0.3, 0.6, 0.9, 0.95, 0.999):
        ours = logits_to_probs(logits, temperature=temperature, top_k=top_k, top_p=p)
        want = hf_probs(logits, temperature=temperature, top_k=top_k, top_p=p)
        assert torch.equal(ours > 0, want > 0), (temperature, top_k, p)
        torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-7)


def test_equals_hf_warpers_on_a_full_vocabulary():
    logits = torch.randn(2, 50257, generator=torch.Generator().manual_seed(2)) * 2
    for temperature, top_k, p in [(1.0, None, 0.9), (0.7, 640, 0.95), (1.3, 40, 0.5), (0.9, None, 0.99)]:
        ours = logits_to_probs(logits, temperature=temperature, top_k=top_k, top_p=p)
        want = hf_probs(logits, temperature=temperature, top_k=top_k, top_p=p)
        assert torch.equal(ours > 0, want > 0), (temperature, top_k, p)
        torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-7)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    logits=st.lists(st.floats(min_value=-30, max_value=30, width=32), min_size=1, max_size=16),
    temperature=st.floats(min_value=0.05, max_value=20),
    top_p=st.floats(min_value=1e-6, max_value=1.0),
)
def test_nucleus_properties(logits, temperature, top_p):
    row = torch.tensor([logits])
    base = logits_to_probs(row, temperature=temperature, top_k=None)[0].double()
    probs = logits_to_probs(row, temperature=temperature, top_k=None, top_p=top_p)[0].double()
    kept = probs > 0
    assert kept[base == base.max()].any()  # the most likely token always stays (of tied ones, the highest id)
    mass = base[kept].sum().item()
    assert mass >= top_p - 1e-5  # reaches p ...
    assert mass - base[kept].min().item() < top_p + 1e-5  # ... and no kept token could go
    if (~kept).any():
        assert base[kept].min() >= base[~kept].max()  # the most likely tokens, no gaps
    torch.testing.assert_close(probs[kept], base[kept] / mass, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bad", [0, 0.0, -1, -1e-300, 1.5, 1 + 1e-9, float("nan"), float("inf"), True, "0.9"])
def test_out_of_range_top_p_is_refused(bad):
    with pytest.raises(ConfigError, match="top_p must be a number > 0 and <= 1"):
        SamplingConfig(max_new_tokens=1, top_p=bad)
    with pytest.raises(ConfigError, match="top_p must be a number > 0 and <= 1"):
        logits_to_probs(LOGITS, temperature=1.0, top_k=None, top_p=bad)


def test_valid_top_p_values_are_accepted():
    for good in (None, 5e-324, 0.5, 1, 1.0):
        assert SamplingConfig(max_new_tokens=1, top_p=good).top_p == good


# --- the loops, and HF generate on the trained checkpoint ----------------------------------------


SETTINGS = [(1.0, None, 0.9), (0.8, 40, 0.95), (1.3, 100, 0.5)]  # (temperature, top_k, top_p)


@pytest.fixture(scope="module")
def hf_tiny_shakespeare(tiny_shakespeare_dir) -> GPT2LMHeadModel:
    return GPT2LMHeadModel.from_pretrained(tiny_shakespeare_dir).eval()


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), SETTINGS)
def test_same_tokens_as_hf_generate(hf_tiny_shakespeare, tiny_shakespeare, temperature, top_k, top_p):
    """HF samples with ``torch.multinomial`` on the default generator, one draw per row per step,
    as we do on ours: seeded alike, both consume the same random numbers, so the tokens match."""
    hf = hf_tiny_shakespeare
    prompt = encode("ROMEO:\nWhat light through yonder window breaks?")
    n = 40
    torch.manual_seed(11)
    want = hf.generate(
        torch.tensor([prompt] * 2), max_new_tokens=n, do_sample=True, temperature=temperature,
        top_k=top_k or 0, top_p=top_p, pad_token_id=50256, eos_token_id=None,
    )[:, len(prompt):].tolist()
    cfg = SamplingConfig(max_new_tokens=n, temperature=temperature, top_k=top_k, top_p=top_p, stop_at_eot=False)
    got = generate(tiny_shakespeare.model, [prompt] * 2, cfg, generator=make_generator(11))
    assert got.tokens == want
    no_top_p = SamplingConfig(max_new_tokens=n, temperature=temperature, top_k=top_k, stop_at_eot=False)
    assert generate(tiny_shakespeare.model, [prompt] * 2, no_top_p, generator=make_generator(11)).tokens != want


def test_tiny_top_p_decodes_greedily_in_both_loops(tiny_shakespeare):
    model = tiny_shakespeare.model
    prompt = [encode("KING HENRY:\nWhat say you")]
    greedy = generate(model, prompt, SamplingConfig(max_new_tokens=30, temperature=0.0, stop_at_eot=False)).tokens
    cfg = SamplingConfig(max_new_tokens=30, temperature=1.5, top_p=1e-9, stop_at_eot=False)
    assert generate(model, prompt, cfg, generator=make_generator(0)).tokens == greedy
    assert generate_reference(model, prompt, cfg, generator=make_generator(0)).tokens == greedy
