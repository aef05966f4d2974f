"""The HF baseline runs on our weights in its native layout and computes the same logits; its two
modes (eager with HF's dynamic cache, and the static cache that hf-compiled compiles on CUDA) give
the same tokens, time each step, and record whether every logit was finite."""

from __future__ import annotations

import pytest
import torch

from bench.hf_baseline import HF_COMPILED, HF_EAGER, HFMode, build_hf_model, hf_generate_timed, hf_weight_layout
from gpt2xl.errors import ConfigError
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


# --- the static-cache path of "hf-compiled", and how each HF mode calls generate -----------------

PROMPTS = [[464, 5044, 286, 262, 1578, 2351, 11, 290], [40, 716, 407, 257, 582, 11, 475, 257]]  # 2 rows, 8 ids


def _static_cache_seen(hf) -> list[bool]:
    """A forward hook's record, one entry per forward, of whether that call got a StaticCache
    (its keyword is ``past_key_values`` or ``cache`` depending on the transformers release)."""
    from transformers import StaticCache

    seen: list[bool] = []
    hf.transformer.register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.append(any(isinstance(v, StaticCache) for v in kwargs.values())),
        with_kwargs=True,
    )
    return seen


def test_static_cache_without_compile_gives_the_eager_and_our_tokens(tiny_shakespeare_dir) -> None:
    """hf-compiled's path minus the compile (disable_compile): on the trained fixture its greedy
    tokens are HF eager's and ours, its sampled tokens HF eager's for the same seed, and the timing
    still splits into a prefill and one step per later token."""
    from gpt2xl.sampling import SamplingConfig, generate

    loaded = load_model(str(tiny_shakespeare_dir), autotune="off")
    hf = build_hf_model(loaded.model)
    ours = generate(loaded.model, PROMPTS, SamplingConfig(max_new_tokens=16, temperature=0, stop_at_eot=False))
    eager = hf_generate_timed(hf, PROMPTS, new_tokens=16, temperature=0)
    seen = _static_cache_seen(hf)
    static = hf_generate_timed(hf, PROMPTS, new_tokens=16, temperature=0, mode=HFMode(static_cache=True))
    assert seen and all(seen)  # every forward, prefill and decode, ran on a StaticCache
    assert static.tokens == eager.tokens == ours.tokens
    assert len(set(map(tuple, static.tokens))) == 2  # two different continuations: not a degenerate fixture
    assert len(static.token_times_s) == 16 and list(static.token_times_s) == sorted(static.token_times_s)
    assert static.prefill_s == static.token_times_s[0] > 0 and static.decode_s > 0
    assert static.prefill_s + static.decode_s == pytest.approx(static.total_s)
    assert len(static.step_s) == 15 and all(s > 0 for s in static.step_s)
    assert sum(static.step_s) <= static.decode_s  # the steps sit inside the decode time
    assert static.logits_finite is True
    sampled = [hf_generate_timed(hf, PROMPTS, new_tokens=12, temperature=0.8, top_k=40, seed=7, mode=mode).tokens
               for mode in (HF_EAGER, HFMode(static_cache=True))]
    assert sampled[0] == sampled[1]


def test_how_each_mode_calls_generate() -> None:
    assert HF_EAGER.generate_kwargs(torch.device("cpu")) == {}
    assert HFMode(static_cache=True).generate_kwargs(torch.device("cpu")) == {
        "cache_implementation": "static", "disable_compile": True}
    cuda = HF_COMPILED.generate_kwargs(torch.device("cuda"))  # building the kwargs needs no GPU
    assert cuda["cache_implementation"] == "static" and "disable_compile" not in cuda
    # HF's default CompileConfig, every field pinned: what the record says is what generate gets
    assert cuda["compile_config"].to_dict() == {"fullgraph": False, "dynamic": None, "backend": "inductor",
                                                "mode": "reduce-overhead", "options": None}
    assert HF_COMPILED.record() == {"cache": "static", "compiled": True,
                                    "compile_config": cuda["compile_config"].to_dict(),
                                    "compile_all_devices": False, "attn_implementation": "sdpa"}
    assert HF_EAGER.record()["cache"] == "dynamic" and HF_EAGER.record()["compile_config"] is None


