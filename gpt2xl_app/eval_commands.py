"""CLI commands of the eval layer (wired into `gpt2xl_app.cli` by `register`).

``gpt2xl eval perplexity | lambada | grid | run | report``. Each command turns options into
library calls (:mod:`gpt2xl.perplexity`, :mod:`gpt2xl.grid`, :mod:`gpt2xl.data`), writes result
files and prints a summary; plots and Markdown come from the files (:mod:`gpt2xl_app.eval_report`,
:mod:`gpt2xl_app.report`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from gpt2xl.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = REPO_ROOT.parent / "shared" / "models" / "gpt2-tiny-shakespeare"
EVAL_MODEL_ENV = "GPT2XL_EVAL_MODEL"
PRETRAINED = "gpt2-xl"

eval_app = typer.Typer(
    name="eval",
    help=(
        "Evaluate a model: sliding-window perplexity, LAMBADA, and the temperature x top-k sampling grid.\n\n"
        "Datasets are read from --data-dir (default $GPT2XL_DATA_DIR, e.g. ../shared/data) and checked "
        "against pinned sha256s; without a directory the `datasets` library is tried (needs the network)."
    ),
    no_args_is_help=True,
)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Hub name, local HF checkpoint directory, or random:<preset>.")]
DatasetOpt = Annotated[str, typer.Option(help="wikitext2, tinyshakespeare or lambada.")]
DataDirOpt = Annotated[Optional[Path], typer.Option(help="Folder laid out as ../shared/data (default: $GPT2XL_DATA_DIR).")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[str, typer.Option(help="fp32, fp16 or bf16.")]
ThreadsOpt = Annotated[
    Optional[int],
    typer.Option(help="torch CPU threads (default: torch's choice). Use 1 on a CPU shared with other jobs."),
]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars on stderr.")]


def register(app: typer.Typer) -> None:
    """Add this layer's commands (``gpt2xl eval …``) to ``app``."""
    app.add_typer(eval_app, name="eval")


# --------------------------------------------------------------------------------------------
# helpers: option parsing, loading, one result entry per evaluation
# --------------------------------------------------------------------------------------------


def parse_floats(text: str, *, name: str) -> tuple[float, ...]:
    """``"0.5,0.8"`` → (0.5, 0.8); ConfigError naming the option otherwise."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise ConfigError(f"{name} must be a comma-separated list of numbers, got {text!r}.") from exc
    if not values:
        raise ConfigError(f"{name} must list at least one value, got {text!r}.")
    return values


def parse_ints(text: str, *, name: str) -> tuple[int, ...]:
    """``"0,10,40"`` → (0, 10, 40); ConfigError naming the option otherwise."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise ConfigError(f"{name} must be a comma-separated list of integers, got {text!r}.") from exc
    if not values:
        raise ConfigError(f"{name} must list at least one value, got {text!r}.")
    return values


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}.")
    import torch

    torch.set_num_threads(threads)


def default_model() -> str:
    """$GPT2XL_EVAL_MODEL, else pretrained gpt2-xl when it is in the local HF cache, else the tiny
    Shakespeare checkpoint beside the repository (../shared/models/gpt2-tiny-shakespeare)."""
    env = os.environ.get(EVAL_MODEL_ENV, "").strip()
    if env:
        return env
    from huggingface_hub import try_to_load_from_cache

    from gpt2xl.weights import HUB_ALIASES

    repo = HUB_ALIASES[PRETRAINED]
    cached = try_to_load_from_cache(repo, "config.json")
    weights = try_to_load_from_cache(repo, "model.safetensors")
    if isinstance(cached, str) and isinstance(weights, str):
        return PRETRAINED
    return str(TINY_MODEL)


def _model_info(loaded: Any) -> dict[str, Any]:
    info = loaded.describe()
    source = loaded.source
    return {
        "label": source.label,
        "kind": source.kind,
        "spec": source.spec,
        "files": list(source.files),
        "sha256": source.sha256(),
        "seed": source.seed,
        "config": info["config"],
        "device": info["device"],
        "dtype": info["dtype"],
        "num_parameters": info["num_parameters"],
    }


def _dataset_info(corpus: Any, split: Any) -> dict[str, Any]:
    return {
        "name": corpus.name,
        "source": corpus.source,
        "sha256": corpus.sha256,
        "split": split.description,
        "num_tokens": split.num_tokens,
        "num_words": split.num_words,
        "num_bytes": split.num_bytes,
    }


