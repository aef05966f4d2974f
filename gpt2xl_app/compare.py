"""Compare two benchmark runs (``bench.json`` files) and decide whether the new one regressed.

Two modes:

- ``throughput``: a case's metric (default ``decode_tokens_per_s``, higher is better) in NEW
  against OLD, matched by case name (``test_throughput[random:gpt2-xl-cpu-fp32-cached-b1-p16-n32]``,
  which spells out model, device, dtype, sampler, batch, prompt and new tokens). Absolute speeds:
  meaningful on the same quiet machine only.
- ``ratios``: speed ratios measured inside ONE run (cached vs reference sampler, ours vs HF
  ``generate``), which a noisy or different machine shifts far less than absolute times. What a
  CI gate on a shared machine compares. Optional absolute floors (``cached_vs_reference_decode
  >= 2``) catch a slow drift that relative tolerances would let through.

Everything here returns data; the CLI prints it.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gpt2xl.errors import ConfigError, ResultError

Mode = Literal["throughput", "ratios"]
HIGHER_IS_BETTER = ("decode_tokens_per_s", "tokens_per_s")
LOWER_IS_BETTER = ("prefill_s", "decode_s", "decode_s_per_token", "peak_memory_bytes")


def parse_fraction(text: str) -> float:
    """``"10%"`` → 0.10, ``"0.1"`` → 0.1. ConfigError for anything else or outside [0, 1)."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ConfigError(f"Expected a percentage like 10% or a fraction like 0.1, got {text!r}.") from None
    if not (0 <= value < 1):
        raise ConfigError(f"A slowdown threshold must be in [0%, 100%), got {text!r}.")
    return value


