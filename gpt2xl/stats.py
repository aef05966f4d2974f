"""Bootstrap intervals and paired significance tests for the metrics of a grid cell.

Units and clusters
------------------
A grid cell holds one generated sample per prompt per seed: its *units* are (prompt, seed)
pairs. The corpus-level metrics of a cell (distinct-n over the whole cell, self-BLEU across its
samples, repetition rate, generation perplexity as exp(total NLL / total tokens), mean length)
are not means of independent per-unit numbers, so every bootstrap replicate RECOMPUTES the
statistic on the resampled units; the functions here take the statistic, not per-unit values.

The resampling unit is the *cluster*, and for a grid the cluster is the prompt: a replicate
draws prompts with replacement and keeps all the seeds of each drawn prompt together. Samples of
one prompt under different seeds share their context, so they are correlated; resampling
(prompt, seed) pairs independently would treat 3 seeds of 32 prompts as 96 independent draws
and make the intervals too narrow. Resampling whole clusters (one-stage cluster bootstrap,
Davison & Hinkley 1997, "Bootstrap Methods and their Application", §3.8) is the honest choice:
the variance across seeds is carried inside each drawn cluster, and the interval describes the
population of prompts the cell would be run on. Every function takes ``cluster``, a key
function from a unit to its cluster (``lambda u: u.prompt``); ``cluster=None`` makes every unit
its own cluster (for data whose units are independent). It is a required argument: which of
the two applies is a property of the data that the caller knows and this module does not.

Interval method
---------------
Intervals are bootstrap PERCENTILE intervals (Efron & Tibshirani 1993, §13.3): the
(1 − confidence)/2 and (1 + confidence)/2 quantiles of the replicates, with numpy's default linear
interpolation (Hyndman & Fan type 7, as ``scipy.stats.bootstrap(method="percentile")``). Chosen
over BCa because (1) it respects the range of the metric (a distinct-n interval stays in [0, 1],
a perplexity interval above 0) and any monotone transformation; (2) the paired test's p-value
below is its dual, so a "significant" difference has an interval that excludes 0; (3) BCa moves
the quantile levels by the share of replicates below the estimate; for the set-based statistics
below, whose replicates are shifted by about one standard deviation for a reason that lies in
the resampling (see there), that pushes the levels into the far tails, which 1000 replicates
estimate poorly. What the percentile method does not correct is a bootstrap distribution centred
away from the estimate; :attr:`Interval.bias` (mean of the replicates − estimate) records that
shift so a report can show it. Statistics that compare units with each other (below) shift for a
reason that lies in the resampling, not in the estimator, and are CENTRED: their replicates are
moved by −bias before the quantiles are taken (``method="centred percentile"``), so the interval
keeps the bootstrap's spread and is placed around the estimate (it may then cross a bound of the
metric's range, e.g. exceed 1 for distinct-n near 1).

Resampler: ``numpy.random.default_rng(seed).integers(0, C, size=(n_resamples, C))`` for C
clusters: row r lists the clusters drawn by replicate r. With ``cluster=None`` this is the very
draw ``scipy.stats.bootstrap`` makes for the same generator, so the two agree exactly. The seed
is recorded in every :class:`Interval`; the same seed gives the same interval.

Statistics
----------
``statistic`` is one of:

- a plain callable ``f(units) -> float``: called once per replicate with the resampled units in
  draw order (a unit drawn twice appears twice, as the same object). Right for any statistic of
  the empirical distribution of units (a mean, a ratio of sums, a median).
- :class:`Ratio`: ``sum of per-unit numerators / sum of per-unit denominators``, optionally
  transformed (``np.exp`` for perplexity). The per-unit values are computed once and every
  replicate is an index operation on arrays, with results identical to the plain path (the same
  sums, in the same order). Covers generation perplexity (NLL / tokens), repetition rate and
  end-of-text rate (flag / 1), mean length (tokens / 1), per-sample distinct-n (ratio / has an
  n-gram).
- :class:`CorpusDistinct`: corpus distinct-n (unique n-grams over the cell / all n-grams),
  vectorised. It is NOT a ratio of per-unit sums: an n-gram shared by two samples counts once.
- :class:`Weighted`: a statistic that compares units with each other (self-BLEU), called once
  per replicate with the distinct units drawn and how often each was drawn.

Why the last two exist: only about 63 % of a with-replacement replicate's draws are distinct
units (1 − 1/e); the rest repeat one, and a statistic that compares samples with each other
sees a repeat as a perfect match. Naively, a replicate's self-BLEU jumps towards 1 (a sample's
copy is one of its references: 0.09 → [0.54, 0.80] on 32 prompts x 3 seeds of Zipf-distributed
tokens) and its corpus distinct-2 drops by a third (a copy adds n-grams to the denominator and
none to the numerator: 0.73 → [0.41, 0.57]); such intervals do not even contain the estimate.
Both classes treat the copies of one unit as distinct samples that do not match EACH OTHER,
while matching every other unit as usual; on a sample without repeats they equal the ordinary
metric. A shift remains: a replicate compares fewer distinct samples (self-BLEU against 63 % of
the references comes out lower: bias about −1 standard deviation in a simulation with fresh
cells as the truth), and an n-gram held by one drawn unit counts once per copy (distinct-2
about +0.5 sd). Hence both are centred (``centre=True``, see above). In that simulation (30
samples of 30 Zipf tokens, 150 fresh cells) the replicates' spread matched the true standard
deviation for distinct-2 and reached about 85 % of it for self-BLEU, whose intervals are
therefore somewhat narrow; a plain callable, a Ratio, or ``centre=False`` leaves replicates as
drawn.

Significance
------------
:func:`paired_bootstrap` compares two cells run on the same prompts and seeds: each replicate
draws one set of clusters and applies it to both cells, so prompt difficulty cancels in the
difference ``b − a``. Two-sided p-value over the R replicate differences d (centred ones for a
centred statistic): ``p = min(1, 2 · min(1 + #{d ≤ 0}, 1 + #{d ≥ 0}) / (R + 1))``, the fraction
of replicates on the other side of zero, doubled, with the +1 correction (Davison & Hinkley
1997, §4.2) so that a finite number of replicates never claims p = 0. It is the dual of the
percentile interval: ``p < 1 − confidence`` implies that the interval of the difference excludes
0 (the converse can fail by one replicate, on the conservative side). ``significant`` is
``p < 1 − confidence``, one comparison at a time: :func:`neighbour_tests` applies no
multiple-comparison correction, and says so in its result.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Generic, TypeVar

import numpy as np

from gpt2xl.errors import ConfigError, NumericalError
from gpt2xl.validation import check_int, check_seed

T = TypeVar("T")

METHODS = ("percentile", "centred percentile")
MAX_RESAMPLES = 100_000  # replicates x units of float64 must stay in memory (100k x 1000 units = 800 MB)
# CorpusDistinct evaluates this many replicates at a time: its matrices are rows x shared n-grams.
_DISTINCT_BLOCK = 256

FloatArray = np.ndarray  # float64 arrays; numpy's generic aliases add nothing for mypy here


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


def _check_confidence(confidence: object) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be a number strictly between 0 and 1 (e.g. 0.95), got {confidence!r}.")
    return float(confidence)


def min_resamples(confidence: float) -> int:
    """The fewest replicates at which a ``confidence`` interval has a replicate in each tail and
    the paired test can reach ``p < 1 − confidence``: ``ceil(2 / (1 − confidence))`` (40 at 95 %)."""
    alpha = 1.0 - _check_confidence(confidence)
    return math.ceil(round(2.0 / alpha, 9))


def _check_resamples(n_resamples: object, confidence: float) -> int:
    minimum = min_resamples(confidence)
    if isinstance(n_resamples, int) and not isinstance(n_resamples, bool) and 0 < n_resamples < minimum:
        raise ConfigError(
            f"n_resamples must be at least {minimum} for a {confidence:g} interval (one replicate in each tail), "
            f"got {n_resamples}; use 1000 or more for reported intervals."
        )
    return check_int("n_resamples", n_resamples, minimum=minimum, maximum=MAX_RESAMPLES)


@dataclass(frozen=True, kw_only=True)
class Interval:
    """A bootstrap interval: ``estimate`` is the statistic on all units, ``low``/``high`` the
    percentile interval at ``confidence`` from ``n_resamples`` replicates drawn with ``seed``.
    ``bias`` is the mean of the replicates as drawn minus ``estimate``; ``method`` says whether
    the quantiles were taken of those replicates (``"percentile"``) or of the replicates moved
    by −bias (``"centred percentile"``; see the module docstring). ``resampling`` is
    ``"clusters"`` or ``"units"``."""

    estimate: float
    low: float
    high: float
    confidence: float
    n_resamples: int
    seed: int
    n_units: int
    n_clusters: int
    resampling: str
    bias: float
    method: str

    def __post_init__(self) -> None:
        _check_confidence(self.confidence)
        check_int("Interval.n_resamples", self.n_resamples)
        check_seed("Interval.seed", self.seed)
        check_int("Interval.n_units", self.n_units)
        check_int("Interval.n_clusters", self.n_clusters, maximum=self.n_units)
        for name in ("estimate", "low", "high", "bias"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"Interval.{name} must be finite, got {getattr(self, name)!r}.")
        if self.low > self.high:
            raise ConfigError(f"Interval needs low <= high, got {self.low!r} > {self.high!r}.")
        if self.resampling not in {"clusters", "units"}:
            raise ConfigError(f"Interval.resampling must be 'clusters' or 'units', got {self.resampling!r}.")
        if self.method not in METHODS:
            raise ConfigError(f"Interval.method must be one of {METHODS}, got {self.method!r}.")

    @property
    def width(self) -> float:
        return self.high - self.low

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class PairedTest:
    """Cell b against cell a on the same units: ``difference`` is the interval of
    ``statistic(b) − statistic(a)``; ``p_value`` the two-sided bootstrap p-value;
    ``significant`` is ``p_value < level`` with ``level = 1 − confidence``; ``test`` names the
    test for a report, e.g. "paired cluster bootstrap (percentile), two-sided"."""

    estimate_a: float
    estimate_b: float
    difference: Interval
    p_value: float
    level: float
    significant: bool
    test: str

    def __post_init__(self) -> None:
        if not 0.0 < self.p_value <= 1.0:
            raise ConfigError(f"PairedTest.p_value must lie in (0, 1], got {self.p_value!r}.")
        if not math.isclose(self.level, 1.0 - self.difference.confidence):
            raise ConfigError(f"PairedTest.level must be 1 - confidence, got {self.level!r}.")
        if self.significant != (self.p_value < self.level):
            raise ConfigError("PairedTest.significant must equal p_value < level.")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class NeighbourTest:
    """The paired test of cell ``right`` against cell ``left = right − 1`` along an axis.
    ``correction`` names the multiple-comparison correction applied: none."""

    left: int
    right: int
    result: PairedTest
    correction: str = "none"

    def __post_init__(self) -> None:
        check_int("NeighbourTest.left", self.left, minimum=0)
        if self.right != self.left + 1:
            raise ConfigError(f"NeighbourTest.right must be left + 1, got {self.left} and {self.right}.")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# The resampling design
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Design:
    """Units grouped into clusters (in order of first appearance), and the replicates' draws."""

    clusters: tuple[tuple[int, ...], ...]
    unit_cluster: np.ndarray  # cluster index of each unit
    resampling: str

    @property
    def n_units(self) -> int:
        return len(self.unit_cluster)

    @property
    def balanced(self) -> bool:
        return len({len(c) for c in self.clusters}) == 1


