"""Throughput of the samplers: tokens/sec, prefill latency, memory, bandwidth, roofline.

Samplers: ``reference`` (textbook loop, no KV cache), ``cached`` (our KV-cached ``generate``),
``cached-linear`` (the same with split matmuls off), ``compiled`` (static cache + compiled step,
CUDA graphs; CUDA only) and ``hf`` (``transformers`` ``generate`` on the same weights: the
outside baseline). Every run
has a fixed length (end-of-text off / ``min_new_tokens``), top-k 40, temperature 0.8.

Every case stores its metrics in ``benchmark.extra_info`` (see :func:`case_metrics`); the
pytest-benchmark timing itself is of the whole call and is kept for its statistics only.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

from bench.conftest import BenchState, _Entry
from bench.hf_baseline import build_hf_model, hf_generate_timed, hf_weight_layout
from bench.profiles import Case
from gpt2xl.devices import device_name
from gpt2xl.hardware import peak_memory_bytes, reset_peak_memory
from gpt2xl.sampling import (
    SamplingConfig,
    decode_tokens_per_s,
    generate,
    generate_reference,
    make_generator,
    tokens_per_s,
)
from gpt2xl.static_decode import StaticDecoder, static_cache_len

TEMPERATURE = 0.8
TOP_K = 40


@dataclass(frozen=True, kw_only=True)
class Round:
    """One timed generation: ``new_tokens`` per row for ``batch_size`` rows."""

    prefill_s: float
    decode_s: float
    new_tokens: int
    batch_size: int

    @property
    def decode_tokens_per_s(self) -> float:
        return decode_tokens_per_s(batch_size=self.batch_size, steps=self.new_tokens, decode_s=self.decode_s)

    @property
    def tokens_per_s(self) -> float:
        return tokens_per_s(batch_size=self.batch_size, steps=self.new_tokens, prefill_s=self.prefill_s, decode_s=self.decode_s)


def make_prompts(case: Case, *, vocab_size: int, seed: int) -> list[list[int]]:
    """Random token ids (throughput does not depend on which tokens), same length every row."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (case.batch_size, case.prompt_len), generator=g).tolist()


def make_runner(entry: _Entry, case: Case, *, seed: int, sampler: str | None = None) -> Callable[[], Round]:
    """A zero-argument call that generates exactly ``case.new_tokens`` tokens with ``sampler``."""
    sampler = sampler or case.sampler
    loaded = entry.loaded
    prompts = make_prompts(case, vocab_size=loaded.config.vocab_size, seed=seed)
    cfg = SamplingConfig(max_new_tokens=case.new_tokens, temperature=TEMPERATURE, top_k=TOP_K, stop_at_eot=False)
    if sampler == "hf":
        if entry.hf is None:
            entry.hf = build_hf_model(loaded.model)
        hf = entry.hf

        def run() -> Round:
            t = hf_generate_timed(hf, prompts, new_tokens=case.new_tokens, temperature=TEMPERATURE, top_k=TOP_K, seed=seed)
            if t.new_tokens != case.new_tokens:
                raise RuntimeError(f"HF generate produced {t.new_tokens} tokens, expected {case.new_tokens}")
            return Round(prefill_s=t.prefill_s, decode_s=t.decode_s, new_tokens=t.new_tokens, batch_size=t.batch_size)

        return run
    loop = generate_reference if sampler == "reference" else generate
    # "cached-linear": the cached sampler with split matmuls off, to measure what splitting adds.
    split = loaded.split and sampler != "cached-linear"
    static = None
    if sampler == "compiled":  # one decoder for every round: compiling and graph capture happen once
        mode = "reduce-overhead" if loaded.device.type == "cuda" else "default"
        max_len = static_cache_len(case.prompt_len + case.new_tokens - 1, loaded.config.block_size)
        static = StaticDecoder(loaded.model, batch_size=case.batch_size, max_len=max_len, compile=mode)
    options = {"static": static} if static is not None else {}

    def run() -> Round:
        loaded.model.set_split(split)
        try:
            out = loop(loaded.model, prompts, cfg, generator=make_generator(seed, loaded.device), **options)
        finally:
            loaded.model.set_split(loaded.split)
        if out.steps != case.new_tokens:
            raise RuntimeError(f"{sampler} produced {out.steps} tokens, expected {case.new_tokens}")
        return Round(prefill_s=out.prefill_s, decode_s=out.decode_s, new_tokens=out.steps, batch_size=out.batch_size)

    return run


