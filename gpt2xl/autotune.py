"""Kernel choices measured on the machine that runs them.

For each projection shape and dtype the tuner times every candidate (storage layout x kernel,
see ``model.KERNELS``) on weights the size of the real ones, stacked past the last-level cache
as a decode step meets them, and keeps the fastest. One choice per (CPU model and flags, torch
version, threads, dtype, native kernel build) is cached in the user cache directory
(``gpt2xl.cache``), so a host that changes between sessions, or a user's new machine, gets its
own measurement rather than one made elsewhere.

Modes (``--autotune``): ``off`` runs PyTorch's own kernels on ``nn.Linear`` storage, no timing;
``cached`` (default) reuses a cached choice and measures only what is missing; ``fresh``
measures everything again and replaces the cache entry.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, TypeVar, get_args

import torch

from gpt2xl import kernels
from gpt2xl.cache import cache_dir
from gpt2xl.config import GPTConfig
from gpt2xl.devices import cpu_flags, cpu_name, dtype_name
from gpt2xl.errors import ConfigError
from gpt2xl.model import (
    PROJECTION_KINDS,
    Kernel,
    KernelPlan,
    ProjectionPlan,
    StorageLayout,
    plain_plan,
    run_kernel,
)
from gpt2xl.results import write_text_atomic

Mode = Literal["off", "cached", "fresh"]
MODES: tuple[Mode, ...] = ("off", "cached", "fresh")
TUNER_VERSION = 2  # bump when candidates or the timing method change: old cache entries are ignored
TUNE_BYTES = 256 << 20  # weights timed per candidate pass, where the model has that many
MAX_INNER = 64  # passes repeated inside one timing for small models (a pass of a few us is noise)
PREFILL_ROWS = 16  # the prefill a choice is timed at (the bench's prompt length)
PREFILL_WEIGHT = 32  # one prefill per this many decode steps when a layout trades one for the other
REPEATS = 5
LAYOUTS: tuple[StorageLayout, ...] = get_args(StorageLayout)
KERNEL_NAMES: tuple[Kernel, ...] = get_args(Kernel)

_Name = TypeVar("_Name", bound=str)


def _member(value: object, allowed: tuple[_Name, ...]) -> _Name:
    """``value`` as the member of ``allowed`` it equals; ValueError when it is none of them."""
    for option in allowed:
        if option == value:
            return option
    raise ValueError(f"expected one of {', '.join(allowed)}, got {value!r}")


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _rates(value: object) -> dict[str, float]:
    """A cache entry's ``{"layout/kernel": GB/s}`` as bytes per second."""
    if not isinstance(value, dict):
        raise TypeError(f"expected an object of rates, got {value!r}")
    return {str(k): _number(v) * 1e9 for k, v in value.items()}


@dataclass(frozen=True, kw_only=True)
class Choice:
    """The measured choice for one projection kind: candidates' GB/s and the winner."""

    kind: str
    shape: tuple[int, int]  # (out, in)
    plan: ProjectionPlan
    decode_bytes_per_s: dict[str, float]  # "layout/kernel" -> weight bytes streamed per second
    prefill_bytes_per_s: dict[str, float]
    measure_s: float = 0.0  # what timing the candidates cost when this choice was measured

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.kind,
            "shape": list(self.shape),
            "layout": self.plan.layout,
            "decode": self.plan.decode,
            "prefill": self.plan.prefill,
            "candidates": {k: round(v / 1e9, 2) for k, v in self.decode_bytes_per_s.items()},
            "prefill_candidates": {k: round(v / 1e9, 2) for k, v in self.prefill_bytes_per_s.items()},
            "measure_s": round(self.measure_s, 3),
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Choice:
        """The inverse of :meth:`to_dict`: KeyError, TypeError or ValueError for any other shape."""
        shape = d["shape"]
        if not (isinstance(shape, list) and len(shape) == 2 and all(type(n) is int for n in shape)):
            raise TypeError(f"shape must be [out, in], got {shape!r}")
        return cls(
            kind=str(d["name"]),
            shape=(shape[0], shape[1]),
            plan=ProjectionPlan(
                layout=_member(d["layout"], LAYOUTS),
                decode=_member(d["decode"], KERNEL_NAMES),
                prefill=_member(d["prefill"], KERNEL_NAMES),
            ),
            decode_bytes_per_s=_rates(d["candidates"]),
            prefill_bytes_per_s=_rates(d["prefill_candidates"]),
            measure_s=_number(d.get("measure_s", 0.0)),
        )


