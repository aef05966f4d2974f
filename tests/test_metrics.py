"""Diversity metrics: hand-computed values (arithmetic in comments), edge cases, validation."""

from __future__ import annotations

import math
import operator
import random
from collections import Counter

import pytest

from gpt2xl.errors import ConfigError
from gpt2xl.metrics import (
    ZIPF_MAX_RANKS,
    DistinctN,
    ZipfFit,
    distinct_n,
    is_repetitive,
    mean_length,
    repetition_rate,
    self_bleu,
    zipf_coefficient,
)

# ---------------------------------------------------------------------------------- distinct-n

TWO_SAMPLES = [[1, 2, 3, 1, 2], [1, 2, 4]]


def test_distinct_1_by_hand() -> None:
    # sample 1: 5 unigrams, distinct {1,2,3} = 3 -> 3/5 = 0.6
    # sample 2: 3 unigrams, distinct {1,2,4} = 3 -> 3/3 = 1.0
    # corpus: distinct {1,2,3,4} = 4 over 5 + 3 = 8 unigrams -> 0.5; per-sample mean (0.6 + 1.0) / 2 = 0.8
    result = distinct_n(TWO_SAMPLES, 1)
    assert (result.n, result.corpus, result.unique, result.total) == (1, 0.5, 4, 8)
    assert result.per_sample_mean == pytest.approx(0.8)


def test_distinct_2_by_hand() -> None:
    # sample 1 bigrams: (1,2) (2,3) (3,1) (1,2) -> 4 total, 3 distinct -> 0.75
    # sample 2 bigrams: (1,2) (2,4)             -> 2 total, 2 distinct -> 1.0
    # corpus: distinct {(1,2),(2,3),(3,1),(2,4)} = 4 over 6 -> 2/3; per-sample mean (0.75 + 1) / 2 = 0.875
    result = distinct_n(TWO_SAMPLES, 2)
    assert result.corpus == pytest.approx(4 / 6)
    assert result.per_sample_mean == pytest.approx(0.875)
    assert (result.unique, result.total) == (4, 6)


def test_distinct_n_skips_samples_shorter_than_n() -> None:
    # n = 4: sample 1 has (1,2,3,1) (2,3,1,2) -> 2/2 = 1.0; sample 2 (3 tokens) has no 4-gram and is left out
    result = distinct_n(TWO_SAMPLES, 4)
    assert (result.corpus, result.per_sample_mean, result.unique, result.total) == (1.0, 1.0, 2, 2)
    # n = 6: no sample has a 6-gram -> both 0.0 by definition
    assert distinct_n(TWO_SAMPLES, 6) == DistinctN(n=6, corpus=0.0, per_sample_mean=0.0, unique=0, total=0)


