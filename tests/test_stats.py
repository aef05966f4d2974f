"""Bootstrap intervals and paired tests: hand-computed cases, exhaustive enumeration, scipy as the
reference for the percentile interval, the fast paths against the generic one, and validation."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest

from gpt2xl.errors import ConfigError, NumericalError
from gpt2xl.metrics import distinct_n
from gpt2xl.stats import (
    CorpusDistinct,
    Interval,
    PairedTest,
    Ratio,
    Weighted,
    bootstrap_interval,
    bootstrap_replicates,
    min_resamples,
    neighbour_tests,
    paired_bootstrap,
)


@dataclass(frozen=True)
class Unit:
    """One generated sample: its (prompt, seed), a value, its tokens and their NLL."""

    prompt: int
    seed: int
    value: float
    tokens: tuple[int, ...] = ()
    nll: float = 0.0


def key(u: Unit) -> tuple[int, int]:
    return (u.prompt, u.seed)


def prompt_of(u: Unit) -> int:
    return u.prompt


def mean_value(units: Sequence[Unit]) -> float:
    return float(np.mean([u.value for u in units]))


MEAN = Ratio[Unit](name="mean", numerator=lambda u: u.value)
PERPLEXITY = Ratio[Unit](
    name="perplexity", numerator=lambda u: u.nll, denominator=lambda u: len(u.tokens), transform=np.exp
)


def cell(prompts: int, seeds: int, *, shift: float = 0.0, rng_seed: int = 0) -> list[Unit]:
    """prompts x seeds units with random values, tokens and NLLs (reproducible)."""
    rnd = random.Random(rng_seed)
    units = []
    for p in range(prompts):
        difficulty = rnd.gauss(0, 1)
        for s in range(seeds):
            length = rnd.randint(1, 12)
            units.append(
                Unit(
                    prompt=p,
                    seed=s,
                    value=difficulty + rnd.gauss(0, 0.5) + shift,
                    tokens=tuple(rnd.randrange(30) for _ in range(length)),
                    nll=rnd.uniform(0.5, 3.0) * length,
                )
            )
    return units


def values(xs: Sequence[float] | np.ndarray) -> list[Unit]:
    return [Unit(prompt=i, seed=0, value=float(x)) for i, x in enumerate(xs)]


# ------------------------------------------------------------------------------------ intervals


def test_constant_statistic_gives_a_zero_width_interval() -> None:
    def constant(us: Sequence[Unit]) -> float:
        return 2.5 if us else math.nan

    units = cell(8, 3)
    for statistic in (constant, Ratio[Unit](name="one", numerator=lambda u: float(u.seed >= 0))):
        interval = bootstrap_interval(units, statistic, cluster=prompt_of, n_resamples=200, seed=0)
        assert interval.low == interval.high == interval.estimate
        assert interval.width == 0.0
        assert interval.bias == 0.0


def test_mean_matches_scipy_percentile_bootstrap() -> None:
    stats = pytest.importorskip("scipy.stats")
    xs = np.random.default_rng(5).standard_normal(30)
    reference = stats.bootstrap(
        (xs,), np.mean, n_resamples=999, method="percentile", confidence_level=0.9, rng=np.random.default_rng(7)
    )
    for statistic in (mean_value, MEAN):
        ours = bootstrap_interval(values(xs), statistic, cluster=None, n_resamples=999, seed=7, confidence=0.9)
        # The same draws (default_rng(7).integers(0, 30, (999, 30))) and the same quantile rule.
        assert ours.low == pytest.approx(reference.confidence_interval.low, rel=1e-12)
        assert ours.high == pytest.approx(reference.confidence_interval.high, rel=1e-12)
        assert ours.estimate == pytest.approx(float(np.mean(xs)), rel=1e-12)
        assert (ours.resampling, ours.n_units, ours.n_clusters) == ("units", 30, 30)
    replicates = bootstrap_replicates(values(xs), MEAN, cluster=None, n_resamples=999, seed=7)
    np.testing.assert_allclose(replicates, reference.bootstrap_distribution, rtol=1e-12)


def test_exhaustive_enumeration_of_three_units() -> None:
    # Units 0, 1, 3: the 27 equally likely resamples have sums
    #   0 (1 way), 1 (3), 2 (3), 3 (4: 1+1+1 and the 3 orders of 3+0+0), 4 (6), 5 (3), 6 (3), 7 (3), 9 (1)
    # so the mean's CDF is 1, 4, 7, 11, 17, 20, 23, 26, 27 (/27) at sums 0..9. At 80 %: the 10 %
    # quantile is the first sum whose CDF reaches 2.7/27, i.e. 1 (4/27); the 90 % one reaches
    # 24.3/27 at sum 7 (26/27). Exact interval: [1/3, 7/3].
    xs = [0.0, 1.0, 3.0]
    means = sorted(sum(xs[i] for i in draw) / 3 for draw in itertools.product(range(3), repeat=3))
    assert len(means) == 27

    def exact_quantile(q: float) -> float:
        position = math.ceil(q * 27) - 1  # the smallest value whose CDF >= q
        return means[position]

    assert (exact_quantile(0.1), exact_quantile(0.9)) == (1 / 3, 7 / 3)
    # Both levels lie >= 0.03 from a jump of the CDF: 20,000 replicates (CDF error ~0.002)
    # put the empirical quantile inside the right atom.
    interval = bootstrap_interval(values(xs), MEAN, cluster=None, n_resamples=20_000, seed=3, confidence=0.8)
    assert interval.low == pytest.approx(1 / 3, abs=1e-15)
    assert interval.high == pytest.approx(7 / 3, abs=1e-15)
    assert interval.estimate == pytest.approx(4 / 3)
    # The replicates' distribution is the enumerated one, within Monte-Carlo error.
    replicates = np.round(bootstrap_replicates(values(xs), MEAN, cluster=None, n_resamples=20_000, seed=3) * 3)
    for total, ways in {0: 1, 1: 3, 2: 3, 3: 4, 4: 6, 5: 3, 6: 3, 7: 3, 9: 1}.items():
        assert np.mean(replicates == total) == pytest.approx(ways / 27, abs=0.01)


def test_same_seed_same_interval_and_the_seed_is_recorded() -> None:
    units = cell(10, 3)
    first = bootstrap_interval(units, MEAN, cluster=prompt_of, n_resamples=300, seed=11)
    assert first == bootstrap_interval(units, MEAN, cluster=prompt_of, n_resamples=300, seed=11)
    assert (first.seed, first.n_resamples, first.method, first.confidence) == (11, 300, "percentile", 0.95)
    assert first.to_dict()["seed"] == 11
    same = bootstrap_replicates(units, MEAN, cluster=prompt_of, n_resamples=300, seed=11)
    other = bootstrap_replicates(units, MEAN, cluster=prompt_of, n_resamples=300, seed=12)
    assert np.array_equal(same, bootstrap_replicates(units, MEAN, cluster=prompt_of, n_resamples=300, seed=11))
    assert not np.array_equal(same, other)


def test_clusters_are_resampled_whole() -> None:
    # Every seed of a prompt has the prompt's value: a replicate of 6 prompts x 3 seeds is the
    # mean of 6 drawn prompt values, exactly the bootstrap of the 6 prompt means (same draws).
    prompt_values = [0.0, 1.0, 5.0, 2.0, 8.0, 3.0]
    units = [Unit(prompt=p, seed=s, value=v) for p, v in enumerate(prompt_values) for s in range(3)]
    clustered = bootstrap_replicates(units, MEAN, cluster=prompt_of, n_resamples=400, seed=2)
    per_prompt = bootstrap_replicates(values(prompt_values), MEAN, cluster=None, n_resamples=400, seed=2)
    np.testing.assert_allclose(clustered, per_prompt, rtol=1e-12)
    interval = bootstrap_interval(units, MEAN, cluster=prompt_of, n_resamples=400, seed=2)
    assert (interval.resampling, interval.n_units, interval.n_clusters) == ("clusters", 18, 6)
    # Treating the 18 correlated units as independent understates the spread.
    naive = bootstrap_interval(units, MEAN, cluster=None, n_resamples=400, seed=2)
    assert naive.width < 0.75 * interval.width


def test_unbalanced_clusters() -> None:
    # Prompt 0 has one seed, prompt 1 three: a replicate holds 2 to 6 units.
    units = [Unit(prompt=0, seed=0, value=10.0)] + [Unit(prompt=1, seed=s, value=float(s)) for s in range(3)]
    replicates = bootstrap_replicates(units, MEAN, cluster=prompt_of, n_resamples=200, seed=0)
    # Possible replicate means: {10,10} -> 10; {10, 0,1,2} -> 13/4; {0,1,2, 0,1,2} -> 1.
    assert set(np.round(replicates, 12)) == {10.0, 3.25, 1.0}


# ------------------------------------------------------------------------------- fast paths


@pytest.mark.parametrize("balanced", [True, False])
def test_ratio_fast_path_equals_the_generic_path(balanced: bool) -> None:
    units = cell(12, 3, rng_seed=4)
    if not balanced:
        units = [u for u in units if not (u.prompt % 3 == 0 and u.seed == 2)]
    for statistic in (MEAN, PERPLEXITY):

        def plain(us: Sequence[Unit], s: Ratio[Unit] = statistic) -> float:
            return s(us)  # the generic path: called once per replicate on the resampled units

        fast = bootstrap_replicates(units, statistic, cluster=prompt_of, n_resamples=300, seed=9)
        generic = bootstrap_replicates(units, plain, cluster=prompt_of, n_resamples=300, seed=9)
        assert np.array_equal(fast, generic)
        fast_interval = bootstrap_interval(units, statistic, cluster=prompt_of, n_resamples=300, seed=9)
        assert fast_interval == bootstrap_interval(units, plain, cluster=prompt_of, n_resamples=300, seed=9)


def test_perplexity_ratio_by_hand() -> None:
    # NLL 2 over 1 token and 4 over 3 tokens: exp(6 / 4) = exp(1.5), not the mean of exp(2), exp(4/3).
    units = [
        Unit(prompt=0, seed=0, value=0, tokens=(1,), nll=2.0),
        Unit(prompt=1, seed=0, value=0, tokens=(1, 2, 3), nll=4.0),
    ]
    assert PERPLEXITY(units) == pytest.approx(math.exp(1.5))


def test_weighted_statistic_gets_distinct_units_and_counts() -> None:
    units = cell(7, 2, rng_seed=8)
    seen: list[tuple[list[Unit], list[int]]] = []

    def weighted_mean(us: Sequence[Unit], counts: Sequence[int]) -> float:
        seen.append((list(us), list(counts)))
        return sum(c * u.value for u, c in zip(us, counts, strict=True)) / sum(counts)

    statistic = Weighted[Unit](name="weighted mean", function=weighted_mean)
    replicates = bootstrap_replicates(units, statistic, cluster=prompt_of, n_resamples=100, seed=1)
    np.testing.assert_allclose(
        replicates, bootstrap_replicates(units, MEAN, cluster=prompt_of, n_resamples=100, seed=1), rtol=1e-12
    )
    for drawn, counts in seen:
        assert sum(counts) == len(units)  # 7 clusters of 2 drawn
        assert len({key(u) for u in drawn}) == len(drawn)  # each drawn unit once
        assert [units.index(u) for u in drawn] == sorted(units.index(u) for u in drawn)
    assert statistic(units) == pytest.approx(mean_value(units))


def unigrams(u: Unit) -> tuple[int, ...]:
    return u.tokens


def bigrams(u: Unit) -> list[tuple[int, int]]:
    return list(itertools.pairwise(u.tokens))


def test_corpus_distinct_matches_metrics_on_the_whole_cell() -> None:
    units = cell(9, 3, rng_seed=2)
    tokens = [list(u.tokens) for u in units]
    for n, items in ((1, unigrams), (2, bigrams)):
        statistic = CorpusDistinct[Unit](name=f"distinct-{n}", items=items)
        assert statistic(units) == pytest.approx(distinct_n(tokens, n).corpus, rel=1e-15)


def test_corpus_distinct_copies_by_hand() -> None:
    a = Unit(prompt=0, seed=0, value=0, tokens=(1, 2))
    b = Unit(prompt=1, seed=0, value=0, tokens=(2, 3))
    statistic = CorpusDistinct[Unit](name="distinct-1", items=unigrams)
    # No copies: {1, 2, 3} over 4 unigrams.
    assert statistic([a, b]) == 0.75
    assert statistic.weighted([a, b], [1, 1]) == 0.75
    # A drawn twice, B not: 1 and 2 are each held by one drawn unit, so each counts per copy:
    # (2 + 2) / (2 x 2) = 1.0. The naive union would give {1, 2} / 4 = 0.5.
    assert statistic.weighted([a], [2]) == 1.0
    assert statistic([a, a]) == 0.5
    # A twice, B once: 1 -> 2 (A only), 2 -> 1 (A and B), 3 -> 1 (B only): 4 / (2 x 2 + 2) = 2/3.
    assert statistic.weighted([a, b], [2, 1]) == pytest.approx(2 / 3)


def test_corpus_distinct_fast_path_equals_its_reference() -> None:
    units = cell(10, 3, rng_seed=6)
    for items in (unigrams, bigrams):
        statistic = CorpusDistinct[Unit](name="distinct", items=items)
        reference = Weighted[Unit](name="reference", function=statistic.weighted)
        fast = bootstrap_replicates(units, statistic, cluster=prompt_of, n_resamples=600, seed=4)
        slow = bootstrap_replicates(units, reference, cluster=prompt_of, n_resamples=600, seed=4)
        assert np.array_equal(fast, slow)


def test_naive_resampling_biases_corpus_distinct_and_the_copy_rule_does_not() -> None:
    # 40 samples of 10 tokens out of 5,000: nearly every unigram is unique (estimate ~0.99). A
    # naive replicate holds ~63 % distinct samples, so its distinct-1 is ~0.63.
    rnd = random.Random(0)
    units = [Unit(prompt=i, seed=0, value=0, tokens=tuple(rnd.sample(range(5000), 10))) for i in range(40)]
    statistic = CorpusDistinct[Unit](name="distinct-1", items=unigrams)
    def naive_distinct(us: Sequence[Unit]) -> float:
        return statistic(us)  # a plain callable: repeated units are just repeated

    naive = bootstrap_interval(units, naive_distinct, cluster=None, n_resamples=200, seed=0)
    fair = bootstrap_interval(units, statistic, cluster=None, n_resamples=200, seed=0)
    assert naive.high < 0.8 < fair.low
    assert fair.low <= fair.estimate <= fair.high
    assert abs(fair.bias) < 0.01
    assert naive.bias < -0.2
    assert (naive.method, fair.method) == ("percentile", "centred percentile")


def test_centring_moves_the_replicates_by_minus_the_bias() -> None:
    units = cell(10, 3, rng_seed=3)
    centred = CorpusDistinct[Unit](name="distinct-2", items=bigrams)
    as_drawn = CorpusDistinct[Unit](name="distinct-2", items=bigrams, centre=False)
    c = bootstrap_interval(units, centred, cluster=prompt_of, n_resamples=400, seed=1)
    raw = bootstrap_interval(units, as_drawn, cluster=prompt_of, n_resamples=400, seed=1)
    replicates = bootstrap_replicates(units, as_drawn, cluster=prompt_of, n_resamples=400, seed=1)
    assert c.bias == raw.bias == pytest.approx(float(np.mean(replicates)) - c.estimate)
    assert c.bias != 0.0
    assert [c.low, c.high] == pytest.approx([raw.low - raw.bias, raw.high - raw.bias], rel=1e-12)
    assert (c.method, raw.method) == ("centred percentile", "percentile")
    # Paired: the difference's replicates are centred too; identical cells still give p = 1.
    other = cell(10, 3, rng_seed=4)
    paired_c = paired_bootstrap(units, other, centred, key=key, cluster=prompt_of, n_resamples=400, seed=1)
    paired_raw = paired_bootstrap(units, other, as_drawn, key=key, cluster=prompt_of, n_resamples=400, seed=1)
    shift = paired_raw.difference.bias
    assert paired_c.difference.low == pytest.approx(paired_raw.difference.low - shift, rel=1e-12)
    assert paired_c.test == "paired cluster bootstrap (centred percentile), two-sided"
    same = paired_bootstrap(units, units, centred, key=key, cluster=prompt_of, n_resamples=400, seed=1)
    assert (same.p_value, same.difference.width) == (1.0, 0.0)


# -------------------------------------------------------------------------------- paired test


def test_identical_cells_give_p_one_and_a_zero_difference() -> None:
    units = cell(8, 3)
    for statistic in (MEAN, PERPLEXITY, mean_value):
        result = paired_bootstrap(units, list(units), statistic, key=key, cluster=prompt_of, n_resamples=199, seed=0)
        assert result.p_value == 1.0
        assert result.difference.low == result.difference.high == result.difference.estimate == 0.0
        assert not result.significant
        assert result.test == "paired cluster bootstrap (percentile), two-sided"


def test_a_constant_shift_is_significant_with_the_smallest_p() -> None:
    # b = a + 1 on every unit: every replicate difference is exactly 1, none <= 0, so
    # p = 2 * (1 + 0) / (99 + 1) = 0.02 < 0.05.
    a = cell(6, 3)
    b = [Unit(prompt=u.prompt, seed=u.seed, value=u.value + 1.0) for u in a]
    result = paired_bootstrap(a, b, MEAN, key=key, cluster=prompt_of, n_resamples=99, seed=1)
    assert result.p_value == pytest.approx(0.02)
    assert result.significant
    assert [result.difference.low, result.difference.high] == pytest.approx([1.0, 1.0])
    assert result.estimate_b - result.estimate_a == pytest.approx(1.0)
    assert result.level == pytest.approx(0.05)


def test_pairing_cancels_prompt_difficulty() -> None:
    # A shift of 0.3 that is small next to the spread across prompts (sd 1): the paired test
    # finds it, the two separate intervals overlap.
    a = cell(24, 3, rng_seed=1)
    rnd = random.Random(0)
    b = [Unit(prompt=u.prompt, seed=u.seed, value=u.value + 0.3 + rnd.gauss(0, 0.1)) for u in a]
    result = paired_bootstrap(a, b, MEAN, key=key, cluster=prompt_of, n_resamples=999, seed=0)
    assert result.significant
    assert result.p_value < 0.01
    ia = bootstrap_interval(a, MEAN, cluster=prompt_of, n_resamples=999, seed=0)
    ib = bootstrap_interval(b, MEAN, cluster=prompt_of, n_resamples=999, seed=0)
    assert ib.low < ia.high


def test_paired_replicates_apply_the_same_draws_to_both_cells() -> None:
    a = cell(10, 3, rng_seed=1)
    b = cell(10, 3, rng_seed=2)
    ra = bootstrap_replicates(a, MEAN, cluster=prompt_of, n_resamples=500, seed=5)
    rb = bootstrap_replicates(b, MEAN, cluster=prompt_of, n_resamples=500, seed=5)
    d = rb - ra
    result = paired_bootstrap(a, b, MEAN, key=key, cluster=prompt_of, n_resamples=500, seed=5)
    expected_p = min(1.0, 2 * min(1 + np.sum(d <= 0), 1 + np.sum(d >= 0)) / 501)
    assert result.p_value == pytest.approx(expected_p)
    assert [result.difference.low, result.difference.high] == pytest.approx(np.quantile(d, [0.025, 0.975]), rel=1e-12)
    assert (result.estimate_a, result.estimate_b) == (MEAN(a), MEAN(b))


def test_paired_aligns_units_by_key() -> None:
    a = cell(8, 3, rng_seed=1)
    b = cell(8, 3, rng_seed=2)
    shuffled = list(b)
    random.Random(0).shuffle(shuffled)
    in_order = paired_bootstrap(a, b, MEAN, key=key, cluster=prompt_of, n_resamples=200, seed=3)
    out_of_order = paired_bootstrap(a, shuffled, MEAN, key=key, cluster=prompt_of, n_resamples=200, seed=3)
    assert out_of_order.p_value == in_order.p_value
    assert out_of_order.difference.low == pytest.approx(in_order.difference.low, rel=1e-12)
    assert out_of_order.difference.high == pytest.approx(in_order.difference.high, rel=1e-12)


def test_significant_implies_the_difference_interval_excludes_zero() -> None:
    # Shifts from none to clear, on noisy pairs: every significant result has an interval of the
    # difference that excludes 0, and both outcomes occur.
    outcomes = []
    for shift, rng_seed in itertools.product([0.0, 0.05, 0.1, 0.2, 0.4], range(6)):
        a = cell(10, 2, rng_seed=rng_seed)
        rnd = random.Random(rng_seed)
        b = [Unit(prompt=x.prompt, seed=x.seed, value=x.value + shift + rnd.gauss(0, 0.3)) for x in a]
        result = paired_bootstrap(a, b, MEAN, key=key, cluster=prompt_of, n_resamples=199, seed=rng_seed)
        if result.significant:
            assert result.difference.low > 0 or result.difference.high < 0
        outcomes.append((shift, result.significant))
    assert {significant for _, significant in outcomes} == {False, True}
    assert all(significant for shift, significant in outcomes if shift == 0.4)


def test_mismatched_units_are_refused() -> None:
    a = cell(4, 2)
    missing = r"same prompts and seeds, but the cells differ in 1 unit \(\(3, 1\) is missing from cell 1\)"
    with pytest.raises(ConfigError, match=missing):
        paired_bootstrap(a, a[:-1], MEAN, key=key, cluster=prompt_of, n_resamples=100, seed=0)
    other_seed = [*a[:-1], Unit(prompt=3, seed=7, value=0.0)]
    with pytest.raises(ConfigError, match=r"differ in 2 units \(\(3, 1\) is missing from cell 1\)"):
        paired_bootstrap(a, other_seed, MEAN, key=key, cluster=prompt_of, n_resamples=100, seed=0)
    with pytest.raises(ConfigError, match=r"holds unit \(0, 0\) twice"):
        paired_bootstrap(a, [*a[:-1], a[0]], MEAN, key=key, cluster=prompt_of, n_resamples=100, seed=0)
    # The same keys, but the cluster function puts unit (0, 0) of b elsewhere.
    moved = [Unit(prompt=u.prompt, seed=u.seed, value=1000.0 if key(u) == (0, 0) else u.value) for u in a]
    with pytest.raises(ConfigError, match=r"Unit \(0, True\) of cell 1 lies in another cluster"):
        paired_bootstrap(
            a, moved, MEAN, key=key, cluster=lambda u: (u.prompt, u.value > 100), n_resamples=100, seed=0
        )


def test_neighbour_tests_along_an_axis() -> None:
    base = cell(12, 3)
    shifts = [0.0, 0.0, 1.0]
    cells = [[Unit(prompt=u.prompt, seed=u.seed, value=u.value + s) for u in base] for s in shifts]
    tests = neighbour_tests(cells, MEAN, key=key, cluster=prompt_of, n_resamples=199, seed=4)
    assert [(t.left, t.right, t.correction) for t in tests] == [(0, 1, "none"), (1, 2, "none")]
    assert [t.result.significant for t in tests] == [False, True]
    for t in tests:
        left, right = cells[t.left], cells[t.right]
        assert t.result == paired_bootstrap(left, right, MEAN, key=key, cluster=prompt_of, n_resamples=199, seed=4)
    assert tests[1].to_dict()["result"]["difference"]["estimate"] == pytest.approx(1.0)  # type: ignore[index]
    with pytest.raises(ConfigError, match="at least two cells"):
        neighbour_tests(cells[:1], MEAN, key=key, cluster=prompt_of, n_resamples=199, seed=4)


# --------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_resamples": 39}, r"n_resamples must be at least 40 for a 0.95 interval"),
        ({"n_resamples": 0}, r"n_resamples must be an integer >= 40"),
        ({"n_resamples": 2.5}, r"n_resamples must be an integer >= 40"),
        ({"n_resamples": 100, "confidence": 0.99}, r"at least 200 for a 0.99 interval"),
        ({"confidence": 1.0}, r"confidence must be a number strictly between 0 and 1"),
        ({"confidence": 0}, r"confidence must be a number strictly between 0 and 1"),
        ({"confidence": True}, r"confidence must be a number strictly between 0 and 1"),
        ({"seed": -1}, r"seed must be an integer >= 0"),
    ],
)
def test_bad_options_are_config_errors(options: dict[str, object], message: str) -> None:
    kwargs: dict[str, object] = {"n_resamples": 100, "seed": 0, **options}
    with pytest.raises(ConfigError, match=message):
        bootstrap_interval(cell(3, 1), MEAN, cluster=prompt_of, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        paired_bootstrap(cell(3, 1), cell(3, 1), MEAN, key=key, cluster=prompt_of, **kwargs)  # type: ignore[arg-type]


def test_min_resamples() -> None:
    assert (min_resamples(0.95), min_resamples(0.9), min_resamples(0.99)) == (40, 20, 200)


def test_empty_cell_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least one unit"):
        bootstrap_interval([], MEAN, cluster=None, n_resamples=100, seed=0)


def test_undefined_statistic_is_a_numerical_error() -> None:
    no_tokens = [Unit(prompt=p, seed=0, value=0.0) for p in range(3)]
    with pytest.raises(NumericalError, match="perplexity is nan on the whole cell"):
        bootstrap_interval(no_tokens, PERPLEXITY, cluster=prompt_of, n_resamples=100, seed=0)
    # One prompt of five has tokens: replicates that miss it have no denominator.
    some = [*no_tokens, Unit(prompt=3, seed=0, value=0.0), Unit(prompt=4, seed=0, value=0.0, tokens=(1,), nll=1.0)]
    with pytest.raises(NumericalError, match=r"perplexity is not finite on \d+ of 100 bootstrap resamples"):
        bootstrap_interval(some, PERPLEXITY, cluster=prompt_of, n_resamples=100, seed=0)
    # A metric whose convention for "nothing to count" is 0.0 says so through `empty`.
    zero_if_empty = Ratio[Unit](name="rate", numerator=lambda u: u.nll, denominator=lambda u: len(u.tokens), empty=0.0)
    assert bootstrap_interval(some, zero_if_empty, cluster=prompt_of, n_resamples=100, seed=0).low == 0.0


def test_result_records_are_validated() -> None:
    interval = bootstrap_interval(cell(5, 2), MEAN, cluster=prompt_of, n_resamples=100, seed=0)
    with pytest.raises(ConfigError, match="low <= high"):
        Interval(**{**interval.to_dict(), "low": interval.high + 1})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="p_value < level"):
        PairedTest(
            estimate_a=0.0, estimate_b=0.0, difference=interval, p_value=0.5, level=0.05, significant=True, test="t"
        )
