"""The evaluation pipeline: perplexity, LAMBADA, the sampling grid and the whole run, as typed calls.

The CLI (``gpt2xl eval …``, :mod:`gpt2xl_app.eval_commands`) parses options into one of the
options dataclasses below, makes one call (:func:`evaluate_perplexity`, :func:`evaluate_lambada`,
:func:`evaluate_grid`, :func:`evaluate_run`, :func:`rerender_run_dir`) and prints what the
callbacks of :class:`Hooks` hand it; ``tests/refresh_eval_baseline.py`` makes the same call. This
module prints nothing but progress bars; the plots and the Markdown report come from the caller
(a :data:`Renderer`), since the library does not import matplotlib.

Every option is checked before any work, in one place per command: each options dataclass checks
its values against their domains in ``__post_init__`` (ranges, dataset names, device, dtype), and
its :meth:`~CommonOptions.prepare` then checks, in this order, what needs the file system: the
output location (created, probed, and locked against a second writer), the model's shape without
loading it (:func:`gpt2xl.weights.resolve_config`: stride and prompt lengths against the
context), the datasets (the prompts against the split), an earlier ``eval.json`` in the run
directory (its results are kept or resumed only for the same model), and a memory estimate of
the batch. Only then is the model loaded; a hub model that is not cached has no shape to read
early, so its checks run right after it is loaded, before anything is computed.

Run directories: every file of a result set (``eval.json``, ``eval_grid.csv``, the plots,
``report.md``) is built in a staging directory and moved into the run directory together, and
``eval_manifest.json`` (name, size and sha256 of each) is written last
(:func:`gpt2xl.results.staged_files`): a failure or a kill never leaves new JSON beside old plots
under a manifest. ``eval grid`` keeps the perplexity and LAMBADA results of an earlier run of the
same model in the same directory; ``eval run`` saves its finished parts (perplexity, LAMBADA)
before the grid starts, and ``--resume`` reuses the parts of an earlier run that match this one.
The grid saves each shard in ``RUN_DIR/shards`` as it finishes (:mod:`gpt2xl.shard_checkpoint`),
and ``--resume`` (``eval grid`` and ``eval run``) skips those of an interrupted run.

Ray (``--ray``, :mod:`gpt2xl.distributed`): after the checks, the cluster is joined or started
(:meth:`GridOptions.connect`: a cluster too small fails before the model is loaded); the driver
loads the model as always, and workers holding the same model (thread count and kernel plan
included) run the grid's shards and score perplexity's windows, with identical results.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt2xl import validation
from gpt2xl.config import GPTConfig
from gpt2xl.data import Corpus, EvalSplit
from gpt2xl.dtypes import DTYPES, check_dtype_name
from gpt2xl.errors import ConfigError, ResultError
from gpt2xl.grid import GridConfig, Prompt, ShardResult, ShardRunner, check_fits_context
from gpt2xl.metric_table import INTERVAL_METRICS, METRICS, SETTING_NAMES, SETTINGS
from gpt2xl.model import GPT
from gpt2xl.results import Maybe, read_result, schema_problem
from gpt2xl.validation import check_int, check_output_dir, check_output_file
from gpt2xl.weights import LoadedModel

if TYPE_CHECKING:
    from gpt2xl.distributed import Cluster, WorkerPool
    from gpt2xl.grid_mauve import Featurizer
    from gpt2xl.perplexity import SpanScorer
    from gpt2xl.precision import PrecisionConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = REPO_ROOT.parent / "shared" / "models" / "gpt2-tiny-shakespeare"
EVAL_MODEL_ENV = "GPT2XL_EVAL_MODEL"
PRETRAINED = "gpt2-xl"

EVAL_JSON = "eval.json"
GRID_CSV = "eval_grid.csv"
MANIFEST = "eval_manifest.json"
REPORT = "report.md"
# The files an eval run owns in a run directory: a new set replaces the previous one's.
OWNED_FILES = (EVAL_JSON, GRID_CSV, "eval_heatmap_*.png", "eval_fluency_vs_diversity.png")


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
# eval.json: its schema (the fields the readers rely on; others may be present), built from the
# metric table
# --------------------------------------------------------------------------------------------

_INTERVALS = Maybe({"*": {"low": float, "high": float}})  # {metric: interval}, where a caller computed one
_CELL_METRICS: dict[str, object] = {
    m.name: Maybe(float) if m.nullable else (int if m.kind is int else float) for m in METRICS
}
_MEAN_METRICS: dict[str, object] = {m.name: Maybe(float) for m in METRICS}  # per setting, over its seeds
# A setting with a default (top-p) may be absent from a file written before it existed.
_SETTINGS: dict[str, object] = {
    s.name: (int if s.kind is int else float) if s.default is None else Maybe(int if s.kind is int else float)
    for s in SETTINGS
}
_NEIGHBOUR_TEST = {"axis": str, "metric": str, "left": dict, "right": dict, "difference": float, "low": float,
                   "high": float, "p_value": float}  # and "significant", a boolean (the schema has no node for one)
_DATASET: dict[str, object] = {"source": str, "sha256": Maybe(str), "split": str}
PROVENANCE_SCHEMA: dict[str, object] = {
    "label": str, "kind": str, "spec": str, "files": [str], "sha256": Maybe(str), "num_parameters": int,
    "config": dict, "device": str, "dtype": str, "seed": Maybe(int),
}
EVAL_SCHEMA: dict[str, object] = {
    "model": PROVENANCE_SCHEMA,
    "dataset": {"name": str, **_DATASET},
    "datasets": Maybe({"*": _DATASET}),
    "seeds": [int],
    "environment": Maybe(dict),
    "perplexity": Maybe([{
        "dataset": str, "split": str, "context_length": int, "stride": int, "seconds": float,
        "result": {"tokens_scored": int, "token_perplexity": float, "bits_per_byte": float, "word_perplexity": float},
    }]),
    "lambada": Maybe({
        "note": str, "result": {"num_examples": int, "accuracy": float, "perplexity": float, "num_cropped": int},
    }),
    "grid": Maybe({
        "config": {"dataset": str, "num_prompts": int, "prompt_tokens": int, "max_new_tokens": int,
                   "batch_size": int, "seeds": [int], "top_ps": Maybe([float]), "bootstrap_seed": Maybe(int),
                   "n_resamples": Maybe(int)},
        "intervals": Maybe({"confidence": float, "seed": int, "n_resamples": int}),
        "neighbour_tests": Maybe({"test": str, "level": float, "correction": str, "comparisons": [_NEIGHBOUR_TEST]}),
        "seconds": float,
        "human": Maybe(_CELL_METRICS),
        "human_intervals": _INTERVALS,
        "mauve": Maybe({"featurizer": str, "seed": int, "p_samples": int,
                        "settings": [{**_SETTINGS, "score": Maybe(float), "q_samples": int}]}),
        "summary": Maybe([{**_SETTINGS, "seeds": [int], "metrics": _MEAN_METRICS, "intervals": _INTERVALS}]),
        "cells": [{**_SETTINGS, "seed": int, "seconds": float, "metrics": _CELL_METRICS, "intervals": _INTERVALS,
                   "example_texts": Maybe([str])}],
    }),
    # gpt2xl.precision: each dtype against fp32 (the reference row has no greedy or deltas).
    "precision": Maybe({
        "config": dict, "reference": str, "setting": dict, "test": str, "level": float, "seconds": float,
        "perplexity_text": {"dataset": str, "tokens": int, "context_length": int, "stride": int},
        "dtypes": [{
            "dtype": str, "perplexity": float, "tokens_scored": int, "seconds": float,
            "metrics": {m.name: Maybe(float) for m in INTERVAL_METRICS},
            "perplexity_delta": Maybe(float),
            "greedy": Maybe({"prompts": int, "identical": int, "identical_fraction": float,
                             "mean_first_divergence": Maybe(float), "max_new_tokens": int}),
            # and "significant", a boolean (the schema has no node for one)
            "deltas": Maybe({"*": {"difference": float, "low": float, "high": float, "p_value": float}}),
        }],
    }),
}


def read_eval_doc(
    path: Path, *, fix: str = "rewrite it with `gpt2xl eval run` or restore the original file"
) -> dict[str, Any]:
    """``eval.json`` at ``path``, read and checked against :data:`EVAL_SCHEMA`; ResultError naming
    the file, the first field that departs from it, and ``fix`` (what to do)."""
    doc = read_result(path, kind="eval")
    problem = schema_problem(doc, EVAL_SCHEMA)
    if problem is not None:
        raise ResultError(f"{path} is not a usable eval result: {problem}; {fix}.")
    return doc


# --------------------------------------------------------------------------------------------
# the grid's rows: per seed (cells), per setting (over its seeds), the human reference
# --------------------------------------------------------------------------------------------


def settings_of(row: dict[str, Any]) -> tuple[Any, ...]:
    """The sampling settings that identify ``row`` (a cell or a summary row), in table order (a
    setting the row predates, e.g. top-p, at its default)."""
    return tuple(s.of(row) for s in SETTINGS)


def summarize_cells(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting: every metric's mean over the setting's seeds (a None value, e.g. the
    generation perplexity of a seed that generated nothing, is left out; None when every seed's
    is None), in the order the settings first appear in ``cells``. No interval: a caller that
    computes one adds ``intervals`` to the row (:func:`grid_entry` also replaces each shown
    metric's mean by the value its interval is of; see :mod:`gpt2xl.grid_intervals`)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for cell in cells:
        groups.setdefault(settings_of(cell), []).append(cell)
    rows = []
    for key, group in groups.items():
        means: dict[str, float | None] = {}
        for m in METRICS:
            values = [c["metrics"][m.name] for c in group if c["metrics"].get(m.name) is not None]
            means[m.name] = math.fsum(values) / len(values) if values else None
        rows.append({**dict(zip(SETTING_NAMES, key, strict=True)), "seeds": [c["seed"] for c in group],
                     "metrics": means})
    return rows


def summary_rows(grid: dict[str, Any]) -> list[dict[str, Any]]:
    """The grid's per-setting rows: as stored in eval.json (where they may carry intervals), or
    computed from the cells for a file written before summaries were stored."""
    stored = grid.get("summary")
    return stored if stored is not None else summarize_cells(grid["cells"])


def grid_csv(eval_doc: dict[str, Any]) -> str:
    """The grid as CSV: one ``model`` row per cell (setting and seed), one ``mean`` row per
    setting (its value over all seeds, with each shown metric's interval in ``<metric>_low`` /
    ``<metric>_high`` where one was computed), and the ``human`` reference last (settings and seed
    empty). The columns come from :data:`gpt2xl.metric_table.METRICS`."""
    grid = eval_doc["grid"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    bounds = [f"{m.name}_{side}" for m in INTERVAL_METRICS for side in ("low", "high")]
    writer.writerow(["source", *SETTING_NAMES, "seed", "seconds", *(m.name for m in METRICS), *bounds])

    def values(metrics: dict[str, Any], intervals: dict[str, Any] | None) -> list[Any]:
        row = ["" if metrics.get(m.name) is None else metrics[m.name] for m in METRICS]
        for m in INTERVAL_METRICS:
            interval = (intervals or {}).get(m.name)
            row += [interval["low"], interval["high"]] if interval else ["", ""]
        return row

    for c in grid["cells"]:
        writer.writerow(["model", *settings_of(c), c["seed"], f"{c['seconds']:.3f}",
                         *values(c["metrics"], c.get("intervals"))])
    for r in summary_rows(grid):
        writer.writerow(["mean", *settings_of(r), "", "", *values(r["metrics"], r.get("intervals"))])
    if grid.get("human"):
        writer.writerow(["human", *("" for _ in SETTINGS), "", "", *values(grid["human"], grid.get("human_intervals"))])
    return out.getvalue()


# --------------------------------------------------------------------------------------------
# options: every check, before any work
# --------------------------------------------------------------------------------------------


def perplexity_dataset(name: str) -> str:
    """A dataset perplexity is measured on: a known name other than lambada."""
    from gpt2xl.data import get_spec

    get_spec(name)
    if name == "lambada":
        raise ConfigError("LAMBADA is scored per target word: use `gpt2xl eval lambada` or --lambada-max-examples.")
    return name


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
    LAMBADA corpus, the grid's prompts, and the run directory's earlier ``eval.json`` (None where
    the command has no such part)."""

    corpora: dict[str, tuple[Corpus, EvalSplit]]
    lambada: Corpus | None = None
    prompts: list[Prompt] | None = None
    previous: dict[str, Any] | None = None


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

    def check_output(self, resources: contextlib.ExitStack) -> None:
        """Create and probe the output location, and hold it in ``resources`` (nothing by default)."""

    def check_context(self, shape: ModelShape) -> None:
        """Lengths against the model's context (nothing by default)."""

    def read_data(self) -> EvalData:
        raise NotImplementedError

    def check_memory(self, shape: ModelShape, data: EvalData) -> None:
        """Batch sizes against the available memory (nothing by default)."""

    def prepare(self, resources: contextlib.ExitStack) -> tuple[ModelShape | None, EvalData]:
        """Every check that can run before the model is loaded, cheapest first: the output
        location (its lock is held until ``resources`` closes), the model's shape (read without
        loading: a bad spec or config fails here) against the options, the datasets, and the
        memory estimate. The shape is None for a hub model that is not cached; :meth:`load` then
        runs its checks on the loaded model."""
        from gpt2xl.weights import resolve_config

        self.check_output(resources)
        config = resolve_config(self.model)
        shape = None if config is None else ModelShape(config=config, dtype_bytes=DTYPES[self.dtype].bytes)
        if shape is not None:
            self.check_context(shape)
        data = self.read_data()
        if shape is not None:
            self.check_memory(shape, data)
        return shape, data

    def load(self, shape: ModelShape | None, data: EvalData) -> LoadedModel:
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

    def corpus(self, name: str) -> tuple[Corpus, EvalSplit]:
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


