"""Diversity and degeneration metrics of generated text, computed on GPT-2 token ids.

Pure Python, no torch. Every function takes one token-id sequence per generated sample (lists,
tuples, or anything iterable of integers, e.g. ``tensor.tolist()`` rows); samples may be empty.
Sequences are compared as token ids, so two samples that decode to the same text through
different tokenisations count as different; score the generated continuation only, without the
prompt, or the shared prompt inflates every overlap metric.

References:
- distinct-n: Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation
  Models" (NAACL).
- Self-BLEU: Zhu et al. 2018, "Texygen: A Benchmarking Platform for Text Generation Models"
  (SIGIR); BLEU: Papineni et al. 2002; smoothing method 1: Chen & Cherry 2014.
- Repetition: Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration" (ICLR,
  arXiv:1904.09751); the rule is ported from the authors' script, github.com/ari-holtzman/degen,
  metrics/repetition.py (see :func:`is_repetitive`).
- Zipf coefficient: the same paper and repository, metrics/zipf.py (see :func:`zipf_coefficient`).
"""

from __future__ import annotations

import bisect
import math
import operator
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from gpt2xl.errors import ConfigError
from gpt2xl.validation import check_int

# NLTK's SmoothingFunction(epsilon=0.1).method1 (Chen & Cherry 2014, method 1): a zero n-gram
# match count is replaced by epsilon before dividing by the number of hypothesis n-grams.
SMOOTHING_EPSILON = 0.1


def _tokens(sample: Iterable[int]) -> tuple[int, ...]:
    if isinstance(sample, (str, bytes, bytearray)):
        raise TypeError(f"a sample must be a sequence of token ids, not {type(sample).__name__}")
    # operator.index accepts int, numpy integers and integer 0-d tensors, and rejects floats.
    return tuple(operator.index(token) for token in sample)


def _samples(samples: Iterable[Iterable[int]]) -> list[tuple[int, ...]]:
    if isinstance(samples, (str, bytes, bytearray)):
        raise TypeError(f"samples must be a sequence of token-id sequences, not {type(samples).__name__}")
    return [_tokens(sample) for sample in samples]


def _ngrams(tokens: tuple[int, ...], n: int) -> list[tuple[int, ...]]:
    """All n-grams of ``tokens`` in order; empty when ``len(tokens) < n``."""
    # The shifted copies are shorter by 0..n-1 tokens; zip stops at the shortest, by design.
    return list(zip(*(tokens[i:] for i in range(n)), strict=False))


# --------------------------------------------------------------------------------------------
# distinct-n
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DistinctN:
    """distinct-n of a set of samples.

    ``corpus``: distinct n-grams over all samples / all n-grams over all samples (Li et al.
    2016 as usually computed: an n-gram repeated across samples counts once in the numerator).
    ``per_sample_mean``: the mean, over samples with at least one n-gram, of that ratio inside
    each sample. ``unique`` and ``total`` are the corpus-level counts. With no n-gram at all
    (no samples, or all shorter than n) both ratios are 0.0.
    """

    n: int
    corpus: float
    per_sample_mean: float
    unique: int
    total: int

    def __post_init__(self) -> None:
        check_int("DistinctN.n", self.n)
        if not 0 <= self.unique <= self.total:
            raise ConfigError(f"DistinctN needs 0 <= unique <= total, got {self.unique} and {self.total}.")
        for name in ("corpus", "per_sample_mean"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"DistinctN.{name} must lie in [0, 1], got {value!r}.")


def distinct_n(samples: Iterable[Iterable[int]], n: int) -> DistinctN:
    """distinct-n over ``samples`` (see :class:`DistinctN`).

    Edge cases: an empty sample, or one shorter than ``n``, has no n-gram and is left out of
    both the corpus counts and the per-sample mean; identical samples give a corpus value of
    (distinct n-grams of one sample) / (count of samples x its n-grams). Raises ConfigError when
    ``n`` is not an integer >= 1, TypeError for samples that are not integer sequences.
    """
    check_int("n", n)
    unique: set[tuple[int, ...]] = set()
    total = 0
    ratios: list[float] = []
    for tokens in _samples(samples):
        grams = _ngrams(tokens, n)
        if not grams:
            continue
        distinct = set(grams)
        unique |= distinct
        total += len(grams)
        ratios.append(len(distinct) / len(grams))
    return DistinctN(
        n=n,
        corpus=len(unique) / total if total else 0.0,
        per_sample_mean=math.fsum(ratios) / len(ratios) if ratios else 0.0,
        unique=len(unique),
        total=total,
    )


