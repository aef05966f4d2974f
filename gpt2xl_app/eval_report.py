"""Plots and Markdown of the eval layer, drawn from ``eval.json`` alone (never from a live run).

:func:`read_eval_doc` reads that file and checks every field the plots and the report read
against :data:`EVAL_SCHEMA`, so a hand-edited, truncated or foreign file fails with one line
naming the file and the field, never with a KeyError inside a plot.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI machines
import matplotlib.pyplot as plt
import numpy as np

from gpt2xl.results import write_bytes_atomic

# metric -> (title, definition shown under the title)
HEATMAP_METRICS: dict[str, tuple[str, str]] = {
    "distinct_1": ("distinct-1", "unique unigrams / all unigrams over the cell's samples (corpus-level)"),
    "distinct_2": ("distinct-2", "unique bigrams / all bigrams over the cell's samples (corpus-level)"),
    "distinct_3": ("distinct-3", "unique trigrams / all trigrams over the cell's samples (corpus-level)"),
    "self_bleu_4": ("self-BLEU-4", "mean BLEU-4 of each sample against the others (lower = more diverse)"),
    "repetition_rate": ("repetition rate", "fraction of samples ending in a phrase repeated >= 3 times"),
    "generation_perplexity": ("generation perplexity", "exp(mean NLL of generated tokens) under the same model"),
    "mean_length_tokens": ("mean length", "generated tokens per sample (end-of-text excluded)"),
    "eot_rate": ("end-of-text rate", "fraction of samples that stopped at <|endoftext|>"),
}

CSV_COLUMNS = ("temperature", "top_k", "seed", "seconds")


# --------------------------------------------------------------------------------------------
# eval.json's schema: the fields the readers below rely on (others may be present)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Maybe:
    """Schema node: the field may be absent or null; otherwise it matches ``node``."""

    node: object


# Schema nodes: ``str``/``int``/``dict`` (any object), ``float`` (any JSON number), ``[node]``
# (an array of node), ``{key: node}`` (an object with these keys; the key ``"*"`` stands for
# every key not named), or :class:`Maybe`.
_CELL_METRICS: dict[str, object] = {
    **dict.fromkeys(HEATMAP_METRICS, float),
    "generation_perplexity": Maybe(float),  # null when nothing was generated
    "*": Maybe(float),  # the other metrics go to the CSV as they are
}
_DATASET: dict[str, object] = {"source": str, "sha256": Maybe(str), "split": str}
EVAL_SCHEMA: dict[str, object] = {
    "model": {"label": str, "kind": str, "spec": str, "files": [str], "sha256": Maybe(str),
              "num_parameters": int, "config": dict, "device": str, "dtype": str, "seed": Maybe(int)},
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
                   "batch_size": int, "seeds": [int]},
        "seconds": float,
        "human": Maybe(_CELL_METRICS),
        "cells": [{"temperature": float, "top_k": int, "seed": int, "seconds": float, "metrics": _CELL_METRICS,
                   "example_texts": Maybe([str])}],
    }),
}

_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", dict: "an object"}


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        text = repr(value)
        return f"the string {text if len(text) <= 40 else text[:37] + '...'}"
    return "an array" if isinstance(value, list) else "an object"


def _field(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def schema_problem(value: object, node: object, where: str = "") -> str | None:
    """Where and how ``value`` (parsed JSON) departs from schema ``node``, or None when it fits;
    ``where`` is the dotted path of ``value`` (empty at the top)."""
    if isinstance(node, Maybe):
        return None if value is None else schema_problem(value, node.node, where)
    if isinstance(node, (dict, list)):
        members = _members(value, node, where)
        if isinstance(members, str):
            return members
        problems = (schema_problem(v, n, w) for v, n, w in members)
        return next((problem for problem in problems if problem is not None), None)
    # ``float`` stands for any JSON number; true and false are neither numbers nor integers.
    wanted = (int, float) if node is float else node
    if isinstance(value, bool) or not isinstance(value, wanted):  # type: ignore[arg-type]
        return f"{where} must be {_JSON_NAMES[node]}, got {_json_kind(value)}"  # type: ignore[index]
    return None


def _members(
    value: object, node: dict[str, object] | list[object], where: str
) -> str | list[tuple[object, object, str]]:
    """(value, schema node, path) of every member of ``value`` that ``node`` constrains, or the
    problem when ``value`` is not the array or object ``node`` asks for, or lacks a key."""
    if isinstance(node, list):
        if not isinstance(value, list):
            return f"{where} must be an array, got {_json_kind(value)}"
        return [(item, node[0], f"{where}[{i}]") for i, item in enumerate(value)]
    if not isinstance(value, dict):
        return f"{where or 'the document'} must be an object, got {_json_kind(value)}"
    members = []
    for key, sub in node.items():
        if key in value and key != "*":
            members.append((value[key], sub, _field(where, key)))
        elif key != "*" and not isinstance(sub, Maybe):
            return f"{_field(where, key)} is missing"
    if "*" in node:
        members += [(item, node["*"], _field(where, key)) for key, item in value.items() if key not in node]
    return members


def read_eval_doc(path: Path) -> dict[str, Any]:
    """``eval.json`` at ``path``, read and checked against :data:`EVAL_SCHEMA`; ResultError naming
    the file and the first field that departs from it."""
    from gpt2xl.errors import ResultError
    from gpt2xl.results import read_result

    doc = read_result(path, kind="eval")
    problem = schema_problem(doc, EVAL_SCHEMA)
    if problem is not None:
        raise ResultError(
            f"{path} is not a usable eval result: {problem}; rewrite it with `gpt2xl eval run` "
            "or restore the original file."
        )
    return doc


def short_model(eval_doc: dict[str, Any]) -> str:
    """A plot-title name for the model: a checkpoint's folder name, the hub name, or the RANDOM label."""
    m = eval_doc["model"]
    if m["kind"] == "checkpoint":
        return Path(m["spec"]).name or m["spec"]
    return m["label"] if m["kind"] == "random" else m["spec"]


