"""``python -m bench``: run the throughput suite and render its report.

Every option is checked first (ranges, the dtype list, the model spec, a writable run directory):
a bad one prints one ``error:`` line and exits 2 before pytest starts. Then runs pytest on
``bench/`` in a child process (so every model it loaded is gone before plotting),
writing ``<run-dir>/bench.json`` (pytest-benchmark's format, metrics in each case's
``extra_info``), then ``<run-dir>/bench.md`` and PNG plots next to it. pytest's per-case lines
show progress. Exit status: pytest's (0 when every case passed or was skipped with a reason).

Examples::

    python -m bench --run-dir reports/mine                        # quick profile, ~10 min on 2 cores
    python -m bench --run-dir reports/x --profile full --dtype fp32,bf16
    python -m bench --run-dir reports/ci-gate --profile gate      # ratios for the CI gate
    python -m bench --run-dir reports/t --autotune fresh          # re-measure the kernel choices first
    python -m bench --run-dir reports/gpu --profile cuda --device cuda   # one GPU, ~5-9 min (estimate)

A run that asks for CUDA (``--device cuda``, or the CUDA-only ``cuda`` profile) on a machine where
torch sees no CUDA device is refused with one ``error:`` line before pytest starts, instead of
skipping every case and passing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

from bench.profiles import PROFILES, get_profile, local_xl_model, parse_dtypes
from gpt2xl.errors import ConfigError, DeviceError, GPT2XLError, OutputError, WeightsError
from gpt2xl.results import new_run_id, run_dir_lock
from gpt2xl.validation import check_float, check_int, check_memory, check_output_dir, check_seed

# This module stays torch-free at import (torch takes about a second to import), so that a bad
# option fails at once: these mirror gpt2xl.autotune.MODES, which conftest passes to pytest.
AUTOTUNE_MODES = ("off", "cached", "fresh")
MIN_PROBE_BYTES = 1 << 20  # gpt2xl.hardware.default_probe_bytes's floor: smaller buffers sit in cache
BENCH_DIR = Path(__file__).resolve().parent


class _Parser(argparse.ArgumentParser):
    """argparse with the house's error format: one ``error:`` line and exit 2, no usage block."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}; see {self.prog} --help.", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m bench",
        description=("Throughput benchmarks (tokens/s, prefill, memory, roofline) -> RUN_DIR/bench.json + bench.md "
                     "+ PNGs."),
    )
    parser.add_argument("--run-dir", type=Path, default=None, help="output folder (default: reports/<utc-time>)")
    parser.add_argument("--profile", default="quick", choices=sorted(PROFILES),
                        help="; ".join(f"{p.name}: {p.description}" for p in PROFILES.values()))
    parser.add_argument("--model", default=None,
                        help=("model spec (default: the profile's; quick/full/cuda: gpt2-xl if in the HF cache, else "
                              "random:gpt2-xl)"))
    parser.add_argument("--device", default="all", choices=("cpu", "cuda", "all"),
                        help=("all (default) lists CUDA cases too, skipped with a reason when CUDA is absent; cuda "
                              "(or the cuda profile) is refused where torch sees no CUDA device"))
    parser.add_argument("--dtype", default=None,
                        help="comma list of fp32,bf16,fp16 (default: the profile's per device)")
    parser.add_argument("--probe-bytes", type=int, default=None,
                        help="bandwidth probe buffer size in bytes (>= 1 MiB; twice it must fit in available memory)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads, 1 to the CPU count (default: the profile's / torch's)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of random weights, prompts and sampling (0 to 2**63 - 1)")
    parser.add_argument("--autotune", default="cached", choices=AUTOTUNE_MODES,
                        help="kernel choices per projection: off (the plain plan), cached (default: measured once per "
                             "CPU / torch / threads / dtype and reused), fresh (measure again)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds after the start past which no further case starts; the rest are skipped with "
                             "the reason (default: the profile's; cuda: 360)")
    parser.add_argument("-k", dest="keyword", default=None, help="pytest -k expression to select cases")
    parser.add_argument("--no-report", action="store_true", help="write bench.json only")
    return parser


def pytest_command(args: argparse.Namespace, json_path: Path) -> list[str]:
    cmd = [
        sys.executable, "-m", "pytest", str(BENCH_DIR),
        "-p", "no:cacheprovider",
        "-v", "-rs",  # one line per case as it finishes; skip reasons at the end
        "--benchmark-json", str(json_path),
        "--benchmark-columns", "min,median,max,rounds",
        "--benchmark-sort", "name",
        "--bench-profile", args.profile,
        "--bench-device", args.device,
        "--bench-seed", str(args.seed),
        "--bench-autotune", args.autotune,
    ]
    if args.model:
        cmd += ["--bench-model", args.model]
    if args.dtype:
        cmd += ["--bench-dtype", args.dtype]
    if args.probe_bytes is not None:
        cmd += ["--bench-probe-bytes", str(args.probe_bytes)]
    if args.threads is not None:
        cmd += ["--bench-threads", str(args.threads)]
    if args.time_budget is not None:
        cmd += ["--bench-time-budget", repr(args.time_budget)]
    if args.keyword:
        cmd += ["-k", args.keyword]
    return cmd


