"""`gpt2xl eval …`: one-line errors with exit status 2, and a tiny end-to-end `eval run`."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from tests.conftest import SHARED_DATA


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from gpt2xl_app import cli

    monkeypatch.setattr(sys, "argv", ["gpt2xl", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["eval", "grid", "--run-dir", "{tmp}", "--temperatures", "0.5,hot"], "--temperatures"),
        (["eval", "grid", "--run-dir", "{tmp}", "--temperatures", "-1"], "temperatures"),
        (["eval", "grid", "--run-dir", "{tmp}", "--top-ks", "5,x"], "--top-ks"),
        (["eval", "grid", "--run-dir", "{tmp}", "--dataset", "imdb"], "Unknown dataset"),
        (["eval", "perplexity", "--dataset", "tinyshakespeare", "--data-dir", "{tmp}/nowhere"], "not a directory"),
        (["eval", "perplexity", "--dataset", "tinyshakespeare", "--data-dir", "{tmp}"], "does not exist"),
        (["eval", "run", "--run-dir", "{tmp}", "--ppl-datasets", "lambada"], "LAMBADA"),
        (["eval", "report", "{tmp}"], "neither eval.json nor bench.json"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(monkeypatch, capsys, tmp_path, args, needle):
    code, _, err = _main(monkeypatch, capsys, *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


def test_eval_help_lists_the_commands(monkeypatch, capsys):
    code, out, _ = _main(monkeypatch, capsys, "eval", "--help")
    assert code == 0
    for command in ("perplexity", "lambada", "grid", "run", "report"):
        assert command in out


def test_eval_run_end_to_end_writes_json_csv_plots_and_report(monkeypatch, capsys, tmp_path, tiny_shakespeare_dir):
    run_dir = tmp_path / "run"
    code, out, err = _main(
        monkeypatch, capsys,
        "eval", "run", "--run-dir", str(run_dir), "--model", str(tiny_shakespeare_dir), "--data-dir", str(SHARED_DATA),
        "--ppl-datasets", "tinyshakespeare", "--ppl-max-tokens", "300", "--lambada-max-examples", "3",
        "--temperatures", "0.7,1.3", "--top-ks", "0,5", "--seeds", "3", "--num-prompts", "3",
        "--prompt-tokens", "8", "--max-new-tokens", "6", "--batch-size", "3", "--no-progress",
    )
    assert code == 0, err
    doc = json.loads((run_dir / "eval.json").read_text())
    assert doc["schema_version"] == 1 and doc["kind"] == "eval"
    assert doc["seeds"] == [3] and all(c["seed"] == 3 for c in doc["grid"]["cells"])
    assert doc["model"]["sha256"] == "10eace71e5d85f041d695d721ac69e24e5073b60e14d89cd387d8043e07e8814"
    assert doc["dataset"]["sha256"] == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    assert doc["perplexity"][0]["result"]["tokens_scored"] > 0 and doc["lambada"]["result"]["num_examples"] == 3
    assert len(doc["grid"]["cells"]) == 4 and "environment" in doc
    rows = list(csv.DictReader((run_dir / "eval_grid.csv").open()))
    assert [r["source"] for r in rows] == ["model"] * 4 + ["human"]
    assert (run_dir / "eval_fluency_vs_diversity.png").stat().st_size > 0
    assert (run_dir / "eval_heatmap_distinct_2.png").stat().st_size > 0
    report = (run_dir / "report.md").read_text()
    assert report.index("## Provenance") < report.index("## Evaluation")
    assert "10eace71e5d85f04" in report and "86c4e6aa9db7c042" in report
    assert "![fluency vs diversity](eval_fluency_vs_diversity.png)" in report

    # re-render from the files alone
    (run_dir / "report.md").unlink()
    (run_dir / "eval_heatmap_distinct_2.png").unlink()
    code, out, err = _main(monkeypatch, capsys, "eval", "report", str(run_dir))
    assert code == 0 and "## Evaluation" in (run_dir / "report.md").read_text()
    assert (run_dir / "eval_heatmap_distinct_2.png").is_file()

    # a bench.json (pytest-benchmark's format, not ours) joins the same report after the eval
    from gpt2xl_app.report import render_report

    (run_dir / "bench.json").write_text(json.dumps({"machine_info": {}, "benchmarks": []}))
    joined = render_report(run_dir)
    assert joined.index("## Provenance") < joined.index("## Evaluation") < joined.index("## Throughput")