# --------------------------------------------------------------------------------------------
# Self-BLEU
# --------------------------------------------------------------------------------------------


@dataclass
class _TopTwo:
    """Largest count of one n-gram over all samples, the sample holding it, and the largest count
    in any other sample: enough to know the max over "every sample but i" in O(1)."""

    best: int
    best_index: int
    second: int = 0

    def add(self, count: int, index: int) -> None:
        if count > self.best:
            self.second = self.best
            self.best, self.best_index = count, index
        elif count > self.second:
            self.second = count

    def max_excluding(self, index: int) -> int:
        return self.second if index == self.best_index else self.best


def _closest_other_length(length: int, length_counts: Counter[int], sorted_lengths: list[int]) -> int:
    """NLTK's closest_ref_length over every sample but one of this ``length``: the reference
    length nearest to ``length``, the shorter one on a tie."""
    if length_counts[length] >= 2:
        return length
    position = bisect.bisect_left(sorted_lengths, length)
    candidates = []
    if position > 0:
        candidates.append(sorted_lengths[position - 1])
    if position + 1 < len(sorted_lengths):
        candidates.append(sorted_lengths[position + 1])
    return min(candidates, key=lambda ref: (abs(ref - length), ref))


def _bleu_against_others(
    index: int,
    per_order: list[Counter[tuple[int, ...]]],
    tops: list[dict[tuple[int, ...], _TopTwo]],
    *,
    hyp_len: int,
    ref_len: int,
) -> float:
    """Smoothed sentence BLEU of sample ``index`` (its n-gram counts ``per_order``) against every
    other sample, with uniform weights over the orders in ``per_order``."""
    weight = 1.0 / len(per_order)
    log_precision = 0.0
    for order_index, order_counts in enumerate(per_order):
        top = tops[order_index]
        matches = sum(min(count, top[gram].max_excluding(index)) for gram, count in order_counts.items())
        if order_index == 0 and matches == 0:
            return 0.0  # NLTK: no unigram match means BLEU 0, whatever the smoothing
        denominator = max(1, sum(order_counts.values()))
        precision = (matches or SMOOTHING_EPSILON) / denominator
        log_precision += weight * math.log(precision)
    brevity = 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / hyp_len)
    return brevity * math.exp(log_precision)


def self_bleu_scores(samples: Iterable[Iterable[int]], *, max_n: int = 4) -> list[float | None]:
    """The per-sample terms of :func:`self_bleu`, one per sample in order: the sentence BLEU of
    each non-empty sample against every OTHER non-empty sample as references, None for an empty
    sample (neither hypothesis nor reference) and for every sample when fewer than two are
    non-empty (nothing to compare). :func:`self_bleu` is the mean of the non-None terms; a
    bootstrap that weights samples (:class:`gpt2xl.stats.Weighted`) takes these terms. Same
    definition, edge cases and errors as :func:`self_bleu`."""
    check_int("max_n", max_n)
    all_tokens = _samples(samples)
    positions = [i for i, tokens in enumerate(all_tokens) if tokens]
    out: list[float | None] = [None] * len(all_tokens)
    if len(positions) < 2:
        return out
    sequences = [all_tokens[i] for i in positions]

    counts = [[Counter(_ngrams(tokens, order)) for order in range(1, max_n + 1)] for tokens in sequences]
    tops: list[dict[tuple[int, ...], _TopTwo]] = [{} for _ in range(max_n)]
    for index, per_order in enumerate(counts):
        for order_index, order_counts in enumerate(per_order):
            top = tops[order_index]
            for gram, count in order_counts.items():
                entry = top.get(gram)
                if entry is None:
                    top[gram] = _TopTwo(best=count, best_index=index)
                else:
                    entry.add(count, index)

    lengths = [len(tokens) for tokens in sequences]
    length_counts = Counter(lengths)
    sorted_lengths = sorted(length_counts)
    for index, per_order in enumerate(counts):
        out[positions[index]] = _bleu_against_others(
            index,
            per_order,
            tops,
            hyp_len=lengths[index],
            ref_len=_closest_other_length(lengths[index], length_counts, sorted_lengths),
        )
    return out


