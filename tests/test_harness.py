"""bench.harness without loading a model: rounds and their validity, medians and spreads by hand,
paired ratios, the end-of-run roofline, runners that skip with a reason, and whole cases measured
with stub runners that return degenerate timings (zero, negative, NaN)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench import harness
from bench.harness import (
    Round,
    SamplerUnavailable,
    finalize_roofline,
    make_runner,
    measure_case,
    measure_ratios,
    paired_ratios,
    sampler_record,
)
from bench.profiles import Case, get_profile

REPO = Path(__file__).resolve().parents[1]


def _round(decode_s: float, *, prefill_s: float = 0.1, new_tokens: int = 5, batch_size: int = 1) -> Round:
    return Round(prefill_s=prefill_s, decode_s=decode_s, new_tokens=new_tokens, batch_size=batch_size)


@pytest.mark.parametrize(("prefill_s", "decode_s", "new_tokens", "words"), [
    (0.1, 0.0, 5, "decode time 0.0"),
    (0.1, -0.2, 5, "decode time -0.2"),
    (0.1, math.nan, 5, "decode time nan"),
    (0.0, 1.0, 5, "prefill time 0.0"),
    (math.inf, 1.0, 5, "prefill time inf"),
    (0.1, 1.0, 1, "no decode step"),
])
def test_degenerate_rounds_are_invalid_with_a_reason(prefill_s, decode_s, new_tokens, words) -> None:
    r = Round(prefill_s=prefill_s, decode_s=decode_s, new_tokens=new_tokens, batch_size=1)
    assert not r.valid and words in r.invalid_reason
    assert r.decode_tokens_per_s is None and r.tokens_per_s is None


def test_round_rates() -> None:
    r = _round(2.0, prefill_s=0.5, new_tokens=9, batch_size=2)
    assert r.valid and r.decode_tokens_per_s == 8.0  # 2 rows x 8 tokens after the first / 2 s
    assert r.tokens_per_s == pytest.approx(18 / 2.5)


def test_sampler_record_medians_iqr_and_invalid_rounds_left_out() -> None:
    # decode tok/s = 4 / decode_s: 4, 8, 2, 16 -> sorted 2, 4, 8, 16: median 6, q1 3.5, q3 10 (IQR 6.5)
    rounds = [_round(1.0), _round(0.5), _round(2.0), _round(0.25), _round(0.0), _round(math.nan)]
    rec = sampler_record(rounds, weight_bytes=1000, batch_size=1)
    assert rec["valid"] is True and rec["invalid_reason"] is None
    assert rec["rounds"] == 4 and len(rec["rounds_invalid"]) == 2
    assert rec["decode_tokens_per_s"] == 6.0
    assert rec["spread_kind"] == "iqr" and rec["decode_tokens_per_s_spread"] == pytest.approx(6.5)
    assert rec["prefill_s"] == pytest.approx(0.1) and rec["prefill_s_spread"] == pytest.approx(0.0)
    assert rec["decode_s"] == pytest.approx(0.75)  # median of 0.25, 0.5, 1, 2
    assert rec["decode_s_per_token"] == pytest.approx(0.75 / 4)
    assert rec["achieved_bytes_per_s"] == 6000.0
    two = sampler_record([_round(1.0), _round(0.5)], weight_bytes=1000, batch_size=1)
    assert two["spread_kind"] == "min-max" and two["decode_tokens_per_s_spread"] == 4.0  # 8 - 4


def test_sampler_record_with_no_valid_round_is_invalid_not_zero() -> None:
    rec = sampler_record([_round(0.0), _round(-1.0)], weight_bytes=1000, batch_size=1)
    assert rec["valid"] is False
    assert rec["invalid_reason"].startswith("no valid round of 2: decode time 0.0")
    for key in ("decode_tokens_per_s", "tokens_per_s", "prefill_s", "achieved_bytes_per_s"):
        assert rec[key] is None


def test_paired_ratios_use_rounds_where_both_are_valid() -> None:
    timed = {
        "cached": [_round(0.5), _round(0.5), _round(0.5)],  # 8 tok/s each
        "hf": [_round(1.0), _round(0.0), _round(2.0)],  # 4, invalid, 2 tok/s
        "reference": [_round(0.0), _round(math.nan), _round(-1.0)],  # never valid
    }
    ratios, missing = paired_ratios(timed)
    assert ratios["ours_vs_hf_decode"] == pytest.approx(3.0)  # median of 2 and 4
    assert ratios["ours_vs_hf_prefill"] == pytest.approx(1.0)
    assert "cached_vs_reference_decode" not in ratios
    assert "no round in which both cached and reference" in missing["cached_vs_reference_decode"]
    assert "ours_vs_llamacpp_decode" not in missing  # llama.cpp did not run: not a missing ratio


def test_finalize_roofline_with_an_engine_faster_than_every_probe() -> None:
    probe = {"label": "start", "device": "cpu", "measured_at": "t0", "rates": {"sum": 40e9, "threaded-dot": 45e9, "copy": 30e9}}
    ours = {"kind": "throughput", "sampler": "cached", "device": "cpu", "decode_tokens_per_s": 6.0,
            "achieved_bytes_per_s": 38e9}
    ratio_case = {"kind": "ratios", "sampler": "cached", "device": "cpu", "decode_tokens_per_s": 6.0,
                  "achieved_bytes_per_s": 38e9, "samplers": {
                      "cached": {"decode_tokens_per_s": 6.0, "achieved_bytes_per_s": 38e9},
                      "llamacpp": {"decode_tokens_per_s": 10.0, "achieved_bytes_per_s": 63e9},
                      "hf": {"valid": False, "decode_tokens_per_s": None, "achieved_bytes_per_s": None}}}
    doc = {"machine_info": {"gpt2xl": {"bandwidth_probes": [probe]}},
           "benchmarks": [{"name": "a", "extra_info": ours}, {"name": "b", "extra_info": ratio_case}]}
    finalize_roofline(doc)
    finalize_roofline(doc)  # idempotent (pytest-benchmark may write the JSON twice)
    basis = doc["machine_info"]["gpt2xl"]["roofline_basis"]["cpu"]
    assert basis["bytes_per_s"] == 63e9 and basis["source"].startswith("engine llamacpp")
    assert ours["roofline_fraction"] == pytest.approx(38 / 63)
    assert ratio_case["samplers"]["llamacpp"]["roofline_fraction"] == 1.0
    assert ratio_case["samplers"]["hf"]["roofline_fraction"] is None
    fractions = [ours["roofline_fraction"], *(s["roofline_fraction"] for s in ratio_case["samplers"].values())]
    assert all(f is None or 0 < f <= 1 for f in fractions)


# --- runners that cannot run a case skip with the reason ---------------------------------------

def _entry(model=None, *, device: str = "cpu") -> SimpleNamespace:
    model = model or SimpleNamespace(weight_bytes=lambda: 4000, config=SimpleNamespace(vocab_size=50, block_size=64))
    loaded = SimpleNamespace(model=model, device=torch.device(device), dtype=torch.float32, config=model.config,
                             source=SimpleNamespace(label="RANDOM weights (stub)", is_random=True), layout="out_in")
    entry = harness.ModelEntry(key=("random:stub", device, "fp32"), loaded=loaded, load_s=0.1, logits_finite=True)
    return entry


def _case(sampler: str = "cached", *, batch_size: int = 1, device: str = "cpu") -> Case:
    return Case(sampler=sampler, device=device, dtype="fp32", batch_size=batch_size, prompt_len=4, new_tokens=5)


def test_cached_plain_skips_when_the_plan_is_already_plain() -> None:
    plain = SimpleNamespace(kernels_active=lambda: False, kernels_off=lambda: None, weight_bytes=lambda: 1,
                            config=SimpleNamespace(vocab_size=50, block_size=64))
    with pytest.raises(SamplerUnavailable, match="would repeat the cached case"):
        make_runner(_entry(plain), _case("cached-plain"), seed=0)


def test_llamacpp_skips_other_batches_and_devices() -> None:
    with pytest.raises(SamplerUnavailable, match="batch 1 only"):
        make_runner(_entry(), _case("llamacpp", batch_size=2), seed=0)
    with pytest.raises(SamplerUnavailable, match="CPU only"):
        make_runner(_entry(), _case("llamacpp", device="cuda"), seed=0)


def test_llamacpp_skips_when_the_peer_module_is_missing(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "bench.llamacpp", None)  # import fails as if the file were absent
    with pytest.raises(SamplerUnavailable, match="not available in this build"):
        make_runner(_entry(), _case("llamacpp"), seed=0)
    assert harness.peers_info()["llamacpp"]["available"] is False


# --- whole cases with stub runners -------------------------------------------------------------

class _Benchmark:
    """pytest-benchmark's fixture, as far as the harness uses it."""

    def __init__(self) -> None:
        self.extra_info: dict = {}
        self.group = None

    def pedantic(self, fn, *, rounds: int, warmup_rounds: int, iterations: int) -> None:
        for _ in range(warmup_rounds + rounds):
            fn()


