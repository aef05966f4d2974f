"""Plots and Markdown of the eval layer, drawn from ``eval.json`` alone (never from a live run).

Every table and plot takes its metrics from :data:`gpt2xl.metric_table.METRICS` (titles,
definitions, directions, formats; a heatmap per shown metric) and its settings from
:data:`gpt2xl.metric_table.SETTINGS`; the per-setting rows (means over seeds) come from
:func:`gpt2xl.evaluation.summary_rows`, and an interval stored with a row is shown beside its
value (tables), as an error bar (the scatter) and as a ± half-width (heatmaps). The document is
read and schema-checked by :func:`gpt2xl.evaluation.read_eval_doc`.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI machines
import matplotlib.pyplot as plt
import numpy as np

from gpt2xl.evaluation import summary_rows
from gpt2xl.metric_table import METRIC_BY_NAME, METRICS, SETTINGS, SHOWN_METRICS, Metric, format_value
from gpt2xl.results import write_bytes_atomic

TEMPERATURE, TOP_K = ({s.name: s for s in SETTINGS}[name] for name in ("temperature", "top_k"))  # the plots' axes
SCATTER = "eval_fluency_vs_diversity.png"


def heatmap_file(metric: Metric) -> str:
    return f"eval_heatmap_{metric.name}.png"


def short_model(eval_doc: dict[str, Any]) -> str:
    """A plot-title name for the model: a checkpoint's folder name, the hub name, or the RANDOM label."""
    m = eval_doc["model"]
    if m["kind"] == "checkpoint":
        return Path(m["spec"]).name or m["spec"]
    return m["label"] if m["kind"] == "random" else m["spec"]


def _top_k_order(k: int) -> tuple[bool, int]:
    return (k == 0, k)  # "all" last: it is the widest


def grid_matrix(
    grid: dict[str, Any], metric: str
) -> tuple[list[float], list[int], np.ndarray, np.ndarray | None]:
    """(temperatures, top_ks, means[t, k], half-widths[t, k] of the intervals or None when no row
    has one) of ``metric`` from the grid's per-setting rows; NaN where a value is missing."""
    rows = summary_rows(grid)
    temps = sorted({r["temperature"] for r in rows})
    ks = sorted({r["top_k"] for r in rows}, key=_top_k_order)
    mat = np.full((len(temps), len(ks)), np.nan)
    half = np.full_like(mat, np.nan)
    for r in rows:
        i, j = temps.index(r["temperature"]), ks.index(r["top_k"])
        value = r["metrics"].get(metric)
        mat[i, j] = np.nan if value is None else float(value)
        interval = (r.get("intervals") or {}).get(metric)
        if interval:
            half[i, j] = (interval["high"] - interval["low"]) / 2
    return temps, ks, mat, (half if np.isfinite(half).any() else None)


def _save_png(fig: Any, path: Path) -> Path:
    """Render ``fig`` to PNG in memory, close it, and write the bytes atomically: a failed write
    (permission, no space, file size limit) raises OutputError and leaves no half-written image."""
    buffer = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=110)
    finally:
        plt.close(fig)
    return write_bytes_atomic(path, buffer.getvalue())


def plot_heatmap(eval_doc: dict[str, Any], metric: Metric, path: Path) -> Path:
    """A temperature x top-k heatmap of ``metric`` (mean over seeds), annotated cell by cell, with
    the interval's half-width under each value where the rows carry intervals."""
    temps, ks, mat, half = grid_matrix(eval_doc["grid"], metric.name)
    shown = np.log10(mat) if metric.log_scale else mat
    fig, ax = plt.subplots(figsize=(1.3 * len(ks) + 2.8, 0.8 * len(temps) + 2.0))
    im = ax.imshow(shown, cmap="viridis", aspect="auto", origin="lower")
    cbar = fig.colorbar(im, ax=ax)
    cbar.set_label(f"log10({metric.title})" if metric.log_scale else metric.title)
    ax.set_xticks(range(len(ks)), [TOP_K.format(k) for k in ks])
    ax.set_yticks(range(len(temps)), [TEMPERATURE.format(t) for t in temps])
    ax.set_xlabel(f"{TOP_K.title} (all = no truncation)")
    ax.set_ylabel("temperature")
    finite = shown[np.isfinite(shown)]
    mid = float(np.mean(finite)) if finite.size else 0.0
    for i in range(len(temps)):
        for j in range(len(ks)):
            v = mat[i, j]
            text = format_value(metric, None if math.isnan(v) else float(v))
            if half is not None and np.isfinite(half[i, j]):
                text += f"\n±{format_value(metric, float(half[i, j]))}"
            color = "black" if np.isfinite(shown[i, j]) and shown[i, j] > mid else "white"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=8)
    seeds = eval_doc["grid"]["config"]["seeds"]
    ax.set_title(f"{metric.title} ({short_model(eval_doc)}; {metric.direction})\nmean over seeds {seeds}",
                 fontsize=9)
    return _save_png(fig, path)