def _k_label(k: int) -> str:
    return "all" if k == 0 else str(k)


def grid_mean(cells: list[dict[str, Any]], metric: str) -> tuple[list[float], list[int], np.ndarray]:
    """(temperatures, top_ks, matrix[t, k]) of ``metric`` averaged over seeds (NaN for None)."""
    temps = sorted({c["temperature"] for c in cells})
    ks = sorted({c["top_k"] for c in cells}, key=lambda k: (k == 0, k))  # "all" last: it is the widest
    mat = np.full((len(temps), len(ks)), np.nan)
    for i, t in enumerate(temps):
        for j, k in enumerate(ks):
            vals = [c["metrics"][metric] for c in cells if c["temperature"] == t and c["top_k"] == k]
            vals = [v for v in vals if v is not None]
            if vals:
                mat[i, j] = float(np.mean(vals))
    return temps, ks, mat


def grid_csv(eval_doc: dict[str, Any]) -> str:
    """One row per cell (temperature, top_k, seed) with every metric; the human reference last,
    with temperature/top_k/seed empty and ``source`` = human."""
    cells = eval_doc["grid"]["cells"]
    metrics = list(cells[0]["metrics"]) if cells else []
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["source", *CSV_COLUMNS, *metrics])
    for c in cells:
        writer.writerow(["model", c["temperature"], c["top_k"], c["seed"], f"{c['seconds']:.3f}",
                         *("" if c["metrics"].get(m) is None else c["metrics"][m] for m in metrics)])
    human = eval_doc["grid"].get("human")
    if human:
        writer.writerow(["human", "", "", "", "", *("" if human.get(m) is None else human.get(m) for m in metrics)])
    return out.getvalue()


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


def plot_heatmap(eval_doc: dict[str, Any], metric: str, path: Path) -> Path:
    """A temperature x top-k heatmap of ``metric`` (mean over seeds), annotated cell by cell."""
    title, definition = HEATMAP_METRICS[metric]
    temps, ks, mat = grid_mean(eval_doc["grid"]["cells"], metric)
    log = metric == "generation_perplexity"
    shown = np.log10(mat) if log else mat
    fig, ax = plt.subplots(figsize=(1.3 * len(ks) + 2.8, 0.8 * len(temps) + 2.0))
    im = ax.imshow(shown, cmap="viridis", aspect="auto", origin="lower")
    cbar = fig.colorbar(im, ax=ax)
    cbar.set_label(f"log10({title})" if log else title)
    ax.set_xticks(range(len(ks)), [_k_label(k) for k in ks])
    ax.set_yticks(range(len(temps)), [f"{t:g}" for t in temps])
    ax.set_xlabel("top-k (all = no truncation)")
    ax.set_ylabel("temperature")
    finite = shown[np.isfinite(shown)]
    mid = float(np.mean(finite)) if finite.size else 0.0
    for i in range(len(temps)):
        for j in range(len(ks)):
            v = mat[i, j]
            text = "n/a" if math.isnan(v) else (f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}")
            color = "black" if np.isfinite(shown[i, j]) and shown[i, j] > mid else "white"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=9)
    seeds = eval_doc["grid"]["config"]["seeds"]
    ax.set_title(f"{title} ({short_model(eval_doc)})\n{definition}\nmean over seeds {seeds}", fontsize=9)
    return _save_png(fig, path)


