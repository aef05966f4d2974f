"""CLI commands of the eval layer (wired into `gpt2xl_app.cli` by `register`).

``gpt2xl eval perplexity | lambada | grid | run | report``. Each command turns options into
library calls (:mod:`gpt2xl.perplexity`, :mod:`gpt2xl.grid`, :mod:`gpt2xl.data`), writes result
files and prints a summary; plots and Markdown come from the files (:mod:`gpt2xl_app.eval_report`,
:mod:`gpt2xl_app.report`).

Every option is checked before any work, in one place per command: a frozen options dataclass
(:class:`PerplexityOptions`, :class:`LambadaOptions`, :class:`GridOptions`, :class:`RunOptions`),
built from the options (comma lists and paths parsed on the way: :func:`grid_config`,
:func:`ppl_datasets_option`, :func:`path_option`), checks each value against its domain in
``__post_init__`` (ranges, dataset names, device, dtype), and its ``prepare`` method then checks,
in this order, what needs the file system: the output location (created and probed), the
model's shape without loading it (:func:`gpt2xl.weights.resolve_config`: stride and prompt
lengths against the context), the datasets (the prompts against the split) and a memory
estimate of the batch. Only then is the model loaded; a hub model that is not cached has no
shape to read early, so its checks run right after it is loaded, before anything is computed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, overload

import typer

from gpt2xl import validation
from gpt2xl.config import GPTConfig
from gpt2xl.dtypes import DTYPES, check_dtype_name
from gpt2xl.errors import ConfigError, ResultError
from gpt2xl.grid import GridConfig, check_fits_context, check_temperature, check_top_k
from gpt2xl.validation import check_int, check_output_dir, check_output_file, check_seed, parse_list

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


def default_eval_model() -> str:
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


# --------------------------------------------------------------------------------------------
# options: every check, before any work
# --------------------------------------------------------------------------------------------


def _perplexity_dataset(name: str) -> str:
    """A dataset perplexity is measured on: a known name other than lambada."""
    from gpt2xl.data import get_spec

    get_spec(name)
    if name == "lambada":
        raise ConfigError("LAMBADA is scored per target word: use `gpt2xl eval lambada` or --lambada-max-examples.")
    return name


def grid_config(
    *, dataset: str, temperatures: str, top_ks: str, seeds: str, num_prompts: int, prompt_tokens: int,
    max_new_tokens: int, batch_size: int,
) -> GridConfig:
    """The grid the options describe; ConfigError naming the option that is wrong."""
    from gpt2xl.data import get_spec

    get_spec(dataset)
    for name, value in (("--num-prompts", num_prompts), ("--prompt-tokens", prompt_tokens),
                        ("--max-new-tokens", max_new_tokens), ("--batch-size", batch_size)):
        check_int(name, value)
    return GridConfig(
        dataset=dataset,
        num_prompts=num_prompts,
        prompt_tokens=prompt_tokens,
        max_new_tokens=max_new_tokens,
        temperatures=parse_list(temperatures, name="--temperatures", item=lambda t: check_temperature(float(t)),
                                what="temperatures"),
        top_ks=parse_list(top_ks, name="--top-ks", item=lambda k: check_top_k(int(k)), what="integers"),
        seeds=parse_list(seeds, name="--seeds", item=lambda s: check_seed("a seed", int(s)), what="integer seeds"),
        batch_size=batch_size,
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
    if not text.strip():
        return ()
    return parse_list(text, name="--ppl-datasets", item=_perplexity_dataset, what="dataset names")


@dataclass(frozen=True, kw_only=True)
class ModelShape:
    """What the checks need of the model: its config (read without loading the weights) and
    the bytes per weight of the run's dtype."""

    config: GPTConfig
    dtype_bytes: int

    @property
    def block_size(self) -> int:
        return self.config.block_size


@dataclass(frozen=True, kw_only=True)
class EvalData:
    """What a command read before loading: ``corpora`` ({name: (corpus, eval split)}), the
    LAMBADA corpus, and the grid's prompts (None where the command has no such part)."""

    corpora: dict[str, tuple[Any, Any]]
    lambada: Any = None
    prompts: list[Any] | None = None


