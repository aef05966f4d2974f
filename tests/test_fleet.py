"""gpt2xl compare --hardware: the fleet table over the two committed gate baselines (two real
machines: AVX2 and AVX-512) and a third, GPU machine derived from them; rows, spreads, roofline
fractions and peer ratios checked against numbers computed by hand from the files; invalid cases
shown with their reason; the CLI's table and PNG; every bad input one error line before anything
is written."""

from __future__ import annotations

import copy
import json
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gpt2xl.errors import ConfigError, ResultError
from gpt2xl_app.fleet import FleetRow, format_fleet, load_fleet, run_labels, spread_header
from gpt2xl_app.fleet_plot import write_fleet_plot

REPO = Path(__file__).resolve().parents[1]
AVX2 = REPO / "bench" / "baselines" / "gate-cpu-AVX2.json"
AVX512 = REPO / "bench" / "baselines" / "gate-cpu-AVX512.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GPU = "NVIDIA H100 80GB HBM3"
INVALID_REASON = "no valid round of 2: logits not finite"


def _cli(*args: str, preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpt2xl_app.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, preexec_fn=preexec_fn, check=False)


def _assert_one_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert proc.stdout == ""  # no table, no plot path: nothing was reported


def _gpu_case(sampler: str, decode: float | None, *, device: str = "cuda", dtype: str = "bf16",
              **extra: Any) -> dict[str, Any]:
    info = {
        "kind": "throughput", "sampler": sampler, "model": "gpt2-xl", "device": device, "dtype": dtype,
        "device_name": GPU if device == "cuda" else "AMD EPYC", "batch_size": 1, "prompt_len": 16, "new_tokens": 32,
        "decode_tokens_per_s": decode, "tokens_per_s": 10.0, "prefill_s": 0.01, "valid": True, "threads": 16, **extra,
    }
    return {"name": f"test_throughput[gpt2-xl-{device}-{dtype}-{sampler}-b1-p16-n32]", "extra_info": info}


def _gpu_doc() -> dict[str, Any]:
    """A third machine, derived from the AVX-512 baseline: a GPU host with separate throughput
    cases (so its ratios are quotients of medians), one of them invalid, one with a zero rate."""
    doc = copy.deepcopy(json.loads(AVX512.read_text()))
    doc["machine_info"]["node"] = "gpu-box"
    g = doc["machine_info"]["gpt2xl"]
    g["environment"].update(cuda_available=True, cuda_version="12.4", torch_threads=16,
                            gpus=[{"name": GPU, "memory_bytes": 85_000_000_000, "capability": "9.0"}])
    g["roofline_basis"] = {"cuda": {"bytes_per_s": 3.0e12, "source": "probe"}, **g["roofline_basis"]}
    doc["benchmarks"] = [
        _gpu_case("cached", 100.0, achieved_bytes_per_s=2.0e12, rounds=5,
                  rounds_decode_tokens_per_s=[90.0, 95.0, 100.0, 110.0, 120.0], decode_tokens_per_s_spread=15.0,
                  spread_kind="iqr"),
        _gpu_case("hf", 40.0, achieved_bytes_per_s=0.8e12),
        _gpu_case("compiled", 160.0, achieved_bytes_per_s=2.5e12),
        _gpu_case("hf-compiled", 128.0, achieved_bytes_per_s=2.0e12),
        _gpu_case("reference", None, valid=False, invalid_reason=INVALID_REASON),
        _gpu_case("cached", 20.0, device="cpu", dtype="fp32"),
        _gpu_case("llamacpp", 25.0, device="cpu", dtype="fp32"),
        _gpu_case("hf", 0.0, device="cpu", dtype="fp32"),
    ]
    return doc


@pytest.fixture
def gpu_run(tmp_path: Path) -> Path:
    run = tmp_path / "h100-bf16"
    run.mkdir()
    (run / "bench.json").write_text(json.dumps(_gpu_doc()))
    return run


def _row(rows: tuple[FleetRow, ...], machine: str, sampler: str, *, device: str = "cpu",
         measured: str | None = None) -> FleetRow:
    found = [r for r in rows if (r.machine, r.sampler, r.device) == (machine, sampler, device)
             and measured in (None, r.measured)]
    assert len(found) == 1, found
    return found[0]


def _iqr(values: list[float]) -> float:
    """q3 − q1 of 4 values, inclusive method, by hand: q1 at 0.75 and q3 at 2.25 of the sorted list."""
    v = sorted(values)
    return (v[2] + 0.25 * (v[3] - v[2])) - (v[0] + 0.75 * (v[1] - v[0]))