class _State:
    def __init__(self, entry) -> None:
        self.entry = entry
        self.seed = 0
        self.profile = get_profile("smoke")  # ratio_rounds = 2
        self.options = SimpleNamespace(autotune="cached")

    def model_for(self, case):
        return self.entry


def _stub(*decode_s: float):
    """A runner factory whose rounds take these decode times in turn (then the last, repeated)."""
    def factory(entry, case, seed):
        times = iter(decode_s)
        last = [decode_s[-1]]

        def run() -> Round:
            last[0] = next(times, last[0])
            return Round(prefill_s=0.05, decode_s=last[0], new_tokens=case.new_tokens, batch_size=case.batch_size)
        return run
    return factory


def _unavailable(entry, case, seed):
    raise SamplerUnavailable("not in this stub")


def test_a_case_whose_every_round_is_degenerate_is_recorded_invalid(monkeypatch) -> None:
    monkeypatch.setitem(harness.RUNNERS, "hf", _stub(0.0, 0.0))  # warm-up, then a zero decode
    bench = _Benchmark()
    with pytest.warns(UserWarning, match="invalid"):
        metrics = measure_case(bench, _State(_entry()), _case("hf"), rounds=2, warmup_rounds=1)
    assert metrics["valid"] is False and "decode time 0.0" in metrics["invalid_reason"]
    assert bench.extra_info["decode_tokens_per_s"] is None and bench.extra_info["kind"] == "throughput"