@dataclass(frozen=True, kw_only=True)
class CommonOptions:
    """The options every eval command takes, and the order of the checks (:meth:`prepare`)."""

    model: str
    data_dir: Path | None
    device: str
    dtype: str
    threads: int | None

    def __post_init__(self) -> None:
        from gpt2xl.devices import check_dtype_supported, resolve_device, resolve_dtype

        if not self.model.strip():
            raise ConfigError("--model must name a model: a hub name, a checkpoint directory or random:<preset>.")
        if self.threads is not None:
            # torch.set_num_threads takes any int32; more threads than CPUs only oversubscribes them.
            check_int("--threads", self.threads, minimum=1, maximum=os.cpu_count() or 1)
        check_dtype_name(self.dtype)
        check_dtype_supported(resolve_device(self.device), resolve_dtype(self.dtype))
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise ConfigError(
                f"--data-dir {self.data_dir} is not a directory; point it at a folder laid out as ../shared/data."
            )

    # The steps of prepare(); each command's options override the ones it needs.

    def check_output(self) -> None:
        """Create and probe the output location (nothing to write by default)."""

    def check_context(self, shape: ModelShape) -> None:
        """Lengths against the model's context (nothing by default)."""

    def read_data(self) -> EvalData:
        raise NotImplementedError

    def check_memory(self, shape: ModelShape, data: EvalData) -> None:
        """Batch sizes against the available memory (nothing by default)."""

    def prepare(self) -> tuple[ModelShape | None, EvalData]:
        """Every check that can run before the model is loaded, cheapest first: the output
        location, the model's shape (read without loading: a bad spec or config fails here) against
        the options, the datasets, and the memory estimate. The shape is None for a hub model
        that is not cached; :meth:`load` then runs its checks on the loaded model."""
        from gpt2xl.weights import resolve_config

        self.check_output()
        config = resolve_config(self.model)
        shape = None if config is None else ModelShape(config=config, dtype_bytes=DTYPES[self.dtype].bytes)
        if shape is not None:
            self.check_context(shape)
        data = self.read_data()
        if shape is not None:
            self.check_memory(shape, data)
        return shape, data

    def load(self, shape: ModelShape | None, data: EvalData) -> Any:
        """The model, on the options' device and dtype and threads; the checks :meth:`prepare` could
        not run without a shape run now, before anything is computed."""
        from gpt2xl.weights import load_model

        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
        loaded = load_model(self.model, device=self.device, dtype=self.dtype, seed=0)
        if shape is None:
            shape = ModelShape(config=loaded.config, dtype_bytes=DTYPES[self.dtype].bytes)
            self.check_context(shape)
            self.check_memory(shape, data)
        return loaded

    def corpus(self, name: str) -> tuple[Any, Any]:
        """(corpus, eval split) of dataset ``name``, sha256-checked."""
        from gpt2xl.data import eval_split, load_corpus

        corpus = load_corpus(name, data_dir=self.data_dir)
        return corpus, eval_split(corpus)

    def check_batch_memory(
        self, shape: ModelShape, *, option: str, batch_size: int, count: int, seq_len: int, what: str,
        kv_cache: bool = False,
    ) -> None:
        """ConfigError, saying the largest batch that fits, when ``min(batch_size, count)``
        sequences of ``seq_len`` tokens at once would not fit in the device's free memory (the
        host's for the CPU, the GPU's for CUDA)."""
        from gpt2xl.devices import resolve_device

        device = str(resolve_device(self.device))
        batch = min(batch_size, count)

        def need(b: int) -> int:
            return validation.estimate_run_bytes(shape.config, batch_size=b, seq_len=seq_len,
                                                 dtype_bytes=shape.dtype_bytes, kv_cache=kv_cache)

        per_sequence = need(1) - need(0)  # the estimate is linear in the batch
        fit = (validation.available_memory_bytes(device) - need(0)) // per_sequence
        hint = f"use {option} {fit:,} or less." if fit >= 1 else "use a smaller model or a machine with more memory."
        validation.check_memory(
            need(batch), what=f"{option} {batch_size:,} ({batch:,} {what} of {seq_len:,} tokens at once)", hint=hint,
            device=device,
        )


