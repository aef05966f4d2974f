"""bench.records: spreads by hand, ratios that never divide by a bad time, the roofline basis."""

from __future__ import annotations

import math

import pytest

from bench.records import (
    RATIOS,
    engine_candidates,
    invalid_reason,
    is_rate,
    probe_candidates,
    probe_summary,
    ratio_of,
    roofline_basis,
    roofline_fraction,
    summarize,
)


def test_is_rate() -> None:
    assert is_rate(1) and is_rate(0.5)
    for bad in (0, 0.0, -1.0, math.nan, math.inf, None, True, "3"):
        assert not is_rate(bad), bad


def test_summarize_iqr_from_four_rounds() -> None:
    # inclusive quartiles of 1, 2, 4, 8, 16: q1 = 2, q3 = 8 (positions 1 and 3 of 0..4)
    s = summarize([16.0, 1.0, 4.0, 2.0, 8.0])
    assert (s.median, s.kind, s.low, s.high, s.spread) == (4.0, "iqr", 2.0, 8.0, 6.0)
    # four rounds 1, 2, 3, 4: q1 = 1 + 0.75 * 1 = 1.75, q3 = 3.25, median 2.5
    s = summarize([4.0, 3.0, 2.0, 1.0])
    assert s.median == 2.5 and s.kind == "iqr"
    assert s.low == pytest.approx(1.75) and s.high == pytest.approx(3.25) and s.spread == pytest.approx(1.5)


def test_summarize_min_max_below_four_rounds_and_none_for_one() -> None:
    s = summarize([3.0, 1.0, 2.0])
    assert (s.median, s.kind, s.spread, s.low, s.high) == (2.0, "min-max", 2.0, 1.0, 3.0)
    s = summarize([5.0, 7.0])
    assert (s.median, s.kind, s.spread) == (6.0, "min-max", 2.0)
    s = summarize([5.0])
    assert (s.median, s.kind, s.spread) == (5.0, "none", 0.0)
    assert summarize([]) is None


def test_ratio_of_each_metric() -> None:
    ours = {"decode_tokens_per_s": 8.0, "prefill_s": 0.2, "tokens_per_s": 6.0}
    peer = {"decode_tokens_per_s": 10.0, "prefill_s": 0.3, "tokens_per_s": 5.0}
    assert ratio_of("ours_vs_llamacpp_decode", ours, peer) == pytest.approx(0.8)
    assert ratio_of("ours_vs_llamacpp_prefill", ours, peer) == pytest.approx(1.5)  # 0.3 s / 0.2 s: ours faster
    assert ratio_of("ours_vs_hf_tokens_per_s", ours, peer) == pytest.approx(1.2)
    with pytest.raises(KeyError):
        ratio_of("no_such_ratio", ours, peer)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, None])
def test_ratio_of_degenerate_timings_is_none_never_a_division(bad) -> None:
    good = {"decode_tokens_per_s": 8.0, "prefill_s": 0.2, "tokens_per_s": 6.0}
    for name in ("ours_vs_hf_decode", "ours_vs_hf_prefill", "ours_vs_hf_tokens_per_s"):
        metric = {"ours_vs_hf_decode": "decode_tokens_per_s", "ours_vs_hf_prefill": "prefill_s",
                  "ours_vs_hf_tokens_per_s": "tokens_per_s"}[name]
        broken = {**good, metric: bad}
        assert ratio_of(name, good, broken) is None
        assert ratio_of(name, broken, good) is None
    assert ratio_of("ours_vs_hf_decode", good, {**good, "valid": False}) is None


