"""MAUVE: hand-computed scores, a re-implementation of the divergence-frontier area checked against
mauve-text, determinism and no network, and the featurizer against the model and mauve-text's own."""

from __future__ import annotations

import itertools
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mauve", reason="mauve-text comes with the eval extra")

from gpt2xl import mauve as gmauve
from gpt2xl.errors import ConfigError, NumericalError
from gpt2xl.mauve import (
    MAUVE_SEED_MAX,
    PREFERRED_FEATURIZER,
    MauveResult,
    choose_featurizer,
    featurize,
    mauve_score,
    require_mauve,
)

# mauve-text's defaults, restated for the re-implementation: 25 mixture weights in (0, 1), c = 5.
MIXTURE_WEIGHTS = np.linspace(1e-6, 1 - 1e-6, 25).tolist()
SCALING = 5.0


def _kl(a: list[float], b: list[float]) -> float:
    """KL(a || b) of two histograms; b > 0 wherever a > 0 here (b is a mixture holding a)."""
    return math.fsum(x * math.log(x / y) for x, y in zip(a, b, strict=True) if x > 0)


def frontier_area(p: list[float], q: list[float], weights: list[float] = MIXTURE_WEIGHTS) -> float:
    """MAUVE from its definition (Pillutla et al. 2021, eq. 2-3): the divergence curve
    C(P, Q) = {(exp(-c KL(Q || R_l)), exp(-c KL(P || R_l))) : R_l = l P + (1 - l) Q, 0 < l < 1},
    closed by its limits (1, 0) at l -> 0 and (0, 1) at l -> 1, and the area under it, by the
    trapezoid rule over the points sorted by their first coordinate."""
    points = [(1.0, 0.0), (0.0, 1.0)]
    for w in weights:
        r = [w * pi + (1 - w) * qi for pi, qi in zip(p, q, strict=True)]
        points.append((math.exp(-SCALING * _kl(q, r)), math.exp(-SCALING * _kl(p, r))))
    points.sort()
    return math.fsum((x2 - x1) * (y1 + y2) / 2 for (x1, y1), (x2, y2) in itertools.pairwise(points))


def _blob(rng: np.random.Generator, centre: float, n: int, *, dim: int = 16, spread: float = 0.1) -> np.ndarray:
    """n points around centre * (1, -1, 1, ...): tight (spread << distance between centres)."""
    axis = np.where(np.arange(dim) % 2 == 0, 1.0, -1.0)
    return (centre * axis + spread * rng.normal(size=(n, dim))).astype(np.float32)


# ---------------------------------------------------------------------------------- the re-implementation