def _check_stride(stride: int | None, shape: ModelShape) -> None:
    if stride is not None and stride > shape.block_size:
        raise ConfigError(
            f"--stride {stride:,} exceeds the model's context of {shape.block_size:,} tokens and would skip tokens; "
            f"use --stride {shape.block_size:,} or less."
        )


def _num_windows(split: Any, *, max_tokens: int | None, stride: int | None, shape: ModelShape) -> int:
    """How many windows the sliding-window perplexity of ``split`` (capped at ``max_tokens``) runs."""
    from gpt2xl.perplexity import window_plan

    tokens = min(split.num_tokens, max_tokens or split.num_tokens)
    return len(window_plan(tokens, max_length=shape.block_size, stride=stride or shape.block_size))


@dataclass(frozen=True, kw_only=True)
class PerplexityOptions(CommonOptions):
    dataset: str
    stride: int | None
    batch_size: int
    max_tokens: int | None
    out: Path | None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dataset == "lambada":
            raise ConfigError("For LAMBADA use `gpt2xl eval lambada` (it is scored per target word).")
        _perplexity_dataset(self.dataset)
        if self.stride is not None:
            check_int("--stride", self.stride)
        check_int("--batch-size", self.batch_size)
        if self.max_tokens is not None:
            check_int("--max-tokens", self.max_tokens, minimum=2)  # a single token has nothing before it

    def check_output(self) -> None:
        if self.out is not None:
            check_output_file(self.out, name="--out")

    def check_context(self, shape: ModelShape) -> None:
        _check_stride(self.stride, shape)

    def read_data(self) -> EvalData:
        return EvalData(corpora={self.dataset: self.corpus(self.dataset)})

    def check_memory(self, shape: ModelShape, data: EvalData) -> None:
        split = data.corpora[self.dataset][1]
        windows = _num_windows(split, max_tokens=self.max_tokens, stride=self.stride, shape=shape)
        self.check_batch_memory(shape, option="--batch-size", batch_size=self.batch_size, count=windows,
                                seq_len=shape.block_size, what="windows")


@dataclass(frozen=True, kw_only=True)
class LambadaOptions(CommonOptions):
    batch_size: int
    max_examples: int | None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("--batch-size", self.batch_size)
        if self.max_examples is not None:
            check_int("--max-examples", self.max_examples)

    def read_data(self) -> EvalData:
        return EvalData(corpora={}, lambada=self.corpus("lambada")[0])

    def check_memory(self, shape: ModelShape, data: EvalData) -> None:
        examples = min(len(data.lambada.documents), self.max_examples or len(data.lambada.documents))
        # block_size + 1 tokens: the last token is only a target (see gpt2xl.perplexity.lambada_eval).
        self.check_batch_memory(shape, option="--batch-size", batch_size=self.batch_size, count=examples,
                                seq_len=shape.block_size + 1, what="examples")


@dataclass(frozen=True, kw_only=True)
class GridOptions(CommonOptions):
    grid: GridConfig
    run_dir: Path

    def check_output(self) -> None:
        check_output_dir(self.run_dir, name="--run-dir")

    def check_context(self, shape: ModelShape) -> None:
        check_fits_context(prompt_tokens=self.grid.prompt_tokens, max_new_tokens=self.grid.max_new_tokens,
                           block_size=shape.block_size)

    def read_data(self) -> EvalData:
        corpus_split = self.corpus(self.grid.dataset)
        return EvalData(corpora={self.grid.dataset: corpus_split}, prompts=self.prompts(corpus_split[1]))

    def prompts(self, split: Any) -> list[Any]:
        """The grid's prompts; ConfigError saying how many fit when the split is too short."""
        from gpt2xl.grid import grid_prompts

        cfg = self.grid
        return grid_prompts(split.token_ids, num_prompts=cfg.num_prompts, prompt_tokens=cfg.prompt_tokens,
                            continuation_tokens=cfg.max_new_tokens)

    def check_memory(self, shape: ModelShape, data: EvalData) -> None:
        cfg = self.grid
        self.check_batch_memory(shape, option="--batch-size", batch_size=cfg.batch_size, count=len(data.prompts or ()),
                                seq_len=cfg.prompt_tokens + cfg.max_new_tokens, what="prompts",
                                kv_cache=True)  # sampling holds a KV cache; scoring windows does not


