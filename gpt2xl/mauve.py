"""MAUVE (Pillutla et al. 2021) between human and generated text, on features computed here.

MAUVE ("MAUVE: Measuring the Gap Between Neural Text and Human Text using Divergence
Frontiers", NeurIPS 2021, arXiv:2102.01454) embeds each text with a language model, quantizes
the embeddings of both sets together by k-means, and measures the area under the divergence
curve of the two histograms: 1 for identical distributions, near 0 for disjoint ones.

The score itself is mauve-text's (``mauve.compute_mauve``, the authors' package), called with
``p_features``/``q_features`` and its defaults (one cluster per 10 samples of the smaller set,
PCA to 90% of the variance, 5 k-means restarts of up to 500 iterations, 25 mixture weights,
scaling constant 5). We compute the features ourselves with :func:`featurize`, as mauve-text's own
GPT-2 featurizer does, so nothing is downloaded: mauve-text only loads a model when it is given
text or tokens instead of features.

MAUVE is only comparable between runs that share the featurizer model AND the sample sizes (the
number of clusters follows them, and the estimate's bias depends on them); it also varies with
the k-means seed at small sample sizes. :class:`MauveResult` records all four next to the score.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import operator
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt2xl.errors import ConfigError, NumericalError
from gpt2xl.model import GPT
from gpt2xl.validation import check_int
from gpt2xl.weights import HUB_ALIASES

# mauve-text's own default featurizer (compute_mauve's ``featurize_model_name``).
PREFERRED_FEATURIZER = "gpt2-large"
# mauve-text seeds faiss's k-means with ``seed + 2``, a C int: larger seeds overflow there.
MAUVE_SEED_MAX = 2**31 - 1 - 2
# mauve-text, the two packages its import needs, and scikit-learn's thread-pool control.
_MAUVE_MODULES = ("mauve", "faiss", "sklearn", "threadpoolctl")
# faiss prints this from C++ straight to file descriptor 2 whenever it gets fewer than 39 points
# per centroid, which MAUVE's default of one cluster per 10 samples always does.
_FAISS_FEW_POINTS = re.compile(
    r"WARNING clustering \d+ points to \d+ centroids: please provide at least \d+ training points"
)


@dataclass(frozen=True, kw_only=True)
class MauveResult:
    """One MAUVE score and everything it is comparable on.

    ``score`` in [0, 1] (higher: the generated text is closer to the human text);
    ``p_samples``/``q_samples``: the number of human (reference) and generated texts;
    ``num_clusters``: the k-means quantization size mauve-text chose (``round(min(sizes) / 10)``,
    at least 2); ``featurizer``: the model whose hidden states are the features; ``seed``: the
    k-means and PCA seed. Two scores are comparable only when featurizer and both sample sizes
    agree.
    """

    score: float
    p_samples: int
    q_samples: int
    num_clusters: int
    featurizer: str
    seed: int

    def __post_init__(self) -> None:
        if not (isinstance(self.score, float) and 0.0 <= self.score <= 1.0):
            raise ConfigError(f"MauveResult.score must be a float in [0, 1], got {self.score!r}.")
        check_int("MauveResult.p_samples", self.p_samples)
        check_int("MauveResult.q_samples", self.q_samples)
        check_int("MauveResult.num_clusters", self.num_clusters, minimum=2)
        check_int("MauveResult.seed", self.seed, minimum=0, maximum=MAUVE_SEED_MAX)
        if not self.featurizer:
            raise ConfigError("MauveResult.featurizer must name the model that computed the features.")


def require_mauve() -> None:
    """Raise ConfigError, before any work, when mauve-text or what it imports is not installed
    (it comes with the ``eval`` extra). Looks the modules up without importing them."""
    missing = [name for name in _MAUVE_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"MAUVE needs the mauve-text package ({', '.join(missing)} not installed); install it with "
            "`pip install 'gpt2xl[eval]'`, or leave MAUVE out with --no-mauve."
        )


def choose_featurizer(model_under_test: str, *, hf_cache_dir: str | Path | None = None) -> str:
    """The featurizer to record and load for MAUVE: ``gpt2-large`` (mauve-text's default, so
    scores are comparable with published ones) when its config and weights are already in the
    local Hugging Face cache, else ``model_under_test``. Only the cache is read: nothing is
    downloaded. ``hf_cache_dir`` overrides the hub cache location (the hub's default otherwise).
    """
    from huggingface_hub import try_to_load_from_cache

    repo = HUB_ALIASES[PREFERRED_FEATURIZER]  # the repository gpt2xl.weights loads "gpt2-large" from

    def cached(filename: str) -> bool:
        return isinstance(try_to_load_from_cache(repo, filename, cache_dir=hf_cache_dir), str)

    if cached("config.json") and (cached("model.safetensors") or cached("pytorch_model.bin")):
        return PREFERRED_FEATURIZER
    return model_under_test


def _token_rows(token_samples: Iterable[Iterable[int]], *, vocab_size: int, limit: int) -> list[list[int]]:
    if isinstance(token_samples, (str, bytes, bytearray)):
        raise TypeError(f"token_samples must be a sequence of token-id sequences, not {type(token_samples).__name__}")
    rows = []
    for index, sample in enumerate(token_samples):
        if isinstance(sample, (str, bytes, bytearray)):
            raise TypeError(f"a sample must be a sequence of token ids, not {type(sample).__name__}")
        # operator.index accepts int, numpy integers and integer 0-d tensors, and rejects floats.
        tokens = [operator.index(token) for token in sample][:limit]
        if not tokens:
            raise ConfigError(
                f"Sample {index} is empty; MAUVE features need at least one token per text: leave empty texts out "
                "and report how many were left out."
            )
        bad = next((token for token in tokens if not 0 <= token < vocab_size), None)
        if bad is not None:
            raise ConfigError(
                f"Sample {index} holds token id {bad}, outside the featurizer's vocabulary of {vocab_size}; "
                "featurize with the model whose tokenizer produced the samples."
            )
        rows.append(tokens)
    if not rows:
        raise ConfigError("There are no samples to featurize; pass at least one non-empty token sequence.")
    return rows


@torch.inference_mode()
def featurize(
    model: GPT, token_samples: Iterable[Iterable[int]], *, batch_size: int, max_length: int | None = None
) -> np.ndarray:
    """MAUVE features of ``token_samples``: one row per sample, the model's final hidden state
    after ``ln_f`` at the sample's last token, float32, shape (N, n_embd), in the input order.

    This is what mauve-text's featurizer computes (``featurize_tokens_from_model`` in its
    utils.py: ``outs.hidden_states[-1]`` of a Hugging Face ``GPT2Model``, which is the output of
    ``ln_f``, at position ``length - 1``), fed the same way: the token ids as given, with no
    BOS or end-of-text token added, and each sample cut to its FIRST ``max_length`` tokens (the
    tokenizer's ``truncation=True, max_length=1024`` there; here the model's context by default).

    The values come from the model's own forward pass, read from ``ln_f`` by a hook: samples of
    equal length are batched together (``batch_size`` at most), so there is no padding and the
    logits are computed for the last position only. (mauve-text pads on the right under an
    attention mask instead; with causal attention the last real token's state is the same, and
    the two agree to float32 rounding: tests/test_mauve.py runs both on one checkpoint.) A
    bf16/fp16 model gives its features cast to float32. Raises ConfigError for an empty sample,
    a token id outside the vocabulary, or bad ``batch_size``/``max_length``; NumericalError when
    the model produces NaN or inf.
    """
    check_int("batch_size", batch_size)
    context = model.config.block_size
    limit = context if max_length is None else check_int("max_length", max_length, maximum=context)
    rows = _token_rows(token_samples, vocab_size=model.config.vocab_size, limit=limit)
    device = model.transformer.wte.weight.device
    features = np.empty((len(rows), model.config.n_embd), dtype=np.float32)

    captured: list[torch.Tensor] = []

    def keep_output(_module: torch.nn.Module, _args: Any, output: torch.Tensor) -> None:
        captured.append(output)

    by_length: dict[int, list[int]] = {}
    for index, tokens in enumerate(rows):
        by_length.setdefault(len(tokens), []).append(index)
    handle = model.transformer.ln_f.register_forward_hook(keep_output)
    try:
        for indices in by_length.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                idx = torch.tensor([rows[i] for i in chunk], dtype=torch.long, device=device)
                captured.clear()
                model(idx, last_only=True)
                features[chunk] = captured[0][:, -1, :].float().cpu().numpy()  # (B, 1, C) -> (B, C)
    finally:
        handle.remove()
    finite = np.isfinite(features).all(axis=1)
    if not finite.all():
        raise NumericalError(
            f"The featurizer produced NaN or inf features for sample {int(np.argmin(finite))}; "
            "featurize in float32 or check the model's weights."
        )
    return features


def _feature_matrix(name: str, features: object) -> np.ndarray:
    array = np.asarray(features)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ConfigError(f"{name} must be a 2-D array with one row per text, got shape {array.shape}.")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ConfigError(f"{name} must hold real numbers, got dtype {array.dtype}.")
    if not np.isfinite(array).all():
        raise NumericalError(f"{name} holds NaN or inf; featurize in float32 or check the featurizer's weights.")
    return array


def features_vary(p: np.ndarray, q: np.ndarray) -> bool:
    """Whether MAUVE is defined on ``p`` and ``q``: mauve-text scales every row to unit length and
    runs PCA on both sets together; when all rows then point the same way the variance is 0, PCA
    divides 0 by 0, and the score that comes out is arbitrary (0.75 for two identical sets,
    measured)."""
    rows = np.vstack([q, p]).astype(np.float64)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    unit = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
    return not np.allclose(unit, unit[0], rtol=0.0, atol=1e-12)


def _check_features_vary(p: np.ndarray, q: np.ndarray) -> None:
    """Refuse feature sets on which MAUVE is undefined (:func:`features_vary`)."""
    if not features_vary(p, q):
        rows = np.vstack([q, p])
        raise ConfigError(
            f"All {rows.shape[0]} feature rows point the same way (MAUVE scales each to unit length), so its PCA is "
            "undefined; MAUVE needs texts whose features differ."
        )


@contextlib.contextmanager
def _without_faiss_few_points_warning() -> Iterator[None]:
    """Keep faiss's "fewer than 39 points per centroid" line off stderr, pass everything else.

    faiss writes it from C++ to file descriptor 2, below Python's sys.stderr, once per k-means
    restart: with MAUVE's defaults it fires on every call and says nothing the sample sizes in
    :class:`MauveResult` do not. So fd 2 goes to a temporary file for the call and every other
    line is written back to stderr afterwards, in order.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                captured.seek(0)
                kept = [
                    line
                    for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not _FAISS_FEW_POINTS.fullmatch(line.rstrip("\n"))
                ]
                if kept:
                    sys.stderr.write("".join(kept))
                    sys.stderr.flush()
    finally:
        os.close(saved)


