"""The HF baseline runs on our weights in its native layout and computes the same logits."""

from __future__ import annotations

import pytest
import torch

from bench.hf_baseline import build_hf_model, hf_generate_timed, hf_weight_layout
from gpt2xl.weights import load_model


@pytest.mark.parametrize(
    ("dtype", "layout", "native", "shared", "atol"),
    [
        ("fp32", "in_out", True, True, 1e-5),  # stored as HF's own [in, out]: shared
        ("fp32", "out_in", True, False, 1e-5),  # HF gets its native [in, out] copy
        ("bf16", "out_in", True, False, 2e-2),
        ("bf16", "out_in", False, True, 2e-2),  # or, for layout studies, views of ours
    ],
)
def test_hf_model_on_our_weights_gives_our_logits(dtype, layout, native, shared, atol) -> None:
    loaded = load_model("random:tiny", dtype=dtype, seed=3, autotune="off", layout=layout)
    assert loaded.layout == layout
    hf = build_hf_model(loaded.model, native=native)
    assert hf_weight_layout(hf) == ("in_out" if native else layout)
    ours = loaded.model.transformer.h[0].attn.c_attn.weight
    assert (hf.transformer.h[0].attn.c_attn.weight.data_ptr() == ours.data_ptr()) == shared
    assert hf.lm_head.weight.data_ptr() == loaded.model.transformer.wte.weight.data_ptr()
    idx = torch.randint(0, loaded.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a = loaded.model(idx).float()
        b = hf(idx).logits.float()
    torch.testing.assert_close(b, a, atol=atol, rtol=1e-2 if dtype == "bf16" else 1e-5)


def test_hf_generate_fixed_length_timed_inside_one_call(monkeypatch) -> None:
    loaded = load_model("random:tiny", seed=0, autotune="off")
    hf = build_hf_model(loaded.model)
    calls = []
    generate = hf.generate
    monkeypatch.setattr(hf, "generate", lambda *a, **k: calls.append(k["max_new_tokens"]) or generate(*a, **k))
    timing = hf_generate_timed(hf, [[1, 2, 3, 4]] * 2, new_tokens=24, temperature=0.8, top_k=40, seed=0)
    assert calls == [24]  # one generate call: no separate max_new_tokens=1 prefill call
    assert timing.new_tokens == 24
    assert [len(t) for t in timing.tokens] == [24, 24]
    # one timestamp per generated token, in order; the first closes the prefill
    assert len(timing.token_times_s) == 24
    assert list(timing.token_times_s) == sorted(timing.token_times_s)
    assert timing.prefill_s == timing.token_times_s[0] > 0
    assert timing.decode_s > 0
    assert timing.prefill_s + timing.decode_s == pytest.approx(timing.total_s)


def test_hf_greedy_matches_our_greedy() -> None:
    from gpt2xl.sampling import SamplingConfig, generate

    loaded = load_model("random:tiny", seed=1, autotune="off")
    hf = build_hf_model(loaded.model)
    prompt = [[5, 6, 7, 8, 9]]
    ours = generate(loaded.model, prompt, SamplingConfig(max_new_tokens=10, temperature=0, stop_at_eot=False))
    theirs = hf_generate_timed(hf, prompt, new_tokens=10, temperature=0)
    assert theirs.tokens == ours.tokens