# --- rows -------------------------------------------------------------------------------------------------

def test_two_real_machines_give_a_row_per_sampler_with_the_files_numbers() -> None:
    fleet = load_fleet([AVX512, AVX2])
    old, new = json.loads(AVX2.read_text()), json.loads(AVX512.read_text())
    assert [(r.machine, r.sampler) for r in fleet.rows] == [  # sorted by machine, then the engine order
        ("vm/gate-cpu-AVX2", "reference"), ("vm/gate-cpu-AVX2", "cached"), ("vm/gate-cpu-AVX2", "hf"),
        ("vm/gate-cpu-AVX512", "reference"), ("vm/gate-cpu-AVX512", "cached"),
        ("vm/gate-cpu-AVX512", "cached-plain"), ("vm/gate-cpu-AVX512", "hf"),
    ]
    assert {r.hardware for r in fleet.rows} == {"AMD EPYC"}
    assert all(r.measured == "interleaved" and (r.dtype, r.model) == ("fp32", "random:gpt2") for r in fleet.rows)
    assert _row(fleet.rows, "vm/gate-cpu-AVX2", "cached").features == "AVX2, 1 thread"
    assert _row(fleet.rows, "vm/gate-cpu-AVX512", "cached").features == "AVX512, kernels avx512+avx512_bf16, 1 thread"

    for machine, doc in (("vm/gate-cpu-AVX2", old), ("vm/gate-cpu-AVX512", new)):
        info = doc["benchmarks"][0]["extra_info"]
        for sampler, record in info["samplers"].items():
            row = _row(fleet.rows, machine, sampler)
            assert row.decode_tokens_per_s == record["decode_tokens_per_s"]
            assert (row.rounds, row.spread_kind) == (4, "iqr")
            if "decode_tokens_per_s_spread" in record:  # recorded: taken as is
                assert row.spread == record["decode_tokens_per_s_spread"]
            else:  # the AVX2 file predates recorded spreads: the same IQR over its rounds
                assert row.spread == pytest.approx(_iqr(record["rounds_decode_tokens_per_s"]), rel=1e-12)
        # ours vs HF in interleaved rounds: the median of the per-round ratios the file holds
        assert _row(fleet.rows, machine, "cached").vs("hf") == info["ratios"]["ours_vs_hf_decode"]
        assert _row(fleet.rows, machine, "cached").vs("llamacpp") is None  # no llama.cpp in these runs
        assert _row(fleet.rows, machine, "hf").vs_peer == ()  # a peer has no ratio over itself

    # roofline: achieved bytes/s over the run's basis (AVX-512: the start probe; AVX2: its read probe)
    new_cached = new["benchmarks"][0]["extra_info"]["samplers"]["cached"]
    assert _row(fleet.rows, "vm/gate-cpu-AVX512", "cached").roofline_fraction == pytest.approx(
        new_cached["achieved_bytes_per_s"] / 25068632519.970123)
    assert _row(fleet.rows, "vm/gate-cpu-AVX512", "cached").roofline_fraction == pytest.approx(
        new_cached["roofline_fraction"])
    old_info = old["benchmarks"][0]["extra_info"]
    assert _row(fleet.rows, "vm/gate-cpu-AVX2", "cached").roofline_fraction == pytest.approx(
        old_info["achieved_bytes_per_s"] / old_info["bandwidth_bytes_per_s"])
    # the old file recorded achieved bytes/s for the case's own sampler only: none for the others
    assert _row(fleet.rows, "vm/gate-cpu-AVX2", "hf").roofline_fraction is None