def test_frontier_area_of_identical_and_disjoint_histograms() -> None:
    # identical: KL = 0 at every weight, every point is (1, 1): area of the unit square, exactly 1
    assert frontier_area([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == pytest.approx(1.0, abs=1e-15)
    # disjoint supports: KL(Q || R_l) = -ln(1 - l) and KL(P || R_l) = -ln(l), so the curve is
    # x = (1 - l)^5, y = l^5, whose exact area is integral_0^1 (1 - u)^5 5 u^4 du = 5 B(5, 6) = 1/252
    fine = np.linspace(1e-9, 1 - 1e-9, 20001).tolist()
    assert frontier_area([1.0, 0.0], [0.0, 1.0], fine) == pytest.approx(1 / 252, rel=1e-6)
    # mauve-text's 25 weights overestimate it a little: 0.004072 instead of 0.003968
    assert frontier_area([1.0, 0.0], [0.0, 1.0]) == pytest.approx(0.0040721, abs=1e-7)


# ---------------------------------------------------------------------------------- mauve-text's score


@pytest.mark.parametrize("seed", [0, 25])
def test_identical_feature_sets_score_one(seed: int) -> None:
    # Identical rows get identical cluster labels whatever k-means converges to, so the two
    # histograms are equal and the score is the identical-histogram area, 1; only the rounding of
    # mauve-text's trapezoid sums is left (it comes out 1 - 2e-16 or 1 + 2e-16, clipped): 1e-12.
    features = np.random.default_rng(seed).normal(size=(60, 16)).astype(np.float32)
    result = mauve_score(features, features.copy(), seed=seed, featurizer="test")
    assert result.score == pytest.approx(1.0, abs=1e-12)
    assert result == MauveResult(
        score=result.score, p_samples=60, q_samples=60, num_clusters=6, featurizer="test", seed=seed
    )


def test_well_separated_sets_score_the_disjoint_area() -> None:
    # Two blobs 8 apart per coordinate with spread 0.1: every cluster holds one set only, so the
    # histograms have disjoint supports and the score is the disjoint-curve area whatever the
    # clusters' sizes: 0.00407 on mauve-text's 25 weights (1/252 = 0.00397 in the limit).
    rng = np.random.default_rng(1)
    result = mauve_score(_blob(rng, 4.0, 50), _blob(rng, -4.0, 40), seed=3, featurizer="test")
    assert result.score == pytest.approx(frontier_area([1.0, 0.0], [0.0, 1.0]), rel=1e-9)
    assert result.score < 0.005
    assert (result.p_samples, result.q_samples, result.num_clusters) == (50, 40, 4)  # round(40 / 10)


@pytest.mark.parametrize(
    ("p_counts", "q_counts"),
    [
        ((15, 9, 6), (6, 9, 15)),  # every bin shared
        ((20, 10, 0), (0, 10, 20)),  # a bin of each set's own: KL(P || R) stays finite, R holds both
    ],
)
def test_mauve_text_matches_the_definition_on_an_exact_quantization(
    p_counts: tuple[int, ...], q_counts: tuple[int, ...]
) -> None:
    # 30 texts a side -> round(30 / 10) = 3 clusters; the features sit on 3 exact points (unit
    # vectors, unchanged by mauve-text's l2 normalisation), so the best k-means solution puts one
    # centroid on each and the histograms are the counts / 30, known in advance.
    points = np.eye(3, 8, dtype=np.float32)

    def texts(counts: tuple[int, ...]) -> np.ndarray:
        return np.concatenate([np.repeat(points[i : i + 1], count, axis=0) for i, count in enumerate(counts)])

    result = mauve_score(texts(p_counts), texts(q_counts), seed=11, featurizer="test")
    assert result.num_clusters == 3
    expected = frontier_area([c / 30 for c in p_counts], [c / 30 for c in q_counts])
    assert result.score == pytest.approx(expected, rel=1e-9)


def test_mixing_more_of_q_into_p_raises_the_score() -> None:
    rng = np.random.default_rng(2)
    human = _blob(rng, -4.0, 60)
    model_a, model_b = _blob(rng, 4.0, 60), _blob(rng, -4.0, 60)  # far from the human text, and a fresh draw of it
    scores = []
    for taken in (0, 15, 30, 45, 60):  # texts of the second model among 60
        mixed = np.concatenate([model_a[taken:], model_b[:taken]])
        scores.append(mauve_score(human, mixed, seed=5, featurizer="test").score)
    assert scores == sorted(scores)
    assert all(later > earlier + 0.05 for earlier, later in itertools.pairwise(scores))
    assert scores[0] < 0.01
    assert scores[-1] > 0.9


def test_fixed_seed_is_deterministic_and_nothing_touches_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("MAUVE on given features must not use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    rng = np.random.default_rng(3)
    p, q = rng.normal(size=(80, 32)), rng.normal(size=(80, 32)) + 0.3
    first = mauve_score(p, q, seed=9, featurizer="test")
    assert mauve_score(p, q, seed=9, featurizer="test") == first
    assert 0.0 < first.score < 1.0


def test_faiss_few_points_warning_is_kept_off_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    from mauve import compute_mauve

    rng = np.random.default_rng(4)
    p, q = rng.normal(size=(40, 8)), rng.normal(size=(40, 8))
    compute_mauve(p_features=p, q_features=q, seed=1)
    assert "WARNING clustering 80 points to 4 centroids" in capfd.readouterr().err  # faiss, straight to fd 2
    mauve_score(p, q, seed=1, featurizer="test")
    assert capfd.readouterr().err == ""


def test_other_stderr_lines_pass_the_faiss_filter(capfd: pytest.CaptureFixture[str]) -> None:
    with gmauve._without_faiss_few_points_warning():
        os.write(2, b"WARNING clustering 20 points to 2 centroids: please provide at least 78 training points\n")
        os.write(2, b"something else\n")
    assert capfd.readouterr().err == "something else\n"


FEATURES = np.random.default_rng(5).normal(size=(10, 4))


@pytest.mark.parametrize(
    ("p", "q", "error", "match"),
    [
        (FEATURES[0], FEATURES, ConfigError, "p_features must be a 2-D array"),
        (FEATURES, np.empty((0, 4)), ConfigError, r"q_features must be a 2-D array .* shape \(0, 4\)"),
        (FEATURES, FEATURES[:, :3], ConfigError, "widths 4 and 3"),
        (FEATURES.astype(str), FEATURES, ConfigError, "real numbers"),
        (np.where(FEATURES > 1, np.nan, FEATURES), FEATURES, NumericalError, "p_features holds NaN or inf"),
        (np.ones((5, 4)), 3 * np.ones((5, 4)), ConfigError, "All 10 feature rows point the same way"),
    ],
)
def test_bad_features_are_refused(p: np.ndarray, q: np.ndarray, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        mauve_score(p, q, seed=0, featurizer="test")


@pytest.mark.parametrize("seed", [-1, MAUVE_SEED_MAX + 1, 1.5, True])
def test_seed_must_fit_faiss(seed: object) -> None:
    with pytest.raises(ConfigError, match="seed"):
        mauve_score(FEATURES, FEATURES + 1, seed=seed, featurizer="test")  # type: ignore[arg-type]


def test_largest_seed_runs() -> None:
    assert mauve_score(FEATURES, FEATURES[::-1].copy(), seed=MAUVE_SEED_MAX, featurizer="test").seed == MAUVE_SEED_MAX


def test_featurizer_must_be_named() -> None:
    with pytest.raises(ConfigError, match="featurizer must name"):
        mauve_score(FEATURES, FEATURES + 1, seed=0, featurizer="")


def test_result_is_validated() -> None:
    fields = {"score": 0.5, "p_samples": 10, "q_samples": 10, "num_clusters": 2, "featurizer": "gpt2", "seed": 0}
    MauveResult(**fields)  # type: ignore[arg-type]
    for name, bad in [("score", 1.5), ("score", math.nan), ("score", 1), ("num_clusters", 1), ("featurizer", "")]:
        with pytest.raises(ConfigError, match=name):
            MauveResult(**{**fields, name: bad})  # type: ignore[arg-type]


def test_a_missing_mauve_text_is_one_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    require_mauve()  # installed here
    monkeypatch.setattr(gmauve, "_MAUVE_MODULES", ("mauve", "gpt2xl_no_such_module"))
    with pytest.raises(ConfigError, match=r"gpt2xl_no_such_module not installed.*pip install 'gpt2xl\[eval\]'"):
        mauve_score(FEATURES, FEATURES + 1, seed=0, featurizer="test")


# ---------------------------------------------------------------------------------- choosing the featurizer


def _fake_hub_cache(root: Path, files: list[str]) -> Path:
    """The layout huggingface_hub's try_to_load_from_cache reads: refs/main names a snapshot."""
    repo = root / "models--openai-community--gpt2-large"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for name in files:
        (snapshot / name).write_text("{}")
    return root


@pytest.mark.parametrize(
    ("files", "chosen"),
    [
        (["config.json", "model.safetensors"], PREFERRED_FEATURIZER),
        (["config.json", "pytorch_model.bin"], PREFERRED_FEATURIZER),
        (["config.json"], "my-model"),  # no weights: not usable offline
        ([], "my-model"),
    ],
)
def test_featurizer_is_gpt2_large_only_when_cached(tmp_path: Path, files: list[str], chosen: str) -> None:
    assert choose_featurizer("my-model", hf_cache_dir=_fake_hub_cache(tmp_path, files)) == chosen


def test_featurizer_falls_back_with_an_empty_cache(tmp_path: Path) -> None:
    assert choose_featurizer("random:tiny", hf_cache_dir=tmp_path) == "random:tiny"


# ---------------------------------------------------------------------------------- featurize


def _by_hand(model, tokens: list[int]) -> torch.Tensor:
    """The final hidden state after ln_f at the last token, written out from the model's parts."""
    with torch.no_grad():
        idx = torch.tensor([tokens])
        x = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(len(tokens)))
        for layer, block in enumerate(model.transformer.blocks):
            x = block(x, layer=layer, cache=None, start_pos=0, attn_mask=None)
        return model.transformer.ln_f(x)[0, -1]


SAMPLES = [[464, 3290, 318, 257], [40, 716], [464, 3290, 318, 922], [11, 198, 198, 40, 716, 13, 0], [50256, 1]]


def test_featurize_is_the_final_hidden_state_at_the_last_token(tiny_shakespeare) -> None:
    model = tiny_shakespeare.model
    features = featurize(model, SAMPLES, batch_size=2)
    assert features.shape == (len(SAMPLES), model.config.n_embd)
    assert features.dtype == np.float32
    for row, tokens in zip(features, SAMPLES, strict=True):  # input order kept across length groups
        torch.testing.assert_close(torch.from_numpy(row), _by_hand(model, tokens))
    assert not np.allclose(features[0], features[2])  # same length, different last token


def test_featurize_does_not_depend_on_the_batch_size(tiny_shakespeare) -> None:
    one = featurize(tiny_shakespeare.model, SAMPLES, batch_size=1)
    many = featurize(tiny_shakespeare.model, SAMPLES, batch_size=64)
    np.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:.past_key_values. is deprecated:FutureWarning")  # mauve-text's call, not ours
def test_featurize_equals_mauve_texts_own_featurizer(tiny_shakespeare_dir: Path, tiny_shakespeare) -> None:
    # mauve-text's featurize_tokens_from_model on the same checkpoint loaded as a Hugging Face
    # GPT2Model (what its get_model builds), padded batches of 2.
    transformers = pytest.importorskip("transformers")
    from mauve.utils import featurize_tokens_from_model

    hf_model = transformers.AutoModel.from_pretrained(str(tiny_shakespeare_dir)).eval()
    expected = featurize_tokens_from_model(hf_model, [torch.tensor([tokens]) for tokens in SAMPLES], 2).numpy()
    ours = featurize(tiny_shakespeare.model, SAMPLES, batch_size=2)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)


def test_featurize_keeps_the_first_tokens(tiny_shakespeare) -> None:
    model = tiny_shakespeare.model
    context = model.config.block_size
    long = [(7 * i) % 5000 for i in range(context + 40)]
    features = featurize(model, [long, long], batch_size=2, max_length=None)
    torch.testing.assert_close(torch.from_numpy(features[0]), _by_hand(model, long[:context]))
    short = featurize(model, [long], batch_size=1, max_length=10)
    torch.testing.assert_close(torch.from_numpy(short[0]), _by_hand(model, long[:10]))


@pytest.mark.parametrize(
    ("samples", "options", "error", "match"),
    [
        ([[1, 2], []], {}, ConfigError, "Sample 1 is empty"),
        ([], {}, ConfigError, "no samples"),
        ([[1, 50257]], {}, ConfigError, "token id 50257, outside the featurizer's vocabulary of 50257"),
        ([[1, -1]], {}, ConfigError, "token id -1"),
        ([[1, 2]], {"batch_size": 0}, ConfigError, "batch_size"),
        ([[1, 2]], {"max_length": 129}, ConfigError, "max_length"),
        ([[1, 2]], {"max_length": 0}, ConfigError, "max_length"),
        (["some text"], {}, TypeError, "sequence of token ids"),
        ([[1.0, 2.0]], {}, TypeError, "cannot be interpreted as an integer"),
    ],
)
def test_featurize_refuses_bad_input(
    tiny_shakespeare, samples: list, options: dict, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        featurize(tiny_shakespeare.model, samples, **{"batch_size": 2, **options})


def test_featurize_reports_non_finite_features() -> None:
    from gpt2xl.weights import load_model

    model = load_model("random:tiny").model
    with torch.no_grad():
        model.transformer.ln_f.bias[3] = math.inf
    with pytest.raises(NumericalError, match="NaN or inf features for sample 0"):
        featurize(model, [[1, 2, 3]], batch_size=1)
