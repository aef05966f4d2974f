"""Bad input to ``python -m bench``, ``gpt2xl compare`` and ``gpt2xl bench-report``, through the real
commands: one ``error:`` line and exit 2 before any work, never a traceback, never a wrong PASS; a
run holding a degenerate measurement fails compare (exit 1) by name instead of crashing."""

from __future__ import annotations

import copy
import json
import math
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench.profiles import PROFILES, Profile
from gpt2xl.errors import ConfigError, OutputError

REPO = Path(__file__).resolve().parents[1]


def _run(*cmd: str, preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), cwd=REPO, capture_output=True, text=True, timeout=120, preexec_fn=preexec_fn,
                          check=False)


def _cli(*args: str, preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess[str]:
    return _run(sys.executable, "-m", "gpt2xl_app.cli", *args, preexec_fn=preexec_fn)


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return _run(sys.executable, "-m", "bench", *args)


def _assert_one_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 2, exactly one stderr line ``error: …`` holding ``words``, no traceback anywhere."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _case(sampler: str, decode: Any = 40.0, *, kind: str = "throughput", **extra: Any) -> dict[str, Any]:
    info = {
        "kind": kind, "sampler": sampler, "model": "random:tiny", "device": "cpu", "dtype": "fp32", "batch_size": 1,
        "prompt_len": 8, "new_tokens": 8, "decode_tokens_per_s": decode, "tokens_per_s": 30.0, "prefill_s": 0.01,
        "valid": True, "weights_label": "RANDOM weights", "weights_random": True, **extra,
    }
    test = "test_sampler_ratios" if kind == "ratios" else "test_throughput"
    return {"name": f"{test}[random:tiny-cpu-fp32-{sampler}-b1-p8-n8]", "extra_info": info}


def _doc(*cases: dict[str, Any]) -> dict[str, Any]:
    return {"machine_info": {"gpt2xl": {"cpu_capability": "AVX2"}}, "benchmarks": list(cases)}


THROUGHPUT = _doc(_case("reference", 10.0), _case("cached", 40.0), _case("hf", 20.0))
GATE = _doc(_case("cached", kind="ratios",
                  samplers={"cached": {"valid": True, "decode_tokens_per_s": 40.0, "prefill_s": 0.01},
                            "reference": {"valid": True, "decode_tokens_per_s": 10.0, "prefill_s": 0.02}},
                  ratios={"cached_vs_reference_decode": 4.0}))


def _write(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc))  # NaN is written as the NaN literal json.loads reads back
    return path


# --- 1. python -m bench: every option checked before pytest starts ---------------------------------

@pytest.mark.parametrize(("args", "words"), [
    (["--threads", "0"], "--threads must be an integer >= 1"),
    (["--threads", "-3"], "--threads must be an integer >= 1"),
    (["--threads", "two"], "argument --threads: invalid int value: 'two'"),
    (["--probe-bytes", "0"], "--probe-bytes must be an integer >= 1048576"),
    (["--probe-bytes", str(1 << 60)], "pass a smaller --probe-bytes"),
    (["--seed", "-1"], "--seed must be an integer >= 0"),
    (["--seed", str(2**64)], "--seed must be an integer >= 0"),
    (["--dtype", "fp32,,bf16"], "--dtype has an empty item"),
    (["--dtype", "fp32,fp32"], "--dtype lists 'fp32' twice"),
    (["--dtype", "fp64"], "Unknown dtype 'fp64'"),
    (["--dtype", ""], "--dtype must list at least one"),
    (["--model", "no-such-model"], "Unknown model 'no-such-model'"),
    (["--model", "random:huge"], "Unknown preset 'huge'"),
    (["--model", ""], "--model is empty"),
    (["--profile", "nope"], "invalid choice: 'nope'"),
    (["--no-such-option"], "unrecognized arguments"),
])
def test_bench_options_fail_before_pytest_starts(tmp_path: Path, args: list[str], words: str) -> None:
    run_dir = tmp_path / "run"
    proc = _bench("--profile", "smoke", "--run-dir", str(run_dir), *args)
    _assert_one_error(proc, words)
    assert "[bench]" not in proc.stdout + proc.stderr  # pytest never started
    assert not run_dir.exists()  # nothing created, no bench.json