@pytest.mark.parametrize(("mode", "words"), [
    ({"compile": True}, "only with a static cache"),
    ({"static_cache": True, "compile": True, "compile_mode": "max-autotune"}, "compile_mode must be one of"),
    ({"static_cache": True, "compile_all_devices": True}, "only applies with compile=True"),
])
def test_impossible_modes_are_refused(mode, words) -> None:
    with pytest.raises(ConfigError, match=words):
        HFMode(**mode)


def test_compiling_off_cuda_needs_the_explicit_switch() -> None:
    """Without it HF would silently run eagerly while the record claimed a compile: refused
    before generate runs."""
    loaded = load_model("random:tiny", seed=0, autotune="off")
    hf = build_hf_model(loaded.model)
    calls = []
    hf.generate = lambda *_a, **k: calls.append(k)  # never reached
    with pytest.raises(ConfigError, match="compiles its decoding forward on CUDA only"):
        hf_generate_timed(hf, [[1, 2, 3]], new_tokens=4, mode=HF_COMPILED)
    assert calls == []


def test_non_finite_logits_are_recorded() -> None:
    loaded = load_model("random:tiny", seed=0, autotune="off")
    hf = build_hf_model(loaded.model)
    assert hf_generate_timed(hf, [[1, 2, 3]], new_tokens=4, temperature=0).logits_finite is True
    with torch.no_grad():
        loaded.model.transformer.ln_f.weight[0] = float("nan")  # shared with HF: every logit turns NaN
    assert hf_generate_timed(hf, [[1, 2, 3]], new_tokens=4, temperature=0).logits_finite is False


@pytest.mark.slow
def test_forced_compile_on_cpu_compiles_once_and_keeps_the_tokens(tiny_shakespeare_dir) -> None:
    """HF's own compile of the decoding forward, forced on the CPU (no CUDA graphs: mode
    "default"): the first call compiles, the second reuses it, and the tokens stay eager's.
    About 30 s on 2 cores, nearly all of it the compile."""
    loaded = load_model(str(tiny_shakespeare_dir), autotune="off")
    hf = build_hf_model(loaded.model)
    eager = hf_generate_timed(hf, PROMPTS, new_tokens=8, temperature=0)
    # the one place that compiles off CUDA: HF's own switch, set by the explicit argument
    forced = HFMode(static_cache=True, compile=True, compile_mode="default", compile_all_devices=True)
    assert forced.generate_kwargs(torch.device("cpu"))["compile_config"]._compile_all_devices is True
    timings, graphs = _compiled_calls(hf, mode=forced, new_tokens=8, calls=2)
    for timing in timings:
        assert timing.tokens == eager.tokens
    assert graphs[0] >= 1 and graphs[1] == 0


def _compiled_calls(hf, *, mode, new_tokens: int, calls: int):
    """``calls`` greedy generate calls in ``mode``: their timings (every logit finite) and the
    graphs torch compiled during each call."""
    from bench.harness import compile_counts

    timings, graphs = [], []
    for _ in range(calls):
        before = compile_counts()[0]
        timing = hf_generate_timed(hf, PROMPTS, new_tokens=new_tokens, temperature=0, mode=mode)
        graphs.append(compile_counts()[0] - before)
        assert timing.logits_finite is True
        timings.append(timing)
    return timings, graphs


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_hf_compiled_on_cuda_compiles_in_the_first_call_and_matches_eager(tiny_shakespeare_dir) -> None:
    """The bench's hf-compiled mode as it runs on a GPU (static cache, HF's compile, CUDA
    graphs): fp32 greedy tokens equal HF eager's, the compile happens in the first call only,
    and every logit is finite."""
    loaded = load_model(str(tiny_shakespeare_dir), device="cuda", autotune="off")
    hf = build_hf_model(loaded.model)
    eager = hf_generate_timed(hf, PROMPTS, new_tokens=12, temperature=0)
    timings, graphs = _compiled_calls(hf, mode=HF_COMPILED, new_tokens=12, calls=3)
    for timing in timings:
        assert timing.tokens == eager.tokens
        assert timing.decode_s > 0 and len(timing.step_s) == 11
    assert graphs[0] >= 1 and graphs[1:] == [0, 0]