def perplexity_entry(
    model: Any, corpus: Any, split: Any, *, stride: int | None, batch_size: int, max_tokens: int | None, progress: bool
) -> dict[str, Any]:
    """Sliding-window perplexity of ``split`` (optionally its first ``max_tokens`` tokens, with words
    and bytes then counted on the decoded prefix) as one result entry."""
    from gpt2xl.perplexity import perplexity_report, sliding_window_nll
    from gpt2xl.tokenizer import decode

    ids = split.token_ids
    num_words, num_bytes, what = split.num_words, split.num_bytes, split.description
    if max_tokens is not None:
        if max_tokens < 2:
            raise ConfigError(f"--max-tokens must be >= 2, got {max_tokens}.")
        if max_tokens < len(ids):
            ids = ids[:max_tokens]
            text = decode(list(ids))
            num_words, num_bytes = len(text.split()), len(text.encode("utf-8"))
            what = f"first {max_tokens:,} tokens of: {split.description}"
    t0 = time.perf_counter()
    nll = sliding_window_nll(model, ids, stride=stride, batch_size=batch_size, progress=progress)
    report = perplexity_report(nll, num_words=num_words, num_bytes=num_bytes)
    return {
        "dataset": corpus.name,
        "dataset_sha256": corpus.sha256,
        "split": what,
        "context_length": nll.context_length,
        "stride": nll.stride,
        "num_windows": nll.num_windows,
        "num_tokens": nll.num_tokens,
        "batch_size": batch_size,
        "seconds": time.perf_counter() - t0,
        "result": report.to_dict(),
    }


def lambada_entry(model: Any, corpus: Any, *, batch_size: int, max_examples: int | None, progress: bool) -> dict[str, Any]:
    from gpt2xl.data import lambada_examples
    from gpt2xl.perplexity import lambada_eval

    examples = lambada_examples(corpus)
    note = f"all {len(examples):,}"
    if max_examples is not None:
        if max_examples < 1:
            raise ConfigError(f"--lambada-max-examples must be >= 1, got {max_examples}.")
        if max_examples < len(examples):
            examples = examples[:max_examples]
            note = f"first {max_examples:,} of the test set"
    t0 = time.perf_counter()
    result = lambada_eval(model, examples, batch_size=batch_size, progress=progress)
    return {"dataset": "lambada", "dataset_sha256": corpus.sha256, "note": note,
            "seconds": time.perf_counter() - t0, "result": result.to_dict()}


def grid_entry(model: Any, split: Any, cfg: Any, *, progress: bool) -> dict[str, Any]:
    """Prompts (computed once), the human reference and every cell, as one result entry."""
    from gpt2xl.grid import human_reference, make_prompts, run_grid
    from gpt2xl.tokenizer import decode

    prompts = make_prompts(split.token_ids, num_prompts=cfg.num_prompts, prompt_tokens=cfg.prompt_tokens,
                           continuation_tokens=cfg.max_new_tokens)
    t0 = time.perf_counter()
    human = human_reference(model, prompts, batch_size=cfg.batch_size)
    cells = run_grid(model, prompts, cfg, progress=progress)
    cell_dicts = []
    for c in cells:
        d = c.to_dict()
        d["example_texts"] = [decode(list(e)) for e in c.examples]
        cell_dicts.append(d)
    return {
        "config": cfg.to_dict(),
        "prompt_starts": [p.start for p in prompts],
        "example_prompt": decode(list(prompts[0].tokens)),
        "human": human.to_dict(),
        "cells": cell_dicts,
        "seconds": time.perf_counter() - t0,
    }


def _load(model: str, device: str, dtype: str) -> Any:
    from gpt2xl.weights import load_model

    return load_model(model, device=device, dtype=dtype, seed=0)


def _corpus(name: str, data_dir: Path | None) -> tuple[Any, Any]:
    from gpt2xl.data import eval_split, get_spec, load_corpus

    get_spec(name)
    if data_dir is not None and not data_dir.is_dir():
        raise ConfigError(f"--data-dir {data_dir} is not a directory; point it at a folder laid out as ../shared/data.")
    corpus = load_corpus(name, data_dir=data_dir)
    return corpus, eval_split(corpus)


def write_eval_outputs(doc: dict[str, Any], run_dir: Path) -> dict[str, Path]:
    """eval.json, eval_grid.csv (when there is a grid), plots, and report.md, all in ``run_dir``."""
    from gpt2xl.results import read_result, write_result, write_text_atomic
    from gpt2xl_app.eval_report import grid_csv, write_eval_plots
    from gpt2xl_app.report import write_report

    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {"eval": write_result(run_dir / "eval.json", kind="eval", payload=doc)}
    saved = read_result(paths["eval"], kind="eval")  # plots read the file, exactly as a later re-render would
    if saved.get("grid"):
        paths["csv"] = write_text_atomic(run_dir / "eval_grid.csv", grid_csv(saved))
        write_eval_plots(saved, run_dir)
    paths["report"] = write_report(run_dir)
    return paths