def test_distinct_n_edge_cases() -> None:
    assert distinct_n([], 1).corpus == 0.0
    assert distinct_n([[], []], 2).per_sample_mean == 0.0
    # empty samples are ignored: same as the one real sample, 3 distinct of 4 -> 0.75
    assert distinct_n([[], [5, 5, 6, 7], []], 1).per_sample_mean == pytest.approx(0.75)
    # three identical samples: corpus 3 distinct / 9 unigrams = 1/3, each sample alone 3/3 = 1
    same = distinct_n([[1, 2, 3]] * 3, 1)
    assert same.corpus == pytest.approx(1 / 3)
    assert same.per_sample_mean == 1.0


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_distinct_n_rejects_bad_n(bad: object) -> None:
    with pytest.raises(ConfigError, match="n must be an integer >= 1"):
        distinct_n(TWO_SAMPLES, bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- self-BLEU


def test_self_bleu_two_samples_bigram_by_hand() -> None:
    # A = 1 2 3, B = 1 2 4, max_n = 2. A against B: unigrams 1,2 match of 3 -> 2/3;
    # bigrams (1,2) matches, (2,3) not -> 1/2; c = r = 3 -> BP = exp(1 - 3/3) = 1.
    # BLEU = (2/3 * 1/2) ** (1/2) = sqrt(1/3); B against A is symmetric, so the mean is the same.
    assert self_bleu([[1, 2, 3], [1, 2, 4]], max_n=2) == pytest.approx(math.sqrt(1 / 3), rel=1e-12)


def test_self_bleu_smoothing_method1_by_hand() -> None:
    # Same pair, max_n = 3: the trigram (1,2,3) does not occur in B -> 0 matches of 1 trigram,
    # smoothed to 0.1 / 1. BLEU = (2/3 * 1/2 * 0.1) ** (1/3) = (1/30) ** (1/3) ~= 0.3218
    assert self_bleu([[1, 2, 3], [1, 2, 4]], max_n=3) == pytest.approx((1 / 30) ** (1 / 3), rel=1e-12)


def test_self_bleu_brevity_penalty_by_hand() -> None:
    # A = 1 2, B = 1 2 3 4, max_n = 1.
    # A vs B: p1 = 2/2 = 1; c = 2 <= r = 4 -> BP = exp(1 - 4/2) = e^-1.
    # B vs A: p1 = 2/4 (3 and 4 unmatched); c = 4 > r = 2 -> BP = 1 -> 0.5.
    expected = (math.exp(-1) + 0.5) / 2
    assert self_bleu([[1, 2], [1, 2, 3, 4]], max_n=1) == pytest.approx(expected, rel=1e-12)


def test_self_bleu_clips_counts_by_hand() -> None:
    # A = 5 5 5 5, B = 5 6, max_n = 1.
    # A vs B: "5" occurs 4 times but at most once in B -> clipped 1/4; c = 4 > r = 2 -> 0.25.
    # B vs A: "5" matches (min(1, 4) = 1), "6" does not -> 1/2; c = 2 <= r = 4 -> BP = e^(1 - 2) -> 0.5/e.
    expected = (0.25 + 0.5 / math.e) / 2
    assert self_bleu([[5, 5, 5, 5], [5, 6]], max_n=1) == pytest.approx(expected, rel=1e-12)


def test_self_bleu_clips_by_max_over_references_not_their_sum() -> None:
    # A = 7 7, B = 7 8, C = 7 9, max_n = 1, all lengths 2 -> BP = 1.
    # A vs {B, C}: "7" twice, at most once in any single reference -> 1/2 (a sum over refs would give 2/2).
    # B vs {A, C}: "7" matches, "8" not -> 1/2. C likewise -> 1/2. Mean 0.5.
    assert self_bleu([[7, 7], [7, 8], [7, 9]], max_n=1) == pytest.approx(0.5, rel=1e-12)


def test_self_bleu_closest_reference_length_prefers_the_shorter_on_a_tie() -> None:
    # A = 1 2 3, B = 1 2, C = 1 2 3 4, max_n = 1.
    # A vs {B, C}: p1 = 3/3; reference lengths 2 and 4 are equally close to 3 -> r = 2 -> BP = 1 -> 1.0
    # B vs {A, C}: p1 = 2/2; closest length to 2 is 3 -> BP = exp(1 - 3/2) = e^-0.5
    # C vs {A, B}: "4" unmatched -> 3/4; closest to 4 is 3, c > r -> BP = 1 -> 0.75
    expected = (1.0 + math.exp(-0.5) + 0.75) / 3
    assert self_bleu([[1, 2, 3], [1, 2], [1, 2, 3, 4]], max_n=1) == pytest.approx(expected, rel=1e-12)


def test_self_bleu_identical_and_disjoint_samples() -> None:
    assert self_bleu([[3, 1, 4, 1, 5, 9, 2, 6]] * 4) == pytest.approx(1.0, rel=1e-12)
    # No unigram in common: NLTK returns 0 for a hypothesis without any unigram match.
    assert self_bleu([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]) == 0.0
    # Barely overlapping samples score low but above zero.
    low = self_bleu([[1, 2, 3, 4, 5, 6], [1, 7, 8, 9, 10, 11], [1, 12, 13, 14, 15, 16]])
    assert 0.0 < low < 0.2


def test_self_bleu_edge_cases() -> None:
    assert self_bleu([]) == 0.0
    assert self_bleu([[1, 2, 3]]) == 0.0  # a single sample has no reference
    assert self_bleu([[1, 2, 3], []]) == 0.0  # empty samples are dropped, leaving one
    # Empty samples are neither hypotheses nor references: same value as without them.
    assert self_bleu([[1, 2, 3], [], [1, 2, 4], []], max_n=2) == self_bleu([[1, 2, 3], [1, 2, 4]], max_n=2)
    # Hypotheses shorter than max_n get 0.1 for the missing orders: A = 1 2, B = 1 2, max_n = 4:
    # p1 = p2 = 1, no trigram or 4-gram -> 0.1/1 each; BP = 1 -> (0.1 * 0.1) ** (1/4) = 0.1 ** 0.5
    assert self_bleu([[1, 2], [1, 2]]) == pytest.approx(0.1**0.5, rel=1e-12)


@pytest.mark.parametrize("bad", [0, -2, 2.0, False])
def test_self_bleu_rejects_bad_max_n(bad: object) -> None:
    with pytest.raises(ConfigError, match="max_n"):
        self_bleu([[1, 2], [1, 2]], max_n=bad)  # type: ignore[arg-type]


def test_self_bleu_matches_nltk_when_available() -> None:
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
    smoothing = nltk_bleu.SmoothingFunction().method1
    rng = random.Random(1234)
    for _ in range(60):
        vocab = rng.choice([3, 8, 50])
        max_n = rng.randint(1, 5)
        samples = [
            [rng.randrange(vocab) for _ in range(rng.choice([0, 1, 2, 4, 9, 25]))] for _ in range(rng.randint(2, 7))
        ]
        kept = [s for s in samples if s]
        if len(kept) < 2:
            continue
        weights = (1 / max_n,) * max_n
        reference = sum(
            nltk_bleu.sentence_bleu(kept[:i] + kept[i + 1 :], kept[i], weights=weights, smoothing_function=smoothing)
            for i in range(len(kept))
        ) / len(kept)
        assert self_bleu(samples, max_n=max_n) == pytest.approx(reference, rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------------------------- repetition

A, B, C, X = 10, 11, 12, 99
EOT = 50256


def _degen_script_flags(tokens: list[int], max_n: int = 90) -> bool:
    """The loop of ari-holtzman/degen metrics/repetition.py (commit 3bbf847), transcribed as is."""
    gen = list(tokens)
    if gen[-1] == EOT:
        gen.pop(-1)
    rev_gen = list(reversed(gen))
    last_n_repeats = [0] * max_n
    for n in range(1, max_n + 1):
        n_repeat = 1
        while (
            len(rev_gen[n * n_repeat : n * (n_repeat + 1)]) == n
            and rev_gen[n * n_repeat : n * (n_repeat + 1)] == rev_gen[:n]
        ):
            n_repeat += 1
        last_n_repeats[n - 1] = n_repeat
    max_repeated_n = max(range(max_n), key=lambda x: last_n_repeats[x])
    return last_n_repeats[max_repeated_n] > 1 and (max_repeated_n + 1 >= 3 or last_n_repeats[max_repeated_n] > 50)


def test_single_token_loop_needs_more_than_50_repeats() -> None:
    # "x" x 6: counts n=1 -> 6, n=2 -> 3, n=3 -> 2, n>=4 -> 1; most repeats at n = 1 (6),
    # n < 3 and 6 <= 50 -> not flagged (even though "x x x" occurs twice).
    assert not is_repetitive([X] * 6)
    # "x" x 50: n = 1 with 50 repeats, not > 50 -> not flagged; x 51 -> 51 > 50 -> flagged.
    assert not is_repetitive([X] * 50)
    assert is_repetitive([X] * 51)
    assert is_repetitive([1, 2, 3] + [X] * 51)


def test_phrase_of_three_or_more_tokens_seen_twice_is_flagged() -> None:
    # "a b c a b c": n=1 -> 1, n=2 -> 1 ("b c" then "c a"), n=3 -> 2, n=4..6 -> 1; best n = 3, count 2 -> flagged.
    assert is_repetitive([A, B, C, A, B, C])
    assert is_repetitive([1, 2, A, B, C, A, B, C])
    # a single copy of "a b c" is count 1 everywhere -> not flagged.
    assert not is_repetitive([A, B, C])


def test_two_token_loop_is_not_flagged_below_51_repeats() -> None:
    # "a b a b a b": n=1 -> 1, n=2 -> 3, n=3 -> 1, n=4 -> 1, n=6 -> 1; best n = 2 (count 3), n < 3 -> not flagged.
    assert not is_repetitive([A, B, A, B, A, B])
    # "a b" x 6: n = 2 has 6 repeats, n = 4 ("a b a b") only 3 -> best is n = 2 -> not flagged.
    assert not is_repetitive([A, B] * 6)
    # "a b" x 51: n = 2 with 51 > 50 repeats -> flagged; x 50 -> not.
    assert is_repetitive([A, B] * 51)
    assert not is_repetitive([A, B] * 50)


def test_shortest_phrase_wins_a_tie() -> None:
    # "a b b a b b": n=1 -> 2 ("b b", then "a"), n=2 -> 1 ("b b" vs "b a"), n=3 -> 2 ("a b b" twice),
    # n=4..6 -> 1. Counts tie at 2 between n = 1 and n = 3; the shortest (n = 1) wins -> n < 3 and
    # 2 <= 50 -> NOT flagged, although a 3-token phrase repeats.
    assert not is_repetitive([A, B, B, A, B, B])
    assert not _degen_script_flags([A, B, B, A, B, B])
    # "a b c" x 4: n=3 -> 4, n=6 -> 2, others 1 -> best n = 3 (count 4) -> flagged.
    assert is_repetitive([A, B, C] * 4)
    # No repetition at all: every count is 1, the tie goes to n = 1 with count 1 -> not flagged.
    assert not is_repetitive([A, B, C, X])


def test_the_loop_must_be_at_the_end() -> None:
    assert not is_repetitive([A, B, C, A, B, C, X])  # n=1..7 all count 1
    assert not is_repetitive([A, B, C, A, B, C, X, A])  # n=1..8 all count 1
    # Periodic text counts by its LAST phrase: "a b c a b c a b" ends in "c a b" twice
    # (n = 3, count 2; n = 1, 2 count 1) -> flagged, although no whole "a b c" copy ends it.
    assert is_repetitive([A, B, C, A, B, C, A, B])
    assert not is_repetitive([X] * 51 + [A])


def test_one_trailing_end_of_text_is_ignored() -> None:
    assert is_repetitive([A, B, C, A, B, C, EOT])  # dropped -> "a b c a b c" -> flagged
    assert is_repetitive([X] * 51 + [EOT])
    # only one EOT is dropped: "a b c a b c EOT EOT" keeps one EOT at the end -> n = 1 count 1 ... -> not flagged
    assert not is_repetitive([A, B, C, A, B, C, EOT, EOT])
    # with eot_id=None nothing is dropped: "... c EOT" ends in EOT once -> not flagged
    assert not is_repetitive([A, B, C, A, B, C, EOT], eot_id=None)
    # another end-of-text id can be named
    assert is_repetitive([A, B, C, A, B, C, 7], eot_id=7)
    assert not is_repetitive([A, B, C, A, B, C, EOT], eot_id=7)


def test_max_phrase_len_bounds_the_phrase() -> None:
    # "a b c" x 2 needs n = 3: with max_phrase_len = 2 every count is 1 -> not flagged.
    assert not is_repetitive([A, B, C, A, B, C], max_phrase_len=2)
    assert is_repetitive([A, B, C, A, B, C], max_phrase_len=3)
    # a 91-token phrase seen twice is beyond the default 90 -> not flagged; 90 tokens -> flagged.
    assert not is_repetitive(list(range(91)) * 2)
    assert is_repetitive(list(range(90)) * 2)


def test_empty_and_short_sequences_are_not_repetitive() -> None:
    assert not is_repetitive([])
    assert not is_repetitive([EOT])  # empty once the EOT is dropped
    assert not is_repetitive([A])
    assert not is_repetitive([A, A])  # n = 1, count 2, n < 3 and 2 <= 50


def test_is_repetitive_matches_the_degen_script() -> None:
    rng = random.Random(90)
    for _ in range(400):
        vocab = rng.choice([1, 2, 3, 5, 30])
        prefix = [rng.randrange(vocab) for _ in range(rng.randint(1, 20))]
        phrase = [rng.randrange(vocab) for _ in range(rng.randint(1, 8))]
        tokens = prefix + phrase * rng.choice([0, 1, 2, 3, 20, 60])
        if rng.random() < 0.3:
            tokens.append(EOT)
        assert is_repetitive(tokens) == _degen_script_flags(tokens), tokens


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_phrase_len", 0), ("max_phrase_len", True), ("max_phrase_len", 2.0), ("eot_id", -1), ("eot_id", "x")],
)
def test_repetition_options_are_validated(option: str, value: object) -> None:
    with pytest.raises(ConfigError, match=option):
        is_repetitive([A, B], **{option: value})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=option):
        repetition_rate([], **{option: value})  # type: ignore[arg-type]