def _num_windows(split: EvalSplit, *, max_tokens: int | None, stride: int | None, shape: ModelShape) -> int:
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
        perplexity_dataset(self.dataset)
        if self.stride is not None:
            check_int("--stride", self.stride)
        check_int("--batch-size", self.batch_size)
        if self.max_tokens is not None:
            check_int("--max-tokens", self.max_tokens, minimum=2)  # a single token has nothing before it

    def check_output(self, resources: contextlib.ExitStack) -> None:  # noqa: ARG002 (one file, written atomically)
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
        documents = len(data.lambada.documents) if data.lambada is not None else 0
        examples = min(documents, self.max_examples or documents)
        # block_size + 1 tokens: the last token is only a target (see gpt2xl.perplexity.lambada_eval).
        self.check_batch_memory(shape, option="--batch-size", batch_size=self.batch_size, count=examples,
                                seq_len=shape.block_size + 1, what="examples")


@dataclass(frozen=True, kw_only=True)
class GridOptions(CommonOptions):
    """The grid's options. ``run_dir``: where the result set goes (None: nothing is written, the
    caller takes the document). ``keep_previous``: an earlier eval.json's perplexity and LAMBADA
    results stay in the new one (``eval grid``; for the same model only). ``resume``
    (``--resume``): the finished shards of an interrupted grid in ``run_dir/shards`` (same model,
    prompts and settings, :mod:`gpt2xl.shard_checkpoint`) are not run again. ``ray``
    (``--ray``: local, auto or an address) and ``ray_workers`` (``--ray-workers``; None: as many
    as fit): run the shards and perplexity windows on Ray workers (:mod:`gpt2xl.distributed`),
    with identical results."""

    grid: GridConfig
    run_dir: Path | None
    keep_previous: bool = True
    resume: bool = False
    ray: str | None = None
    ray_workers: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.grid.mauve:
            from gpt2xl.mauve import require_mauve

            require_mauve()  # one line naming the extra, before any work (or run with --no-mauve)
        if self.ray_workers is not None:
            check_int("--ray-workers", self.ray_workers)
            if self.ray is None:
                raise ConfigError("--ray-workers needs --ray (local, auto or a cluster's address).")
        if self.ray is not None:
            from gpt2xl.distributed import check_local_workers, check_ray_address, require_ray

            check_ray_address(self.ray)
            if self.ray == "local":
                check_local_workers(self.ray_workers, device=self.device, threads=self.threads)
            require_ray()  # one line naming the extra, before any work

    def connect(self, resources: contextlib.ExitStack, shape: ModelShape | None) -> Cluster | None:
        """The Ray cluster of ``--ray`` (None without it), joined or started now and left when
        ``resources`` closes; ConfigError when it cannot hold the workers, before the model is
        loaded. Workers run the driver's thread count (see :mod:`gpt2xl.distributed`)."""
        if self.ray is None:
            return None
        import torch

        from gpt2xl.distributed import connect

        threads = self.threads or torch.get_num_threads()
        weight_bytes = None if shape is None else shape.config.num_parameters() * shape.dtype_bytes
        return resources.enter_context(connect(self.ray, workers=self.ray_workers, threads=threads,
                                               device=self.device, weight_bytes=weight_bytes))

    def check_output(self, resources: contextlib.ExitStack) -> None:
        from gpt2xl.results import run_dir_lock

        if self.run_dir is not None:
            check_output_dir(self.run_dir, name="--run-dir")
            resources.enter_context(run_dir_lock(self.run_dir))

    def check_context(self, shape: ModelShape) -> None:
        check_fits_context(prompt_tokens=self.grid.prompt_tokens, max_new_tokens=self.grid.max_new_tokens,
                           block_size=shape.block_size)

    def read_data(self) -> EvalData:
        corpus_split = self.corpus(self.grid.dataset)
        return EvalData(corpora={self.grid.dataset: corpus_split}, prompts=self.prompts(corpus_split[1]),
                        previous=self.previous())

    def prompts(self, split: EvalSplit) -> list[Prompt]:
        """The grid's prompts; ConfigError saying how many fit when the split is too short."""
        from gpt2xl.grid import grid_prompts

        cfg = self.grid
        return grid_prompts(split.token_ids, num_prompts=cfg.num_prompts, prompt_tokens=cfg.prompt_tokens,
                            continuation_tokens=cfg.max_new_tokens)

    def previous(self) -> dict[str, Any] | None:
        """The run directory's earlier eval.json when this run keeps or resumes parts of it
        (checked: a malformed one is refused rather than overwritten), else None."""
        if self.run_dir is None or not self.keep_previous or not (self.run_dir / EVAL_JSON).exists():
            return None
        doc = read_eval_doc(self.run_dir / EVAL_JSON, fix="move it out of the run directory to start afresh, or "
                                                            "restore the original file")
        if self.kept_parts(doc):
            check_same_model(doc["model"], spec=self.model, dtype=self.dtype, run_dir=self.run_dir)
        return doc

    def kept_parts(self, previous: dict[str, Any]) -> bool:
        """Whether ``previous`` holds results this run keeps (perplexity or LAMBADA)."""
        return bool(previous.get("perplexity") or previous.get("lambada"))

    def check_memory(self, shape: ModelShape, data: EvalData) -> None:
        cfg = self.grid
        self.check_batch_memory(shape, option="--batch-size", batch_size=cfg.batch_size, count=len(data.prompts or ()),
                                seq_len=cfg.prompt_tokens + cfg.max_new_tokens, what="prompts",
                                kv_cache=True)  # sampling holds a KV cache; scoring windows does not


