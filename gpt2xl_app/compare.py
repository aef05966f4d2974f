"""Compare two benchmark runs (``bench.json`` files) and decide whether the new one regressed.

Two modes:

- ``throughput``: a case's metric (default ``decode_tokens_per_s``, higher is better) in NEW
  against OLD, matched by case name (``test_throughput[random:gpt2-xl-cpu-fp32-cached-b1-p16-n32]``,
  which spells out model, device, dtype, sampler, batch, prompt and new tokens). Absolute speeds:
  meaningful on the same quiet machine only.
- ``ratios``: speed ratios measured inside ONE run (the names of ``bench.records.RATIOS``: cached
  vs reference, ours vs HF, ours vs llama.cpp, …), which a noisy machine shifts far less than
  absolute times. What the CI gate compares. Optional absolute floors (``cached_vs_reference_decode
  >= 2``) catch a slow drift that relative tolerances would let through; their names and values
  are validated.

The baseline can be a directory of per-CPU-kind baselines (``gate-cpu-<kind>.json``, the kind
being ``torch.backends.cpu.get_cpu_capability()`` as the new run recorded it): ratios depend on
the CPU kind (bf16 native or emulated, AVX2 or AVX-512 kernels). Where the kind has no baseline,
only the floors and the validity of the new run are checked, and the output says so.

In either mode a case of NEW with no valid measurement fails the comparison, named with its
reason. Everything here returns data; the CLI prints it.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench.records import RATIOS, document_problem, invalid_reason, is_rate, ratio_of
from gpt2xl.errors import ConfigError, ResultError

Mode = Literal["throughput", "ratios"]
HIGHER_IS_BETTER = ("decode_tokens_per_s", "tokens_per_s")
LOWER_IS_BETTER = ("prefill_s", "decode_s", "decode_s_per_token", "peak_memory_bytes")
METRICS = HIGHER_IS_BETTER + LOWER_IS_BETTER
DEFAULT_METRIC = "decode_tokens_per_s"
BASELINE_PREFIX = "gate-cpu-"  # <dir>/gate-cpu-<cpu kind>.json


def parse_fraction(text: str) -> float:
    """``"10%"`` → 0.10, ``"0.1"`` → 0.1. ConfigError for anything else or outside [0, 1)."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ConfigError(f"Expected a percentage like 10% or a fraction like 0.1, got {text!r}.") from None
    if not (0 <= value < 1):  # also refuses NaN, which compares false to everything
        raise ConfigError(f"A slowdown threshold must be in [0%, 100%), got {text!r}.")
    return value


def check_options(
    *, max_slowdown: float, mode: str, metric: str | None, floors: dict[str, float]
) -> tuple[Mode, str, dict[str, float]]:
    """Every option of a comparison, checked before any file is read: ``(mode, the metric
    compared, the floors)``. The metric is ``metric`` (default :data:`DEFAULT_METRIC`) in throughput
    mode and ``"ratio"`` in ratios mode, where a metric would be silently ignored, so giving one
    is an error; floors apply to ratios only. ConfigError naming the first bad option."""
    if isinstance(max_slowdown, bool) or not isinstance(max_slowdown, (int, float)) or not 0 <= max_slowdown < 1:
        raise ConfigError(f"max_slowdown must be a fraction in [0, 1), got {max_slowdown!r}.")
    if metric is not None and metric not in METRICS:
        raise ConfigError(f"Unknown metric {metric!r}; choose one of: {', '.join(METRICS)}.")
    floors = validate_floors(dict(floors))
    if mode == "ratios":
        if metric is not None:
            raise ConfigError("--metric applies to throughput comparisons, not to --ratios; drop one of them.")
        return "ratios", "ratio", floors
    if mode == "throughput":
        if floors:
            raise ConfigError("Floors apply to ratios; add --ratios or drop --floor.")
        return "throughput", metric or DEFAULT_METRIC, floors
    raise ConfigError(f"Unknown compare mode {mode!r}; use throughput or ratios.")


def validate_floors(floors: dict[str, float]) -> dict[str, float]:
    """``floors`` when every name is a ratio of :data:`bench.records.RATIOS` and every value a
    finite number > 0; ConfigError naming the first bad one otherwise."""
    for name, value in floors.items():
        if name not in RATIOS:
            raise ConfigError(f"Unknown ratio {name!r} in a floor; known ratios: {', '.join(RATIOS)}.")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"The floor of {name} must be a finite number > 0, got {value!r}.")
    return floors


def parse_floors(items: list[str]) -> dict[str, float]:
    """``["cached_vs_reference_decode=2"]`` → ``{"cached_vs_reference_decode": 2.0}``, validated
    (:func:`validate_floors`). ConfigError for anything else."""
    floors: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            number = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise ConfigError(f"A floor is NAME=NUMBER (e.g. cached_vs_reference_decode=2), got {item!r}.")
        if name in floors:
            raise ConfigError(f"The floor of {name} is given twice; pass each ratio's --floor once.")
        floors[name] = number
    return validate_floors(floors)