def test_repetition_tokens_must_be_integers() -> None:
    with pytest.raises(TypeError):
        is_repetitive([1.0, 2.0])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        repetition_rate(["a b c a b c"])  # type: ignore[list-item]


def test_repetition_rate_by_hand() -> None:
    samples = [[A, B, C, A, B, C], [A, B, A, B, A, B], [], [X] * 51, [X] * 6]
    # flagged: "a b c" x 2 (n = 3, count 2) and 51 x's (count 51 > 50); not: "a b" x 3, empty, 6 x's -> 2/5
    assert repetition_rate(samples) == 0.4
    assert repetition_rate(samples, max_phrase_len=2) == 0.2  # "a b c" x 2 no longer seen
    assert repetition_rate([]) == 0.0
    assert repetition_rate([[]]) == 0.0


# ---------------------------------------------------------------------------------- Zipf coefficient


def _samples_with_counts(counts: list[int]) -> list[list[int]]:
    """Token i + 100 repeated counts[i] times, spread over two samples in an interleaved order:
    only the pooled counts may matter, not the order nor the split into samples."""
    tokens = [100 + index for index, count in enumerate(counts) for _ in range(count)]
    random.Random(0).shuffle(tokens)
    return [tokens[::2], tokens[1::2]]


@pytest.mark.parametrize(
    ("counts", "exponent"),
    [
        ([60, 30, 20, 15, 12, 10], 1.0),  # 60 / rank
        ([3600, 900, 400, 225, 144, 100], 2.0),  # 3600 / rank^2
        ([1728, 216, 64, 27], 3.0),  # 12^3 / rank^3
    ],
)
def test_zipf_exact_power_law_gives_its_exponent(counts: list[int], exponent: float) -> None:
    fit = zipf_coefficient(_samples_with_counts(counts))
    assert fit.coefficient == pytest.approx(exponent, rel=1e-12)
    assert fit.fit_r == pytest.approx(1.0, rel=1e-12)
    assert (fit.num_ranks, fit.num_tokens) == (len(counts), sum(counts))


