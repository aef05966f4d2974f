"""The quality cost of precision: each dtype against fp32 on the same prompts and seeds.

``gpt2xl eval run --dtypes fp32,bf16,fp16`` loads the evaluated model once per dtype (the run's
own model is reused for its dtype) and measures, in each, on exactly what fp32 sees:

- **Perplexity**: sliding-window token perplexity, ``exp(NLL sum / tokens scored)`` (the
  definition of :mod:`gpt2xl.perplexity`), over the first ``ppl_max_tokens`` tokens of the grid
  dataset's eval split, with the same windows (context, stride) in every dtype. The delta is
  ``perplexity(dtype) − perplexity(fp32)``. The run caps these tokens at
  :data:`PPL_MAX_TOKENS` (or at ``--ppl-max-tokens`` when that is lower): both dtypes score the
  same tokens, so the difference needs far fewer tokens than a published perplexity.
- **Greedy agreement**: the greedy continuation (temperature 0, the grid's ``max_new_tokens``
  and end-of-text rule) of every grid prompt in fp32 and in the dtype. A continuation is its
  tokens followed by <|endoftext|> when it stopped there. ``identical``: the prompts whose two
  continuations are equal, token for token (their fraction: ``identical_fraction``). The
  *first divergence* of a prompt whose continuations differ is the number of leading tokens
  they share, i.e. the 0-based index of the first generated token that differs (a continuation
  that stopped at end-of-text differs there from one that goes on);
  ``mean_first_divergence`` is its mean over the prompts that diverge, divided by
  ``max_new_tokens`` (0 = at the first token; None when no prompt diverges). Per prompt, the
  divergence index (None where identical) is kept in ``first_divergence``.
- **Metric deltas**: every metric of :data:`gpt2xl.metric_table.INTERVAL_METRICS` at one
  sampling setting (default pure sampling: T = 1, top-k off, top-p 1), each dtype sampling the
  grid's prompts with the grid's seeds exactly as a grid cell does (:func:`gpt2xl.grid.run_grid`:
  the same shards and shard seeds, so fp32's samples are the grid's own at that setting) and
  scoring its samples under its own model (generation perplexity is then what a grid run in that
  dtype reports). The value of each dtype is the setting's value over all seeds
  (:mod:`gpt2xl.grid_intervals`); the delta ``dtype − fp32`` gets the paired cluster bootstrap
  of the grid's neighbour tests (:func:`gpt2xl.stats.paired_bootstrap`: prompts resampled with
  all their seeds, one draw applied to both dtypes; the grid's resampler seed and counts), with
  its 95 % interval, two-sided p-value and ``significant`` = p < 0.05, one comparison at a time.

NaN or inf in a dtype (fp16's range is 65,504) stops the comparison with a
:class:`~gpt2xl.errors.NumericalError` naming the dtype and how to leave it out.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from gpt2xl.config import EOT_TOKEN_ID
from gpt2xl.dtypes import DTYPES, check_dtype_name
from gpt2xl.errors import ConfigError, DeviceError, NumericalError
from gpt2xl.grid import (
    GridConfig,
    Prompt,
    ScoredSample,
    Shard,
    ShardResult,
    ShardRunner,
    check_grid_top_p,
    check_temperature,
    check_top_k,
    local_runner,
    run_grid,
)

# The grid's own resampler rules and units (its neighbour tests pair (prompt, seed) units and
# resample prompts), so a precision delta is tested exactly as a neighbour difference is.
from gpt2xl.grid_intervals import CONFIDENCE, SIGNIFICANCE_TEST, prompt_cluster, resamples_for, statistics, unit_key
from gpt2xl.metric_table import INTERVAL_METRICS
from gpt2xl.model import GPT
from gpt2xl.perplexity import score_spans, window_plan
from gpt2xl.sampling import SamplingConfig, generate
from gpt2xl.stats import paired_bootstrap
from gpt2xl.validation import check_int

REFERENCE = "fp32"
DEFAULT_DTYPES: tuple[str, ...] = ("fp32", "bf16", "fp16")  # `gpt2xl eval run --dtypes` on CUDA
# On CPU fp16 is emulated (about 3x slower than fp32 here, measured) and no CPU user runs it for speed, so the
# CPU default compares bf16 only: that keeps the default `nox -s eval` within its minutes.
DEFAULT_CPU_DTYPES: tuple[str, ...] = ("fp32", "bf16")


def default_dtypes(device: str) -> tuple[str, ...]:
    """The dtypes `gpt2xl eval run` compares when ``--dtypes`` is not given: every dtype on CUDA,
    fp32 and bf16 elsewhere."""
    return DEFAULT_DTYPES if device.startswith("cuda") else DEFAULT_CPU_DTYPES
# Tokens of the perplexity text scored in every dtype: 16 windows of the tiny model's 128, 2 of
# GPT-2's 1,024. Both sides score the same tokens, so the delta needs far fewer than a
# published perplexity, and fp16 runs emulated (several times slower) on most CPUs.
PPL_MAX_TOKENS = 2048


def check_dtypes(dtypes: object, *, option: str = "--dtypes") -> tuple[str, ...]:
    """``dtypes`` when it is a non-empty tuple of known dtype names, none repeated, with fp32
    (the reference) among them; ConfigError naming ``option`` otherwise."""
    if not isinstance(dtypes, tuple) or not dtypes:
        raise ConfigError(f"{option} must list at least one dtype, got {dtypes!r}; e.g. {','.join(DEFAULT_DTYPES)}.")
    for name in dtypes:
        if not isinstance(name, str):
            raise ConfigError(f"{option} must list dtype names, got {name!r}.")
        try:
            check_dtype_name(name)
        except ConfigError as exc:
            raise ConfigError(f"{option}: {exc}") from exc
    repeated = next((name for i, name in enumerate(dtypes) if name in dtypes[:i]), None)
    if repeated is not None:
        raise ConfigError(f"{option} lists {repeated!r} twice; name each dtype once.")
    if REFERENCE not in dtypes:
        raise ConfigError(
            f"{option} must include {REFERENCE}, the reference every other dtype is compared with; "
            f"use {option} {','.join((REFERENCE, *dtypes))}."
        )
    return dtypes


def check_dtypes_supported(dtypes: Sequence[str], *, device: str, option: str = "--dtypes") -> None:
    """ConfigError naming the first of ``dtypes`` that ``device`` cannot run (the probe of
    :func:`gpt2xl.devices.check_dtype_supported`), before any model is loaded."""
    from gpt2xl.devices import check_dtype_supported, resolve_device, resolve_dtype

    where = resolve_device(device)
    for name in dtypes:
        try:
            check_dtype_supported(where, resolve_dtype(name))
        except DeviceError as exc:
            raise ConfigError(
                f"{option} lists {name}, which {where} cannot run here; drop {name} from {option} (the device check "
                f"said: {str(exc).rstrip('.')})."
            ) from exc


@dataclass(frozen=True, kw_only=True)
class PrecisionConfig:
    """What one precision comparison measures (see the module docstring).

    ``dtypes``: the dtypes measured, fp32 (the reference) among them; a config of fp32 alone
    compares nothing. ``grid``: the prompts' definition (dataset, number, length), the seeds,
    ``max_new_tokens``, ``batch_size``, the end-of-text rule and the resampler (seed, counts) of
    the run's grid. ``temperature``, ``top_k`` (0 = the whole vocabulary) and ``top_p`` (1 = no
    cut): the setting the metric deltas are measured at. ``ppl_max_tokens``: the perplexity
    text is cut to this many tokens; ``stride`` (None = the model's context) and
    ``ppl_batch_size``: its windows."""

    dtypes: tuple[str, ...]
    grid: GridConfig
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    ppl_max_tokens: int = PPL_MAX_TOKENS
    stride: int | None = None
    ppl_batch_size: int = 16

    def __post_init__(self) -> None:
        check_dtypes(self.dtypes, option="dtypes")
        if not isinstance(self.grid, GridConfig):
            raise ConfigError(f"grid must be a GridConfig, got {type(self.grid).__name__}.")
        check_temperature(self.temperature)
        check_top_k(self.top_k)
        check_grid_top_p(self.top_p)
        check_int("ppl_max_tokens", self.ppl_max_tokens, minimum=2)  # one token has nothing before it
        if self.stride is not None:
            check_int("stride", self.stride)
        check_int("ppl_batch_size", self.ppl_batch_size)

    @property
    def compared(self) -> tuple[str, ...]:
        """The dtypes compared with fp32, in the order given."""
        return tuple(d for d in self.dtypes if d != REFERENCE)

    @property
    def cell_grid(self) -> GridConfig:
        """The grid of the one setting the metric deltas are measured at (no MAUVE)."""
        return dataclasses.replace(self.grid, temperatures=(self.temperature,), top_ks=(self.top_k,),
                                   top_ps=(self.top_p,), mauve=False)

    def setting(self) -> dict[str, float | int]:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}

    def to_dict(self) -> dict[str, Any]:
        """Everything that decides the numbers: a stored entry is reused (``--resume``) only
        when this matches (and the data and weights do)."""
        return {"dtypes": list(self.dtypes), "reference": REFERENCE, "setting": self.setting(),
                "grid": self.grid.to_dict(), "ppl_max_tokens": self.ppl_max_tokens, "stride": self.stride,
                "ppl_batch_size": self.ppl_batch_size}


def extra_weight_bytes(num_parameters: int, *, dtypes: Sequence[str], loaded: str) -> int:
    """The most weight bytes a comparison holds beside the run's own model (in dtype ``loaded``):
    fp32 when the run is not in fp32 (kept throughout), plus the largest other dtype loaded, one
    at a time."""
    reference = 0 if loaded == REFERENCE else num_parameters * DTYPES[REFERENCE].bytes
    others = [num_parameters * DTYPES[d].bytes for d in dtypes if d not in (REFERENCE, loaded)]
    return reference + max(others, default=0)


# --------------------------------------------------------------------------------------------
# one dtype's measurements
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Continuation:
    """A greedy continuation: its tokens (end-of-text excluded) and whether it stopped there."""

    tokens: tuple[int, ...]
    hit_eot: bool

    @property
    def sequence(self) -> tuple[int, ...]:
        """The tokens the model produced: the end-of-text token included where it stopped there."""
        return (*self.tokens, EOT_TOKEN_ID) if self.hit_eot else self.tokens


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """One model's measurements: ``nll_sum`` (nats) over ``tokens_scored`` tokens of the
    perplexity text, the greedy continuation of every prompt, and the scored samples of the
    setting's cell over every seed (the bootstrap's units)."""

    dtype: str
    nll_sum: float
    tokens_scored: int
    greedy: tuple[Continuation, ...]
    units: tuple[ScoredSample, ...]
    seconds: float

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_sum / self.tokens_scored)


def _model_dtype(model: GPT) -> str:
    from gpt2xl.devices import dtype_name

    return dtype_name(model.transformer.wte.weight.dtype)


def _nll(model: GPT, token_ids: Sequence[int], *, stride: int | None, batch_size: int) -> tuple[float, int]:
    """Sliding-window NLL sum and tokens scored (the windows of
    :func:`gpt2xl.perplexity.sliding_window_nll`); NumericalError when it is not finite."""
    block = model.config.block_size
    ids = list(token_ids)
    plan = window_plan(len(ids), max_length=block, stride=stride or block)
    scored = score_spans(model, [(ids[w.begin : w.end], w.first_scored - w.begin) for w in plan],
                         batch_size=batch_size)
    nll_sum = math.fsum(s.nll_sum for s in scored)
    if not math.isfinite(nll_sum):
        raise NumericalError(
            f"the {_model_dtype(model)} perplexity of {len(ids):,} tokens is {nll_sum} (its logits hold NaN or inf)"
        )
    return nll_sum, sum(s.num_scored for s in scored)


def _greedy(model: GPT, prompts: Sequence[Prompt], grid: GridConfig) -> tuple[Continuation, ...]:
    sampling = SamplingConfig(max_new_tokens=grid.max_new_tokens, temperature=0.0, stop_at_eot=grid.stop_at_eot)
    out: list[Continuation] = []
    for start in range(0, len(prompts), grid.batch_size):
        batch = [list(p.tokens) for p in prompts[start : start + grid.batch_size]]
        result = generate(model, batch, sampling)  # non-finite logits: NumericalError (checked every step)
        out += [Continuation(tokens=tuple(t), hit_eot=h) for t, h in zip(result.tokens, result.hit_eot, strict=True)]
    return tuple(out)


def _finite_runner(model: GPT, prompts: Sequence[Prompt], grid: GridConfig) -> ShardRunner:
    """The grid's in-process runner, refusing a sample whose NLL is not finite (the scoring
    forward overflowed): the cell's metrics would otherwise fail their own finiteness check."""
    run = local_runner(model, prompts, grid)

    def checked(shards: Sequence[Shard]) -> Iterator[ShardResult]:
        for result in run(shards):
            bad = next((u for u in result.samples if not math.isfinite(u.nll)), None)
            if bad is not None:
                raise NumericalError(
                    f"the {_model_dtype(model)} NLL of the sample of prompt {bad.prompt} (seed {bad.seed}) is {bad.nll}"
                )
            yield result

    return checked