def load_bench(path: str | Path) -> dict[str, Any]:
    """Read a ``bench.json`` written by ``python -m bench`` (pytest-benchmark's format), checked
    against the shape every reader relies on (:func:`bench.records.document_problem`), so that
    nothing downstream meets a mistyped field.

    Raises ResultError, naming the file and the field, when the file is missing or unreadable,
    not JSON, not a benchmark run, has a field of the wrong type, or repeats a case.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ResultError(f"Cannot read benchmark file {path} ({exc.strerror}).") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultError(f"{path} is not valid JSON ({exc}); pass a bench.json written by python -m bench.") from exc
    problem = document_problem(doc)
    if problem is not None:
        raise ResultError(
            f"{path} is not a usable benchmark result: {problem}; pass a bench.json written by python -m bench.")
    return doc


def metric_by_case(doc: dict[str, Any], metric: str) -> dict[str, float]:
    """``{case name: metric}`` for every valid case whose ``metric`` is a finite number > 0."""
    out = {}
    for bench in doc["benchmarks"]:
        info = bench["extra_info"]
        value = info.get(metric)
        if invalid_reason(info) is None and is_rate(value):
            out[bench["name"]] = float(value)
    return out


def invalid_entries(doc: dict[str, Any]) -> dict[str, str]:
    """``{name: reason}`` for every measured case (and sampler of an interleaved case) that holds
    no valid measurement: what the gate must fail on, by name."""
    out: dict[str, str] = {}
    for bench in doc["benchmarks"]:
        info = bench["extra_info"]
        if info.get("kind") not in ("throughput", "scaling", "ratios"):
            continue
        reason = invalid_reason(info)
        if reason is not None:
            out[bench["name"]] = reason
        for sampler, record in (info.get("samplers") or {}).items():
            reason = invalid_reason(record)
            if reason is not None:
                out[f"{bench['name']} [{sampler}]"] = reason
        for name, value in (info.get("ratios") or {}).items():
            if not is_rate(value):  # the ratio would vanish from the comparison without a word
                out[f"{bench['name']} [{name}]"] = f"ratio {name} = {value!r} is not positive and finite"
    return out


@dataclass(frozen=True, kw_only=True)
class RatioEntry:
    """One ratio measured in a run: ``key`` (``<group>:<name>``) is what compare matches on;
    ``group`` = (model, device, dtype, batch, prompt, new tokens) of the numerator's case."""

    key: str
    group: tuple
    name: str
    value: float
    source: Literal["interleaved", "cases"]


def _group_key(info: dict[str, Any]) -> str:
    return (f"{info.get('model')}-{info.get('device')}-{info.get('dtype')}"
            f"-b{info.get('batch_size')}-p{info.get('prompt_len')}")


def _group(info: dict[str, Any]) -> tuple:
    return (info.get("model"), info.get("device"), info.get("dtype"), info.get("batch_size"), info.get("prompt_len"),
            info.get("new_tokens"))


def ratio_entries(doc: dict[str, Any]) -> list[RatioEntry]:
    """Every ratio of :data:`bench.records.RATIOS` measured within the run.

    - Interleaved cases (``kind == "ratios"``): their paired-round medians, keyed
      ``interleaved-<group>-n<new>:<name>``.
    - Separate throughput cases of one model/device/dtype/batch/prompt: the numerator's and
      denominator's case medians at equal new tokens, keyed ``<group>-n<new>:<name>``; the
      reference may run fewer tokens, so its ratio is keyed ``<group>-n<new>-ref<its n>:<name>``.

    Invalid cases and rates that are zero, negative or not finite give no ratio (never a division).
    """
    out: list[RatioEntry] = []
    groups: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for bench in doc["benchmarks"]:
        info = bench["extra_info"]
        if info.get("kind") == "ratios":
            out += _interleaved_entries(info)
        elif info.get("kind") == "throughput":
            groups[_group_key(info)][info["sampler"]].append(info)
    for gkey, by_sampler in groups.items():
        out += _case_entries(gkey, by_sampler)
    return out


def _interleaved_entries(info: dict[str, Any]) -> list[RatioEntry]:
    return [
        RatioEntry(key=f"interleaved-{_group_key(info)}-n{info.get('new_tokens')}:{name}", group=_group(info),
                   name=name, value=float(value), source="interleaved")
        for name, value in (info.get("ratios") or {}).items()
        if name in RATIOS and is_rate(value)
    ]