def self_bleu(samples: Iterable[Iterable[int]], *, max_n: int = 4) -> float:
    """Self-BLEU (Zhu et al. 2018): the mean, over samples, of the sentence BLEU of each sample
    against all the OTHER samples as references. Lower means more diverse.

    BLEU here is NLTK's ``sentence_bleu(refs, hyp, weights=(1/max_n,)*max_n,
    smoothing_function=SmoothingFunction().method1)``: clipped n-gram counts (a hypothesis
    n-gram counts at most as often as it occurs in the single reference holding it most), a
    precision denominator of ``max(1, number of hypothesis n-grams)``, a zero match count
    replaced by 0.1 (so a hypothesis shorter than n gets 0.1 for that order), a score of 0 when
    no unigram matches, and the brevity penalty ``exp(1 - r/c)`` for ``c <= r`` with r the
    reference length closest to c (the shorter on a tie).

    Each n-gram's two largest per-sample counts are precomputed, so one hypothesis costs
    O(its n-grams) and the whole score O(total n-grams x max_n), not O(samples^2). The
    per-sample terms are :func:`self_bleu_scores`.

    Edge cases: empty samples are dropped entirely (neither hypothesis nor reference); fewer
    than two non-empty samples give 0.0 (there is nothing to compare); identical samples give
    1.0; samples with no token in common give 0.0. Raises ConfigError when ``max_n`` is not an
    integer >= 1, TypeError for samples that are not integer sequences.
    """
    scores = [score for score in self_bleu_scores(samples, max_n=max_n) if score is not None]
    if not scores:
        return 0.0
    return math.fsum(scores) / len(scores)


# --------------------------------------------------------------------------------------------
# Repetition
# --------------------------------------------------------------------------------------------


# The released script of Holtzman et al. (github.com/ari-holtzman/degen, metrics/repetition.py at
# commit 3bbf8472c4fef3645427c26979b426ffbb65e339): ``SEP = tokenizer.encode(tokenizer.bos_token)[0]``
# is GPT-2's <|endoftext|>, ``max_n = 90`` bounds the phrase length, and a generation is flagged
# when ``last_n_repeats[max_repeated_n] > 1 and (max_repeated_n+1 >= 3 or
# last_n_repeats[max_repeated_n] > 50)``.
EOT_ID = 50256
REPETITION_MAX_PHRASE_LEN = 90
REPETITION_MIN_PHRASE_LEN = 3  # a phrase this long or longer is flagged once it repeats (count > 1)
REPETITION_SHORT_PHRASE_MAX_COUNT = 50  # a shorter phrase is flagged only when repeated MORE than this


def _check_repetition_options(eot_id: int | None, max_phrase_len: int) -> None:
    if eot_id is not None:
        check_int("eot_id", eot_id, minimum=0)
    check_int("max_phrase_len", max_phrase_len)


def _trailing_repeats(sequence: tuple[int, ...], phrase_len: int) -> int:
    """How many times the last ``phrase_len`` tokens occur back to back at the end of
    ``sequence``; at least 1, also when the sequence is shorter than ``phrase_len`` (the script's
    ``n_repeat`` starts at 1 whatever the length)."""
    size = len(sequence)
    phrase = sequence[size - phrase_len :] if phrase_len <= size else sequence
    count = 1
    while (count + 1) * phrase_len <= size and sequence[
        size - (count + 1) * phrase_len : size - count * phrase_len
    ] == phrase:
        count += 1
    return count