def _base_doc(loaded: Any, corpus: Any, split: Any, seeds: list[int], config: dict[str, Any]) -> dict[str, Any]:
    from gpt2xl.environment import environment_info

    return {
        "model": _model_info(loaded),
        "dataset": _dataset_info(corpus, split),
        "seeds": seeds,
        "config": config,
        "environment": environment_info(),
        "perplexity": [],
        "lambada": None,
        "grid": None,
    }


def _echo_ppl(entry: dict[str, Any]) -> None:
    r = entry["result"]
    typer.echo(
        f"{entry['dataset']}: token ppl {r['token_perplexity']:.3f}, bits/byte {r['bits_per_byte']:.4f}, "
        f"word ppl {r['word_perplexity']:.4g} ({r['tokens_scored']:,} tokens scored, context {entry['context_length']}, "
        f"stride {entry['stride']}, {entry['seconds']:.1f} s)"
    )


def _echo_grid(grid: dict[str, Any]) -> None:
    h = grid["human"]
    typer.echo(f"{'T':>5} {'k':>5} {'seed':>4} {'dist-1':>7} {'dist-2':>7} {'dist-3':>7} {'sBLEU4':>7} "
               f"{'rep':>5} {'gen-ppl':>9} {'len':>5} {'eot':>5}")
    rows = [(f"{c['temperature']:g}", "all" if c["top_k"] == 0 else str(c["top_k"]), str(c["seed"]), c["metrics"])
            for c in grid["cells"]] + [("human", "", "", h)]
    for t, k, s, m in rows:
        gp = m["generation_perplexity"]
        typer.echo(f"{t:>5} {k:>5} {s:>4} {m['distinct_1']:7.3f} {m['distinct_2']:7.3f} {m['distinct_3']:7.3f} "
                   f"{m['self_bleu_4']:7.3f} {m['repetition_rate']:5.2f} {'n/a' if gp is None else f'{gp:9.2f}':>9} "
                   f"{m['mean_length_tokens']:5.1f} {m['eot_rate']:5.2f}")
    typer.echo(f"[{len(grid['cells'])} cells in {grid['seconds']:.1f} s]")


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------


@eval_app.command()
def perplexity(
    model: ModelOpt = "gpt2-xl",
    dataset: DatasetOpt = "wikitext2",
    data_dir: DataDirOpt = None,
    stride: Annotated[Optional[int], typer.Option(help="Window stride in tokens (default: the model's context).")] = None,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 8,
    max_tokens: Annotated[Optional[int], typer.Option(help="Score only the first N tokens (quick runs).")] = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "fp32",
    threads: ThreadsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result entry as JSON.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Also write the entry to this JSON file.")] = None,
    progress: ProgressOpt = True,
) -> None:
    """Sliding-window perplexity (HF guide loop, token-weighted): token ppl, bits/byte, word ppl.

    Example: gpt2xl eval perplexity -m ../shared/models/gpt2-tiny-shakespeare --dataset tinyshakespeare --stride 64
    """
    from gpt2xl.results import write_result

    _set_threads(threads)
    if dataset == "lambada":
        raise ConfigError("For LAMBADA use `gpt2xl eval lambada` (it is scored per target word).")
    corpus, split = _corpus(dataset, data_dir)
    loaded = _load(model, device, dtype)
    entry = perplexity_entry(loaded.model, corpus, split, stride=stride, batch_size=batch_size,
                             max_tokens=max_tokens, progress=progress)
    entry["model"] = _model_info(loaded)
    if out is not None:
        write_result(out, kind="perplexity", payload=entry)
    if as_json:
        typer.echo(json.dumps(entry, indent=2))
    else:
        _echo_ppl(entry)