def mauve_score(p_features: object, q_features: object, *, seed: int, featurizer: str) -> MauveResult:
    """MAUVE between ``p_features`` (the human reference texts, one row each) and ``q_features``
    (the generated texts), by mauve-text's ``compute_mauve(p_features=..., q_features=...,
    seed=seed)`` with all its other defaults; ``featurizer`` names the model that computed both
    feature sets (see :func:`choose_featurizer`) and is recorded, not loaded.

    MAUVE is only comparable within one featurizer and one pair of sample sizes: the number of
    clusters is ``max(2, round(min(len(p), len(q)) / 10))`` and the estimate's bias depends on the
    sizes. For a fixed seed the score is deterministic (PCA and k-means are seeded); across seeds
    it varies, by several hundredths at 100 texts a side. PCA and k-means run on one thread, so
    the score does not depend on the machine's core count either. Identical feature sets score 1 exactly
    (up to rounding) whatever the clustering, since both histograms are then the same.

    mauve-text's trapezoid areas can exceed 1 by a rounding error (1 + 2e-16 for identical
    sets); the score is clipped to 1. Nothing is downloaded: with features given, mauve-text
    touches no model and no network. Raises ConfigError for feature arrays that are not 2-D, are
    empty or differ in width, for features that all point the same way (nothing to cluster), for
    a seed outside [0, 2**31 - 3] (faiss's k-means takes ``seed + 2`` as a C int), an empty
    featurizer name, or when mauve-text is not installed; NumericalError for NaN or inf features.
    """
    p = _feature_matrix("p_features", p_features)
    q = _feature_matrix("q_features", q_features)
    if p.shape[1] != q.shape[1]:
        raise ConfigError(
            f"p_features and q_features must come from one featurizer, got widths {p.shape[1]} and {q.shape[1]}."
        )
    _check_features_vary(p, q)
    check_int("seed", seed, minimum=0, maximum=MAUVE_SEED_MAX)
    if not isinstance(featurizer, str) or not featurizer:
        raise ConfigError("featurizer must name the model that computed the features, e.g. 'gpt2-large'.")
    require_mauve()
    # Imported here: mauve imports transformers and faiss, seconds that no other command should pay.
    from mauve import compute_mauve
    from threadpoolctl import threadpool_limits

    # One thread for PCA (BLAS) and k-means (faiss's OpenMP, the same runtime as torch's here):
    # a few hundred points gain nothing from more, and on 2 busy cores the OpenMP threads' spin
    # waits made one call of 2 x 100 texts take 0.4-9 s instead of 0.04-0.12 s (measured). The
    # score is the same (checked at 1 and 2 threads); threadpool_limits restores every pool after.
    with threadpool_limits(limits=1), _without_faiss_few_points_warning():
        out = compute_mauve(p_features=p, q_features=q, seed=seed)
    score = float(out.mauve)
    if not math.isfinite(score):
        raise NumericalError(f"mauve-text returned a non-finite MAUVE score ({score!r}) for finite features.")
    return MauveResult(
        score=min(score, 1.0),
        p_samples=p.shape[0],
        q_samples=q.shape[0],
        num_clusters=int(out.num_buckets),
        featurizer=featurizer,
        seed=seed,
    )