@dataclass(frozen=True)
class _Draws:
    """The clusters drawn by each replicate (``cluster_draws``, rows = replicates) and what they
    imply: the units in draw order (``rows``; a 2-D array when every cluster has the same size,
    else one array per replicate) and how often each unit was drawn (``counts``)."""

    design: _Design
    cluster_draws: np.ndarray

    def rows(self) -> np.ndarray | list[np.ndarray]:
        if self.design.balanced:
            members = np.asarray(self.design.clusters, dtype=np.int64)  # clusters x size
            return members[self.cluster_draws].reshape(len(self.cluster_draws), -1)
        members_list = [np.asarray(c, dtype=np.int64) for c in self.design.clusters]
        return [np.concatenate([members_list[c] for c in row]) for row in self.cluster_draws]

    def counts(self) -> np.ndarray:
        replicates, n_clusters = self.cluster_draws.shape
        offsets = self.cluster_draws + np.arange(replicates, dtype=np.int64)[:, None] * n_clusters
        per_cluster = np.bincount(offsets.ravel(), minlength=replicates * n_clusters).reshape(replicates, n_clusters)
        return per_cluster[:, self.design.unit_cluster]


def _design(units: Sequence[T], cluster: Callable[[T], Hashable] | None) -> _Design:
    if isinstance(units, (str, bytes)) or not isinstance(units, Sequence):
        raise TypeError(f"units must be a sequence, not {type(units).__name__}")
    if not units:
        raise ConfigError("A bootstrap needs at least one unit; the cell has none, so run it on one prompt or more.")
    if cluster is None:
        return _Design(
            clusters=tuple((i,) for i in range(len(units))),
            unit_cluster=np.arange(len(units), dtype=np.int64),
            resampling="units",
        )
    index: dict[Hashable, int] = {}
    members: list[list[int]] = []
    unit_cluster = np.empty(len(units), dtype=np.int64)
    for i, unit in enumerate(units):
        c = index.setdefault(cluster(unit), len(members))
        if c == len(members):
            members.append([])
        members[c].append(i)
        unit_cluster[i] = c
    return _Design(clusters=tuple(tuple(m) for m in members), unit_cluster=unit_cluster, resampling="clusters")


