"""The kernel tuner: it keeps the fastest measured candidate, caches one choice per machine key
in the user cache directory, honours off / cached / fresh, and never trusts a damaged entry."""

from __future__ import annotations

import json

import pytest
import torch

from gpt2xl import autotune
from gpt2xl.autotune import choose, tune, tune_key
from gpt2xl.config import get_preset
from gpt2xl.errors import ConfigError
from gpt2xl.model import PROJECTION_KINDS, ProjectionPlan, plain_plan
from gpt2xl.weights import load_model

CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2XL_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_choose_keeps_the_fastest_candidate_by_hand() -> None:
    """Seconds per pass over 1 GB: native decodes fastest in out_in; in_out's best decode (split,
    0.05 s) is faster still, but its prefill (1.0 s / 32 = 0.031 s) costs more than out_in's."""
    decode = {"out_in/linear": 0.10, "out_in/native": 0.06, "in_out/linear": 0.08, "in_out/split": 0.05}
    prefill = {"out_in/linear": 0.20, "out_in/native": 0.30, "in_out/linear": 1.00}
    c = choose("mlp.c_fc", (8, 4), decode, prefill, nbytes=10**9)
    # out_in: 0.06 + 0.20 / 32 = 0.066; in_out: 0.05 + 1.00 / 32 = 0.081
    assert c.plan == ProjectionPlan(layout="out_in", decode="native", prefill="linear")
    assert c.decode_bytes_per_s["out_in/native"] == pytest.approx(10**9 / 0.06)
    cheap_prefill = {**prefill, "in_out/linear": 0.25}  # in_out: 0.05 + 0.0078 = 0.058 wins
    assert choose("mlp.c_fc", (8, 4), decode, cheap_prefill, nbytes=10**9).plan.layout == "in_out"


def test_fresh_measures_and_cached_reuses(cache, monkeypatch) -> None:
    config = get_preset("tiny")
    first = tune(config, device=CPU, dtype=torch.float32, mode="fresh")
    assert not first.cache_hit and first.tuning_s > 0
    assert [c.kind for c in first.choices] == list(PROJECTION_KINDS)
    for c in first.choices:  # the winner is the fastest decode candidate of its layout
        in_layout = {k: v for k, v in c.decode_bytes_per_s.items() if k.startswith(f"{c.plan.layout}/")}
        assert f"{c.plan.layout}/{c.plan.decode}" == max(in_layout, key=in_layout.get)
        assert c.measure_s > 0
    files = list((cache / "autotune").glob("*.json"))
    assert len(files) == 1

    def no_timing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a cached choice was measured again")

    monkeypatch.setattr(autotune, "measure", no_timing)
    again = tune(config, device=CPU, dtype=torch.float32, mode="cached")
    assert again.cache_hit and again.plan == first.plan
    assert again.to_dict()["measure_s"] == pytest.approx(first.to_dict()["measure_s"], abs=0.01)


def test_key_separates_threads_and_dtypes(cache) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = tune_key(CPU, torch.float32)
        torch.set_num_threads(2)
        two = tune_key(CPU, torch.float32)
    finally:
        torch.set_num_threads(before)
    assert one["threads"] == 1 and two["threads"] == 2 and one != two
    assert tune_key(CPU, torch.bfloat16)["dtype"] == "bf16"
    assert {"cpu", "cpu_flags_sha256", "torch", "native", "tuner"} <= set(one)


def test_damaged_cache_entry_is_measured_again(cache) -> None:
    config = get_preset("tiny")
    tune(config, device=CPU, dtype=torch.float32, mode="fresh")
    (path,) = (cache / "autotune").glob("*.json")
    path.write_text("{not json")
    report = tune(config, device=CPU, dtype=torch.float32, mode="cached")
    assert not report.cache_hit
    assert json.loads(path.read_text())["key"] == tune_key(CPU, torch.float32)


def _first_choice(doc: dict, **changes: object) -> dict:
    name = sorted(doc["choices"])[0]
    return {**doc, "choices": {**doc["choices"], name: {**doc["choices"][name], **changes}}}