@dataclass(frozen=True, kw_only=True)
class RunOptions(GridOptions):
    ppl_datasets: tuple[str, ...]
    stride: int | None
    ppl_batch_size: int
    ppl_max_tokens: int | None  # None: every test set whole
    lambada_max_examples: int  # 0: no LAMBADA

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in self.ppl_datasets:
            _perplexity_dataset(name)
        if self.stride is not None:
            check_int("--stride", self.stride)
        check_int("--ppl-batch-size", self.ppl_batch_size)
        if self.ppl_max_tokens is not None:
            check_int("--ppl-max-tokens", self.ppl_max_tokens, minimum=2)
        check_int("--lambada-max-examples", self.lambada_max_examples, minimum=0)

    def check_context(self, shape: ModelShape) -> None:
        super().check_context(shape)
        _check_stride(self.stride, shape)

    def read_data(self) -> EvalData:
        corpora = {name: self.corpus(name) for name in dict.fromkeys([self.grid.dataset, *self.ppl_datasets])}
        return EvalData(
            corpora=corpora,
            lambada=self.corpus("lambada")[0] if self.lambada_max_examples else None,
            prompts=self.prompts(corpora[self.grid.dataset][1]),
        )

    def check_memory(self, shape: ModelShape, data: EvalData) -> None:
        super().check_memory(shape, data)
        for name in self.ppl_datasets:
            split = data.corpora[name][1]
            windows = _num_windows(split, max_tokens=self.ppl_max_tokens, stride=self.stride, shape=shape)
            self.check_batch_memory(shape, option="--ppl-batch-size", batch_size=self.ppl_batch_size, count=windows,
                                    seq_len=shape.block_size, what=f"{name} windows")
        if data.lambada is not None:
            self.check_batch_memory(shape, option="--ppl-batch-size", batch_size=self.ppl_batch_size,
                                    count=min(len(data.lambada.documents), self.lambada_max_examples),
                                    seq_len=shape.block_size + 1, what="LAMBADA examples")


# --------------------------------------------------------------------------------------------
# helpers: one result entry per evaluation, result files, summaries
# --------------------------------------------------------------------------------------------


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
    if max_tokens is not None and max_tokens < len(ids):
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


def lambada_entry(
    model: Any, corpus: Any, *, batch_size: int, max_examples: int | None, progress: bool
) -> dict[str, Any]:
    from gpt2xl.data import lambada_examples
    from gpt2xl.perplexity import lambada_eval

    examples = lambada_examples(corpus)
    note = f"all {len(examples):,}"
    if max_examples is not None and max_examples < len(examples):
        examples = examples[:max_examples]
        note = f"first {max_examples:,} of the test set"
    t0 = time.perf_counter()
    result = lambada_eval(model, examples, batch_size=batch_size, progress=progress)
    return {"dataset": "lambada", "dataset_sha256": corpus.sha256, "note": note,
            "seconds": time.perf_counter() - t0, "result": result.to_dict()}


def grid_entry(model: Any, prompts: list[Any], cfg: GridConfig, *, progress: bool) -> dict[str, Any]:
    """The human reference and every cell on ``prompts`` (cut from the split once, before
    loading), as one result entry."""
    from gpt2xl.grid import human_reference, run_grid
    from gpt2xl.tokenizer import decode

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