def _draw(design: _Design, *, n_resamples: int, seed: int) -> _Draws:
    rng = np.random.default_rng(seed)
    return _Draws(design, rng.integers(0, len(design.clusters), size=(n_resamples, len(design.clusters))))


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------


class VectorStatistic(ABC, Generic[T]):
    """A statistic that computes all of a bootstrap's replicates itself, from per-unit data
    prepared once. Calling it on units gives its value on that sample (no unit repeated).
    ``centre``: whether its intervals are centred percentile intervals."""

    name: str
    centre: bool = False

    @abstractmethod
    def __call__(self, units: Sequence[T]) -> float: ...

    @abstractmethod
    def _replicates(self, units: Sequence[T], draws: _Draws) -> FloatArray: ...


def _divide(numerators: FloatArray, denominators: FloatArray, empty: float) -> FloatArray:
    out = np.full(numerators.shape, empty, dtype=np.float64)
    np.divide(numerators, denominators, out=out, where=denominators != 0)
    return out


@dataclass(frozen=True, kw_only=True)
class Ratio(VectorStatistic[T]):
    """``transform(sum numerator(u) / sum denominator(u))`` over the units (``denominator``
    None: 1 per unit, a mean). ``transform`` is applied to a float64 array, so it must be
    elementwise (``np.exp``). A zero denominator gives ``empty`` (default NaN: undefined,
    which the bootstrap refuses; the metric's own convention, e.g. 0.0, may be given instead).

    Examples: generation perplexity ``Ratio(numerator=nll, denominator=tokens,
    transform=np.exp)``; repetition rate ``Ratio(numerator=lambda u: float(u.repetitive))``;
    per-sample distinct-n ``Ratio(numerator=ratio_or_0, denominator=has_ngram, empty=0.0)``."""

    name: str
    numerator: Callable[[T], float]
    denominator: Callable[[T], float] | None = None
    transform: Callable[[FloatArray], FloatArray] | None = None
    empty: float = math.nan

    def _values(self, units: Sequence[T]) -> tuple[FloatArray, FloatArray]:
        numerators = np.array([float(self.numerator(u)) for u in units], dtype=np.float64)
        if self.denominator is None:
            return numerators, np.ones(len(units), dtype=np.float64)
        denominator = self.denominator
        return numerators, np.array([float(denominator(u)) for u in units], dtype=np.float64)

    def _finish(self, numerator_sums: FloatArray, denominator_sums: FloatArray) -> FloatArray:
        ratios = _divide(numerator_sums, denominator_sums, self.empty)
        return ratios if self.transform is None else np.asarray(self.transform(ratios), dtype=np.float64)

    def __call__(self, units: Sequence[T]) -> float:
        numerators, denominators = self._values(units)
        # The same reductions as _replicates (1-D sums of the values in order), so a plain
        # callable wrapping this one gives bit-identical replicates.
        return float(self._finish(numerators.sum(keepdims=True), denominators.sum(keepdims=True))[0])

    def _replicates(self, units: Sequence[T], draws: _Draws) -> FloatArray:
        numerators, denominators = self._values(units)
        rows = draws.rows()
        if isinstance(rows, np.ndarray):
            return self._finish(numerators[rows].sum(axis=1), denominators[rows].sum(axis=1))
        return self._finish(
            np.array([numerators[r].sum() for r in rows]), np.array([denominators[r].sum() for r in rows])
        )


