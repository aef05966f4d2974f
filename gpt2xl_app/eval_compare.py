"""Compare the sampling grids of two eval runs (``eval.json`` files), setting by setting.

Every metric, title, format and direction comes from :data:`gpt2xl.metric_table.METRICS`. Two
runs share no samples, so no paired test applies; a change is called out only when the two 95%
intervals do not overlap, a conservative criterion (disjoint intervals imply a difference at a
level stricter than 5%; overlapping ones do not prove there is none). For a paired test, put both
settings in one grid: its neighbour tests are paired over the same prompts and seeds.
Everything here returns data; the CLI prints it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2xl.errors import ConfigError, ResultError
from gpt2xl.evaluation import EVAL_JSON, read_eval_doc, settings_of, summary_rows
from gpt2xl.metric_table import SETTINGS, SHOWN_METRICS, Metric, format_value

FIX = "pass eval.json files (or run directories holding one) written by `gpt2xl eval run` or `gpt2xl eval grid`"
CRITERION = ("marked where the two 95% intervals are disjoint (conservative: runs share no samples, so no paired "
             "test applies)")


@dataclass(frozen=True, kw_only=True)
class MetricChange:
    """One metric of one setting in both runs: values, intervals (None where absent), change
    (new − old, None where either is n/a) and ``verdict``: ``better`` / ``worse`` by the metric's
    direction, ``differs`` for a metric with no better direction, ``""`` when the intervals overlap
    or either is missing."""

    setting: tuple[Any, ...]
    metric: Metric
    old: float | None
    new: float | None
    old_interval: dict[str, float] | None
    new_interval: dict[str, float] | None
    change: float | None
    verdict: str


def eval_path(path: Path) -> Path:
    """``path`` itself, or ``path/eval.json`` for a directory."""
    return path / EVAL_JSON if path.is_dir() else path


def load_grid(path: Path) -> dict[str, Any]:
    """The grid of the eval.json at ``path`` (a file or a run directory); ResultError when it has none."""
    file = eval_path(path)
    doc = read_eval_doc(file, fix=FIX)
    if not doc.get("grid"):
        raise ResultError(f"{file} holds no sampling grid to compare; {FIX}.")
    return doc["grid"]


def _verdict(metric: Metric, old_i: dict[str, float] | None, new_i: dict[str, float] | None, change: float) -> str:
    if old_i is None or new_i is None or not (new_i["low"] > old_i["high"] or new_i["high"] < old_i["low"]):
        return ""
    if metric.higher_is_better is None:
        return "differs"
    return "better" if (change > 0) == metric.higher_is_better else "worse"


def compare_grids(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[MetricChange], list[str]]:
    """Every shown metric of every setting present in both grids, in the new grid's order, and
    notes (settings in only one run, differing grid configs). ConfigError when no setting is shared."""
    old_rows = {settings_of(r): r for r in summary_rows(old)}
    changes: list[MetricChange] = []
    shared = [r for r in summary_rows(new) if settings_of(r) in old_rows]
    if not shared:
        raise ConfigError("The two grids share no sampling setting; compare runs of the same settings.")
    for row in shared:
        before = old_rows[settings_of(row)]
        for m in SHOWN_METRICS:
            a, b = before["metrics"].get(m.name), row["metrics"].get(m.name)
            ai, bi = (before.get("intervals") or {}).get(m.name), (row.get("intervals") or {}).get(m.name)
            change = None if a is None or b is None else b - a
            changes.append(MetricChange(setting=settings_of(row), metric=m, old=a, new=b, old_interval=ai,
                                        new_interval=bi, change=change,
                                        verdict="" if change is None else _verdict(m, ai, bi, change)))
    notes = []
    only_old = len(old_rows) - len(shared)
    only_new = len(summary_rows(new)) - len(shared)
    if only_old or only_new:
        notes.append(f"{only_old} setting(s) only in OLD and {only_new} only in NEW are left out.")
    notes += [f"The grids differ in {key} ({old['config'].get(key)!r} vs {new['config'].get(key)!r}): their "
              "values are not measured on the same prompts."
              for key in ("dataset", "num_prompts", "prompt_tokens", "max_new_tokens", "seeds")
              if old["config"].get(key) != new["config"].get(key)]
    return changes, notes


def format_changes(changes: list[MetricChange], notes: list[str]) -> str:
    """The comparison as a plain-text table, one line per setting and metric."""
    header = ["setting", "metric", "old", "new", "change", "verdict"]
    rows = [header]
    for c in changes:
        setting = ", ".join(f"{s.label}={s.format(v)}" for s, v in zip(SETTINGS, c.setting, strict=True))
        delta = "n/a" if c.change is None else ("+" if c.change >= 0 else "") + format_value(c.metric, c.change)
        rows.append([setting, c.metric.title, format_value(c.metric, c.old, c.old_interval),
                     format_value(c.metric, c.new, c.new_interval), delta, c.verdict])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    counts = {v: sum(c.verdict == v for c in changes) for v in ("better", "worse", "differs")}
    summary = (f"Verdicts {CRITERION}: {counts['better']} better, {counts['worse']} worse, {counts['differs']} "
               f"differ (no better direction), of {len(changes)}.")
    lines += ["", summary, *notes]
    return "\n".join(lines)
