"""The holtzman preset: Table 1's sampling rows as the grid's settings (not a product), run end to
end on the fixture, reported beside the published values with the caveats stated."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gpt2xl.errors import ConfigError
from gpt2xl.grid import GridConfig, grid_shards
from gpt2xl.holtzman import ROWS, preset_entry, preset_grid
from tests.conftest import REPO, TINY_SHAKESPEARE

TABLE_1 = {  # label: (temperature, top_k, top_p) as the paper describes each row
    "Greedy": (0.0, 0, 1.0), "Pure sampling": (1.0, 0, 1.0), "Sampling, t=0.9": (0.9, 0, 1.0),
    "Top-k=40": (1.0, 40, 1.0), "Top-k=640": (1.0, 640, 1.0), "Top-k=40, t=0.7": (0.7, 40, 1.0),
    "Nucleus p=0.95": (1.0, 0, 0.95),
}


def test_the_preset_samples_exactly_table_1_s_rows_not_their_product():
    cfg = preset_grid("holtzman", dataset="tinyshakespeare", seeds=(0, 1), num_prompts=4, batch_size=4)
    assert {r.label: r.setting for r in ROWS} == TABLE_1
    assert cfg.settings == tuple(TABLE_1.values())
    assert cfg.num_cells == 7 * 2
    assert (cfg.temperatures, cfg.top_ks, cfg.top_ps) == ((0.0, 0.7, 0.9, 1.0), (0, 40, 640), (0.95, 1.0))
    assert [(s.temperature, s.top_k, s.top_p, s.seed) for s in grid_shards(cfg, 4)][:3] == [
        (0.0, 0, 1.0, 0), (0.0, 0, 1.0, 1), (1.0, 0, 1.0, 0)]
    assert GridConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.preset == "holtzman"


def test_published_values_are_in_our_metric_units():
    pure = next(r for r in ROWS if r.label == "Pure sampling")
    assert pure.published == {"generation_perplexity": 22.73, "self_bleu_4": 0.28, "zipf_coefficient": 0.93,
                              "repetition_rate": 0.0022}  # Repetition % 0.22 as a fraction


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"points": ((1.0, 0, 1.0), (1.0, 0, 1.0))}, "must not repeat a setting"),
     ({"points": ((1.0, -1, 1.0),)}, "top-k"),
     ({"points": ((1.0, 0),)}, r"must be \(temperature, top_k, top_p\)"),
     ({"points": ((1.0, 0, 1.0),), "temperatures": (0.5,)}, "temperatures must list exactly the values"),
     ({"preset": ""}, "preset must be a non-empty name")],
)
def test_grid_points_are_checked(kw, match):
    base = {"dataset": "tinyshakespeare", "temperatures": (1.0,), "top_ks": (0,), "top_ps": (1.0,)}
    with pytest.raises(ConfigError, match=match):
        GridConfig(**{**base, **kw})


def test_an_unknown_preset_is_refused():
    with pytest.raises(ConfigError, match="Unknown grid preset 'nope'; the presets are: holtzman"):
        preset_grid("nope", dataset="tinyshakespeare")


def test_the_model_note_says_what_ours_ran_on():
    large = {"kind": "checkpoint", "label": "gpt2-large", "config": {"n_layer": 36, "n_embd": 1280}}
    xl = {"kind": "pretrained", "label": "gpt2-xl", "config": {"n_layer": 48, "n_embd": 1600}}
    random_large = {**large, "kind": "random", "label": "random:gpt2-large"}
    assert preset_entry(large)["model_note"] is None
    assert preset_entry(xl)["model_note"] == "Ours ran on GPT-2 XL, the paper on GPT-2 Large."
    assert "not trained GPT-2 Large or XL weights" in preset_entry(random_large)["model_note"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpt2xl_app.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False)


def test_the_preset_runs_on_the_fixture_and_reports_beside_the_published_values(tmp_path):
    run = tmp_path / "run"
    proc = _cli("eval", "grid", "--run-dir", str(run), "-m", str(TINY_SHAKESPEARE), "--preset", "holtzman",
                "--num-prompts", "6", "--prompt-tokens", "8", "--max-new-tokens", "12", "--seeds", "0,1",
                "--batch-size", "6", "--no-mauve", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    grid = json.loads((run / "eval.json").read_text())["grid"]
    assert [tuple(p) for p in grid["config"]["points"]] == list(TABLE_1.values())
    assert len(grid["summary"]) == 7
    greedy = [c for c in grid["cells"] if c["temperature"] == 0.0]
    assert len(greedy) == 2
    assert greedy[0]["metrics"] == greedy[1]["metrics"]  # greedy: every seed continues the same way
    axes = {(t["axis"], t["left"]["temperature"], t["right"]["temperature"]) for t in grid["neighbour_tests"][
        "comparisons"] if t["axis"] == "temperature"}
    assert axes == {("temperature", 0.0, 0.9), ("temperature", 0.9, 1.0), ("temperature", 0.7, 1.0)}
    assert "not trained GPT-2 Large or XL weights" in grid["preset"]["model_note"]
    report = (run / "report.md").read_text()
    assert "#### holtzman preset: ours beside the published values" in report
    assert "WebText is not available here" in report
    (pure,) = [line for line in report.splitlines() if line.startswith("| Pure sampling |")]
    ours = next(r for r in grid["summary"] if (r["temperature"], r["top_k"], r["top_p"]) == (1.0, 0, 1.0))
    assert f"{ours['metrics']['generation_perplexity']:.2f} [" in pure
    assert "| 22.73 |" in pure


def test_the_preset_refuses_axis_options_before_any_work(tmp_path):
    proc = _cli("eval", "grid", "--run-dir", str(tmp_path / "run"), "-m", str(TINY_SHAKESPEARE), "--preset",
                "holtzman", "--temperatures", "0.5")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["error: --preset holtzman names its own settings; drop --temperatures."]
    assert not (tmp_path / "run").exists()