def is_repetitive(
    tokens: Iterable[int], *, eot_id: int | None = EOT_ID, max_phrase_len: int = REPETITION_MAX_PHRASE_LEN
) -> bool:
    """Whether ``tokens`` is a repeating generation as Holtzman et al. 2020 ("The Curious Case of
    Neural Text Degeneration") count them for "% Repetition", ported from the authors' script
    (github.com/ari-holtzman/degen, metrics/repetition.py, commit 3bbf847):

    1. if the last token is ``eot_id`` (GPT-2's <|endoftext|>, 50256), drop that one token;
    2. for every phrase length n = 1 .. ``max_phrase_len`` (90), count how many times the last n
       tokens occur back to back at the end of the sequence (at least 1: the phrase itself);
    3. keep the n with the largest count, the shortest n on a tie;
    4. flag the sequence when that count is > 1 and (n >= 3 or the count is > 50).

    So a loop of a 1- or 2-token phrase is flagged only past 50 repeats, and a loop of a longer
    phrase only when no shorter phrase repeats as often or more at the end: "a b c a b c" is
    flagged (n = 3, count 2), "a b a b a b" is not (n = 2, count 3), "x x x x x x" is not (n = 1,
    count 6, which beats "x x x" x 2), 51 x's are. The loop must reach the very end.

    ``eot_id=None`` keeps a trailing token whatever it is. An empty sequence (on which the script
    itself would fail) is not repetitive. Cost: O(len(tokens) x max_phrase_len) element
    comparisons at worst, done by slice comparison in C. Raises ConfigError when ``eot_id`` is
    not None nor an integer >= 0 or ``max_phrase_len < 1``, TypeError for non-integer tokens.
    """
    _check_repetition_options(eot_id, max_phrase_len)
    sequence = _tokens(tokens)
    if eot_id is not None and sequence and sequence[-1] == eot_id:
        sequence = sequence[:-1]
    if not sequence:
        return False
    best_len, best_count = 1, 0
    for phrase_len in range(1, max_phrase_len + 1):
        count = _trailing_repeats(sequence, phrase_len)
        if count > best_count:  # strictly greater: the shortest phrase wins a tie, as max() does
            best_len, best_count = phrase_len, count
    return best_count > 1 and (
        best_len >= REPETITION_MIN_PHRASE_LEN or best_count > REPETITION_SHORT_PHRASE_MAX_COUNT
    )


def repetition_rate(
    samples: Iterable[Iterable[int]],
    *,
    eot_id: int | None = EOT_ID,
    max_phrase_len: int = REPETITION_MAX_PHRASE_LEN,
) -> float:
    """Fraction of samples for which :func:`is_repetitive` holds: the paper's "% Repetition"
    divided by 100 (the script prints the number of flagged generations; the paper reports it as
    a share of all generations). Empty samples count, as non-repetitive; no samples give 0.0.
    The options are validated even when there are no samples."""
    _check_repetition_options(eot_id, max_phrase_len)
    sequences = _samples(samples)
    if not sequences:
        return 0.0
    repetitive = sum(is_repetitive(tokens, eot_id=eot_id, max_phrase_len=max_phrase_len) for tokens in sequences)
    return repetitive / len(sequences)


def mean_length(samples: Iterable[Iterable[int]]) -> float:
    """Mean number of tokens per sample; empty samples count as 0, no samples give 0.0."""
    sequences = _samples(samples)
    if not sequences:
        return 0.0
    return sum(len(tokens) for tokens in sequences) / len(sequences)


# --------------------------------------------------------------------------------------------
# Zipf coefficient
# --------------------------------------------------------------------------------------------


# The released script of Holtzman et al. (github.com/ari-holtzman/degen, metrics/zipf.py at commit
# 3bbf8472c4fef3645427c26979b426ffbb65e339): ``cnt.update(obj['tokens'])`` counts every token id of
# every generation in one Counter; ``xs = np.arange(1, min(len(cnt), args.N) + 1)`` with ``--N``
# defaulting to 5000; ``ys`` = the counts sorted in decreasing order, first N;
# ``a, b, r, p, std = stats.linregress(np.log(xs), np.log(ys))``; it prints ``-a`` (the Zipf
# coefficient) and ``-r``.
ZIPF_MAX_RANKS = 5000