@dataclass(frozen=True, kw_only=True)
class CorpusDistinct(VectorStatistic[T]):
    """Corpus distinct-n: the number of distinct items over all units / the number of items.
    ``items(u)`` lists the unit's n-grams, one per occurrence (``metrics.distinct_n`` counts
    the same; a unit with none contributes nothing). No item at all gives ``empty``.

    On a replicate, copies of one unit do not match each other (see the module docstring): an
    item found in two or more distinct drawn units counts once; an item found in one drawn unit
    only counts once per copy of that unit; the denominator counts every copy's items.
    Centred by default (``centre``; see the module docstring)."""

    name: str
    items: Callable[[T], Sequence[Hashable]]
    empty: float = math.nan
    centre: bool = True

    def __call__(self, units: Sequence[T]) -> float:
        distinct: set[Hashable] = set()
        total = 0
        for unit in units:
            unit_items = self.items(unit)
            distinct.update(unit_items)
            total += len(unit_items)
        return float(_divide(np.array([float(len(distinct))]), np.array([float(total)]), self.empty)[0])

    def weighted(self, units: Sequence[T], counts: Sequence[int]) -> float:
        """The replicate value for distinct ``units`` drawn ``counts`` times each (the rule in
        the class docstring, computed directly: the reference for the vectorised path)."""
        holders: dict[Hashable, list[int]] = {}
        total = 0
        for unit, count in zip(units, counts, strict=True):
            unit_items = self.items(unit)
            total += count * len(unit_items)
            for item in set(unit_items):
                holders.setdefault(item, []).append(count)
        distinct = sum(1 if len(c) >= 2 else c[0] for c in holders.values())
        return float(_divide(np.array([float(distinct)]), np.array([float(total)]), self.empty)[0])

    def _replicates(self, units: Sequence[T], draws: _Draws) -> FloatArray:
        # Items held by one unit only ("private") add that unit's count each: a dot product.
        # Items held by several units add 1 when two or more of them were drawn, else the count
        # of the one drawn: a (replicates x units) @ (units x shared items) product.
        holders: dict[Hashable, list[int]] = {}
        totals = np.zeros(len(units), dtype=np.float64)
        for i, unit in enumerate(units):
            unit_items = self.items(unit)
            totals[i] = len(unit_items)
            for item in set(unit_items):
                holders.setdefault(item, []).append(i)
        private = np.zeros(len(units), dtype=np.float64)
        shared = [h for h in holders.values() if len(h) >= 2]
        for h in holders.values():
            if len(h) == 1:
                private[h[0]] += 1
        presence = np.zeros((len(units), len(shared)), dtype=np.float64)
        for column, h in enumerate(shared):
            presence[h, column] = 1.0
        counts = draws.counts().astype(np.float64)
        out = np.empty(len(counts), dtype=np.float64)
        for start in range(0, len(counts), _DISTINCT_BLOCK):
            block = counts[start : start + _DISTINCT_BLOCK]
            holders_drawn = (block > 0).astype(np.float64) @ presence
            copies_drawn = block @ presence
            shared_distinct = np.where(holders_drawn >= 2, 1.0, copies_drawn).sum(axis=1)
            out[start : start + len(block)] = _divide(block @ private + shared_distinct, block @ totals, self.empty)
        return out


