"""Recompute the eval regression baseline ``tests/baselines/eval_tiny.json``.

The baseline pins the eval metrics of ``../shared/models/gpt2-tiny-shakespeare`` at a fixed seed
on a small grid (2 temperatures x 2 top-k x 2 top-p, 8 prompts, 32 new tokens: every cell's
metrics, every setting's shown metrics with MAUVE and their interval bounds) plus a short
sliding-window perplexity; ``tests/test_eval_regression.py`` recomputes them and fails on a change beyond
tolerance. Refresh it ONLY for an intended change (a metric's definition, the sampler's random
stream, the model code), review the diff of the JSON, and commit it with that change:

    .venv/bin/python -m tests.refresh_eval_baseline            # rewrites the file, prints a summary
    .venv/bin/python -m tests.refresh_eval_baseline --check    # only compares, exit 1 on a change
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "tests" / "baselines" / "eval_tiny.json"
SHARED = REPO.parent / "shared"
MODEL_DIR = SHARED / "models" / "gpt2-tiny-shakespeare"
DATA_DIR = SHARED / "data"

# What the baseline measures; stored in the file so the test recomputes exactly this.
SETUP: dict[str, Any] = {
    "dataset": "tinyshakespeare",
    "perplexity": {"max_tokens": 1024, "stride": 64, "batch_size": 8},
    "grid": {
        "dataset": "tinyshakespeare",
        "num_prompts": 8,
        "prompt_tokens": 32,
        "max_new_tokens": 32,
        "temperatures": [0.7, 1.3],
        "top_ks": [0, 20],
        "top_ps": [1.0, 0.9],
        "seeds": [0],
        "batch_size": 8,
        "stop_at_eot": True,
    },
}

# Sampling is deterministic on one torch build and CPU; the continuous metrics are compared with
# rel 1e-3 (far above float32 reduction-order noise, far below any real change to a definition).
REL_TOL = 1e-3
ABS_TOL = 1e-6


def compute(setup: dict[str, Any]) -> dict[str, Any]:
    """The metrics ``setup`` describes: {"perplexity": {...}, "cells": {"T=..,k=..,p=..,seed=..": {...}},
    "human": {...}}, computed by the library pipeline `gpt2xl eval run` calls
    (:func:`gpt2xl.evaluation.evaluate_run`), without a run directory."""
    from gpt2xl.evaluation import RunOptions, evaluate_run
    from gpt2xl.grid import GridConfig

    p = setup["perplexity"]
    opts = RunOptions(
        model=str(MODEL_DIR), data_dir=DATA_DIR, device="cpu", dtype="fp32", threads=None,
        grid=GridConfig.from_dict(setup["grid"]), run_dir=None, ppl_datasets=(setup["dataset"],),
        stride=p["stride"], ppl_batch_size=p["batch_size"], ppl_max_tokens=p["max_tokens"], lambada_max_examples=0,
    )
    doc = evaluate_run(opts).doc
    return {
        "perplexity": doc["perplexity"][0]["result"],
        "cells": {f"T={c['temperature']:g},k={c['top_k']},p={c['top_p']:g},seed={c['seed']}": c["metrics"]
                  for c in doc["grid"]["cells"]},
        "human": doc["grid"]["human"],
        # per setting: the values shown (MAUVE among them) and their 95% interval bounds
        "settings": {f"T={r['temperature']:g},k={r['top_k']},p={r['top_p']:g}": {
            "metrics": r["metrics"],
            "intervals": {name: [i["low"], i["high"]] for name, i in r["intervals"].items()},
        } for r in doc["grid"]["summary"]},
        "mauve_p_samples": doc["grid"]["mauve"]["p_samples"],
    }


def diff(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Readable lines, one per metric that moved beyond tolerance (or appeared/disappeared)."""
    problems: list[str] = []

    def walk(path: str, e: Any, a: Any) -> None:
        if isinstance(e, dict) and isinstance(a, dict):
            for key in sorted(set(e) | set(a)):
                if key not in a:
                    problems.append(f"{path}{key}: missing now (baseline {e[key]!r})")
                elif key not in e:
                    problems.append(f"{path}{key}: new (now {a[key]!r}); refresh the baseline if intended")
                else:
                    walk(f"{path}{key}.", e[key], a[key])
            return
        name = path.rstrip(".")
        if isinstance(e, (int, float)) and isinstance(a, (int, float)) and not isinstance(e, bool):
            if not math.isclose(a, e, rel_tol=REL_TOL, abs_tol=ABS_TOL):
                rel = abs(a - e) / abs(e) if e else float("inf")
                problems.append(f"{name}: baseline {e!r} -> now {a!r} (rel. change {rel:.2e})")
        elif e != a:
            problems.append(f"{name}: baseline {e!r} -> now {a!r}")

    walk("", expected, actual)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the stored baseline, do not write")
    args = parser.parse_args(argv)
    import torch

    from gpt2xl.results import read_result, write_result

    metrics = compute(SETUP)
    if args.check:
        problems = diff(read_result(BASELINE, kind="eval_baseline")["metrics"], metrics)
        print("\n".join(problems) or "baseline matches")
        return 1 if problems else 0
    write_result(BASELINE, kind="eval_baseline", payload={
        "setup": SETUP, "torch": torch.__version__, "tolerance": {"rel": REL_TOL, "abs": ABS_TOL}, "metrics": metrics,
    })
    ppl = metrics["perplexity"]["token_perplexity"]
    print(f"wrote {BASELINE}: perplexity {ppl:.4f}, {len(metrics['cells'])} cells")
    return 0


if __name__ == "__main__":
    sys.exit(main())
