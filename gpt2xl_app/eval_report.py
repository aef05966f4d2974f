"""Plots and Markdown of the eval layer, drawn from ``eval.json`` alone (never from a live run).

Every table and plot takes its metrics from :data:`gpt2xl.metric_table.METRICS` (titles,
definitions, directions, formats; a heatmap per shown metric) and its settings from
:data:`gpt2xl.metric_table.SETTINGS`; the per-setting rows (over their seeds) come from
:func:`gpt2xl.evaluation.summary_rows`, and an interval stored with a row is shown beside its
value (tables), as an error bar (the scatter) and as a ± half-width (heatmaps). Heatmaps are
temperature x top-k, one set per top-p. The report table marks the values that differ
significantly from their neighbour along an axis (:data:`MARKERS`, from eval.json's
``neighbour_tests``) and names the test. The document is
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

# The plots' axes, and the setting each set of heatmaps is drawn at.
TEMPERATURE, TOP_K, TOP_P = ({s.name: s for s in SETTINGS}[name] for name in ("temperature", "top_k", "top_p"))
SCATTER = "eval_fluency_vs_diversity.png"
# Neighbour-test markers of the report table, per axis: this value differs significantly from the
# previous setting along that axis (the other settings fixed).
MARKERS = {"temperature": "†", "top_k": "‡", "top_p": "§"}


def heatmap_file(metric: Metric, top_p: float | None = None) -> str:
    """The heatmap of ``metric``; ``top_p`` names the top-p of a grid with several (else None)."""
    return f"eval_heatmap_{metric.name}.png" if top_p is None else f"eval_heatmap_{metric.name}_p{top_p:g}.png"


def grid_top_ps(grid: dict[str, Any]) -> list[float]:
    """The grid's top-p values, in increasing order (1.0 for a file written before top-p)."""
    return sorted({TOP_P.of(r) for r in summary_rows(grid)})


def short_model(eval_doc: dict[str, Any]) -> str:
    """A plot-title name for the model: a checkpoint's folder name, the hub name, or the RANDOM label."""
    m = eval_doc["model"]
    if m["kind"] == "checkpoint":
        return Path(m["spec"]).name or m["spec"]
    return m["label"] if m["kind"] == "random" else m["spec"]


def _top_k_order(k: int) -> tuple[bool, int]:
    return (k == 0, k)  # "all" last: it is the widest


def grid_matrix(
    grid: dict[str, Any], metric: str, top_p: float | None = None
) -> tuple[list[float], list[int], np.ndarray, np.ndarray | None]:
    """(temperatures, top_ks, values[t, k], half-widths[t, k] of the intervals or None when no row
    has one) of ``metric`` from the grid's per-setting rows at ``top_p`` (None: the grid's only,
    or smallest, top-p); NaN where a value is missing."""
    top_p = grid_top_ps(grid)[0] if top_p is None else top_p
    rows = [r for r in summary_rows(grid) if TOP_P.of(r) == top_p]
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


def plot_heatmap(eval_doc: dict[str, Any], metric: Metric, path: Path, top_p: float | None = None) -> Path:
    """A temperature x top-k heatmap of ``metric`` (over seeds) at ``top_p`` (see
    :func:`grid_matrix`), annotated cell by cell, with the interval's half-width under each value
    where the rows carry intervals."""
    temps, ks, mat, half = grid_matrix(eval_doc["grid"], metric.name, top_p)
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
    at_p = "" if top_p is None else f", top-p {TOP_P.format(top_p)}"
    ax.set_title(f"{metric.title} ({short_model(eval_doc)}; {metric.direction})\nover seeds {seeds}{at_p}",
                 fontsize=9)
    return _save_png(fig, path)