def _offline(env: dict[str, str]) -> bool:
    return env.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def check_args(args: argparse.Namespace, env: dict[str, str]) -> Path:
    """Check every option against its real domain, before pytest starts, and normalize them in
    ``args`` (the dtype list, the model); return the run directory, created and proven writable.

    The cheap checks come first; the model spec last but one, since resolving a checkpoint's or a
    hub name's config imports torch; the run directory last, so that a bad option creates nothing.
    A run directory that already holds a bench.json is refused.
    Raises a GPT2XLError (ConfigError, WeightsError, OutputError) with one sentence.
    """
    if args.threads is not None:
        check_int("--threads", args.threads, minimum=1, maximum=os.cpu_count() or 1)
    if args.probe_bytes is not None:
        check_int("--probe-bytes", args.probe_bytes, minimum=MIN_PROBE_BYTES)
        check_memory(2 * args.probe_bytes,
                     what=f"--probe-bytes {args.probe_bytes:,} (the copy probe holds two buffers)",
                     hint="pass a smaller --probe-bytes, or leave it out for a quarter of the available memory.")
    check_seed("--seed", args.seed)
    if args.time_budget is not None:
        check_float("--time-budget", args.time_budget, minimum=1.0, hint=" Pass a number of seconds, e.g. 360.")
    if args.dtype is not None:
        args.dtype = ",".join(parse_dtypes(args.dtype))
    check_devices(args.profile, args.device)
    if args.model is not None:
        if not args.model.strip():  # Path("") is the current directory: say what was meant
            raise ConfigError("--model is empty; pass a hub name, a checkpoint directory or random:<preset>.")
        from gpt2xl.weights import resolve_config

        if resolve_config(args.model) is None and _offline(env):
            raise WeightsError(
                f"Model {args.model!r} is not in the local Hugging Face cache and the benchmark runs offline "
                f"(HF_HUB_OFFLINE=1); download it first (gpt2xl generate x --model {args.model} --max-new-tokens 1) "
                "or run with HF_HUB_OFFLINE=0."
            )
    elif get_profile(args.profile).default_model is None:
        args.model = local_xl_model()
    run_dir = (args.run_dir or Path("reports") / new_run_id()).resolve()
    if (run_dir / "bench.json").exists():
        # Overwriting would lose that run, and a run that then fails to write its own would be
        # reported from the old file.
        raise OutputError(
            f"--run-dir {run_dir} already holds a bench.json; pass a new directory or move that file away.")
    return check_output_dir(run_dir, name="--run-dir")


def check_devices(profile_name: str, device: str) -> None:
    """A run must be able to measure something on the devices it names: ``--device cpu`` with a
    CUDA-only profile measures nothing, and CUDA asked for (``--device cuda``, or a CUDA-only
    profile) where torch sees no CUDA device would skip every case and pass. Imports torch only
    when CUDA is asked for. Raises ConfigError or DeviceError with what to do."""
    profile = get_profile(profile_name)
    others = ", ".join(name for name, p in PROFILES.items() if "cpu" in p.devices)
    if device == "cpu" and "cpu" not in profile.devices:
        raise ConfigError(f"Profile {profile.name} measures {', '.join(profile.devices)} only, and --device cpu "
                          f"leaves it nothing; run it with --device cuda on a GPU host, or pick a CPU profile "
                          f"({others}).")
    if device == "cuda" or profile.devices == ("cuda",):
        import torch

        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            what = f"Profile {profile.name}" if device != "cuda" else "--device cuda"
            raise DeviceError(
                f"{what} needs a CUDA device, and torch {torch.__version__} ({build}) sees none; run it on a GPU "
                f"host with a CUDA build of torch, or measure the CPU with --device cpu and a CPU profile ({others})."
            )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    profile = get_profile(args.profile)
    env = dict(os.environ)
    # A model spec is checked against the local cache: never wait on the hub for it.
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        run_dir = check_args(args, env)
    except GPT2XLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    json_path = run_dir / "bench.json"
    print(f"[bench] profile {profile.name} ({profile.description}); model {args.model or profile.default_model}; "
          f"device {args.device}; output {run_dir}", flush=True)
    t0 = time.perf_counter()
    status = subprocess.run(pytest_command(args, json_path), env=env, check=False).returncode
    print(f"[bench] pytest finished in {time.perf_counter() - t0:.0f} s with exit status {status}", flush=True)
    if not json_path.is_file():
        print(f"[bench] no {json_path} was written; nothing to report", file=sys.stderr)
        return status or 1
    if not args.no_report:
        from gpt2xl_app.bench_report import write_bench_report
        from gpt2xl_app.report import write_report

        try:
            report = write_bench_report(run_dir)
            with run_dir_lock(run_dir):  # an eval run may be rewriting report.md this very moment
                joined = write_report(run_dir)  # report.md: bench joined with eval.json when present
        except GPT2XLError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"[bench] report: {report} (joined run report: {joined})")
    print(f"[bench] results: {json_path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
