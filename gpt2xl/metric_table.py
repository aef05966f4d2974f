"""The one table of the sampling grid's metrics, and of the settings that name a cell.

Every consumer reads :data:`METRICS`: the cell dataclass (:class:`gpt2xl.grid.CellMetrics`
validates and serialises exactly these names), ``eval.json``'s schema check
(:data:`gpt2xl.evaluation.EVAL_SCHEMA`), the CSV columns (:func:`gpt2xl.evaluation.grid_csv`), the
Markdown report table and its definitions, the console table of the eval commands, and the
heatmaps (one per metric with ``shown``). Adding a metric is one row here plus its computation
in :func:`gpt2xl.grid.score_samples`.

Intervals: a row of the grid (a seed's cell, a setting's row over its seeds, the human reference)
may carry ``intervals`` = ``{metric name: {"low": x, "high": y}}``; every consumer shows the
interval beside the value where one is present (:func:`format_value`), and shows the value alone
where not.

:data:`SETTINGS` does the same for the sampling settings that identify a cell (temperature,
top-k, top-p): column titles, console labels and how a value prints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

from gpt2xl.metrics import (
    REPETITION_MAX_PHRASE_LEN,
    REPETITION_MIN_PHRASE_LEN,
    REPETITION_SHORT_PHRASE_MAX_COUNT,
    ZIPF_MAX_RANKS,
)


@dataclass(frozen=True, kw_only=True)
class Metric:
    """One metric of a grid cell.

    ``title``: plot titles and report column headers; ``label``: the console table's column
    header (8 characters at most); ``definition``: one sentence saying what the code computes;
    ``higher_is_better``: True, False, or None where neither direction is better (a value is
    judged against the human reference row); ``fmt``: the format spec of a value (``format(v,
    fmt)``); ``kind``: ``int`` or ``float``; ``nullable``: the value may be None (nothing to
    measure, e.g. no token generated); ``shown``: in the report table, the console table and a
    heatmap (otherwise only in eval.json and the CSV); ``log_scale``: heatmap colours on log10;
    ``per_setting``: scored once per setting over all its seeds' samples (a seed's cell and the
    human reference hold None), with no bootstrap interval or neighbour test.
    """

    name: str
    title: str
    label: str
    definition: str
    higher_is_better: bool | None
    fmt: str
    kind: type = float
    nullable: bool = False
    shown: bool = True
    log_scale: bool = False
    per_setting: bool = False

    def __post_init__(self) -> None:
        # A malformed row is a bug in this file: ValueError, with a traceback, at import.
        if not self.name.isidentifier():
            raise ValueError(f"A metric name must be an identifier, got {self.name!r}.")
        if len(self.label) > 8:
            raise ValueError(f"Metric {self.name}'s console label {self.label!r} is longer than 8 characters.")
        if self.kind not in (int, float):
            raise ValueError(f"Metric {self.name}'s kind must be int or float, got {self.kind!r}.")
        if not self.definition.endswith("."):
            raise ValueError(f"Metric {self.name}'s definition must be one full sentence ending with a full stop.")
        format(1, self.fmt)  # a bad format spec fails here, at import, not in a report
        if self.per_setting and not self.nullable:
            raise ValueError(f"Metric {self.name} is scored per setting, so its cells hold None: make it nullable.")

    @property
    def direction(self) -> str:
        """``higher is better``, ``lower is better`` or ``no better direction`` (for legends)."""
        if self.higher_is_better is None:
            return "no better direction"
        return "higher is better" if self.higher_is_better else "lower is better"

    def check(self, value: object, *, where: str) -> float | int | None:
        """``value`` when it is of this metric's kind (None only where ``nullable``; a float
        metric also takes an int), else TypeError naming ``where`` and the metric: the values come
        from the code (:func:`gpt2xl.grid.score_samples`), so a wrong one is a bug, not a user error
        (a result file read back is checked by eval.json's schema instead)."""
        if value is None and self.nullable:
            return None
        wanted: tuple[type, ...] = (int,) if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, wanted):
            raise TypeError(f"{where}: metric {self.name} must be {self.kind.__name__}, got {value!r}.")
        number = cast("float | int", value)
        if not math.isfinite(number):
            raise TypeError(f"{where}: metric {self.name} must be finite, got {value!r}.")
        return number


