"""CI regression check: the tiny checkpoint's eval metrics at a fixed seed against the stored
baseline ``tests/baselines/eval_tiny.json``. A change beyond tolerance fails with one line per
moved metric. To accept an intended change: ``python -m tests.refresh_eval_baseline`` and commit
the new JSON with the change (the test never rewrites it)."""

from __future__ import annotations

import pytest

from gpt2xl.results import read_result
from tests import refresh_eval_baseline as baseline


def test_eval_metrics_match_the_stored_baseline(tiny_shakespeare_dir):
    stored = read_result(baseline.BASELINE, kind="eval_baseline")
    actual = baseline.compute(stored["setup"])
    problems = baseline.diff(stored["metrics"], actual)
    if problems:
        pytest.fail(
            f"{len(problems)} eval metric(s) moved beyond rel {baseline.REL_TOL} / abs {baseline.ABS_TOL} "
            f"(baseline made with torch {stored['torch']}):\n  " + "\n  ".join(problems)
            + "\nIf the change is intended: python -m tests.refresh_eval_baseline, then commit the JSON.",
            pytrace=False,
        )


def test_diff_names_the_cell_and_metric_that_moved():
    expected = {"cells": {"T=1,k=0,seed=0": {"distinct_2": 0.5, "generation_perplexity": None}}}
    actual = {"cells": {"T=1,k=0,seed=0": {"distinct_2": 0.6, "generation_perplexity": None}}}
    (line,) = baseline.diff(expected, actual)
    assert line.startswith("cells.T=1,k=0,seed=0.distinct_2: baseline 0.5 -> now 0.6")
    assert baseline.diff(expected, expected) == []
    assert baseline.diff({"a": 1.0}, {"a": 1.0 + 1e-5}) == []
    assert "missing" in baseline.diff({"a": 1.0}, {})[0]
