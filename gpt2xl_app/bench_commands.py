"""CLI commands of the bench layer (wired into `gpt2xl_app.cli` by `register`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bench.records import RATIOS
from gpt2xl.errors import ConfigError

_RATIO_HELP = "; ".join(f"{name} ({d.label})" for name, d in RATIOS.items())


def compare(
    ctx: typer.Context,
    files: Annotated[list[Path] | None, typer.Argument(metavar="OLD NEW | BENCH_JSON", help=(
        "Without --hardware: OLD, the baseline bench.json or a directory of per-CPU-kind baselines "
        "gate-cpu-<kind>.json (kind: the torch CPU capability the new run recorded, e.g. AVX2, AVX512; with no "
        "baseline for the kind, only floors and validity are checked, and the output says so), and NEW, the new "
        "bench.json. With --hardware: one or more bench.json files or run directories (DIR/bench.json)."),
        show_default=False)] = None,
    *,
    hardware: Annotated[bool, typer.Option("--hardware", help=(
        "The fleet table instead of a gate: one row per machine, device, dtype, sampler and model of every file "
        "(hardware, decode tok/s ± spread, roofline fraction, ours vs llama.cpp and HF); exit 0. Not with the "
        "gate options."))] = False,
    eval_runs: Annotated[bool, typer.Option("--eval", help=(
        "Compare the sampling grids of two eval runs (OLD and NEW: eval.json files or run directories) setting "
        "by setting, every shown metric with its interval, a change marked where the 95% intervals are "
        "disjoint; a report, exit 0. Not with the gate options."))] = False,
    plot: Annotated[Path | None, typer.Option(help=(
        "With --hardware: also draw the fleet as a PNG at this path (decode tok/s bars grouped by machine, "
        "coloured by dtype); no plot without it."))] = None,
    max_slowdown: Annotated[str | None, typer.Option(help=(
        "Largest tolerated slowdown per case, e.g. 10% or 0.1 (default 10%)."))] = None,
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
    holds no valid measurement, 0 otherwise; 2 for bad options or files. With --hardware: the
    fleet table of many runs (a report, exit 0). With --eval: two eval runs' grids, setting by setting
    (a report, exit 0).

    Example: gpt2xl compare bench/baselines bench.json --ratios --max-slowdown 25% --floor cached_vs_reference_decode=2

    Example: gpt2xl compare --hardware reports/*/bench.json --plot fleet.png

    Example: gpt2xl compare --eval reports/before reports/after
    """
    files = files or []
    if hardware and eval_runs:
        raise ConfigError("--hardware compares bench runs and --eval compares eval runs; choose one.")
    if hardware or eval_runs:
        mode = "--hardware fleet table" if hardware else "--eval comparison"
        gate = [name for name, given in (("--max-slowdown", max_slowdown is not None), ("--ratios", ratios),
                                         ("--metric", metric is not None), ("--floor", bool(floor))) if given]
        if gate:
            raise ConfigError(f"{', '.join(gate)} belong{'s' if len(gate) == 1 else ''} to the two-run gate, not to "
                              f"the {mode} (a report that never fails); drop "
                              f"{'it' if len(gate) == 1 else 'them'} or {mode.split(maxsplit=1)[0]}.")
    if hardware:
        _fleet(files, plot)
        return
    if plot is not None:
        raise ConfigError("--plot draws the --hardware fleet table; add --hardware or drop --plot.")
    if len(files) < 2:  # click's own words, as when OLD and NEW were two required arguments
        ctx.fail(f"Missing argument '{('old', 'new')[len(files)]}'.")
    if len(files) > 2:
        ctx.fail(f"Got unexpected extra argument(s) ({' '.join(str(f) for f in files[2:])})")
    if eval_runs:
        from gpt2xl_app.eval_compare import compare_grids, format_changes, load_grid

        typer.echo(format_changes(*compare_grids(load_grid(files[0]), load_grid(files[1]))))
        return
    from gpt2xl_app.compare import compare_files, format_table, parse_floors, parse_fraction

    old, new = files
    result = compare_files(  # checks every option before it reads either file
        old,
        new,
        max_slowdown=parse_fraction("10%" if max_slowdown is None else max_slowdown),
        mode="ratios" if ratios else "throughput",
        metric=metric,
        floors=parse_floors(floor or []),
    )
    typer.echo(format_table(result))
    if not result.passed:
        raise typer.Exit(code=1)


def _fleet(files: list[Path], plot: Path | None) -> None:
    """Read every run, prove the plot writable, draw it, then print the table (and the plot's path)."""
    from gpt2xl.validation import check_output_file
    from gpt2xl_app.fleet import format_fleet, load_fleet

    if plot is not None and plot.suffix.lower() != ".png":
        raise ConfigError(f"--plot {plot} must name a .png file (the plot is a PNG); e.g. --plot fleet.png.")
    fleet = load_fleet(files)  # every file read and checked before anything is written
    if plot is not None:
        from gpt2xl_app.fleet_plot import write_fleet_plot

        write_fleet_plot(fleet.rows, check_output_file(plot, name="--plot"))
    typer.echo(format_fleet(fleet))
    if plot is not None:
        typer.echo(f"plot: {plot}")


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