@dataclass(frozen=True, kw_only=True)
class TuneReport:
    """What the tuner decided and what it cost: recorded in every result that used the model."""

    mode: Mode
    plan: KernelPlan
    choices: tuple[Choice, ...] = ()
    cache_hit: bool = False
    tuning_s: float = 0.0
    key: dict[str, object] = field(default_factory=dict)
    native: str = ""  # the native kernels' instruction set, or why they are unavailable

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"Unknown autotune mode {self.mode!r}; choose one of: {', '.join(MODES)}.")
        if not (math.isfinite(self.tuning_s) and self.tuning_s >= 0):
            raise ValueError(f"tuning_s must be finite and >= 0, got {self.tuning_s!r}")

    def to_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "cache_hit": self.cache_hit,
            "tuning_s": round(self.tuning_s, 3),  # this load's cost: a cache lookup on a hit
            "measure_s": round(sum(c.measure_s for c in self.choices), 3),  # what measuring cost, once
            "key": self.key,
            "native": self.native,
            "choices": [c.to_dict() for c in self.choices],
        }


def check_mode(mode: str) -> Mode:
    for known in MODES:
        if known == mode:
            return known
    raise ConfigError(f"Unknown autotune mode {mode!r}; choose one of: {', '.join(MODES)}.")


def shapes(config: GPTConfig) -> dict[str, tuple[int, int]]:
    """(out, in) of every projection kind of ``config``."""
    C = config.n_embd
    return {
        "attn.c_attn": (3 * C, C),
        "attn.c_proj": (C, C),
        "mlp.c_fc": (config.mlp_width, C),
        "mlp.c_proj": (C, config.mlp_width),
        "lm_head": (config.vocab_size, C),
    }


def copies_in_model(config: GPTConfig, kind: str) -> int:
    """How many matrices of ``kind`` one forward pass streams (one per block; one lm_head)."""
    return 1 if kind == "lm_head" else config.n_layer


def _matrix_bytes(shape: tuple[int, int], dtype: torch.dtype) -> int:
    return shape[0] * shape[1] * torch.tensor([], dtype=dtype).element_size()