@dataclass(frozen=True, kw_only=True)
class Weighted(VectorStatistic[T]):
    """A statistic of distinct units with integer weights: ``function(units, counts)`` gets the
    units a replicate drew (each once, in their original order) and how many times each was
    drawn. For statistics that compare units with each other, where a copy must not count as a
    match (self-BLEU: the weighted mean, over the drawn units, of each unit's BLEU against the
    OTHER drawn units). Called once per replicate, in Python: cost = replicates x one call.
    Centred by default (``centre``; see the module docstring)."""

    name: str
    function: Callable[[Sequence[T], Sequence[int]], float]
    centre: bool = True

    def __call__(self, units: Sequence[T]) -> float:
        return float(self.function(units, [1] * len(units)))

    def _replicates(self, units: Sequence[T], draws: _Draws) -> FloatArray:
        values = []
        for row in draws.counts():
            drawn = np.flatnonzero(row)
            values.append(float(self.function([units[int(i)] for i in drawn], row[drawn].tolist())))
        return np.array(values, dtype=np.float64)


Statistic = Callable[[Sequence[T]], float]


def _name(statistic: Statistic[T]) -> str:
    return getattr(statistic, "name", None) or getattr(statistic, "__name__", None) or type(statistic).__name__


def _replicates(units: Sequence[T], statistic: Statistic[T], draws: _Draws) -> FloatArray:
    if isinstance(statistic, VectorStatistic):
        values = statistic._replicates(units, draws)
    else:
        rows = draws.rows()
        values = np.array([float(statistic([units[i] for i in row])) for row in rows], dtype=np.float64)
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise NumericalError(
            f"The statistic {_name(statistic)} is not finite on {bad} of {len(values)} bootstrap resamples "
            "(a zero denominator, e.g. no generated token); give the cell more prompts or seeds, "
            "or report this metric without an interval."
        )
    return values