def test_invalid_reason() -> None:
    assert invalid_reason({"decode_tokens_per_s": 3.0, "prefill_s": 0.1}) is None
    assert invalid_reason({"valid": False, "invalid_reason": "no valid round of 2: x"}) == "no valid round of 2: x"
    assert "decode_tokens_per_s = 0.0" in invalid_reason({"decode_tokens_per_s": 0.0})
    assert "prefill_s = nan" in invalid_reason({"decode_tokens_per_s": 3.0, "prefill_s": math.nan})
    assert invalid_reason({"prefill_s": 0.1}) == "no decode rate recorded"
    # every time and speed is held to the one rule, the per-token decode time included
    assert "decode_s_per_token = 0" in (invalid_reason({"decode_tokens_per_s": 3.0, "decode_s_per_token": 0}) or "")


def test_every_ratio_names_known_samplers() -> None:
    from bench.profiles import SAMPLERS

    for name, d in RATIOS.items():
        assert d.numerator in SAMPLERS and d.denominator in SAMPLERS, name
        assert d.metric in ("decode", "prefill", "e2e") and d.description and d.label


def _probe(label: str, sum_: float, dot: float, copy: float, device: str = "cpu") -> dict:
    return {"label": label, "device": device, "measured_at": "t", "rates": {"sum": sum_, "threaded-dot": dot, "copy": copy}}


def test_probe_summary_median_max_spread() -> None:
    probes = [_probe("start", 40e9, 50e9, 30e9), _probe("between", 60e9, 55e9, 30e9), _probe("end", 50e9, 45e9, 33e9)]
    s = probe_summary(probes)["cpu"]
    assert s["sum"] == {"n": 3, "median": 50e9, "min": 40e9, "max": 60e9, "spread": pytest.approx(0.5)}
    assert s["copy"]["spread"] == pytest.approx(0.1)
    assert probe_summary([_probe("x", math.nan, 0.0, 1e9)])["cpu"] == {
        "copy": {"n": 1, "median": 1e9, "min": 1e9, "max": 1e9, "spread": 0.0}}


def test_basis_is_the_best_probe_or_engine_so_no_fraction_exceeds_one() -> None:
    probes = [_probe("start", 40e9, 48e9, 30e9), _probe("end", 42e9, 47e9, 31e9)]
    slow = {"device": "cpu", "sampler": "cached", "achieved_bytes_per_s": 30e9, "decode_tokens_per_s": 5.0}
    fast = {"device": "cpu", "sampler": "llamacpp", "achieved_bytes_per_s": 63e9, "decode_tokens_per_s": 10.0,
            "model": "random:gpt2-xl", "dtype": "fp32"}
    broken = {"device": "cpu", "sampler": "hf", "achieved_bytes_per_s": 99e9, "valid": False}  # invalid: never the basis
    basis = roofline_basis([*probe_candidates(probes), *engine_candidates([slow, fast, broken])])
    assert basis["cpu"]["bytes_per_s"] == 63e9 and basis["cpu"]["source"].startswith("engine llamacpp")
    assert roofline_fraction(fast["achieved_bytes_per_s"], basis["cpu"]["bytes_per_s"]) == 1.0
    assert roofline_fraction(slow["achieved_bytes_per_s"], basis["cpu"]["bytes_per_s"]) == pytest.approx(30 / 63)
    only_probes = roofline_basis(probe_candidates(probes))
    assert only_probes["cpu"] == {"bytes_per_s": 48e9, "source": "probe threaded-dot (start, t)"}
    assert roofline_fraction(None, 48e9) is None and roofline_fraction(1e9, 0.0) is None


def test_engine_candidates_cover_interleaved_samplers() -> None:
    case = {"device": "cpu", "sampler": "cached", "samplers": {
        "cached": {"achieved_bytes_per_s": 20e9, "decode_tokens_per_s": 3.0},
        "llamacpp": {"achieved_bytes_per_s": 70e9, "decode_tokens_per_s": 9.0},
        "hf": {"achieved_bytes_per_s": math.nan, "decode_tokens_per_s": 2.0}}}
    found = {source.split()[1]: v for _d, source, v in engine_candidates([case])}
    assert found == {"cached": 20e9, "llamacpp": 70e9}
