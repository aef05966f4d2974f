"""bench.harness without loading a model: rounds and their validity, medians and spreads by hand,
paired ratios, the end-of-run roofline, runners that skip with a reason, and whole cases measured
with stub runners that return degenerate timings (zero, negative, NaN)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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

    def check_budget(self, case) -> None:
        """No budget in these stubs (BenchState.check_budget has its own test)."""


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


# --- compiled samplers: warm-up, compile record, a compile inside a timed round ------------------

def _counting(monkeypatch, graphs_per_call: list[int]) -> None:
    """``compile_counts`` as if torch.compile made ``graphs_per_call[i]`` graphs in call i (and one
    graph break in the first call)."""
    calls = iter(graphs_per_call)
    state = {"graphs": 0, "breaks": 0, "reads": 0}

    def counts() -> tuple[int, int]:
        state["reads"] += 1
        if state["reads"] % 2 == 0:  # the read after a call: that call's graphs happened
            state["graphs"] += next(calls)
            state["breaks"] = 1
        return state["graphs"], state["breaks"]

    monkeypatch.setattr(harness, "compile_counts", counts)


def test_a_compiled_sampler_warms_up_first_and_records_its_compile(monkeypatch) -> None:
    monkeypatch.setitem(harness.RUNNERS, "hf-compiled", _stub(0.5))
    _counting(monkeypatch, [3, 0, 0, 0])  # compiles in the first warm-up round only
    bench = _Benchmark()
    metrics = measure_case(bench, _State(_entry()), _case("hf-compiled"), rounds=2, warmup_rounds=0)
    # smoke has warmup_rounds 0, but a compiled sampler gets compile_warmup_rounds (2)
    assert metrics["warmup_rounds"] == 2 and metrics["rounds"] == 2 and metrics["valid"] is True
    record = metrics["compile"]
    assert record["graphs_compiled_warmup"] == 3 and record["graphs_compiled_timed"] == 0
    assert record["graph_breaks"] == 1 and len(record["warmup_round_s"]) == 2
    assert metrics["compile_s_estimate"] == record["compile_s_estimate"]
    hf = metrics["hf_generate"]  # how HF ran: static cache of prompt + new slots, HF's compile config
    assert (hf["cache"], hf["compiled"], hf["static_cache_len"]) == ("static", True, 4 + 5)
    assert hf["compile_config"]["mode"] == "reduce-overhead"
    monkeypatch.setitem(harness.RUNNERS, "cached", _stub(0.5))
    plain = measure_case(_Benchmark(), _State(_entry()), _case("cached"), rounds=2, warmup_rounds=0)
    assert plain["warmup_rounds"] == 0 and plain["compile"] is None and plain["compile_s_estimate"] is None


def test_a_timed_round_that_compiled_is_invalid(monkeypatch) -> None:
    monkeypatch.setitem(harness.RUNNERS, "compiled", _stub(0.5))
    _counting(monkeypatch, [5, 0, 2, 1])  # recompiles in both timed rounds (a guard that keeps failing)
    with pytest.warns(UserWarning, match="invalid"):
        metrics = measure_case(_Benchmark(), _State(_entry()), _case("compiled"), rounds=2, warmup_rounds=1)
    assert metrics["valid"] is False
    assert "torch.compile compiled 2 graph(s) during this round" in metrics["invalid_reason"]
    assert metrics["decode_tokens_per_s"] is None
    assert metrics["compile"]["graphs_compiled_timed"] == 3


def test_logits_finiteness_over_every_round() -> None:
    def rounds(*flags):
        return [Round(prefill_s=0.1, decode_s=0.5, new_tokens=5, batch_size=1, logits_finite=f) for f in flags]

    assert harness.logits_finite_of(rounds(True, True)) is True
    assert harness.logits_finite_of(rounds(True, False, None)) is False
    assert harness.logits_finite_of(rounds(True, None)) is None
    assert harness.logits_finite_of([]) is None


def test_hf_compiled_skips_off_cuda() -> None:
    with pytest.raises(SamplerUnavailable, match="HF static cache \\+ compile is measured on CUDA only"):
        make_runner(_entry(), _case("hf-compiled"), seed=0)
    with pytest.raises(SamplerUnavailable, match="compiled sampler is measured on CUDA only"):
        make_runner(_entry(), _case("compiled"), seed=0)


def test_the_time_budget_skips_later_cases() -> None:
    profile = get_profile("cuda")
    state = harness.BenchState(harness.Options(profile=profile, model="random:gpt2-xl", devices=("cuda",), dtypes=None,
                                               probe_bytes=None, seed=0))
    case = profile.cases(devices=("cuda",), dtypes=None)[0]
    state.check_budget(case)  # within the profile's 360 s: nothing happens
    assert state.options.budget_s == 360.0 and state.budget_skipped == []
    state.started -= 361
    with pytest.raises(pytest.skip.Exception, match="time budget of 360 s is spent"):
        state.check_budget(case)
    assert state.budget_skipped == ["random:gpt2-xl-cuda-fp16-compiled-b1-p16-n64"]
    short = harness.Options(profile=profile, model="m", devices=("cuda",), dtypes=None, probe_bytes=None, seed=0,
                            time_budget_s=5.0)
    assert short.budget_s == 5.0  # --time-budget wins over the profile's


# --- profiles ----------------------------------------------------------------------------------

CUDA_B1 = ("compiled", "hf", "hf-compiled", "cached", "reference")


def test_the_cuda_profile_lists_exactly_the_issue_cases_targets_first() -> None:
    profile = get_profile("cuda")
    assert profile.devices == ("cuda",)
    cases = [(c.dtype, c.sampler, c.batch_size, c.prompt_len, c.new_tokens)
             for c in profile.cases(devices=("cpu", "cuda"), dtypes=None)]
    expected = [("fp16", s, 1, 16, 64) for s in CUDA_B1]
    expected += [("fp16", s, 16, 16, 64) for s in ("compiled", "hf", "hf-compiled", "cached")]
    expected += [(dtype, s, 1, 16, 64) for dtype in ("bf16", "fp32") for s in CUDA_B1]
    assert cases == expected
    assert profile.cases(devices=("cpu",), dtypes=None) == []  # nothing on the CPU
    assert profile.ratio_cases(devices=("cuda",), dtypes=None) == []  # no interleaved rerun of the compiles
    assert profile.scaling_cases(devices=("cpu", "cuda")) == []
    assert (profile.rounds, profile.warmup_rounds, profile.compile_warmup_rounds) == (3, 1, 2)
    # --dtype fp16 keeps its batch-16 points; --dtype bf16 has none
    assert len(profile.cases(devices=("cuda",), dtypes=("fp16",))) == 9
    assert len(profile.cases(devices=("cuda",), dtypes=("bf16",))) == 5


@pytest.mark.parametrize("name", ["smoke", "gate", "quick", "full", "cuda"])
def test_compiled_samplers_never_run_on_the_cpu(name: str) -> None:
    profile = get_profile(name)
    cpu = profile.cases(devices=("cpu",), dtypes=None) + profile.ratio_cases(devices=("cpu",), dtypes=None)
    assert not any(c.sampler in ("compiled", "hf-compiled") for c in cpu)
    assert not any(c.sampler in ("compiled", "hf-compiled") for c in profile.scaling_cases(devices=("cpu",)))
    cpu_ratio = Case(sampler="cached", device="cpu", dtype="fp32", batch_size=1, prompt_len=8, new_tokens=8)
    assert not {"compiled", "hf-compiled"} & set(harness.ratio_samplers(profile, cpu_ratio))


@pytest.mark.parametrize(("change", "words"), [
    ({"extra_points": {"fp16": (("cached", 16, 8, 8),)}}, "extra_points names fp16, which no device"),
    ({"extra_points": {"fp32": (("cached", 1, 8, 8),)}}, "points and extra_points of fp32 lists"),
    ({"extra_points": {"fp32": (("turbo", 4, 8, 8),)}}, "unknown sampler"),
    ({"extra_points": {"fp64": (("cached", 4, 8, 8),)}}, "Unknown dtype 'fp64'"),
    ({"extra_points": {"fp32": (("cached", 0, 8, 8),)}}, "integers >= 1"),
    ({"compile_warmup_rounds": 0}, "compile_warmup_rounds must be >= 1"),
    ({"time_budget_s": 0.0}, "time_budget_s must be a positive number"),
    ({"time_budget_s": math.inf}, "time_budget_s must be a positive number"),
    ({"dtypes": {"cpu": ()}}, "lists no dtype for any device"),
])
def test_bad_profiles_fail_at_definition(change, words) -> None:
    from bench.profiles import Profile
    from gpt2xl.errors import ConfigError

    base: dict[str, Any] = {"name": "t", "description": "t", "default_model": "random:tiny",
                            "dtypes": {"cpu": ("fp32",)}, "points": (("cached", 1, 8, 8),)}
    good = Profile(**{**base, "extra_points": {"fp32": (("cached", 4, 8, 8),)}})
    assert [c.batch_size for c in good.cases(devices=("cpu",), dtypes=None)] == [1, 4]
    with pytest.raises(ConfigError, match=words):
        Profile(**{**base, **change})


def test_the_cuda_suite_collects_in_profile_order() -> None:
    """What python -m bench --profile cuda runs on a GPU, collected here (collection needs none):
    pytest runs the cases in this order."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "bench", "--collect-only", "-q", "-p", "no:cacheprovider",
         "--bench-profile", "cuda", "--bench-device", "cuda", "--bench-model", "random:gpt2-xl"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ids = [line.split("[", 1)[1].rstrip("]") for line in proc.stdout.splitlines()
           if line.startswith("bench/test_throughput.py::test_throughput[")]
    profile = get_profile("cuda")
    assert ids == [c.id("random:gpt2-xl") for c in profile.cases(devices=("cuda",), dtypes=None)]
    assert ids[:3] == ["random:gpt2-xl-cuda-fp16-compiled-b1-p16-n64", "random:gpt2-xl-cuda-fp16-hf-b1-p16-n64",
                       "random:gpt2-xl-cuda-fp16-hf-compiled-b1-p16-n64"]