def split_active(entry: _Entry) -> bool:
    """Whether our samplers run split matmuls here: enabled for the model, and a second thread
    to split over (the gate and smoke profiles pin one thread)."""
    return entry.loaded.split and torch.get_num_threads() > 1


def case_metrics(state: BenchState, entry: _Entry, case: Case, rounds: list[Round], *, peak_bytes: int) -> dict[str, object]:
    """The per-case record: medians over timed rounds, plus the raw per-round values."""
    loaded = entry.loaded
    probe = state.probes[loaded.device.type]
    decode_tps = statistics.median(r.decode_tokens_per_s for r in rounds)
    weight_bytes = loaded.model.weight_bytes()
    # Every decode step streams all weights once for the whole batch, so bandwidth scales with
    # steps/s (tokens/s / batch), not with tokens/s.
    achieved = weight_bytes * decode_tps / case.batch_size
    decode_s = statistics.median(r.decode_s for r in rounds)
    return {
        "sampler": case.sampler,
        "model": entry.key[0],
        "weights_label": loaded.source.label,
        "weights_random": loaded.source.is_random,
        "device": case.device,
        "device_name": device_name(loaded.device),
        "dtype": case.dtype,
        "batch_size": case.batch_size,
        "prompt_len": case.prompt_len,
        "new_tokens": case.new_tokens,
        "temperature": TEMPERATURE,
        "top_k": TOP_K,
        "weight_layout": loaded.layout,
        "split": split_active(entry) and case.sampler not in ("hf", "cached-linear"),
        "hf_weight_layout": hf_weight_layout(entry.hf) if case.sampler == "hf" and entry.hf is not None else None,
        "rounds": len(rounds),
        "prefill_s": statistics.median(r.prefill_s for r in rounds),
        "decode_s": decode_s,
        "decode_s_per_token": decode_s / (case.new_tokens - 1) if case.new_tokens > 1 else None,
        "decode_tokens_per_s": decode_tps,
        "tokens_per_s": statistics.median(r.tokens_per_s for r in rounds),
        "rounds_prefill_s": [r.prefill_s for r in rounds],
        "rounds_decode_tokens_per_s": [r.decode_tokens_per_s for r in rounds],
        "rounds_tokens_per_s": [r.tokens_per_s for r in rounds],
        "peak_memory_bytes": peak_bytes,
        "weight_bytes": weight_bytes,
        "achieved_bytes_per_s": achieved,
        "bandwidth_bytes_per_s": probe.read_bytes_per_s,
        "roofline_fraction": achieved / probe.read_bytes_per_s,
        "logits_finite": entry.logits_finite,
        "load_s": entry.load_s,
        "threads": torch.get_num_threads(),
    }