def _case_entries(gkey: str, by_sampler: dict[str, list[dict[str, Any]]]) -> list[RatioEntry]:
    """The ratios between separate throughput cases of one group (see :func:`ratio_entries`)."""
    out = []
    for name, d in RATIOS.items():
        for num in by_sampler.get(d.numerator, []):
            n = num.get("new_tokens")
            for den in by_sampler.get(d.denominator, []):
                if d.denominator == "reference":
                    key = f"{gkey}-n{n}-ref{den.get('new_tokens')}:{name}"
                elif den.get("new_tokens") == n:
                    key = f"{gkey}-n{n}:{name}"
                else:
                    continue
                value = ratio_of(name, num, den)
                if value is not None:
                    out.append(RatioEntry(key=key, group=_group(num), name=name, value=value, source="cases"))
    return out


def ratio_metrics(doc: dict[str, Any]) -> dict[str, float]:
    """``{<group>:<ratio name>: value}`` for every ratio measured within the run (see
    :func:`ratio_entries`)."""
    return {e.key: e.value for e in ratio_entries(doc)}


Status = Literal["ok", "REGRESSION", "BELOW FLOOR", "INVALID", "MISSING", "only in old", "only in new", "no baseline"]
FAILING: tuple[Status, ...] = ("REGRESSION", "BELOW FLOOR", "INVALID", "MISSING")


@dataclass(frozen=True, kw_only=True)
class Row:
    name: str
    old: float | None
    new: float | None
    status: Status
    floor: float | None = None
    note: str | None = None  # why INVALID or MISSING

    @property
    def change(self) -> float | None:
        """Relative change new/old − 1 (positive = larger value)."""
        if is_rate(self.old) and is_rate(self.new):
            return self.new / self.old - 1
        return None


@dataclass(frozen=True, kw_only=True)
class Comparison:
    mode: Mode
    metric: str
    max_slowdown: float
    higher_is_better: bool
    rows: tuple[Row, ...] = field(default_factory=tuple)
    baseline_note: str | None = None  # which baseline was used, or why none

    @property
    def regressions(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.status in FAILING)

    @property
    def passed(self) -> bool:
        return not self.regressions


def compare_docs(
    old: dict[str, Any] | None,
    new: dict[str, Any],
    *,
    max_slowdown: float,
    mode: Mode = "throughput",
    metric: str | None = None,
    floors: dict[str, float] | None = None,
    baseline_note: str | None = None,
) -> Comparison:
    """Match OLD and NEW cases and flag every one that got slower by more than ``max_slowdown``
    (a fraction: 0.1 = 10%). In ``ratios`` mode a ratio below ``floors[<ratio name>]`` fails too,
    and so does a floor whose ratio the new run did not measure. A case of NEW with no valid
    measurement always fails. ``old`` None (no baseline for this CPU kind): floors and validity only.

    Raises ConfigError for an unknown metric (or one given in ratios mode), a bad floor or floors
    outside ratios mode, and ResultError when NEW holds nothing to compare, or the runs share
    nothing, and NEW has no invalid case to report.
    """
    mode, metric, floors = check_options(max_slowdown=max_slowdown, mode=mode, metric=metric, floors=floors or {})
    if mode == "ratios":
        old_values, new_values, higher = (ratio_metrics(old) if old is not None else {}), ratio_metrics(new), True
    else:
        old_values = metric_by_case(old, metric) if old is not None else {}
        new_values, higher = metric_by_case(new, metric), metric in HIGHER_IS_BETTER
    invalid = invalid_entries(new)
    what = "ratio" if mode == "ratios" else f"case with {metric}"
    if not new_values and not invalid:  # nothing measured must not pass a gate
        raise ResultError(f"The new run holds no {what} to check; was it made with a profile that measures them?")
    if old is not None and not set(old_values) & set(new_values) and not invalid:
        raise ResultError(
            f"The two runs share no {what} to compare (old: {len(old_values)}, new: {len(new_values)}); "
            "were they made with the same profile and model?"
        )
    rows = []
    for name in sorted(set(old_values) | set(new_values)):
        o, n = old_values.get(name), new_values.get(name)
        floor = floors.get(name.rsplit(":", 1)[-1]) if mode == "ratios" else None
        status = _status(o, n, floor, has_baseline=old is not None, higher=higher, max_slowdown=max_slowdown)
        rows.append(Row(name=name, old=o, new=n, status=status, floor=floor))
    measured = {name.rsplit(":", 1)[-1] for name in new_values}
    for name, floor in sorted(floors.items()):
        if name not in measured:
            rows.append(Row(name=f"*:{name}", old=None, new=None, status="MISSING", floor=floor,
                            note="the new run measured no such ratio"))
    for name, reason in sorted(invalid.items()):
        rows.append(Row(name=name, old=None, new=None, status="INVALID", note=reason))
    return Comparison(mode=mode, metric=metric, max_slowdown=max_slowdown, higher_is_better=higher, rows=tuple(rows),
                      baseline_note=baseline_note)


