"""CLI commands of the eval layer (wired into `gpt2xl_app.cli` by `register`).

``gpt2xl eval perplexity | lambada | grid | run | report``. Each command parses its options into
an options dataclass of :mod:`gpt2xl.evaluation` (comma lists and paths parsed on the way:
:func:`grid_config`, :func:`ppl_datasets_option`, :func:`path_option`), makes ONE library call
(:func:`gpt2xl.evaluation.evaluate_perplexity`, ``evaluate_lambada``, ``evaluate_grid``,
``evaluate_run``, ``rerender_run_dir``), and prints what that call hands back. Every check, the
pipeline and the run directory's handling live in the library; the plots and Markdown come from
:mod:`gpt2xl_app.eval_report` and :mod:`gpt2xl_app.report` (the library's renderer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, overload

import typer

from gpt2xl.errors import ConfigError, ResultError
from gpt2xl.evaluation import EVAL_MODEL_ENV, GridOptions, Hooks, LambadaOptions, PerplexityOptions, RunOptions
from gpt2xl.grid import DEFAULT_GRID, GridConfig, check_grid_top_p, check_temperature, check_top_k
from gpt2xl.metric_table import SETTINGS, SHOWN_METRICS, format_value
from gpt2xl.validation import check_int, check_seed, parse_list

eval_app = typer.Typer(
    name="eval",
    help=(
        "Evaluate a model: sliding-window perplexity, LAMBADA, and the temperature x top-k sampling grid.\n\n"
        "Datasets are read from --data-dir (default $GPT2XL_DATA_DIR, e.g. ../shared/data) and checked "
        "against pinned sha256s; without a directory the `datasets` library is tried (needs the network)."
    ),
    no_args_is_help=True,
)

ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="Hub name, local HF checkpoint directory, or random:<preset>.")
]
DatasetOpt = Annotated[str, typer.Option(help="wikitext2, tinyshakespeare or lambada.")]
# Paths are taken as text: typer turns "" into Path("."), the current directory, silently.
DataDirOpt = Annotated[
    str | None, typer.Option(help="Folder laid out as ../shared/data (default: $GPT2XL_DATA_DIR).")
]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[str, typer.Option(help="fp32, fp16 or bf16.")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(help="torch CPU threads (default: torch's choice). Use 1 on a CPU shared with other jobs."),
]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars on stderr.")]


def register(app: typer.Typer) -> None:
    """Add this layer's commands (``gpt2xl eval …``) to ``app``."""
    app.add_typer(eval_app, name="eval")


# --------------------------------------------------------------------------------------------
# option text → values
# --------------------------------------------------------------------------------------------


def grid_config(
    *, dataset: str, temperatures: str, top_ks: str, seeds: str, num_prompts: int, prompt_tokens: int,
    max_new_tokens: int, batch_size: int, top_ps: str = "1", mauve: bool = True, preset: str | None = None,
) -> GridConfig:
    """The grid the options describe; ConfigError naming the option that is wrong. A ``preset``
    names the settings itself, so the three axis options must then be left at their defaults."""
    from gpt2xl.data import get_spec

    get_spec(dataset)
    for name, value in (("--num-prompts", num_prompts), ("--prompt-tokens", prompt_tokens),
                        ("--max-new-tokens", max_new_tokens), ("--batch-size", batch_size)):
        check_int(name, value)
    if preset is not None:
        from gpt2xl.holtzman import preset_grid

        given = [option for option, value, default in (
            ("--temperatures", temperatures, DEFAULT_TEMPERATURES), ("--top-ks", top_ks, DEFAULT_TOP_KS),
            ("--top-ps", top_ps, DEFAULT_TOP_PS)) if value != default]
        if given:
            raise ConfigError(f"--preset {preset} names its own settings; drop {', '.join(given)}.")
        return preset_grid(
            preset, dataset=dataset, num_prompts=num_prompts, prompt_tokens=prompt_tokens,
            max_new_tokens=max_new_tokens, batch_size=batch_size, mauve=mauve,
            seeds=parse_list(seeds, name="--seeds", item=lambda s: check_seed("a seed", int(s)),
                             what="integer seeds"))
    return GridConfig(
        dataset=dataset,
        num_prompts=num_prompts,
        prompt_tokens=prompt_tokens,
        max_new_tokens=max_new_tokens,
        temperatures=parse_list(temperatures, name="--temperatures", item=lambda t: check_temperature(float(t)),
                                what="temperatures"),
        top_ks=parse_list(top_ks, name="--top-ks", item=lambda k: check_top_k(int(k)), what="integers"),
        top_ps=parse_list(top_ps, name="--top-ps", item=lambda p: check_grid_top_p(float(p)),
                          what="numbers in (0, 1]"),
        seeds=parse_list(seeds, name="--seeds", item=lambda s: check_seed("a seed", int(s)), what="integer seeds"),
        batch_size=batch_size,
        mauve=mauve,
    )