def test_a_gpu_machine_rows_ratios_and_invalid_cases(gpu_run: Path) -> None:
    fleet = load_fleet([AVX2, gpu_run])
    m = "gpu-box/h100-bf16"
    assert [(r.device, r.dtype, r.sampler) for r in fleet.rows if r.machine == m] == [
        ("cpu", "fp32", "cached"), ("cpu", "fp32", "hf"), ("cpu", "fp32", "llamacpp"),
        ("cuda", "bf16", "reference"), ("cuda", "bf16", "cached"), ("cuda", "bf16", "compiled"),
        ("cuda", "bf16", "hf"), ("cuda", "bf16", "hf-compiled"),
    ]
    cached = _row(fleet.rows, m, "cached", device="cuda")
    assert (cached.hardware, cached.features) == (GPU, "sm 9.0, 85 GB, CUDA 12.4")
    assert cached.measured == "separate"
    assert (cached.decode_tokens_per_s, cached.spread, cached.spread_kind) == (100.0, 15.0, "iqr")
    assert (cached.low, cached.high) == (95.0, 110.0)  # q1 and q3 of its five rounds
    assert cached.roofline_fraction == pytest.approx(2.0e12 / 3.0e12)
    assert cached.vs("hf") == pytest.approx(100.0 / 40.0)  # separate cases: quotient of the medians
    compiled = _row(fleet.rows, m, "compiled", device="cuda")
    assert compiled.vs("hf") == pytest.approx(160.0 / 40.0)
    assert compiled.vs("hf-compiled") == pytest.approx(160.0 / 128.0)  # the fair GPU peer
    assert cached.vs("hf-compiled") is None  # no ratio of the eager cached sampler over it is defined
    peer = _row(fleet.rows, m, "hf-compiled", device="cuda")
    assert peer.vs_peer == () and peer.roofline_fraction == pytest.approx(2.0e12 / 3.0e12)
    assert _row(fleet.rows, m, "cached").vs("llamacpp") == pytest.approx(20.0 / 25.0)
    assert _row(fleet.rows, m, "cached").vs("hf") is None  # the CPU HF case is invalid: no ratio over it
    cpu = _row(fleet.rows, m, "cached")
    assert (cpu.hardware, cpu.features) == ("AMD EPYC", "AVX512, 16 threads")

    reference = _row(fleet.rows, m, "reference", device="cuda")
    assert (reference.decode_tokens_per_s, reference.invalid) == (None, INVALID_REASON)
    zero = _row(fleet.rows, m, "hf")
    assert zero.decode_tokens_per_s is None
    assert zero.invalid == "decode_tokens_per_s = 0.0 is not positive and finite"

    text = format_fleet(fleet)
    assert f"invalid: {INVALID_REASON}" in text
    assert "invalid: decode_tokens_per_s = 0.0 is not positive and finite" in text
    assert "2 row(s) hold no valid measurement" in text
    line = next(x for x in text.splitlines() if x.startswith(f"| {m} ") and "| compiled " in x)
    assert "| 160 " in line
    assert "| 83% " in line  # 2.5e12 / 3e12
    assert "| 4.00× | 1.25× " in line  # vs HF 160 / 40, vs HF static+compile 160 / 128 (padded)
    header = next(x for x in text.splitlines() if x.startswith("| machine "))
    assert header.rstrip().endswith("| vs llama.cpp | vs HF | vs HF static+compile |")


def test_rows_refuse_a_number_and_a_reason_together() -> None:
    def row(decode: float | None, **extra: Any) -> FleetRow:
        return FleetRow(machine="m", source="s", hardware="h", features="f", device="cpu", dtype="fp32", model="x",
                        sampler="cached", batch_size=1, prompt_len=8, new_tokens=8, measured="separate", rounds=1,
                        spread=None, spread_kind=None, decode_tokens_per_s=decode, **extra)

    assert row(5.0).vs("hf") is None
    with pytest.raises(ValueError, match="either a valid decode rate"):
        row(5.0, invalid="bad")
    with pytest.raises(ValueError, match="either a valid decode rate"):
        row(None)
    with pytest.raises(ValueError, match="vs_peer"):
        row(5.0, vs_peer=(("hf", float("nan")),))