def _status(
    old: float | None, new: float | None, floor: float | None, *, has_baseline: bool, higher: bool,
    max_slowdown: float,
) -> Status:
    """One row's verdict; ``old``/``new`` are usable rates or None (not measured)."""
    if new is not None and floor is not None and new < floor:
        return "BELOW FLOOR"
    if new is None:
        return "only in old"
    if not has_baseline:
        return "ok" if floor is not None else "no baseline"
    if old is None:
        return "only in new"
    # Slowdown: the fraction of speed lost (higher-is-better) or of time added (lower).
    slowdown = (1 - new / old) if higher else (new / old - 1)
    return "REGRESSION" if slowdown > max_slowdown else "ok"


def cpu_kind(doc: dict[str, Any]) -> str | None:
    """The CPU kind a run recorded (``torch.backends.cpu.get_cpu_capability()``: AVX2, AVX512, …)."""
    kind = ((doc.get("machine_info") or {}).get("gpt2xl") or {}).get("cpu_capability")
    return str(kind) if kind else None


def resolve_baseline(old: str | Path, new_doc: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The baseline document for ``new_doc`` and a sentence saying which (or why none).

    ``old`` a file: that file (the sentence warns when its CPU kind differs from the new run's).
    ``old`` a directory: ``<dir>/gate-cpu-<kind>.json`` for the new run's CPU kind, or None when
    the directory holds none for that kind (then only floors and validity are checked)."""
    old = Path(old)
    kind = cpu_kind(new_doc)
    if old.is_dir():
        if kind is None:
            return None, (f"the new run records no CPU kind, so no baseline was picked from {old}: "
                          "checking floors and validity only")
        path = old / f"{BASELINE_PREFIX}{kind}.json"
        if not path.is_file():
            have = sorted(p.stem.removeprefix(BASELINE_PREFIX) for p in old.glob(f"{BASELINE_PREFIX}*.json"))
            return None, (f"no baseline for CPU kind {kind} in {old} (have: {', '.join(have) or 'none'}): "
                          "checking floors and validity only")
        return load_bench(path), f"baseline {path} (CPU kind {kind})"
    doc = load_bench(old)
    old_kind = cpu_kind(doc)
    if old_kind and kind and old_kind != kind:
        return doc, (f"baseline {old} was measured on CPU kind {old_kind}, this run on {kind}: its ratios may not "
                     "carry over; keep one baseline per kind in a directory")
    return doc, f"baseline {old}"


def compare_files(
    old: str | Path,
    new: str | Path,
    *,
    max_slowdown: float,
    mode: Mode = "throughput",
    metric: str | None = None,
    floors: dict[str, float] | None = None,
) -> Comparison:
    """:func:`compare_docs` on two ``bench.json`` files, OLD a file or a directory of per-CPU-kind
    baselines (:func:`resolve_baseline`). The options are checked before either file is read
    (ConfigError); ResultError when a file is unreadable or malformed."""
    kwargs: dict[str, Any] = {"max_slowdown": max_slowdown, "mode": mode, "metric": metric, "floors": floors or {}}
    check_options(**kwargs)
    new_doc = load_bench(new)
    old_doc, note = resolve_baseline(old, new_doc)
    return compare_docs(old_doc, new_doc, baseline_note=note, **kwargs)


def format_table(comparison: Comparison) -> str:
    """The baseline line, a side-by-side Markdown-ish table (name, old, new, change %, status),
    then a verdict line naming every invalid case."""
    def fmt(v: float | None) -> str:
        return "—" if v is None else f"{v:.4g}"

    header = ["case", f"old {comparison.metric}", f"new {comparison.metric}", "change", "status"]
    lines = [header]
    for r in comparison.rows:
        change = "—" if r.change is None else f"{r.change * 100:+.1f}%"
        status = r.status if r.floor is None else f"{r.status} (floor {r.floor:g})"
        if r.note:
            status += f": {r.note}"
        lines.append([r.name, fmt(r.old), fmt(r.new), change, status])
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = [comparison.baseline_note] if comparison.baseline_note else []
    for i, row in enumerate(lines):
        out.append("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    direction = "higher is better" if comparison.higher_is_better else "lower is better"
    bad = comparison.regressions
    if not bad:
        verdict = f"PASS: no case slower than {comparison.max_slowdown * 100:g}% ({direction}), none invalid"
    else:
        counts = ", ".join(f"{sum(r.status == s for r in bad)} {s}" for s in FAILING if any(r.status == s for r in bad))
        invalid = [f"{r.name} ({r.note})" for r in bad if r.status == "INVALID"]
        verdict = (f"FAIL: {counts} (tolerance {comparison.max_slowdown * 100:g}%, {direction})"
                   + (f"; invalid: {'; '.join(invalid)}" if invalid else ""))
    return "\n".join(out) + "\n" + verdict

