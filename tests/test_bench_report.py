"""End to end: `python -m bench --profile smoke` on random:tiny writes bench.json with every
metric, a Markdown report and both plots; CUDA cases are skipped with a reason. Then the report on
hand-made documents: degenerate timings, spreads, the roofline basis, the ratio table and targets."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.profiles import SAMPLERS

REPO = Path(__file__).resolve().parents[1]
METRICS = (
    "prefill_s", "decode_tokens_per_s", "tokens_per_s", "peak_memory_bytes", "weight_bytes", "achieved_bytes_per_s",
    "roofline_fraction", "weights_label", "sampler", "dtype", "device", "valid", "invalid_reason", "spread_kind",
    "prefill_s_spread", "decode_tokens_per_s_spread", "tokens_per_s_spread", "kernels", "tuning_s",
    "warmup_rounds", "sampled_logits_finite", "compile", "compile_s_estimate", "hf_generate",
)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    run_dir = tmp_path_factory.mktemp("bench-smoke")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--profile", "smoke", "--model", "random:tiny", "--run-dir", str(run_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    return run_dir, proc


@pytest.mark.slow
def test_smoke_run_writes_json_markdown_and_plots(smoke_run) -> None:
    run_dir, proc = smoke_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((run_dir / "bench.json").read_text())
    infos = [b["extra_info"] for b in doc["benchmarks"]]
    samplers = {i["sampler"] for i in infos}
    assert {"reference", "cached", "hf"} <= samplers <= set(SAMPLERS) - {"compiled", "hf-compiled"}
    assert {i["kind"] for i in infos} == {"throughput", "scaling", "ratios"}
    md = (run_dir / "bench.md").read_text()
    for info in infos:
        for key in METRICS:
            assert key in info, key
        assert info["weights_random"] is True and "RANDOM" in info["weights_label"]
        for record in (info, *(info.get("samplers") or {}).values()):
            if record["valid"]:  # a rate is never zero, negative or NaN, and no fraction exceeds 1
                assert record["decode_tokens_per_s"] > 0 and record["prefill_s"] > 0
                assert 0 < record["roofline_fraction"] <= 1
            else:
                assert record["decode_tokens_per_s"] is None and f"invalid ({record['invalid_reason']})" in md
    ratio_cases = [i for i in infos if i["kind"] == "ratios"]
    for info in ratio_cases:  # every sampler that could not run says why
        assert {"reference", "cached", "hf"} <= set(info["samplers"])
        assert set(info["samplers"]) | set(info["samplers_skipped"]) == {"reference", "cached", "hf", "cached-plain", "llamacpp"}
        assert info["spread_kind"] == "min-max"  # 2 timed rounds
    machine = doc["machine_info"]["gpt2xl"]
    probes = machine["bandwidth_probes"]
    assert probes[0]["label"].startswith("start") and probes[-1]["label"] == "end" and len(probes) >= 3
    assert set(probes[0]["rates"]) == {"sum", "threaded-dot", "copy"}
    assert set(machine["bandwidth_summary"]["cpu"]["sum"]) == {"n", "median", "min", "max", "spread"}
    basis = machine["roofline_basis"]["cpu"]
    assert basis["bytes_per_s"] >= max(i["achieved_bytes_per_s"] or 0 for i in infos)
    assert basis["source"].startswith(("probe ", "engine "))
    assert "llamacpp" in machine["peers"] and isinstance(machine["cpu_flags"], list)
    for key in ("git_sha", "torch", "transformers", "cpu", "torch_threads", "ram_bytes"):
        assert key in machine["environment"]
    assert "**RANDOM weights" in md and "Roofline basis (cpu)" in md and " ± " in md
    assert "### Kernel choices (autotune)" in md and "### Ratios" in md
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


def _info(sampler: str, decode: float | None, *, dtype: str = "fp32", **extra) -> dict:
    return {
        "kind": "throughput", "sampler": sampler, "model": "gpt2-xl", "weights_label": "pretrained gpt2-xl",
        "weights_random": False, "device": "cpu", "device_name": "AMD EPYC", "dtype": dtype, "batch_size": 1,
        "prompt_len": 16, "new_tokens": 32, "prefill_s": 0.6, "decode_tokens_per_s": decode, "tokens_per_s": 3.3,
        "peak_memory_bytes": 6.5e9, "weight_bytes": 6.4e9,
        "achieved_bytes_per_s": 6.4e9 * decode if isinstance(decode, float) and decode > 0 else None, **extra,
    }


def _report_doc(*infos: dict, probes: tuple[float, ...] = (40e9, 42e9), native_bf16: bool = True) -> dict:
    machine = {"gpt2xl": {
        "cpu_capability": "AVX512", "cpu_flags": ["avx2", "avx512_bf16", "avx512f"],
        "cpu_native": {"bf16": native_bf16, "fp16": False},
        "bandwidth_probes": [
            {"label": f"p{i}", "device": "cpu", "measured_at": f"t{i}", "rates": {"sum": v, "threaded-dot": v * 0.9, "copy": v * 0.7}}
            for i, v in enumerate(probes)
        ],
    }}
    return {"machine_info": machine, "benchmarks": [{"name": f"case{i}", "extra_info": info} for i, info in enumerate(infos)]}


def test_render_from_a_minimal_document(tmp_path: Path) -> None:
    from gpt2xl_app.bench_report import render_bench_section

    md = render_bench_section(_report_doc(_info("cached", 3.5)), tmp_path)
    assert "pretrained gpt2-xl" in md and "**RANDOM" not in md
    assert "| 3.50 |" in md and "| 53% |" in md  # 22.4 GB/s of the 42 GB/s best probe
    assert "avx512_bf16" in md and "bf16 native" in md  # CPU flags beside the speeds
    assert "Roofline basis (cpu): **42.0 GB/s**" in md and "probe sum (p1, t1)" in md
    assert "Noisy machine" not in md  # 42 / 40 - 1 = 5%
    assert (tmp_path / "bench_tokens_per_s.png").is_file()


def test_medians_with_their_spread(tmp_path: Path) -> None:
    from gpt2xl_app.bench_report import render_bench_section

    info = _info("cached", 6.0, decode_tokens_per_s_spread=6.5, prefill_s_spread=0.02, tokens_per_s_spread=0.25,
                 spread_kind="iqr")
    md = render_bench_section(_report_doc(info), tmp_path)
    assert "| 600 ± 20 | 6.00 ± 6.50 | 3.30 ± 0.25 |" in md


@pytest.mark.parametrize("bad", [0.0, -2.0, math.nan, None])
def test_degenerate_timings_render_as_invalid_and_are_not_plotted(tmp_path: Path, monkeypatch, bad) -> None:
    from matplotlib.axes import Axes

    from gpt2xl_app.bench_report import render_bench_section

    heights: list[float] = []
    bar = Axes.bar
    monkeypatch.setattr(Axes, "bar", lambda self, x, h, *a, **k: heights.extend(h) or bar(self, x, h, *a, **k))
    recorded = {**_info("llamacpp", None), "valid": False, "invalid_reason": "no valid round of 2: decode time 0.0 s"}
    doc = _report_doc(_info("cached", 3.5), _info("hf", bad), recorded)
    md = render_bench_section(doc, tmp_path)  # no ZeroDivisionError anywhere: table, ratios, targets, plot
    assert "| 3.50 |" in md
    assert "invalid (decode_tokens_per_s = " in md or "invalid (no decode rate recorded)" in md
    assert "invalid (no valid round of 2: decode time 0.0 s)" in md
    assert "ours vs HF" not in md and "ours vs llama.cpp" not in md  # no ratio from an invalid case
    assert heights == [3.5]  # only the measured case is drawn: never a 0.00 bar


def test_skipped_sampler_is_left_out_of_its_group(tmp_path: Path, monkeypatch) -> None:
    from matplotlib.axes import Axes

    from gpt2xl_app.bench_report import _plot_tokens

    heights: list[float] = []
    bar = Axes.bar
    monkeypatch.setattr(Axes, "bar", lambda self, x, h, *a, **k: heights.extend(h) or bar(self, x, h, *a, **k))
    # fp32 has three samplers, bf16 only one (the others were skipped): nothing is drawn for them
    cases = [_info("cached", 3.0), _info("hf", 2.0), _info("llamacpp", 4.0), _info("cached", 5.0, dtype="bf16")]
    assert _plot_tokens(cases, tmp_path / "p.png")
    assert sorted(heights) == [2.0, 3.0, 4.0, 5.0]
    assert not _plot_tokens([{**_info("hf", None), "valid": False}], tmp_path / "q.png")


def test_fraction_never_exceeds_one_when_an_engine_beats_every_probe(tmp_path: Path) -> None:
    from gpt2xl_app.bench_report import render_bench_section

    ours = _info("cached", 6.0)  # 38.4 GB/s
    peer = {**_info("llamacpp", 10.0), "weight_bytes": 6.3e9, "achieved_bytes_per_s": 63e9}
    md = render_bench_section(_report_doc(ours, peer, probes=(40e9, 48e9)), tmp_path)
    assert "Roofline basis (cpu): **63.0 GB/s**" in md and "engine llamacpp" in md
    assert "| 100% |" in md and "| 61% |" in md  # 38.4 / 63
    assert "Highest roofline fraction: **100%**" in md and "none above 100%: met" in md


def test_noisy_machine_is_flagged_in_words(tmp_path: Path) -> None:
    from gpt2xl_app.bench_report import render_bench_section

    md = render_bench_section(_report_doc(_info("cached", 3.5), probes=(40e9, 81e9, 48e9)), tmp_path)
    assert "**Noisy machine**" in md and "varied by 102%" in md  # 81 / 40 - 1


def test_ratio_table_and_targets_against_llamacpp_and_hf(tmp_path: Path) -> None:
    from gpt2xl_app.bench_report import render_bench_section

    cases = [
        _info("cached", 8.0, prefill_s=0.3), _info("llamacpp", 10.0, prefill_s=0.6), _info("hf", 3.6),
        _info("cached", 16.0, dtype="bf16", prefill_s=0.2), _info("llamacpp", 16.0, dtype="bf16", prefill_s=0.14),
    ]
    md = render_bench_section(_report_doc(*cases), tmp_path)
    assert "| gpt2-xl cpu fp32 b1 p16 n32 | separate cases | **0.80×** | **2.00×** | **2.22×** |" in md
    assert "ours vs llama.cpp decode = **0.80×** (target ≥ 1.0×: NOT met, 20% short" in md
    assert "ours vs llama.cpp prefill of 16 tokens = **2.00×** (target ≥ 1.0×: met" in md
    assert "ours vs HF `generate` decode = **2.22×** (target ≥ 2×: met" in md
    assert "bf16, prompt 16, 32 new: ours vs llama.cpp decode = **1.00×** (target ≥ 1.0×: met" in md
    assert "our bf16 vs our fp32 decode = **2.00×** (target ≥ 1.8×: met)" in md
    emulated = render_bench_section(_report_doc(*cases, native_bf16=False), tmp_path)
    assert "not a target: bf16 is not native on this CPU" in emulated and "bf16 is emulated on this CPU" in emulated


def test_kernel_choices_section(tmp_path: Path) -> None:
    from gpt2xl_app.bench_report import render_bench_section

    kernels = {"mode": "cached", "cache_hit": True, "tuning_s": 4.2, "key": {"cpu": "AMD EPYC", "threads": 2}, "choices": [
        {"name": "h.*.mlp.c_fc", "shape": [6400, 1600], "layout": "out_in", "decode": "gemv", "prefill": "linear",
         "candidates": {"gemv": 61.5, "linear": 19.4, "split": 27.0}}]}
    md = render_bench_section(_report_doc(_info("cached", 6.0, kernels=kernels, kernels_used=True)), tmp_path)
    assert "- gpt2-xl cpu fp32: mode `cached`, cache hit, tuning 4.2 s; key cpu=AMD EPYC, threads=2" in md
    assert "| h.*.mlp.c_fc | 6400 × 1600 | out_in | gemv | linear | gemv 61.5, split 27.0, linear 19.4 |" in md
    assert "autotune cached (cache hit)" in md


GPU = "NVIDIA H100 80GB HBM3"


def _cuda_case(sampler: str, decode: float | None, *, dtype: str = "fp16", batch: int = 1, **extra) -> dict:
    weight_bytes = 3.2e9 if dtype != "fp32" else 6.4e9
    return {
        "kind": "throughput", "sampler": sampler, "model": "random:gpt2-xl", "weights_label": "RANDOM weights (seed 0)",
        "weights_random": True, "device": "cuda", "device_name": GPU, "dtype": dtype, "batch_size": batch,
        "prompt_len": 16, "new_tokens": 64, "prefill_s": 0.02, "tokens_per_s": 100.0, "weight_bytes": weight_bytes,
        "decode_tokens_per_s": decode, "peak_memory_bytes": 4.1e9, "sampled_logits_finite": True, "logits_finite": True,
        "warmup_rounds": 2 if "compiled" in sampler else 1,
        "achieved_bytes_per_s": weight_bytes * decode / batch if isinstance(decode, float) else None, **extra,
    }


def _cuda_doc(*cases: dict, budget: dict | None = None) -> dict:
    probe = {"label": "start", "device": "cuda:0", "measured_at": "t",
             "rates": {"sum": 3.0e12, "threaded-dot": 3.2e12, "copy": 2.8e12}}
    gpus = [{"name": GPU, "memory_bytes": 85e9, "capability": "9.0"}]
    g = {"bandwidth_probes": [probe], "environment": {"gpus": gpus}}
    if budget is not None:
        g["time_budget"] = budget
    benchmarks = [{"name": f"c{i}", "extra_info": c} for i, c in enumerate(cases)]
    return {"machine_info": {"gpt2xl": g}, "benchmarks": benchmarks}


def test_cuda_targets_and_table_from_a_gpu_run(tmp_path: Path) -> None:
    from gpt2xl_app.bench_report import render_bench_section

    doc = _cuda_doc(
        # fp16 batch 1: 400 tok/s = 1.28 TB/s = 40% of the 3.2 TB/s read probe; 8x HF eager, 1.6x HF compiled
        _cuda_case("compiled", 400.0, compile_s_estimate=41.6, compile={"graphs_compiled_warmup": 1}),
        _cuda_case("hf", 50.0), _cuda_case("hf-compiled", 250.0, compile_s_estimate=55.2),
        _cuda_case("cached", 120.0), _cuda_case("reference", 90.0),
        # fp16 batch 16
        _cuda_case("compiled", 4800.0, batch=16), _cuda_case("hf", 600.0, batch=16),
        # bf16: HF compiled invalid (a compile in every timed round); shown, not judged
        _cuda_case("compiled", 390.0, dtype="bf16"), _cuda_case("hf", 200.0, dtype="bf16"),
        {**_cuda_case("hf-compiled", None, dtype="bf16"), "valid": False,
         "invalid_reason": "no valid round of 3: torch.compile compiled 1 graph(s) during this round"},
        # fp32: HF eager produced a NaN
        _cuda_case("compiled", 240.0, dtype="fp32"), _cuda_case("hf", 60.0, dtype="fp32", sampled_logits_finite=False),
        _cuda_case("hf-compiled", 250.0, dtype="fp32"),
        budget={"budget_s": 360.0, "skipped": []},
    )
    md = render_bench_section(doc, tmp_path)
    head = "CUDA batch 1 random:gpt2-xl fp16, prompt 16, 64 new: compiled decode"
    assert f"- CUDA GPU: {GPU}; measured HBM read bandwidth **3200 GB/s** (best `threaded-dot` probe)" in md
    assert f"{head} 400 tok/s at **40%** of the read roofline (3200 GB/s) (target ≥ 60%: NOT met, 33% short)" in md
    assert f"{head} vs HF `generate` (eager) = **8.00×** (target ≥ 3×: met; cases)" in md
    assert f"{head} vs HF `generate` with static cache + compile = **1.60×** (target ≥ 1.2×: met; cases)" in md
    bf16 = "CUDA batch 1 random:gpt2-xl bf16, prompt 16, 64 new: compiled decode"
    assert f"{bf16} vs HF `generate` (eager) = **1.95×** (for comparison: the target ≥ 3× is set for fp16" in md
    assert (f"{bf16} vs HF `generate` with static cache + compile: not measured (the hf-compiled case is invalid: "
            "no valid round of 3: torch.compile compiled 1 graph(s) during this round)") in md
    assert "- CUDA fp16 produces no NaN/inf: met: every sampled token of 7 fp16 case(s) came from finite logits" in md
    assert "- Time budget: 360 s; every case started within it" in md
    assert "compiled / HF static+compile decode" in md  # the ratio table's column
    # the CUDA table: fp16 first, batch 1 then 16, samplers in the report's order; ratios per group
    assert f"### CUDA: {GPU}" in md
    table = md[md.index("| model | dtype | batch | prompt/new | sampler |"):].split("\n\n")[0].splitlines()[2:]
    assert [(row.split(" | ")[1], row.split(" | ")[2], row.split(" | ")[4]) for row in table] == [
        ("fp16", "1", "reference (no cache)"), ("fp16", "1", "ours (KV cache, tuned kernels)"),
        ("fp16", "1", "ours, static cache + compiled step"), ("fp16", "1", "HF generate"),
        ("fp16", "1", "HF generate, static cache + compile"),
        ("fp16", "16", "ours, static cache + compiled step"), ("fp16", "16", "HF generate"),
        ("bf16", "1", "ours, static cache + compiled step"), ("bf16", "1", "HF generate"),
        ("bf16", "1", "HF generate, static cache + compile"),
        ("fp32", "1", "ours, static cache + compiled step"), ("fp32", "1", "HF generate"),
        ("fp32", "1", "HF generate, static cache + compile"),
    ]
    compiled = next(r for r in table if r.startswith("| random:gpt2-xl | fp16 | 1 |") and "compiled step" in r)
    assert compiled.endswith("| 400.0 | 20.0 | 4.10 | 40% | 8.00× | 1.60× | 2 | 42 | yes |")
    batch16 = next(r for r in table if "| fp16 | 16 |" in r and "compiled step" in r)
    assert batch16.endswith("| 8.00× | — | 2 | — | yes |")  # no HF compiled case at batch 16 here
    assert "| invalid (no valid round of 3: torch.compile compiled 1 graph(s)" in md
    assert next(r for r in table if "| fp32 |" in r and "| HF generate |" in r).endswith("| **NO** |")


def test_non_finite_fp16_and_a_spent_budget_are_stated(tmp_path: Path) -> None:
    from gpt2xl_app.bench_report import render_bench_section

    doc = _cuda_doc(_cuda_case("compiled", 400.0), _cuda_case("hf-compiled", 300.0, sampled_logits_finite=False),
                    _cuda_case("hf", None, valid=False, invalid_reason="no valid round of 3: decode time 0.0 s"),
                    budget={"budget_s": 360.0, "skipped": ["random:gpt2-xl-cuda-fp32-hf-compiled-b1-p16-n64"]})
    md = render_bench_section(doc, tmp_path)
    assert "- CUDA fp16 produces no NaN/inf: **NOT met**: non-finite logits in hf-compiled b1" in md
    assert ("compiled decode vs HF `generate` (eager): not measured (the hf case is invalid: no valid round of 3: "
            "decode time 0.0 s)") in md
    assert "vs HF `generate` with static cache + compile = **1.33×** (target ≥ 1.2×: met" in md
    assert ("- **Time budget spent**: 360 s; 1 case(s) did not start and are in no table: "
            "random:gpt2-xl-cuda-fp32-hf-compiled-b1-p16-n64") in md
    cpu_only = render_bench_section(_report_doc(_info("cached", 3.5)), tmp_path)
    assert "### CUDA" not in cpu_only and "CUDA GPU" not in cpu_only


def test_write_bench_report_without_json_is_a_result_error(tmp_path: Path) -> None:
    from gpt2xl.errors import ResultError
    from gpt2xl_app.bench_report import write_bench_report

    with pytest.raises(ResultError):
        write_bench_report(tmp_path)
