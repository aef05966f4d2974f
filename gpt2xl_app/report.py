"""One Markdown report per run directory, joining eval.json and bench.json (readable on GitHub).

Provenance comes first: which weights (pretrained / RANDOM / checkpoint path and sha256), the
dataset and its checksum, device, dtype, seeds, git sha and environment. Then the eval section
(:func:`gpt2xl_app.eval_report.render_eval_section`), then the bench section
(``gpt2xl_app.bench_report.render_bench_section``) when ``bench.json`` exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpt2xl.errors import ResultError
from gpt2xl.results import write_text_atomic
from gpt2xl_app.bench_report import render_bench_section
from gpt2xl_app.compare import load_bench


def _run_provenance(eval_doc: dict[str, Any] | None, bench_doc: dict[str, Any] | None) -> list[str]:
    lines = ["## Provenance", ""]
    if eval_doc is not None:
        m = eval_doc["model"]
        weights = m["label"]
        if m["kind"] == "random":
            weights = f"**{m['label']}** (numbers below say nothing about a trained model)"
        lines += [
            "| | eval |",
            "|---|---|",
            f"| weights | {weights} |",
            f"| weight files | {', '.join(f'`{f}`' for f in m['files']) or '—'} |",
            f"| weights sha256 | `{m['sha256'] or '—'}` |",
            f"| parameters | {m['num_parameters']:,} (context {m['config'].get('block_size', '?')}) |",
        ]
        datasets = eval_doc.get("datasets") or {eval_doc["dataset"]["name"]: eval_doc["dataset"]}
        for name, d in datasets.items():
            lines.append(f"| dataset {name} | {d['source']} — sha256 `{d['sha256']}`; {d['split']} |")
        env = eval_doc.get("environment") or {}
        weights_seed = m.get("seed") if m.get("seed") is not None else "n/a (loaded)"
        environment = (
            f"python {env.get('python')}, torch {env.get('torch')}, transformers {env.get('transformers')}, "
            f"{env.get('cpu')} ({env.get('cpu_count')} CPUs, {env.get('torch_threads')} torch threads), "
            f"CUDA {'yes' if env.get('cuda_available') else 'no'}"
        )
        lines += [
            f"| device / dtype | {m['device']} / {m['dtype']} |",
            f"| seeds | sampling {eval_doc['seeds']}; weights seed {weights_seed} |",
            f"| git | `{env.get('git_sha')}` |",
            f"| environment | {environment} |",
        ]
        reused = eval_doc.get("reused")
        if isinstance(reused, dict) and reused.get("parts"):
            earlier = (reused.get("environment") or {}).get("git_sha")
            lines.append(f"| reused (--resume) | {', '.join(map(str, reused['parts']))} from an earlier run "
                         f"(git `{earlier}`) |")
        lines.append("")
    if bench_doc is not None:
        lines += ["Bench provenance is in the bench section below (bench.json)." if eval_doc is not None
                  else "Only bench.json is present: provenance is in the bench section.", ""]
    return lines


def render_report(run_dir: Path, *, eval_doc: dict[str, Any] | None = None, image_dir: Path | None = None) -> str:
    """The Markdown of ``run_dir``'s report. Both result files are checked against the fields the
    report reads when they are read; a run directory with neither, or a result file that is
    malformed, raises ResultError naming the file (and the field). ``eval_doc``: the eval
    document to report instead of ``run_dir``'s eval.json (an eval result set being staged);
    ``image_dir``: where the eval plots are looked for (default ``run_dir``)."""
    if not run_dir.is_dir():
        raise ResultError(f"{run_dir} is not a directory; pass a run directory holding eval.json and/or bench.json.")
    eval_path, bench_path = run_dir / "eval.json", run_dir / "bench.json"
    if eval_doc is None and eval_path.exists():
        from gpt2xl.evaluation import read_eval_doc

        eval_doc = read_eval_doc(eval_path)
    bench_doc = load_bench(bench_path) if bench_path.exists() else None  # pytest-benchmark's format
    if eval_doc is None and bench_doc is None:
        raise ResultError(
            f"{run_dir} holds neither eval.json nor bench.json; run `nox -s eval` or `nox -s bench` first."
        )
    lines = [f"# gpt2xl report — {run_dir.name}", ""]
    lines += _run_provenance(eval_doc, bench_doc)
    if eval_doc is not None:
        # eval_report imports matplotlib (half a second): a bench-only report does without it.
        from gpt2xl_app.eval_report import render_eval_section

        lines.append(render_eval_section(eval_doc, image_dir or run_dir, bench_doc=bench_doc))
    if bench_doc is not None:
        lines.append(render_bench_section(bench_doc, run_dir))
    return "\n".join(lines).rstrip() + "\n"


def write_report(run_dir: str | Path, *, eval_doc: dict[str, Any] | None = None, out_dir: Path | None = None) -> Path:
    """(Re)write ``report.md`` from the result files in ``run_dir``; returns its path. ``eval_doc``
    and ``out_dir`` (where report.md goes and the eval plots are looked for) serve the eval
    commands, which stage a whole result set before moving it into ``run_dir``."""
    run_dir = Path(run_dir)
    out = out_dir or run_dir
    return write_text_atomic(out / "report.md", render_report(run_dir, eval_doc=eval_doc, image_dir=out))
