"""CLI commands of the bench layer (wired into `gpt2xl_app.cli` by `register`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bench.records import RATIOS

_RATIO_HELP = "; ".join(f"{name} ({d.label})" for name, d in RATIOS.items())


def compare(
    old: Annotated[Path, typer.Argument(help=(
        "Baseline bench.json, or a directory of per-CPU-kind baselines gate-cpu-<kind>.json (kind: the "
        "torch CPU capability the new run recorded, e.g. AVX2, AVX512); with no baseline for the kind, "
        "only floors and validity are checked, and the output says so."))],
    new: Annotated[Path, typer.Argument(help="New bench.json.")],
    *,
    max_slowdown: Annotated[str, typer.Option(help="Largest tolerated slowdown per case, e.g. 10% or 0.1.")] = "10%",
    ratios: Annotated[bool, typer.Option("--ratios", help=(
        "Compare speed ratios measured within each run instead of absolute speeds: the gate that holds "
        f"on a noisy machine. Ratios: {_RATIO_HELP}."))] = False,
    metric: Annotated[str | None, typer.Option(help=(
        "Per-case metric in throughput mode (not with --ratios): decode_tokens_per_s (default), tokens_per_s, "
        "prefill_s, decode_s, decode_s_per_token, peak_memory_bytes."))] = None,
    floor: Annotated[list[str] | None, typer.Option(help=(
        "Ratios mode: an absolute floor NAME=VALUE, e.g. cached_vs_reference_decode=2 (repeatable); NAME one of "
        f"{', '.join(RATIOS)}; VALUE a finite number > 0."))] = None,
) -> None:
    """Compare two benchmark runs side by side; exit 1 when a case regressed, fell below a floor or
    holds no valid measurement, 0 otherwise; 2 for bad options or files.

    Example: gpt2xl compare bench/baselines bench.json --ratios --max-slowdown 25% --floor cached_vs_reference_decode=2
    """
    from gpt2xl_app.compare import compare_files, format_table, parse_floors, parse_fraction

    result = compare_files(  # checks every option before it reads either file
        old,
        new,
        max_slowdown=parse_fraction(max_slowdown),
        mode="ratios" if ratios else "throughput",
        metric=metric,
        floors=parse_floors(floor or []),
    )
    typer.echo(format_table(result))
    if not result.passed:
        raise typer.Exit(code=1)


def bench_report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory holding bench.json.")],
) -> None:
    """Re-render RUN_DIR/bench.md and its PNG plots from RUN_DIR/bench.json."""
    from gpt2xl_app.bench_report import write_bench_report

    typer.echo(str(write_bench_report(run_dir)))


def register(app: typer.Typer) -> None:
    """Add this layer's commands to ``app``."""
    app.command("compare")(compare)
    app.command("bench-report")(bench_report)