@eval_app.command()
def lambada(
    model: ModelOpt = "gpt2-xl",
    data_dir: DataDirOpt = None,
    batch_size: Annotated[int, typer.Option(help="Examples per forward pass.")] = 16,
    max_examples: Annotated[Optional[int], typer.Option(help="Score only the first N examples.")] = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "fp32",
    threads: ThreadsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result entry as JSON.")] = False,
    progress: ProgressOpt = True,
) -> None:
    """LAMBADA (OpenAI test set): last-word greedy accuracy and lm-eval's perplexity.

    Example: gpt2xl eval lambada -m gpt2-xl --max-examples 500
    """
    _set_threads(threads)
    corpus, _ = _corpus("lambada", data_dir)
    loaded = _load(model, device, dtype)
    entry = lambada_entry(loaded.model, corpus, batch_size=batch_size, max_examples=max_examples, progress=progress)
    if as_json:
        typer.echo(json.dumps(entry, indent=2))
    else:
        r = entry["result"]
        typer.echo(f"lambada ({entry['note']}): accuracy {r['accuracy']:.4f}, perplexity {r['perplexity']:.3f}")


def _grid_config(dataset: str, temperatures: str, top_ks: str, seeds: str, num_prompts: int, prompt_tokens: int,
                 max_new_tokens: int, batch_size: int) -> Any:
    from gpt2xl.grid import GridConfig

    return GridConfig(
        dataset=dataset,
        num_prompts=num_prompts,
        prompt_tokens=prompt_tokens,
        max_new_tokens=max_new_tokens,
        temperatures=parse_floats(temperatures, name="--temperatures"),
        top_ks=parse_ints(top_ks, name="--top-ks"),
        seeds=parse_ints(seeds, name="--seeds"),
        batch_size=batch_size,
    )


TempsOpt = Annotated[str, typer.Option(help="Comma-separated temperatures (0 = greedy).")]
TopKsOpt = Annotated[str, typer.Option(help="Comma-separated top-k values (0 = the whole vocabulary).")]
SeedsOpt = Annotated[str, typer.Option(help="Comma-separated sampling seeds; every cell runs each.")]
NumPromptsOpt = Annotated[int, typer.Option(help="Prompts cut from the eval split at evenly spaced offsets.")]
PromptTokensOpt = Annotated[int, typer.Option(help="Tokens per prompt (fixed prefix length).")]
NewTokensOpt = Annotated[int, typer.Option(help="Tokens to generate per prompt (stops early at end-of-text).")]
GridBatchOpt = Annotated[int, typer.Option(help="Prompts sampled together in one batch.")]
RunDirOpt = Annotated[Path, typer.Option(help="Run directory for eval.json, eval_grid.csv, plots and report.md.")]


