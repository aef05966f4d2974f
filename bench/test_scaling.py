"""Decode cost vs generated length: the reference loop re-runs the whole context every step
(per-token cost grows with length, total cost quadratically); the KV-cached loop runs one token
per step (per-token cost stays flat). Measured on a small model so long outputs fit the budget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from bench.harness import BenchState, measure_case
from bench.profiles import Case

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture


@pytest.mark.bench_kind("scaling")
def test_decode_scaling(benchmark: BenchmarkFixture, bench_env: BenchState, bench_case: Case) -> None:
    # No warm-up rounds: the model had its untimed warm-up forward on load, and the trend
    # across lengths, not the last percent, is what this sweep shows.
    rounds = bench_env.profile.scaling_rounds
    measure_case(benchmark, bench_env, bench_case, rounds=rounds, warmup_rounds=0, kind="scaling")