def parse_floors(items: list[str]) -> dict[str, float]:
    """``["cached_vs_reference_decode=2"]`` → ``{"cached_vs_reference_decode": 2.0}``."""
    floors: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            floors[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ConfigError(f"A floor is NAME=NUMBER (e.g. cached_vs_reference_decode=2), got {item!r}.")
    return floors


def load_bench(path: str | Path) -> dict[str, Any]:
    """Read a ``bench.json`` written by ``python -m bench`` (pytest-benchmark's format).

    Raises ResultError when the file is missing, not JSON, or not a benchmark run.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ResultError(f"Cannot read benchmark file {path} ({exc.strerror}).") from exc
    except json.JSONDecodeError as exc:
        raise ResultError(f"{path} is not valid JSON ({exc}).") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
        raise ResultError(f"{path} is not a benchmark result (no 'benchmarks' list); pass a bench.json from python -m bench.")
    for bench in doc["benchmarks"]:
        if not isinstance(bench, dict) or not isinstance(bench.get("name"), str) or not isinstance(bench.get("extra_info"), dict):
            raise ResultError(f"{path} has a benchmark entry without a name or extra_info; was it written by python -m bench?")
    return doc


def case_metrics(doc: dict[str, Any], metric: str) -> dict[str, float]:
    """``{case name: metric}`` for every case that recorded ``metric``."""
    out = {}
    for bench in doc["benchmarks"]:
        value = bench["extra_info"].get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[bench["name"]] = float(value)
    return out


def _group_key(info: dict[str, Any]) -> str:
    return (f"{info.get('model')}-{info.get('device')}-{info.get('dtype')}"
            f"-b{info.get('batch_size')}-p{info.get('prompt_len')}")


def ratio_metrics(doc: dict[str, Any]) -> dict[str, float]:
    """Speed ratios measured within the run, keyed ``<group>:<ratio name>``.

    - From interleaved ratio cases (``kind == "ratios"``, the gate): their paired-round medians,
      keyed by the case's group and new-token count.
    - From separate throughput cases of the same model/device/dtype/batch/prompt:
      ``ours_vs_hf_decode`` (cached vs hf at equal new tokens) and
      ``cached_vs_reference_decode`` (the reference may run fewer tokens; its n is in the key),
      ``split_vs_linear_decode`` (cached vs cached-linear: what split matmuls add).
    """
    out: dict[str, float] = {}
    groups: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for bench in doc["benchmarks"]:
        info = bench["extra_info"]
        if info.get("kind") == "ratios":
            for name, value in (info.get("ratios") or {}).items():
                out[f"interleaved-{_group_key(info)}-n{info.get('new_tokens')}:{name}"] = float(value)
        elif info.get("kind") == "throughput" and info.get("decode_tokens_per_s"):
            groups[_group_key(info)][info.get("sampler")].append(info)
    for key, by_sampler in groups.items():
        for cached in by_sampler.get("cached", []):
            n = cached["new_tokens"]
            for hf in by_sampler.get("hf", []):
                if hf["new_tokens"] == n:
                    out[f"{key}-n{n}:ours_vs_hf_decode"] = cached["decode_tokens_per_s"] / hf["decode_tokens_per_s"]
            for linear in by_sampler.get("cached-linear", []):
                if linear["new_tokens"] == n:
                    out[f"{key}-n{n}:split_vs_linear_decode"] = (
                        cached["decode_tokens_per_s"] / linear["decode_tokens_per_s"]
                    )
            for ref in by_sampler.get("reference", []):
                out[f"{key}-n{n}-ref{ref['new_tokens']}:cached_vs_reference_decode"] = (
                    cached["decode_tokens_per_s"] / ref["decode_tokens_per_s"]
                )
    return out


@dataclass(frozen=True, kw_only=True)
class Row:
    name: str
    old: float | None
    new: float | None
    status: Literal["ok", "REGRESSION", "BELOW FLOOR", "only in old", "only in new"]
    floor: float | None = None

    @property
    def change(self) -> float | None:
        """Relative change new/old − 1 (positive = larger value)."""
        if self.old is None or self.new is None or self.old == 0:
            return None
        return self.new / self.old - 1


@dataclass(frozen=True, kw_only=True)
class Comparison:
    mode: Mode
    metric: str
    max_slowdown: float
    higher_is_better: bool
    rows: tuple[Row, ...] = field(default_factory=tuple)

    @property
    def regressions(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.status in ("REGRESSION", "BELOW FLOOR"))

    @property
    def passed(self) -> bool:
        return not self.regressions


def compare_docs(
    old: dict[str, Any],
    new: dict[str, Any],
    *,
    max_slowdown: float,
    mode: Mode = "throughput",
    metric: str = "decode_tokens_per_s",
    floors: dict[str, float] | None = None,
) -> Comparison:
    """Match OLD and NEW cases and flag every one that got slower by more than ``max_slowdown``
    (a fraction: 0.1 = 10%). In ``ratios`` mode a ratio below ``floors[<ratio name>]`` fails too.

    Raises ConfigError for an unknown metric and ResultError when the runs share no case.
    """
    if not 0 <= max_slowdown < 1:
        raise ConfigError(f"max_slowdown must be a fraction in [0, 1), got {max_slowdown!r}.")
    floors = floors or {}
    if mode == "ratios":
        old_values, new_values, higher = ratio_metrics(old), ratio_metrics(new), True
        metric = "ratio"
    elif mode == "throughput":
        if metric not in HIGHER_IS_BETTER + LOWER_IS_BETTER:
            raise ConfigError(f"Unknown metric {metric!r}; choose one of: {', '.join(HIGHER_IS_BETTER + LOWER_IS_BETTER)}.")
        old_values, new_values, higher = case_metrics(old, metric), case_metrics(new, metric), metric in HIGHER_IS_BETTER
    else:
        raise ConfigError(f"Unknown compare mode {mode!r}; use throughput or ratios.")
    if not set(old_values) & set(new_values):
        what = "ratio" if mode == "ratios" else f"case with {metric}"
        raise ResultError(
            f"The two runs share no {what} to compare (old: {len(old_values)}, new: {len(new_values)}); "
            "were they made with the same profile and model?"
        )
    rows = []
    for name in sorted(set(old_values) | set(new_values)):
        o, n = old_values.get(name), new_values.get(name)
        floor = floors.get(name.rsplit(":", 1)[-1]) if mode == "ratios" else None
        if o is None:
            status = "only in new"
        elif n is None:
            status = "only in old"
        elif floor is not None and n < floor:
            status = "BELOW FLOOR"
        else:
            # Slowdown: the fraction of speed lost (higher-is-better) or of time added (lower).
            slowdown = (1 - n / o) if higher else (n / o - 1)
            status = "REGRESSION" if slowdown > max_slowdown else "ok"
        rows.append(Row(name=name, old=o, new=n, status=status, floor=floor))
    return Comparison(mode=mode, metric=metric, max_slowdown=max_slowdown, higher_is_better=higher, rows=tuple(rows))


def compare_files(old: str | Path, new: str | Path, **kwargs: Any) -> Comparison:
    """:func:`compare_docs` on two ``bench.json`` files (ResultError when one is unreadable)."""
    return compare_docs(load_bench(old), load_bench(new), **kwargs)


def format_table(comparison: Comparison) -> str:
    """Side-by-side Markdown-ish table: name, old, new, change %, status, then a verdict line."""
    def fmt(v: float | None) -> str:
        return "—" if v is None else f"{v:.4g}"

    header = ["case", f"old {comparison.metric}", f"new {comparison.metric}", "change", "status"]
    lines = [header]
    for r in comparison.rows:
        change = "—" if r.change is None else f"{r.change * 100:+.1f}%"
        status = r.status if r.floor is None else f"{r.status} (floor {r.floor:g})"
        lines.append([r.name, fmt(r.old), fmt(r.new), change, status])
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = []
    for i, row in enumerate(lines):
        out.append("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
        if i == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    direction = "higher is better" if comparison.higher_is_better else "lower is better"
    n_bad = len(comparison.regressions)
    verdict = (
        f"PASS: no case slower than {comparison.max_slowdown * 100:g}% ({direction})"
        if n_bad == 0
        else f"FAIL: {n_bad} case(s) slower than {comparison.max_slowdown * 100:g}% or below a floor ({direction})"
    )
    return "\n".join(out) + "\n" + verdict


def geometric_mean_change(comparison: Comparison) -> float | None:
    """The geometric mean of new/old over matched cases (None if none), for a one-line summary."""
    ratios = [r.new / r.old for r in comparison.rows if r.old and r.new]
    return math.exp(statistics.fmean(math.log(x) for x in ratios)) - 1 if ratios else None