def measure(model: GPT, prompts: Sequence[Prompt], ppl_tokens: Sequence[int], config: PrecisionConfig) -> Measurement:
    """Perplexity of ``ppl_tokens`` (cut to ``config.ppl_max_tokens``), the greedy continuations
    of ``prompts``, and the samples of the setting's cell over the grid's seeds, all under
    ``model`` (see the module docstring). NumericalError when the model produces NaN or inf."""
    if not prompts:
        raise ConfigError("A precision comparison needs at least one prompt.")
    t0 = time.perf_counter()
    nll_sum, scored = _nll(model, list(ppl_tokens)[: config.ppl_max_tokens], stride=config.stride,
                           batch_size=config.ppl_batch_size)
    if scored == 0:
        raise ConfigError("The perplexity text of the precision comparison holds fewer than 2 tokens.")
    greedy = _greedy(model, prompts, config.grid)
    cell = config.cell_grid
    cells = run_grid(model, prompts, cell, runner=_finite_runner(model, prompts, cell), num_examples=0)
    return Measurement(dtype=_model_dtype(model), nll_sum=nll_sum, tokens_scored=scored, greedy=greedy,
                       units=tuple(u for c in cells for u in c.samples), seconds=time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------
# one dtype against fp32
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class GreedyAgreement:
    """See the module docstring: ``first_divergence[i]`` is None where prompt i's continuations
    are identical, else the index of their first differing token."""

    prompts: int
    identical: int
    first_divergence: tuple[int | None, ...]
    max_new_tokens: int

    @property
    def identical_fraction(self) -> float:
        return self.identical / self.prompts

    @property
    def mean_first_divergence(self) -> float | None:
        """The mean first divergence of the prompts that diverge, as a fraction of
        ``max_new_tokens``; None when none diverges."""
        found = [d for d in self.first_divergence if d is not None]
        return math.fsum(found) / len(found) / self.max_new_tokens if found else None

    def to_dict(self) -> dict[str, Any]:
        return {"prompts": self.prompts, "identical": self.identical, "identical_fraction": self.identical_fraction,
                "mean_first_divergence": self.mean_first_divergence, "first_divergence": list(self.first_divergence),
                "max_new_tokens": self.max_new_tokens}


def greedy_agreement(
    reference: Sequence[Continuation], other: Sequence[Continuation], *, max_new_tokens: int
) -> GreedyAgreement:
    """How far the greedy continuations ``other`` follow ``reference`` (the same prompts, in order)."""
    check_int("max_new_tokens", max_new_tokens)
    if len(reference) != len(other) or not reference:
        raise ConfigError(f"Greedy agreement needs continuations of the same prompts, got {len(reference)} "
                          f"and {len(other)}.")
    divergence: list[int | None] = []
    for a, b in zip(reference, other, strict=True):
        x, y = a.sequence, b.sequence
        if x == y:
            divergence.append(None)
            continue
        shared = next((i for i, (s, t) in enumerate(zip(x, y, strict=False)) if s != t), min(len(x), len(y)))
        divergence.append(shared)
    return GreedyAgreement(prompts=len(reference), identical=divergence.count(None),
                           first_divergence=tuple(divergence), max_new_tokens=max_new_tokens)


def _metric_values(units: Sequence[ScoredSample]) -> dict[str, float | None]:
    """Each interval metric of the setting over all its seeds (None where it is not finite, e.g.
    the generation perplexity of nothing generated)."""
    stats = statistics()
    values: dict[str, float | None] = {}
    for m in INTERVAL_METRICS:
        value = float(stats[m.name](units))
        values[m.name] = value if math.isfinite(value) else None
    return values


def compare(reference: Measurement, other: Measurement, config: PrecisionConfig) -> dict[str, Any]:
    """The entry of ``other`` against ``reference`` (fp32): perplexity and its delta, greedy
    agreement, each interval metric's value and its paired-bootstrap delta (a metric whose
    statistic is not finite on a replicate gets no delta, and a note says why)."""
    if reference.tokens_scored != other.tokens_scored:
        raise ValueError("the two measurements scored different perplexity texts")  # a caller's bug
    stats = statistics()
    grid = config.grid
    deltas: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for m in INTERVAL_METRICS:
        try:
            test = paired_bootstrap(reference.units, other.units, stats[m.name], key=unit_key, cluster=prompt_cluster,
                                    n_resamples=resamples_for(m.name, grid), seed=grid.bootstrap_seed,
                                    confidence=CONFIDENCE)
        except NumericalError as exc:
            notes.append(f"no delta for {m.name}: {exc}")
            continue
        d = test.difference
        deltas[m.name] = {"difference": d.estimate, "low": d.low, "high": d.high, "p_value": test.p_value,
                          "significant": test.significant, "method": d.method, "n_resamples": d.n_resamples}
    agreement = greedy_agreement(reference.greedy, other.greedy, max_new_tokens=grid.max_new_tokens)
    return {
        **_row(other),
        "perplexity_delta": other.perplexity - reference.perplexity,
        "greedy": agreement.to_dict(),
        "deltas": deltas,
        "notes": notes,
    }


def _row(measured: Measurement) -> dict[str, Any]:
    return {"dtype": measured.dtype, "perplexity": measured.perplexity, "nll_sum": measured.nll_sum,
            "tokens_scored": measured.tokens_scored, "metrics": _metric_values(measured.units),
            "seconds": measured.seconds}


# --------------------------------------------------------------------------------------------
# the pipeline
# --------------------------------------------------------------------------------------------

# (dtype name) -> the evaluated model in that dtype, freshly loaded.
Loader = Callable[[str], GPT]


def compare_precision(
    config: PrecisionConfig,
    *,
    models: Mapping[str, GPT],
    load: Loader,
    prompts: Sequence[Prompt],
    ppl_tokens: Sequence[int],
    progress: bool = False,
    on_dtype: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Every dtype of ``config`` against fp32 on ``prompts`` and ``ppl_tokens`` (see the module
    docstring), as eval.json's ``precision`` entry. ``models``: models already loaded, by dtype
    name (the run's own); any other dtype is loaded with ``load`` once, measured, and released
    before the next (fp32 first, kept throughout). ``on_dtype`` gets each dtype's row as soon
    as it exists. NumericalError, naming the dtype and how to leave it out, when a dtype
    produces NaN or inf."""
    for name, model in models.items():
        if _model_dtype(model) != name:
            raise ValueError(f"the model given as {name} is in {_model_dtype(model)}")  # a caller's bug
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(config.dtypes), desc="precision", unit="dtype", disable=not progress)
    reference_model = models[REFERENCE] if REFERENCE in models else load(REFERENCE)
    reference = measure(reference_model, prompts, ppl_tokens, config)
    rows.append({**_row(reference), "perplexity_delta": None, "greedy": None, "deltas": None, "notes": []})
    if on_dtype is not None:
        on_dtype(rows[-1])
    bar.update(1)
    for name in config.compared:
        model = models[name] if name in models else load(name)
        try:
            measured = measure(model, prompts, ppl_tokens, config)
        except NumericalError as exc:
            raise NumericalError(
                f"The {name} model of the precision comparison produced NaN or inf: {str(exc).rstrip('.')}; "
                f"drop {name} from --dtypes to compare the others."
            ) from exc
        finally:
            del model  # released before the next dtype is loaded (unless the caller holds it)
        rows.append(compare(reference, measured, config))
        if on_dtype is not None:
            on_dtype(rows[-1])
        bar.update(1)
    bar.close()
    block = reference_model.config.block_size
    return {
        "config": config.to_dict(),
        "reference": REFERENCE,
        "setting": config.setting(),
        "perplexity_text": {"dataset": config.grid.dataset, "tokens": min(len(ppl_tokens), config.ppl_max_tokens),
                            "context_length": block, "stride": config.stride or block},
        "test": SIGNIFICANCE_TEST,
        "level": round(1 - CONFIDENCE, 12),
        "greedy_definition": ("identical = every generated token equal (end-of-text included); first divergence = "
                              "index of the first differing token, averaged over the prompts that diverge, as a "
                              "fraction of max_new_tokens"),
        "dtypes": rows,
        "seconds": time.perf_counter() - t0,
    }