def _estimate(units: Sequence[T], statistic: Statistic[T]) -> float:
    value = float(statistic(units))
    if not math.isfinite(value):
        raise NumericalError(
            f"The statistic {_name(statistic)} is {value} on the whole cell (a zero denominator, e.g. no generated "
            "token); report this metric without an interval for this cell."
        )
    return value


def _centred(statistic: Statistic[T]) -> bool:
    return isinstance(statistic, VectorStatistic) and statistic.centre


def _interval(
    estimate: float,
    replicates: FloatArray,
    design: _Design,
    *,
    centre: bool,
    confidence: float,
    n_resamples: int,
    seed: int,
) -> tuple[Interval, FloatArray]:
    """The interval, and the replicates its quantiles were taken of (moved by −bias if centred)."""
    alpha = 1.0 - confidence
    bias = float(replicates.mean()) - estimate
    used = replicates - bias if centre else replicates
    low, high = np.quantile(used, [alpha / 2, 1 - alpha / 2])
    interval = Interval(
        estimate=estimate,
        low=float(low),
        high=float(high),
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
        n_units=design.n_units,
        n_clusters=len(design.clusters),
        resampling=design.resampling,
        bias=bias,
        method=METHODS[1] if centre else METHODS[0],
    )
    return interval, used


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------


def bootstrap_replicates(
    units: Sequence[T],
    statistic: Statistic[T],
    *,
    cluster: Callable[[T], Hashable] | None,
    n_resamples: int,
    seed: int,
) -> FloatArray:
    """The statistic on each of ``n_resamples`` cluster-bootstrap resamples of ``units`` (see the
    module docstring), as a float64 array in replicate order: as drawn, never centred."""
    check_int("n_resamples", n_resamples, maximum=MAX_RESAMPLES)
    check_seed("seed", seed)
    design = _design(units, cluster)
    return _replicates(units, statistic, _draw(design, n_resamples=n_resamples, seed=seed))