@eval_app.command()
def grid(
    run_dir: RunDirOpt,
    model: ModelOpt = "gpt2-xl",
    dataset: DatasetOpt = "tinyshakespeare",
    data_dir: DataDirOpt = None,
    temperatures: TempsOpt = "0.5,0.8,1.0,1.2",
    top_ks: TopKsOpt = "0,10,40,200",
    seeds: SeedsOpt = "0",
    num_prompts: NumPromptsOpt = 32,
    prompt_tokens: PromptTokensOpt = 32,
    max_new_tokens: NewTokensOpt = 64,
    batch_size: GridBatchOpt = 32,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "fp32",
    threads: ThreadsOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Temperature x top-k (x seeds) sampling grid → RUN_DIR/eval.json, eval_grid.csv, plots, report.md.

    Example: gpt2xl eval grid --run-dir reports/try1 -m ../shared/models/gpt2-tiny-shakespeare --temperatures 0.7,1.0 --top-ks 0,40
    """
    _set_threads(threads)
    cfg = _grid_config(dataset, temperatures, top_ks, seeds, num_prompts, prompt_tokens, max_new_tokens, batch_size)
    corpus, split = _corpus(dataset, data_dir)
    loaded = _load(model, device, dtype)
    doc = _base_doc(loaded, corpus, split, list(cfg.seeds), {"grid": cfg.to_dict(), "threads": threads})
    doc["grid"] = grid_entry(loaded.model, split, cfg, progress=progress)
    _echo_grid(doc["grid"])
    paths = write_eval_outputs(doc, run_dir)
    typer.echo(f"wrote {paths['eval']}, {paths.get('csv')}, {paths['report']}")


@eval_app.command()
def run(
    run_dir: RunDirOpt,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m",
        help=f"Model spec (default: ${EVAL_MODEL_ENV}, else gpt2-xl when in the HF cache, else ../shared/models/gpt2-tiny-shakespeare).",
    )] = None,
    dataset: Annotated[str, typer.Option(help="Dataset of the grid and of the first perplexity.")] = "tinyshakespeare",
    data_dir: DataDirOpt = None,
    ppl_datasets: Annotated[str, typer.Option(help="Comma-separated datasets to measure perplexity on ('' for none).")] = "tinyshakespeare,wikitext2",
    stride: Annotated[Optional[int], typer.Option(help="Perplexity window stride (default: the model's context).")] = None,
    ppl_batch_size: Annotated[int, typer.Option(help="Perplexity windows per forward pass.")] = 16,
    ppl_max_tokens: Annotated[Optional[int], typer.Option(
        help="Score only the first N tokens of each perplexity dataset, for quick looks. The default (0) scores "
             "every test set whole, as published perplexities do: WikiText-2's 286,221 tokens take ~2 min on 2 "
             "quiet cores with the tiny model.",
    )] = 0,
    lambada_max_examples: Annotated[int, typer.Option(help="LAMBADA examples to score (0 = skip LAMBADA).")] = 0,
    temperatures: TempsOpt = "0.5,0.7,1.0,1.3",
    top_ks: TopKsOpt = "0,5,20,100",
    seeds: SeedsOpt = "0",
    num_prompts: NumPromptsOpt = 32,
    prompt_tokens: PromptTokensOpt = 32,
    max_new_tokens: NewTokensOpt = 64,
    batch_size: GridBatchOpt = 32,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "fp32",
    threads: ThreadsOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """The full evaluation `nox -s eval` runs: perplexity, optional LAMBADA, the default grid, report.

    Writes RUN_DIR/eval.json, eval_grid.csv, eval_heatmap_*.png, eval_fluency_vs_diversity.png and
    (re)writes RUN_DIR/report.md (joined with bench.json when present).

    Example: gpt2xl eval run --run-dir reports/local --data-dir ../shared/data --threads 1
    """
    _set_threads(threads)
    cfg = _grid_config(dataset, temperatures, top_ks, seeds, num_prompts, prompt_tokens, max_new_tokens, batch_size)
    ppl_max_tokens = ppl_max_tokens or None  # 0 = no cap
    names = [n.strip() for n in ppl_datasets.split(",") if n.strip()]
    if "lambada" in names:
        raise ConfigError("--ppl-datasets takes wikitext2 and/or tinyshakespeare; LAMBADA has --lambada-max-examples.")
    if lambada_max_examples < 0:
        raise ConfigError(f"--lambada-max-examples must be >= 0, got {lambada_max_examples}.")
    corpora = {name: _corpus(name, data_dir) for name in dict.fromkeys([dataset, *names])}  # fail fast on data
    lambada_corpus = _corpus("lambada", data_dir)[0] if lambada_max_examples else None
    spec = model or default_model()
    t0 = time.perf_counter()
    loaded = _load(spec, device, dtype)
    corpus, split = corpora[dataset]
    doc = _base_doc(loaded, corpus, split, list(cfg.seeds), {
        "grid": cfg.to_dict(), "ppl_datasets": names, "stride": stride, "ppl_batch_size": ppl_batch_size,
        "ppl_max_tokens": ppl_max_tokens, "lambada_max_examples": lambada_max_examples, "threads": threads,
    })
    doc["datasets"] = {name: _dataset_info(c, s) for name, (c, s) in corpora.items()}
    for name in names:
        c, s = corpora[name]
        entry = perplexity_entry(loaded.model, c, s, stride=stride, batch_size=ppl_batch_size,
                                 max_tokens=ppl_max_tokens, progress=progress)
        _echo_ppl(entry)
        doc["perplexity"].append(entry)
    if lambada_corpus is not None:
        doc["lambada"] = lambada_entry(loaded.model, lambada_corpus, batch_size=ppl_batch_size,
                                       max_examples=lambada_max_examples, progress=progress)
        typer.echo(f"lambada: accuracy {doc['lambada']['result']['accuracy']:.4f}, "
                   f"perplexity {doc['lambada']['result']['perplexity']:.3f}")
    doc["grid"] = grid_entry(loaded.model, split, cfg, progress=progress)
    doc["total_seconds"] = time.perf_counter() - t0
    _echo_grid(doc["grid"])
    paths = write_eval_outputs(doc, run_dir)
    typer.echo(f"wrote {paths['eval']}, {paths.get('csv')}, {paths['report']} ({doc['total_seconds']:.0f} s)")


@eval_app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A run directory holding eval.json and/or bench.json.")]) -> None:
    """Re-render RUN_DIR/report.md (and the eval plots) from the result files.

    Example: gpt2xl eval report reports/20260101T000000Z
    """
    from gpt2xl.results import read_result
    from gpt2xl_app.eval_report import write_eval_plots
    from gpt2xl_app.report import write_report

    if (run_dir / "eval.json").exists():
        write_eval_plots(read_result(run_dir / "eval.json", kind="eval"), run_dir)
    typer.echo(f"wrote {write_report(run_dir)}")