@dataclass(frozen=True, kw_only=True)
class ZipfFit:
    """The least-squares line through (log rank, log count) of the most frequent tokens.

    ``coefficient``: minus the slope, the Zipf exponent s of ``count ~ rank ** -s`` (natural text
    is near 1; a flatter, more diverse distribution is lower). ``fit_r``: minus the Pearson
    correlation of log rank and log count, as the script prints it: 1.0 on an exact power law;
    None when every fitted count is equal (the correlation is 0/0; scipy gives nan there).
    ``num_ranks``: the ranks fitted (distinct tokens, at most ``max_ranks``); ``num_tokens``: all
    tokens counted.
    """

    coefficient: float
    fit_r: float | None
    num_ranks: int
    num_tokens: int

    def __post_init__(self) -> None:
        check_int("ZipfFit.num_ranks", self.num_ranks, minimum=2)
        check_int("ZipfFit.num_tokens", self.num_tokens, minimum=self.num_ranks)
        if not math.isfinite(self.coefficient):
            raise ConfigError(f"ZipfFit.coefficient must be finite, got {self.coefficient!r}.")
        if self.fit_r is not None and not -1.0 <= self.fit_r <= 1.0:
            raise ConfigError(f"ZipfFit.fit_r must lie in [-1, 1] or be None, got {self.fit_r!r}.")


def zipf_coefficient(samples: Iterable[Iterable[int]], *, max_ranks: int = ZIPF_MAX_RANKS) -> ZipfFit:
    """Zipf coefficient of the pooled token ids of ``samples`` (Holtzman et al. 2020, Table 1),
    computed as the authors' script does (github.com/ari-holtzman/degen, metrics/zipf.py, commit
    3bbf847):

    1. count every token id of every sample together (one frequency table for the whole set; no
       token is dropped, so pass the continuations without the prompt, as for the other metrics);
    2. sort the counts in decreasing order and keep the first ``max_ranks`` (5000), ranks 1..N;
    3. fit ``log(count) = intercept + slope * log(rank)`` by ordinary least squares (scipy's
       ``linregress``) and report ``-slope``, and ``-r`` as ``fit_r``.

    Tokens with equal counts are interchangeable here: only the sorted counts enter the fit. The
    script's p-value is not reported (``fit_r`` carries the quality of the fit). Sums are taken
    with ``math.fsum``, so the result matches ``linregress`` to rounding. When every fitted count
    is equal the slope is 0 and ``fit_r`` is None.

    Raises ConfigError when the samples hold fewer than two distinct tokens (no line through one
    point: generate more or longer samples) or ``max_ranks < 2``; TypeError for samples that are
    not integer sequences.
    """
    check_int("max_ranks", max_ranks, minimum=2)
    counts: Counter[int] = Counter()
    for tokens in _samples(samples):
        counts.update(tokens)
    if len(counts) < 2:
        raise ConfigError(
            f"The Zipf coefficient needs at least two distinct tokens in the samples, got {len(counts)}; "
            "generate more or longer samples."
        )
    top = sorted(counts.values(), reverse=True)[:max_ranks]
    size = len(top)
    if top[0] == top[-1]:
        # Every log count is the same number: slope 0 exactly, and r is 0/0. Tested on the
        # counts, not on a computed spread, which could come out a rounding error above 0.
        return ZipfFit(coefficient=0.0, fit_r=None, num_ranks=size, num_tokens=counts.total())
    xs = [math.log(rank) for rank in range(1, size + 1)]
    ys = [math.log(count) for count in top]
    x_mean = math.fsum(xs) / size
    y_mean = math.fsum(ys) / size
    sxx = math.fsum((x - x_mean) ** 2 for x in xs)
    sxy = math.fsum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys, strict=True))
    syy = math.fsum((y - y_mean) ** 2 for y in ys)
    correlation = max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))  # clipped to [-1, 1] as linregress does
    return ZipfFit(coefficient=-sxy / sxx, fit_r=-correlation, num_ranks=size, num_tokens=counts.total())