def bootstrap_interval(
    units: Sequence[T],
    statistic: Statistic[T],
    *,
    cluster: Callable[[T], Hashable] | None,
    n_resamples: int,
    seed: int,
    confidence: float = 0.95,
) -> Interval:
    """The percentile bootstrap interval of ``statistic`` over ``units``, resampling clusters
    (``cluster(u)``, e.g. the prompt; None: every unit alone) with ``default_rng(seed)``.

    ``statistic`` is recomputed on every replicate: a plain callable over the resampled units,
    or a :class:`Ratio`, :class:`CorpusDistinct` or :class:`Weighted`, which are faster and
    handle repeated units (see the module docstring). Raises ConfigError for an empty cell or
    bad options (``n_resamples`` below :func:`min_resamples`), NumericalError when the
    statistic is not finite on the cell or on a replicate."""
    confidence = _check_confidence(confidence)
    n_resamples = _check_resamples(n_resamples, confidence)
    check_seed("seed", seed)
    design = _design(units, cluster)
    estimate = _estimate(units, statistic)
    replicates = _replicates(units, statistic, _draw(design, n_resamples=n_resamples, seed=seed))
    centre = _centred(statistic)
    return _interval(
        estimate, replicates, design, centre=centre, confidence=confidence, n_resamples=n_resamples, seed=seed
    )[0]


def _p_value(differences: FloatArray) -> float:
    """Two-sided: twice the smaller share of replicates on either side of zero, +1 corrected."""
    below = 1 + int(np.count_nonzero(differences <= 0))
    above = 1 + int(np.count_nonzero(differences >= 0))
    return min(1.0, 2.0 * min(below, above) / (len(differences) + 1))


def _align(cells: Sequence[Sequence[T]], key: Callable[[T], Hashable]) -> list[list[T]]:
    """Every cell's units in the first cell's key order; ConfigError unless all cells hold
    exactly the same keys, each once."""
    reference: dict[Hashable, int] = {}
    for i, unit in enumerate(cells[0]):
        k = key(unit)
        if k in reference:
            raise ConfigError(f"Cell 0 holds unit {k!r} twice; a paired test needs each (prompt, seed) once.")
        reference[k] = i
    aligned: list[list[T]] = [list(cells[0])]
    for number, cell in enumerate(cells[1:], start=1):
        by_key: dict[Hashable, T] = {}
        for unit in cell:
            k = key(unit)
            if k in by_key:
                raise ConfigError(
                    f"Cell {number} holds unit {k!r} twice; a paired test needs each (prompt, seed) once."
                )
            by_key[k] = unit
        missing = [k for k in reference if k not in by_key]
        extra = [k for k in by_key if k not in reference]
        if missing or extra:
            where = f"is missing from cell {number}" if missing else f"is only in cell {number}"
            example = f"{(missing or extra)[0]!r} {where}"
            count = len(missing) + len(extra)
            raise ConfigError(
                f"A paired test needs every cell evaluated on the same prompts and seeds, but the cells differ in "
                f"{count} unit{'s' if count > 1 else ''} ({example}); run the cells on the same prompts and seeds."
            )
        aligned.append([by_key[k] for k in reference])
    return aligned


def _check_clusters(aligned: Sequence[Sequence[T]], cluster: Callable[[T], Hashable] | None) -> None:
    if cluster is None:
        return
    first = [cluster(u) for u in aligned[0]]
    for number, cell in enumerate(aligned[1:], start=1):
        for unit, expected in zip(cell, first, strict=True):
            if cluster(unit) != expected:
                raise ConfigError(
                    f"Unit {cluster(unit)!r} of cell {number} lies in another cluster than the same unit "
                    "of cell 0; derive the cluster from the unit's key (its prompt)."
                )


