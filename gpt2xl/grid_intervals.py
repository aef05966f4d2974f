"""Bootstrap intervals and neighbour tests of the sampling grid's metrics.

:mod:`gpt2xl.stats` applied to the cells of :func:`gpt2xl.grid.run_grid`. A *setting* (one
temperature, top-k and top-p) holds one cell per seed; its units are its scored samples, one per
(prompt, seed) (:class:`gpt2xl.grid.ScoredSample`), and the bootstrap resamples PROMPTS with all
their seeds (cluster = prompt; see :mod:`gpt2xl.stats` for why).

The value of a setting, and of each bootstrap replicate, is the metric over all the setting's
samples, with the metrics that compare samples with each other computed WITHIN each seed's cell:
distinct-n counts the unique n-grams of each seed's cell (a bigram repeated across two seeds'
cells counts in both), summed over seeds, over all n-grams; self-BLEU is the mean, over all
samples, of each one's BLEU against the other samples of its own seed's cell. So every setting is
scored at the sample size of one cell, which is that of the human reference row (one continuation
per prompt): distinct-n falls and self-BLEU rises with the number of samples compared, and a pool
of three seeds would not be comparable with the human text. With no early end-of-text these
values equal the means over seeds of the cells' values; otherwise they weight seeds by their
n-grams (distinct-n) or samples. Generation perplexity is exp(NLL over all the setting's tokens /
their number); repetition, end-of-text rate and mean length are means over its samples.

Intervals are 95 % (centred) percentile intervals from ``cfg.n_resamples`` replicates drawn with
``cfg.bootstrap_seed`` (``cfg.weighted_resamples`` for self-BLEU and the Zipf coefficient, which
are recomputed in Python on every replicate). The Zipf coefficient of a setting is the mean over
seeds of each seed's cell's coefficient (a replicate counts a prompt drawn twice twice).

Neighbour tests: :func:`gpt2xl.stats.neighbour_tests` between neighbouring settings along each axis
(temperature at fixed top-k and top-p, top-k at fixed temperature and top-p, top-p at fixed
temperature and top-k), per shown metric, with the same seed: a paired cluster bootstrap over the
same prompts and seeds. A metric that is not finite on a replicate (e.g. no generated token among
the drawn prompts) gets no interval, and its tests along that line are left out; ``notes`` says
which.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from gpt2xl.errors import NumericalError
from gpt2xl.grid import CellResult, GridConfig, ScoredSample
from gpt2xl.metric_table import INTERVAL_METRICS, SETTING_NAMES
from gpt2xl.metrics import is_repetitive, self_bleu_scores, zipf_coefficient
from gpt2xl.stats import (
    CorpusDistinct,
    Interval,
    NeighbourTest,
    Ratio,
    Statistic,
    Weighted,
    bootstrap_interval,
    neighbour_tests,
)

CONFIDENCE = 0.95
SIGNIFICANCE_TEST = (
    "paired cluster bootstrap over the same prompts and seeds, percentile interval of the difference, "
    "two-sided p < 0.05, no multiple-comparison correction"
)
ORDER = {"temperature": 0, "top_k": 1, "top_p": 2}  # the position of each setting in a setting key
SettingKey = tuple[float, int, float]  # (temperature, top_k, top_p)


def unit_key(unit: ScoredSample) -> Hashable:
    """What pairs two settings' samples in a paired test: the same prompt under the same seed."""
    return (unit.prompt, unit.seed)


def prompt_cluster(unit: ScoredSample) -> Hashable:
    """The bootstrap's cluster: a prompt with all its seeds (their samples are correlated)."""
    return unit.prompt


def _ngrams(tokens: tuple[int, ...], n: int) -> list[tuple[int, ...]]:
    return list(zip(*(tokens[i:] for i in range(n)), strict=False))


