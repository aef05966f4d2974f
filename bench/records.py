"""The vocabulary of a ``bench.json`` record, shared by the harness that writes it and the report
and gate (``gpt2xl_app``) that read it: what counts as a rate, median and spread over rounds, the
ratio table, and the roofline basis. Pure functions on plain numbers and dicts; no torch, no pytest.

A *record* is a case's ``extra_info`` (or one sampler's entry in an interleaved case's
``samplers``): ``decode_tokens_per_s``, ``prefill_s``, ``tokens_per_s``, ``achieved_bytes_per_s``,
``valid`` and ``invalid_reason`` among others (see ``bench.harness.sampler_record``).
:func:`document_problem` is the shape a reader relies on, checked once when a file is read.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

NOISY_SPREAD = 0.15  # probes whose max/min - 1 exceeds this: the report calls the machine noisy
# Speeds and times that must be > 0 and finite when present: a record holding one that is zero,
# negative or not finite holds no valid measurement (:func:`invalid_reason`, the one rule).
RATE_FIELDS = ("prefill_s", "decode_tokens_per_s", "tokens_per_s", "decode_s", "decode_s_per_token")
MEASURED_KINDS = ("throughput", "scaling", "ratios")  # extra_info["kind"] of the cases the suite writes


def is_rate(value: object) -> TypeGuard[float]:
    """A usable measurement: a real number, finite and > 0 (not a bool, not None)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


# --- median and spread over rounds -------------------------------------------------------------

SpreadKind = Literal["iqr", "min-max", "none"]


@dataclass(frozen=True, kw_only=True)
class Summary:
    """Median of a case's rounds and their spread, as llama-bench's ``±`` column.

    ``kind`` says what ``spread`` is: ``iqr`` (q3 − q1, ``statistics.quantiles(method="inclusive")``)
    from 4 rounds on, ``min-max`` (max − min) for 2–3 rounds, ``none`` (0) for one round.
    ``low``/``high`` are q1/q3 or min/max."""

    median: float
    spread: float
    kind: SpreadKind
    low: float
    high: float


def summarize(values: Sequence[float]) -> Summary | None:
    """:class:`Summary` of ``values`` (None when empty)."""
    values = sorted(values)
    if not values:
        return None
    median = statistics.median(values)
    if len(values) >= 4:
        q1, _q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return Summary(median=median, spread=q3 - q1, kind="iqr", low=q1, high=q3)
    if len(values) >= 2:
        return Summary(median=median, spread=values[-1] - values[0], kind="min-max", low=values[0], high=values[-1])
    return Summary(median=median, spread=0.0, kind="none", low=median, high=median)


# --- ratios --------------------------------------------------------------------------------------

RatioMetric = Literal["decode", "prefill", "e2e"]


@dataclass(frozen=True, kw_only=True)
class RatioDef:
    """``numerator`` sampler's speed over ``denominator``'s; > 1 means the numerator is faster.
    ``decode``: decode tok/s ratio; ``prefill``: denominator's prefill_s / numerator's;
    ``e2e``: end-to-end tok/s ratio."""

    label: str
    description: str
    numerator: str
    denominator: str
    metric: RatioMetric


# The one table of ratio names: what ratio_metrics computes, what --floor accepts, what the report
# and the CLI help list. Order = the report's column order.
RATIOS: dict[str, RatioDef] = {
    "ours_vs_llamacpp_decode": RatioDef(
        label="ours / llama.cpp decode", numerator="cached", denominator="llamacpp", metric="decode",
        description="our cached sampler's decode tok/s over llama.cpp's on the same weights and type"),
    "ours_vs_llamacpp_prefill": RatioDef(
        label="ours / llama.cpp prefill", numerator="cached", denominator="llamacpp", metric="prefill",
        description="llama.cpp's prefill (time to first token) over ours: > 1 means our prefill is faster"),
    "ours_vs_hf_decode": RatioDef(
        label="ours / HF decode", numerator="cached", denominator="hf", metric="decode",
        description="our cached sampler's decode tok/s over HF generate's on the same weights"),
    "ours_vs_hf_prefill": RatioDef(
        label="ours / HF prefill", numerator="cached", denominator="hf", metric="prefill",
        description="HF generate's prefill (time to first token) over ours: > 1 means ours is faster"),
    "ours_vs_hf_tokens_per_s": RatioDef(
        label="ours / HF e2e", numerator="cached", denominator="hf", metric="e2e",
        description="end-to-end tok/s (prefill included), ours over HF generate"),
    "ours_vs_llamacpp_q8_0_decode": RatioDef(
        label="ours / llama.cpp q8_0 decode", numerator="cached", denominator="llamacpp-q8_0", metric="decode",
        description="our decode tok/s over llama.cpp's on the same weights quantized to q8_0 (an extra row)"),
    "tuned_vs_plain_decode": RatioDef(
        label="tuned / plain kernels decode", numerator="cached", denominator="cached-plain", metric="decode",
        description="our decode with the autotuned kernels over the same with plain F.linear (what tuning adds)"),
    "cached_vs_reference_decode": RatioDef(
        label="cached / reference decode", numerator="cached", denominator="reference", metric="decode",
        description="our KV-cached decode tok/s over the textbook no-cache loop's"),
    "compiled_vs_hf_decode": RatioDef(
        label="compiled / HF decode", numerator="compiled", denominator="hf", metric="decode",
        description="static cache + compiled step (CUDA graphs) decode tok/s over HF generate's"),
    "compiled_vs_hf_compiled_decode": RatioDef(
        label="compiled / HF static+compile decode", numerator="compiled", denominator="hf-compiled", metric="decode",
        description=("our static cache + compiled step decode tok/s over HF generate's with a static cache and "
                     "its own torch.compile (CUDA graphs): the fair GPU peer")),
}


