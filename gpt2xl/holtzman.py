"""The ``holtzman`` grid preset: the sampling rows of Table 1 of Holtzman et al. (2020), with the
published values beside which the report puts ours.

Holtzman, Buys, Du, Forbes, Choi, "The Curious Case of Neural Text Degeneration", ICLR 2020
(arXiv:1904.09751), Table 1: GPT-2 Large, 5,000 continuations of up to 200 tokens of WebText
prompts per method. The rows kept are those our sampler can run (beam search is left out):
greedy, pure sampling, sampling at t=0.9, top-k=40, top-k=640, top-k=40 at t=0.7, nucleus p=0.95.
Their columns map onto our metric table: perplexity (of the generated text under the model) is
``generation_perplexity``, Self-BLEU4 is ``self_bleu_4``, the Zipf coefficient is
``zipf_coefficient``, and Repetition % is ``repetition_rate`` x 100 (stored here as a fraction).

The values were transcribed by hand and could not be checked against the paper offline;
``SOURCE`` says so in every result that carries them. Our prompts are not WebText (it is not available here) and our
generations are shorter, so a row is comparable in its ordering and direction, not in value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpt2xl.errors import ConfigError
from gpt2xl.grid import GridConfig

NAME = "holtzman"
SOURCE = ("Holtzman et al. (2020), The Curious Case of Neural Text Degeneration, ICLR, Table 1 (GPT-2 Large, "
          "5,000 WebText-prompted continuations of up to 200 tokens per row); transcribed by hand and not checked "
          "against the paper here (offline): verify before quoting them.")
CAVEAT = ("The prompts differ (WebText is not available here; ours are cut from the run's dataset) and so do the "
          "model (unless it is GPT-2 Large) and the generation length: compare each column's ordering across rows, "
          "not the values.")


@dataclass(frozen=True, kw_only=True)
class PublishedRow:
    """One row of Table 1: its label, our (temperature, top_k, top_p) for it, and its published
    values keyed by our metric names (repetition as a fraction)."""

    label: str
    temperature: float
    top_k: int
    top_p: float
    published: dict[str, float]

    @property
    def setting(self) -> tuple[float, int, float]:
        return (self.temperature, self.top_k, self.top_p)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                "published": dict(self.published)}


def _row(label: str, setting: tuple[float, int, float], values: tuple[float, float, float, float]) -> PublishedRow:
    """``values``: Table 1's perplexity, Self-BLEU4, Zipf coefficient and Repetition %, in its order."""
    ppl, self_bleu, zipf, repetition_percent = values
    return PublishedRow(label=label, temperature=setting[0], top_k=setting[1], top_p=setting[2], published={
        "generation_perplexity": ppl, "self_bleu_4": self_bleu, "zipf_coefficient": zipf,
        "repetition_rate": repetition_percent / 100})


# (temperature, top_k, top_p): top_k 0 = the whole vocabulary, top_p 1 = no nucleus cut, temperature 0 = greedy.
ROWS: tuple[PublishedRow, ...] = (
    _row("Greedy", (0.0, 0, 1.0), (1.50, 0.50, 1.00, 73.66)),
    _row("Pure sampling", (1.0, 0, 1.0), (22.73, 0.28, 0.93, 0.22)),
    _row("Sampling, t=0.9", (0.9, 0, 1.0), (10.25, 0.35, 0.96, 0.66)),
    _row("Top-k=40", (1.0, 40, 1.0), (6.88, 0.39, 0.96, 0.78)),
    _row("Top-k=640", (1.0, 640, 1.0), (13.82, 0.32, 0.96, 0.28)),
    _row("Top-k=40, t=0.7", (0.7, 40, 1.0), (3.48, 0.44, 1.00, 8.86)),
    _row("Nucleus p=0.95", (1.0, 0, 0.95), (13.13, 0.32, 0.95, 0.36)),
)
HUMAN = {"generation_perplexity": 12.38, "self_bleu_4": 0.31, "zipf_coefficient": 0.93, "repetition_rate": 0.0028}


def preset_grid(name: str, **kwargs: Any) -> GridConfig:
    """The grid of preset ``name`` (only ``holtzman`` so far): its rows as the grid's points, the
    other fields from ``kwargs`` (dataset, prompts, seeds, ...). ConfigError for another name."""
    if name != NAME:
        raise ConfigError(f"Unknown grid preset {name!r}; the presets are: {NAME}.")
    return GridConfig.from_points(tuple(r.setting for r in ROWS), preset=NAME, **kwargs)


def preset_entry(model: dict[str, Any]) -> dict[str, Any]:
    """What a grid result carries of the preset (self-contained: the report reads only results):
    the source, the caveat, the published rows and human values, and a note when ``model`` (a
    :meth:`gpt2xl.weights.LoadedModel.provenance`) is not trained GPT-2 Large or XL weights."""
    config = model.get("config") or {}
    shapes: dict[tuple[object, object], str] = {(36, 1280): "GPT-2 Large", (48, 1600): "GPT-2 XL"}
    shape = shapes.get((config.get("n_layer"), config.get("n_embd")))
    trained = model.get("kind") != "random"
    note = None
    if shape is None or not trained:
        note = (f"Ours ran on {model.get('label', 'another model')}, not trained GPT-2 Large or XL weights (they are "
                "not on this machine): only the direction of each change between rows can be compared.")
    elif shape != "GPT-2 Large":
        note = f"Ours ran on {shape}, the paper on GPT-2 Large."
    return {"name": NAME, "source": SOURCE, "caveat": CAVEAT, "model_note": note,
            "rows": [r.to_dict() for r in ROWS], "human": dict(HUMAN)}
