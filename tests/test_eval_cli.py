"""`gpt2xl eval …`: one-line errors with exit status 2, and a tiny end-to-end `eval run`."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from gpt2xl.evaluation import MANIFEST, PROVENANCE_SCHEMA
from gpt2xl.results import manifest_problems
from tests.conftest import SHARED_DATA, TINY_SHAKESPEARE

# A run of a few seconds on the tiny model: perplexity on 300 tokens, 3 LAMBADA examples, a 2 x 2 grid.
SMALL_RUN = ["--model", str(TINY_SHAKESPEARE), "--data-dir", str(SHARED_DATA), "--ppl-datasets", "tinyshakespeare",
             "--ppl-max-tokens", "300", "--lambada-max-examples", "3", "--temperatures", "0.7,1.3", "--top-ks", "0,5", "--top-ps", "1",
             "--seeds", "3", "--num-prompts", "3", "--prompt-tokens", "8", "--max-new-tokens", "6", "--batch-size",
             "3", "--no-progress"]
# eval run's own options that eval grid lacks: the precision comparison off, to keep the runs small
RUN_ONLY = ["--dtypes", "fp32"]


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
        (["eval", "grid", "--run-dir", "{tmp}", "--top-ps", "0.9,0"], "--top-ps"),
        (["eval", "run", "--run-dir", "{tmp}", "--top-ps", "1.5"], "--top-ps"),
        (["eval", "grid", "--run-dir", "{tmp}", "--top-ps", "0.9,0.90"], "twice"),
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
        "--temperatures", "0.7,1.3", "--top-ks", "0,5", "--top-ps", "1", "--seeds", "3", "--num-prompts", "3",
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
    assert set(doc["model"]) == set(PROVENANCE_SCHEMA)  # LoadedModel.provenance(), the shape of every result file
    rows = list(csv.DictReader((run_dir / "eval_grid.csv").open()))
    assert [r["source"] for r in rows] == ["model"] * 4 + ["mean"] * 4 + ["human"]
    assert manifest_problems(run_dir, manifest=MANIFEST) == []
    listed = {f["name"] for f in json.loads((run_dir / MANIFEST).read_text())["files"]}
    assert {"eval.json", "eval_grid.csv", "eval_fluency_vs_diversity.png", "eval_heatmap_distinct_2.png"} <= listed
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")]  # no staging dir, no lock left
    assert (run_dir / "eval_fluency_vs_diversity.png").stat().st_size > 0
    assert (run_dir / "eval_heatmap_distinct_2.png").stat().st_size > 0
    report = (run_dir / "report.md").read_text()
    assert report.index("## Provenance") < report.index("## Evaluation")
    assert "10eace71e5d85f04" in report and "86c4e6aa9db7c042" in report
    assert "![fluency vs diversity](eval_fluency_vs_diversity.png)" in report

    # re-render from the files alone; the missing plot is noted and the set made whole again
    (run_dir / "report.md").unlink()
    (run_dir / "eval_heatmap_distinct_2.png").unlink()
    code, _, err = _main(monkeypatch, capsys, "eval", "report", str(run_dir))
    assert code == 0
    assert "## Evaluation" in (run_dir / "report.md").read_text()
    assert "eval_heatmap_distinct_2.png is listed in eval_manifest.json but missing" in err
    assert (run_dir / "eval_heatmap_distinct_2.png").is_file()
    assert manifest_problems(run_dir, manifest=MANIFEST) == []

    # a bench.json (pytest-benchmark's format, not ours) joins the same report after the eval
    from gpt2xl_app.report import render_report

    (run_dir / "bench.json").write_text(json.dumps({"machine_info": {}, "benchmarks": []}))
    joined = render_report(run_dir)
    assert joined.index("## Provenance") < joined.index("## Evaluation") < joined.index("## Throughput")


def _files(run_dir):
    """Every entry of ``run_dir`` (hidden ones too: a staging directory or a lock left behind)."""
    return {p.name: p.read_bytes() if p.is_file() else "<dir>" for p in sorted(run_dir.iterdir())}


def _run(monkeypatch, capsys, run_dir, *extra):
    code, out, err = _main(monkeypatch, capsys, "eval", "run", "--run-dir", str(run_dir), *SMALL_RUN, *RUN_ONLY,
                           *extra)
    assert code == 0, err
    return json.loads((run_dir / "eval.json").read_text()), out, err


def test_grid_and_run_read_the_one_default_grid():
    import typer.main

    from gpt2xl.grid import DEFAULT_GRID
    from gpt2xl_app.eval_commands import eval_app, grid_config

    commands = typer.main.get_command(eval_app).commands  # type: ignore[attr-defined]
    for name in ("grid", "run"):
        d = {p.name: p.default for p in commands[name].params}
        cfg = grid_config(dataset=d["dataset"], temperatures=d["temperatures"], top_ks=d["top_ks"],
                          top_ps=d["top_ps"], seeds=d["seeds"], num_prompts=d["num_prompts"],
                          prompt_tokens=d["prompt_tokens"],
                          max_new_tokens=d["max_new_tokens"], batch_size=d["batch_size"])
        assert cfg == DEFAULT_GRID, name
    assert DEFAULT_GRID.seeds == (0, 1, 2)
    assert 1.0 in DEFAULT_GRID.top_ps  # no nucleus cut, beside
    assert any(p < 1 for p in DEFAULT_GRID.top_ps)  # nucleus sampling: the default compares the two


def test_every_consumer_takes_its_metrics_from_the_table(monkeypatch, capsys, tmp_path):
    from gpt2xl.evaluation import EVAL_SCHEMA, grid_csv
    from gpt2xl.metric_table import INTERVAL_METRICS, METRICS, SHOWN_METRICS
    from gpt2xl_app.eval_commands import grid_table

    doc, out, _ = _run(monkeypatch, capsys, tmp_path)
    names = [m.name for m in METRICS]
    assert list(doc["grid"]["cells"][0]["metrics"]) == names
    assert list(doc["grid"]["human"]) == names
    assert list(EVAL_SCHEMA["grid"].node["cells"][0]["metrics"]) == names  # type: ignore[attr-defined]
    header = grid_csv(doc).splitlines()[0].split(",")
    bounds = [f"{m.name}_{side}" for m in INTERVAL_METRICS for side in ("low", "high")]
    assert header == ["source", "temperature", "top_k", "top_p", "seed", "seconds", *names, *bounds]
    assert grid_table(doc["grid"])[0].split() == ["T", "k", "p", "seeds", *(m.label for m in SHOWN_METRICS)]
    assert grid_table(doc["grid"])[0] in out  # what the command printed
    report = (tmp_path / "report.md").read_text()
    assert "| T | top-k | top-p | " + " | ".join(m.title for m in SHOWN_METRICS) + " |" in report
    for m in SHOWN_METRICS:
        assert f"- **{m.title}** ({m.direction}): {m.definition}" in report
        assert (tmp_path / f"eval_heatmap_{m.name}.png").is_file()
    assert sorted(p.name for p in tmp_path.glob("eval_heatmap_*.png")) == sorted(
        f"eval_heatmap_{m.name}.png" for m in SHOWN_METRICS)


def test_intervals_are_shown_wherever_a_row_carries_them(monkeypatch, capsys, tmp_path):
    from gpt2xl.evaluation import grid_csv, read_eval_doc
    from gpt2xl_app.eval_commands import grid_table
    from gpt2xl_app.eval_report import plot_fluency_vs_diversity, plot_heatmap, render_eval_section

    doc, _, _ = _run(monkeypatch, capsys, tmp_path / "run")
    for row in doc["grid"]["summary"]:  # what a bootstrap would add
        d2 = row["metrics"]["distinct_2"]
        row["intervals"] = {"distinct_2": {"low": d2 - 0.0125, "high": d2 + 0.0125},
                            "generation_perplexity": {"low": 1.0, "high": 99.0}}
    doc["grid"]["human_intervals"] = {"distinct_2": {"low": 0.25, "high": 0.75}}
    (tmp_path / "eval.json").write_text(json.dumps(doc))
    doc = read_eval_doc(tmp_path / "eval.json")  # the schema takes them
    first = doc["grid"]["summary"][0]
    low, high = (f"{first['intervals']['distinct_2'][k]:.3f}" for k in ("low", "high"))
    mean_rows = [r for r in csv.DictReader(grid_csv(doc).splitlines()) if r["source"] == "mean"]
    assert float(mean_rows[0]["distinct_2_low"]) == first["intervals"]["distinct_2"]["low"]
    assert mean_rows[0]["self_bleu_4_low"] == ""  # no interval computed for it
    assert f"[{low}, {high}]" in render_eval_section(doc, tmp_path)
    assert "[0.250, 0.750]" in render_eval_section(doc, tmp_path)  # the human row's
    assert any(f"[{low}, {high}]" in line for line in grid_table(doc["grid"]))
    from gpt2xl.metric_table import METRIC_BY_NAME

    assert plot_heatmap(doc, METRIC_BY_NAME["distinct_2"], tmp_path / "h.png").stat().st_size > 0
    assert plot_fluency_vs_diversity(doc, tmp_path / "s.png").stat().st_size > 0


def test_a_failure_while_writing_leaves_the_previous_run_untouched(monkeypatch, capsys, tmp_path):
    from gpt2xl_app import cli, eval_report

    run_dir = tmp_path / "run"
    _run(monkeypatch, capsys, run_dir)
    before = _files(run_dir)
    original = eval_report.plot_heatmap
    drawn: list[str] = []

    def failing(doc, metric, path):  # the first heatmap is drawn, the second fails
        if drawn:
            raise RuntimeError("injected plot failure")
        drawn.append(metric.name)
        return original(doc, metric, path)

    monkeypatch.setattr(eval_report, "plot_heatmap", failing)
    monkeypatch.setattr(sys, "argv", ["gpt2xl", "eval", "grid", "--run-dir", str(run_dir), *SMALL_RUN[:4],
                                      *SMALL_RUN[10:], "--seeds", "4,5"])
    with pytest.raises(RuntimeError, match="injected plot failure"):
        cli.main()
    assert drawn  # the failure came mid-way through the set
    assert _files(run_dir) == before  # no new JSON beside old plots, no staging directory, no lock
    assert manifest_problems(run_dir, manifest=MANIFEST) == []


def test_eval_grid_keeps_the_perplexity_of_the_same_model_and_refuses_another(monkeypatch, capsys, tmp_path):
    import gpt2xl.weights

    doc, _, _ = _run(monkeypatch, capsys, tmp_path)
    grid_args = ["eval", "grid", "--run-dir", str(tmp_path), *SMALL_RUN[:4], *SMALL_RUN[10:]]
    code, _, err = _main(monkeypatch, capsys, *grid_args, "--seeds", "7")
    assert code == 0, err
    assert f"note: kept the perplexity and LAMBADA results of {tmp_path / 'eval.json'}" in err
    new = json.loads((tmp_path / "eval.json").read_text())
    assert new["perplexity"] == doc["perplexity"]
    assert new["lambada"] == doc["lambada"]
    assert new["seeds"] == [7]
    assert {c["seed"] for c in new["grid"]["cells"]} == {7}
    assert new["config"]["ppl_datasets"] == ["tinyshakespeare"]  # the run's settings stay with its results
    assert "### Perplexity" in (tmp_path / "report.md").read_text()
    before = _files(tmp_path)

    code, _, err = _main(monkeypatch, capsys, *grid_args, "--model", "random:tiny")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: --run-dir {tmp_path} holds eval results of checkpoint ")
    assert "not of RANDOM weights (tiny shape, seed 0) (fp32 on cpu); pass another --run-dir" in err

    def tripwire(*_args, **_kwargs):
        pytest.fail("the model was loaded before another dtype was refused")

    monkeypatch.setattr(gpt2xl.weights, "load_model", tripwire)
    code, _, err = _main(monkeypatch, capsys, *grid_args, "--dtype", "bf16")
    assert code == 2
    assert f"not of {TINY_SHAKESPEARE} (bf16)" in err
    assert _files(tmp_path) == before


def test_finished_parts_are_saved_before_the_grid_and_a_rerun_resumes(monkeypatch, capsys, tmp_path):
    import gpt2xl.grid
    import gpt2xl.perplexity
    from gpt2xl_app import cli

    def grid_dies(*_args, **_kwargs):
        raise RuntimeError("killed during the grid")

    with monkeypatch.context() as m:
        m.setattr(gpt2xl.grid, "run_grid", grid_dies)
        m.setattr(sys, "argv", ["gpt2xl", "eval", "run", "--run-dir", str(tmp_path), *SMALL_RUN, *RUN_ONLY])
        with pytest.raises(RuntimeError, match="killed during the grid"):
            cli.main()
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["grid"] is None
    assert saved["perplexity"][0]["result"]["tokens_scored"] == 297
    assert saved["lambada"]["result"]["num_examples"] == 3
    assert manifest_problems(tmp_path, manifest=MANIFEST) == []
    assert "### Perplexity" in (tmp_path / "report.md").read_text()

    def tripwire(*_args, **_kwargs):
        pytest.fail("a finished part was computed again")

    with monkeypatch.context() as m:
        m.setattr(gpt2xl.perplexity, "sliding_window_nll", tripwire)
        m.setattr(gpt2xl.perplexity, "lambada_eval", tripwire)
        doc, _, err = _run(monkeypatch, capsys, tmp_path, "--resume")
    assert "note: reused perplexity on tinyshakespeare, LAMBADA from the earlier" in err
    assert doc["perplexity"] == saved["perplexity"]
    assert doc["lambada"] == saved["lambada"]
    assert doc["reused"]["parts"] == ["perplexity on tinyshakespeare", "LAMBADA"]
    assert len(doc["grid"]["cells"]) == 4
    assert manifest_problems(tmp_path, manifest=MANIFEST) == []
    assert "| reused (--resume) | perplexity on tinyshakespeare, LAMBADA from an earlier run" in (
        tmp_path / "report.md").read_text()

    # Another setting is not "the same part": the perplexity is computed again, the grid reused.
    doc, _, _ = _run(monkeypatch, capsys, tmp_path, "--resume", "--ppl-max-tokens", "200")
    assert doc["perplexity"][0]["result"]["tokens_scored"] == 198
    assert doc["reused"]["parts"] == ["LAMBADA", "the grid"]
