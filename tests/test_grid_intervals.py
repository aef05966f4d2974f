"""The grid's bootstrap intervals, neighbour tests and top-p axis: intervals hold their estimate and
repeat for a seed, the CSV carries them, clearly different settings test significant and identical
ones do not, and top-p 1 leaves the cells as they were."""

from __future__ import annotations

import csv
import dataclasses
import math

import pytest

from gpt2xl.errors import ConfigError
from gpt2xl.grid import GridConfig, grid_shards, human_units, run_grid, sample_shard, score_samples
from gpt2xl.grid_intervals import grid_statistics
from gpt2xl.metric_table import INTERVAL_METRICS, SHOWN_METRICS
from gpt2xl.metrics import self_bleu, self_bleu_scores
from tests.conftest import SHARED_DATA


def _cfg(**kw) -> GridConfig:
    base = dict(dataset="tinyshakespeare", num_prompts=10, prompt_tokens=8, max_new_tokens=16,
                temperatures=(0.3, 1.5), top_ks=(0,), top_ps=(1.0,), seeds=(0, 1), batch_size=10, n_resamples=200,
                weighted_resamples=60)
    base.update(kw)
    return GridConfig(**base)


@pytest.fixture(scope="module")
def prompts():
    from gpt2xl.data import eval_split, load_corpus
    from gpt2xl.grid import grid_prompts

    ids = list(eval_split(load_corpus("tinyshakespeare", data_dir=SHARED_DATA)).token_ids)
    cfg = _cfg()
    return grid_prompts(ids, num_prompts=cfg.num_prompts, prompt_tokens=cfg.prompt_tokens,
                        continuation_tokens=cfg.max_new_tokens)


@pytest.fixture(scope="module")
def grid(tiny_shakespeare, prompts):
    from gpt2xl.evaluation import grid_entry

    return grid_entry(tiny_shakespeare.model, prompts, _cfg(), progress=False)


def test_every_shown_metric_of_every_setting_and_the_human_row_has_an_interval_around_its_value(grid):
    rows = [*((r["metrics"], r["intervals"]) for r in grid["summary"]), (grid["human"], grid["human_intervals"])]
    assert len(rows) == 3
    for values, intervals in rows:
        assert set(intervals) == {m.name for m in INTERVAL_METRICS}
        for name, interval in intervals.items():
            assert interval["low"] <= interval["estimate"] <= interval["high"], (name, interval)
            assert math.isclose(values[name], interval["estimate"], rel_tol=1e-12), name
        assert intervals["generation_perplexity"]["low"] < intervals["generation_perplexity"]["high"]
    # the human row's value is the cell metric itself (one continuation per prompt): the estimate matches it
    assert grid["human_intervals"]["distinct_2"]["estimate"] == grid["human"]["distinct_2"]
    assert math.isclose(grid["human_intervals"]["self_bleu_4"]["estimate"], grid["human"]["self_bleu_4"])
    info = grid["intervals"]
    assert (info["seed"], info["n_resamples"], info["weighted_resamples"]) == (0, 200, 60)
    assert grid["config"]["bootstrap_seed"] == 0 and grid["config"]["n_resamples"] == 200
    assert grid["summary"][0]["intervals"]["distinct_2"]["n_resamples"] == 200
    assert grid["summary"][0]["intervals"]["self_bleu_4"]["n_resamples"] == 60


def test_a_setting_s_value_scores_overlap_within_each_seed_s_cell(grid):
    # distinct-2 of a setting: unique bigrams per seed's cell, summed, over all bigrams; with no
    # early end-of-text every cell has as many bigrams, so it is the mean of the cells' values.
    for row in grid["summary"]:
        cells = [c for c in grid["cells"] if c["temperature"] == row["temperature"]]
        if all(c["metrics"]["eot_rate"] == 0 for c in cells):
            mean = sum(c["metrics"]["distinct_2"] for c in cells) / len(cells)
            assert math.isclose(row["metrics"]["distinct_2"], mean, rel_tol=1e-12)


def test_intervals_repeat_for_a_seed_and_move_with_another(tiny_shakespeare, prompts):
    cfg = _cfg(temperatures=(1.0,), seeds=(0,), weighted_resamples=40)
    cells = run_grid(tiny_shakespeare.model, prompts, cfg)
    _, human = human_units(tiny_shakespeare.model, prompts, batch_size=cfg.batch_size)
    a = grid_statistics(cells, human, cfg)
    b = grid_statistics(cells, human, cfg)
    other = grid_statistics(cells, human, dataclasses.replace(cfg, bootstrap_seed=7))
    assert a.intervals == b.intervals and a.human == b.human
    key = (1.0, 0, 1.0)
    assert a.intervals[key]["distinct_2"].seed == 0 and other.intervals[key]["distinct_2"].seed == 7
    assert a.intervals[key]["distinct_2"] != other.intervals[key]["distinct_2"]
    assert a.intervals[key]["distinct_2"].estimate == other.intervals[key]["distinct_2"].estimate