@dataclass(frozen=True, kw_only=True)
class RunOptions(GridOptions):
    """The whole run. ``keep_previous`` (``--resume``): reuse every part of the run directory's
    eval.json that this run would compute again (same model, dataset and settings).

    ``dtypes`` (``--dtypes``): the precision comparison after the grid (:mod:`gpt2xl.precision`):
    known names, none repeated, fp32 (the reference) among them; ``("fp32",)`` (the default
    here; the CLI's is :func:`gpt2xl.precision.default_dtypes`) compares nothing. They need not
    include ``dtype``: the grid runs in ``dtype``, the comparison always against fp32, and the
    run's model is reused for its own dtype where listed; every dtype must run on ``device``."""

    ppl_datasets: tuple[str, ...]
    stride: int | None
    ppl_batch_size: int
    ppl_max_tokens: int | None  # None: every test set whole
    lambada_max_examples: int  # 0: no LAMBADA
    keep_previous: bool = False
    dtypes: tuple[str, ...] = ("fp32",)

    def __post_init__(self) -> None:
        super().__post_init__()
        from gpt2xl.precision import check_dtypes, check_dtypes_supported

        for name in self.ppl_datasets:
            perplexity_dataset(name)
        if self.stride is not None:
            check_int("--stride", self.stride)
        check_int("--ppl-batch-size", self.ppl_batch_size)
        if self.ppl_max_tokens is not None:
            check_int("--ppl-max-tokens", self.ppl_max_tokens, minimum=2)
        check_int("--lambada-max-examples", self.lambada_max_examples, minimum=0)
        check_dtypes_supported(check_dtypes(self.dtypes), device=self.device)

    def precision_config(self) -> PrecisionConfig | None:
        """The precision comparison of ``dtypes`` on the grid's prompts and seeds, its perplexity
        text cut at :data:`gpt2xl.precision.PPL_MAX_TOKENS` or ``ppl_max_tokens`` when lower;
        None for fp32 alone."""
        from gpt2xl.precision import PPL_MAX_TOKENS, PrecisionConfig

        if len(self.dtypes) < 2:
            return None
        return PrecisionConfig(dtypes=self.dtypes, grid=self.grid, stride=self.stride,
                               ppl_batch_size=self.ppl_batch_size,
                               ppl_max_tokens=min(PPL_MAX_TOKENS, self.ppl_max_tokens or PPL_MAX_TOKENS))

    def check_context(self, shape: ModelShape) -> None:
        super().check_context(shape)
        _check_stride(self.stride, shape)

    def kept_parts(self, previous: dict[str, Any]) -> bool:
        return bool(previous.get("perplexity") or previous.get("lambada") or previous.get("grid"))

    def read_data(self) -> EvalData:
        corpora = {name: self.corpus(name) for name in dict.fromkeys([self.grid.dataset, *self.ppl_datasets])}
        return EvalData(
            corpora=corpora,
            lambada=self.corpus("lambada")[0] if self.lambada_max_examples else None,
            prompts=self.prompts(corpora[self.grid.dataset][1]),
            previous=self.previous(),
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
        if len(self.dtypes) > 1:
            # The comparison holds a second copy of the weights (another dtype) beside the run's.
            from gpt2xl.devices import resolve_device
            from gpt2xl.precision import extra_weight_bytes

            cfg = self.grid
            batch = validation.estimate_run_bytes(shape.config, batch_size=min(cfg.batch_size, len(data.prompts or ())),
                                                  seq_len=cfg.prompt_tokens + cfg.max_new_tokens,
                                                  dtype_bytes=shape.dtype_bytes)
            extra = extra_weight_bytes(shape.config.num_parameters(), dtypes=self.dtypes, loaded=self.dtype)
            validation.check_memory(
                batch + extra, what=f"--dtypes {','.join(self.dtypes)} (another dtype's weights beside the run's)",
                hint="drop dtypes from --dtypes (--dtypes fp32 compares none) or use a smaller model.",
                device=str(resolve_device(self.device)),
            )


# The provenance fields two results must share to be put in one eval.json: the weights' bytes
# (or, for random weights, their seed and shape), device and dtype (one document names one of
# each). Not the spec nor the file paths: the same checkpoint may be named or copied two ways.
_SAME_MODEL_KEYS = ("kind", "sha256", "seed", "config", "device", "dtype")


def _model_words(model: dict[str, Any]) -> str:
    return f"{model['label']} ({model['dtype']} on {model['device']})"


def check_same_model(
    previous: dict[str, Any], *, spec: str, dtype: str, run_dir: Path, loaded: dict[str, Any] | None = None
) -> None:
    """ConfigError when the earlier results in ``run_dir`` (model provenance ``previous``) come from
    another model than this run's: before loading, by dtype; after, by ``loaded``'s provenance
    (weights sha256, config, device, dtype). One eval.json describes one model."""
    if loaded is None:
        same = previous["dtype"] == dtype
        this = f"{spec} ({dtype})"
    else:
        same = all(previous.get(k) == loaded.get(k) for k in _SAME_MODEL_KEYS)
        this = _model_words(loaded)
    if not same:
        raise ConfigError(
            f"--run-dir {run_dir} holds eval results of {_model_words(previous)}, not of {this}; pass another "
            f"--run-dir, or move {run_dir / EVAL_JSON} away to replace them."
        )


# --------------------------------------------------------------------------------------------
# one result entry per evaluation
# --------------------------------------------------------------------------------------------


def dataset_info(corpus: Corpus, split: EvalSplit) -> dict[str, Any]:
    return {
        "name": corpus.name,
        "source": corpus.source,
        "sha256": corpus.sha256,
        "split": split.description,
        "num_tokens": split.num_tokens,
        "num_words": split.num_words,
        "num_bytes": split.num_bytes,
    }


def _perplexity_split(split: EvalSplit, max_tokens: int | None) -> str:
    """What a perplexity entry of ``split`` (capped at ``max_tokens``) scores, in words."""
    if max_tokens is not None and max_tokens < split.num_tokens:
        return f"first {max_tokens:,} tokens of: {split.description}"
    return split.description


def perplexity_entry(
    model: GPT, corpus: Corpus, split: EvalSplit, *, stride: int | None, batch_size: int, max_tokens: int | None,
    progress: bool, scorer: SpanScorer | None = None,
) -> dict[str, Any]:
    """Sliding-window perplexity of ``split`` (optionally its first ``max_tokens`` tokens, with words
    and bytes then counted on the decoded prefix) as one result entry; ``scorer`` scores the windows
    elsewhere (Ray workers: :func:`gpt2xl.perplexity.sliding_window_nll`)."""
    from gpt2xl.perplexity import perplexity_report, sliding_window_nll
    from gpt2xl.tokenizer import decode

    ids = split.token_ids
    num_words, num_bytes = split.num_words, split.num_bytes
    if max_tokens is not None and max_tokens < len(ids):
        ids = ids[:max_tokens]
        text = decode(list(ids))
        num_words, num_bytes = len(text.split()), len(text.encode("utf-8"))
    t0 = time.perf_counter()
    nll = sliding_window_nll(model, ids, stride=stride, batch_size=batch_size, progress=progress, scorer=scorer)
    report = perplexity_report(nll, num_words=num_words, num_bytes=num_bytes)
    return {
        "dataset": corpus.name,
        "dataset_sha256": corpus.sha256,
        "split": _perplexity_split(split, max_tokens),
        "context_length": nll.context_length,
        "stride": nll.stride,
        "num_windows": nll.num_windows,
        "num_tokens": nll.num_tokens,
        "batch_size": batch_size,
        "seconds": time.perf_counter() - t0,
        "result": report.to_dict(),
    }


def _lambada_note(count: int, max_examples: int | None) -> str:
    if max_examples is not None and max_examples < count:
        return f"first {max_examples:,} of the test set"
    return f"all {count:,}"


def lambada_entry(
    model: GPT, corpus: Corpus, *, batch_size: int, max_examples: int | None, progress: bool
) -> dict[str, Any]:
    """LAMBADA (the first ``max_examples`` examples, or all) as one result entry."""
    from gpt2xl.data import lambada_examples
    from gpt2xl.perplexity import lambada_eval

    examples = lambada_examples(corpus)
    note = _lambada_note(len(examples), max_examples)
    examples = examples[:max_examples] if max_examples is not None else examples
    t0 = time.perf_counter()
    result = lambada_eval(model, examples, batch_size=batch_size, progress=progress)
    return {"dataset": "lambada", "dataset_sha256": corpus.sha256, "note": note,
            "seconds": time.perf_counter() - t0, "result": result.to_dict()}


def grid_entry(
    model: GPT, prompts: list[Prompt], cfg: GridConfig, *, progress: bool, featurizer: Featurizer | None = None,
    mauve_reference: Sequence[Sequence[int]] | None = None, runner: ShardRunner | None = None,
    done: Sequence[ShardResult] = (), on_shard: Callable[[ShardResult], None] | None = None,
) -> dict[str, Any]:
    """The human reference, every cell, and one row per setting on ``prompts`` (cut from the
    split once, before loading), as one result entry, with the bootstrap intervals of every shown
    metric of every setting and of the human reference, and the neighbour tests
    (:func:`gpt2xl.grid_intervals.grid_statistics`). A setting row's shown metrics are the values
    their intervals are of (over all its seeds' samples, the overlap metrics within each seed's
    cell); the others are means over seeds. With ``cfg.mauve``, each setting row's MAUVE
    (:mod:`gpt2xl.grid_mauve`) against the human texts ``mauve_reference`` (default: the prompts'
    own continuations) embedded by ``featurizer`` (default: ``model``, recorded as "the evaluated
    model"), and the sizes and seed it was scored with under ``mauve``. ``runner``, ``done`` and
    ``on_shard`` go to :func:`gpt2xl.grid.run_grid` (Ray workers, finished shards of a resumed
    run, a checkpoint of each newly finished one)."""
    from gpt2xl.grid import human_units, run_grid
    from gpt2xl.grid_intervals import SIGNIFICANCE_TEST, grid_statistics, interval_dict
    from gpt2xl.grid_mauve import Featurizer, grid_mauve, mauve_seed
    from gpt2xl.tokenizer import decode

    t0 = time.perf_counter()
    human, human_samples = human_units(model, prompts, batch_size=cfg.batch_size)
    cells = run_grid(model, prompts, cfg, progress=progress, runner=runner, done=done, on_shard=on_shard)
    cell_dicts = []
    for c in cells:
        d = c.to_dict()
        d["example_texts"] = [decode(list(e)) for e in c.examples]
        cell_dicts.append(d)
    computed = grid_statistics(cells, human_samples, cfg, progress=progress)
    summary = summarize_cells(cell_dicts)
    for row in summary:
        intervals = computed.intervals.get(settings_of(row), {})
        for name, interval in intervals.items():
            row["metrics"][name] = interval.estimate
        row["intervals"] = {name: interval_dict(i) for name, i in intervals.items()}
    mauve = None
    if cfg.mauve:
        reference = mauve_reference if mauve_reference is not None else [p.continuation for p in prompts]
        mauve = grid_mauve(featurizer or Featurizer(name="the evaluated model", model=model), reference=reference,
                           cells=cells, seed=mauve_seed(cfg.bootstrap_seed), batch_size=cfg.batch_size,
                           progress=progress)
        for row in summary:
            row["metrics"]["mauve"] = mauve.score(settings_of(row))
    return {
        "config": cfg.to_dict(),
        "prompt_starts": [p.start for p in prompts],
        "example_prompt": decode(list(prompts[0].tokens)),
        "human": human.to_dict(),
        "human_intervals": {name: interval_dict(i) for name, i in computed.human.items()},
        "summary": summary,
        "cells": cell_dicts,
        "intervals": computed.info,
        "neighbour_tests": {"test": SIGNIFICANCE_TEST, "level": round(1 - computed.info["confidence"], 12),
                            "correction": "none", "comparisons": computed.tests},
        "interval_notes": computed.notes,
        "mauve": None if mauve is None else mauve.to_dict(),
        "seconds": time.perf_counter() - t0,
    }


def base_doc(
    model: dict[str, Any], corpus: Corpus, split: EvalSplit, seeds: list[int], config: dict[str, Any]
) -> dict[str, Any]:
    """An eval.json document with no result yet: provenance (``model`` from
    :meth:`gpt2xl.weights.LoadedModel.provenance`, the dataset, seeds, config, environment)."""
    from gpt2xl.environment import environment_info

    return {
        "model": model,
        "dataset": dataset_info(corpus, split),
        "seeds": seeds,
        "config": config,
        "environment": environment_info(),
        "perplexity": [],
        "lambada": None,
        "grid": None,
    }


# --------------------------------------------------------------------------------------------
# run directories: the result set, written as one
# --------------------------------------------------------------------------------------------

# (eval doc as read back from the staged eval.json, staging directory, run directory): writes the
# plots and report.md into the staging directory (images are linked by name, so they resolve
# once moved). The run directory is for files the report joins (bench.json).
Renderer = Callable[[dict[str, Any], Path, Path], None]


def write_eval_files(doc: dict[str, Any] | None, run_dir: Path, *, render: Renderer | None) -> list[Path]:
    """Write the result set of ``doc`` into ``run_dir`` as one (see
    :func:`gpt2xl.results.staged_files`): eval.json, eval_grid.csv (with a grid), whatever
    ``render`` draws, then eval_manifest.json. ``doc`` None re-renders the set from the run
    directory's eval.json, which stays as it is. Call it holding the run directory's lock.
    Returns the files of the set."""
    from gpt2xl.results import staged_files, write_result, write_text_atomic

    keep = (EVAL_JSON,) if doc is None else ()
    with staged_files(run_dir, manifest=MANIFEST, owned=OWNED_FILES, keep=keep, unlisted=(REPORT,)) as stage:
        if doc is None:
            saved = read_eval_doc(run_dir / EVAL_JSON)
        else:
            saved = read_eval_doc(write_result(stage.directory / EVAL_JSON, kind="eval", payload=doc))
        if saved.get("grid"):
            write_text_atomic(stage.directory / GRID_CSV, grid_csv(saved))
        if render is not None:
            render(saved, stage.directory, run_dir)
    return stage.committed


# --------------------------------------------------------------------------------------------
# the commands' pipelines
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Hooks:
    """What the caller sees while a pipeline runs: tqdm bars on stderr (``progress``), each
    result entry as soon as it exists (before it is written: a failed write does not lose it),
    and ``on_note`` lines (results kept or reused from an earlier run)."""

    progress: bool = False
    on_perplexity: Callable[[dict[str, Any]], None] | None = None
    on_lambada: Callable[[dict[str, Any]], None] | None = None
    on_grid: Callable[[dict[str, Any]], None] | None = None
    on_note: Callable[[str], None] | None = None
    on_precision: Callable[[dict[str, Any]], None] | None = None  # the precision entry (eval run --dtypes)

    def note(self, text: str) -> None:
        if self.on_note is not None:
            self.on_note(text)


@dataclass(frozen=True, kw_only=True)
class EvalOutcome:
    """A finished grid or run: the eval.json document, the files written into the run directory
    (none without one), and the seconds from loading the model to the last result."""

    doc: dict[str, Any]
    files: list[Path]
    seconds: float


def evaluate_perplexity(opts: PerplexityOptions, *, hooks: Hooks | None = None) -> dict[str, Any]:
    """``gpt2xl eval perplexity``: the checks, the model, one perplexity entry (with the model's
    provenance), handed to ``hooks.on_perplexity`` and then written to ``opts.out`` when given."""
    from gpt2xl.results import write_result

    hooks = hooks or Hooks()
    with contextlib.ExitStack() as resources:
        shape, data = opts.prepare(resources)
        loaded = opts.load(shape, data)
        corpus, split = data.corpora[opts.dataset]
        entry = perplexity_entry(loaded.model, corpus, split, stride=opts.stride, batch_size=opts.batch_size,
                                 max_tokens=opts.max_tokens, progress=hooks.progress)
        entry["model"] = loaded.provenance()
        if hooks.on_perplexity is not None:
            hooks.on_perplexity(entry)
        if opts.out is not None:
            write_result(opts.out, kind="perplexity", payload=entry)
    return entry


def evaluate_lambada(opts: LambadaOptions, *, hooks: Hooks | None = None) -> dict[str, Any]:
    """``gpt2xl eval lambada``: the checks, the model, one LAMBADA entry (with the model's provenance)."""
    hooks = hooks or Hooks()
    with contextlib.ExitStack() as resources:
        shape, data = opts.prepare(resources)
        loaded = opts.load(shape, data)
        if data.lambada is None:  # read_data always reads it; the type does not say so
            raise ValueError("LambadaOptions.read_data returned no LAMBADA corpus")
        entry = lambada_entry(loaded.model, data.lambada, batch_size=opts.batch_size, max_examples=opts.max_examples,
                              progress=hooks.progress)
        entry["model"] = loaded.provenance()
        if hooks.on_lambada is not None:
            hooks.on_lambada(entry)
    return entry


def _start_workers(
    opts: GridOptions, cluster: Cluster | None, loaded: LoadedModel, resources: contextlib.ExitStack
) -> WorkerPool | None:
    """The Ray workers on ``cluster`` (None without one), each holding the model as ``loaded``
    (same spec, device, dtype, thread count and kernel plan); stopped when ``resources`` closes."""
    if cluster is None:
        return None
    from gpt2xl.distributed import worker_spec

    spec = worker_spec(model=opts.model, device=opts.device, dtype=opts.dtype, threads=cluster.threads,
                       plan=loaded.model.kernel_plan())
    return resources.enter_context(cluster.pool(spec))


@dataclass(frozen=True, kw_only=True)
class _Started:
    """What a grid run has once its checks passed: the data, the model, the Ray workers (None
    without ``--ray``), the eval.json document with its provenance, and when the work began."""

    data: EvalData
    loaded: LoadedModel
    pool: WorkerPool | None
    doc: dict[str, Any]
    t0: float


def _start(opts: GridOptions, resources: contextlib.ExitStack, config: dict[str, Any]) -> _Started:
    """The start every grid command shares: every check (:meth:`GridOptions.prepare`), the Ray
    cluster when asked (connected before the model loads, so a dead address costs no load), the
    model, the workers, and a document recording ``config`` and the workers."""
    shape, data = opts.prepare(resources)
    t0 = time.perf_counter()
    cluster = opts.connect(resources, shape)
    loaded = opts.load(shape, data)
    pool = _start_workers(opts, cluster, loaded, resources)
    corpus, split = data.corpora[opts.grid.dataset]
    doc = base_doc(loaded.provenance(), corpus, split, list(opts.grid.seeds), config)
    if cluster is not None:
        doc["environment"]["ray"] = cluster.describe()
    return _Started(data=data, loaded=loaded, pool=pool, doc=doc, t0=t0)


def evaluate_grid(opts: GridOptions, *, render: Renderer | None = None, hooks: Hooks | None = None) -> EvalOutcome:
    """``gpt2xl eval grid``: the checks (the run directory locked until the files are written),
    the model, the grid, and the result set in ``opts.run_dir``. Perplexity and LAMBADA results
    of an earlier eval.json there (same model) are kept in the new one."""
    hooks = hooks or Hooks()
    cfg = opts.grid
    with contextlib.ExitStack() as resources:
        run = _start(opts, resources, {"grid": cfg.to_dict(), "threads": opts.threads})
        data, loaded, pool, doc, t0 = run.data, run.loaded, run.pool, run.doc, run.t0
        previous = data.previous
        if previous is not None and opts.kept_parts(previous) and opts.run_dir is not None:
            check_same_model(previous["model"], spec=opts.model, dtype=opts.dtype, run_dir=opts.run_dir,
                             loaded=doc["model"])
            doc["perplexity"], doc["lambada"] = previous.get("perplexity") or [], previous.get("lambada")
            doc["config"] = {**previous["config"], **doc["config"]} if isinstance(previous.get("config"), dict) \
                else doc["config"]
            doc["datasets"] = {**(previous.get("datasets") or {}), cfg.dataset: doc["dataset"]}
            hooks.note(f"kept the perplexity and LAMBADA results of {opts.run_dir / EVAL_JSON}")
        doc["grid"] = _grid_entry(opts, loaded, data, hooks, model=doc["model"], pool=pool)
        if hooks.on_grid is not None:
            hooks.on_grid(doc["grid"])
        files = write_eval_files(doc, opts.run_dir, render=render) if opts.run_dir is not None else []
        return EvalOutcome(doc=doc, files=files, seconds=time.perf_counter() - t0)


def _grid_entry(
    opts: GridOptions, loaded: LoadedModel, data: EvalData, hooks: Hooks, *, model: dict[str, Any],
    pool: WorkerPool | None = None,
) -> dict[str, Any]:
    """:func:`grid_entry` of the options' grid, with MAUVE's featurizer and human texts when it
    is on: gpt2-large when it is in the local cache (mauve-text's default featurizer), else the
    evaluated model; as many human texts of the split as the grid has samples per setting. A
    preset's published values and notes on ``model`` (the run's provenance) go with it. The
    shards run on ``pool`` (Ray workers) when given; with a run directory each finished shard is
    saved there as it completes, and ``opts.resume`` skips those an interrupted run saved."""
    from gpt2xl.grid_mauve import Featurizer, human_reference_texts
    from gpt2xl.mauve import choose_featurizer

    cfg = opts.grid
    featurizer = reference = None
    if cfg.mauve:
        name = choose_featurizer(opts.model)
        if name == opts.model:
            featurizer = Featurizer(name=f"{opts.model} (the evaluated model)", model=loaded.model)
        else:
            from gpt2xl.weights import load_model

            hooks.note(f"MAUVE features come from {name}, found in the local cache")
            featurizer = Featurizer(name=name, model=load_model(name, device=opts.device, dtype="fp32", seed=0).model)
        split = data.corpora[cfg.dataset][1]
        reference = human_reference_texts(split.token_ids, count=cfg.num_prompts * len(cfg.seeds),
                                          length=cfg.max_new_tokens)
    prompts = data.prompts or []
    done: list[ShardResult] = []
    on_shard = None
    if opts.run_dir is not None:
        import torch

        from gpt2xl.grid import grid_shards
        from gpt2xl.shard_checkpoint import open_store, shard_identity

        identity = shard_identity(model=model, prompts=prompts, cfg=cfg, threads=torch.get_num_threads(),
                                  plan=loaded.model.kernel_plan())
        store, done, note = open_store(opts.run_dir, identity, shards=grid_shards(cfg, len(prompts)),
                                       resume=opts.resume)
        on_shard = store.save
        if note is not None:
            hooks.note(note)
    entry = grid_entry(loaded.model, prompts, cfg, progress=hooks.progress, featurizer=featurizer,
                       mauve_reference=reference, runner=None if pool is None else pool.shard_runner(prompts, cfg),
                       done=done, on_shard=on_shard)
    if cfg.preset is not None:
        from gpt2xl.holtzman import preset_entry

        entry["preset"] = preset_entry(model)
    return entry


def _reusable_perplexity(
    previous: dict[str, Any] | None, corpus: Corpus, split: EvalSplit, opts: RunOptions, block_size: int
) -> dict[str, Any] | None:
    """An earlier perplexity entry that this run would compute again: same dataset file, the
    same tokens scored, the same window and stride."""
    for entry in (previous or {}).get("perplexity") or []:
        if (entry["dataset"] == corpus.name and entry.get("dataset_sha256") == corpus.sha256
                and entry["split"] == _perplexity_split(split, opts.ppl_max_tokens)
                and entry["context_length"] == block_size and entry["stride"] == (opts.stride or block_size)):
            return entry
    return None


def _reusable_lambada(previous: dict[str, Any] | None, corpus: Corpus, opts: RunOptions) -> dict[str, Any] | None:
    from gpt2xl.data import lambada_examples

    entry = (previous or {}).get("lambada")
    if entry and entry.get("dataset_sha256") == corpus.sha256 and entry["note"] == _lambada_note(
            len(lambada_examples(corpus)), opts.lambada_max_examples):
        return entry
    return None


def _reusable_grid(previous: dict[str, Any] | None, doc: dict[str, Any], cfg: GridConfig) -> dict[str, Any] | None:
    grid = (previous or {}).get("grid")
    same_data = previous is not None and previous["dataset"].get("sha256") == doc["dataset"]["sha256"]
    if grid and same_data and grid["config"] == cfg.to_dict():
        return grid
    return None


def evaluate_run(opts: RunOptions, *, render: Renderer | None = None, hooks: Hooks | None = None) -> EvalOutcome:
    """``gpt2xl eval run`` (what ``nox -s eval`` runs): perplexity on each dataset, LAMBADA when
    asked, then the grid and the precision comparison of ``opts.dtypes``, with the run directory
    locked throughout. The finished parts are written (as a whole result set) before the grid
    starts, and again before the precision comparison, so a failure loses only the part it hit;
    with ``opts.keep_previous`` (``--resume``) every part of an earlier eval.json in the run
    directory that this run would compute again (same model, dataset file and settings) is
    reused, not recomputed."""
    hooks = hooks or Hooks()
    cfg = opts.grid
    with contextlib.ExitStack() as resources:
        run = _start(opts, resources, {
            "grid": cfg.to_dict(), "ppl_datasets": list(opts.ppl_datasets), "stride": opts.stride,
            "ppl_batch_size": opts.ppl_batch_size, "ppl_max_tokens": opts.ppl_max_tokens,
            "lambada_max_examples": opts.lambada_max_examples, "threads": opts.threads,
        })
        data, loaded, pool, doc, t0 = run.data, run.loaded, run.pool, run.doc, run.t0
        doc["datasets"] = {name: dataset_info(c, s) for name, (c, s) in data.corpora.items()}
        previous = data.previous
        if previous is not None and opts.run_dir is not None and opts.kept_parts(previous):
            check_same_model(previous["model"], spec=opts.model, dtype=opts.dtype, run_dir=opts.run_dir,
                             loaded=doc["model"])
        reused = _perplexity_and_lambada(doc, opts, loaded, data, hooks, pool=pool)
        grid = _reusable_grid(previous, doc, cfg)
        computed = len(reused) < len(opts.ppl_datasets) + (data.lambada is not None)
        if grid is None and computed and opts.run_dir is not None:
            # Saved before the grid starts: a failure in the grid loses only the grid, and --resume reuses these.
            write_eval_files({**doc, "reused": _reused(reused, previous)}, opts.run_dir, render=render)
        if grid is not None:
            reused.append("the grid")
        else:
            grid = _grid_entry(opts, loaded, data, hooks, model=doc["model"], pool=pool)
        doc["grid"] = grid
        doc["precision"] = _precision_entry(opts, loaded, data, doc, reused, render=render, hooks=hooks)
        doc["reused"] = _reused(reused, previous)
        doc["total_seconds"] = time.perf_counter() - t0
        if reused and opts.run_dir is not None:
            hooks.note(f"reused {', '.join(reused)} from the earlier {opts.run_dir / EVAL_JSON}")
        if hooks.on_grid is not None:
            hooks.on_grid(grid)
        if hooks.on_precision is not None and doc["precision"] is not None:
            hooks.on_precision(doc["precision"])
        files = write_eval_files(doc, opts.run_dir, render=render) if opts.run_dir is not None else []
        return EvalOutcome(doc=doc, files=files, seconds=doc["total_seconds"])


def _precision_entry(
    opts: RunOptions, loaded: LoadedModel, data: EvalData, doc: dict[str, Any], reused: list[str], *,
    render: Renderer | None, hooks: Hooks,
) -> dict[str, Any] | None:
    """The precision comparison of ``opts.dtypes`` (None for fp32 alone): reused from the earlier
    eval.json when it was computed with the same settings on the same data (``--resume``; added
    to ``reused``), else computed on the grid's prompts and seeds and the first tokens of the
    grid dataset's split, with the run's model for its own dtype. A grid computed by this run is
    saved (the whole result set) before the comparison starts."""
    from gpt2xl.precision import compare_precision
    from gpt2xl.weights import load_model

    config = opts.precision_config()
    if config is None:
        return None
    previous = (data.previous or {}).get("precision")
    same_data = data.previous is not None and data.previous["dataset"].get("sha256") == doc["dataset"]["sha256"]
    if previous and same_data and previous["config"] == config.to_dict():
        reused.append("the precision comparison")
        return previous
    if "the grid" not in reused and opts.run_dir is not None:
        write_eval_files({**doc, "reused": _reused(reused, data.previous)}, opts.run_dir, render=render)
    return compare_precision(
        config, models={opts.dtype: loaded.model},
        load=lambda name: load_model(opts.model, device=opts.device, dtype=name, seed=0).model,
        prompts=data.prompts or [], ppl_tokens=data.corpora[config.grid.dataset][1].token_ids,
        progress=hooks.progress,
    )


def _perplexity_and_lambada(
    doc: dict[str, Any], opts: RunOptions, loaded: LoadedModel, data: EvalData, hooks: Hooks, *,
    pool: WorkerPool | None = None,
) -> list[str]:
    """Fill ``doc``'s perplexity entries and LAMBADA (computed, or reused from ``data.previous``
    where it matches), handing each to its hook; returns what was reused. Perplexity windows are
    scored on ``pool`` (Ray workers) when given; LAMBADA runs here."""
    reused: list[str] = []
    for name in opts.ppl_datasets:
        corpus, split = data.corpora[name]
        entry = _reusable_perplexity(data.previous, corpus, split, opts, loaded.config.block_size)
        if entry is not None:
            reused.append(f"perplexity on {name}")
        else:
            entry = perplexity_entry(loaded.model, corpus, split, stride=opts.stride, batch_size=opts.ppl_batch_size,
                                     max_tokens=opts.ppl_max_tokens, progress=hooks.progress,
                                     scorer=None if pool is None else pool.score_spans)
        doc["perplexity"].append(entry)
        if hooks.on_perplexity is not None:
            hooks.on_perplexity(entry)
    if data.lambada is not None:
        doc["lambada"] = _reusable_lambada(data.previous, data.lambada, opts)
        if doc["lambada"] is not None:
            reused.append("LAMBADA")
        else:
            doc["lambada"] = lambada_entry(loaded.model, data.lambada, batch_size=opts.ppl_batch_size,
                                           max_examples=opts.lambada_max_examples, progress=hooks.progress)
        if hooks.on_lambada is not None:
            hooks.on_lambada(doc["lambada"])
    return reused


def _reused(parts: list[str], previous: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a resumed run took from the earlier eval.json, and that run's environment (its git
    sha may differ from this one's)."""
    if not parts or previous is None:
        return None
    return {"parts": parts, "environment": previous.get("environment")}


def rerender_run_dir(
    run_dir: Path, *, render: Renderer | None, check_other: Callable[[], None] | None = None
) -> list[Path]:
    """``gpt2xl eval report``: rebuild the result set of ``run_dir`` (CSV, plots, report.md and the
    manifest) from its eval.json, which stays as it is, holding the run directory's lock; this
    also repairs a set whose write was interrupted. eval.json is checked first, then
    ``check_other`` runs (e.g. to check bench.json), so a malformed file changes nothing.
    Returns the files of the set."""
    from gpt2xl.results import run_dir_lock

    if not (run_dir / EVAL_JSON).is_file():
        raise ResultError(f"{run_dir} holds no {EVAL_JSON}; run `gpt2xl eval run --run-dir {run_dir}` first.")
    with run_dir_lock(run_dir, name="RUN_DIR"):
        read_eval_doc(run_dir / EVAL_JSON)
        if check_other is not None:
            check_other()
        return write_eval_files(None, run_dir, render=render)
