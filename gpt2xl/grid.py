"""The sampling grid: temperature x top-k x top-p (x seeds), each cell scored for diversity and fluency.

One grid run loads nothing: the caller passes the model and the prompts, computed once, and
:func:`run_grid` only samples and scores. Every cell (one temperature, one top-k, one top-p, one seed)
continues the same prompts with the batched, KV-cached sampler (:func:`gpt2xl.sampling.generate`),
one batch of prompts at a time. Each batch of a cell is a *shard* (:class:`Shard`) with a fresh
generator of its own (:func:`shard_seed`: the cell's seed for the first batch), so a shard is
reproducible on its own and does not depend on which shards ran before it, in which process, or
on which Ray worker (:mod:`gpt2xl.distributed`).

Metrics of a cell: the rows of :data:`gpt2xl.metric_table.METRICS` (name, title, one-sentence
definition, direction, format), computed by :func:`score_samples` on GPT-2 token ids of the
generated continuation (prompt excluded, the end-of-text token excluded; see
:mod:`gpt2xl.metrics` for each function). Generation perplexity is scored under the SAME model;
a grid refuses prompts whose prompt + generation exceed the context (:func:`check_fits_context`),
so every cell is scored on whole prompts; :func:`continuation_nll` itself, for other callers,
crops such a prompt from the left and slides over a continuation longer than the context.

The "human" reference row scores the true continuations of the same prompts in the dataset, cut
to ``max_new_tokens`` tokens, with the same metrics (its eot_rate is 0 by construction).

Every cell also keeps its samples with their own scores (:class:`ScoredSample`: tokens, end-of-text,
NLL): the units of the bootstrap intervals and tests of :mod:`gpt2xl.grid_intervals`.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

from tqdm.auto import tqdm

from gpt2xl.errors import ConfigError
from gpt2xl.metric_table import METRIC_BY_NAME, check_metric_values
from gpt2xl.metrics import distinct_n, mean_length, repetition_rate, self_bleu, zipf_coefficient
from gpt2xl.model import GPT
from gpt2xl.perplexity import score_spans, window_plan
from gpt2xl.sampling import SamplingConfig, check_top_p, generate, make_generator
from gpt2xl.stats import MAX_RESAMPLES, min_resamples
from gpt2xl.validation import check_float, check_int, check_seed


def check_temperature(value: object) -> float:
    """``value`` as a grid temperature: a finite number >= 0 (0 = greedy) that the sampler
    accepts, checked here so that a value the sampler refuses fails before the first cell."""
    temperature = check_float("temperature", value, minimum=0, hint=" (0 means greedy.)")
    SamplingConfig(max_new_tokens=1, temperature=temperature)  # the sampler's own domain, in one place
    return temperature


def check_top_k(value: object) -> int:
    """``value`` as a grid top-k: an integer >= 0 (0 = the whole vocabulary)."""
    return check_int("top-k (0 = the whole vocabulary)", value, minimum=0)


def check_grid_top_p(value: object) -> float:
    """``value`` as a grid top-p: a number in (0, 1] (1 = no nucleus cut)."""
    top_p = check_top_p(value)
    if top_p is None:
        raise ConfigError("top-p must be a number > 0 and <= 1 (1 = no nucleus cut), got None.")
    return top_p


def check_fits_context(*, prompt_tokens: int, max_new_tokens: int, block_size: int) -> None:
    """ConfigError, saying the largest value that fits, when a prompt and its continuation do
    not fit the model's context: the sampler would crop the prompt and generation perplexity
    would be scored in windows, so the cell's numbers would silently mean something else.

    ``block_size + 1`` tokens fit: the last new token is sampled but never fed back (and, when
    scored, it is only a target).
    """
    fits = block_size + 1
    if prompt_tokens + max_new_tokens <= fits:
        return
    if prompt_tokens >= fits:
        fix = f"use --prompt-tokens {fits - 1} or fewer (with --max-new-tokens 1)"
    else:
        fix = f"with --prompt-tokens {prompt_tokens}, use --max-new-tokens {fits - prompt_tokens} or fewer"
    raise ConfigError(
        f"A prompt of {prompt_tokens:,} tokens plus {max_new_tokens:,} new tokens does not fit the model's context "
        f"of {block_size:,} tokens; {fix}."
    )


@dataclass(frozen=True, kw_only=True)
class GridConfig:
    """What one grid run samples. The field defaults are THE default grid (:data:`DEFAULT_GRID`:
    every command and the nox session read it). ``top_ks``: 0 means the whole vocabulary (no top-k); a value
    above the vocabulary is allowed and behaves as the whole vocabulary (the sampler clamps it).
    ``prompt_tokens``: every prompt is exactly this long (a fixed prefix of the dataset's text);
    prompt plus ``max_new_tokens`` must fit the model's context (:func:`check_fits_context`,
    checked by :func:`run_grid` and, before loading, by the CLI). ``top_ps``: 1.0 keeps every
    candidate (no nucleus cut).

    ``bootstrap_seed``, ``n_resamples``, ``weighted_resamples``: the resampler of the intervals and
    neighbour tests (:mod:`gpt2xl.grid_intervals`): its seed, and the replicates per interval or
    test (``weighted_resamples`` for self-BLEU and the Zipf coefficient, which are recomputed in
    Python on every replicate, so they get fewer). ``mauve``: score MAUVE per setting
    (:mod:`gpt2xl.grid_mauve`, its k-means seeded from ``bootstrap_seed``; needs mauve-text).

    ``points``: an explicit list of (temperature, top_k, top_p) settings instead of the product of
    the three axes (a preset such as :mod:`gpt2xl.holtzman` names rows, not a product); the axes
    must then list exactly the values the points use, sorted (:meth:`from_points` builds them).
    ``preset``: the name of the preset the settings come from, recorded for the report."""

    dataset: str
    # 16 prompts x 3 seeds = 48 continuations per setting (one seed of 32 before): the default run
    # stays within minutes on 2 cores with three seeds.
    num_prompts: int = 16
    prompt_tokens: int = 32
    max_new_tokens: int = 64
    # 3 x 3 x 2 settings: the common values of each axis, nucleus sampling among them, within the
    # default run's minutes on 2 cores (a fourth value on any axis would add a third of the grid).
    temperatures: tuple[float, ...] = (0.7, 1.0, 1.3)
    top_ks: tuple[int, ...] = (0, 10, 40)
    top_ps: tuple[float, ...] = (1.0, 0.9)
    seeds: tuple[int, ...] = (0, 1, 2)  # three seeds: a seed's own spread is visible in the report
    batch_size: int = 32
    stop_at_eot: bool = True
    mauve: bool = True
    bootstrap_seed: int = 0
    n_resamples: int = 1000
    weighted_resamples: int = 200
    points: tuple[tuple[float, int, float], ...] | None = None
    preset: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ConfigError(f"dataset must be a non-empty name, got {self.dataset!r}.")
        for name in ("num_prompts", "prompt_tokens", "max_new_tokens", "batch_size"):
            check_int(name, getattr(self, name))
        checks: dict[str, Callable[[object], object]] = {
            "temperatures": check_temperature, "top_ks": check_top_k, "top_ps": check_grid_top_p,
            "seeds": lambda s: check_seed("seed", s),
        }
        for name, check in checks.items():
            value = getattr(self, name)
            if not isinstance(value, tuple) or not value:
                raise ConfigError(f"{name} must be a non-empty tuple, got {value!r}.")
            for item in value:
                check(item)
            if len(set(value)) != len(value):
                raise ConfigError(f"{name} must not repeat a value, got {value!r}.")
        for name in ("stop_at_eot", "mauve"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be a bool, got {getattr(self, name)!r}.")
        check_seed("bootstrap_seed", self.bootstrap_seed)
        for name in ("n_resamples", "weighted_resamples"):
            check_int(name, getattr(self, name), minimum=min_resamples(0.95), maximum=MAX_RESAMPLES)
        if self.points is not None:
            self._check_points(self.points)
        if self.preset is not None and (not isinstance(self.preset, str) or not self.preset):
            raise ConfigError(f"preset must be a non-empty name or None, got {self.preset!r}.")

    def _check_points(self, points: object) -> None:
        if not isinstance(points, tuple) or not points:
            raise ConfigError(f"points must be a non-empty tuple of (temperature, top_k, top_p), got {points!r}.")
        for point in points:
            if not isinstance(point, tuple) or len(point) != 3:
                raise ConfigError(f"A grid point must be (temperature, top_k, top_p), got {point!r}.")
            check_temperature(point[0])
            check_top_k(point[1])
            check_grid_top_p(point[2])
        if len(set(points)) != len(points):
            raise ConfigError(f"points must not repeat a setting, got {points!r}.")
        for axis, name in enumerate(("temperatures", "top_ks", "top_ps")):
            used = tuple(sorted({point[axis] for point in points}))
            if tuple(sorted(getattr(self, name))) != used:
                raise ConfigError(f"{name} must list exactly the values the points use, {used!r}, got "
                                  f"{getattr(self, name)!r}.")

    @classmethod
    def from_points(
        cls, points: tuple[tuple[float, int, float], ...], **kwargs: Any
    ) -> GridConfig:
        """A grid of exactly ``points``, its axes the values they use (``kwargs``: the other fields)."""
        return cls(temperatures=tuple(sorted({p[0] for p in points})), top_ks=tuple(sorted({p[1] for p in points})),
                   top_ps=tuple(sorted({p[2] for p in points})), points=points, **kwargs)

    @property
    def settings(self) -> tuple[tuple[float, int, float], ...]:
        """The (temperature, top_k, top_p) settings sampled: the points, or the product of the axes."""
        if self.points is not None:
            return self.points
        return tuple((t, k, p) for t in self.temperatures for k in self.top_ks for p in self.top_ps)

    @property
    def num_cells(self) -> int:
        return len(self.settings) * len(self.seeds)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        for name in ("temperatures", "top_ks", "top_ps", "seeds"):
            d[name] = list(d[name])
        d["points"] = None if self.points is None else [list(p) for p in self.points]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> GridConfig:
        """Inverse of :meth:`to_dict` (lists back to tuples); unknown keys raise ConfigError."""
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"Unknown grid config keys: {', '.join(sorted(unknown))}.")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        points = d.get("points")
        if isinstance(points, list):
            values["points"] = tuple(tuple(p) if isinstance(p, list) else p for p in points)
        return cls(**values)  # type: ignore[arg-type]


# The default grid of `gpt2xl eval grid`, `gpt2xl eval run` and `nox -s eval` (3 temperatures x 3
# top-ks x 2 top-ps x 3 seeds, 16 prompts of the tiny Shakespeare fixture's eval split).
DEFAULT_GRID = GridConfig(dataset="tinyshakespeare")


@dataclass(frozen=True, kw_only=True)
class Prompt:
    """A prompt cut from the dataset: ``tokens`` start at ``start`` in the split's token ids;
    ``continuation`` is the human text that follows it (may be shorter at the end of the split)."""

    start: int
    tokens: tuple[int, ...]
    continuation: tuple[int, ...]


def grid_prompts(
    token_ids: Sequence[int], *, num_prompts: int, prompt_tokens: int, continuation_tokens: int
) -> list[Prompt]:
    """``num_prompts`` prompts of exactly ``prompt_tokens`` tokens, at EVENLY SPACED starts over
    the split, each followed by its true ``continuation_tokens`` tokens.

    Starts are ``round(i * (N - span) / (num_prompts - 1))`` for span = prompt + continuation, so
    the first prompt starts the split and the last continuation ends it; no randomness is
    involved, so the prompts depend only on the split and the two lengths. Raises ConfigError,
    saying how many fit, when the split holds fewer than ``num_prompts`` spans: the prompts would
    overlap, and the cells would score the same text several times over.
    """
    for name, value in (("num_prompts", num_prompts), ("prompt_tokens", prompt_tokens),
                        ("continuation_tokens", continuation_tokens)):
        check_int(name, value)
    ids = list(token_ids)
    span = prompt_tokens + continuation_tokens
    if len(ids) < span:
        raise ConfigError(
            f"The split has {len(ids):,} tokens, fewer than one prompt plus continuation ({span:,}); "
            "lower --prompt-tokens or --max-new-tokens."
        )
    if num_prompts * span > len(ids):
        raise ConfigError(
            f"{num_prompts:,} prompts of {prompt_tokens:,} tokens plus {continuation_tokens:,} continuation tokens "
            f"need {num_prompts * span:,} tokens but the split holds {len(ids):,}; use --num-prompts "
            f"{len(ids) // span:,} or fewer."
        )
    room = len(ids) - span
    starts = [0] if num_prompts == 1 else [round(i * room / (num_prompts - 1)) for i in range(num_prompts)]
    return [
        Prompt(
            start=s,
            tokens=tuple(ids[s : s + prompt_tokens]),
            continuation=tuple(ids[s + prompt_tokens : s + span]),
        )
        for s in starts
    ]


@dataclass(frozen=True, kw_only=True)
class SampleSet:
    """Continuations of every prompt (one per prompt, in prompt order) and whether each stopped at
    end-of-text."""

    tokens: tuple[tuple[int, ...], ...]
    hit_eot: tuple[bool, ...]


@dataclass(frozen=True, kw_only=True)
class ScoredSample:
    """One continuation with what its cell's metrics need of it: the prompt it continues (index
    into the grid's prompts), the seed of its cell, its tokens, whether it stopped at
    end-of-text, and the NLL (nats) of its ``scored`` tokens under the model."""

    prompt: int
    seed: int
    tokens: tuple[int, ...]
    hit_eot: bool
    nll: float
    scored: int


@dataclass(frozen=True)
class CellMetrics:
    """The metrics of one set of continuations: ``values`` holds exactly the metrics of
    :data:`gpt2xl.metric_table.METRICS`, in the table's order, each checked against its row
    (kind, None only where nullable, finite). Read a metric as ``m["distinct_2"]`` or
    ``m.distinct_2``."""

    values: Mapping[str, float | int | None]

    def __post_init__(self) -> None:
        checked = check_metric_values(self.values, where="CellMetrics")
        object.__setattr__(self, "values", MappingProxyType(checked))  # read-only, like the frozen fields

    def __getitem__(self, name: str) -> float | int | None:
        return self.values[name]

    def __getattr__(self, name: str) -> float | int | None:
        # Called only for names that are not attributes: the metrics, by name.
        values = self.__dict__.get("values")
        if values is None or name not in METRIC_BY_NAME:
            raise AttributeError(f"CellMetrics has no metric {name!r}")
        return values[name]

    def to_dict(self) -> dict[str, float | int | None]:
        return dict(self.values)


@dataclass(frozen=True, kw_only=True)
class CellResult:
    """One grid cell: its sampling settings, seed, metrics, seconds spent, a few examples, and
    its scored samples (the bootstrap's units; not serialised)."""

    temperature: float
    top_k: int
    seed: int
    metrics: CellMetrics
    seconds: float
    examples: tuple[tuple[int, ...], ...] = field(default=())
    top_p: float = 1.0
    samples: tuple[ScoredSample, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict[str, object]:
        return {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "seed": self.seed,
            "seconds": self.seconds,
            "metrics": self.metrics.to_dict(),
            "examples": [list(e) for e in self.examples],
        }


def continuation_nll(
    model: GPT, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], *, batch_size: int
) -> tuple[float, int]:
    """Summed NLL (nats, float64) and count of the tokens of ``continuations[i]`` given
    ``prompts[i]`` under ``model``. Empty continuations contribute nothing. Each prompt is
    left-cropped so that prompt + continuation fit the context (at least one prompt token is
    kept; an empty prompt is replaced by nothing — the continuation's first token is then
    unscored); a continuation longer than the context is scored in sliding windows (stride =
    half the context) and only its own tokens are counted."""
    nlls, _ = _continuation_nlls(model, prompts, continuations, batch_size=batch_size)
    return math.fsum(nll for part in nlls for nll, _ in part), sum(n for part in nlls for _, n in part)


def _continuation_nlls(
    model: GPT, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], *, batch_size: int
) -> tuple[list[list[tuple[float, int]]], int]:
    """Per continuation, the (NLL sum, tokens) of each span it was scored in (see
    :func:`continuation_nll`; none for an empty one), in scoring order, and the span count."""
    if len(prompts) != len(continuations):
        raise ConfigError(f"{len(prompts)} prompts but {len(continuations)} continuations.")
    block = model.config.block_size
    spans: list[tuple[list[int], int]] = []
    owners: list[int] = []
    for owner, (prompt_ids, cont_ids) in enumerate(zip(prompts, continuations, strict=True)):
        cont = list(cont_ids)
        if not cont:
            continue
        prompt = list(prompt_ids)
        full = prompt + cont
        if len(full) <= block + 1:
            first = len(prompt)
            if first == 0:
                if len(cont) < 2:
                    continue
                first = 1
            spans.append((full, first))
            owners.append(owner)
            continue
        # Too long for one pass: slide over the tail that holds the continuation, with at most a
        # context's worth of prompt before it, and count only continuation positions.
        offset = max(0, len(prompt) - block // 2)
        tail = full[offset:]
        first_cont = len(prompt) - offset
        for w in window_plan(len(tail), max_length=block + 1, stride=max(1, block // 2)):
            first = max(w.first_scored, first_cont)
            if first < w.end:
                spans.append((tail[w.begin : w.end], first - w.begin))
                owners.append(owner)
    parts: list[list[tuple[float, int]]] = [[] for _ in continuations]
    if spans:
        for owner, s in zip(owners, score_spans(model, spans, batch_size=batch_size), strict=True):
            parts[owner].append((s.nll_sum, s.num_scored))
    return parts, len(spans)


def score_samples(
    model: GPT, prompts: Sequence[Prompt], samples: SampleSet, *, batch_size: int
) -> CellMetrics:
    """All the metrics of ``samples`` (continuations of ``prompts``, in order): one entry per row
    of :data:`gpt2xl.metric_table.METRICS` (CellMetrics refuses a missing or unknown one)."""
    return cell_metrics(scored_units(model, prompts, samples, batch_size=batch_size, seed=0))


def scored_units(
    model: GPT, prompts: Sequence[Prompt], samples: SampleSet, *, batch_size: int, seed: int, first_prompt: int = 0,
) -> tuple[ScoredSample, ...]:
    """Every sample of ``samples`` (continuations of ``prompts``, in order) with its own NLL under
    ``model``, tagged with ``seed`` and its prompt's index in the grid (``first_prompt`` + its
    position), from one scoring pass."""
    seqs = [tuple(t) for t in samples.tokens]
    parts, _ = _continuation_nlls(model, [p.tokens for p in prompts], seqs, batch_size=batch_size)
    return tuple(
        ScoredSample(prompt=first_prompt + i, seed=seed, tokens=seqs[i], hit_eot=bool(samples.hit_eot[i]),
                     nll=math.fsum(v for v, _ in part), scored=sum(n for _, n in part))
        for i, part in enumerate(parts)
    )


def cell_metrics(units: Sequence[ScoredSample]) -> CellMetrics:
    """The metrics of one cell from its scored samples alone (in prompt order): no model, so the
    driver of a sharded run computes exactly what the single process does. Generation perplexity
    is exp of the fsum of the samples' NLLs over their scored tokens."""
    seqs = [list(u.tokens) for u in units]
    d = {n: distinct_n(seqs, n) for n in (1, 2, 3)}
    # zipf_coefficient refuses fewer than two distinct tokens (no line to fit): n/a then.
    zipf = zipf_coefficient(seqs).coefficient if len({t for s in seqs for t in s}) >= 2 else None
    nll = math.fsum(u.nll for u in units)
    count = sum(u.scored for u in units)
    return CellMetrics({
        "distinct_1": d[1].corpus,
        "distinct_2": d[2].corpus,
        "distinct_3": d[3].corpus,
        "distinct_1_per_sample": d[1].per_sample_mean,
        "distinct_2_per_sample": d[2].per_sample_mean,
        "distinct_3_per_sample": d[3].per_sample_mean,
        "self_bleu_4": self_bleu(seqs, max_n=4),
        "zipf_coefficient": zipf,
        "repetition_rate": repetition_rate(seqs),
        "mean_length_tokens": mean_length(seqs),
        "eot_rate": sum(u.hit_eot for u in units) / len(units) if units else 0.0,
        "generation_perplexity": math.exp(nll / count) if count else None,
        "mauve": None,  # per setting, over all its seeds (gpt2xl.grid_mauve)
        "generated_tokens": sum(len(s) for s in seqs),
        "num_samples": len(seqs),
    })


# --------------------------------------------------------------------------------------------
# shards: the units of work (one process runs them in order; gpt2xl.distributed spreads them)
# --------------------------------------------------------------------------------------------

# Shard seeds beyond the first are drawn from this space (torch generators take 64-bit seeds;
# check_seed's range).
_SHARD_SEED_SPACE = 2**63


def shard_seed(seed: int, index: int) -> int:
    """The generator seed of shard ``index`` of a cell seeded ``seed``: ``seed`` itself for the
    first shard (so a cell that fits one batch samples as ``make_generator(seed)`` always did),
    and a SHA-256 derivation of (seed, index) for the others, so each shard's random stream
    depends only on its own identity, never on which worker or in which order it ran."""
    check_seed("seed", seed)
    check_int("shard index", index, minimum=0)
    if index == 0:
        return seed
    digest = hashlib.sha256(f"gpt2xl-shard/{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % _SHARD_SEED_SPACE


@dataclass(frozen=True, kw_only=True)
class Shard:
    """One unit of grid work: prompts ``[start, stop)`` (at most one batch) of the cell
    (temperature, top_k, top_p, seed), sampled with ``shard_seed(seed, index)``."""

    temperature: float
    top_k: int
    top_p: float
    seed: int
    index: int
    start: int
    stop: int

    def __post_init__(self) -> None:
        check_int("shard index", self.index, minimum=0)
        check_int("shard start", self.start, minimum=0)
        check_int("shard stop", self.stop, minimum=self.start + 1)

    @property
    def cell(self) -> tuple[float, int, float, int]:
        return (self.temperature, self.top_k, self.top_p, self.seed)

    @property
    def key(self) -> str:
        """A file-name-safe name, unique within a grid (``repr`` of floats round-trips)."""
        return f"T{self.temperature!r}_k{self.top_k}_p{self.top_p!r}_s{self.seed}_i{self.index}"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def grid_shards(cfg: GridConfig, num_prompts: int) -> list[Shard]:
    """Every shard of ``cfg`` over ``num_prompts`` prompts: cells in the order of ``cfg.settings``
    (temperatures x top_ks x top_ps, row-major, or the points) x seeds, each cut into batches of
    ``cfg.batch_size`` prompts."""
    check_int("num_prompts", num_prompts)
    return [
        Shard(temperature=float(t), top_k=int(k), top_p=float(p), seed=int(s), index=i, start=start,
              stop=min(start + cfg.batch_size, num_prompts))
        for t, k, p in cfg.settings for s in cfg.seeds
        for i, start in enumerate(range(0, num_prompts, cfg.batch_size))
    ]


@dataclass(frozen=True, kw_only=True)
class ShardResult:
    """A finished shard: its scored samples (prompt indices are the grid's) and seconds spent."""

    shard: Shard
    samples: tuple[ScoredSample, ...]
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return {"shard": self.shard.to_dict(), "seconds": self.seconds,
                "samples": [{**asdict(u), "tokens": list(u.tokens)} for u in self.samples]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShardResult:
        """Inverse of :meth:`to_dict` (a checkpoint read back; a malformed one raises KeyError,
        TypeError or ValueError for the caller to report)."""
        samples = tuple(
            ScoredSample(prompt=int(u["prompt"]), seed=int(u["seed"]), tokens=tuple(int(t) for t in u["tokens"]),
                         hit_eot=bool(u["hit_eot"]), nll=float(u["nll"]), scored=int(u["scored"]))
            for u in d["samples"]
        )
        return cls(shard=Shard(**d["shard"]), samples=samples, seconds=float(d["seconds"]))


def sample_shard(model: GPT, prompts: Sequence[Prompt], shard: Shard, *, cfg: GridConfig) -> SampleSet:
    """Continue ``prompts[shard.start:shard.stop]`` once under the shard's settings, in one batch,
    with a fresh ``make_generator(shard_seed(seed, index))`` on the model's device. top_p 1 is no
    nucleus cut (the sampler's p = 1 is exactly no top-p)."""
    device = model.transformer.wte.weight.device
    sampling = SamplingConfig(
        max_new_tokens=cfg.max_new_tokens, temperature=shard.temperature, top_k=shard.top_k or None,
        top_p=None if shard.top_p == 1.0 else shard.top_p, stop_at_eot=cfg.stop_at_eot,
    )
    generator = make_generator(shard_seed(shard.seed, shard.index), device)
    out = generate(model, [list(p.tokens) for p in prompts[shard.start : shard.stop]], sampling, generator=generator)
    return SampleSet(tokens=tuple(tuple(t) for t in out.tokens), hit_eot=tuple(out.hit_eot))


def run_shard(model: GPT, prompts: Sequence[Prompt], shard: Shard, *, cfg: GridConfig) -> ShardResult:
    """Sample and score one shard: what a worker does, and what the single process does per shard."""
    t0 = time.perf_counter()
    samples = sample_shard(model, prompts, shard, cfg=cfg)
    units = scored_units(model, prompts[shard.start : shard.stop], samples, batch_size=cfg.batch_size,
                         seed=shard.seed, first_prompt=shard.start)
    return ShardResult(shard=shard, samples=units, seconds=time.perf_counter() - t0)


# Runs shards and yields each one's result as it finishes, in any order: in process by default,
# or on Ray actors (gpt2xl.distributed). run_grid orders the results itself.
ShardRunner = Callable[[Sequence[Shard]], Iterable[ShardResult]]


def local_runner(model: GPT, prompts: Sequence[Prompt], cfg: GridConfig) -> ShardRunner:
    """A runner that runs shards one after another in this process."""

    def run(shards: Sequence[Shard]) -> Iterator[ShardResult]:
        for shard in shards:
            yield run_shard(model, prompts, shard, cfg=cfg)

    return run


def human_reference(model: GPT, prompts: Sequence[Prompt], *, batch_size: int) -> CellMetrics:
    """The metrics of the dataset's own continuations of ``prompts`` (the reference point)."""
    return human_units(model, prompts, batch_size=batch_size)[0]


def human_units(
    model: GPT, prompts: Sequence[Prompt], *, batch_size: int
) -> tuple[CellMetrics, tuple[ScoredSample, ...]]:
    """:func:`human_reference` and its scored samples (seed 0: the dataset has one continuation per
    prompt), scored a batch at a time like the shards of a cell."""
    units: list[ScoredSample] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        samples = SampleSet(tokens=tuple(p.continuation for p in batch), hit_eot=tuple(False for _ in batch))
        units.extend(scored_units(model, batch, samples, batch_size=batch_size, seed=0, first_prompt=start))
    return cell_metrics(units), tuple(units)


def assemble_cells(
    shards: Sequence[Shard], results: Iterable[ShardResult], *, num_examples: int = 2
) -> list[CellResult]:
    """The cells of a grid from the results, in any order, of all its ``shards`` (:func:`grid_shards`):
    each cell's samples in prompt order, its metrics by :func:`cell_metrics`, its seconds the sum over its
    shards. Raises ConfigError when a shard is missing, repeated or not one of ``shards``."""
    wanted = {s.key: s for s in shards}
    got: dict[str, ShardResult] = {}
    for r in results:
        if r.shard.key not in wanted or r.shard != wanted[r.shard.key] or r.shard.key in got:
            raise ConfigError(f"Shard result {r.shard.key} is not one of this grid's shards, or came twice.")
        got[r.shard.key] = r
    missing = [k for k in wanted if k not in got]
    if missing:
        raise ConfigError(f"{len(missing)} of {len(wanted)} grid shards have no result (first: {missing[0]}).")
    by_cell: dict[tuple[float, int, float, int], list[ShardResult]] = {}
    for s in shards:
        by_cell.setdefault(s.cell, []).append(got[s.key])
    cells = []
    for (temperature, top_k, top_p, seed), parts in by_cell.items():
        parts.sort(key=lambda r: r.shard.index)
        units = tuple(u for r in parts for u in r.samples)
        cells.append(CellResult(
            temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, metrics=cell_metrics(units),
            seconds=math.fsum(r.seconds for r in parts), examples=tuple(u.tokens for u in units[:num_examples]),
            samples=units,
        ))
    return cells


def run_grid(
    model: GPT,
    prompts: Sequence[Prompt],
    cfg: GridConfig,
    *,
    progress: bool = False,
    num_examples: int = 2,
    runner: ShardRunner | None = None,
    done: Sequence[ShardResult] = (),
    on_shard: Callable[[ShardResult], None] | None = None,
) -> list[CellResult]:
    """Sample and score every (temperature, top_k, top_p, seed) cell of ``cfg`` on ``prompts``.

    The work is cut into shards (:func:`grid_shards`: one batch of prompts of one cell, each with
    its own generator seed, :func:`shard_seed`); ``runner`` runs them (default: in this process,
    in order) and ``done`` holds shards already finished (a resumed run), which are not run
    again. ``on_shard`` is called with each newly finished shard (to checkpoint it). Cells are
    returned in the order temperatures x top_ks x top_ps x seeds (row-major), whatever order the
    shards finished in. ``progress``: a tqdm bar over shards on stderr. ``num_examples``: how
    many continuations per cell to keep as token ids for the report. Deterministic: the same
    model, prompts, config and torch build give identical cells with any runner.
    """
    if not prompts:
        raise ConfigError("run_grid needs at least one prompt.")
    check_fits_context(prompt_tokens=max(len(p.tokens) for p in prompts), max_new_tokens=cfg.max_new_tokens,
                       block_size=model.config.block_size)
    shards = grid_shards(cfg, len(prompts))
    finished = {r.shard.key: r for r in done}
    todo = [s for s in shards if s.key not in finished]
    results = list(finished.values())
    run = runner if runner is not None else local_runner(model, prompts, cfg)
    with tqdm(total=len(shards), initial=len(shards) - len(todo), desc="grid", unit="shard",
              disable=not progress) as bar:
        for result in run(todo):
            results.append(result)
            if on_shard is not None:
                on_shard(result)
            s = result.shard
            bar.set_postfix(T=s.temperature, k=s.top_k, p=s.top_p, seed=s.seed)
            bar.update(1)
    return assemble_cells(shards, results, num_examples=num_examples)