def ratio_names_text() -> str:
    """``name (description); …`` for help texts and error messages."""
    return "; ".join(f"{name}: {d.description}" for name, d in RATIOS.items())


def invalid_reason(record: Mapping[str, Any]) -> str | None:
    """Why ``record`` holds no usable measurement, or None: recorded as invalid, a rate that is
    zero, negative or not finite (a hand-made or older file), or no decode rate at all."""
    if record.get("valid") is False:
        return str(record.get("invalid_reason") or "recorded as invalid")
    for name in RATE_FIELDS:
        value = record.get(name)
        if value is not None and not is_rate(value):
            return f"{name} = {value!r} is not positive and finite"
    if record.get("decode_tokens_per_s") is None:
        return "no decode rate recorded"
    return None


def ratio_of(name: str, numerator: Mapping[str, Any], denominator: Mapping[str, Any]) -> float | None:
    """The ratio ``name`` of two records (cases, per-sampler entries or rounds); None when either
    record is invalid (:func:`invalid_reason`) or a rate it needs is missing. KeyError for an
    unknown name."""
    d = RATIOS[name]
    if invalid_reason(numerator) is not None or invalid_reason(denominator) is not None:
        return None
    if d.metric == "prefill":
        num, den = denominator.get("prefill_s"), numerator.get("prefill_s")
    else:
        field = "decode_tokens_per_s" if d.metric == "decode" else "tokens_per_s"
        num, den = numerator.get(field), denominator.get(field)
    if is_rate(num) and is_rate(den):
        value = num / den
        return value if is_rate(value) else None
    return None


# --- bandwidth probes and the roofline basis ------------------------------------------------------