def write_eval_outputs(doc: dict[str, Any], run_dir: Path) -> dict[str, Path]:
    """eval.json, eval_grid.csv (when there is a grid), plots, and report.md, all in ``run_dir``
    (checked writable before the run). Each file is written atomically; a failed write raises
    OutputError, and the files written before it stay."""
    from gpt2xl.results import write_result, write_text_atomic
    from gpt2xl_app.eval_report import grid_csv, read_eval_doc, write_eval_plots
    from gpt2xl_app.report import write_report

    paths = {"eval": write_result(run_dir / "eval.json", kind="eval", payload=doc)}
    saved = read_eval_doc(paths["eval"])  # plots read the file, exactly as a later re-render would
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
        f"word ppl {r['word_perplexity']:.4g} ({r['tokens_scored']:,} tokens scored, "
        f"context {entry['context_length']}, "
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
    from gpt2xl.results import write_result

    opts = PerplexityOptions(model=model, data_dir=path_option("--data-dir", data_dir), device=device, dtype=dtype,
                             threads=threads, dataset=dataset, stride=stride, batch_size=batch_size,
                             max_tokens=max_tokens, out=path_option("--out", out))
    shape, data = opts.prepare()
    loaded = opts.load(shape, data)
    corpus, split = data.corpora[dataset]
    entry = perplexity_entry(loaded.model, corpus, split, stride=stride, batch_size=batch_size,
                             max_tokens=max_tokens, progress=progress)
    entry["model"] = _model_info(loaded)
    # The result is printed before the file is written: a failed write does not lose it.
    if as_json:
        typer.echo(json.dumps(entry, indent=2))
    else:
        _echo_ppl(entry)
    if opts.out is not None:
        write_result(opts.out, kind="perplexity", payload=entry)


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
    opts = LambadaOptions(model=model, data_dir=path_option("--data-dir", data_dir), device=device, dtype=dtype,
                          threads=threads, batch_size=batch_size, max_examples=max_examples)
    shape, data = opts.prepare()
    loaded = opts.load(shape, data)
    entry = lambada_entry(loaded.model, data.lambada, batch_size=batch_size, max_examples=max_examples,
                          progress=progress)
    if as_json:
        typer.echo(json.dumps(entry, indent=2))
    else:
        r = entry["result"]
        typer.echo(f"lambada ({entry['note']}): accuracy {r['accuracy']:.4f}, perplexity {r['perplexity']:.3f}")


TempsOpt = Annotated[str, typer.Option(help="Comma-separated temperatures (0 = greedy).")]
TopKsOpt = Annotated[str, typer.Option(help="Comma-separated top-k values (0 = the whole vocabulary).")]
SeedsOpt = Annotated[str, typer.Option(help="Comma-separated sampling seeds; every cell runs each.")]
NumPromptsOpt = Annotated[int, typer.Option(help="Prompts cut from the eval split at evenly spaced offsets.")]
PromptTokensOpt = Annotated[int, typer.Option(help="Tokens per prompt (fixed prefix length).")]
NewTokensOpt = Annotated[int, typer.Option(help="Tokens to generate per prompt (stops early at end-of-text).")]
GridBatchOpt = Annotated[int, typer.Option(help="Prompts sampled together in one batch.")]
RunDirOpt = Annotated[str, typer.Option(help="Run directory for eval.json, eval_grid.csv, plots and report.md.")]


