"""gpt2xl compare: hand-made bench.json documents, thresholds, ratio mode, validated floors, per-CPU-kind
baselines, degenerate timings and invalid cases, CLI exit codes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpt2xl.errors import ConfigError, ResultError
from gpt2xl_app.cli import app
from gpt2xl_app.compare import (
    compare_docs,
    compare_files,
    format_table,
    invalid_entries,
    parse_floors,
    parse_fraction,
    ratio_metrics,
)


def _case(sampler: str, decode: float, *, new_tokens: int = 32, kind: str = "throughput", **extra) -> dict:
    info = {
        "kind": kind, "sampler": sampler, "model": "random:gpt2", "device": "cpu", "dtype": "fp32",
        "batch_size": 1, "prompt_len": 16, "new_tokens": new_tokens, "decode_tokens_per_s": decode,
        "tokens_per_s": decode * 0.9, "prefill_s": 0.05, **extra,
    }
    name = f"test_throughput[random:gpt2-cpu-fp32-{sampler}-b1-p16-n{new_tokens}]"
    return {"name": name, "extra_info": info, "stats": {}}


def _doc(*cases: dict, kind: str | None = None) -> dict:
    machine = {"gpt2xl": {"cpu_capability": kind}} if kind else {}
    return {"machine_info": machine, "benchmarks": list(cases)}


def _write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


OLD = _doc(_case("reference", 10.0, new_tokens=8), _case("cached", 40.0), _case("hf", 36.0))
# cached 20% slower (40 -> 32); everything else unchanged
NEW = _doc(_case("reference", 10.0, new_tokens=8), _case("cached", 32.0), _case("hf", 36.0))


def test_parse_fraction() -> None:
    assert parse_fraction("10%") == pytest.approx(0.10)
    assert parse_fraction("0.25") == pytest.approx(0.25)
    for bad in ("ten", "150%", "-5%"):
        with pytest.raises(ConfigError):
            parse_fraction(bad)


def test_parse_floors() -> None:
    assert parse_floors(["cached_vs_reference_decode=2"]) == {"cached_vs_reference_decode": 2.0}
    assert parse_floors(["ours_vs_llamacpp_decode=0.9", "ours_vs_hf_decode=1.5"]) == {
        "ours_vs_llamacpp_decode": 0.9, "ours_vs_hf_decode": 1.5}
    with pytest.raises(ConfigError, match="NAME=NUMBER"):
        parse_floors(["no-equals"])


@pytest.mark.parametrize(("item", "words"), [
    ("cached_vs_referense_decode=2", "Unknown ratio 'cached_vs_referense_decode'"),
    ("split_vs_linear_decode=1.2", "Unknown ratio"),  # a name the ratio table no longer defines
    ("ours_vs_hf_decode=nan", "finite number > 0"),
    ("ours_vs_hf_decode=inf", "finite number > 0"),
    ("ours_vs_hf_decode=0", "finite number > 0"),
    ("ours_vs_hf_decode=-1", "finite number > 0"),
])
def test_bad_floors_are_config_errors(item, words) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_floors([item])


def test_floors_are_validated_in_compare_docs_too() -> None:
    base = _doc(_case("cached", 40.0, kind="ratios", ratios={"cached_vs_reference_decode": 3.0}))
    for floors in ({"nope": 1.0}, {"cached_vs_reference_decode": math.nan}):
        with pytest.raises(ConfigError):
            compare_docs(base, base, max_slowdown=0.25, mode="ratios", floors=floors)
    with pytest.raises(ConfigError, match="Floors apply to ratios"):
        compare_docs(OLD, NEW, max_slowdown=0.25, floors={"cached_vs_reference_decode": 2.0})


def test_20_percent_slowdown_fails_at_10_passes_at_25() -> None:
    strict = compare_docs(OLD, NEW, max_slowdown=0.10)
    assert not strict.passed
    assert [r.name for r in strict.regressions] == ["test_throughput[random:gpt2-cpu-fp32-cached-b1-p16-n32]"]
    assert strict.regressions[0].change == pytest.approx(-0.20)
    assert compare_docs(OLD, NEW, max_slowdown=0.25).passed
    assert "FAIL" in format_table(strict) and "-20.0%" in format_table(strict)


def test_speedups_and_lower_is_better_metrics() -> None:
    assert compare_docs(NEW, OLD, max_slowdown=0.0).passed  # getting faster never fails
    slow_prefill = _doc(_case("cached", 40.0, prefill_s=0.08))
    assert not compare_docs(_doc(_case("cached", 40.0)), slow_prefill, max_slowdown=0.5, metric="prefill_s").passed


def test_unmatched_cases_are_listed_not_failed() -> None:
    new = _doc(_case("cached", 40.0), _case("cached", 41.0, new_tokens=64))
    result = compare_docs(OLD, new, max_slowdown=0.1)
    statuses = {r.status for r in result.rows}
    assert {"only in old", "only in new", "ok"} <= statuses
    assert result.passed


def test_ratio_metrics_from_separate_cases() -> None:
    ratios = ratio_metrics(OLD)
    assert ratios["random:gpt2-cpu-fp32-b1-p16-n32:ours_vs_hf_decode"] == pytest.approx(40 / 36)
    assert ratios["random:gpt2-cpu-fp32-b1-p16-n32:ours_vs_hf_prefill"] == pytest.approx(1.0)  # 0.05 s each
    assert ratios["random:gpt2-cpu-fp32-b1-p16-n32-ref8:cached_vs_reference_decode"] == pytest.approx(4.0)
    assert not any("plain" in name for name in ratios)  # no cached-plain case in OLD
    with_plain = ratio_metrics(_doc(_case("cached", 40.0), _case("cached-plain", 32.0), _case("cached-plain", 9.0, new_tokens=64)))
    assert with_plain == {"random:gpt2-cpu-fp32-b1-p16-n32:tuned_vs_plain_decode": pytest.approx(1.25)}


def test_ratio_metrics_against_llamacpp() -> None:
    doc = _doc(_case("cached", 8.0, prefill_s=0.3), _case("llamacpp", 10.0, prefill_s=0.6),
               _case("llamacpp-q8_0", 20.0, prefill_s=0.5))
    ratios = ratio_metrics(doc)
    assert ratios["random:gpt2-cpu-fp32-b1-p16-n32:ours_vs_llamacpp_decode"] == pytest.approx(0.8)
    assert ratios["random:gpt2-cpu-fp32-b1-p16-n32:ours_vs_llamacpp_prefill"] == pytest.approx(2.0)  # 0.6 / 0.3
    assert ratios["random:gpt2-cpu-fp32-b1-p16-n32:ours_vs_llamacpp_q8_0_decode"] == pytest.approx(0.4)


@pytest.mark.parametrize("bad", [0.0, -3.0, math.nan, math.inf])
def test_degenerate_timings_give_no_ratio_and_fail_the_gate_by_name(bad) -> None:
    broken = _doc(_case("reference", 10.0, new_tokens=8), _case("cached", 40.0), _case("hf", bad))
    ratios = ratio_metrics(broken)  # never a ZeroDivisionError
    assert not any("ours_vs_hf" in name for name in ratios)
    assert ratios["random:gpt2-cpu-fp32-b1-p16-n32-ref8:cached_vs_reference_decode"] == pytest.approx(4.0)
    name = "test_throughput[random:gpt2-cpu-fp32-hf-b1-p16-n32]"
    assert name in invalid_entries(broken)
    for mode in ("throughput", "ratios"):
        result = compare_docs(OLD, broken, max_slowdown=0.5, mode=mode)
        assert not result.passed
        invalid = [r for r in result.regressions if r.status == "INVALID"]
        assert [r.name for r in invalid] == [name] and "decode_tokens_per_s" in invalid[0].note
        assert f"invalid: {name}" in format_table(result)


def test_a_case_recorded_invalid_fails_the_gate_with_its_reason() -> None:
    reason = "no valid round of 4: decode time 0.0 s is not positive and finite"
    gate = _doc(_case("cached", 40.0, kind="ratios", ratios={"cached_vs_reference_decode": 3.0}, samplers={
        "cached": {"valid": True, "decode_tokens_per_s": 40.0, "prefill_s": 0.05},
        "hf": {"valid": False, "invalid_reason": reason, "decode_tokens_per_s": None}}))
    result = compare_docs(gate, gate, max_slowdown=0.25, mode="ratios")
    assert not result.passed
    [row] = result.regressions
    assert row.status == "INVALID" and row.name.endswith("[hf]") and row.note == reason
    assert "FAIL: 1 INVALID" in format_table(result) and reason in format_table(result)


def test_ratio_mode_and_floor() -> None:
    def gate(cached_vs_ref: float, ours_vs_hf: float) -> dict:
        return _doc(_case("cached", 40.0, kind="ratios", ratios={
            "cached_vs_reference_decode": cached_vs_ref, "ours_vs_hf_decode": ours_vs_hf}))

    base = gate(3.5, 1.10)
    # machine twice as slow, ratios alike: passes even though absolute speeds would not matter here
    assert compare_docs(base, gate(3.3, 1.05), max_slowdown=0.25, mode="ratios").passed
    # ours vs HF dropped 30%
    assert not compare_docs(base, gate(3.5, 0.77), max_slowdown=0.25, mode="ratios").passed
    # within tolerance but under the absolute floor
    floored = compare_docs(gate(2.4, 1.1), gate(1.9, 1.1), max_slowdown=0.25, mode="ratios",
                           floors={"cached_vs_reference_decode": 2.0})
    assert [r.status for r in floored.regressions] == ["BELOW FLOOR"]


def test_bad_files_raise_result_error(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.json", OLD)
    (tmp_path / "broken.json").write_text("{not json")
    _write(tmp_path / "other.json", {"schema_version": 1, "kind": "eval"})
    for bad in (tmp_path / "missing.json", tmp_path / "broken.json", tmp_path / "other.json"):
        with pytest.raises(ResultError):
            compare_files(good, bad, max_slowdown=0.1)
    disjoint = _write(tmp_path / "disjoint.json", _doc(_case("cached", 40.0, new_tokens=999)))
    with pytest.raises(ResultError, match="share no"):
        compare_files(good, disjoint, max_slowdown=0.1)


def _gate_doc(kind: str, cached_vs_ref: float) -> dict:
    return _doc(_case("cached", 40.0, kind="ratios", ratios={"cached_vs_reference_decode": cached_vs_ref}), kind=kind)


def test_baseline_directory_picks_the_run_cpu_kind(tmp_path: Path) -> None:
    baselines = tmp_path / "baselines"
    baselines.mkdir()
    _write(baselines / "gate-cpu-AVX2.json", _gate_doc("AVX2", 4.0))
    _write(baselines / "gate-cpu-AVX512.json", _gate_doc("AVX512", 8.0))
    new = _write(tmp_path / "new.json", _gate_doc("AVX512", 7.5))
    result = compare_files(baselines, new, max_slowdown=0.25, mode="ratios")
    assert result.passed and result.rows[0].old == 8.0  # the AVX512 baseline, not AVX2's 4.0
    assert "gate-cpu-AVX512.json (CPU kind AVX512)" in result.baseline_note
    slow = _write(tmp_path / "slow.json", _gate_doc("AVX512", 4.0))  # fine against AVX2's, not AVX512's
    assert not compare_files(baselines, slow, max_slowdown=0.25, mode="ratios").passed


def test_no_baseline_for_the_kind_checks_floors_only_and_says_so(tmp_path: Path) -> None:
    baselines = tmp_path / "baselines"
    baselines.mkdir()
    _write(baselines / "gate-cpu-AVX2.json", _gate_doc("AVX2", 4.0))
    new = _write(tmp_path / "new.json", _gate_doc("AMX", 3.0))
    result = compare_files(baselines, new, max_slowdown=0.25, mode="ratios", floors={"cached_vs_reference_decode": 2.0})
    assert result.passed and [r.status for r in result.rows] == ["ok"]
    assert "no baseline for CPU kind AMX" in result.baseline_note and "(have: AVX2)" in result.baseline_note
    assert "floors and validity only" in format_table(result)
    below = _write(tmp_path / "below.json", _gate_doc("AMX", 1.5))
    assert [r.status for r in compare_files(baselines, below, max_slowdown=0.25, mode="ratios",
                                            floors={"cached_vs_reference_decode": 2.0}).regressions] == ["BELOW FLOOR"]
    unfloored = compare_files(baselines, new, max_slowdown=0.25, mode="ratios")
    assert unfloored.passed and [r.status for r in unfloored.rows] == ["no baseline"]


def test_a_floor_the_run_did_not_measure_fails() -> None:
    gate = _gate_doc("AVX512", 3.0)
    result = compare_docs(gate, gate, max_slowdown=0.25, mode="ratios", floors={"ours_vs_llamacpp_decode": 0.9})
    assert [(r.name, r.status) for r in result.regressions] == [("*:ours_vs_llamacpp_decode", "MISSING")]


def test_the_committed_baselines_are_named_by_cpu_kind() -> None:
    from gpt2xl_app.compare import cpu_kind, load_bench

    found = sorted((Path(__file__).resolve().parents[1] / "bench" / "baselines").glob("gate-cpu-*.json"))
    assert found, "bench/baselines holds no gate-cpu-<kind>.json"
    for path in found:
        assert path.stem == f"gate-cpu-{cpu_kind(load_bench(path))}"


def test_cli_exit_codes(tmp_path: Path) -> None:
    old = _write(tmp_path / "old.json", OLD)
    new = _write(tmp_path / "new.json", NEW)
    runner = CliRunner()
    failed = runner.invoke(app, ["compare", str(old), str(new), "--max-slowdown", "10%"])
    assert failed.exit_code == 1, failed.output
    assert "REGRESSION" in failed.output and "40" in failed.output and "32" in failed.output
    passed = runner.invoke(app, ["compare", str(old), str(new), "--max-slowdown", "25%"])
    assert passed.exit_code == 0, passed.output
    ratios = runner.invoke(app, ["compare", str(old), str(new), "--ratios", "--max-slowdown", "25%"])
    assert ratios.exit_code == 0, ratios.output  # 40/36 -> 32/36 is an 20% drop: within 25%


@pytest.mark.parametrize(("floor", "words"), [("bogus_ratio=2", "Unknown ratio"), ("ours_vs_hf_decode=nan", "finite")])
def test_cli_bad_floor_is_one_line_exit_2(tmp_path: Path, floor, words) -> None:
    old = _write(tmp_path / "old.json", OLD)
    proc = subprocess.run(
        [sys.executable, "-c", "from gpt2xl_app.cli import main; main()", "compare", str(old), str(old), "--ratios",
         "--floor", floor],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0]


def test_cli_bad_file_is_one_line_exit_2(tmp_path: Path) -> None:
    old = _write(tmp_path / "old.json", OLD)
    proc = subprocess.run(
        [sys.executable, "-c", "from gpt2xl_app.cli import main; main()", "compare", str(old), str(tmp_path / "nope.json")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: Cannot read benchmark file")
    assert "Traceback" not in proc.stderr