def test_the_csv_carries_each_interval_of_eval_json(grid):
    from gpt2xl.evaluation import grid_csv

    rows = list(csv.DictReader(grid_csv({"grid": grid}).splitlines()))
    means = [r for r in rows if r["source"] == "mean"]
    (human,) = [r for r in rows if r["source"] == "human"]
    assert len(means) == len(grid["summary"]) == 2
    for row, summary in zip(means, grid["summary"], strict=True):
        assert float(row["temperature"]) == summary["temperature"] and float(row["top_p"]) == 1.0
        for m in INTERVAL_METRICS:
            for side in ("low", "high"):
                assert float(row[f"{m.name}_{side}"]) == summary["intervals"][m.name][side]
    for m in INTERVAL_METRICS:
        assert float(human[f"{m.name}_low"]) == grid["human_intervals"][m.name]["low"]


def test_clearly_different_temperatures_differ_significantly(grid):
    tests = grid["neighbour_tests"]
    assert tests["test"].startswith("paired cluster bootstrap over the same prompts and seeds")
    assert tests["correction"] == "none" and tests["level"] == 0.05
    comparisons = tests["comparisons"]
    assert {t["axis"] for t in comparisons} == {"temperature"}  # one top-k, one top-p: no other axis
    assert len(comparisons) == len(INTERVAL_METRICS)
    (d2,) = [t for t in comparisons if t["metric"] == "distinct_2"]
    assert (d2["left"]["temperature"], d2["right"]["temperature"]) == (0.3, 1.5)
    assert d2["significant"] and d2["p_value"] < 0.05 and d2["low"] > 0  # more diverse at 1.5


def test_identical_settings_do_not_differ_significantly(tiny_shakespeare, prompts):
    # top-k above the vocabulary samples exactly as the whole vocabulary: two identical settings.
    cfg = _cfg(temperatures=(1.0,), top_ks=(0, 10**6), weighted_resamples=40)
    cells = run_grid(tiny_shakespeare.model, prompts, cfg)
    computed = grid_statistics(cells, (), cfg)
    assert computed.human == {}
    assert {t["axis"] for t in computed.tests} == {"top_k"} and len(computed.tests) == len(INTERVAL_METRICS)
    for t in computed.tests:
        assert not t["significant"] and t["p_value"] == 1.0 and t["difference"] == 0.0, t


def test_top_p_one_reproduces_the_cells_without_top_p(tiny_shakespeare, prompts):
    from gpt2xl.grid import SampleSet
    from gpt2xl.sampling import SamplingConfig, generate, make_generator

    cfg = _cfg(temperatures=(1.0,), top_ks=(20,), seeds=(3,))
    (cell,) = run_grid(tiny_shakespeare.model, prompts, cfg)
    assert cell.top_p == 1.0
    out = generate(tiny_shakespeare.model, [list(p.tokens) for p in prompts],
                   SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=1.0, top_k=20),
                   generator=make_generator(3, "cpu"))
    assert [list(s.tokens) for s in cell.samples] == [list(t) for t in out.tokens]
    old = score_samples(tiny_shakespeare.model, prompts, SampleSet(tokens=tuple(tuple(t) for t in out.tokens),
                                                                    hit_eot=tuple(out.hit_eot)),
                        batch_size=cfg.batch_size)
    assert cell.metrics == old


