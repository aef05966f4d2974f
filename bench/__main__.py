"""``python -m bench``: run the throughput suite and render its report.

Runs pytest on ``bench/`` in a child process (so every model it loaded is gone before plotting),
writing ``<run-dir>/bench.json`` (pytest-benchmark's format, metrics in each case's
``extra_info``), then ``<run-dir>/bench.md`` and PNG plots next to it. pytest's per-case lines
show progress. Exit status: pytest's (0 when every case passed or was skipped with a reason).

Examples::

    python -m bench --run-dir reports/mine                        # quick profile, ~10 min on 2 cores
    python -m bench --run-dir reports/x --profile full --dtype fp32,bf16
    python -m bench --run-dir reports/ci-gate --profile gate      # ratios for the CI gate
    python -m bench --run-dir reports/t --autotune fresh          # re-measure the kernel choices first
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.profiles import PROFILES, default_model, get_profile

AUTOTUNE_MODES = ("off", "cached", "fresh")  # bench.harness.AUTOTUNE_MODES, without importing torch here
from gpt2xl.devices import resolve_dtype
from gpt2xl.errors import GPT2XLError
from gpt2xl.results import new_run_id

BENCH_DIR = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Throughput benchmarks (tokens/s, prefill, memory, roofline) -> RUN_DIR/bench.json + bench.md + PNGs.",
    )
    parser.add_argument("--run-dir", type=Path, default=None, help="output folder (default: reports/<utc-time>)")
    parser.add_argument("--profile", default="quick", choices=sorted(PROFILES),
                        help="; ".join(f"{p.name}: {p.description}" for p in PROFILES.values()))
    parser.add_argument("--model", default=None,
                        help="model spec (default: the profile's; quick/full: gpt2-xl if in the HF cache, else random:gpt2-xl)")
    parser.add_argument("--device", default="all", choices=("cpu", "cuda", "all"),
                        help="all (default) lists CUDA cases too; they are skipped with a reason when CUDA is absent")
    parser.add_argument("--dtype", default=None, help="comma list of fp32,bf16,fp16 (default: the profile's per device)")
    parser.add_argument("--probe-bytes", type=int, default=None, help="bandwidth probe buffer size in bytes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the profile's / torch's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of random weights, prompts and sampling")
    parser.add_argument("--autotune", default="cached", choices=AUTOTUNE_MODES,
                        help="kernel choices per projection: off (the plain plan), cached (default: measured once per "
                             "CPU / torch / threads / dtype and reused), fresh (measure again)")
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
    if args.probe_bytes:
        cmd += ["--bench-probe-bytes", str(args.probe_bytes)]
    if args.threads:
        cmd += ["--bench-threads", str(args.threads)]
    if args.keyword:
        cmd += ["-k", args.keyword]
    return cmd


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    profile = get_profile(args.profile)
    for name in (args.dtype or "").split(","):
        if name.strip():
            try:
                resolve_dtype(name.strip())  # fail in milliseconds, not at pytest collection
            except GPT2XLError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
    if args.model is None and profile.default_model is None:
        args.model = default_model()
    run_dir = (args.run_dir or Path("reports") / new_run_id()).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    json_path = run_dir / "bench.json"
    env = dict(os.environ)
    # The default model was chosen from the local cache: never wait on the hub for it.
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
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
            joined = write_report(run_dir)  # report.md: bench joined with eval.json when present
        except GPT2XLError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"[bench] report: {report} (joined run report: {joined})")
    print(f"[bench] results: {json_path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
