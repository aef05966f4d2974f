"""Markdown + PNG report of a throughput run, drawn from its ``bench.json`` only.

``render_bench_section(doc, out_dir)`` returns the Markdown (and writes the plots into
``out_dir``) so a combined report can embed it; ``write_bench_report(run_dir)`` writes
``run_dir/bench.md`` on its own.

Every speed is a median over the case's rounds with its spread (``±``: the IQR from 4 rounds on,
max − min for 2–3); a case without a valid round reads "invalid (reason)" and is never plotted.
Roofline fractions are taken against the run's basis: the best of every bandwidth probe and every
engine's achieved weight-read rate, so none exceeds 100%.
"""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.records import (
    NOISY_SPREAD,
    RATIOS,
    engine_candidates,
    invalid_reason,
    is_rate,
    probe_candidates,
    probe_summary,
    roofline_basis,
    roofline_fraction,
)
from gpt2xl.results import write_bytes_atomic, write_text_atomic
from gpt2xl.validation import check_output_dir, check_output_file
from gpt2xl_app.compare import RatioEntry, load_bench, ratio_entries

TOKENS_PLOT = "bench_tokens_per_s.png"
SCALING_PLOT = "bench_decode_scaling.png"
SAMPLER_ORDER = ("reference", "cached", "cached-plain", "compiled", "hf", "hf-compiled", "llamacpp", "llamacpp-q8_0")
SAMPLER_NAMES = {
    "reference": "reference (no cache)",
    "cached": "ours (KV cache, tuned kernels)",
    "cached-plain": "ours, plain F.linear",
    "compiled": "ours, static cache + compiled step",
    "hf": "HF generate",
    "hf-compiled": "HF generate, static cache + compile",
    "llamacpp": "llama.cpp (same weights)",
    "llamacpp-q8_0": "llama.cpp q8_0",
}
SAMPLER_COLORS = {s: f"C{i}" for i, s in enumerate(SAMPLER_ORDER)}
# This issue's speed targets (reported, never asserted).
VS_LLAMACPP_TARGET = 1.0  # ours >= llama.cpp, decode (fp32; bf16 where native) and prefill
VS_HF_TARGET = 2.0  # ours >= 2x HF generate decode
BF16_VS_FP32_TARGET = 1.8  # our bf16 >= 1.8x our fp32 where bf16 is native
CUDA_ROOFLINE_TARGET = 0.60  # compiled decode >= 60% of the measured HBM read bandwidth
CUDA_VS_HF_TARGET = 3.0  # compiled (CUDA-graph) decode >= 3x HF generate
CUDA_VS_HF_COMPILED_TARGET = 1.2  # compiled decode >= 1.2x HF generate with a static cache + torch.compile
CUDA_TARGET_DTYPE = "fp16"  # the CUDA targets are set for gpt2-xl batch 1 fp16; other dtypes are shown beside
READ_PROBE_METHODS = ("sum", "threaded-dot")  # probe methods that only read ("copy" counts a write too)


