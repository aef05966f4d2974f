"""The vocabulary of a ``bench.json`` record, shared by the harness that writes it and the report
and gate (``gpt2xl_app``) that read it: what counts as a rate, median and spread over rounds, the
ratio table, and the roofline basis. Pure functions on plain numbers and dicts; no torch, no pytest.

A *record* is a case's ``extra_info`` (or one sampler's entry in an interleaved case's
``samplers``): ``decode_tokens_per_s``, ``prefill_s``, ``tokens_per_s``, ``achieved_bytes_per_s``,
``valid`` and ``invalid_reason`` among others (see ``bench.harness.sampler_record``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

NOISY_SPREAD = 0.15  # probes whose max/min - 1 exceeds this: the report calls the machine noisy
RATE_FIELDS = ("prefill_s", "decode_tokens_per_s", "tokens_per_s")  # must be > 0 and finite when present


def is_rate(value: object) -> bool:
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
    if not (is_rate(num) and is_rate(den)):
        return None
    value = num / den
    return value if is_rate(value) else None


# --- bandwidth probes and the roofline basis ------------------------------------------------------

def probe_summary(probes: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{device: {method: {n, median, min, max, spread}}}`` over probe dicts
    (``BandwidthProbe.to_dict()``); ``spread`` = max / min − 1. Unusable rates are left out."""
    by: dict[str, dict[str, list[float]]] = {}
    for probe in probes:
        for method, value in (probe.get("rates") or {}).items():
            if is_rate(value):
                by.setdefault(str(probe.get("device", "?")).split(":")[0], {}).setdefault(method, []).append(float(value))
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
                yield device, f"probe {method} ({probe.get('label', 'probe')}, {probe.get('measured_at', '?')})", float(value)


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
    return achieved / basis if is_rate(achieved) and is_rate(basis) else None  # type: ignore[operator]