@eval_app.command()
def grid(
    run_dir: RunDirOpt,
    *,
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

    Example: gpt2xl eval grid --run-dir reports/try1 -m ../shared/models/gpt2-tiny-shakespeare
    --temperatures 0.7,1.0 --top-ks 0,40
    """
    cfg = grid_config(dataset=dataset, temperatures=temperatures, top_ks=top_ks, seeds=seeds, num_prompts=num_prompts,
                      prompt_tokens=prompt_tokens, max_new_tokens=max_new_tokens, batch_size=batch_size)
    opts = GridOptions(model=model, data_dir=path_option("--data-dir", data_dir), device=device, dtype=dtype,
                       threads=threads, grid=cfg, run_dir=path_option("--run-dir", run_dir))
    shape, data = opts.prepare()
    loaded = opts.load(shape, data)
    corpus, split = data.corpora[dataset]
    doc = _base_doc(loaded, corpus, split, list(cfg.seeds), {"grid": cfg.to_dict(), "threads": threads})
    doc["grid"] = grid_entry(loaded.model, data.prompts or [], cfg, progress=progress)
    _echo_grid(doc["grid"])
    paths = write_eval_outputs(doc, opts.run_dir)
    typer.echo(f"wrote {paths['eval']}, {paths.get('csv')}, {paths['report']}")


@eval_app.command()
def run(
    run_dir: RunDirOpt,
    *,
    model: Annotated[str | None, typer.Option(
        "--model", "-m",
        help=f"Model spec (default: ${EVAL_MODEL_ENV}, else gpt2-xl when in the HF cache, else "
             "../shared/models/gpt2-tiny-shakespeare).",
    )] = None,
    dataset: Annotated[str, typer.Option(help="Dataset of the grid and of the first perplexity.")] = "tinyshakespeare",
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
    cfg = grid_config(dataset=dataset, temperatures=temperatures, top_ks=top_ks, seeds=seeds, num_prompts=num_prompts,
                      prompt_tokens=prompt_tokens, max_new_tokens=max_new_tokens, batch_size=batch_size)
    opts = RunOptions(
        model=model or default_eval_model(), data_dir=path_option("--data-dir", data_dir), device=device, dtype=dtype,
        threads=threads, grid=cfg, run_dir=path_option("--run-dir", run_dir),
        ppl_datasets=ppl_datasets_option(ppl_datasets), stride=stride, ppl_batch_size=ppl_batch_size,
        ppl_max_tokens=ppl_max_tokens or None,  # 0 = no cap
        lambada_max_examples=lambada_max_examples,
    )
    shape, data = opts.prepare()
    t0 = time.perf_counter()
    loaded = opts.load(shape, data)
    corpus, split = data.corpora[dataset]
    doc = _base_doc(loaded, corpus, split, list(cfg.seeds), {
        "grid": cfg.to_dict(), "ppl_datasets": list(opts.ppl_datasets), "stride": stride,
        "ppl_batch_size": ppl_batch_size, "ppl_max_tokens": opts.ppl_max_tokens,
        "lambada_max_examples": lambada_max_examples, "threads": threads,
    })
    doc["datasets"] = {name: _dataset_info(c, s) for name, (c, s) in data.corpora.items()}
    for name in opts.ppl_datasets:
        c, s = data.corpora[name]
        entry = perplexity_entry(loaded.model, c, s, stride=stride, batch_size=ppl_batch_size,
                                 max_tokens=opts.ppl_max_tokens, progress=progress)
        _echo_ppl(entry)
        doc["perplexity"].append(entry)
    if data.lambada is not None:
        doc["lambada"] = lambada_entry(loaded.model, data.lambada, batch_size=ppl_batch_size,
                                       max_examples=lambada_max_examples, progress=progress)
        typer.echo(f"lambada: accuracy {doc['lambada']['result']['accuracy']:.4f}, "
                   f"perplexity {doc['lambada']['result']['perplexity']:.3f}")
    doc["grid"] = grid_entry(loaded.model, data.prompts or [], cfg, progress=progress)
    doc["total_seconds"] = time.perf_counter() - t0
    _echo_grid(doc["grid"])
    paths = write_eval_outputs(doc, opts.run_dir)
    typer.echo(f"wrote {paths['eval']}, {paths.get('csv')}, {paths['report']} ({doc['total_seconds']:.0f} s)")


@eval_app.command()
def report(
    run_dir: Annotated[str, typer.Argument(help="A run directory holding eval.json and/or bench.json.")],
) -> None:
    """Re-render RUN_DIR/report.md (and the eval plots) from the result files.

    Example: gpt2xl eval report reports/20260101T000000Z
    """
    from gpt2xl_app.compare import load_bench
    from gpt2xl_app.eval_report import read_eval_doc, write_eval_plots
    from gpt2xl_app.report import write_report

    folder = path_option("RUN_DIR", run_dir)
    if not folder.is_dir():
        raise ResultError(f"{folder} is not a directory; pass a run directory holding eval.json and/or bench.json.")
    eval_path, bench_path = folder / "eval.json", folder / "bench.json"
    # Both files are checked before anything is written, so a malformed one changes nothing.
    eval_doc = read_eval_doc(eval_path) if eval_path.exists() else None
    if bench_path.exists():
        load_bench(bench_path)
    if eval_doc is not None:
        write_eval_plots(eval_doc, folder)
    typer.echo(f"wrote {write_report(folder)}")