def measure_case(
    benchmark, state: BenchState, case: Case, *, rounds: int, warmup_rounds: int, kind: str = "throughput"
) -> dict[str, object]:
    """Load (or reuse) the model, time ``case`` with pytest-benchmark, record its metrics."""
    entry = state.model_for(case)
    if not entry.logits_finite:
        pytest.fail(f"{case.dtype} logits of {entry.key[0]} on {case.device} contain NaN/inf")
    if case.sampler == "cached-linear" and not split_active(entry):
        pytest.skip(f"split matmuls are off for {case.device} {case.dtype} with {torch.get_num_threads()} thread(s): "
                    "cached-linear would repeat the cached case")
    run = make_runner(entry, case, seed=state.seed)
    done: list[Round] = []
    benchmark.group = f"{entry.key[0]} {case.device} {case.dtype}"
    reset_peak_memory(entry.loaded.device)
    benchmark.pedantic(lambda: done.append(run()), rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
    peak = peak_memory_bytes(entry.loaded.device)
    metrics = case_metrics(state, entry, case, done[warmup_rounds:], peak_bytes=peak)
    metrics["kind"] = kind
    benchmark.extra_info.update(metrics)
    return metrics


def test_throughput(benchmark, bench_env: BenchState, bench_case: Case) -> None:
    profile = bench_env.profile
    measure_case(benchmark, bench_env, bench_case, rounds=profile.rounds, warmup_rounds=profile.warmup_rounds)


test_throughput.bench_kind = "throughput"


def test_sampler_ratios(benchmark, bench_env: BenchState, bench_case: Case) -> None:
    """Reference, cached and HF in turn within every round, so a neighbour's load hits all three
    alike: the paired per-round ratios are what a gate on a shared machine can rely on."""
    profile = bench_env.profile
    entry = bench_env.model_for(bench_case)
    if not entry.logits_finite:
        pytest.fail(f"{bench_case.dtype} logits of {entry.key[0]} on {bench_case.device} contain NaN/inf")
    samplers = ["reference", "cached", "hf"]
    if split_active(entry):
        samplers.append("cached-linear")
    if bench_case.device == "cuda":
        samplers.append("compiled")
    runners = {s: make_runner(entry, bench_case, seed=bench_env.seed, sampler=s) for s in samplers}
    done: dict[str, list[Round]] = {s: [] for s in runners}

    def one_round() -> None:
        for sampler, run in runners.items():
            done[sampler].append(run())

    benchmark.group = f"{entry.key[0]} {bench_case.device} {bench_case.dtype} ratios"
    reset_peak_memory(entry.loaded.device)
    warmup = 1
    benchmark.pedantic(one_round, rounds=profile.ratio_rounds, warmup_rounds=warmup, iterations=1)
    peak = peak_memory_bytes(entry.loaded.device)
    timed = {s: rounds[warmup:] for s, rounds in done.items()}
    per_round = list(zip(timed["reference"], timed["cached"], timed["hf"]))
    metrics = case_metrics(bench_env, entry, bench_case, timed["cached"], peak_bytes=peak)
    metrics["kind"] = "ratios"
    metrics["samplers"] = {
        s: {
            "decode_tokens_per_s": statistics.median(r.decode_tokens_per_s for r in rs),
            "tokens_per_s": statistics.median(r.tokens_per_s for r in rs),
            "prefill_s": statistics.median(r.prefill_s for r in rs),
            "rounds_decode_tokens_per_s": [r.decode_tokens_per_s for r in rs],
        }
        for s, rs in timed.items()
    }
    metrics["ratios"] = {
        "cached_vs_reference_decode": statistics.median(c.decode_tokens_per_s / r.decode_tokens_per_s for r, c, _ in per_round),
        "ours_vs_hf_decode": statistics.median(c.decode_tokens_per_s / h.decode_tokens_per_s for _, c, h in per_round),
        "ours_vs_hf_tokens_per_s": statistics.median(c.tokens_per_s / h.tokens_per_s for _, c, h in per_round),
    }
    if "cached-linear" in timed:
        metrics["ratios"]["split_vs_linear_decode"] = statistics.median(
            c.decode_tokens_per_s / n.decode_tokens_per_s for c, n in zip(timed["cached"], timed["cached-linear"])
        )
    if "compiled" in timed:
        metrics["ratios"]["compiled_vs_hf_decode"] = statistics.median(
            c.decode_tokens_per_s / h.decode_tokens_per_s for c, h in zip(timed["compiled"], timed["hf"])
        )
    metrics["hf_weight_layout"] = hf_weight_layout(entry.hf)
    benchmark.extra_info.update(metrics)


test_sampler_ratios.bench_kind = "ratios"
