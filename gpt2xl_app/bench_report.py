"""Markdown + PNG report of a throughput run, drawn from its ``bench.json`` only.

``render_bench_section(doc, out_dir)`` returns the Markdown (and writes the plots into
``out_dir``) so a combined report can embed it; ``write_bench_report(run_dir)`` writes
``run_dir/bench.md`` on its own.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from gpt2xl.results import write_text_atomic
from gpt2xl_app.compare import load_bench, ratio_metrics

TOKENS_PLOT = "bench_tokens_per_s.png"
SCALING_PLOT = "bench_decode_scaling.png"
SAMPLER_ORDER = ("reference", "cached", "cached-linear", "compiled", "hf")
SAMPLER_NAMES = {
    "reference": "reference (no cache)",
    "cached": "ours (KV cache)",
    "cached-linear": "ours, split matmuls off",
    "compiled": "ours, static cache + compiled step",
    "hf": "HF generate",
}
ROOFLINE_TARGET = 0.70  # issue #3: fp32 gpt2-xl batch-1 decode at >= 70% of measured bandwidth
CUDA_ROOFLINE_TARGET = 0.50  # issue #3: fp16/bf16 batch-1 decode at >= 50% of measured HBM bandwidth
CUDA_VS_HF_TARGET = 3.0  # issue #3: CUDA-graph decode >= 3x HF generate


def _cases(doc: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [b["extra_info"] for b in doc.get("benchmarks", []) if b.get("extra_info", {}).get("kind") == kind]


def _gb(x: float | None) -> str:
    return "—" if x is None else f"{x / 1e9:.2f}"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "—" if x is None else format(x, fmt)


def _provenance(doc: dict[str, Any]) -> list[str]:
    mi = doc.get("machine_info", {})
    g = mi.get("gpt2xl", {})
    env = g.get("environment", {})
    lines = []
    labels = sorted({c.get("weights_label", "?") + ("\0" if c.get("weights_random") else "")
                     for b in doc.get("benchmarks", []) for c in [b.get("extra_info", {})]})
    for label in labels:
        if label.endswith("\0"):
            lines.append(f"- Weights: **{label[:-1]}** — throughput only; speeds do not depend on weight values")
        else:
            lines.append(f"- Weights: {label}")
    lines.append(f"- Profile: `{g.get('profile', '?')}` ({g.get('profile_description', '')}); model option `{g.get('model', '?')}`")
    lines.append(f"- CPU: {env.get('cpu', mi.get('cpu', {}).get('brand_raw', '?'))} "
                 f"(torch capability {g.get('cpu_capability', '?')}), {env.get('torch_threads', '?')} torch threads "
                 f"of {env.get('cpu_count', '?')} CPUs, RAM {_gb(env.get('ram_bytes'))} GB")
    for gpu in env.get("gpus", []) or []:
        lines.append(f"- GPU: {gpu.get('name')} ({_gb(gpu.get('memory_bytes'))} GB, capability {gpu.get('capability')}), "
                     f"driver {env.get('cuda_driver')}, CUDA {env.get('cuda_version')}")
    if not env.get("gpus"):
        lines.append(f"- GPU: none usable (torch CUDA build: {env.get('cuda_version')}); CUDA cases were skipped")
    lines.append(f"- torch {env.get('torch', '?')}, transformers {env.get('transformers', '?')}, "
                 f"Python {env.get('python', '?')}, git `{env.get('git_sha', '?')}`, run {doc.get('datetime', '?')}")
    for device, probe in (g.get("bandwidth") or {}).items():
        lines.append(f"- Bandwidth ({device}, the roofline basis): **{probe['read_bytes_per_s'] / 1e9:.1f} GB/s** read "
                     f"({probe['read_method']}, median of {probe['repeats']}); copy {probe['copy_bytes_per_s'] / 1e9:.1f} GB/s "
                     f"({probe['copy_method']})")
    for device, probe in (g.get("bandwidth_end") or {}).items():
        start = (g.get("bandwidth") or {}).get(device, {}).get("read_bytes_per_s")
        drift = f" ({probe['read_bytes_per_s'] / start - 1:+.0%} vs the start: a large drift means a busy machine)" if start else ""
        lines.append(f"- Bandwidth ({device}) re-measured after the run: {probe['read_bytes_per_s'] / 1e9:.1f} GB/s read{drift}")
    pm = g.get("peak_memory_method") or {}
    if pm:
        lines.append(f"- Peak memory: CPU = {pm.get('cpu')}; CUDA = {pm.get('cuda')}")
    lines.append("- Sampling: temperature 0.8, top-k 40, fixed length (end-of-text off; HF `min_new_tokens`); "
                 "random prompt ids. Prefill = time to first token; decode tok/s excludes it; achieved GB/s = "
                 "weight bytes × decode steps/s; roofline = achieved / measured read bandwidth. "
                 "HF prefill is a separate `max_new_tokens=1` call, its decode = total − prefill.")
    return lines


def _table(cases: list[dict[str, Any]]) -> list[str]:
    head = ("| sampler | model | device | dtype | batch | prompt | new | prefill ms | decode tok/s | e2e tok/s "
            "| peak mem GB | weights GB | layout | achieved GB/s | roofline |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    order = {s: i for i, s in enumerate(SAMPLER_ORDER)}
    for c in sorted(cases, key=lambda c: (c.get("model", ""), c["device"], c["dtype"], c["batch_size"], c["prompt_len"],
                                          c["new_tokens"], order.get(c["sampler"], 9))):
        layout = c.get("weight_layout", "?")
        if c.get("sampler") == "hf" and c.get("hf_weight_layout"):
            layout = f"HF {c['hf_weight_layout']}"
        elif c.get("split"):
            layout = f"{layout} split"
        lines.append(
            f"| {SAMPLER_NAMES.get(c['sampler'], c['sampler'])} | {c.get('model')} | {c['device']} | {c['dtype']} "
            f"| {c['batch_size']} | {c['prompt_len']} | {c['new_tokens']} | {c['prefill_s'] * 1000:.0f} "
            f"| {c['decode_tokens_per_s']:.2f} | {c['tokens_per_s']:.2f} | {_gb(c.get('peak_memory_bytes'))} "
            f"| {_gb(c.get('weight_bytes'))} | {layout} | {_gb(c.get('achieved_bytes_per_s'))} "
            f"| {_num(c.get('roofline_fraction'))} |"
        )
    return lines


NOISE_BAND = 0.05  # run-to-run spread of decode tok/s seen on the shared 2-core machines


def _read_bandwidth_basis(g: dict[str, Any], device: str) -> float | None:
    """The higher of the start and end read-bandwidth probes: this VM's bandwidth drifts by tens of
    percent, and judging a roofline target against a probe taken in a slow spell would flatter it."""
    values = [
        p.get(device, {}).get("read_bytes_per_s")
        for p in (g.get("bandwidth") or {}, g.get("bandwidth_end") or {})
    ]
    values = [v for v in values if v]
    return max(values) if values else None


def _batch1_groups(throughput: list[dict[str, Any]], device: str) -> list[tuple[tuple, dict[str, dict[str, Any]]]]:
    """Batch-1 cases on ``device``, grouped by (model, hardware name, dtype, prompt, new tokens),
    each group as {sampler: case}, in sorted order: the cases a target compares."""
    groups: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for c in throughput:
        if c["batch_size"] == 1 and c["device"] == device:
            key = (c.get("model"), c.get("device_name") or "", c["dtype"], c["prompt_len"], c["new_tokens"])
            groups[key][c["sampler"]] = c
    return sorted(groups.items())


def _targets(
    throughput: list[dict[str, Any]], scaling: list[dict[str, Any]], g: dict[str, Any] | None = None
) -> list[str]:
    """Issue #3's speed targets, stated as measured (reported, never asserted)."""
    g = g or {}
    lines = []
    for (model, _cpu, dtype, _p, n), s in _batch1_groups(throughput, "cpu"):
        if "cached" in s and "hf" in s:
            r = s["cached"]["decode_tokens_per_s"] / s["hf"]["decode_tokens_per_s"]
            verdict = "met" if r >= 1 else "NOT met"
            if abs(r - 1) < NOISE_BAND:
                verdict += f"; within the ±{NOISE_BAND:.0%} run-to-run noise, i.e. parity"
            lines.append(f"- CPU batch 1 {model} {dtype}, {n} new: ours vs HF `generate` decode = **{r:.2f}×** "
                         f"(target ≥ 1.00: {verdict})")
        if "cached" in s and dtype == "fp32":
            c = s["cached"]
            basis = _read_bandwidth_basis(g, c["device"]) or c.get("bandwidth_bytes_per_s")
            f = c["achieved_bytes_per_s"] / basis if basis else c["roofline_fraction"]
            where = (f"{basis / 1e9:.1f} GB/s, the higher of the start and end probes; "
                     f"{c['roofline_fraction']:.0%} of the start probe in the table") if basis else "the start probe"
            lines.append(f"- CPU batch 1 {model} fp32, {n} new: ours at **{f:.0%}** of the read-bandwidth roofline "
                         f"({where}) (target ≥ {ROOFLINE_TARGET:.0%}: {'met' if f >= ROOFLINE_TARGET else 'NOT met'})")
        if "cached" in s and "cached-linear" in s and s["cached"].get("split"):
            r = s["cached"]["decode_tokens_per_s"] / s["cached-linear"]["decode_tokens_per_s"]
            lines.append(f"- CPU batch 1 {model} {dtype}, {n} new: split matmuls vs plain `F.linear` decode = "
                         f"**{r:.2f}×** (same run; what the split path adds)")
    lines += _cuda_targets(throughput, g)
    per_sampler: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for c in scaling:
        if c.get("decode_s_per_token"):
            per_sampler[c["sampler"]].append((c["new_tokens"], c["decode_s_per_token"]))
    for sampler, points in sorted(per_sampler.items(), key=lambda kv: SAMPLER_ORDER.index(kv[0])):
        points.sort()
        (n0, t0), (n1, t1) = points[0], points[-1]
        lines.append(f"- Per-token decode cost, {SAMPLER_NAMES.get(sampler, sampler)}: {t0 * 1000:.1f} ms at {n0} new → "
                     f"{t1 * 1000:.1f} ms at {n1} new (**{t1 / t0:.2f}×**; flat ≈ 1×, the reference's grows with length)")
    return lines