def test_bench_run_dir_that_cannot_hold_the_run(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    _assert_one_error(_bench("--profile", "smoke", "--run-dir", str(blocker / "run")), "a part of the path is a file")
    _assert_one_error(_bench("--profile", "smoke", "--run-dir", str(blocker)), "is a file; pass a directory")
    done = tmp_path / "done"
    done.mkdir()
    (done / "bench.json").write_text("{}")
    proc = _bench("--profile", "smoke", "--run-dir", str(done))
    _assert_one_error(proc, "already holds a bench.json")
    assert "[bench]" not in proc.stdout
    assert (done / "bench.json").read_text() == "{}"  # the old run is kept


@pytest.mark.parametrize(("args", "words"), [
    (["--profile", "cuda", "--device", "cpu"], ["Profile cuda measures cuda only", "--device cuda on a GPU host",
                                                "smoke, gate, quick, full"]),
    (["--time-budget", "0"], ["--time-budget must be a finite number >= 1, got 0.0"]),
    (["--time-budget", "nan"], ["--time-budget must be a finite number >= 1, got nan"]),
    (["--time-budget", "soon"], ["argument --time-budget: invalid float value: 'soon'"]),
])
def test_bench_device_and_budget_options_fail_before_pytest_starts(tmp_path: Path, args: list[str],
                                                                    words: list[str]) -> None:
    run_dir = tmp_path / "run"
    proc = _bench("--run-dir", str(run_dir), *args)
    _assert_one_error(proc, *words)
    assert "[bench]" not in proc.stdout + proc.stderr and not run_dir.exists()


@pytest.mark.parametrize(("args", "words"), [
    (["--profile", "cuda", "--device", "cuda"], "--device cuda needs a CUDA device"),
    (["--profile", "cuda"], "Profile cuda needs a CUDA device"),  # --device all: the profile asks for CUDA
    (["--profile", "smoke", "--device", "cuda"], "--device cuda needs a CUDA device"),
])
def test_cuda_asked_for_without_cuda_is_one_error_line(tmp_path: Path, args: list[str], words: str) -> None:
    """Not a run that skips every case and passes: refused before pytest starts or a model loads."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the run would start")
    run_dir = tmp_path / "run"
    line = _assert_one_error(_bench("--run-dir", str(run_dir), *args), words, "sees none",
                             "run it on a GPU host with a CUDA build of torch")
    assert f"torch {torch.__version__}" in line
    assert not run_dir.exists()


def test_cheap_bench_checks_never_import_torch() -> None:
    code = ("import sys\nfrom bench.__main__ import main\n"
            "rc = main(['--threads', '0'])\nprint(rc, 'torch' in sys.modules)")
    proc = _run(sys.executable, "-c", code)
    assert proc.stdout.split() == ["2", "False"], proc.stdout + proc.stderr


# --- 2. compare: options checked before the files are read; degenerate speeds are INVALID ---------------

@pytest.mark.parametrize(("options", "words"), [
    (["--ratios", "--floor", "cached_vs_referense_decode=2"], "Unknown ratio 'cached_vs_referense_decode'"),
    (["--ratios", "--floor", "cached_vs_reference_decode=nan"], "must be a finite number > 0, got nan"),
    (["--ratios", "--floor", "cached_vs_reference_decode=inf"], "must be a finite number > 0, got inf"),
    (["--ratios", "--floor", "cached_vs_reference_decode=-inf"], "must be a finite number > 0, got -inf"),
    (["--ratios", "--floor", "cached_vs_reference_decode=0"], "must be a finite number > 0, got 0.0"),
    (["--ratios", "--floor", "cached_vs_reference_decode=-2"], "must be a finite number > 0, got -2.0"),
    (["--ratios", "--floor", "cached_vs_reference_decode=2=3"], "A floor is NAME=NUMBER"),
    (["--ratios", "--floor", "cached_vs_reference_decode=2", "--floor", "cached_vs_reference_decode=3"], "given twice"),
    (["--floor", "cached_vs_reference_decode=2"], "Floors apply to ratios"),
    (["--max-slowdown", "-5%"], "must be in [0%, 100%)"),
    (["--max-slowdown", "100%"], "must be in [0%, 100%)"),
    (["--max-slowdown", "nan"], "must be in [0%, 100%)"),
    (["--metric", "decode_tokens"], "Unknown metric 'decode_tokens'"),
    (["--ratios", "--metric", "prefill_s"], "--metric applies to throughput comparisons"),
])
def test_bad_compare_options_are_one_line_never_pass(tmp_path: Path, options: list[str], words: str) -> None:
    gate = _write(tmp_path / "gate.json", GATE)
    proc = _cli("compare", str(gate), str(gate), *options)
    _assert_one_error(proc, words)
    assert "PASS" not in proc.stdout


def test_compare_checks_options_before_reading_files(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.json")
    _assert_one_error(_cli("compare", missing, missing, "--metric", "bogus"), "Unknown metric 'bogus'")


def test_degenerate_speeds_are_invalid_cases_never_a_crash(tmp_path: Path) -> None:
    bad_values = {"hf": 0, "cached-plain": -1.5, "llamacpp": math.nan, "llamacpp-q8_0": math.inf, "reference": None}
    cases = [_case(sampler, value) for sampler, value in bad_values.items()]
    del cases[-1]["extra_info"]["decode_tokens_per_s"]  # the reference's speed is missing altogether
    old = _write(tmp_path / "old.json", _doc(*(_case(s) for s in bad_values), _case("cached")))
    new = _write(tmp_path / "new.json", _doc(*cases, _case("cached")))
    for options in ([], ["--ratios"]):  # compare: exit 1 naming every invalid case, never a division by zero
        proc = _cli("compare", str(old), str(new), *options)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert proc.stderr == ""
        assert f"FAIL: {len(cases)} INVALID" in proc.stdout
        for case in cases:
            assert f"{case['name']} (" in proc.stdout.rsplit("invalid: ", 1)[1]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _write(run_dir / "bench.json", json.loads(new.read_text()))
    proc = _cli("bench-report", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    report = (run_dir / "bench.md").read_text()
    assert report.count("| invalid (") == len(cases)
    assert "no decode rate recorded" in report


def test_degenerate_interleaved_speed_or_ratio_fails_the_gate(tmp_path: Path) -> None:
    old = _write(tmp_path / "old.json", GATE)
    for path, value in ((("samplers", "reference", "decode_tokens_per_s"), 0.0),
                        (("ratios", "cached_vs_reference_decode"), -1)):
        broken = copy.deepcopy(GATE)
        target = broken["benchmarks"][0]["extra_info"]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        proc = _cli("compare", str(old), str(_write(tmp_path / "new.json", broken)), "--ratios")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "FAIL: 1 INVALID" in proc.stdout
        assert "not positive and finite" in proc.stdout


def test_a_run_that_measured_nothing_never_passes(tmp_path: Path) -> None:
    no_baseline = tmp_path / "baselines"
    no_baseline.mkdir()
    empty = _write(tmp_path / "empty.json", {"benchmarks": []})
    _assert_one_error(_cli("compare", str(no_baseline), str(empty), "--ratios"), "The new run holds no ratio")


# --- 3. repeated cases --------------------------------------------------------------------------------

def test_repeated_case_names_in_a_bench_json_are_an_error(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.json", THROUGHPUT)
    same_name = _doc(*(copy.deepcopy(b) for b in (*THROUGHPUT["benchmarks"], THROUGHPUT["benchmarks"][1])))
    same_case = copy.deepcopy(same_name)
    same_case["benchmarks"][-1]["name"] = "test_throughput[renamed]"
    for doc, words in ((same_name, "benchmarks[1] and benchmarks[3] have the same name"),
                       (same_case, "benchmarks[1] and benchmarks[3] measure the same case")):
        path = _write(tmp_path / "dup.json", doc)
        _assert_one_error(_cli("compare", str(path), str(good)), str(path), words)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _write(run_dir / "bench.json", same_name)
    _assert_one_error(_cli("bench-report", str(run_dir)), "have the same name")


def test_a_profile_with_repeated_cases_fails_at_definition() -> None:
    base: dict[str, Any] = {"name": "t", "description": "t", "default_model": "random:tiny",
                            "dtypes": {"cpu": ("fp32",)}, "points": (("cached", 1, 8, 8),)}
    Profile(**base)
    for change, words in (({"points": (("cached", 1, 8, 8), ("cached", 1, 8, 8))}, "points lists"),
                          ({"dtypes": {"cpu": ("fp32", "fp32")}}, "dtypes of cpu lists 'fp32'"),
                          ({"scaling_new_tokens": (4, 4)}, "scaling_new_tokens lists 4"),
                          ({"ratio_samplers": ("cached", "hf", "cached")}, "ratio_samplers lists 'cached'"),
                          ({"dtypes": {"cpu": ("fp64",)}}, "Unknown dtype 'fp64'"),
                          ({"points": (("turbo", 1, 8, 8),)}, "unknown sampler")):
        with pytest.raises(ConfigError, match=words):
            Profile(**{**base, **change})
    for profile in PROFILES.values():  # the shipped profiles: every case id distinct
        ids = [c.id("m") for c in profile.cases(devices=("cpu", "cuda"), dtypes=None)]
        assert len(ids) == len(set(ids)), profile.name


# --- 4. malformed or mistyped bench.json -------------------------------------------------------------

def _mutated(change: Callable[[dict[str, Any]], None]) -> bytes:
    doc = copy.deepcopy(GATE)
    change(doc)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("content", "words"), [
    (b"\xff\xfe\x00", "is not valid JSON"),
    (b"[1, 2]", "no 'benchmarks' list"),
    (b'{"machine_info": {}}', "no 'benchmarks' list"),
    (_mutated(lambda d: d["benchmarks"][0].pop("extra_info")), "benchmarks[0] has no extra_info"),
    (_mutated(lambda d: d["benchmarks"][0]["extra_info"].update(decode_tokens_per_s="fast")),
     "benchmarks[0].extra_info.decode_tokens_per_s is 'fast', expected a number"),
    (_mutated(lambda d: d["benchmarks"][0]["extra_info"]["samplers"]["reference"].update(prefill_s=[1])),
     "benchmarks[0].extra_info.samplers['reference'].prefill_s is [1], expected a number"),
    (_mutated(lambda d: d["benchmarks"][0]["extra_info"]["ratios"].update(cached_vs_reference_decode="4")),
     "extra_info.ratios['cached_vs_reference_decode'] is '4', expected a number"),
    (_mutated(lambda d: d["benchmarks"][0]["extra_info"].update(samplers="cached")),
     "extra_info.samplers is 'cached', expected an object"),
    (_mutated(lambda d: d["benchmarks"][0]["extra_info"].update(new_tokens="8")),
     "extra_info.new_tokens is '8', expected an integer >= 1"),
    (_mutated(lambda d: d["benchmarks"][0]["extra_info"].pop("model")), "benchmarks[0].extra_info has no model"),
    (_mutated(lambda d: d.update(machine_info=[1])), "machine_info is [1], expected an object"),
    (_mutated(lambda d: d["machine_info"]["gpt2xl"].update(bandwidth_probes=[{"rates": [1]}])),
     "machine_info.gpt2xl.bandwidth_probes[0].rates is [1], expected an object"),
])
def test_malformed_bench_json_is_one_line_naming_file_and_field(tmp_path: Path, content: bytes, words: str) -> None:
    bad = tmp_path / "bench.json"
    bad.write_bytes(content)
    good = _write(tmp_path / "good.json", GATE)
    _assert_one_error(_cli("compare", str(good), str(bad), "--ratios"), str(bad), words)


def test_bench_report_of_a_malformed_file_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bench.json"
    for content, words in ((b"{not json", "is not valid JSON"),
                           (_mutated(lambda d: d["benchmarks"][0]["extra_info"].update(new_tokens=True)),
                            "benchmarks[0].extra_info.new_tokens is True, expected an integer >= 1")):
        bad.write_bytes(content)
        _assert_one_error(_cli("bench-report", str(tmp_path)), str(bad), words)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]


# --- 5. write failures of bench-report ----------------------------------------------------------------

def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_bench_report_write_past_the_file_size_limit_is_one_line(tmp_path: Path) -> None:
    import matplotlib.font_manager  # noqa: F401 - builds matplotlib's font cache now, outside the limit

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _write(run_dir / "bench.json", THROUGHPUT)
    proc = _cli("bench-report", str(run_dir), preexec_fn=_limit_file_size)
    _assert_one_error(proc, "bench_tokens_per_s.png", "the file size limit was reached")
    assert sorted(p.name for p in run_dir.iterdir()) == ["bench.json"]  # no half-written PNG, no temp file


def test_bench_report_into_unwritable_places_is_one_line(tmp_path: Path) -> None:
    from gpt2xl_app.bench_report import render_bench_section

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="a part of the path is a file"):
        render_bench_section(THROUGHPUT, blocker / "run")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _write(run_dir / "bench.json", THROUGHPUT)
    (run_dir / "bench.md").mkdir()
    _assert_one_error(_cli("bench-report", str(run_dir)), "bench.md is a directory")
    assert not list(run_dir.glob("*.png"))  # refused before anything was drawn


# --- 6. one dtype vocabulary ------------------------------------------------------------------------------

def test_one_dtype_vocabulary_read_by_every_layer() -> None:
    import torch

    import bench.__main__ as bench_main
    import bench.profiles
    from gpt2xl import autotune
    from gpt2xl.devices import TORCH_DTYPES, dtype_name, resolve_dtype
    from gpt2xl.dtypes import DTYPE_NAMES, DTYPES

    assert tuple(TORCH_DTYPES) == DTYPE_NAMES
    for name, spec in DTYPES.items():
        assert torch.empty((), dtype=resolve_dtype(name)).element_size() == spec.bytes
        assert dtype_name(resolve_dtype(name)) == name
    assert not hasattr(bench.profiles, "DTYPES")  # the profiles read gpt2xl.dtypes, no copy of their own
    # python -m bench keeps a torch-free copy of the autotune modes: it must not drift
    assert bench_main.AUTOTUNE_MODES == autotune.MODES
    with pytest.raises(ConfigError, match="Unknown dtype 'fp64'; choose one of: fp32, fp16, bf16"):
        resolve_dtype("fp64")