@pytest.mark.parametrize(
    "damage",
    [
        lambda doc: [],
        lambda doc: {**doc, "choices": []},
        lambda doc: {**doc, "choices": {name: "x" for name in doc["choices"]}},
        lambda doc: _first_choice(doc, decode="bogus"),
        lambda doc: _first_choice(doc, layout=None),
        lambda doc: _first_choice(doc, shape=[8]),
        lambda doc: _first_choice(doc, shape=["8", 4]),
        lambda doc: _first_choice(doc, candidates={"out_in/linear": "fast"}),
        lambda doc: _first_choice(doc, prefill_candidates=[1.0]),
        lambda doc: _first_choice(doc, measure_s=True),
    ],
    ids=["list", "choices-list", "choice-string", "unknown-kernel", "no-layout", "short-shape", "string-dim",
         "string-rate", "rates-list", "bool-seconds"],
)
def test_mistyped_cache_entry_is_measured_again(cache, monkeypatch, damage) -> None:
    """Valid JSON of the wrong shape is as damaged as invalid JSON: measured again, never a crash."""
    measured: list[str] = []

    def stub(kind: str, shape: tuple[int, int], dtype: torch.dtype, *, model_copies: int) -> autotune.Choice:
        measured.append(kind)
        return autotune.choose(kind, shape, {"out_in/linear": 1.0}, {"out_in/linear": 1.0}, nbytes=1)

    monkeypatch.setattr(autotune, "measure", stub)
    config = get_preset("tiny")
    tune(config, device=CPU, dtype=torch.float32, mode="fresh")
    (path,) = (cache / "autotune").glob("*.json")
    assert tune(config, device=CPU, dtype=torch.float32, mode="cached").cache_hit  # intact: reused
    path.write_text(json.dumps(damage(json.loads(path.read_text()))))
    measured.clear()
    report = tune(config, device=CPU, dtype=torch.float32, mode="cached")
    assert not report.cache_hit and sorted(measured) == sorted(PROJECTION_KINDS)
    assert json.loads(path.read_text())["key"] == tune_key(CPU, torch.float32)


def test_off_times_nothing_and_runs_pytorch(cache, monkeypatch) -> None:
    monkeypatch.setattr(autotune, "measure", lambda *a, **k: pytest.fail("off must not time"))
    report = tune(get_preset("tiny"), device=CPU, dtype=torch.float32, mode="off")
    assert report.plan == plain_plan() and report.choices == () and report.tuning_s == 0
    assert not (cache / "autotune").exists() or not list((cache / "autotune").iterdir())
    with pytest.raises(ConfigError, match="autotune mode"):
        tune(get_preset("tiny"), device=CPU, dtype=torch.float32, mode="sometimes")


def test_load_model_records_and_applies_the_plan(cache) -> None:
    loaded = load_model("random:tiny", autotune="fresh")
    kernels = loaded.describe()["kernels"]
    assert kernels["mode"] == "fresh" and len(kernels["choices"]) == len(PROJECTION_KINDS)
    assert loaded.model.kernel_plan() == loaded.tuning.plan
    for c in kernels["choices"]:
        assert c["layout"] in ("out_in", "in_out") and c["decode"] in ("linear", "split", "native")
        assert c["candidates"] and all(v > 0 for v in c["candidates"].values())
    off = load_model("random:tiny", autotune="off")
    assert not off.model.kernels_active() and off.layout == "out_in"
    assert off.describe()["kernels"]["mode"] == "off"


def test_a_shallow_model_does_not_share_entries_with_a_deep_one(cache, monkeypatch) -> None:
    """tiny-xl has gpt2-xl's widths but 2 layers: its weights stay in cache where gpt2-xl's 48
    stream from memory, so its measurements must not stand for gpt2-xl's (they did, once: a test
    run's choice for a 2-layer model was reused by the gpt2-xl benchmark)."""
    shallow = get_preset("tiny-xl")
    tune(shallow, device=CPU, dtype=torch.float32, mode="fresh")
    measured: list[tuple[str, int]] = []

    def record(kind, shape, dtype, *, model_copies):  # noqa: ANN001, ANN202
        measured.append((kind, model_copies))
        return autotune.choose(kind, shape, {"out_in/linear": 1.0}, {"out_in/linear": 1.0}, nbytes=1)

    monkeypatch.setattr(autotune, "measure", record)
    tune(get_preset("gpt2-xl"), device=CPU, dtype=torch.float32, mode="cached")
    assert ("mlp.c_fc", 48) in measured and ("attn.c_attn", 48) in measured
    assert autotune.entry_name("mlp.c_fc", (6400, 1600), torch.float32, 2) != autotune.entry_name(
        "mlp.c_fc", (6400, 1600), torch.float32, 48)