def test_zipf_three_ranks_by_hand() -> None:
    # counts 4, 1, 1 -> x = log rank = (0, ln 2, ln 3), y = log count = (ln 4, 0, 0); n = 3
    # mean x = ln 6 / 3, mean y = ln 4 / 3
    # Sxy = sum(x y) - n mean_x mean_y = 0 - ln 6 ln 4 / 3
    # Sxx = sum(x^2) - n mean_x^2 = ln^2 2 + ln^2 3 - ln^2 6 / 3
    # Syy = sum(y^2) - n mean_y^2 = ln^2 4 - ln^2 4 / 3 = 2 ln^2 4 / 3
    # coefficient = -Sxy / Sxx = 1.34134...; fit_r = -Sxy / sqrt(Sxx Syy) = 0.93103...
    ln2, ln3, ln4, ln6 = (math.log(v) for v in (2, 3, 4, 6))
    sxy = -ln6 * ln4 / 3
    sxx = ln2**2 + ln3**2 - ln6**2 / 3
    syy = 2 * ln4**2 / 3
    fit = zipf_coefficient([[7, 7, 9], [7, 7, 8]])  # token 7 four times, 8 and 9 once
    assert fit.coefficient == pytest.approx(-sxy / sxx, rel=1e-12)
    assert fit.coefficient == pytest.approx(1.341344, abs=1e-6)
    assert fit.fit_r == pytest.approx(-sxy / math.sqrt(sxx * syy), rel=1e-12)
    assert (fit.num_ranks, fit.num_tokens) == (3, 6)