def plot_fluency_vs_diversity(eval_doc: dict[str, Any], path: Path) -> Path:
    """distinct-2 (x) against generation perplexity (y, log), one labelled point per setting
    (error bars where the rows carry intervals), and the dataset's human continuations as a star."""
    grid = eval_doc["grid"]
    x_metric, y_metric = METRIC_BY_NAME["distinct_2"], METRIC_BY_NAME["generation_perplexity"]
    temps, ks, d2, d2_half = grid_matrix(grid, x_metric.name)
    _, _, ppl, ppl_half = grid_matrix(grid, y_metric.name)
    fig, ax = plt.subplots(figsize=(8, 6))
    cmap = plt.get_cmap("coolwarm")
    for i, t in enumerate(temps):
        color = cmap(i / max(1, len(temps) - 1))
        xs, ys = d2[i], ppl[i]
        ax.scatter(xs, ys, color=color, label=f"T={t:g}", s=40, edgecolor="black", linewidth=0.5, zorder=3)
        if d2_half is not None or ppl_half is not None:
            ax.errorbar(xs, ys, xerr=None if d2_half is None else np.nan_to_num(d2_half[i]),
                        yerr=None if ppl_half is None else np.nan_to_num(ppl_half[i]),
                        fmt="none", ecolor=color, elinewidth=1, capsize=2, zorder=2)
        for j, k in enumerate(ks):
            if np.isfinite(xs[j]) and np.isfinite(ys[j]):
                ax.annotate(f"T={t:g},k={TOP_K.format(k)}", (xs[j], ys[j]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
    human = grid.get("human")
    if human and human.get(y_metric.name):
        ax.scatter([human[x_metric.name]], [human[y_metric.name]], marker="*", s=250, color="gold",
                   edgecolor="black", label="human text (dataset)", zorder=5)
    ax.set_yscale("log")
    ax.set_xlabel(f"{x_metric.title} (corpus-level unique bigrams / bigrams): diversity →")
    ax.set_ylabel(f"{y_metric.title} under the model (log): ← fluency")
    bars = "; bars: 95% intervals" if d2_half is not None or ppl_half is not None else ""
    ax.set_title(f"Fluency vs diversity per setting ({short_model(eval_doc)} on {grid['config']['dataset']}, "
                 f"mean over seeds {grid['config']['seeds']}{bars})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save_png(fig, path)


def write_eval_plots(eval_doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """A heatmap per shown metric and the scatter into ``out_dir``; returns the files written
    (none without a grid)."""
    if not eval_doc.get("grid") or not eval_doc["grid"]["cells"]:
        return []
    paths = [plot_heatmap(eval_doc, m, out_dir / heatmap_file(m)) for m in SHOWN_METRICS]
    paths.append(plot_fluency_vs_diversity(eval_doc, out_dir / SCATTER))
    return paths


def render_files(eval_doc: dict[str, Any], out_dir: Path, run_dir: Path) -> None:
    """The :data:`gpt2xl.evaluation.Renderer` of the eval commands: the plots and report.md
    (joined with ``run_dir``'s bench.json when present) into ``out_dir``."""
    from gpt2xl_app.report import write_report

    write_eval_plots(eval_doc, out_dir)
    write_report(run_dir, eval_doc=eval_doc, out_dir=out_dir)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def render_eval_section(eval_doc: dict[str, Any], out_dir: Path) -> str:
    """Markdown: perplexity table, LAMBADA, the grid table with the human row, and the images that
    exist in ``out_dir`` (linked relatively, so the report renders on GitHub)."""
    lines = ["## Evaluation", ""]
    lines += _perplexity_lines(eval_doc.get("perplexity") or [])
    if eval_doc.get("lambada"):
        lines += _lambada_lines(eval_doc["lambada"])
    grid = eval_doc.get("grid")
    if grid and grid["cells"]:
        lines += _grid_lines(grid, out_dir)
    return "\n".join(lines)


def _perplexity_lines(ppl: list[dict[str, Any]]) -> list[str]:
    if not ppl:
        return []
    lines = [
        "### Perplexity (sliding window, token-weighted; lm-eval definitions)",
        "",
        "| dataset | split | context / stride | tokens scored | token ppl | bits/byte | word ppl | seconds |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for p in ppl:
        r = p["result"]
        lines.append(
            f"| {p['dataset']} | {p['split']} | {p['context_length']} / {p['stride']} | {r['tokens_scored']:,} | "
            f"{_fmt(r['token_perplexity'])} | {r['bits_per_byte']:.4f} | {_fmt(r['word_perplexity'])} | "
            f"{p['seconds']:.1f} |"
        )
    definitions = ("token ppl = exp(NLL sum / tokens scored); bits/byte = NLL sum / (bytes · ln 2); "
                   "word ppl = exp(NLL sum / whitespace words of the text).")
    return [*lines, "", definitions, ""]


def _lambada_lines(lam: dict[str, Any]) -> list[str]:
    r = lam["result"]
    summary = (f"{r['num_examples']:,} examples ({lam['note']}): accuracy **{r['accuracy']:.4f}**, "
               f"perplexity {_fmt(r['perplexity'])} (lm-eval: exp(−mean target log-likelihood per example)); "
               f"{r['num_cropped']} contexts left-cropped to the model's context.")
    return ["### LAMBADA", "", summary, ""]


def _cell(metric: Metric, row_metrics: dict[str, Any], intervals: dict[str, Any] | None) -> str:
    return format_value(metric, row_metrics.get(metric.name), (intervals or {}).get(metric.name))


def _grid_lines(grid: dict[str, Any], out_dir: Path) -> list[str]:
    cfg = grid["config"]
    rows = sorted(summary_rows(grid), key=lambda r: (r["temperature"], _top_k_order(r["top_k"])))
    has_intervals = any(r.get("intervals") for r in rows) or bool(grid.get("human_intervals"))
    setup = (f"{cfg['num_prompts']} prompts of {cfg['prompt_tokens']} tokens cut at evenly spaced offsets of "
             f"{cfg['dataset']}'s eval split, {cfg['max_new_tokens']} new tokens each, seeds {cfg['seeds']}, "
             f"batch {cfg['batch_size']}; {len(grid['cells'])} cells in {grid['seconds']:.1f} s. "
             "Values are means over seeds" + (" with [95% interval]" if has_intervals else "") +
             "; every seed's cell, the per-sample distinct-n and the counts are in the CSV.")
    lines = [
        "### Sampling grid",
        "",
        setup,
        "",
        "| " + " | ".join([*(s.title for s in SETTINGS), *(m.title for m in SHOWN_METRICS)]) + " |",
        "|" + "---:|" * (len(SETTINGS) + len(SHOWN_METRICS)),
    ]
    for r in rows:
        settings = [s.format(r[s.name]) for s in SETTINGS]
        lines.append("| " + " | ".join([*settings, *(_cell(m, r["metrics"], r.get("intervals"))
                                                      for m in SHOWN_METRICS)]) + " |")
    human = grid.get("human")
    if human:
        label = ["human text", *("" for _ in SETTINGS[1:])]
        lines.append("| " + " | ".join([*label, *(_cell(m, human, grid.get("human_intervals"))
                                                  for m in SHOWN_METRICS)]) + " |")
    lines += ["", "Metrics (direction; definition):", ""]
    lines += [f"- **{m.title}** ({m.direction}): {m.definition}" for m in METRICS if m.shown]
    lines.append("")
    if (out_dir / SCATTER).exists():
        lines += [f"![fluency vs diversity]({SCATTER})", ""]
    lines += [f"![{m.title}]({heatmap_file(m)})" for m in SHOWN_METRICS if (out_dir / heatmap_file(m)).exists()]
    lines.append("")
    first_seed = cfg["seeds"][0]
    examples = [c for c in grid["cells"] if c.get("example_texts") and c["seed"] == first_seed]
    if examples:
        lines += [f"<details><summary>Example continuations (first sample per cell, seed {first_seed})</summary>", ""]
        for c in examples:
            text = c["example_texts"][0].replace("\n", " ⏎ ").replace("|", "\\|")
            named = ", ".join(f"{s.label}={s.format(c[s.name])}" for s in SETTINGS)
            lines.append(f"- **{named}**: {text[:300]}")
        lines += ["", "</details>", ""]
    return lines
