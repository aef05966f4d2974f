"""Finished grid shards, saved in the run directory as each completes, for a resumed run to skip.

``RUN_DIR/shards/<shard key>.json`` holds one :class:`gpt2xl.grid.ShardResult` (its scored
samples), written atomically (:func:`gpt2xl.results.write_text_atomic`: a kill leaves the whole
file or none, at worst a hidden ``.*.tmp`` beside it); ``RUN_DIR/shards/manifest.json`` says what
produced them (:func:`shard_identity`: the model's weights, device and dtype, the prompts, the
sampling settings, torch, the thread count and kernel plan, the hardware). A run with ``--resume``
whose identity equals the manifest's passes the finished shards of its grid back to
:func:`gpt2xl.grid.run_grid` (``done``), so only the rest run; any other run starts the directory
afresh, so shards of another model or grid are never mixed in. A single-process run and a Ray run
(:mod:`gpt2xl.distributed`) compute the same shards and share one identity, so either resumes the other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2xl.errors import ResultError
from gpt2xl.grid import GridConfig, Prompt, Shard, ShardResult
from gpt2xl.model import KernelPlan
from gpt2xl.results import write_text_atomic
from gpt2xl.validation import output_error

SHARDS_DIR = "shards"
MANIFEST = "manifest.json"
FORMAT = 1
# What of a model's provenance decides its shards: the weights (or a random model's seed and
# shape), the device and the dtype (gpt2xl.evaluation compares the same fields across eval.json files).
_MODEL_KEYS = ("kind", "sha256", "seed", "config", "device", "dtype")


def shard_identity(
    *, model: dict[str, Any], prompts: Sequence[Prompt], cfg: GridConfig, threads: int, plan: KernelPlan,
) -> dict[str, Any]:
    """Everything a shard's samples depend on besides the shard itself (settings, seed, prompt
    range): see the module docstring. The axes and seeds are not in it: a grid that adds a
    setting still reuses the shards of the ones it shares."""
    import torch

    from gpt2xl.devices import device_name

    tokens = json.dumps([list(p.tokens) for p in prompts]).encode()
    return {
        "format": FORMAT,
        "model": {k: model.get(k) for k in _MODEL_KEYS},
        "hardware": device_name(torch.device(str(model["device"]))),
        "torch": torch.__version__,
        "threads": threads,
        "kernel_plan": {kind: [p.layout, p.decode, p.prefill] for kind, p in sorted(plan.items())},
        "dataset": cfg.dataset,
        "prompts_sha256": hashlib.sha256(tokens).hexdigest(),
        "sampling": {"num_prompts": len(prompts), "prompt_tokens": cfg.prompt_tokens,
                     "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size,
                     "stop_at_eot": cfg.stop_at_eot},
    }


@dataclass(frozen=True)
class ShardStore:
    """Where a run saves its finished shards (:meth:`save`, the grid's ``on_shard``)."""

    directory: Path

    def save(self, result: ShardResult) -> None:
        write_text_atomic(self.directory / f"{result.shard.key}.json",
                          json.dumps(result.to_dict(), allow_nan=False) + "\n")


def open_store(
    run_dir: Path, identity: dict[str, Any], *, shards: Sequence[Shard], resume: bool
) -> tuple[ShardStore, list[ShardResult], str | None]:
    """The shard store of ``run_dir`` for a grid of ``shards``, the finished ones among them (only
    with ``resume`` and the same ``identity``), and a note for the user (what was resumed, or why
    nothing was). Call it holding the run directory's lock. ResultError for a saved shard that
    cannot be read (a hand edit: atomic writes leave no half-written one)."""
    directory = run_dir / SHARDS_DIR
    store = ShardStore(directory)
    manifest = directory / MANIFEST
    saved = _read_manifest(manifest) if resume and manifest.is_file() else None
    if saved == identity:
        _remove(directory.glob(".*.tmp"))  # leftovers of a write a kill interrupted
        done = _finished(directory, shards)
        return store, done, f"resumed {len(done)} of {len(shards)} grid shards from {directory}"
    note = None
    if saved is not None:
        differs = next((k for k in sorted(set(saved) | set(identity)) if saved.get(k) != identity.get(k)), "format")
        note = f"the shards in {directory} are of another run ({differs} differs); running every shard afresh"
    elif resume and directory.is_dir():
        note = f"{directory} holds no usable {MANIFEST}; running every shard afresh"
    if directory.is_dir():
        _remove(p for p in directory.iterdir() if p.is_file())
    write_text_atomic(manifest, json.dumps(identity, indent=1) + "\n")
    return store, [], note


def _read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest's identity; None for one that cannot be read (the shards then start afresh)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _finished(directory: Path, shards: Sequence[Shard]) -> list[ShardResult]:
    wanted = {s.key: s for s in shards}
    done = []
    for path in sorted(directory.glob("*.json")):
        if path.name == MANIFEST or path.stem not in wanted:
            continue  # a shard of a setting this grid does not have: kept, unused
        try:
            result = ShardResult.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ResultError(
                f"{path} is not a readable shard result ({type(exc).__name__}: {exc}); delete it (that shard is run "
                "again) or rerun without --resume."
            ) from exc
        if result.shard != wanted[path.stem]:
            raise ResultError(
                f"{path} holds shard {result.shard.key}, not the one its name says; delete it (that shard is run "
                "again) or rerun without --resume."
            )
        done.append(result)
    return done


def _remove(paths: Any) -> None:
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise output_error(path, exc) from exc
