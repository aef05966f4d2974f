"""MAUVE per grid setting: the score is mauve-text's on the featurizer's embeddings of the human
continuations of the prompts (P) and the setting's non-empty samples over all its seeds (Q); it
reaches the setting rows, the CSV, the report and the plots, and is absent where undefined."""

from __future__ import annotations

import csv
import dataclasses

import pytest

from gpt2xl.grid import GridConfig, Prompt, human_units, run_grid
from gpt2xl.grid_mauve import Featurizer, grid_mauve, human_reference_texts, mauve_seed
from gpt2xl.mauve import MAUVE_SEED_MAX, featurize, mauve_score
from tests.conftest import SHARED_DATA

# 20 prompts x 2 seeds: 40 texts a side, 4 k-means clusters (mauve-text: one per 10 texts of the smaller side)
CFG = GridConfig(dataset="tinyshakespeare", num_prompts=20, prompt_tokens=8, max_new_tokens=16,
                 temperatures=(0.3, 1.5), top_ks=(0,), top_ps=(1.0,), seeds=(0, 1), batch_size=20, n_resamples=200,
                 weighted_resamples=40, bootstrap_seed=3)


@pytest.fixture(scope="module")
def split_ids():
    from gpt2xl.data import eval_split, load_corpus

    return list(eval_split(load_corpus("tinyshakespeare", data_dir=SHARED_DATA)).token_ids)


@pytest.fixture(scope="module")
def prompts(split_ids):
    from gpt2xl.grid import grid_prompts

    return grid_prompts(split_ids, num_prompts=CFG.num_prompts, prompt_tokens=CFG.prompt_tokens,
                        continuation_tokens=CFG.max_new_tokens)


@pytest.fixture(scope="module")
def reference(split_ids):
    return human_reference_texts(split_ids, count=CFG.num_prompts * len(CFG.seeds), length=CFG.max_new_tokens)


@pytest.fixture(scope="module")
def grid(tiny_shakespeare, prompts, reference):
    from gpt2xl.evaluation import grid_entry

    return grid_entry(tiny_shakespeare.model, prompts, CFG, progress=False, mauve_reference=reference)


def test_human_texts_are_evenly_spaced_chunks_as_long_as_a_generation(split_ids, reference):
    assert len(reference) == 40
    assert all(len(t) == CFG.max_new_tokens for t in reference)
    assert reference[0] == tuple(split_ids[1 : 1 + CFG.max_new_tokens])  # after the one-token "prompt"
    assert reference[-1] == tuple(split_ids[-CFG.max_new_tokens :])
    assert human_reference_texts(list(range(50)), count=10, length=9) == tuple(
        tuple(range(s + 1, s + 10)) for s in (0, 10, 20, 30, 40))  # only 5 spans of 10 fit in 50 tokens
    assert human_reference_texts(list(range(5)), count=3, length=9) == ()


def test_each_setting_s_mauve_is_mauve_text_on_the_human_and_pooled_samples(tiny_shakespeare, prompts, reference,
                                                                              grid):
    model = tiny_shakespeare.model
    p = featurize(model, reference, batch_size=4)
    cells = run_grid(model, prompts, CFG)
    for row in grid["summary"]:
        samples = [u.tokens for c in cells if c.temperature == row["temperature"] for u in c.samples if u.tokens]
        q = featurize(model, samples, batch_size=4)
        expected = mauve_score(p, q, seed=3, featurizer="the evaluated model")
        assert row["metrics"]["mauve"] == expected.score
        (entry,) = [s for s in grid["mauve"]["settings"] if s["temperature"] == row["temperature"]]
        assert (entry["q_samples"], entry["num_clusters"]) == (len(samples), expected.num_clusters)
    assert grid["mauve"]["p_samples"] == 40
    assert grid["mauve"]["featurizer"] == "the evaluated model"
    assert grid["mauve"]["seed"] == 3
    assert "only comparable within one featurizer" in grid["mauve"]["comparable"]
    # a seed's cell has too few samples for the clustering: n/a there and on the human row
    assert all(c["metrics"]["mauve"] is None for c in grid["cells"])
    assert grid["human"]["mauve"] is None


def test_mauve_tells_apart_a_near_greedy_setting_from_a_hot_one(grid):
    by_t = {r["temperature"]: r["metrics"]["mauve"] for r in grid["summary"]}
    assert 0 < by_t[0.3] <= 1
    assert 0 < by_t[1.5] <= 1
    assert by_t[0.3] != by_t[1.5]