def test_labels_tell_runs_of_one_host_apart(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "run" / "bench.json", tmp_path / "b" / "run" / "bench.json"
    assert run_labels([a, b, tmp_path / "c" / "gate.json"]) == ["a/run", "b/run", "gate"]
    assert run_labels([tmp_path / "run-fp32" / "bench.json", tmp_path / "run-bf16" / "bench.json"]) == [
        "run-fp32", "run-bf16"]


def test_the_spread_header_names_the_spreads_shown(gpu_run: Path) -> None:
    fleet = load_fleet([gpu_run])
    assert spread_header(fleet.rows) == "decode tok/s (median ± IQR of rounds)"
    rows = [r for r in fleet.rows if r.spread_kind != "iqr"]
    assert spread_header(rows) == "decode tok/s (median; no spread: one round, or none recorded)"


def test_bad_fleets_are_errors(tmp_path: Path, gpu_run: Path) -> None:
    with pytest.raises(ConfigError, match=r"at least one bench\.json"):
        load_fleet([])
    with pytest.raises(ConfigError, match="given twice"):
        load_fleet([gpu_run, gpu_run / "bench.json"])
    scaling = _gpu_doc()
    for bench in scaling["benchmarks"]:
        bench["extra_info"]["kind"] = "scaling"
    (tmp_path / "scaling.json").write_text(json.dumps(scaling))
    with pytest.raises(ResultError, match="None of the 1 file"):
        load_fleet([tmp_path / "scaling.json"])
    invalid = [r for r in load_fleet([gpu_run]).rows if r.invalid is not None]
    with pytest.raises(ResultError, match="nothing to plot"):  # an invalid row is never drawn
        write_fleet_plot(invalid, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# --- the CLI ----------------------------------------------------------------------------------------------

def test_cli_prints_the_table_and_writes_the_plot(tmp_path: Path, gpu_run: Path) -> None:
    plot = tmp_path / "out" / "fleet.png"
    proc = _cli("compare", "--hardware", str(AVX2), str(AVX512), str(gpu_run), "--plot", str(plot))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[0] == "Fleet: 3 run(s), 15 row(s)."
    header = next(x for x in lines if x.startswith("| machine "))
    for column in ("hardware", "features", "dtype", "sampler", "decode tok/s (median ± IQR of rounds)", "roofline",
                   "vs llama.cpp", "vs HF", "vs HF static+compile"):
        assert f"| {column} " in header
    avx512_cached = next(x for x in lines if x.startswith("| vm/gate-cpu-AVX512 ") and "| cached " in x)
    for cell in ("| 35.7 ± 1.41 ", "| 71% ", "| 1.56× |"):
        assert cell in avx512_cached
    assert f"invalid: {INVALID_REASON}" in proc.stdout
    assert lines[-1] == f"plot: {plot}"
    assert plot.read_bytes()[:8] == PNG_MAGIC
    # without --plot, no plot
    proc = _cli("compare", "--hardware", str(AVX2))
    assert proc.returncode == 0, proc.stderr
    assert "plot:" not in proc.stdout


def test_two_file_mode_keeps_click_s_argument_errors() -> None:
    _assert_one_error(_cli("compare", str(AVX2)), "Missing argument 'new'.", "compare --help")
    _assert_one_error(_cli("compare", str(AVX2), str(AVX2), "extra"), "unexpected extra argument(s) (extra)")


def _fsize_limit() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))  # a PNG is tens of kB


@pytest.mark.parametrize("case", [
    "no files", "missing file", "missing run dir", "not json", "not a bench", "plot below a file", "plot not png",
    "gate option", "plot without hardware", "file twice", "file size limit",
])
def test_bad_fleet_input_is_one_error_line_and_writes_nothing(tmp_path: Path, case: str) -> None:
    plot = tmp_path / "plots" / "fleet.png"
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    (tmp_path / "not.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"results": []}))
    good = str(AVX2)
    args, words, preexec = {
        "no files": (["--hardware"], ["--hardware needs at least one bench.json"], None),
        "missing file": (["--hardware", good, str(tmp_path / "nope.json")], ["Cannot read benchmark file"], None),
        "missing run dir": (["--hardware", str(tmp_path)], [f"{tmp_path / 'bench.json'}"], None),
        "not json": (["--hardware", good, str(tmp_path / "not.json")], ["is not valid JSON"], None),
        "not a bench": (["--hardware", str(tmp_path / "other.json")], ["not a usable benchmark result",
                                                                       "no 'benchmarks' list"], None),
        "plot below a file": (["--hardware", good, "--plot", str(blocker / "fleet.png")],
                              ["Cannot write --plot", "is a file, not a directory"], None),
        "plot not png": (["--hardware", good, "--plot", str(tmp_path / "fleet.jpg")], ["must name a .png"], None),
        "gate option": (["--hardware", good, "--ratios", "--max-slowdown", "5%"],
                        ["--max-slowdown, --ratios belong to the two-run gate"], None),
        "plot without hardware": ([good, good, "--plot", str(plot)], ["add --hardware or drop --plot"], None),
        "file twice": (["--hardware", good, good], ["given twice"], None),
        "file size limit": (["--hardware", good, "--plot", str(plot)], ["file size limit"], _fsize_limit),
    }[case]
    if case != "plot below a file":
        args += [] if "--plot" in args else ["--plot", str(plot)]
    _assert_one_error(_cli("compare", *args, preexec_fn=preexec), *words)
    assert not plot.exists()
    assert not (tmp_path / "fleet.jpg").exists()
    if case != "file size limit":  # only a run that got as far as writing may have made the plot's folder
        assert not plot.parent.exists()