def test_zipf_keeps_the_most_frequent_max_ranks() -> None:
    # counts 60, 30, 20 follow 60 / rank; the two rare tokens (3, 1) break the law but are cut
    samples = _samples_with_counts([60, 30, 20, 3, 1])
    cut = zipf_coefficient(samples, max_ranks=3)
    assert cut.coefficient == pytest.approx(1.0, rel=1e-12)
    assert (cut.num_ranks, cut.num_tokens) == (3, 114)  # every token is still counted
    full = zipf_coefficient(samples)
    assert full.num_ranks == 5
    assert full.coefficient > 1.5  # the tail falls much faster than 1 / rank


def test_zipf_equal_counts_give_zero_and_no_correlation() -> None:
    fit = zipf_coefficient([[1, 2, 3], [4, 5]])  # every token once: a flat distribution
    assert fit == ZipfFit(coefficient=0.0, fit_r=None, num_ranks=5, num_tokens=5)
    assert math.copysign(1.0, fit.coefficient) == 1.0  # +0.0, not -0.0


def test_zipf_needs_two_distinct_tokens() -> None:
    cases: list[list[list[int]]] = [[], [[]], [[5, 5, 5], [5]]]
    for samples in cases:
        with pytest.raises(ConfigError, match="at least two distinct tokens"):
            zipf_coefficient(samples)