def probe_summary(probes: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{device: {method: {n, median, min, max, spread}}}`` over probe dicts
    (``BandwidthProbe.to_dict()``); ``spread`` = max / min − 1. Unusable rates are left out."""
    by: dict[str, dict[str, list[float]]] = {}
    for probe in probes:
        for method, value in (probe.get("rates") or {}).items():
            if is_rate(value):
                device = str(probe.get("device", "?")).split(":")[0]
                by.setdefault(device, {}).setdefault(method, []).append(float(value))
    return {
        device: {
            method: {"n": len(v), "median": statistics.median(v), "min": min(v), "max": max(v),
                     "spread": max(v) / min(v) - 1}
            for method, v in methods.items()
        }
        for device, methods in by.items()
    }


def probe_candidates(probes: Iterable[Mapping[str, Any]]) -> Iterator[tuple[str, str, float]]:
    """``(device, source, bytes/s)`` for every method of every probe."""
    for probe in probes:
        device = str(probe.get("device", "?")).split(":")[0]
        for method, value in (probe.get("rates") or {}).items():
            if is_rate(value):
                where = f"{probe.get('label', 'probe')}, {probe.get('measured_at', '?')}"
                yield device, f"probe {method} ({where})", float(value)


def engine_candidates(infos: Iterable[Mapping[str, Any]]) -> Iterator[tuple[str, str, float]]:
    """``(device, source, bytes/s)``: the weight-read rate every engine achieved in every case,
    the samplers of interleaved cases included."""
    for info in infos:
        device = str(info.get("device", "?"))
        where = (f"{info.get('model')} {device} {info.get('dtype')} b{info.get('batch_size')} "
                 f"p{info.get('prompt_len')} n{info.get('new_tokens')}")
        per = info.get("samplers") or {info.get("sampler"): info}
        for sampler, record in per.items():
            value = record.get("achieved_bytes_per_s")
            if invalid_reason(record) is None and is_rate(value):
                yield device, f"engine {sampler} ({where})", float(value)


def roofline_basis(candidates: Iterable[tuple[str, str, float]]) -> dict[str, dict[str, Any]]:
    """``{device: {"bytes_per_s", "source"}}``: the largest candidate per device, so that no
    case's achieved rate can exceed its device's basis."""
    best: dict[str, dict[str, Any]] = {}
    for device, source, value in candidates:
        if is_rate(value) and value > best.get(device, {}).get("bytes_per_s", 0.0):
            best[device] = {"bytes_per_s": float(value), "source": source}
    return best


def roofline_fraction(achieved: object, basis: object) -> float | None:
    """``achieved / basis`` when both are usable rates, else None."""
    return achieved / basis if is_rate(achieved) and is_rate(basis) else None


# --- the shape of a bench.json --------------------------------------------------------------------

_TYPES: dict[str, tuple[Callable[[object], bool], str]] = {
    "number": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "text": (lambda v: isinstance(v, str), "a string"),
    "count": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
    "whole": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    "flag": (lambda v: isinstance(v, bool), "true or false"),
    "object": (lambda v: isinstance(v, dict), "an object"),
    "list": (lambda v: isinstance(v, list), "a list"),
}
# The fields of a record that readers use, and their JSON type; null stands for "not recorded".
RECORD_FIELDS: dict[str, str] = {
    **dict.fromkeys((*RATE_FIELDS, "achieved_bytes_per_s", "peak_memory_bytes", "weight_bytes", "roofline_fraction",
                     "tuning_s", "prefill_s_spread", "decode_tokens_per_s_spread", "tokens_per_s_spread",
                     "compile_s_estimate", "decode_step_s_median", "decode_step_s_max"), "number"),
    **dict.fromkeys(("kind", "sampler", "model", "device", "device_name", "dtype", "invalid_reason", "weights_label",
                     "weight_layout", "hf_weight_layout", "gguf_type", "spread_kind"), "text"),
    **dict.fromkeys(("batch_size", "prompt_len", "new_tokens"), "count"),
    **dict.fromkeys(("valid", "weights_random", "kernels_used", "logits_finite", "sampled_logits_finite"), "flag"),
    **dict.fromkeys(("samplers", "samplers_skipped", "ratios", "ratios_missing", "kernels", "compile", "hf_generate"),
                    "object"),
    "warmup_rounds": "whole",
}
# What identifies a measured case: every one must carry these, and no two may share them.
CASE_IDENTITY = ("kind", "model", "device", "dtype", "sampler", "batch_size", "prompt_len", "new_tokens")
# machine_info["gpt2xl"]: field -> (its type, the type of each of its items or None).
MACHINE_FIELDS: dict[str, tuple[str, str | None]] = {
    "environment": ("object", None), "cpu_flags": ("list", "text"), "cpu_native": ("object", None),
    "bandwidth_probes": ("list", "object"), "peers": ("object", "object"), "roofline_basis": ("object", "object"),
    "bandwidth": ("object", "object"), "peak_memory_method": ("object", None),
}


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _mistyped(value: object, kind: str, where: str, *, nullable: bool = True) -> Iterator[str]:
    """What is wrong with ``value`` (at ``where``) if it is not of ``kind`` (or null, when allowed)."""
    ok, what = _TYPES[kind]
    if (value is not None or not nullable) and not ok(value):
        yield f"{where} is {_show(value)}, expected {what}"


def _mistyped_items(container: list[Any] | dict[str, Any] | None, kind: str, where: str) -> Iterator[str]:
    """The items of a list or object (already checked to be one), none of which may be null."""
    items = container.items() if isinstance(container, dict) else enumerate(container or ())
    for key, value in items:
        yield from _mistyped(value, kind, f"{where}[{key!r}]", nullable=False)


def _mistyped_fields(record: Mapping[str, Any], fields: Mapping[str, str], where: str) -> Iterator[str]:
    for name, kind in fields.items():
        yield from _mistyped(record.get(name), kind, f"{where}.{name}")


# Each generator below yields the problems of its part in order; the caller takes the first, so a
# check runs only after the checks it relies on (a list is a list before its items are read).

def _benchmark_problems(bench: object, where: str) -> Iterator[str]:
    if not isinstance(bench, dict):
        yield f"{where} is {_show(bench)}, expected an object"
        return
    name, info = bench.get("name"), bench.get("extra_info")
    if name is None or info is None:
        yield f"{where} has no {'name' if name is None else 'extra_info'} (a case written by python -m bench has both)"
    if not isinstance(name, str) or not name:
        yield f"{where}.name is {_show(name)}, expected the case's name"
    where = f"{where}.extra_info"
    if not isinstance(info, dict):
        yield f"{where} is {_show(info)}, expected an object holding the case's metrics"
        return
    yield from _mistyped_fields(info, RECORD_FIELDS, where)
    if info.get("kind") not in MEASURED_KINDS:
        yield f"{where}.kind is {_show(info.get('kind'))}, expected one of {', '.join(MEASURED_KINDS)}"
    missing = [name for name in CASE_IDENTITY if info.get(name) is None]
    if missing:
        yield f"{where} has no {', '.join(missing)}"
    yield from _mistyped_items(info.get("ratios"), "number", f"{where}.ratios")
    yield from _mistyped_items(info.get("samplers"), "object", f"{where}.samplers")
    for sampler, record in (info.get("samplers") or {}).items():
        yield from _mistyped_fields(record, RECORD_FIELDS, f"{where}.samplers[{sampler!r}]")
    kernels = info.get("kernels") or {}
    choices = kernels.get("choices")
    yield from _mistyped(choices, "list", f"{where}.kernels.choices")
    yield from _mistyped_items(choices, "object", f"{where}.kernels.choices")
    for i, choice in enumerate(choices or ()):
        yield from _mistyped_fields(choice, {"candidates": "object", "shape": "list"}, f"{where}.kernels.choices[{i}]")


def _machine_problems(machine: object) -> Iterator[str]:
    if machine is None:
        return
    if not isinstance(machine, dict):
        yield f"machine_info is {_show(machine)}, expected an object"
        return
    yield from _mistyped(machine.get("cpu"), "object", "machine_info.cpu")
    g = machine.get("gpt2xl")
    if g is None:
        return
    if not isinstance(g, dict):
        yield f"machine_info.gpt2xl is {_show(g)}, expected an object"
        return
    for name, (kind, item) in MACHINE_FIELDS.items():
        yield from _mistyped(g.get(name), kind, f"machine_info.gpt2xl.{name}")
        if item is not None:
            yield from _mistyped_items(g.get(name), item, f"machine_info.gpt2xl.{name}")
    gpus = (g.get("environment") or {}).get("gpus")
    yield from _mistyped(gpus, "list", "machine_info.gpt2xl.environment.gpus")
    yield from _mistyped_items(gpus, "object", "machine_info.gpt2xl.environment.gpus")
    for i, probe in enumerate(g.get("bandwidth_probes") or ()):
        yield from _mistyped(probe.get("rates"), "object", f"machine_info.gpt2xl.bandwidth_probes[{i}].rates")


def _document_problems(doc: object) -> Iterator[str]:
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
        yield "it holds no 'benchmarks' list"
        return
    yield from _machine_problems(doc.get("machine_info"))
    names: dict[str, int] = {}
    cases: dict[tuple[Any, ...], int] = {}
    for i, bench in enumerate(doc["benchmarks"]):
        yield from _benchmark_problems(bench, f"benchmarks[{i}]")
        name, info = bench["name"], bench["extra_info"]
        if name in names:
            yield (f"benchmarks[{names[name]}] and benchmarks[{i}] have the same name {name!r} "
                   "(each case must appear once)")
        identity = tuple(info[k] for k in CASE_IDENTITY)
        if identity in cases:
            what = ", ".join(f"{k} {v}" for k, v in zip(CASE_IDENTITY, identity, strict=True))
            yield (f"benchmarks[{cases[identity]}] and benchmarks[{i}] measure the same case ({what}: each case "
                   "must appear once)")
        names[name] = cases[identity] = i


def document_problem(doc: object) -> str | None:
    """Why ``doc`` (a parsed ``bench.json``) is not a benchmark run the readers can use, or None:
    the first field of the wrong JSON type, named by its path (``benchmarks[3].extra_info.prefill_s
    is 'fast', expected a number``), a case without its identity, or two benchmarks with one name
    or one identity (the second would shadow the first in compare and the report). A number that
    is zero, negative or not finite has the right type: such a case holds no valid measurement
    (:func:`invalid_reason`), which compare fails on by name."""
    return next(_document_problems(doc), None)
