"""Recompute the eval regression baseline ``tests/baselines/eval_tiny.json``.

The baseline pins the eval metrics of ``../shared/models/gpt2-tiny-shakespeare`` at a fixed seed
on a small grid (2 temperatures x 2 top-k, 8 prompts, 32 new tokens) plus a short sliding-window
perplexity; ``tests/test_eval_regression.py`` recomputes them and fails on a change beyond
tolerance. Refresh it ONLY for an intended change (a metric's definition, the sampler's random
stream, the model code), review the diff of the JSON, and commit it with that change:

    .venv/bin/python -m tests.refresh_eval_baseline            # rewrites the file, prints a summary
    .venv/bin/python -m tests.refresh_eval_baseline --check    # only compares, exit 1 on a change
"""

from __future__ import annotations

import argparse
import json
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
    """The metrics ``setup`` describes: {"perplexity": {...}, "cells": {"T=..,k=..,seed=..": {...}},
    "human": {...}}."""
    from gpt2xl.data import eval_split, load_corpus
    from gpt2xl.grid import GridConfig, grid_prompts, human_reference, run_grid
    from gpt2xl.perplexity import perplexity_report, sliding_window_nll
    from gpt2xl.tokenizer import decode
    from gpt2xl.weights import load_model

    loaded = load_model(str(MODEL_DIR), device="cpu", dtype="fp32")
    split = eval_split(load_corpus(setup["dataset"], data_dir=DATA_DIR))
    p = setup["perplexity"]
    ids = split.token_ids[: p["max_tokens"]]
    text = decode(list(ids))
    nll = sliding_window_nll(loaded.model, ids, stride=p["stride"], batch_size=p["batch_size"])
    ppl = perplexity_report(nll, num_words=len(text.split()), num_bytes=len(text.encode("utf-8"))).to_dict()
    cfg = GridConfig.from_dict(setup["grid"])
    prompts = grid_prompts(split.token_ids, num_prompts=cfg.num_prompts, prompt_tokens=cfg.prompt_tokens,
                           continuation_tokens=cfg.max_new_tokens)
    cells = run_grid(loaded.model, prompts, cfg)
    return {
        "perplexity": ppl,
        "cells": {f"T={c.temperature:g},k={c.top_k},seed={c.seed}": c.metrics.to_dict() for c in cells},
        "human": human_reference(loaded.model, prompts, batch_size=cfg.batch_size).to_dict(),
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
    print(f"wrote {BASELINE}: perplexity {metrics['perplexity']['token_perplexity']:.4f}, {len(metrics['cells'])} cells")
    return 0


if __name__ == "__main__":
    sys.exit(main())