def _cuda_targets(throughput: list[dict[str, Any]], g: dict[str, Any]) -> list[str]:
    """The CUDA half of issue #3's targets: compiled (CUDA-graph) decode vs HF and vs HBM bandwidth."""
    lines = []
    for (model, gpu, dtype, _p, n), s in _batch1_groups(throughput, "cuda"):
        compiled = s.get("compiled")
        if compiled is None:
            continue
        if "hf" in s:
            r = compiled["decode_tokens_per_s"] / s["hf"]["decode_tokens_per_s"]
            lines.append(f"- CUDA ({gpu}) batch 1 {model} {dtype}, {n} new: compiled decode vs HF `generate` = "
                         f"**{r:.2f}×** (target ≥ {CUDA_VS_HF_TARGET:.0f}×: {'met' if r >= CUDA_VS_HF_TARGET else 'NOT met'})")
        basis = _read_bandwidth_basis(g, "cuda") or compiled.get("bandwidth_bytes_per_s")
        if basis and compiled.get("achieved_bytes_per_s"):
            f = compiled["achieved_bytes_per_s"] / basis
            lines.append(f"- CUDA ({gpu}) batch 1 {model} {dtype}, {n} new: compiled decode at **{f:.0%}** of the "
                         f"HBM read roofline ({basis / 1e9:.0f} GB/s measured) (target ≥ {CUDA_ROOFLINE_TARGET:.0%}: "
                         f"{'met' if f >= CUDA_ROOFLINE_TARGET else 'NOT met'})")
    return lines


