"""`gpt2xl compare --eval`: two eval runs' grids setting by setting, from the metric table, with a
change called only where the two 95% intervals are disjoint."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from gpt2xl.errors import ConfigError
from gpt2xl.metric_table import SHOWN_METRICS
from gpt2xl_app.eval_compare import compare_grids, format_changes, load_grid
from tests.conftest import REPO, TINY_SHAKESPEARE


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpt2xl_app.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "old"
    proc = _cli("eval", "grid", "--run-dir", str(out), "-m", str(TINY_SHAKESPEARE), "--temperatures", "0.7,1.3",
                "--top-ks", "0", "--top-ps", "1", "--seeds", "0,1", "--num-prompts", "6", "--prompt-tokens", "8",
                "--max-new-tokens", "12", "--batch-size", "6", "--no-mauve", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _shifted(run, tmp_path, metric: str, by: float):
    """A copy of ``run``'s eval.json whose first setting's ``metric`` and its interval moved by ``by``."""
    doc = json.loads((run / "eval.json").read_text())
    row = doc["grid"]["summary"][0]
    row["metrics"][metric] += by
    row["intervals"][metric] = {**row["intervals"][metric], "low": row["intervals"][metric]["low"] + by,
                                "high": row["intervals"][metric]["high"] + by}
    path = tmp_path / "new.json"
    path.write_text(json.dumps(doc))
    return path


def test_a_run_against_itself_changes_nothing(run):
    grid = load_grid(run)
    changes, notes = compare_grids(grid, copy.deepcopy(grid))
    assert len(changes) == 2 * len(SHOWN_METRICS)
    assert {c.metric.name for c in changes} == {m.name for m in SHOWN_METRICS}
    assert all(c.change in (0, None) and c.verdict == "" for c in changes)
    assert notes == []


def test_disjoint_intervals_are_called_by_the_metric_s_direction(run, tmp_path):
    old = load_grid(run)
    width = old["summary"][0]["intervals"]["distinct_2"]["high"] - old["summary"][0]["intervals"]["distinct_2"]["low"]
    for metric, sign, verdict in (("distinct_2", +1, "better"), ("distinct_2", -1, "worse"),
                                  ("self_bleu_4", +1, "worse"), ("mean_length_tokens", +1, "differs")):
        interval = old["summary"][0]["intervals"][metric]
        by = sign * (interval["high"] - interval["low"] + 1e-3)
        changes, _ = compare_grids(old, load_grid(_shifted(run, tmp_path, metric, by)))
        (changed,) = [c for c in changes if c.verdict]
        assert (changed.metric.name, changed.verdict) == (metric, verdict)
        assert changed.change == pytest.approx(by)
    # overlapping by a hair: no call
    changes, _ = compare_grids(old, load_grid(_shifted(run, tmp_path, "distinct_2", width * 0.99)))
    assert all(c.verdict == "" for c in changes)


def test_the_cli_prints_the_table_and_the_criterion(run, tmp_path):
    interval = load_grid(run)["summary"][0]["intervals"]["distinct_2"]
    new = _shifted(run, tmp_path, "distinct_2", interval["high"] - interval["low"] + 0.01)
    proc = _cli("compare", "--eval", str(run), str(new))
    assert proc.returncode == 0, proc.stderr
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("T=0.7, k=all, p=1") and "distinct-2" in x]
    assert line.rstrip().endswith("better")
    assert "1 better, 0 worse, 0 differ (no better direction), of 20." in proc.stdout
    assert "the two 95% intervals are disjoint" in proc.stdout
    text = format_changes(*compare_grids(load_grid(run), load_grid(new)))
    assert text in proc.stdout


def test_grids_with_no_shared_setting_or_no_grid_are_refused(run, tmp_path):
    doc = json.loads((run / "eval.json").read_text())
    other = copy.deepcopy(doc["grid"])
    for row in other["summary"]:
        row["temperature"] += 10
    with pytest.raises(ConfigError, match="share no sampling setting"):
        compare_grids(doc["grid"], other)
    doc["grid"] = None
    (tmp_path / "nogrid.json").write_text(json.dumps(doc))
    proc = _cli("compare", "--eval", str(run), str(tmp_path / "nogrid.json"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "holds no sampling grid to compare" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    proc = _cli("compare", "--eval", "--ratios", str(run), str(run))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["error: --ratios belongs to the two-run gate, not to the --eval comparison "
                                        "(a report that never fails); drop it or --eval."]