def _distinct(n: int, *, per_sample: bool) -> Metric:
    what = {1: "unigrams", 2: "bigrams", 3: "trigrams"}[n]
    if per_sample:
        return Metric(
            name=f"distinct_{n}_per_sample", title=f"distinct-{n} per sample", label=f"d{n}/samp",
            definition=(f"The mean, over samples with at least one n-gram, of each sample's unique {what} / its "
                        f"{what}."),
            higher_is_better=True, fmt=".3f", shown=False,
        )
    return Metric(
        name=f"distinct_{n}", title=f"distinct-{n}", label=f"dist-{n}",
        definition=(f"Unique {what} / all {what} over the cell's samples together (corpus-level: a {what[:-1]} "
                    "repeated in two samples counts once)."),
        higher_is_better=True, fmt=".3f",
    )


METRICS: tuple[Metric, ...] = (
    _distinct(1, per_sample=False),
    _distinct(2, per_sample=False),
    _distinct(3, per_sample=False),
    _distinct(1, per_sample=True),
    _distinct(2, per_sample=True),
    _distinct(3, per_sample=True),
    Metric(
        name="self_bleu_4", title="self-BLEU-4", label="sBLEU4",
        definition=("The mean, over the non-empty samples, of each one's BLEU-4 against all the others as "
                    "references (NLTK method-1 smoothing); lower means the samples differ more from each other."),
        higher_is_better=False, fmt=".3f",
    ),
    Metric(
        name="zipf_coefficient", title="Zipf coefficient", label="zipf",
        definition=("Minus the slope of the least-squares line through (log rank, log count) of the cell's "
                    f"{ZIPF_MAX_RANKS} most frequent token ids, counted over all its samples (Holtzman et al.'s "
                    "script); higher = steeper, a few tokens used most (n/a with fewer than two distinct tokens)."),
        higher_is_better=None, fmt=".3f", nullable=True,
    ),
    Metric(
        name="repetition_rate", title="repetition rate", label="rep",
        # The numbers are gpt2xl.metrics.is_repetitive's own constants, so the sentence cannot drift from the code.
        definition=("The fraction of samples that end in a loop by the rule of Holtzman et al.'s script: of the "
                    f"phrases of 1 to {REPETITION_MAX_PHRASE_LEN} tokens repeated back to back at the very end, the "
                    "one repeated most often (the shortest on a tie) repeats at least twice and is at least "
                    f"{REPETITION_MIN_PHRASE_LEN} tokens long, or repeats more than "
                    f"{REPETITION_SHORT_PHRASE_MAX_COUNT} times (a trailing end-of-text is dropped first)."),
        higher_is_better=False, fmt=".3f",
    ),
    Metric(
        name="mean_length_tokens", title="mean length", label="len",
        definition="Generated tokens per sample, the end-of-text token excluded.",
        higher_is_better=None, fmt=".1f",
    ),
    Metric(
        name="eot_rate", title="end-of-text rate", label="eot",
        definition="The fraction of samples that stopped at <|endoftext|> (0 for the human reference by construction).",
        higher_is_better=None, fmt=".2f",
    ),
    Metric(
        name="generation_perplexity", title="generation perplexity", label="gen-ppl",
        definition=("exp(NLL summed over all the cell's generated tokens / their number) under the evaluated model, "
                    "each token conditioned on its prompt and the tokens before it (n/a when nothing was generated)."),
        higher_is_better=None, fmt=".2f", nullable=True, log_scale=True,
    ),
    Metric(
        name="mauve", title="MAUVE", label="mauve",
        definition=("MAUVE (Pillutla et al. 2021, mauve-text with its defaults) between human texts of the dataset "
                    "(as many as the setting has samples, each as long as a generation) and the setting's non-empty "
                    "samples over all its seeds, both embedded by the featurizer named in the report; comparable "
                    "only within one featurizer and one pair of sample sizes, scored per setting (n/a for a seed's "
                    "cell and the human row)."),
        higher_is_better=True, fmt=".3f", nullable=True, per_setting=True,
    ),
    Metric(
        name="generated_tokens", title="generated tokens", label="tokens",
        definition="Tokens generated over all the cell's samples, the end-of-text token excluded.",
        higher_is_better=None, fmt="d", kind=int, shown=False,
    ),
    Metric(
        name="num_samples", title="samples", label="samples",
        definition="Continuations scored in the cell: one per prompt.",
        higher_is_better=None, fmt="d", kind=int, shown=False,
    ),
)