def _cases(doc: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [b["extra_info"] for b in doc.get("benchmarks", []) if b.get("extra_info", {}).get("kind") == kind]


def _g(doc: dict[str, Any]) -> dict[str, Any]:
    return (doc.get("machine_info") or {}).get("gpt2xl") or {}


def _gb(x: float | None) -> str:
    return f"{x / 1e9:.2f}" if is_rate(x) else "—"


def _pm(value: Any, spread: Any, fmt: str = ".2f", scale: float = 1.0) -> str:
    """``median ± spread``; the median alone for one round."""
    if not is_rate(value):
        return "—"
    text = format(value * scale, fmt)
    return f"{text} ± {format(spread * scale, fmt)}" if isinstance(spread, (int, float)) and spread > 0 else text


def _verdict(value: float, target: float) -> str:
    return "met" if value >= target else f"NOT met, {1 - value / target:.0%} short"


def _group_label(group: tuple) -> str:
    model, device, dtype, batch, prompt, new = group
    return f"{model} {device} {dtype} b{batch} p{prompt} n{new}"


# --- roofline ----------------------------------------------------------------------------------------

def doc_roofline_basis(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{device: {"bytes_per_s", "source"}}``: the basis the run stored, raised to any probe or
    engine rate in the document that beats it (so a hand-made or older file cannot yield a
    fraction above 1)."""
    g = _g(doc)
    stored = [(d, b.get("source", "stored basis"), b.get("bytes_per_s"))
              for d, b in (g.get("roofline_basis") or {}).items()]
    old = [(d, f"probe sum ({p.get('read_method', 'start')})", p.get("read_bytes_per_s"))
           for d, p in (g.get("bandwidth") or {}).items()]  # files written before per-method probes
    infos = [b.get("extra_info") or {} for b in doc.get("benchmarks", [])]
    return roofline_basis([*stored, *old, *probe_candidates(g.get("bandwidth_probes") or []),
                           *engine_candidates(infos)])


def _fraction(record: dict[str, Any], basis: dict[str, dict[str, Any]], device: str) -> float | None:
    return roofline_fraction(record.get("achieved_bytes_per_s"), basis.get(device, {}).get("bytes_per_s"))


# --- provenance --------------------------------------------------------------------------------------

def _bench_provenance(doc: dict[str, Any], basis: dict[str, dict[str, Any]]) -> list[str]:
    mi = doc.get("machine_info") or {}
    g = _g(doc)
    env = g.get("environment") or {}
    lines = []
    labels = sorted({(c.get("weights_label") or "?") + ("\0" if c.get("weights_random") else "")
                     for b in doc.get("benchmarks", []) for c in [b.get("extra_info", {})]})
    for label in labels:
        if label.endswith("\0"):
            lines.append(f"- Weights: **{label[:-1]}** — throughput only; speeds do not depend on weight values")
        else:
            lines.append(f"- Weights: {label}")
    lines.append(f"- Profile: `{g.get('profile', '?')}` ({g.get('profile_description', '')}); "
                 f"model option `{g.get('model', '?')}`")
    lines += _budget_lines(g)
    flags = g.get("cpu_flags")
    native = g.get("cpu_native") or {}
    native_text = ", ".join(f"{k} {'native' if v else 'emulated'}" for k, v in native.items())
    lines.append(f"- CPU: {env.get('cpu') or (mi.get('cpu') or {}).get('brand_raw', '?')} "
                 f"(torch capability {g.get('cpu_capability', '?')}; flags: {' '.join(flags) if flags else '?'}"
                 f"{'; ' + native_text if native_text else ''}), {env.get('torch_threads', '?')} torch threads "
                 f"of {env.get('cpu_count', '?')} CPUs, RAM {_gb(env.get('ram_bytes'))} GB")
    lines += [f"- GPU: {gpu.get('name')} ({_gb(gpu.get('memory_bytes'))} GB, capability {gpu.get('capability')}), "
              f"driver {env.get('cuda_driver')}, CUDA {env.get('cuda_version')}" for gpu in env.get("gpus") or []]
    if not env.get("gpus"):
        lines.append(f"- GPU: none usable (torch CUDA build: {env.get('cuda_version')}); CUDA cases were skipped")
    lines.append(f"- torch {env.get('torch', '?')}, transformers {env.get('transformers', '?')}, "
                 f"Python {env.get('python', '?')}, git `{env.get('git_sha', '?')}`, run {doc.get('datetime', '?')}")
    lines.append(f"- Kernels: autotune `{g.get('autotune', '?')}` (choices per case in the kernel section below)")
    for name, peer in (g.get("peers") or {}).items():
        if peer.get("available") is False:
            lines.append(f"- Peer {name}: not available ({peer.get('reason', '?')}); its cases were skipped")
        else:
            details = ", ".join(f"{k} {v}" for k, v in peer.items() if k not in ("available", "system_info"))
            lines.append(f"- Peer {name}: {details}")
    lines += _bandwidth_lines(g, basis)
    pm = g.get("peak_memory_method") or {}
    if pm:
        lines.append(f"- Peak memory: CPU = {pm.get('cpu')}; CUDA = {pm.get('cuda')}")
    lines.append("- Sampling: temperature 0.8, top-k 40, fixed length (end-of-text off; HF `min_new_tokens`); "
                 "random prompt ids. Prefill = time to first token; decode tok/s excludes it. HF's prefill and "
                 "decode come from per-token timestamps inside one `generate` call. `±` = spread over the "
                 "timed rounds: IQR from 4 rounds on, max − min for 2–3, none for 1. Achieved GB/s = weight "
                 "bytes × decode steps/s (llama.cpp: its GGUF's bytes); roofline = achieved / the run's basis.")
    return lines


def _budget_lines(g: dict[str, Any]) -> list[str]:
    """The run's time budget, and the cases it left out (they are in no table: say so here)."""
    budget = g.get("time_budget")
    if not isinstance(budget, dict) or not is_rate(budget.get("budget_s")):
        return []
    skipped = [str(s) for s in budget.get("skipped") or []]
    if not skipped:
        return [f"- Time budget: {budget['budget_s']:.0f} s; every case started within it"]
    return [(f"- **Time budget spent**: {budget['budget_s']:.0f} s; {len(skipped)} case(s) did not start and are in "
             f"no table: {', '.join(skipped)}")]


def _bandwidth_lines(g: dict[str, Any], basis: dict[str, dict[str, Any]]) -> list[str]:
    probes = g.get("bandwidth_probes") or []
    summary = probe_summary(probes)  # what the harness stored as bandwidth_summary, from the checked probes
    lines = []
    for device, methods in sorted(summary.items()):
        mine = [p for p in probes if str(p.get("device", "")).split(":")[0] == device]
        when = f" from {mine[0].get('measured_at')} to {mine[-1].get('measured_at')}" if mine else ""
        parts = [f"{m} median {s['median'] / 1e9:.1f} / max {s['max'] / 1e9:.1f} GB/s (spread {s['spread']:.0%})"
                 for m, s in methods.items()]
        count = max((s["n"] for s in methods.values()), default=0)
        lines.append(f"- Bandwidth probes ({device}, {count}{when}: before the first case, whenever the model "
                     f"changed, after the last): " + "; ".join(parts))
        worst = max(methods.items(), key=lambda kv: kv[1]["spread"], default=None)
        if worst is not None and worst[1]["spread"] > NOISY_SPREAD:
            lines.append(f"- **Noisy machine**: {device} read bandwidth varied by {worst[1]['spread']:.0%} across the "
                         f"run's probes ({worst[0]}: {worst[1]['min'] / 1e9:.1f} to {worst[1]['max'] / 1e9:.1f} GB/s), "
                         f"more than {NOISY_SPREAD:.0%}: absolute speeds moved with it; trust ratios measured in the "
                         "same minutes (the interleaved runs) over absolute numbers")
    for device, b in sorted(basis.items()):
        lines.append(f"- Roofline basis ({device}): **{b['bytes_per_s'] / 1e9:.1f} GB/s**, the best of every probe and "
                     f"every engine in this run: {b['source']}")
    return lines


# --- tables --------------------------------------------------------------------------------------------

def _sampler_rank(sampler: str) -> int:
    return SAMPLER_ORDER.index(sampler) if sampler in SAMPLER_ORDER else len(SAMPLER_ORDER)


def _sort_key(c: dict[str, Any]) -> tuple[Any, ...]:
    return (c["model"], c["device"], c["dtype"], c["batch_size"], c["prompt_len"], c["new_tokens"],
            _sampler_rank(c["sampler"]))


def _kernel_text(c: dict[str, Any]) -> str:
    sampler = c.get("sampler")
    if sampler in ("hf", "hf-compiled"):
        text = f"HF Conv1D {c.get('hf_weight_layout') or '?'}"
        hf = c.get("hf_generate")
        if isinstance(hf, dict) and hf.get("cache") == "static":
            config = hf.get("compile_config") or {}
            text += f", static cache, compiled ({config.get('mode', '?')})" if hf.get("compiled") else ", static cache"
        return text
    if str(sampler).startswith("llamacpp"):
        return f"GGUF {c.get('gguf_type', '?')}"
    if sampler == "cached-plain":
        return "plain F.linear"
    k = c.get("kernels")
    if isinstance(k, dict) and c.get("kernels_used", True):
        return f"autotune {k.get('mode', '?')}" + (" (cache hit)" if k.get("cache_hit") else "")
    return c.get("weight_layout") or "—"


def _table(cases: list[dict[str, Any]], basis: dict[str, dict[str, Any]]) -> list[str]:
    head = ("| sampler | model | device | dtype | batch | prompt | new | prefill ms | decode tok/s | e2e tok/s "
            "| peak mem GB | weights GB | achieved GB/s | roofline | kernels |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in sorted(cases, key=_sort_key):
        ident = (f"| {SAMPLER_NAMES.get(c['sampler'], c['sampler'])} | {c['model']} | {c['device']} "
                 f"| {c.get('dtype')} | {c.get('batch_size')} | {c.get('prompt_len')} | {c.get('new_tokens')} ")
        reason = invalid_reason(c)
        if reason is not None:
            lines.append(ident + f"| — | invalid ({reason}) | — | {_gb(c.get('peak_memory_bytes'))} "
                         f"| {_gb(c.get('weight_bytes'))} | — | — | {_kernel_text(c)} |")
            continue
        f = _fraction(c, basis, c["device"])
        lines.append(
            ident + f"| {_pm(c.get('prefill_s'), c.get('prefill_s_spread'), '.0f', 1000)} "
            f"| {_pm(c.get('decode_tokens_per_s'), c.get('decode_tokens_per_s_spread'))} "
            f"| {_pm(c.get('tokens_per_s'), c.get('tokens_per_s_spread'))} | {_gb(c.get('peak_memory_bytes'))} "
            f"| {_gb(c.get('weight_bytes'))} | {_gb(c.get('achieved_bytes_per_s'))} "
            f"| {'—' if f is None else f'{f:.0%}'} | {_kernel_text(c)} |"
        )
    return lines


def _expand_ratio_cases(ratio_cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per sampler of each interleaved run."""
    out = []
    for c in ratio_cases:
        for sampler, record in (c.get("samplers") or {}).items():
            ident = {k: v for k, v in c.items()
                     if k not in ("samplers", "ratios", "ratios_missing", "samplers_skipped")}
            out.append({**ident, **record, "sampler": sampler})
    return out


def _ratio_table(entries: list[RatioEntry]) -> list[str]:
    """One row per (model, device, dtype, batch, prompt, new) group and source; one column per
    ratio of :data:`bench.records.RATIOS` measured anywhere in the run."""
    names = [n for n in RATIOS if any(e.name == n for e in entries)]
    rows: dict[tuple, dict[str, float]] = defaultdict(dict)
    for e in entries:
        rows[(e.source != "interleaved", e.group)][e.name] = e.value
    head = "| group | measured | " + " | ".join(RATIOS[n].label for n in names) + " |"
    lines = [head, "|" + "---|" * (len(names) + 2)]
    for (cases, group), values in sorted(rows.items(), key=lambda kv: (tuple(map(str, kv[0][1])), kv[0][0])):
        cells = [f"**{values[n]:.2f}×**" if n in values else "—" for n in names]
        lines.append(f"| {_group_label(group)} | {'separate cases' if cases else 'interleaved rounds'} | "
                     + " | ".join(cells) + " |")
    return lines


def _kernel_section(cases: list[dict[str, Any]]) -> list[str]:
    """Each distinct (model, device, dtype)'s autotuned plan, as its cases recorded it."""
    seen: dict[tuple, dict[str, Any]] = {}
    for c in cases:
        if isinstance(c.get("kernels"), dict):
            seen.setdefault((c.get("model"), c.get("device"), c.get("dtype")), c["kernels"])
    if not seen:
        return ["No case recorded kernel choices (a build without the autotuned kernels, or every case skipped).", ""]
    lines = []
    for (model, device, dtype), k in sorted(seen.items(), key=lambda kv: tuple(map(str, kv[0]))):
        tuning = k.get("tuning_s")
        tuning_text = f"{tuning:.1f} s" if isinstance(tuning, (int, float)) else "?"
        key = k.get("key")
        key_text = ", ".join(f"{a}={b}" for a, b in key.items()) if isinstance(key, dict) else (key or "?")
        lines.append(f"- {model} {device} {dtype}: mode `{k.get('mode', '?')}`, cache "
                     f"{'hit' if k.get('cache_hit') else 'miss'}, tuning {tuning_text}; key {key_text}")
        choices = k.get("choices") or []
        if choices:
            lines += ["", "| projection | shape [out, in] | layout | decode | prefill | candidates (GB/s) |",
                      "|---|---|---|---|---|---|"]
            for ch in choices:
                cands = ch.get("candidates") or {}
                ranked = sorted(((n, v) for n, v in cands.items() if is_rate(v)), key=lambda kv: -kv[1])
                cand_text = ", ".join(f"{n} {v:.1f}" for n, v in ranked) or "—"
                shape = ch.get("shape")
                lines.append(f"| {ch.get('name', '?')} | {' × '.join(map(str, shape)) if shape else '?'} "
                             f"| {ch.get('layout', '?')} | {ch.get('decode', '?')} | {ch.get('prefill', '?')} "
                             f"| {cand_text} |")
            lines.append("")
    return [*lines, ""]


# --- targets -------------------------------------------------------------------------------------------

def _best_ratio(entries: list[RatioEntry], group: tuple, name: str) -> RatioEntry | None:
    """The group's ratio ``name``, the interleaved measurement first (taken in the same minutes)."""
    found = [e for e in entries if e.group == group and e.name == name]
    found.sort(key=lambda e: e.source != "interleaved")
    return found[0] if found else None


def _targets(doc: dict[str, Any], entries: list[RatioEntry], basis: dict[str, dict[str, Any]]) -> list[str]:
    """This issue's speed targets, stated as measured (reported, never asserted)."""
    g = _g(doc)
    native = g.get("cpu_native") or {}
    throughput = _cases(doc, "throughput")
    ratio_cases = _cases(doc, "ratios")
    lines = []
    groups = sorted({e.group for e in entries if e.group[1] == "cpu" and e.group[3] == 1},
                    key=lambda t: tuple(map(str, t)))
    for group in groups:
        model, _device, dtype, _b, prompt, n = group
        where = f"CPU batch 1 {model} {dtype}, prompt {prompt}, {n} new"
        is_target = dtype == "fp32" or native.get(dtype) is True
        for name, what in (("ours_vs_llamacpp_decode", "decode"),
                           ("ours_vs_llamacpp_prefill", f"prefill of {prompt} tokens")):
            e = _best_ratio(entries, group, name)
            if e is None:
                continue
            verdict = (f"target ≥ {VS_LLAMACPP_TARGET:.1f}×: {_verdict(e.value, VS_LLAMACPP_TARGET)}" if is_target
                       else f"not a target: {dtype} is not native on this CPU")
            lines.append(f"- {where}: ours vs llama.cpp {what} = **{e.value:.2f}×** ({verdict}; {e.source})")
        e = _best_ratio(entries, group, "ours_vs_hf_decode")
        if e is not None:
            lines.append(f"- {where}: ours vs HF `generate` decode = **{e.value:.2f}×** "
                         f"(target ≥ {VS_HF_TARGET:.0f}×: {_verdict(e.value, VS_HF_TARGET)}; {e.source})")
        e = _best_ratio(entries, group, "tuned_vs_plain_decode")
        if e is not None:
            lines.append(f"- {where}: tuned kernels vs plain `F.linear` decode = **{e.value:.2f}×** "
                         f"(what autotuning adds, same run)")
    peers = g.get("peers") or {}
    llamacpp = peers.get("llamacpp") or {}
    if not any(e.name.startswith("ours_vs_llamacpp") for e in entries) and llamacpp.get("available") is False:
        lines.append(f"- Ours vs llama.cpp: not measured ({llamacpp.get('reason')})")
    lines += _bf16_targets(throughput + _expand_ratio_cases(ratio_cases), native)
    lines += _fraction_target(doc, basis)
    lines += _cuda_targets(doc, entries, throughput + _expand_ratio_cases(ratio_cases), basis)
    lines += _scaling_lines(_cases(doc, "scaling"))
    return lines


def _bf16_targets(cases: list[dict[str, Any]], native: dict[str, Any]) -> list[str]:
    """Our bf16 decode over our fp32 decode, per CPU batch-1 (model, prompt, new) with both."""
    ours: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for c in cases:
        if (c["sampler"], c["device"], c["batch_size"]) == ("cached", "cpu", 1) and invalid_reason(c) is None:
            ours[(c["model"], c["prompt_len"], c["new_tokens"])].setdefault(c["dtype"], c)
    lines = []
    for (model, prompt, n), by_dtype in sorted(ours.items(), key=lambda kv: tuple(map(str, kv[0]))):
        if "fp32" in by_dtype and "bf16" in by_dtype:
            r = by_dtype["bf16"]["decode_tokens_per_s"] / by_dtype["fp32"]["decode_tokens_per_s"]
            verdict = (f"target ≥ {BF16_VS_FP32_TARGET}×: {_verdict(r, BF16_VS_FP32_TARGET)}" if native.get("bf16")
                       else "not a target: bf16 is emulated on this CPU")
            lines.append(f"- CPU batch 1 {model}, prompt {prompt}, {n} new: our bf16 vs our fp32 decode = "
                         f"**{r:.2f}×** ({verdict})")
    return lines


def _fraction_target(doc: dict[str, Any], basis: dict[str, dict[str, Any]]) -> list[str]:
    best = None
    for c in [*_cases(doc, "throughput"), *_expand_ratio_cases(_cases(doc, "ratios"))]:
        if invalid_reason(c) is None:
            f = _fraction(c, basis, c["device"])
            if f is not None and (best is None or f > best[0]):
                best = (f, c)
    if best is None:
        return []
    f, c = best
    return [(f"- Highest roofline fraction: **{f:.0%}** ({SAMPLER_NAMES.get(c['sampler'], c['sampler'])}, "
             f"{c['model']} {c['device']} {c['dtype']}) (target: none above 100%: "
             f"{'met' if f <= 1.0 else 'NOT met'}; the basis is the best probe or engine of the run)")]


def _cuda_judged(value: float, target: float, dtype: str, shown: str) -> str:
    """The verdict on a CUDA target, for the dtype the targets are set for; for the other dtypes
    the number is shown beside it, not judged."""
    if dtype == CUDA_TARGET_DTYPE:
        return f"target ≥ {shown}: {_verdict(value, target)}"
    return f"for comparison: the target ≥ {shown} is set for {CUDA_TARGET_DTYPE}"


def _peer_case(cases: list[dict[str, Any]], c: dict[str, Any], sampler: str) -> dict[str, Any] | None:
    """The case of ``sampler`` in ``c``'s group (same model, device, dtype, batch, prompt, new)."""
    return next((o for o in cases if o["sampler"] == sampler and _group_of(o) == _group_of(c)), None)


def _group_of(c: dict[str, Any]) -> tuple[Any, ...]:
    return (c.get("model"), c.get("device"), c.get("dtype"), c.get("batch_size"), c.get("prompt_len"),
            c.get("new_tokens"))


def _gpu_name(doc: dict[str, Any], cases: list[dict[str, Any]]) -> str:
    names = sorted({str(c["device_name"]) for c in cases if c.get("device_name")})
    gpus = (_g(doc).get("environment") or {}).get("gpus") or []
    return ", ".join(names) or ", ".join(str(gpu.get("name")) for gpu in gpus) or "GPU name not recorded"


def _read_bandwidth(doc: dict[str, Any], device: str) -> tuple[float, str] | None:
    """The best read-only probe rate of ``device`` in the run and its method, or None."""
    methods = probe_summary(_g(doc).get("bandwidth_probes") or []).get(device) or {}
    reads = [(stats["max"], method) for method, stats in methods.items() if method in READ_PROBE_METHODS]
    return max(reads) if reads else None


def _cuda_bandwidth_text(doc: dict[str, Any], basis: dict[str, dict[str, Any]]) -> str:
    read = _read_bandwidth(doc, "cuda")
    parts = [f"measured HBM read bandwidth **{read[0] / 1e9:.0f} GB/s** (best `{read[1]}` probe)" if read
             else "no CUDA read-bandwidth probe recorded"]
    if "cuda" in basis:
        parts.append(f"roofline basis {basis['cuda']['bytes_per_s'] / 1e9:.0f} GB/s ({basis['cuda']['source']})")
    return "; ".join(parts)


CUDA_PEERS = (("hf", "compiled_vs_hf_decode", CUDA_VS_HF_TARGET, "HF `generate` (eager)"),
              ("hf-compiled", "compiled_vs_hf_compiled_decode", CUDA_VS_HF_COMPILED_TARGET,
               "HF `generate` with static cache + compile"))


def _cuda_targets(doc: dict[str, Any], entries: list[RatioEntry], cases: list[dict[str, Any]],
                  basis: dict[str, dict[str, Any]]) -> list[str]:
    """The CUDA targets per batch-1 compiled case: its roofline fraction, its decode over HF eager
    and over HF static + compile, each met or NOT met (fp16; other dtypes shown beside), the GPU
    and its measured bandwidth; then whether fp16 sampled only from finite logits."""
    cuda = [c for c in cases if c.get("device") == "cuda"]
    if not cuda:
        return []
    lines = [f"- CUDA GPU: {_gpu_name(doc, cuda)}; {_cuda_bandwidth_text(doc, basis)}"]
    for c in sorted((c for c in cuda if (c["sampler"], c["batch_size"]) == ("compiled", 1)), key=_sort_key):
        dtype = str(c.get("dtype"))
        where = f"CUDA batch 1 {c.get('model')} {dtype}, prompt {c.get('prompt_len')}, {c.get('new_tokens')} new"
        reason = invalid_reason(c)
        if reason is not None:
            lines.append(f"- {where}: compiled decode not measured: invalid ({reason}); its targets cannot be judged")
            continue
        f = _fraction(c, basis, "cuda")
        if f is not None:
            lines.append(f"- {where}: compiled decode {c['decode_tokens_per_s']:.0f} tok/s at **{f:.0%}** of the read "
                         f"roofline ({basis['cuda']['bytes_per_s'] / 1e9:.0f} GB/s) "
                         f"({_cuda_judged(f, CUDA_ROOFLINE_TARGET, dtype, f'{CUDA_ROOFLINE_TARGET:.0%}')})")
        for peer, name, target, label in CUDA_PEERS:
            e = _best_ratio(entries, _group_of(c), name)
            if e is not None:
                lines.append(f"- {where}: compiled decode vs {label} = **{e.value:.2f}×** "
                             f"({_cuda_judged(e.value, target, dtype, f'{target:g}×')}; {e.source})")
                continue
            other = _peer_case(cuda, c, peer)
            why = (f"no {peer} case in this run" if other is None
                   else f"the {peer} case is invalid: {invalid_reason(other) or 'no decode rate'}")
            lines.append(f"- {where}: compiled decode vs {label}: not measured ({why})")
    return lines + _finite_target(cuda)


def _finite_target(cuda: list[dict[str, Any]]) -> list[str]:
    """fp16 on CUDA produces no NaN/inf: every fp16 case's load-time check and every sampled
    token's logits (where the sampler's logits are observed)."""
    fp16 = [c for c in cuda if c.get("dtype") == "fp16"]
    if not fp16:
        return []
    bad = [c for c in fp16 if c.get("sampled_logits_finite") is False or c.get("logits_finite") is False]
    unseen = [c for c in fp16 if c.get("sampled_logits_finite") is None]
    name = "CUDA fp16 produces no NaN/inf"
    if bad:
        which = ", ".join(f"{c['sampler']} b{c.get('batch_size')}" for c in sorted(bad, key=_sort_key))
        return [f"- {name}: **NOT met**: non-finite logits in {which}"]
    seen = len(fp16) - len(unseen)
    text = f"- {name}: met: every sampled token of {seen} fp16 case(s) came from finite logits"
    if unseen:
        text += " (not observed in: " + ", ".join(f"{c['sampler']} b{c.get('batch_size')}" for c in unseen) + ")"
    return [text]


# A CUDA table row's dtype order: the targets' dtype first.
CUDA_DTYPE_ORDER = ("fp16", "bf16", "fp32")


def _cuda_table(cases: list[dict[str, Any]], basis: dict[str, dict[str, Any]]) -> list[str]:
    """Every CUDA case: decode tok/s, prefill, peak memory, roofline, its decode over HF eager's
    and over HF static + compile's in the same group (quotients of the medians), warm-up rounds,
    the compile estimate and whether its logits stayed finite."""
    head = ("| model | dtype | batch | prompt/new | sampler | decode tok/s | prefill ms | peak mem GB | roofline "
            "| vs HF | vs HF static+compile | warm-up | compile s (est.) | finite logits |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def rank(c: dict[str, Any]) -> tuple[Any, ...]:
        dtype = c.get("dtype")
        order = CUDA_DTYPE_ORDER.index(dtype) if dtype in CUDA_DTYPE_ORDER else len(CUDA_DTYPE_ORDER)
        return (str(c.get("model")), order, c.get("batch_size"), c.get("prompt_len"), c.get("new_tokens"),
                _sampler_rank(c["sampler"]))

    for c in sorted(cases, key=rank):
        ident = (f"| {c.get('model')} | {c.get('dtype')} | {c.get('batch_size')} | {c.get('prompt_len')}/"
                 f"{c.get('new_tokens')} | {SAMPLER_NAMES.get(c['sampler'], c['sampler'])} ")
        compile_s = c.get("compile_s_estimate")
        finite = c.get("sampled_logits_finite")
        compile_text = f"{compile_s:.0f}" if isinstance(compile_s, (int, float)) else "—"
        tail = (f"| {c.get('warmup_rounds', '—')} | {compile_text} "
                f"| {'—' if finite is None else ('yes' if finite else '**NO**')} |")
        reason = invalid_reason(c)
        if reason is not None:
            lines.append(ident + f"| invalid ({reason}) | — | {_gb(c.get('peak_memory_bytes'))} | — | — | — " + tail)
            continue
        ratios = []
        for peer in ("hf", "hf-compiled"):
            other = _peer_case(cases, c, peer)
            ok = other is not None and other is not c and invalid_reason(other) is None
            ratios.append(f"{c['decode_tokens_per_s'] / other['decode_tokens_per_s']:.2f}×" if ok and other else "—")
        f = _fraction(c, basis, "cuda")
        lines.append(
            ident + f"| {_pm(c.get('decode_tokens_per_s'), c.get('decode_tokens_per_s_spread'), '.1f')} "
            f"| {_pm(c.get('prefill_s'), c.get('prefill_s_spread'), '.1f', 1000)} | {_gb(c.get('peak_memory_bytes'))} "
            f"| {'—' if f is None else f'{f:.0%}'} | {ratios[0]} | {ratios[1]} " + tail
        )
    return lines


def _scaling_lines(scaling: list[dict[str, Any]]) -> list[str]:
    per_sampler: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for c in scaling:
        if invalid_reason(c) is None and is_rate(c.get("decode_s_per_token")):
            per_sampler[c["sampler"]].append((c["new_tokens"], c["decode_s_per_token"]))
    lines = []
    for sampler, points in sorted(per_sampler.items(), key=lambda kv: _sampler_rank(kv[0])):
        points.sort()
        (n0, t0), (n1, t1) = points[0], points[-1]
        lines.append(f"- Per-token decode cost, {SAMPLER_NAMES.get(sampler, sampler)}: {t0 * 1000:.1f} ms at {n0} new "
                     f"→ {t1 * 1000:.1f} ms at {n1} new (**{t1 / t0:.2f}×**; flat ≈ 1×, the reference's grows with "
                     "length)")
    return lines


# --- plots ---------------------------------------------------------------------------------------------

def _save_png(fig: Any, path: Path) -> None:
    """Render ``fig`` in memory, then write it through a temporary file and a rename: a failed
    write (no space, file size limit) is one OutputError and never leaves half a PNG behind."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


def _plot_tokens(cases: list[dict[str, Any]], path: Path) -> bool:
    """Bars of measured decode tok/s only: an invalid or skipped sampler is left out of its group,
    never drawn as 0."""
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for c in cases:
        if invalid_reason(c) is None:
            key = f"{c.get('device')} {c.get('dtype')}\n{c.get('model')} b{c.get('batch_size')}"
            groups[key].setdefault(c["sampler"], c["decode_tokens_per_s"])  # first n per sampler
    if not groups:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(groups)
    widest = max(len(groups[k]) for k in keys)
    width = 0.8 / widest
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * widest * len(keys) + 2), 4.2))
    labelled: set[str] = set()
    for j, k in enumerate(keys):
        present = sorted(groups[k], key=_sampler_rank)
        for i, s in enumerate(present):
            x = j + (i - (len(present) - 1) / 2) * width
            bars = ax.bar([x], [groups[k][s]], width, color=SAMPLER_COLORS.get(s, "C9"),
                          label=None if s in labelled else SAMPLER_NAMES.get(s, s))
            labelled.add(s)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(keys)), keys, fontsize=8)
    ax.set_ylabel("decode tokens/s (excl. prefill), median")
    ax.set_title("Decode throughput by device × dtype × sampler (measured cases only)")
    ax.legend(fontsize=8)
    _save_png(fig, path)
    return True


def _plot_scaling(scaling: list[dict[str, Any]], path: Path) -> bool:
    series: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for c in scaling:
        if invalid_reason(c) is None and is_rate(c.get("decode_s_per_token")) and is_rate(c.get("decode_s")):
            series[f"{SAMPLER_NAMES.get(c['sampler'], c['sampler'])} ({c.get('model')} {c['dtype']})"].append(
                (c["new_tokens"], c["decode_s_per_token"] * 1000, c["decode_s"]))
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    _save_png(fig, path)
    return True


def _cuda_section(doc: dict[str, Any], cuda: list[dict[str, Any]], basis: dict[str, dict[str, Any]]) -> list[str]:
    """The CUDA cases' own section (none without CUDA cases): the GPU, its bandwidth, the table."""
    if not cuda:
        return []
    legend = ("- vs HF / vs HF static+compile: this row's decode tok/s over that HF case's in the same dtype, batch, "
              "prompt and length. Peak memory: torch.cuda.max_memory_allocated, reset per case (warm-up, compile "
              "and CUDA-graph pools included). compile s (est.): the first warm-up round minus the median timed round.")
    return [f"### CUDA: {_gpu_name(doc, cuda)}", "", f"- {_cuda_bandwidth_text(doc, basis)}", legend, "",
            *_cuda_table(cuda, basis), ""]


# --- the section -----------------------------------------------------------------------------------------

def render_bench_section(bench_doc: dict[str, Any], out_dir: Path) -> str:
    """Markdown for one throughput run (provenance, one table of every engine with ± spreads,
    ratios, kernel choices, target checks, plot links relative to ``out_dir``); writes the PNGs
    into ``out_dir``, created if needed; OutputError, before anything is drawn, when it cannot be
    written."""
    out_dir = check_output_dir(out_dir, name="the report folder")
    throughput = _cases(bench_doc, "throughput")
    scaling = _cases(bench_doc, "scaling")
    ratio_cases = _cases(bench_doc, "ratios")
    interleaved = _expand_ratio_cases(ratio_cases)
    basis = doc_roofline_basis(bench_doc)
    entries = ratio_entries(bench_doc)
    md = ["## Throughput", "", *_bench_provenance(bench_doc, basis), ""]
    if throughput:
        md += ["### Cases: ours, HF and llama.cpp", "", *_table(throughput, basis), ""]
    md += _cuda_section(bench_doc, [c for c in throughput + interleaved if c.get("device") == "cuda"], basis)
    if ratio_cases:
        md += ["### Interleaved sampler runs (samplers take turns within every round; the CI gate's measurement)", "",
               *_table(interleaved, basis), ""]
        for c in ratio_cases:
            for sampler, reason in (c.get("samplers_skipped") or {}).items():
                md.append(f"- {c['model']} {c['device']} {c['dtype']}: {SAMPLER_NAMES.get(sampler, sampler)} "
                          f"not run ({reason})")
            for name, reason in (c.get("ratios_missing") or {}).items():
                md.append(f"- {c.get('model')} {c.get('device')} {c.get('dtype')}: {name} not measured ({reason})")
        md.append("")
    if entries:
        md += ["### Ratios (measured within this run; > 1 = the first engine is faster)", "",
               *_ratio_table(entries), ""]
    if throughput or ratio_cases:
        md += ["### Kernel choices (autotune)", "", *_kernel_section(throughput + ratio_cases)]
    targets = _targets(bench_doc, entries, basis)
    if targets:
        md += ["### Speed targets (reported, not asserted)", "", *targets, ""]
    if scaling:
        md += ["### Decode cost vs generated length", "", *_table(scaling, basis), ""]
    if _plot_tokens(throughput or interleaved, out_dir / TOKENS_PLOT):
        md += [f"![decode tokens/s by dtype × sampler × device]({TOKENS_PLOT})", ""]
    if _plot_scaling(scaling, out_dir / SCALING_PLOT):
        md += [f"![decode cost vs generated length]({SCALING_PLOT})", ""]
    if not (throughput or scaling or ratio_cases):
        md += ["No case ran (all skipped?): see the pytest output for the reasons.", ""]
    return "\n".join(md)


def write_bench_report(run_dir: Path) -> Path:
    """Read ``run_dir/bench.json``, write ``run_dir/bench.md`` and the PNGs; return the .md path.
    Raises ResultError when bench.json is missing, malformed or not a benchmark run, and
    OutputError (one sentence with the reason) when a file cannot be written."""
    run_dir = Path(run_dir)
    doc = load_bench(run_dir / "bench.json")
    check_output_file(run_dir / "bench.md", name="The report")  # before the plots are drawn
    text = "# Throughput benchmark\n\n" + render_bench_section(doc, run_dir) + "\n"
    return write_text_atomic(run_dir / "bench.md", text)