class _SelfBleu:
    """Self-BLEU-4 of drawn samples (:class:`gpt2xl.stats.Weighted`'s function): each seed's drawn
    samples against each other (copies of one sample are not each other's references), the mean
    of the per-sample terms weighted by how often each sample was drawn. The terms of a set of
    samples are cached by the samples' identities: the interval and the neighbour tests of a
    setting draw the same prompts with the same seed, so each set is scored once."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, ...], list[float | None]] = {}

    def __call__(self, units: Sequence[ScoredSample], counts: Sequence[int]) -> float:
        groups: dict[int, list[int]] = {}
        for i, unit in enumerate(units):
            groups.setdefault(unit.seed, []).append(i)
        terms: list[float] = []
        weights = 0
        for members in groups.values():
            key = tuple(id(units[i]) for i in members)
            scores = self._cache.get(key)
            if scores is None:
                scores = self._cache[key] = self_bleu_scores([units[i].tokens for i in members], max_n=4)
            for i, score in zip(members, scores, strict=True):
                if score is not None:
                    terms.append(counts[i] * score)
                    weights += counts[i]
        return math.fsum(terms) / weights if weights else 0.0


class _Zipf:
    """The Zipf coefficient of drawn samples (:class:`gpt2xl.stats.Weighted`'s function): per
    seed, :func:`gpt2xl.metrics.zipf_coefficient` of the seed's drawn samples, each as often as
    it was drawn (a frequency table: a copy adds its tokens again), averaged over seeds; NaN when
    a seed's drawn samples hold fewer than two distinct tokens (the bootstrap then gives no
    interval). Cached like :class:`_SelfBleu`."""

    def __init__(self) -> None:
        self._cache: dict[tuple[tuple[int, ...], tuple[int, ...]], float] = {}

    def __call__(self, units: Sequence[ScoredSample], counts: Sequence[int]) -> float:
        groups: dict[int, list[int]] = {}
        for i, unit in enumerate(units):
            groups.setdefault(unit.seed, []).append(i)
        values = []
        for members in groups.values():
            key = (tuple(id(units[i]) for i in members), tuple(counts[i] for i in members))
            value = self._cache.get(key)
            if value is None:
                samples = [units[i].tokens for i in members for _ in range(counts[i])]
                distinct = len({t for s in samples for t in s})
                value = self._cache[key] = zipf_coefficient(samples).coefficient if distinct >= 2 else math.nan
            values.append(value)
        return math.fsum(values) / len(values)


def statistics() -> dict[str, Statistic[ScoredSample]]:
    """The bootstrap statistic of each shown metric (see the module docstring)."""

    def distinct(n: int) -> CorpusDistinct[ScoredSample]:
        # N-grams tagged with the seed: unique within each seed's cell (see the module docstring).
        return CorpusDistinct(name=f"distinct_{n}", items=lambda u: [(u.seed, g) for g in _ngrams(u.tokens, n)],
                              empty=0.0)

    table: dict[str, Statistic[ScoredSample]] = {
        "distinct_1": distinct(1),
        "distinct_2": distinct(2),
        "distinct_3": distinct(3),
        "self_bleu_4": Weighted[ScoredSample](name="self_bleu_4", function=_SelfBleu()),
        # Centred (the default): a copy adds its tokens again, so tokens seen once in a sample count
        # twice and the replicates come out steeper than the estimate, a shift that lies in the
        # resampling (see gpt2xl.stats), as for distinct-n.
        "zipf_coefficient": Weighted[ScoredSample](name="zipf_coefficient", function=_Zipf()),
        "repetition_rate": Ratio[ScoredSample](name="repetition_rate",
                                               numerator=lambda u: float(is_repetitive(u.tokens))),
        "mean_length_tokens": Ratio[ScoredSample](name="mean_length_tokens", numerator=lambda u: float(len(u.tokens))),
        "eot_rate": Ratio[ScoredSample](name="eot_rate", numerator=lambda u: float(u.hit_eot)),
        "generation_perplexity": Ratio[ScoredSample](name="generation_perplexity", numerator=lambda u: u.nll,
                                       denominator=lambda u: float(u.scored), transform=np.exp),
    }
    missing = [m.name for m in INTERVAL_METRICS if m.name not in table]
    if missing:  # a shown metric added to the table without its statistic here: a bug
        raise ValueError(f"gpt2xl.grid_intervals has no bootstrap statistic for {', '.join(missing)}")
    return table


def resamples_for(metric: str, cfg: GridConfig) -> int:
    """The replicates per interval or test of ``metric`` (fewer for those recomputed in Python)."""
    return cfg.weighted_resamples if metric in {"self_bleu_4", "zipf_coefficient"} else cfg.n_resamples


def interval_dict(interval: Interval) -> dict[str, Any]:
    """An interval as stored with a row of eval.json (``low``/``high`` are what every consumer shows)."""
    return {"low": interval.low, "high": interval.high, "estimate": interval.estimate, "bias": interval.bias,
            "method": interval.method, "n_resamples": interval.n_resamples}


def setting_key(cell: CellResult) -> SettingKey:
    return (cell.temperature, cell.top_k, cell.top_p)


@dataclass(frozen=True, kw_only=True)
class GridStatistics:
    """What :func:`grid_statistics` computed: per setting, each shown metric's interval; the
    human reference's; the neighbour tests (eval.json entries); notes on what was left out; and
    ``info``, the resampler's description for eval.json."""

    intervals: dict[SettingKey, dict[str, Interval]]
    human: dict[str, Interval]
    tests: list[dict[str, Any]]
    notes: list[str]
    info: dict[str, Any]