METRIC_BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}
SHOWN_METRICS: tuple[Metric, ...] = tuple(m for m in METRICS if m.shown)
# The shown metrics of each sample set (cell, setting, human reference): those with intervals and tests.
INTERVAL_METRICS: tuple[Metric, ...] = tuple(m for m in SHOWN_METRICS if not m.per_setting)


def check_metric_values(values: Mapping[str, object], *, where: str) -> dict[str, float | int | None]:
    """``values`` in table order, checked: exactly the table's names, each of its metric's kind;
    TypeError naming ``where``, the metric and what is wrong (see :meth:`Metric.check`)."""
    missing = [m.name for m in METRICS if m.name not in values]
    unknown = sorted(set(values) - set(METRIC_BY_NAME))
    if missing or unknown:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(unknown)}"] if unknown else [])
        raise TypeError(f"{where}: the metrics must be those of gpt2xl.metric_table.METRICS ({'; '.join(parts)}).")
    return {m.name: m.check(values[m.name], where=where) for m in METRICS}


def format_value(metric: Metric, value: float | None, interval: Mapping[str, float] | None = None) -> str:
    """``value`` in the metric's format ("n/a" for None or NaN), followed by ``[low, high]`` when an
    interval is given. An int metric averaged over seeds prints with one decimal."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    fmt = ".1f" if metric.kind is int and isinstance(value, float) and not value.is_integer() else metric.fmt
    text = format(int(value) if fmt == "d" else value, fmt)
    if interval is not None:
        low, high = (format(interval[k], ".1f" if fmt == "d" else fmt) for k in ("low", "high"))
        text += f" [{low}, {high}]"
    return text


@dataclass(frozen=True, kw_only=True)
class Setting:
    """A sampling setting that identifies a grid cell: ``name`` (its key in eval.json and the
    CSV), ``title`` (report columns and plot axes), ``label`` (console column), ``definition``,
    ``kind`` and ``zero`` (how the value 0 prints, when it has a meaning of its own); ``default``:
    the value of a row written before the setting existed (None: every row has it)."""

    name: str
    title: str
    label: str
    definition: str
    kind: type
    zero: str | None = None
    default: float | None = None

    def of(self, row: Mapping[str, object]) -> float:
        """This setting's value in ``row`` (a cell or summary row), ``default`` where the row
        predates the setting."""
        value = row.get(self.name, self.default)
        if value is None:
            raise KeyError(f"the row has no {self.name}")
        return cast(float, value)

    def format(self, value: float) -> str:
        if value == 0 and self.zero is not None:
            return self.zero
        return f"{value:g}"


SETTINGS: tuple[Setting, ...] = (
    Setting(name="temperature", title="T", label="T", kind=float,
            definition="Softmax temperature; 0 is greedy decoding."),
    Setting(name="top_k", title="top-k", label="k", kind=int, zero="all",
            definition="Sample among the k most likely tokens; all = the whole vocabulary."),
    Setting(name="top_p", title="top-p", label="p", kind=float, default=1.0,
            definition=("Nucleus sampling: sample among the fewest most likely tokens whose probability reaches p "
                        "(after temperature and top-k); 1 = no nucleus cut.")),
)
SETTING_NAMES: tuple[str, ...] = tuple(s.name for s in SETTINGS)
