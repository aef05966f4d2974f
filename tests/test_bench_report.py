"""End to end: `python -m bench --profile smoke` on random:tiny writes bench.json with every
metric, a Markdown report and both plots; CUDA cases are skipped with a reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
METRICS = (
    "prefill_s", "decode_tokens_per_s", "tokens_per_s", "peak_memory_bytes", "weight_bytes",
    "achieved_bytes_per_s", "roofline_fraction", "weights_label", "sampler", "dtype", "device",
)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    run_dir = tmp_path_factory.mktemp("bench-smoke")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--profile", "smoke", "--model", "random:tiny", "--run-dir", str(run_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    return run_dir, proc


@pytest.mark.slow
def test_smoke_run_writes_json_markdown_and_plots(smoke_run) -> None:
    run_dir, proc = smoke_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((run_dir / "bench.json").read_text())
    infos = [b["extra_info"] for b in doc["benchmarks"]]
    # smoke pins one thread: nothing to split over, so cached-linear is skipped and split is off
    assert {i["sampler"] for i in infos} == {"reference", "cached", "hf"}
    assert not any(i["split"] for i in infos)
    assert "cached-linear would repeat the cached case" in proc.stdout
    assert {i["kind"] for i in infos} == {"throughput", "scaling", "ratios"}
    for info in infos:
        for key in METRICS:
            assert key in info, key
        assert info["decode_tokens_per_s"] > 0 and 0 < info["roofline_fraction"]
        assert info["weights_random"] is True and "RANDOM" in info["weights_label"]
    machine = doc["machine_info"]["gpt2xl"]
    assert machine["bandwidth"]["cpu"]["read_bytes_per_s"] > 0
    for key in ("git_sha", "torch", "transformers", "cpu", "torch_threads", "ram_bytes"):
        assert key in machine["environment"]
    md = (run_dir / "bench.md").read_text()
    assert "**RANDOM weights" in md
    assert "bench_tokens_per_s.png" in md and "bench_decode_scaling.png" in md
    for png in ("bench_tokens_per_s.png", "bench_decode_scaling.png"):
        assert (run_dir / png).stat().st_size > 1000
    assert "report:" in proc.stdout and "bench.md" in proc.stdout
    joined = (run_dir / "report.md").read_text()  # the run's joined report (eval would join it too)
    assert joined.index("## Provenance") < joined.index("## Throughput") and "**RANDOM weights" in joined


@pytest.mark.slow
def test_cuda_cases_are_skipped_with_a_reason(smoke_run) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the cuda cases ran")
    _run_dir, proc = smoke_run
    assert "SKIPPED" in proc.stdout and "cuda" in proc.stdout
    assert "no CUDA device is usable" in proc.stdout


@pytest.mark.slow
def test_bench_report_command_rerenders(smoke_run) -> None:
    from gpt2xl_app.cli import app

    run_dir, _proc = smoke_run
    (run_dir / "bench.md").unlink()
    result = CliRunner().invoke(app, ["bench-report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert (run_dir / "bench.md").is_file()


def test_render_from_a_minimal_document(tmp_path: Path) -> None:
    from gpt2xl_app.bench_report import render_bench_section

    info = {
        "kind": "throughput", "sampler": "cached", "model": "gpt2-xl", "weights_label": "pretrained gpt2-xl",
        "weights_random": False, "device": "cpu", "dtype": "fp32", "batch_size": 1, "prompt_len": 16,
        "new_tokens": 32, "prefill_s": 0.6, "decode_tokens_per_s": 3.5, "tokens_per_s": 3.3,
        "peak_memory_bytes": 6.5e9, "weight_bytes": 6.4e9, "achieved_bytes_per_s": 22e9, "roofline_fraction": 0.47,
        "weight_layout": "in_out",
    }
    md = render_bench_section({"machine_info": {}, "benchmarks": [{"name": "x", "extra_info": info}]}, tmp_path)
    assert "pretrained gpt2-xl" in md and "**RANDOM" not in md
    assert "47%" in md and "NOT met" in md  # the 70% roofline target, reported
    assert (tmp_path / "bench_tokens_per_s.png").is_file()


def test_cuda_targets_are_reported_from_compiled_and_hf_cases(tmp_path: Path) -> None:
    from gpt2xl_app.bench_report import render_bench_section

    base = {
        "kind": "throughput", "model": "gpt2-xl", "weights_label": "x", "weights_random": True, "device": "cuda",
        "device_name": "NVIDIA H100", "dtype": "fp16", "batch_size": 1, "prompt_len": 16, "new_tokens": 32,
        "prefill_s": 0.02, "tokens_per_s": 1.0, "weight_bytes": 3.2e9, "roofline_fraction": 0.1,
    }
    compiled = {**base, "sampler": "compiled", "decode_tokens_per_s": 400.0, "achieved_bytes_per_s": 1.28e12}
    hf = {**base, "sampler": "hf", "decode_tokens_per_s": 50.0, "achieved_bytes_per_s": 1.6e11}
    doc = {
        "machine_info": {"gpt2xl": {"bandwidth": {"cuda": {
            "read_bytes_per_s": 3.2e12, "copy_bytes_per_s": 2.8e12, "read_method": "sum", "copy_method": "copy",
            "repeats": 5}}}},
        "benchmarks": [{"name": "c", "extra_info": compiled}, {"name": "h", "extra_info": hf}],
    }
    md = render_bench_section(doc, tmp_path)
    assert "compiled decode vs HF `generate` = **8.00×** (target ≥ 3×: met)" in md  # 400 / 50
    assert "**40%** of the HBM read roofline (3200 GB/s measured) (target ≥ 50%: NOT met)" in md  # 1.28 / 3.2


def test_write_bench_report_without_json_is_a_result_error(tmp_path: Path) -> None:
    from gpt2xl.errors import ResultError
    from gpt2xl_app.bench_report import write_bench_report

    with pytest.raises(ResultError):
        write_bench_report(tmp_path)