def plot_fluency_vs_diversity(eval_doc: dict[str, Any], path: Path) -> Path:
    """distinct-2 (x) against generation perplexity (y, log), one labelled point per setting
    (error bars where the rows carry intervals), and the dataset's human continuations as a star."""
    grid = eval_doc["grid"]
    x_metric, y_metric = METRIC_BY_NAME["distinct_2"], METRIC_BY_NAME["generation_perplexity"]
    fig, ax = plt.subplots(figsize=(8, 6))
    cmap = plt.get_cmap("coolwarm")
    top_ps = grid_top_ps(grid)
    markers = "osD^vP*X"
    has_bars = False
    for n, p in enumerate(top_ps):
        temps, ks, d2, d2_half = grid_matrix(grid, x_metric.name, p)
        _, _, ppl, ppl_half = grid_matrix(grid, y_metric.name, p)
        has_bars = has_bars or d2_half is not None or ppl_half is not None
        p_label = f",p={TOP_P.format(p)}" if len(top_ps) > 1 else ""
        for i, t in enumerate(temps):
            color = cmap(i / max(1, len(temps) - 1))
            xs, ys = d2[i], ppl[i]
            ax.scatter(xs, ys, color=color, label=f"T={t:g}{p_label}", s=40, edgecolor="black", linewidth=0.5,
                       zorder=3, marker=markers[n % len(markers)])
            if d2_half is not None or ppl_half is not None:
                ax.errorbar(xs, ys, xerr=None if d2_half is None else np.nan_to_num(d2_half[i]),
                            yerr=None if ppl_half is None else np.nan_to_num(ppl_half[i]),
                            fmt="none", ecolor=color, elinewidth=1, capsize=2, zorder=2)
            for j, k in enumerate(ks):
                if np.isfinite(xs[j]) and np.isfinite(ys[j]):
                    ax.annotate(f"T={t:g},k={TOP_K.format(k)}{p_label}", (xs[j], ys[j]), fontsize=7,
                                xytext=(3, 3), textcoords="offset points")
    human = grid.get("human")
    if human and human.get(y_metric.name):
        ax.scatter([human[x_metric.name]], [human[y_metric.name]], marker="*", s=250, color="gold",
                   edgecolor="black", label="human text (dataset)", zorder=5)
    ax.set_yscale("log")
    ax.set_xlabel(f"{x_metric.title} (corpus-level unique bigrams / bigrams): diversity →")
    ax.set_ylabel(f"{y_metric.title} under the model (log): ← fluency")
    bars = "; bars: 95% intervals" if has_bars else ""
    ax.set_title(f"Fluency vs diversity per setting ({short_model(eval_doc)} on {grid['config']['dataset']}, "
                 f"over seeds {grid['config']['seeds']}{bars})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save_png(fig, path)


def measured_metrics(grid: dict[str, Any]) -> list[Metric]:
    """The shown metrics with a value in at least one setting row (MAUVE is absent from a grid run
    without it, or from a file written before it)."""
    rows = summary_rows(grid)
    return [m for m in SHOWN_METRICS if any(r["metrics"].get(m.name) is not None for r in rows)]


def write_eval_plots(eval_doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """A heatmap per measured shown metric (one set per top-p, the files suffixed with it when the grid has
    several) and the scatter into ``out_dir``; returns the files written (none without a grid)."""
    if not eval_doc.get("grid") or not eval_doc["grid"]["cells"]:
        return []
    top_ps = grid_top_ps(eval_doc["grid"])
    metrics = measured_metrics(eval_doc["grid"])
    if len(top_ps) == 1:
        paths = [plot_heatmap(eval_doc, m, out_dir / heatmap_file(m)) for m in metrics]
    else:
        paths = [plot_heatmap(eval_doc, m, out_dir / heatmap_file(m, p), p) for p in top_ps for m in metrics]
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


def render_eval_section(eval_doc: dict[str, Any], out_dir: Path, *, bench_doc: dict[str, Any] | None = None) -> str:
    """Markdown: perplexity table, LAMBADA, the grid table with the human row, the images that
    exist in ``out_dir`` (linked relatively, so the report renders on GitHub), and the quality
    cost of each precision, beside its speed when ``bench_doc`` (the run directory's bench.json)
    is given."""
    lines = ["## Evaluation", ""]
    lines += _perplexity_lines(eval_doc.get("perplexity") or [])
    if eval_doc.get("lambada"):
        lines += _lambada_lines(eval_doc["lambada"])
    grid = eval_doc.get("grid")
    if grid and grid["cells"]:
        lines += _grid_lines(grid, out_dir)
    if eval_doc.get("precision"):
        lines += precision_lines(eval_doc["precision"], bench_doc)
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


def _cell(metric: Metric, row_metrics: dict[str, Any], intervals: dict[str, Any] | None, marks: str = "") -> str:
    return format_value(metric, row_metrics.get(metric.name), (intervals or {}).get(metric.name)) + marks


def _settings_key(settings: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(s.of(settings) for s in SETTINGS)


def _significant_marks(grid: dict[str, Any]) -> dict[tuple[Any, ...], dict[str, str]]:
    """{setting: {metric: markers}}: the axes along which the setting's value differs significantly
    from the previous setting's (see :data:`MARKERS`)."""
    marks: dict[tuple[Any, ...], dict[str, str]] = {}
    for t in (grid.get("neighbour_tests") or {}).get("comparisons", []):
        if t["significant"]:
            row = marks.setdefault(_settings_key(t["right"]), {})
            row[t["metric"]] = row.get(t["metric"], "") + MARKERS.get(t["axis"], "*")
    return marks


def _preset_lines(grid: dict[str, Any]) -> list[str]:
    """The preset's rows: ours (with the interval) beside the published value, per shared metric."""
    preset = grid.get("preset")
    if not preset:
        return []
    published_names = list(preset["human"])
    metrics = [METRIC_BY_NAME[name] for name in published_names]
    by_setting = {_settings_key(r): r for r in summary_rows(grid)}
    lines = [f"#### {preset['name']} preset: ours beside the published values", "",
             f"Source: {preset['source']} {preset['caveat']}"
             + (f" {preset['model_note']}" if preset.get("model_note") else ""), "",
             "| row | " + " | ".join(f"{m.title} (ours) | published" for m in metrics) + " |",
             "|---|" + "---:|---:|" * len(metrics)]
    for row in preset["rows"]:
        ours = by_setting.get(_settings_key(row))
        cells = []
        for m in metrics:
            value = "n/a" if ours is None else _cell(m, ours["metrics"], ours.get("intervals"))
            cells += [value, format_value(m, row["published"][m.name])]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    human = grid.get("human") or {}
    cells = []
    for m in metrics:
        cells += [_cell(m, human, grid.get("human_intervals")) if human else "n/a",
                  format_value(m, preset["human"][m.name])]
    lines += ["| human text | " + " | ".join(cells) + " |", ""]
    return lines


def _mauve_lines(grid: dict[str, Any]) -> list[str]:
    mauve = grid.get("mauve")
    if not mauve:
        return ["MAUVE was not scored in this run (`--no-mauve`, or a file written before it).", ""]
    sizes = sorted({s["q_samples"] for s in mauve["settings"]})
    q = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    clusters = sorted({s["num_clusters"] for s in mauve["settings"] if s.get("num_clusters") is not None})
    lines = [(f"MAUVE: featurizer {mauve['featurizer']}, P = {mauve['p_samples']} human texts of the dataset, "
             f"Q = {q} non-empty samples per setting (all seeds), {', '.join(map(str, clusters)) or 'no'} k-means "
             f"clusters, k-means seed {mauve['seed']}; no interval (a replicate would refit the clustering). "
             f"{mauve.get('comparable', '')}"), ""]
    for s in mauve["settings"]:
        if s.get("note") or s.get("left_out_empty"):
            named = ", ".join(f"{t.label}={t.format(t.of(s))}" for t in SETTINGS)
            why = s.get("note") or ""
            left = f"{s['left_out_empty']} empty samples left out" if s.get("left_out_empty") else ""
            lines.append(f"- {named}: {'; '.join(x for x in (why, left) if x)}")
    if lines[-1] != "":
        lines.append("")
    return lines


def _significance_lines(grid: dict[str, Any]) -> list[str]:
    tests = grid.get("neighbour_tests")
    if not tests or not tests["comparisons"]:
        return []
    comparisons = tests["comparisons"]
    significant = [t for t in comparisons if t["significant"]]
    axes = ", ".join(f"{marker} {next(s.title for s in SETTINGS if s.name == axis)}"
                     for axis, marker in MARKERS.items() if any(t["axis"] == axis for t in comparisons))
    lines = [
        (f"Neighbour differences ({axes}) mark a value that differs significantly from the previous setting along "
         f"that axis, the other settings fixed: {len(significant)} of {len(comparisons)} comparisons. Test: "
         f"{tests['test']}."),
        "",
    ]
    if significant:
        lines += ["<details><summary>Significant neighbour differences (difference [95% interval], p)</summary>",
                  "", "| metric | from | to | difference | p |", "|---|---|---|---:|---:|"]
        for t in significant:
            m = METRIC_BY_NAME[t["metric"]]
            fmt = ".1f" if m.fmt == "d" else m.fmt
            named = [", ".join(f"{s.label}={s.format(s.of(side))}" for s in SETTINGS)
                     for side in (t["left"], t["right"])]
            lines.append(f"| {m.title} | {named[0]} | {named[1]} | {format(t['difference'], fmt)} "
                         f"[{format(t['low'], fmt)}, {format(t['high'], fmt)}] | {t['p_value']:.3f} |")
        lines += ["", "</details>", ""]
    return lines


def _grid_lines(grid: dict[str, Any], out_dir: Path) -> list[str]:
    cfg = grid["config"]
    rows = sorted(summary_rows(grid), key=lambda r: (TOP_P.of(r), r["temperature"], _top_k_order(r["top_k"])))
    has_intervals = any(r.get("intervals") for r in rows) or bool(grid.get("human_intervals"))
    info = grid.get("intervals")
    how = (f" with [95% interval] (cluster bootstrap over prompts, {info['n_resamples']} resamples, "
           f"{info.get('weighted_resamples', info['n_resamples'])} for self-BLEU and Zipf, "
           f"resampler seed {info['seed']})" if info else " with [95% interval]") if has_intervals else ""
    value = ("Values are over all seeds' samples, distinct-n and self-BLEU within each seed's cell (the sample size of "
             "the human row)" if info else "Values are means over seeds")
    setup = (f"{cfg['num_prompts']} prompts of {cfg['prompt_tokens']} tokens cut at evenly spaced offsets of "
             f"{cfg['dataset']}'s eval split, {cfg['max_new_tokens']} new tokens each, seeds {cfg['seeds']}, "
             f"batch {cfg['batch_size']}; {len(grid['cells'])} cells in {grid['seconds']:.1f} s. "
             f"{value}{how}; every seed's cell, the per-sample distinct-n and the counts are in the CSV.")
    marks = _significant_marks(grid)
    lines = [
        "### Sampling grid",
        "",
        setup,
        "",
        "| " + " | ".join([*(s.title for s in SETTINGS), *(m.title for m in SHOWN_METRICS)]) + " |",
        "|" + "---:|" * (len(SETTINGS) + len(SHOWN_METRICS)),
    ]
    for r in rows:
        settings = [s.format(s.of(r)) for s in SETTINGS]
        row_marks = marks.get(_settings_key(r), {})
        values = [_cell(m, r["metrics"], r.get("intervals"), row_marks.get(m.name, "")) for m in SHOWN_METRICS]
        lines.append("| " + " | ".join([*settings, *values]) + " |")
    human = grid.get("human")
    if human:
        label = ["human text", *("" for _ in SETTINGS[1:])]
        lines.append("| " + " | ".join([*label, *(_cell(m, human, grid.get("human_intervals"))
                                                  for m in SHOWN_METRICS)]) + " |")
    lines.append("")
    lines += _significance_lines(grid)
    lines += _mauve_lines(grid)
    lines += _preset_lines(grid)
    lines += ["Metrics (direction; definition):", ""]
    lines += [f"- **{m.title}** ({m.direction}): {m.definition}" for m in METRICS if m.shown]
    lines.append("")
    if (out_dir / SCATTER).exists():
        lines += [f"![fluency vs diversity]({SCATTER})", ""]
    top_ps = grid_top_ps(grid)
    shown = measured_metrics(grid)
    files = [(m, None) for m in shown] if len(top_ps) == 1 else [(m, p) for p in top_ps for m in shown]
    lines += [f"![{m.title}{'' if p is None else f' (top-p {TOP_P.format(p)})'}]({heatmap_file(m, p)})"
              for m, p in files if (out_dir / heatmap_file(m, p)).exists()]
    lines.append("")
    first_seed = cfg["seeds"][0]
    examples = [c for c in grid["cells"] if c.get("example_texts") and c["seed"] == first_seed]
    if examples:
        lines += [f"<details><summary>Example continuations (first sample per cell, seed {first_seed})</summary>", ""]
        for c in examples:
            text = c["example_texts"][0].replace("\n", " ⏎ ").replace("|", "\\|")
            named = ", ".join(f"{s.label}={s.format(s.of(c))}" for s in SETTINGS)
            lines.append(f"- **{named}**: {text[:300]}")
        lines += ["", "</details>", ""]
    return lines


# --------------------------------------------------------------------------------------------
# the quality cost of precision (gpt2xl.precision), beside each dtype's bench speed
# --------------------------------------------------------------------------------------------

BENCH_SAMPLER = "cached"  # our KV-cached sampler with the tuned kernels: what `gpt2xl generate` runs


def bench_speeds(bench_doc: dict[str, Any]) -> dict[str, list[str]]:
    """{dtype: ["decode tok/s ± spread (model, device, batch N)", …]}: every valid case of our
    cached sampler in ``bench_doc`` (throughput and ratio cases), slowest model first."""
    from bench.records import invalid_reason, is_rate

    found: dict[str, list[tuple[tuple[Any, ...], str]]] = {}
    for bench in bench_doc.get("benchmarks", []):
        info = bench.get("extra_info") or {}
        if info.get("kind") not in ("throughput", "ratios") or info.get("sampler") != BENCH_SAMPLER:
            continue
        if invalid_reason(info) is not None:
            continue
        spread = info.get("decode_tokens_per_s_spread")
        value = f"{info['decode_tokens_per_s']:.1f}" + (f" ± {spread:.1f}" if is_rate(spread) else "")
        where = f"{info['model']}, {info['device']}, batch {info['batch_size']}"
        key = (str(info["model"]), int(info["batch_size"]), int(info["prompt_len"]), int(info["new_tokens"]))
        found.setdefault(str(info["dtype"]), []).append((key, f"{value} ({where})"))
    return {dtype: [text for _, text in sorted(items)] for dtype, items in found.items()}


def _signed(metric: Metric, value: float) -> str:
    fmt = ".1f" if metric.fmt == "d" else metric.fmt
    return format(value, "+" + fmt)


def _delta_cell(metric: Metric, delta: dict[str, Any] | None) -> str:
    if delta is None:
        return "n/a"
    text = f"{_signed(metric, delta['difference'])} [{_signed(metric, delta['low'])}, {_signed(metric, delta['high'])}]"
    return text + (" *" if delta.get("significant") else "")


def precision_lines(entry: dict[str, Any], bench_doc: dict[str, Any] | None = None) -> list[str]:
    """The "Quality cost of precision" section: one row per dtype (perplexity and its delta,
    greedy agreement, each interval metric's delta with its interval and significance), with
    the decode speed bench measured for that dtype when ``bench_doc`` is given."""
    from gpt2xl.metric_table import INTERVAL_METRICS

    ref = entry["reference"]
    text = entry["perplexity_text"]
    grid = entry["config"]["grid"]
    setting = ", ".join(f"{s.title}={s.format(s.of(entry['setting']))}" for s in SETTINGS)
    if tuple(s.of(entry["setting"]) for s in SETTINGS) == (1.0, 0, 1.0):
        setting += " (pure sampling)"
    speeds = bench_speeds(bench_doc) if bench_doc is not None else None
    head = ["dtype", "perplexity", f"Δ vs {ref}", "greedy identical", "mean first divergence",
            *(m.title for m in INTERVAL_METRICS)]
    if speeds is not None:
        head.append("decode tok/s (bench)")
    lines = [
        "### Quality cost of precision",
        "",
        (f"Each dtype against {ref} on the same {grid['num_prompts']} prompts × seeds {grid['seeds']} of the grid "
         f"({grid['max_new_tokens']} new tokens), the model loaded once per dtype. Metrics at {setting}: the {ref} "
         f"row shows each metric's value over all seeds, the other rows the difference dtype − {ref} with its 95% "
         f"interval; * marks a significant difference. Test: {entry['test']}."),
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
    ]
    notes = []
    for row in entry["dtypes"]:
        g = row.get("greedy")
        if g is None:
            cells = [f"{row['dtype']} (reference)", f"{row['perplexity']:.3f}", "—", "—", "—",
                     *(format_value(m, row["metrics"].get(m.name)) for m in INTERVAL_METRICS)]
        else:
            relative = row["perplexity_delta"] / (row["perplexity"] - row["perplexity_delta"])
            divergence = "none diverges" if g["mean_first_divergence"] is None else f"{g['mean_first_divergence']:.2f}"
            deltas = row.get("deltas") or {}
            cells = [row["dtype"], f"{row['perplexity']:.3f}", f"{row['perplexity_delta']:+.3f} ({relative:+.2%})",
                     f"{g['identical']}/{g['prompts']} ({g['identical_fraction']:.0%})", divergence,
                     *(_delta_cell(m, deltas.get(m.name)) for m in INTERVAL_METRICS)]
            notes += [f"- {row['dtype']}: {note}" for note in row.get("notes") or []]
        if speeds is not None:
            cells.append("; ".join(speeds.get(row["dtype"], [])) or "not in bench.json")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        (f"Perplexity: token perplexity on the first {text['tokens']:,} tokens of {text['dataset']}'s eval split "
         f"(context {text['context_length']}, stride {text['stride']}), the same windows in every dtype. Greedy: "
         f"each prompt's greedy continuation in the dtype and in {ref}; identical = every generated token equal "
         "(end-of-text included); mean first divergence = the index of the first differing token, averaged over "
         "the prompts that diverge, as a fraction of the new tokens (0 = at once)."),
        "",
    ]
    if speeds is not None:
        lines += [(f"Speed: decode tok/s of our KV-cached sampler (`{BENCH_SAMPLER}`) from bench.json, the median "
                   "over its rounds ± their spread, for the model, device and batch bench measured (not necessarily "
                   "the model evaluated here); see the throughput section."), ""]
    if notes:
        lines += ["Left out:", "", *notes, ""]
    return lines
