"""The sampling grid: config validation, prompts, determinism, and the edge cases (all
end-of-text, empty generations, top-k above the vocabulary, prompts that do not fit the context
or the split)."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from gpt2xl.config import GPTConfig
from gpt2xl.errors import ConfigError
from gpt2xl.grid import (
    GridConfig,
    Prompt,
    ShardResult,
    assemble_cells,
    check_fits_context,
    continuation_nll,
    grid_prompts,
    grid_shards,
    run_grid,
    run_shard,
    shard_seed,
)
from gpt2xl.model import GPT
from tests.conftest import SHARED_DATA


@pytest.fixture(scope="module")
def split_ids() -> list[int]:
    from gpt2xl.data import eval_split, load_corpus

    return list(eval_split(load_corpus("tinyshakespeare", data_dir=SHARED_DATA)).token_ids)


def _cfg(**kw) -> GridConfig:
    base = dict(dataset="tinyshakespeare", num_prompts=4, prompt_tokens=8, max_new_tokens=8,
                temperatures=(1.0,), top_ks=(0,), top_ps=(1.0,), seeds=(0,), batch_size=4)
    base.update(kw)
    return GridConfig(**base)


@pytest.mark.parametrize(
    "kw",
    [
        {"temperatures": ()},
        {"temperatures": (-0.1,)},
        {"temperatures": (float("nan"),)},
        {"top_ks": (-1,)},
        {"top_ks": (1.5,)},
        {"seeds": (0, 0)},
        {"seeds": (2**64,)},
        {"temperatures": (float("inf"),)},
        {"temperatures": (True,)},
        {"num_prompts": 0},
        {"batch_size": True},
        {"dataset": ""},
    ],
)
def test_grid_config_rejects_bad_values(kw):
    with pytest.raises(ConfigError):
        _cfg(**kw)


def test_grid_config_round_trips_through_dict():
    cfg = _cfg(temperatures=(0.5, 1.0), top_ks=(0, 5), seeds=(1, 2))
    assert GridConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.num_cells == 8
    with pytest.raises(ConfigError, match="Unknown"):
        GridConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_grid_prompts_evenly_spaced_fixed_length():
    ids = list(range(100))
    prompts = grid_prompts(ids, num_prompts=4, prompt_tokens=5, continuation_tokens=3)
    assert [p.start for p in prompts] == [0, 31, 61, 92]  # round(i * 92 / 3)
    assert all(len(p.tokens) == 5 and len(p.continuation) == 3 for p in prompts)
    assert prompts[-1].continuation == (97, 98, 99)
    assert prompts[1].tokens == tuple(range(31, 36))
    assert grid_prompts(ids, num_prompts=1, prompt_tokens=5, continuation_tokens=3)[0].start == 0
    with pytest.raises(ConfigError, match="fewer"):
        grid_prompts(ids[:7], num_prompts=2, prompt_tokens=5, continuation_tokens=3)


def test_grid_prompts_refuse_more_prompts_than_the_split_holds():
    ids = list(range(100))
    assert len(grid_prompts(ids, num_prompts=12, prompt_tokens=5, continuation_tokens=3)) == 12  # 96 tokens fit
    with pytest.raises(ConfigError, match=r"need 104 tokens but the split holds 100; use --num-prompts 12 or fewer"):
        grid_prompts(ids, num_prompts=13, prompt_tokens=5, continuation_tokens=3)


def test_grid_is_deterministic_under_a_seed(tiny_shakespeare, split_ids):
    cfg = _cfg(temperatures=(1.0,), top_ks=(0, 20), seeds=(0, 1))
    prompts = grid_prompts(split_ids, num_prompts=4, prompt_tokens=8, continuation_tokens=8)
    a = run_grid(tiny_shakespeare.model, prompts, cfg)
    b = run_grid(tiny_shakespeare.model, prompts, cfg)
    assert [(c.temperature, c.top_k, c.seed) for c in a] == [(1.0, 0, 0), (1.0, 0, 1), (1.0, 20, 0), (1.0, 20, 1)]
    for x, y in zip(a, b):
        assert x.examples == y.examples and x.metrics == y.metrics
    # another seed gives other samples
    assert a[0].examples != a[1].examples
    # a cell does not depend on which cells ran before it
    alone = run_grid(tiny_shakespeare.model, prompts, _cfg(top_ks=(20,), seeds=(1,)))
    assert alone[0].examples == a[3].examples and alone[0].metrics == a[3].metrics


def test_shard_seeds_are_the_cell_seed_first_then_a_fixed_derivation():
    assert shard_seed(7, 0) == 7  # a cell that fits one batch samples as make_generator(seed) always did
    derived = [shard_seed(7, i) for i in range(1, 50)]
    assert derived == [shard_seed(7, i) for i in range(1, 50)]  # pure: no state, no worker order
    assert len(set(derived)) == 49 and 7 not in derived
    assert shard_seed(8, 1) != shard_seed(7, 1)
    assert all(0 <= d < 2**63 for d in derived)
    # pinned: a change of the derivation changes every sharded grid, so it must be deliberate
    assert shard_seed(0, 1) == int.from_bytes(hashlib.sha256(b"gpt2xl-shard/0/1").digest()[:8], "big") % 2**63


def test_shards_give_the_same_cells_in_any_order_and_resume_skips_finished_ones(tiny_shakespeare, split_ids):
    cfg = _cfg(temperatures=(1.0,), top_ks=(0, 20), seeds=(0, 1), batch_size=3)  # 4 prompts: shards of 3 and 1
    prompts = grid_prompts(split_ids, num_prompts=4, prompt_tokens=8, continuation_tokens=8)
    shards = grid_shards(cfg, len(prompts))
    assert [(s.index, s.start, s.stop) for s in shards[:2]] == [(0, 0, 3), (1, 3, 4)] and len(shards) == 8
    in_order = run_grid(tiny_shakespeare.model, prompts, cfg)

    def backwards(todo):
        for shard in reversed(list(todo)):
            yield run_shard(tiny_shakespeare.model, prompts, shard, cfg=cfg)

    reordered = run_grid(tiny_shakespeare.model, prompts, cfg, runner=backwards)
    assert [c.samples for c in reordered] == [c.samples for c in in_order]
    assert [c.metrics for c in reordered] == [c.metrics for c in in_order]
    # the second shard of a cell is sampled with its own generator, not the first shard's leftovers
    (cell, *_) = in_order
    assert cell.samples[3].tokens == run_shard(tiny_shakespeare.model, prompts, shards[1], cfg=cfg).samples[0].tokens
    # a resumed run: finished shards (read back from their JSON) are not run again
    done = [ShardResult.from_dict(json.loads(json.dumps(run_shard(tiny_shakespeare.model, prompts, s, cfg=cfg)
                                                         .to_dict()))) for s in shards[:5]]
    ran = []

    def counting(todo):
        for shard in todo:
            ran.append(shard.key)
            yield run_shard(tiny_shakespeare.model, prompts, shard, cfg=cfg)

    resumed = run_grid(tiny_shakespeare.model, prompts, cfg, runner=counting, done=done)
    assert ran == [s.key for s in shards[5:]]
    assert [c.metrics for c in resumed] == [c.metrics for c in in_order]


def test_assembling_cells_refuses_missing_or_foreign_shards(tiny_shakespeare, split_ids):
    cfg = _cfg(batch_size=2)
    prompts = grid_prompts(split_ids, num_prompts=4, prompt_tokens=8, continuation_tokens=8)
    shards = grid_shards(cfg, len(prompts))
    results = [run_shard(tiny_shakespeare.model, prompts, s, cfg=cfg) for s in shards]
    with pytest.raises(ConfigError, match="1 of 2 grid shards have no result"):
        assemble_cells(shards, results[:1])
    with pytest.raises(ConfigError, match="came twice"):
        assemble_cells(shards, [*results, results[0]])


def test_top_k_above_the_vocabulary_equals_the_whole_vocabulary(tiny_shakespeare, split_ids):
    prompts = grid_prompts(split_ids, num_prompts=4, prompt_tokens=8, continuation_tokens=8)
    cells = run_grid(tiny_shakespeare.model, prompts, _cfg(top_ks=(0, 10**6)))
    assert cells[0].examples == cells[1].examples
    assert cells[0].metrics == cells[1].metrics


def test_all_end_of_text_generations_give_empty_samples(eot_model):
    prompts = [Prompt(start=0, tokens=(1, 2, 3), continuation=(4, 5)), Prompt(start=5, tokens=(6, 7, 8), continuation=(9, 10))]
    for temperature in (0.0, 1.0):
        (cell,) = run_grid(eot_model, prompts, _cfg(temperatures=(temperature,), top_ks=(5,)))
        m = cell.metrics
        assert m.eot_rate == 1.0 and m.mean_length_tokens == 0.0 and m.generated_tokens == 0
        assert m.generation_perplexity is None  # nothing generated, nothing to score
        assert m.distinct_1 == m.distinct_2 == m.self_bleu_4 == m.repetition_rate == 0.0
        assert cell.examples == ((), ())


def test_check_fits_context_says_the_largest_value_that_fits():
    check_fits_context(prompt_tokens=120, max_new_tokens=9, block_size=128)  # the last token is never fed back
    with pytest.raises(ConfigError, match=r"with --prompt-tokens 120, use --max-new-tokens 9 or fewer"):
        check_fits_context(prompt_tokens=120, max_new_tokens=10, block_size=128)
    with pytest.raises(ConfigError, match=r"use --prompt-tokens 128 or fewer \(with --max-new-tokens 1\)"):
        check_fits_context(prompt_tokens=200, max_new_tokens=1, block_size=128)


def test_a_prompt_that_does_not_fit_the_context_is_refused_not_cropped(tiny_shakespeare, split_ids):
    block = tiny_shakespeare.config.block_size
    prompts = grid_prompts(split_ids, num_prompts=2, prompt_tokens=block + 40, continuation_tokens=8)
    with pytest.raises(ConfigError, match=f"does not fit the model's context of {block} tokens"):
        run_grid(tiny_shakespeare.model, prompts, _cfg(prompt_tokens=block + 40, num_prompts=2))


def test_continuation_nll_counts_only_continuation_tokens():
    v = 50257
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=4, block_size=16)).eval()
    with torch.no_grad():
        model.transformer.wte.weight.zero_()  # uniform next-token distribution
    prompts = [[1, 2, 3], [4] * 30, [], [5]]
    conts = [[7, 8], [9] * 40, [10, 11, 12], []]
    nll, count = continuation_nll(model, prompts, conts, batch_size=3)
    # every continuation token is scored once (the one after an empty prompt has no predictor);
    # the 40-token continuation (longer than the context) is slid over in windows.
    assert count == 2 + 40 + 2 + 0
    assert nll == pytest.approx(count * math.log(v), rel=1e-6)
    with pytest.raises(ConfigError):
        continuation_nll(model, prompts, conts[:2], batch_size=3)


# ------------------------------------------------------------------ the metric table and the cell dataclass


def _metric_values(**changes):
    from gpt2xl.metric_table import METRICS

    values = {m.name: (3 if m.kind is int else 0.5) for m in METRICS}
    values.update(changes)
    return values


def test_cell_metrics_hold_exactly_the_table_s_metrics_in_its_order():
    from gpt2xl.grid import CellMetrics
    from gpt2xl.metric_table import METRICS

    values = _metric_values(generation_perplexity=None)
    m = CellMetrics(dict(reversed(list(values.items()))))
    assert list(m.to_dict()) == [row.name for row in METRICS]
    assert m.distinct_2 == m["distinct_2"] == 0.5
    assert m.generation_perplexity is None
    assert m.num_samples == 3
    assert m == CellMetrics(values)
    with pytest.raises(AttributeError, match="no metric 'distinct_9'"):
        _ = m.distinct_9
    with pytest.raises(TypeError, match=r"does not support item assignment"):
        m.values["distinct_1"] = 1.0  # type: ignore[index]


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({k: v for k, v in _metric_values().items() if k != "self_bleu_4"}, "missing self_bleu_4"),
        (_metric_values(zipf=1.0), "unknown zipf"),
        (_metric_values(distinct_1="0.5"), "metric distinct_1 must be float"),
        (_metric_values(num_samples=2.0), "metric num_samples must be int"),
        (_metric_values(eot_rate=None), "metric eot_rate must be float"),  # only nullable metrics take None
        (_metric_values(self_bleu_4=float("nan")), "metric self_bleu_4 must be finite"),
        (_metric_values(repetition_rate=True), "metric repetition_rate must be float"),
    ],
)
def test_cell_metrics_refuse_values_the_table_does_not_describe(values, needle):
    from gpt2xl.grid import CellMetrics

    # A bug in the code that computes them, not a user error: TypeError, with its traceback.
    with pytest.raises(TypeError, match=needle):
        CellMetrics(values)


def test_the_metric_table_rows_are_complete():
    from gpt2xl.metric_table import METRICS, SHOWN_METRICS

    names = [m.name for m in METRICS]
    assert len(set(names)) == len(names)
    assert {"distinct_2", "self_bleu_4", "repetition_rate", "generation_perplexity"} <= {m.name for m in SHOWN_METRICS}
    for m in METRICS:
        assert m.definition.endswith(".")
        assert m.title
        assert len(m.label) <= 8
        assert m.higher_is_better in (True, False, None)


def test_the_repetition_definition_states_what_is_repetitive_does():
    from gpt2xl.metric_table import METRIC_BY_NAME
    from gpt2xl.metrics import is_repetitive

    text = METRIC_BY_NAME["repetition_rate"].definition
    assert "at least twice and is at least 3 tokens long" in text
    assert "more than 50 times" in text
    assert "1 to 90 tokens" in text
    assert "the shortest on a tie" in text
    # the cases the sentence decides, against the code
    assert is_repetitive([1, 2, 3, 1, 2, 3])  # a 3-token phrase twice
    assert not is_repetitive([1, 2, 1, 2, 1, 2])  # a 2-token phrase, 3 times (not more than 50)
    assert not is_repetitive([7] * 50)
    assert is_repetitive([7] * 51)  # a 1-token phrase: more than 50 times
    assert not is_repetitive([7, 7, 7, 7, 7, 7])  # "7" x 6 beats "7 7 7" x 2: the shortest most-repeated phrase


def test_format_value_shows_an_interval_when_given():
    from gpt2xl.metric_table import METRIC_BY_NAME, format_value

    d2 = METRIC_BY_NAME["distinct_2"]
    assert format_value(d2, 0.51234) == "0.512"
    assert format_value(d2, 0.51234, {"low": 0.5, "high": 0.6}) == "0.512 [0.500, 0.600]"
    assert format_value(d2, None) == "n/a"
    assert format_value(d2, float("nan")) == "n/a"
    assert format_value(METRIC_BY_NAME["num_samples"], 32) == "32"
    assert format_value(METRIC_BY_NAME["num_samples"], 31.5) == "31.5"  # a mean over seeds


def test_the_default_grid_is_one_config_with_at_least_three_seeds():
    from gpt2xl.grid import DEFAULT_GRID

    assert GridConfig(dataset="tinyshakespeare") == DEFAULT_GRID
    assert len(DEFAULT_GRID.seeds) >= 3
    assert DEFAULT_GRID.seeds == (0, 1, 2)
