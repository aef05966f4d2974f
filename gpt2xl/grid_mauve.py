"""MAUVE of each grid setting against the human continuations of the same prompts.

For a setting (temperature, top-k, top-p), P is human text of the dataset and Q is the setting's
non-empty samples over all its seeds; both are embedded by one featurizer
(:func:`gpt2xl.mauve.featurize`) and scored by mauve-text (:func:`gpt2xl.mauve.mauve_score`) with
its defaults. P is as large as Q (:func:`human_reference_texts`: as many texts as prompts x seeds,
each as long as a generation, at evenly spaced offsets of the split), as in Pillutla et al.
(2021), where both sides hold the same number of texts: mauve-text's cluster count follows the
smaller side, so P of only the prompts' own continuations would leave a handful of clusters.

MAUVE is scored per setting, not per seed's cell: one cell holds one sample per prompt, too few
for its k-means histogram. It has no bootstrap interval either: a replicate would refit the
clustering, and with the grid's sample sizes the score's spread across k-means seeds is itself
several hundredths (see :mod:`gpt2xl.mauve`). The sizes (P, Q, clusters), the featurizer and the
k-means seed are recorded with every score, because MAUVE is only comparable within one
featurizer and one pair of sample sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from gpt2xl.grid import CellResult, ScoredSample, grid_prompts
from gpt2xl.mauve import MAUVE_SEED_MAX, features_vary, featurize, mauve_score
from gpt2xl.model import GPT
from gpt2xl.validation import check_int, check_seed

COMPARABLE = ("MAUVE is only comparable within one featurizer and one pair of sample sizes (P human texts, "
              "Q generated texts): the number of k-means clusters follows the smaller set, and the estimate's "
              "bias depends on both.")

SettingKey = tuple[float, int, float]


@dataclass(frozen=True, kw_only=True)
class Featurizer:
    """The model that embeds texts for MAUVE, and the name recorded with the scores."""

    name: str
    model: GPT


@dataclass(frozen=True, kw_only=True)
class SettingMauve:
    """MAUVE of one setting: ``score`` (None with a ``note`` saying why when undefined), Q's size,
    the empty samples left out of Q, and mauve-text's cluster count."""

    temperature: float
    top_k: int
    top_p: float
    score: float | None
    q_samples: int
    left_out_empty: int
    num_clusters: int | None
    note: str | None = None

    @property
    def key(self) -> SettingKey:
        return (self.temperature, self.top_k, self.top_p)

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p, "score": self.score,
                "q_samples": self.q_samples, "left_out_empty": self.left_out_empty,
                "num_clusters": self.num_clusters, "note": self.note}


@dataclass(frozen=True, kw_only=True)
class GridMauve:
    """MAUVE of every setting of a grid, with what makes the scores comparable."""

    featurizer: str
    seed: int
    p_samples: int
    settings: tuple[SettingMauve, ...]

    def score(self, key: SettingKey) -> float | None:
        return next((s.score for s in self.settings if s.key == key), None)

    def to_dict(self) -> dict[str, Any]:
        return {"featurizer": self.featurizer, "seed": self.seed, "p_samples": self.p_samples,
                "comparable": COMPARABLE, "settings": [s.to_dict() for s in self.settings]}


def mauve_seed(bootstrap_seed: int) -> int:
    """The k-means seed of a grid's MAUVE scores: its bootstrap seed, folded into the range
    mauve-text accepts (one recorded seed per grid, not a second option to carry)."""
    return check_seed("bootstrap_seed", bootstrap_seed) % (MAUVE_SEED_MAX + 1)


def human_reference_texts(token_ids: Sequence[int], *, count: int, length: int) -> tuple[tuple[int, ...], ...]:
    """``count`` human texts of ``length`` tokens each, at evenly spaced offsets of ``token_ids``
    (:func:`gpt2xl.grid.grid_prompts`' rule, each after a one-token prompt), or as many as fit
    without overlapping when the split is shorter; deterministic."""
    check_int("count", count)
    check_int("length", length)
    fits = min(count, len(token_ids) // (length + 1))
    if fits < 1:
        return ()
    return tuple(p.continuation for p in grid_prompts(token_ids, num_prompts=fits, prompt_tokens=1,
                                                      continuation_tokens=length))


def grid_mauve(
    featurizer: Featurizer, *, reference: Sequence[Sequence[int]], cells: Sequence[CellResult], seed: int,
    batch_size: int, progress: bool = False,
) -> GridMauve:
    """MAUVE of each setting of ``cells`` (in the order settings first appear) against the human
    ``reference`` texts (P), with k-means seed ``seed`` (see the module docstring). A setting whose
    Q is empty, or whose features do not vary together with P's, gets no score and a note."""
    p_tokens = [tuple(t) for t in reference if len(t)]
    p = featurize(featurizer.model, p_tokens, batch_size=batch_size) if p_tokens else None
    groups: dict[SettingKey, list[ScoredSample]] = {}
    for cell in cells:
        groups.setdefault((cell.temperature, cell.top_k, cell.top_p), []).extend(cell.samples)
    settings = []
    for key, samples in tqdm(groups.items(), desc="MAUVE", unit="setting", disable=not progress, leave=False):
        q_tokens = [u.tokens for u in samples if u.tokens]

        def entry(score: float | None, clusters: int | None, note: str | None, *, key: SettingKey = key,
                  count: int = len(samples), q_count: int = len(q_tokens)) -> SettingMauve:
            return SettingMauve(temperature=key[0], top_k=key[1], top_p=key[2], score=score, q_samples=q_count,
                                left_out_empty=count - q_count, num_clusters=clusters, note=note)

        if p is None or not q_tokens:
            settings.append(entry(None, None, f"no non-empty {'human text' if p is None else 'sample'}"))
            continue
        q = featurize(featurizer.model, q_tokens, batch_size=batch_size)
        if not features_vary(p, q):
            settings.append(entry(None, None, "all features point the same way: MAUVE is undefined"))
            continue
        result = mauve_score(p, q, seed=seed, featurizer=featurizer.name)
        settings.append(entry(result.score, result.num_clusters, None))
    return GridMauve(featurizer=featurizer.name, seed=seed, p_samples=len(p_tokens), settings=tuple(settings))