def _paired(
    cells: Sequence[Sequence[T]],
    statistic: Statistic[T],
    *,
    key: Callable[[T], Hashable],
    cluster: Callable[[T], Hashable] | None,
    n_resamples: int,
    seed: int,
    confidence: float,
) -> list[PairedTest]:
    """Paired tests of cell i + 1 against cell i, all cells resampled with the same draws."""
    confidence = _check_confidence(confidence)
    n_resamples = _check_resamples(n_resamples, confidence)
    check_seed("seed", seed)
    for cell in cells:
        _design(cell, None)  # each cell: a non-empty sequence
    aligned = _align(cells, key)
    _check_clusters(aligned, cluster)
    design = _design(aligned[0], cluster)
    draws = _draw(design, n_resamples=n_resamples, seed=seed)
    # Each cell's estimate on its own order (the value bootstrap_interval reports for it);
    # replicates on the aligned order, so replicate r draws the same units in every cell.
    estimates = [_estimate(cell, statistic) for cell in cells]
    replicates = [_replicates(cell, statistic, draws) for cell in aligned]
    level = 1.0 - confidence
    centre = _centred(statistic)
    tests = []
    for i in range(len(cells) - 1):
        # Centring the difference = centring each cell: (b − bias_b) − (a − bias_a).
        difference, differences = _interval(
            estimates[i + 1] - estimates[i],
            replicates[i + 1] - replicates[i],
            design,
            centre=centre,
            confidence=confidence,
            n_resamples=n_resamples,
            seed=seed,
        )
        p = _p_value(differences)
        tests.append(
            PairedTest(
                estimate_a=estimates[i],
                estimate_b=estimates[i + 1],
                difference=difference,
                p_value=p,
                level=level,
                significant=p < level,
                test=f"paired {design.resampling[:-1]} bootstrap ({difference.method}), two-sided",
            )
        )
    return tests


def paired_bootstrap(
    units_a: Sequence[T],
    units_b: Sequence[T],
    statistic: Statistic[T],
    *,
    key: Callable[[T], Hashable],
    cluster: Callable[[T], Hashable] | None,
    n_resamples: int,
    seed: int,
    confidence: float = 0.95,
) -> PairedTest:
    """Paired bootstrap test of ``statistic(units_b) − statistic(units_a)`` for two cells
    evaluated on the same units: ``key(u)`` identifies a unit (its (prompt, seed)), and both
    cells must hold the same keys, each once (any order), else ConfigError. Each replicate
    draws one set of clusters and applies it to both cells. See the module docstring for the
    p-value."""
    return _paired(
        [units_a, units_b],
        statistic,
        key=key,
        cluster=cluster,
        n_resamples=n_resamples,
        seed=seed,
        confidence=confidence,
    )[0]


def neighbour_tests(
    cells: Sequence[Sequence[T]],
    statistic: Statistic[T],
    *,
    key: Callable[[T], Hashable],
    cluster: Callable[[T], Hashable] | None,
    n_resamples: int,
    seed: int,
    confidence: float = 0.95,
) -> tuple[NeighbourTest, ...]:
    """The paired test between each pair of neighbouring cells along an axis (cells in axis
    order, e.g. increasing top-k at one temperature): ``result[i]`` compares ``cells[i + 1]``
    with ``cells[i]``. Every cell is resampled with the same draws, so each cell's replicates
    are computed once; ``result[i]`` equals ``paired_bootstrap(cells[i], cells[i + 1], ...)``
    with the same seed when the cells list their units in the same order (clusters are numbered
    in the order of the first cell). No multiple-comparison correction: each test is at level
    ``1 − confidence``."""
    if len(cells) < 2:
        raise ConfigError(f"Neighbour tests need at least two cells along the axis, got {len(cells)}.")
    tests = _paired(
        cells, statistic, key=key, cluster=cluster, n_resamples=n_resamples, seed=seed, confidence=confidence
    )
    return tuple(NeighbourTest(left=i, right=i + 1, result=t) for i, t in enumerate(tests))