def plot_fluency_vs_diversity(eval_doc: dict[str, Any], path: Path) -> Path:
    """distinct-2 (x) against generation perplexity (y, log), one labelled point per cell, and the
    dataset's human continuations as a star."""
    cells = eval_doc["grid"]["cells"]
    temps, ks, d2 = grid_mean(cells, "distinct_2")
    _, _, ppl = grid_mean(cells, "generation_perplexity")
    fig, ax = plt.subplots(figsize=(8, 6))
    cmap = plt.get_cmap("coolwarm")
    for i, t in enumerate(temps):
        color = cmap(i / max(1, len(temps) - 1))
        xs, ys = d2[i], ppl[i]
        ax.scatter(xs, ys, color=color, label=f"T={t:g}", s=40, edgecolor="black", linewidth=0.5)
        for j, k in enumerate(ks):
            if np.isfinite(xs[j]) and np.isfinite(ys[j]):
                ax.annotate(f"T={t:g},k={_k_label(k)}", (xs[j], ys[j]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
    human = eval_doc["grid"].get("human")
    if human and human.get("generation_perplexity"):
        ax.scatter([human["distinct_2"]], [human["generation_perplexity"]], marker="*", s=250, color="gold",
                   edgecolor="black", label="human text (dataset)", zorder=5)
    ax.set_yscale("log")
    ax.set_xlabel("distinct-2 (corpus-level unique bigrams / bigrams): diversity →")
    ax.set_ylabel("perplexity of the generations under the model (log): ← fluency")
    ax.set_title(f"Fluency vs diversity per cell ({short_model(eval_doc)} on {eval_doc['grid']['config']['dataset']}, "
                 f"seeds {eval_doc['grid']['config']['seeds']})",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save_png(fig, path)


def write_eval_plots(eval_doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """Every heatmap and the scatter into ``out_dir``; returns the files written (none without a grid)."""
    if not eval_doc.get("grid") or not eval_doc["grid"]["cells"]:
        return []
    paths = [plot_heatmap(eval_doc, m, out_dir / f"eval_heatmap_{m}.png") for m in HEATMAP_METRICS]
    paths.append(plot_fluency_vs_diversity(eval_doc, out_dir / "eval_fluency_vs_diversity.png"))
    return paths


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


def _grid_lines(grid: dict[str, Any], out_dir: Path) -> list[str]:
    cfg = grid["config"]
    setup = (f"{cfg['num_prompts']} prompts of {cfg['prompt_tokens']} tokens cut at evenly spaced offsets of "
             f"{cfg['dataset']}'s eval split, {cfg['max_new_tokens']} new tokens each, seeds {cfg['seeds']}, "
             f"batch {cfg['batch_size']}; {len(grid['cells'])} cells in {grid['seconds']:.1f} s. "
             "distinct-n is corpus-level (unique n-grams / all n-grams over the cell); the per-sample mean is in the "
             "CSV. Values are means over seeds.")
    lines = [
        "### Sampling grid",
        "",
        setup,
        "",
        ("| T | top-k | distinct-1 | distinct-2 | distinct-3 | self-BLEU-4 | repetition | gen. ppl | mean len "
         "| EOT rate |"),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = ("distinct_1", "distinct_2", "distinct_3", "self_bleu_4", "repetition_rate",
            "generation_perplexity", "mean_length_tokens", "eot_rate")
    temps, ks, _ = grid_mean(grid["cells"], "distinct_1")
    mats = {m: grid_mean(grid["cells"], m)[2] for m in keys}
    for i, t in enumerate(temps):
        for j, k in enumerate(ks):
            vals = [mats[m][i, j] for m in keys]
            lines.append(f"| {t:g} | {_k_label(k)} | " + " | ".join(
                "n/a" if math.isnan(v) else _fmt(float(v)) for v in vals) + " |")
    human = grid.get("human")
    if human:
        lines.append("| human | text | " + " | ".join(_fmt(human.get(m)) for m in keys) + " |")
    lines.append("")
    if (out_dir / "eval_fluency_vs_diversity.png").exists():
        lines += ["![fluency vs diversity](eval_fluency_vs_diversity.png)", ""]
    lines += [f"![{title}](eval_heatmap_{m}.png)" for m, (title, _) in HEATMAP_METRICS.items()
              if (out_dir / f"eval_heatmap_{m}.png").exists()]
    lines.append("")
    first_seed = cfg["seeds"][0]
    examples = [c for c in grid["cells"] if c.get("example_texts") and c["seed"] == first_seed]
    if examples:
        lines += [f"<details><summary>Example continuations (first sample per cell, seed {first_seed})</summary>", ""]
        for c in examples:
            text = c["example_texts"][0].replace("\n", " ⏎ ").replace("|", "\\|")
            lines.append(f"- **T={c['temperature']:g}, k={_k_label(c['top_k'])}**: {text[:300]}")
        lines += ["", "</details>", ""]
    return lines