def _intervals(
    units: Sequence[ScoredSample], stats: dict[str, Statistic[ScoredSample]], cfg: GridConfig, where: str,
    notes: list[str],
) -> dict[str, Interval]:
    out = {}
    for m in INTERVAL_METRICS:
        try:
            out[m.name] = bootstrap_interval(units, stats[m.name], cluster=prompt_cluster,
                                             n_resamples=resamples_for(m.name, cfg), seed=cfg.bootstrap_seed,
                                             confidence=CONFIDENCE)
        except NumericalError as e:
            notes.append(f"no interval for {m.name} of {where}: {e}")
    return out


def _describe(key: SettingKey) -> dict[str, Any]:
    return dict(zip(SETTING_NAMES, key, strict=True))


def _lines(keys: Sequence[SettingKey], axis: str) -> list[list[SettingKey]]:
    """The settings along ``axis`` at each fixed value of the other settings, each line in
    increasing order of the axis (top-k 0, the whole vocabulary, last: it is the widest)."""
    position = ORDER[axis]
    lines: dict[tuple[Any, ...], list[SettingKey]] = {}
    for key in keys:
        lines.setdefault(key[:position] + key[position + 1 :], []).append(key)

    def order(key: SettingKey) -> float:
        value = key[position]
        return math.inf if axis == "top_k" and value == 0 else float(value)

    return [sorted(line, key=order) for line in lines.values() if len(line) >= 2]


def _test_entry(axis: str, metric: str, left: SettingKey, right: SettingKey, test: NeighbourTest) -> dict[str, Any]:
    r = test.result
    return {
        "axis": axis, "metric": metric, "left": _describe(left), "right": _describe(right),
        "estimate_left": r.estimate_a, "estimate_right": r.estimate_b, "difference": r.difference.estimate,
        "low": r.difference.low, "high": r.difference.high, "p_value": r.p_value, "significant": r.significant,
    }


def grid_statistics(
    cells: Sequence[CellResult], human: Sequence[ScoredSample], cfg: GridConfig,
    *, progress: bool = False,
) -> GridStatistics:
    """Intervals of every shown metric of every setting of ``cells`` and of the ``human``
    reference, and the neighbour tests along each axis of the grid (see the module docstring).
    Deterministic for ``cfg.bootstrap_seed``. ``progress``: a tqdm bar on stderr over the
    settings and the lines of tests."""
    stats = statistics()
    notes: list[str] = []
    units: dict[SettingKey, list[ScoredSample]] = {}
    for cell in cells:
        units.setdefault(setting_key(cell), []).extend(cell.samples)
    lines = [(axis, line) for axis in ORDER for line in _lines(list(units), axis)]
    bar = tqdm(total=len(units) + len(lines), desc="intervals", unit="step", disable=not progress)
    intervals = {}
    for key, group in units.items():
        intervals[key] = _intervals(group, stats, cfg, f"T={key[0]:g}, k={key[1]}, p={key[2]:g}", notes)
        bar.update(1)
    human_intervals = _intervals(human, stats, cfg, "the human reference", notes) if human else {}
    tests: list[dict[str, Any]] = []
    for axis, line in lines:
        for m in INTERVAL_METRICS:
            try:
                found = neighbour_tests([units[k] for k in line], stats[m.name], key=unit_key, cluster=prompt_cluster,
                                        n_resamples=resamples_for(m.name, cfg), seed=cfg.bootstrap_seed,
                                        confidence=CONFIDENCE)
            except NumericalError as e:
                notes.append(f"no {axis} tests of {m.name} along {[_describe(k) for k in line]}: {e}")
                continue
            tests += [_test_entry(axis, m.name, line[t.left], line[t.right], t) for t in found]
        bar.update(1)
    bar.close()
    info = {
        "confidence": CONFIDENCE,
        "seed": cfg.bootstrap_seed,
        "n_resamples": cfg.n_resamples,
        "weighted_resamples": cfg.weighted_resamples,
        "resampling": "prompts with all their seeds (cluster bootstrap; stats.bootstrap_interval)",
        "method": "centred percentile for distinct-n, self-BLEU and Zipf, percentile otherwise (see gpt2xl.stats)",
        "value": ("a setting's value is its metric over all its seeds' samples, with distinct-n and self-BLEU "
                  "computed within each seed's cell and Zipf averaged over seeds (see gpt2xl.grid_intervals)"),
    }
    return GridStatistics(intervals=intervals, human=human_intervals, tests=tests, notes=notes, info=info)