def timed_copies(shape: tuple[int, int], dtype: torch.dtype, model_copies: int) -> int:
    """How many distinct matrices a measurement streams: the model's count, up to ``TUNE_BYTES``."""
    return max(1, min(model_copies, -(-TUNE_BYTES // _matrix_bytes(shape, dtype))))


def entry_name(kind: str, shape: tuple[int, int], dtype: torch.dtype, model_copies: int) -> str:
    """A cache entry: the shape AND how many such matrices were timed, since a 2-layer model with
    gpt2-xl's widths keeps its weights in cache where gpt2-xl streams them from memory."""
    return f"{kind}:{shape[0]}x{shape[1]}:{timed_copies(shape, dtype, model_copies)}"


def tune_key(device: torch.device, dtype: torch.dtype) -> dict[str, object]:
    """What a cached choice is valid for."""
    flags = " ".join(sorted(cpu_flags()))
    return {
        "cpu": cpu_name(),
        "cpu_flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "dtype": dtype_name(dtype),
        "device": device.type,
        "native": kernels.build_key() if kernels.native() is not None else None,
        "tuner": TUNER_VERSION,
    }


def candidates(kind: str, dtype: torch.dtype) -> dict[StorageLayout, tuple[list[Kernel], list[Kernel]]]:
    """layout -> (decode kernels, prefill kernels) worth timing for ``kind`` here."""
    native_ok = kernels.native() is not None and dtype in (torch.float32, torch.bfloat16)
    split_ok = torch.get_num_threads() > 1
    native: list[Kernel] = ["native"] if native_ok else []
    decode: list[Kernel] = ["linear", "split"] if split_ok else ["linear"]
    out_in: tuple[list[Kernel], list[Kernel]] = ([*decode, *native], ["linear", *native])
    if kind == "lm_head":  # tied to the embedding's [vocab, C] storage
        return {"out_in": out_in}
    return {"out_in": out_in, "in_out": (decode, ["linear"])}


def choose(
    kind: str,
    shape: tuple[int, int],
    decode_s: dict[str, float],
    prefill_s: dict[str, float],
    nbytes: int,
) -> Choice:
    """The fastest candidate from measured seconds per pass over ``nbytes`` of weights, keyed
    "layout/kernel". The layout minimises its best decode time plus its best prefill time over
    ``PREFILL_WEIGHT`` (one prefill per that many decode steps); each kernel is then the
    fastest within that layout."""
    layouts = sorted({k.split("/")[0] for k in decode_s})

    def best(times: dict[str, float], layout: str) -> tuple[str, float]:
        name = min((k for k in times if k.startswith(f"{layout}/")), key=times.__getitem__)
        return name.split("/")[1], times[name]

    def cost(layout: str) -> float:
        prefill = best(prefill_s, layout)[1] if any(k.startswith(f"{layout}/") for k in prefill_s) else 0.0
        return best(decode_s, layout)[1] + prefill / PREFILL_WEIGHT

    layout = min(layouts, key=cost)
    decode = best(decode_s, layout)[0]
    prefill = best(prefill_s, layout)[0] if prefill_s else "linear"
    return Choice(
        kind=kind,
        shape=shape,
        plan=ProjectionPlan(
            layout=_member(layout, LAYOUTS),
            decode=_member(decode, KERNEL_NAMES),
            prefill=_member(prefill, KERNEL_NAMES),
        ),
        decode_bytes_per_s={k: nbytes / v for k, v in decode_s.items()},
        prefill_bytes_per_s={k: nbytes / v for k, v in prefill_s.items()},
    )


def _stack(shape: tuple[int, int], layout: StorageLayout, dtype: torch.dtype, copies: int) -> list[torch.Tensor]:
    out, inp = shape
    ws = []
    for _ in range(copies):
        w = torch.empty((out, inp) if layout == "out_in" else (inp, out), dtype=dtype).fill_(0.01)
        ws.append(w if layout == "out_in" else w.t())  # logical [out, in] either way
    return ws


def _sweep(kernel: Kernel, x: torch.Tensor, weights: list[torch.Tensor], inner: int) -> Callable[[], object]:
    """One timed call: ``inner`` passes of ``kernel`` over every matrix of ``weights``."""
    return lambda: [run_kernel(kernel, x, w, None) for _ in range(inner) for w in weights]


def _time_round_robin(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call, candidates taking turns so that drift hits them alike."""
    for call in calls.values():
        call()  # warm-up: page faults, kernel selection
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(s) for name, s in samples.items()}


def measure(
    kind: str, shape: tuple[int, int], dtype: torch.dtype, *, model_copies: int, repeats: int = REPEATS
) -> Choice:
    """Time every candidate for one projection shape on CPU and return the choice.

    The weights timed are as many distinct matrices as the model holds (``model_copies``), up to
    ``TUNE_BYTES``: a large model's weights stream from memory, a small one's sit in cache, and
    each candidate is measured in the regime the model will meet. Small sets are swept up to
    ``MAX_INNER`` times per timing so that one timing lasts long enough to mean something.
    """
    inp = shape[1]
    per_copy = _matrix_bytes(shape, dtype)
    copies = timed_copies(shape, dtype, model_copies)
    inner = max(1, min(MAX_INNER, TUNE_BYTES // (per_copy * copies * 16)))
    nbytes = per_copy * copies * inner
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    x_decode = torch.randn(1, inp, generator=g).to(dtype)
    x_prefill = torch.randn(PREFILL_ROWS, inp, generator=g).to(dtype)
    decode_s: dict[str, float] = {}
    prefill_s: dict[str, float] = {}
    with torch.inference_mode():
        for layout, (decode_kernels, prefill_kernels) in candidates(kind, dtype).items():
            ws = _stack(shape, layout, dtype, copies)
            decode = _time_round_robin({k: _sweep(k, x_decode, ws, inner) for k in decode_kernels}, repeats)
            prefill = _time_round_robin({k: _sweep(k, x_prefill, ws, inner) for k in prefill_kernels}, repeats)
            del ws  # this layout's weights go before the next layout's are stacked
            decode_s.update({f"{layout}/{k}": v for k, v in decode.items()})
            prefill_s.update({f"{layout}/{k}": v for k, v in prefill.items()})
    return replace(choose(kind, shape, decode_s, prefill_s, nbytes), measure_s=time.perf_counter() - t0)


def _cache_file(key: dict[str, object]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir("autotune") / f"{digest}.json"


def _read_cache(key: dict[str, object]) -> dict[str, Choice]:
    path = _cache_file(key)
    # A missing or damaged cache entry is measured again and overwritten, never trusted.
    try:
        doc = json.loads(path.read_text())
        choices = doc.get("choices") if isinstance(doc, dict) else None
        if not isinstance(choices, dict) or doc.get("key") != key:
            return {}
        return {str(name): Choice.from_dict(c) for name, c in choices.items()}  # TypeError if c is no object
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _write_cache(key: dict[str, object], choices: Iterable[tuple[str, Choice]]) -> None:
    doc = {"key": key, "choices": {name: c.to_dict() for name, c in choices}}
    write_text_atomic(_cache_file(key), json.dumps(doc, indent=1, sort_keys=True) + "\n")


def tune(
    config: GPTConfig,
    *,
    device: torch.device,
    dtype: torch.dtype,
    mode: str = "cached",
) -> TuneReport:
    """The kernel plan for ``config``'s projections on ``device`` in ``dtype`` (see module doc).

    Off the CPU (CUDA: cuBLAS runs every shape) and with ``mode="off"``, the plan is PyTorch's
    own kernels on ``nn.Linear`` storage and nothing is timed.
    """
    mode = check_mode(mode)
    if mode == "off" or device.type != "cpu":  # nothing to build or time
        return TuneReport(mode=mode, plan=plain_plan())
    native_note = kernels.native_isa() or f"unavailable: {kernels.unavailable_reason()}"
    t0 = time.perf_counter()
    key = tune_key(device, dtype)
    cached = _read_cache(key) if mode == "cached" else {}
    wanted = shapes(config)
    entries: dict[str, Choice] = {}
    hit = True
    for kind in PROJECTION_KINDS:
        name = entry_name(kind, wanted[kind], dtype, copies_in_model(config, kind))
        if name in cached:
            entries[name] = cached[name]
            continue
        hit = False
        entries[name] = measure(kind, wanted[kind], dtype, model_copies=copies_in_model(config, kind))
    if not hit:
        _write_cache(key, sorted({**cached, **entries}.items()))
    choices = tuple(entries[entry_name(k, wanted[k], dtype, copies_in_model(config, k))] for k in PROJECTION_KINDS)
    return TuneReport(
        mode=mode,
        plan={c.kind: c.plan for c in choices},
        choices=choices,
        cache_hit=hit,
        tuning_s=time.perf_counter() - t0,
        key=key,
        native=native_note,
    )