def test_two_top_p_values_give_distinct_cells_and_their_own_heatmaps(tiny_shakespeare, prompts, tmp_path):
    from gpt2xl.evaluation import grid_csv, grid_entry
    from gpt2xl_app.eval_report import write_eval_plots

    cfg = _cfg(temperatures=(1.0,), top_ks=(0,), top_ps=(1.0, 0.5), seeds=(0,), weighted_resamples=40)
    entry = grid_entry(tiny_shakespeare.model, prompts, cfg, progress=False)
    cells = entry["cells"]
    assert [c["top_p"] for c in cells] == [1.0, 0.5]
    assert cells[0]["metrics"] != cells[1]["metrics"]
    assert cells[0]["metrics"]["distinct_1"] > cells[1]["metrics"]["distinct_1"]  # the nucleus cut narrows
    alone = run_grid(tiny_shakespeare.model, prompts, dataclasses.replace(cfg, top_ps=(1.0,)))
    assert cells[0]["metrics"] == alone[0].metrics.to_dict()  # a cell does not depend on the other top-p's
    rows = list(csv.DictReader(grid_csv({"grid": entry}).splitlines()))
    assert [r["top_p"] for r in rows if r["source"] == "model"] == ["1.0", "0.5"]
    assert {t["axis"] for t in entry["neighbour_tests"]["comparisons"]} == {"top_p"}
    names = {p.name for p in write_eval_plots({"model": {"kind": "random", "label": "x", "spec": "x"},
                                                 "grid": entry}, tmp_path)}
    assert {"eval_heatmap_distinct_2_p0.5.png", "eval_heatmap_distinct_2_p1.png"} <= names
    assert "eval_heatmap_distinct_2.png" not in names


def test_a_shard_takes_top_p_one_as_no_cut(tiny_shakespeare, prompts):
    from gpt2xl.sampling import SamplingConfig, generate, make_generator

    cfg = _cfg()
    (shard, *_) = grid_shards(dataclasses.replace(cfg, temperatures=(1.0,), top_ks=(0,), top_ps=(1.0,), seeds=(5,),
                                                  batch_size=2), len(prompts))
    got = sample_shard(tiny_shakespeare.model, prompts, shard, cfg=cfg)
    out = generate(tiny_shakespeare.model, [list(p.tokens) for p in prompts[:2]],
                   SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=1.0),
                   generator=make_generator(5, "cpu"))
    assert [list(t) for t in got.tokens] == [list(t) for t in out.tokens]


@pytest.mark.parametrize(
    "kw",
    [{"top_ps": (0.0,)}, {"top_ps": (1.5,)}, {"top_ps": (math.nan,)}, {"top_ps": (0.9, 0.9)}, {"top_ps": ()},
     {"top_ps": [0.9]}, {"bootstrap_seed": -1}, {"n_resamples": 10}, {"weighted_resamples": 0}],
)
def test_grid_config_refuses_bad_top_ps_and_resampler_settings(kw):
    with pytest.raises(ConfigError):
        _cfg(**kw)


def test_self_bleu_scores_are_the_terms_of_self_bleu():
    samples = [[1, 2, 3, 4, 5], [], [1, 2, 3, 9, 9], [7, 8, 7, 8]]
    scores = self_bleu_scores(samples)
    assert scores[1] is None and all(s is not None for i, s in enumerate(scores) if i != 1)
    terms = [s for s in scores if s is not None]
    assert math.fsum(terms) / len(terms) == self_bleu(samples)
    assert self_bleu_scores([[1, 2], []]) == [None, None]  # nothing to compare


def test_the_zipf_coefficient_is_the_metrics_function_on_each_cell_s_samples(tiny_shakespeare, prompts, grid):
    from gpt2xl.metrics import zipf_coefficient

    (cell,) = run_grid(tiny_shakespeare.model, prompts, _cfg(temperatures=(1.0,), seeds=(0,)))
    assert cell.metrics["zipf_coefficient"] == zipf_coefficient([s.tokens for s in cell.samples]).coefficient
    assert grid["human"]["zipf_coefficient"] == zipf_coefficient([p.continuation for p in prompts]).coefficient
    assert grid["human_intervals"]["zipf_coefficient"]["estimate"] == grid["human"]["zipf_coefficient"]
    for row in grid["summary"]:  # a setting's value: the mean over seeds of its cells' coefficients
        cells = [c for c in grid["cells"] if c["temperature"] == row["temperature"]]
        mean = math.fsum(c["metrics"]["zipf_coefficient"] for c in cells) / len(cells)
        assert row["metrics"]["zipf_coefficient"] == mean


def test_the_report_marks_the_significant_neighbour_differences_and_names_the_test(grid, tmp_path):
    from gpt2xl_app.eval_report import render_eval_section

    text = render_eval_section({"grid": grid}, tmp_path)
    assert grid["neighbour_tests"]["test"] in text
    (row,) = [line for line in text.splitlines() if line.startswith("| 1.5 | all | 1 |")]
    d2 = [m.name for m in SHOWN_METRICS].index("distinct_2")
    assert row.split(" | ")[3 + d2].endswith("†")  # distinct-2 at T=1.5 differs from T=0.3
    (row,) = [line for line in text.splitlines() if line.startswith("| 0.3 | all | 1 |")]
    assert "†" not in row  # the first setting along the axis has no previous one