@pytest.mark.parametrize("bad", [1, 0, -3, 2.5, True])
def test_zipf_rejects_bad_max_ranks(bad: object) -> None:
    with pytest.raises(ConfigError, match="max_ranks"):
        zipf_coefficient([[1, 2, 2]], max_ranks=bad)  # type: ignore[arg-type]


def test_zipf_fit_is_validated() -> None:
    with pytest.raises(ConfigError, match="num_tokens"):
        ZipfFit(coefficient=1.0, fit_r=1.0, num_ranks=3, num_tokens=2)
    with pytest.raises(ConfigError, match="fit_r"):
        ZipfFit(coefficient=1.0, fit_r=1.5, num_ranks=3, num_tokens=3)
    with pytest.raises(ConfigError, match="finite"):
        ZipfFit(coefficient=math.nan, fit_r=None, num_ranks=3, num_tokens=3)


def _degen_zipf(samples: list[list[int]], n: int) -> tuple[float, float]:
    """github.com/ari-holtzman/degen metrics/zipf.py (commit 3bbf847), its main() on token lists."""
    numpy = pytest.importorskip("numpy")
    stats = pytest.importorskip("scipy.stats")
    cnt: Counter[int] = Counter()
    for gen in samples:
        cnt.update(gen)
    xs = numpy.arange(1, min(len(cnt), n) + 1)
    ys = numpy.array(sorted(cnt.values(), key=operator.neg)[:n])
    a, _b, r, _p, _std = stats.linregress(numpy.log(xs), numpy.log(ys))
    return float(-a), float(-r)


@pytest.mark.parametrize("max_ranks", [ZIPF_MAX_RANKS, 40])
def test_zipf_matches_the_degen_script(max_ranks: int) -> None:
    rng = random.Random(1234)
    # Skewed random text: token ids drawn from a heavy-tailed distribution, ragged sample lengths.
    samples = [[int(rng.paretovariate(1.2)) for _ in range(rng.randrange(0, 300))] for _ in range(40)]
    coefficient, fit_r = _degen_zipf(samples, max_ranks)
    fit = zipf_coefficient(samples, max_ranks=max_ranks)
    assert fit.num_ranks == min(max_ranks, len({token for sample in samples for token in sample}))
    assert fit.coefficient == pytest.approx(coefficient, rel=1e-9)
    assert fit.fit_r == pytest.approx(fit_r, rel=1e-9)


# ---------------------------------------------------------------------------------- length and types


def test_mean_length() -> None:
    assert mean_length([[1, 2, 3], [], [4]]) == pytest.approx(4 / 3)  # (3 + 0 + 1) / 3
    assert mean_length([]) == 0.0


def test_non_integer_samples_are_type_errors() -> None:
    with pytest.raises(TypeError):
        distinct_n(["a b c"], 1)  # type: ignore[list-item]
    with pytest.raises(TypeError):
        mean_length([[1.0, 2.0]])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        self_bleu("abc")  # type: ignore[arg-type]


def test_numpy_rows_are_accepted() -> None:
    numpy = pytest.importorskip("numpy")
    rows = numpy.array([[1, 2, 3], [1, 2, 4]], dtype=numpy.int64)
    assert self_bleu(rows, max_n=2) == pytest.approx(math.sqrt(1 / 3), rel=1e-12)
    assert distinct_n(rows, 1).unique == 4
