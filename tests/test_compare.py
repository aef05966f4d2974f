"""gpt2xl compare: hand-made bench.json documents, thresholds, ratio mode, floors, CLI exit codes."""

from __future__ import annotations

import json
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


def _doc(*cases: dict) -> dict:
    return {"machine_info": {}, "benchmarks": list(cases)}


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
    with pytest.raises(ConfigError):
        parse_floors(["no-equals"])


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
    assert ratios["random:gpt2-cpu-fp32-b1-p16-n32-ref8:cached_vs_reference_decode"] == pytest.approx(4.0)
    assert not any("split" in name for name in ratios)  # no cached-linear case in OLD
    with_linear = ratio_metrics(_doc(_case("cached", 40.0), _case("cached-linear", 32.0), _case("cached-linear", 9.0, new_tokens=64)))
    assert with_linear == {"random:gpt2-cpu-fp32-b1-p16-n32:split_vs_linear_decode": pytest.approx(1.25)}


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


def test_cli_bad_file_is_one_line_exit_2(tmp_path: Path) -> None:
    old = _write(tmp_path / "old.json", OLD)
    proc = subprocess.run(
        [sys.executable, "-c", "from gpt2xl_app.cli import main; main()", "compare", str(old), str(tmp_path / "nope.json")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: Cannot read benchmark file")
    assert "Traceback" not in proc.stderr