def _expand_ratio_cases(ratio_cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One pseudo-case per sampler of each interleaved run, for the bar plot."""
    out = []
    for c in ratio_cases:
        for sampler, v in (c.get("samplers") or {}).items():
            out.append({**c, "sampler": sampler, "decode_tokens_per_s": v["decode_tokens_per_s"]})
    return out


def _plot_tokens(throughput: list[dict[str, Any]], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for c in throughput:
        key = f"{c['device']} {c['dtype']}\n{c.get('model')} b{c['batch_size']}"
        groups[key].setdefault(c["sampler"], c["decode_tokens_per_s"])  # first n per sampler
    if not groups:
        return False
    keys = sorted(groups)
    samplers = [s for s in SAMPLER_ORDER if any(s in groups[k] for k in keys)]
    width = 0.8 / max(len(samplers), 1)
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(keys)), 4.2))
    for i, s in enumerate(samplers):
        xs = [j + (i - (len(samplers) - 1) / 2) * width for j in range(len(keys))]
        ys = [groups[k].get(s, 0.0) for k in keys]
        bars = ax.bar(xs, ys, width, label=SAMPLER_NAMES.get(s, s))
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(range(len(keys)), keys, fontsize=8)
    ax.set_ylabel("decode tokens/s (excl. prefill)")
    ax.set_title("Decode throughput by device × dtype × sampler")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_scaling(scaling: list[dict[str, Any]], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for c in scaling:
        if c.get("decode_s_per_token"):
            series[f"{SAMPLER_NAMES.get(c['sampler'], c['sampler'])} ({c.get('model')} {c['dtype']})"].append(
                (c["new_tokens"], c["decode_s_per_token"] * 1000, c["decode_s"]))
    if not series:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, pts in sorted(series.items()):
        pts.sort()
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax2.plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=name)
    ax1.set_xlabel("generated tokens")
    ax1.set_ylabel("decode ms per token")
    ax1.set_title("Per-token cost: flat with a KV cache")
    ax2.set_xlabel("generated tokens")
    ax2.set_ylabel("total decode time (s)")
    ax2.set_title("Total decode: linear vs quadratic")
    for ax in (ax1, ax2):
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def render_bench_section(bench_doc: dict[str, Any], out_dir: Path) -> str:
    """Markdown for one throughput run (provenance, per-case table, ratios, target checks, plot
    links relative to ``out_dir``); writes the PNGs into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    throughput = _cases(bench_doc, "throughput")
    scaling = _cases(bench_doc, "scaling")
    ratio_cases = _cases(bench_doc, "ratios")
    md = ["## Throughput", "", *_provenance(bench_doc), ""]
    if throughput:
        md += ["### Cases", "", *_table(throughput), ""]
    if ratio_cases:
        md += ["### Interleaved sampler runs (the CI gate's measurement)", "", *_table(ratio_cases), ""]
        for c in ratio_cases:
            per = c.get("samplers", {})
            md.append(f"- {c.get('model')} {c['device']} {c['dtype']} b{c['batch_size']} p{c['prompt_len']} n{c['new_tokens']}: "
                      + ", ".join(f"{SAMPLER_NAMES.get(s, s)} {v['decode_tokens_per_s']:.2f} tok/s" for s, v in per.items()))
        md.append("")
    ratios = ratio_metrics(bench_doc)
    if ratios:
        md += ["### Ratios (measured within this run)", "", "| group : ratio | value |", "|---|---|"]
        md += [f"| {name} | {value:.2f}× |" for name, value in sorted(ratios.items())]
        md.append("")
    targets = _targets(throughput, scaling, bench_doc.get("machine_info", {}).get("gpt2xl", {}))
    if targets:
        md += ["### Speed targets (issue #3; reported, not asserted)", "", *targets, ""]
    if scaling:
        md += ["### Decode cost vs generated length", "", *_table(scaling), ""]
    if _plot_tokens(throughput or _expand_ratio_cases(ratio_cases), out_dir / TOKENS_PLOT):
        md += [f"![decode tokens/s by dtype × sampler × device]({TOKENS_PLOT})", ""]
    if _plot_scaling(scaling, out_dir / SCALING_PLOT):
        md += [f"![decode cost vs generated length]({SCALING_PLOT})", ""]
    if not (throughput or scaling or ratio_cases):
        md += ["No case ran (all skipped?): see the pytest output for the reasons.", ""]
    return "\n".join(md)


def write_bench_report(run_dir: Path) -> Path:
    """Read ``run_dir/bench.json``, write ``run_dir/bench.md`` and the PNGs; return the .md path.
    Raises ResultError when bench.json is missing or not a benchmark run."""
    run_dir = Path(run_dir)
    doc = load_bench(run_dir / "bench.json")
    text = "# Throughput benchmark\n\n" + render_bench_section(doc, run_dir) + "\n"
    return write_text_atomic(run_dir / "bench.md", text)