def test_interleaved_run_with_a_broken_sampler_keeps_the_others(monkeypatch) -> None:
    monkeypatch.setitem(harness.RUNNERS, "reference", _stub(2.0))
    monkeypatch.setitem(harness.RUNNERS, "cached", _stub(0.5))
    monkeypatch.setitem(harness.RUNNERS, "hf", _stub(1.0, math.nan, -1.0))  # warm-up fine, timed rounds broken
    for sampler in ("cached-plain", "llamacpp"):
        monkeypatch.setitem(harness.RUNNERS, sampler, _unavailable)
    bench = _Benchmark()
    with pytest.warns(UserWarning, match="hf: invalid"):
        metrics = measure_ratios(bench, _State(_entry()), _case())
    assert metrics["samplers"]["hf"]["valid"] is False
    assert metrics["samplers"]["cached"]["decode_tokens_per_s"] == 8.0
    assert metrics["ratios"] == {"cached_vs_reference_decode": 4.0}
    assert "ours_vs_hf_decode" in metrics["ratios_missing"]
    assert metrics["samplers_skipped"] == {"cached-plain": "not in this stub", "llamacpp": "not in this stub"}


def test_bench_suite_collects_under_strict_markers() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "bench", "--collect-only", "-q", "-p", "no:cacheprovider",
         "--bench-profile", "gate", "--bench-device", "cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "test_sampler_ratios[random:gpt2-cpu-fp32-cached-b1-p16-n24]" in proc.stdout
    assert "no-throughput-cases" in proc.stdout and "no-scaling-cases" in proc.stdout