def test_mauve_has_a_csv_column_but_no_interval_and_no_test(grid):
    from gpt2xl.evaluation import grid_csv

    rows = list(csv.DictReader(grid_csv({"grid": grid}).splitlines()))
    assert "mauve_low" not in rows[0]
    means = [r for r in rows if r["source"] == "mean"]
    assert [float(r["mauve"]) for r in means] == [r["metrics"]["mauve"] for r in grid["summary"]]
    assert all(r["mauve"] == "" for r in rows if r["source"] in {"model", "human"})
    assert all("mauve" not in (r.get("intervals") or {}) for r in grid["summary"])
    assert all(t["metric"] != "mauve" for t in grid["neighbour_tests"]["comparisons"])


def test_the_report_states_the_featurizer_and_sizes_and_plots_mauve(grid, tmp_path):
    from gpt2xl_app.eval_report import render_eval_section, write_eval_plots

    doc = {"model": {"kind": "checkpoint", "label": "tiny", "spec": "tiny"}, "grid": grid}
    names = {p.name for p in write_eval_plots(doc, tmp_path)}
    assert "eval_heatmap_mauve.png" in names
    text = render_eval_section(doc, tmp_path)
    assert "MAUVE: featurizer the evaluated model, P = 40 human texts of the dataset, Q = 40 non-empty samples" in text
    assert "| MAUVE |" in text


def test_without_mauve_the_grid_says_so_and_plots_no_mauve(tiny_shakespeare, prompts, tmp_path):
    from gpt2xl.evaluation import grid_entry
    from gpt2xl_app.eval_report import render_eval_section, write_eval_plots

    grid = grid_entry(tiny_shakespeare.model, prompts, dataclasses.replace(CFG, temperatures=(1.0,), mauve=False),
                      progress=False)
    assert grid["mauve"] is None
    assert grid["summary"][0]["metrics"]["mauve"] is None
    doc = {"model": {"kind": "checkpoint", "label": "tiny", "spec": "tiny"}, "grid": grid}
    assert "eval_heatmap_mauve.png" not in {p.name for p in write_eval_plots(doc, tmp_path)}
    assert "MAUVE was not scored in this run" in render_eval_section(doc, tmp_path)


def test_a_setting_with_only_empty_samples_has_no_score_and_says_why(eot_model):
    prompts = [Prompt(start=i * 10, tokens=(1 + i, 2, 3), continuation=(4 + i, 5, 6 + i)) for i in range(4)]
    cfg = dataclasses.replace(CFG, num_prompts=4, prompt_tokens=3, max_new_tokens=4, temperatures=(1.0,),
                              seeds=(0,), batch_size=4)
    cells = run_grid(eot_model, prompts, cfg)
    _, human = human_units(eot_model, prompts, batch_size=4)
    result = grid_mauve(Featurizer(name="eot", model=eot_model), reference=[u.tokens for u in human], cells=cells,
                        seed=0, batch_size=4)
    (setting,) = result.settings
    assert (setting.score, setting.q_samples, setting.left_out_empty) == (None, 0, 4)
    assert setting.note == "no non-empty sample"


def test_the_k_means_seed_is_the_bootstrap_seed_folded_into_mauve_text_s_range():
    assert mauve_seed(3) == 3
    assert mauve_seed(MAUVE_SEED_MAX) == MAUVE_SEED_MAX
    assert mauve_seed(MAUVE_SEED_MAX + 1) == 0
    assert 0 <= mauve_seed(2**63 - 1) <= MAUVE_SEED_MAX


def test_without_mauve_text_the_grid_options_fail_before_any_work_unless_mauve_is_off(monkeypatch, tmp_path):
    import importlib.util

    from gpt2xl.errors import ConfigError
    from gpt2xl.evaluation import GridOptions

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mauve" else real(name, *a))
    common = {"model": "random:tiny", "data_dir": SHARED_DATA, "device": "cpu", "dtype": "fp32", "threads": None,
              "run_dir": tmp_path / "run"}
    with pytest.raises(ConfigError, match=r"MAUVE needs the mauve-text package \(mauve not installed\); install it "
                                          r"with `pip install 'gpt2xl\[eval\]'`, or leave MAUVE out with --no-mauve\."):
        GridOptions(grid=CFG, **common)
    GridOptions(grid=dataclasses.replace(CFG, mauve=False), **common)
    assert not (tmp_path / "run").exists()
