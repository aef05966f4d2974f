"""Throughput of the samplers: tokens/s, prefill latency, memory, bandwidth, roofline.

Samplers (``bench.profiles.SAMPLERS``): the textbook ``reference``, our ``cached`` sampler with the
autotuned kernels and ``cached-plain`` with them off, ``compiled`` (CUDA only), ``hf``
(``transformers`` ``generate`` on the same weights), ``hf-compiled`` (the same with a static cache
and HF's own compile; CUDA only) and llama.cpp on the same weights
(``llamacpp``, ``llamacpp-q8_0``). Fixed length (end-of-text off), top-k 40, temperature 0.8.
Each case's metrics land in ``benchmark.extra_info`` (see ``bench.harness``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from bench.harness import BenchState, measure_case, measure_ratios
from bench.profiles import Case

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture


@pytest.mark.bench_kind("throughput")
def test_throughput(benchmark: BenchmarkFixture, bench_env: BenchState, bench_case: Case) -> None:
    profile = bench_env.profile
    measure_case(benchmark, bench_env, bench_case, rounds=profile.rounds, warmup_rounds=profile.warmup_rounds)


@pytest.mark.bench_kind("ratios")
def test_sampler_ratios(benchmark: BenchmarkFixture, bench_env: BenchState, bench_case: Case) -> None:
    """Every available sampler in turn within each round; the paired per-round ratios."""
    measure_ratios(benchmark, bench_env, bench_case)