@overload
def path_option(name: str, text: str) -> Path: ...


@overload
def path_option(name: str, text: None) -> None: ...


def path_option(name: str, text: str | None) -> Path | None:
    """A path option as a Path (None stays None); a blank one is refused rather than read as
    the current directory."""
    if text is None:
        return None
    if not text.strip():
        raise ConfigError(f"{name} must name a path, got {text!r}.")
    return Path(text)


def ppl_datasets_option(text: str) -> tuple[str, ...]:
    """``--ppl-datasets``: '' (or blanks) for none, else a comma list without gaps or repeats."""
    from gpt2xl.evaluation import perplexity_dataset

    if not text.strip():
        return ()
    return parse_list(text, name="--ppl-datasets", item=perplexity_dataset, what="dataset names")


def dtypes_option(text: str) -> tuple[str, ...]:
    """``--dtypes``: a comma list of dtype names without gaps or repeats (fp32 among them is
    checked by the run's options)."""
    from gpt2xl.dtypes import check_dtype_name

    return parse_list(text, name="--dtypes", item=check_dtype_name, what="dtype names")


def _listed(values: tuple[float, ...] | tuple[int, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)


# The grid options' defaults, as option text: the library's one default grid (gpt2xl.grid.DEFAULT_GRID).
DEFAULT_TEMPERATURES = _listed(DEFAULT_GRID.temperatures)
DEFAULT_TOP_KS = _listed(DEFAULT_GRID.top_ks)
DEFAULT_TOP_PS = _listed(DEFAULT_GRID.top_ps)
DEFAULT_SEEDS = _listed(DEFAULT_GRID.seeds)


# --------------------------------------------------------------------------------------------
# printing
# --------------------------------------------------------------------------------------------


def _echo_ppl(entry: dict[str, Any]) -> None:
    r = entry["result"]
    typer.echo(
        f"{entry['dataset']}: token ppl {r['token_perplexity']:.3f}, bits/byte {r['bits_per_byte']:.4f}, "
        f"word ppl {r['word_perplexity']:.4g} ({r['tokens_scored']:,} tokens scored, "
        f"context {entry['context_length']}, "
        f"stride {entry['stride']}, {entry['seconds']:.1f} s)"
    )


def _echo_lambada(entry: dict[str, Any]) -> None:
    r = entry["result"]
    typer.echo(f"lambada ({entry['note']}): accuracy {r['accuracy']:.4f}, perplexity {r['perplexity']:.3f}")


def grid_table(grid: dict[str, Any]) -> list[str]:
    """The console table of a grid: one row per setting (over its seeds, with [interval] where
    one was computed) and the human reference; columns from the metric table."""
    from gpt2xl.evaluation import summary_rows

    def values(metrics: dict[str, Any], intervals: dict[str, Any] | None) -> list[str]:
        return [format_value(m, metrics.get(m.name), (intervals or {}).get(m.name)) for m in SHOWN_METRICS]

    rows = [[*(s.format(s.of(r)) for s in SETTINGS), str(len(r["seeds"])), *values(r["metrics"], r.get("intervals"))]
            for r in summary_rows(grid)]
    if grid.get("human"):
        rows.append(["human", *("" for _ in SETTINGS[1:]), "", *values(grid["human"], grid.get("human_intervals"))])
    header = [*(s.label for s in SETTINGS), "seeds", *(m.label for m in SHOWN_METRICS)]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [" ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *rows]]


def _echo_grid(grid: dict[str, Any]) -> None:
    for line in grid_table(grid):
        typer.echo(line)
    tests = (grid.get("neighbour_tests") or {}).get("comparisons") or []
    significant = sum(t["significant"] for t in tests)
    over = ("over all seeds' samples, [95% interval]; "
            f"{significant} of {len(tests)} neighbour differences significant (see report.md)") if tests else \
        "means over seeds"
    typer.echo(f"[{len(grid['cells'])} cells (settings x seeds) in {grid['seconds']:.1f} s; {over}]")


def precision_lines(entry: dict[str, Any]) -> list[str]:
    """The console summary of a precision comparison: what it measured, then one line per dtype."""
    from gpt2xl.metric_table import METRIC_BY_NAME

    setting = ", ".join(f"{s.label}={s.format(s.of(entry['setting']))}" for s in SETTINGS)
    text = entry["perplexity_text"]
    ref = entry["reference"]
    lines = [(f"precision vs {ref} ({setting}, the grid's prompts and seeds; perplexity on the first "
              f"{text['tokens']:,} tokens of {text['dataset']}):")]
    for row in entry["dtypes"]:
        if row["greedy"] is None:
            lines.append(f"  {row['dtype']}: perplexity {row['perplexity']:.3f} (reference, {row['seconds']:.1f} s)")
            continue
        g = row["greedy"]
        where = ("none diverges" if g["mean_first_divergence"] is None else
                 f"the others diverge at {g['mean_first_divergence']:.2f} of {g['max_new_tokens']} tokens on average")
        deltas = row["deltas"] or {}
        significant = [f"{METRIC_BY_NAME[name].title} {d['difference']:+.3g} [{d['low']:+.3g}, {d['high']:+.3g}]"
                       for name, d in deltas.items() if d["significant"]]
        lines.append(
            f"  {row['dtype']}: perplexity {row['perplexity']:.3f} ({row['perplexity_delta']:+.3f} vs {ref}), "
            f"greedy identical for {g['identical']}/{g['prompts']} prompts ({where}), {len(significant)} of "
            f"{len(deltas)} metric deltas significant" + (f": {'; '.join(significant)}" if significant else "")
            + f" ({row['seconds']:.1f} s)"
        )
    return lines


def _echo_precision(entry: dict[str, Any]) -> None:
    for line in precision_lines(entry):
        typer.echo(line)


def _note(text: str) -> None:
    typer.echo(f"note: {text}", err=True)


def _echo_files(files: list[Path], seconds: float | None = None) -> None:
    if files:
        shown = ", ".join(p.name for p in files)
        took = f" ({seconds:.0f} s)" if seconds is not None else ""
        typer.echo(f"wrote {files[0].parent}/: {shown}{took}")


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------


@eval_app.command()
def perplexity(
    *,
    model: ModelOpt = "gpt2-xl",
    dataset: DatasetOpt = "wikitext2",
    data_dir: DataDirOpt = None,
    stride: Annotated[int | None, typer.Option(help="Window stride in tokens (default: the model's context).")] = None,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 8,
    max_tokens: Annotated[int | None, typer.Option(help="Score only the first N tokens (quick runs).")] = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "fp32",
    threads: ThreadsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result entry as JSON.")] = False,
    out: Annotated[str | None, typer.Option(help="Also write the entry to this JSON file.")] = None,
    progress: ProgressOpt = True,
) -> None:
    """Sliding-window perplexity (HF guide loop, token-weighted): token ppl, bits/byte, word ppl.

    Example: gpt2xl eval perplexity -m ../shared/models/gpt2-tiny-shakespeare --dataset tinyshakespeare --stride 64
    """
    from gpt2xl.evaluation import evaluate_perplexity

    opts = PerplexityOptions(model=model, data_dir=path_option("--data-dir", data_dir), device=device, dtype=dtype,
                             threads=threads, dataset=dataset, stride=stride, batch_size=batch_size,
                             max_tokens=max_tokens, out=path_option("--out", out))
    # Printed by the hook, before --out is written: a failed write does not lose the result.
    show = (lambda e: typer.echo(json.dumps(e, indent=2))) if as_json else _echo_ppl
    evaluate_perplexity(opts, hooks=Hooks(progress=progress, on_perplexity=show))


@eval_app.command()
def lambada(
    *,
    model: ModelOpt = "gpt2-xl",
    data_dir: DataDirOpt = None,
    batch_size: Annotated[int, typer.Option(help="Examples per forward pass.")] = 16,
    max_examples: Annotated[int | None, typer.Option(help="Score only the first N examples.")] = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "fp32",
    threads: ThreadsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result entry as JSON.")] = False,
    progress: ProgressOpt = True,
) -> None:
    """LAMBADA (OpenAI test set): last-word greedy accuracy and lm-eval's perplexity.

    Example: gpt2xl eval lambada -m gpt2-xl --max-examples 500
    """
    from gpt2xl.evaluation import evaluate_lambada

    opts = LambadaOptions(model=model, data_dir=path_option("--data-dir", data_dir), device=device, dtype=dtype,
                          threads=threads, batch_size=batch_size, max_examples=max_examples)
    show = (lambda e: typer.echo(json.dumps(e, indent=2))) if as_json else _echo_lambada
    evaluate_lambada(opts, hooks=Hooks(progress=progress, on_lambada=show))


TempsOpt = Annotated[str, typer.Option(help="Comma-separated temperatures (0 = greedy).")]
TopKsOpt = Annotated[str, typer.Option(help="Comma-separated top-k values (0 = the whole vocabulary).")]
TopPsOpt = Annotated[str, typer.Option(help="Comma-separated top-p (nucleus) values in (0, 1] (1 = no nucleus cut).")]
PresetOpt = Annotated[str | None, typer.Option(help=(
    "Run a preset's settings instead of the temperature x top-k x top-p product: holtzman = the sampling rows "
    "of Holtzman et al. (2020) Table 1 (greedy, pure sampling, t=0.9, k=40, k=640, k=40 at t=0.7, p=0.95), "
    "reported beside the published values."))]
MauveOpt = Annotated[bool, typer.Option("--mauve/--no-mauve", help=(
    "Score MAUVE per setting against as many human texts of the dataset (needs mauve-text: the eval extra); "
    "features from gpt2-large when it is in the local cache, else from the evaluated model."))]
SeedsOpt = Annotated[str, typer.Option(help="Comma-separated sampling seeds; every cell runs each.")]
NumPromptsOpt = Annotated[int, typer.Option(help="Prompts cut from the eval split at evenly spaced offsets.")]
PromptTokensOpt = Annotated[int, typer.Option(help="Tokens per prompt (fixed prefix length).")]
NewTokensOpt = Annotated[int, typer.Option(help="Tokens to generate per prompt (stops early at end-of-text).")]
GridBatchOpt = Annotated[int, typer.Option(help="Prompts sampled together in one batch.")]
RunDirOpt = Annotated[str, typer.Option(help="Run directory for eval.json, eval_grid.csv, plots and report.md.")]
GridDatasetOpt = Annotated[str, typer.Option(help="Dataset the grid's prompts are cut from (and of the first "
                                                  "perplexity, for `eval run`).")]
RayOpt = Annotated[str | None, typer.Option("--ray", help=(
    "Run the grid's shards (and perplexity's windows) on Ray workers, with results identical to one process: "
    "local (start a cluster on this machine), auto (join this node's cluster), or HOST:PORT / ray://HOST:PORT. "
    "Needs gpt2xl[ray]. Workers run --threads threads each (default: torch's default here)."))]
RayWorkersOpt = Annotated[int | None, typer.Option(help=(
    "Ray workers (each loads the model once): default as many as fit, one per GPU on CUDA, else cores // threads."))]


@eval_app.command()
def grid(
    run_dir: RunDirOpt,
    *,
    model: ModelOpt = "gpt2-xl",
    dataset: GridDatasetOpt = DEFAULT_GRID.dataset,
    data_dir: DataDirOpt = None,
    temperatures: TempsOpt = DEFAULT_TEMPERATURES,
    top_ks: TopKsOpt = DEFAULT_TOP_KS,
    top_ps: TopPsOpt = DEFAULT_TOP_PS,
    seeds: SeedsOpt = DEFAULT_SEEDS,
    num_prompts: NumPromptsOpt = DEFAULT_GRID.num_prompts,
    prompt_tokens: PromptTokensOpt = DEFAULT_GRID.prompt_tokens,
    max_new_tokens: NewTokensOpt = DEFAULT_GRID.max_new_tokens,
    batch_size: GridBatchOpt = DEFAULT_GRID.batch_size,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "fp32",
    threads: ThreadsOpt = None,
    progress: ProgressOpt = True,
    mauve: MauveOpt = True,
    preset: PresetOpt = None,
    resume: Annotated[bool, typer.Option(
        "--resume/--no-resume",
        help="Skip the grid shards an interrupted run finished (saved in RUN_DIR/shards as each completes; same "
             "model, prompts and settings only).",
    )] = False,
    ray: RayOpt = None,
    ray_workers: RayWorkersOpt = None,
) -> None:
    """Temperature x top-k x top-p (x seeds) sampling grid → RUN_DIR/eval.json, eval_grid.csv, plots, report.md.

    Perplexity and LAMBADA results already in RUN_DIR/eval.json (of the same model) are kept. Each finished
    shard (one batch of one cell) is saved in RUN_DIR/shards at once; --resume skips them.

    Example: gpt2xl eval grid --run-dir reports/try1 -m ../shared/models/gpt2-tiny-shakespeare
    --temperatures 0.7,1.0 --top-ks 0,40 --top-ps 1,0.9
    """
    from gpt2xl.evaluation import evaluate_grid
    from gpt2xl_app.eval_report import render_files

    cfg = grid_config(dataset=dataset, temperatures=temperatures, top_ks=top_ks, top_ps=top_ps, seeds=seeds,
                      num_prompts=num_prompts, prompt_tokens=prompt_tokens, max_new_tokens=max_new_tokens,
                      batch_size=batch_size, mauve=mauve, preset=preset)
    opts = GridOptions(model=model, data_dir=path_option("--data-dir", data_dir), device=device, dtype=dtype,
                       threads=threads, grid=cfg, run_dir=path_option("--run-dir", run_dir), resume=resume, ray=ray,
                       ray_workers=ray_workers)
    outcome = evaluate_grid(opts, render=render_files, hooks=Hooks(progress=progress, on_grid=_echo_grid,
                                                                    on_note=_note))
    _echo_files(outcome.files)


@eval_app.command()
def run(
    run_dir: RunDirOpt,
    *,
    model: Annotated[str | None, typer.Option(
        "--model", "-m",
        help=f"Model spec (default: ${EVAL_MODEL_ENV}, else gpt2-xl when in the HF cache, else "
             "../shared/models/gpt2-tiny-shakespeare).",
    )] = None,
    dataset: GridDatasetOpt = DEFAULT_GRID.dataset,
    data_dir: DataDirOpt = None,
    ppl_datasets: Annotated[
        str, typer.Option(help="Comma-separated datasets to measure perplexity on ('' for none).")
    ] = "tinyshakespeare,wikitext2",
    stride: Annotated[int | None, typer.Option(help="Perplexity window stride (default: the model's context).")] = None,
    ppl_batch_size: Annotated[int, typer.Option(help="Perplexity windows per forward pass.")] = 16,
    ppl_max_tokens: Annotated[int | None, typer.Option(
        help="Score only the first N tokens of each perplexity dataset, for quick looks. The default (0) scores "
             "every test set whole, as published perplexities do: WikiText-2's 286,221 tokens take ~2 min on 2 "
             "quiet cores with the tiny model.",
    )] = 0,
    lambada_max_examples: Annotated[int, typer.Option(help="LAMBADA examples to score (0 = skip LAMBADA).")] = 0,
    temperatures: TempsOpt = DEFAULT_TEMPERATURES,
    top_ks: TopKsOpt = DEFAULT_TOP_KS,
    top_ps: TopPsOpt = DEFAULT_TOP_PS,
    seeds: SeedsOpt = DEFAULT_SEEDS,
    num_prompts: NumPromptsOpt = DEFAULT_GRID.num_prompts,
    prompt_tokens: PromptTokensOpt = DEFAULT_GRID.prompt_tokens,
    max_new_tokens: NewTokensOpt = DEFAULT_GRID.max_new_tokens,
    batch_size: GridBatchOpt = DEFAULT_GRID.batch_size,
    resume: Annotated[bool, typer.Option(
        "--resume/--no-resume",
        help="Reuse the parts of RUN_DIR/eval.json that this run would compute again (same model, dataset file "
             "and settings), e.g. the perplexities of a run stopped during the grid, and the grid shards it finished.",
    )] = False,
    ray: RayOpt = None,
    ray_workers: RayWorkersOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "fp32",
    dtypes: Annotated[str | None, typer.Option(help=(
        "Comma-separated dtypes to compare with fp32 after the grid, on its prompts and seeds: perplexity delta, "
        "greedy agreement and metric deltas with 95% intervals (fp32 must be listed; fp32 alone compares none). "
        "Default: fp32,bf16 on CPU (fp16 is emulated there), fp32,bf16,fp16 on CUDA."
    ), show_default=False)] = None,
    threads: ThreadsOpt = None,
    progress: ProgressOpt = True,
    mauve: MauveOpt = True,
    preset: PresetOpt = None,
) -> None:
    """The full evaluation `nox -s eval` runs: perplexity, optional LAMBADA, the default grid, precision, report.

    Writes RUN_DIR/eval.json, eval_grid.csv, eval_heatmap_*.png, eval_fluency_vs_diversity.png,
    report.md (joined with bench.json when present) and eval_manifest.json (written last: the
    sha256 of each file). The perplexity results are saved before the grid starts.

    Example: gpt2xl eval run --run-dir reports/local --data-dir ../shared/data --threads 1
    """
    from gpt2xl.evaluation import default_eval_model, evaluate_run
    from gpt2xl.precision import default_dtypes
    from gpt2xl_app.eval_report import render_files

    cfg = grid_config(dataset=dataset, temperatures=temperatures, top_ks=top_ks, top_ps=top_ps, seeds=seeds,
                      num_prompts=num_prompts, prompt_tokens=prompt_tokens, max_new_tokens=max_new_tokens,
                      batch_size=batch_size, mauve=mauve, preset=preset)
    opts = RunOptions(
        model=model or default_eval_model(), data_dir=path_option("--data-dir", data_dir), device=device, dtype=dtype,
        threads=threads, grid=cfg, run_dir=path_option("--run-dir", run_dir),
        ppl_datasets=ppl_datasets_option(ppl_datasets), stride=stride, ppl_batch_size=ppl_batch_size,
        ppl_max_tokens=ppl_max_tokens or None,  # 0 = no cap
        lambada_max_examples=lambada_max_examples, keep_previous=resume, resume=resume, ray=ray,
        ray_workers=ray_workers, dtypes=default_dtypes(device) if dtypes is None else dtypes_option(dtypes),
    )
    hooks = Hooks(progress=progress, on_perplexity=_echo_ppl, on_lambada=_echo_lambada, on_grid=_echo_grid,
                  on_note=_note, on_precision=_echo_precision)
    outcome = evaluate_run(opts, render=render_files, hooks=hooks)
    _echo_files(outcome.files, outcome.seconds)


@eval_app.command()
def report(
    run_dir: Annotated[str, typer.Argument(help="A run directory holding eval.json and/or bench.json.")],
) -> None:
    """Re-render RUN_DIR/report.md (and the eval CSV, plots and manifest) from the result files.

    Example: gpt2xl eval report reports/20260101T000000Z
    """
    from gpt2xl.evaluation import EVAL_JSON, MANIFEST, rerender_run_dir
    from gpt2xl.results import manifest_problems
    from gpt2xl_app.compare import load_bench
    from gpt2xl_app.eval_report import render_files
    from gpt2xl_app.report import write_report

    folder = path_option("RUN_DIR", run_dir)
    if not folder.is_dir():
        raise ResultError(f"{folder} is not a directory; pass a run directory holding eval.json and/or bench.json.")
    bench_path = folder / "bench.json"

    def check_bench() -> None:
        if bench_path.exists():
            load_bench(bench_path)

    if not (folder / EVAL_JSON).exists():
        check_bench()
        typer.echo(f"wrote {write_report(folder)}")
        return
    # Before the rebuild: a set that departed from its manifest (an interrupted write, a hand
    # edit) is worth a word, since the rebuild makes it consistent again.
    problems = manifest_problems(folder, manifest=MANIFEST)
    files = rerender_run_dir(folder, render=render_files, check_other=check_bench)
    if problems:
        _note(f"rebuilt the result set from eval.json; before: {problems[0]}")
    _echo_files(files)
