"""The quality cost of precision (gpt2xl.precision): each dtype against fp32 on the same prompts and seeds.

Pinned against independent computations on the tiny Shakespeare fixture: two perplexities
computed apart, a hand count over two `generate` calls, the metrics of two grid cells; plus the
report's table beside bench.json's speeds, `eval run --dtypes` end to end, --resume, and NaN.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys

import pytest

from gpt2xl.config import EOT_TOKEN_ID
from gpt2xl.errors import ConfigError, NumericalError
from gpt2xl.grid import GridConfig, grid_prompts, run_grid
from gpt2xl.metric_table import INTERVAL_METRICS
from gpt2xl.precision import Continuation, PrecisionConfig, compare, compare_precision, greedy_agreement, measure
from tests.conftest import REPO, SHARED_DATA, TINY_SHAKESPEARE

# Small enough for seconds on the tiny model; long enough that bf16 and fp32 samples part ways.
GRID = GridConfig(dataset="tinyshakespeare", num_prompts=8, prompt_tokens=16, max_new_tokens=32, seeds=(0,), top_ps=(1.0,),
                  batch_size=8, mauve=False, n_resamples=400, weighted_resamples=100)
CONFIG = PrecisionConfig(dtypes=("fp32", "bf16"), grid=GRID, ppl_max_tokens=640)


@pytest.fixture(scope="module")
def split():
    from gpt2xl.data import eval_split, load_corpus

    return eval_split(load_corpus("tinyshakespeare", data_dir=SHARED_DATA))


@pytest.fixture(scope="module")
def prompts(split):
    return grid_prompts(split.token_ids, num_prompts=GRID.num_prompts, prompt_tokens=GRID.prompt_tokens,
                        continuation_tokens=GRID.max_new_tokens)


def _load(dtype: str):
    from gpt2xl.weights import load_model

    return load_model(str(TINY_SHAKESPEARE), dtype=dtype).model


@pytest.fixture(scope="module")
def fp32():
    return _load("fp32")


@pytest.fixture(scope="module")
def bf16():
    return _load("bf16")


@pytest.fixture(scope="module")
def measured(fp32, bf16, prompts, split):
    return {"fp32": measure(fp32, prompts, split.token_ids, CONFIG), "bf16": measure(bf16, prompts, split.token_ids,
                                                                                     CONFIG)}


@pytest.fixture(scope="module")
def entry(fp32, prompts, split):
    """A comparison of three dtypes listed out of order, fp32 given, the others loaded; with the
    dtypes it loaded (``loaded``) and the rows handed to ``on_dtype`` (``rows``), in order."""
    config = dataclasses.replace(CONFIG, dtypes=("bf16", "fp32", "fp16"))
    loaded: list[str] = []
    rows: list[str] = []

    def load(name: str):
        loaded.append(name)
        return _load(name)

    result = compare_precision(config, models={"fp32": fp32}, load=load, prompts=prompts, ppl_tokens=split.token_ids,
                               on_dtype=lambda r: rows.append(r["dtype"]))
    return {**result, "loaded": loaded, "rows": rows}


def test_fp32_against_a_second_fp32_load_differs_in_nothing(measured, prompts, split) -> None:
    again = measure(_load("fp32"), prompts, split.token_ids, CONFIG)
    row = compare(measured["fp32"], again, CONFIG)
    assert row["perplexity_delta"] == 0.0
    assert row["greedy"]["identical"] == row["greedy"]["prompts"] == GRID.num_prompts
    assert row["greedy"]["mean_first_divergence"] is None
    assert set(row["deltas"]) == {m.name for m in INTERVAL_METRICS}
    assert row["notes"] == []
    for name, d in row["deltas"].items():
        assert (d["difference"], d["low"], d["high"]) == (0.0, 0.0, 0.0), name
        assert d["p_value"] == 1.0, name
        assert d["significant"] is False, name


def test_the_perplexity_delta_is_the_difference_of_two_independent_perplexities(measured, fp32, bf16, split):
    from gpt2xl.perplexity import sliding_window_nll

    ids = split.token_ids[: CONFIG.ppl_max_tokens]
    a, b = (sliding_window_nll(m, ids, batch_size=4) for m in (fp32, bf16))
    expected = math.exp(b.nll_sum / b.tokens_scored) - math.exp(a.nll_sum / a.tokens_scored)
    row = compare(measured["fp32"], measured["bf16"], CONFIG)
    assert row["tokens_scored"] == a.tokens_scored == CONFIG.ppl_max_tokens - 5  # 5 windows, each first token unscored
    assert row["perplexity_delta"] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert row["perplexity_delta"] != 0.0  # bf16 rounds the weights: the test sees a real difference


def test_greedy_agreement_is_a_hand_count_over_two_generate_calls(measured, fp32, bf16, prompts) -> None:
    from gpt2xl.sampling import SamplingConfig, generate

    sampling = SamplingConfig(max_new_tokens=GRID.max_new_tokens, temperature=0.0)
    outs = [generate(m, [list(p.tokens) for p in prompts], sampling) for m in (fp32, bf16)]
    identical, divergences = 0, []
    for i in range(len(prompts)):
        a = outs[0].tokens[i] + ([EOT_TOKEN_ID] if outs[0].hit_eot[i] else [])
        b = outs[1].tokens[i] + ([EOT_TOKEN_ID] if outs[1].hit_eot[i] else [])
        if a == b:
            identical += 1
            continue
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        divergences.append(n)
    g = compare(measured["fp32"], measured["bf16"], CONFIG)["greedy"]
    assert g["identical"] == identical
    assert g["prompts"] == len(prompts)
    assert [d for d in g["first_divergence"] if d is not None] == divergences
    if divergences:
        assert g["mean_first_divergence"] == pytest.approx(sum(divergences) / len(divergences) / GRID.max_new_tokens)
    else:
        assert g["mean_first_divergence"] is None


def test_greedy_agreement_rules() -> None:
    def c(*tokens: int, eot: bool = False) -> Continuation:
        return Continuation(tokens=tokens, hit_eot=eot)

    reference = [c(1, 2, 3), c(1, 2, eot=True), c(1, 2, 3), c(5, 6), c(7, 8, eot=True)]
    other = [c(1, 2, 3), c(1, 2, 3), c(1, 9, 3), c(6, 6), c(7, 8, eot=True)]
    g = greedy_agreement(reference, other, max_new_tokens=4)
    # stopped at end-of-text where the other went on: they part at that token (index 2)
    assert g.first_divergence == (None, 2, 1, 0, None)
    assert (g.identical, g.identical_fraction) == (2, 0.4)
    assert g.mean_first_divergence == pytest.approx((2 + 1 + 0) / 3 / 4)
    with pytest.raises(ConfigError, match="same prompts"):
        greedy_agreement(reference, other[:2], max_new_tokens=4)


def test_metric_deltas_are_the_paired_difference_of_the_two_cells_and_lie_in_their_interval(measured, fp32, bf16,
                                                                                            prompts) -> None:
    cells = [run_grid(m, prompts, CONFIG.cell_grid)[0] for m in (fp32, bf16)]
    row = compare(measured["fp32"], measured["bf16"], CONFIG)
    differences = {}
    for m in INTERVAL_METRICS:
        a, b = cells[0].metrics[m.name], cells[1].metrics[m.name]
        assert a is not None, m.name
        assert b is not None, m.name
        expected = b - a
        d = row["deltas"][m.name]
        assert d["difference"] == pytest.approx(expected, rel=1e-9, abs=1e-12), m.name
        assert d["low"] <= d["difference"] <= d["high"], m.name
        assert row["metrics"][m.name] == pytest.approx(cells[1].metrics[m.name], rel=1e-9), m.name
        differences[m.name] = expected
    assert any(v != 0 for v in differences.values())  # the samples did part ways: not a 0 == 0 test
    # fp32's samples are the grid's own at that setting: the same shards and seeds
    assert [u.tokens for u in measured["fp32"].units] == [u.tokens for u in cells[0].samples]


def test_the_pipeline_reuses_given_models_and_loads_each_other_dtype_once(entry) -> None:
    assert entry["loaded"] == ["bf16", "fp16"]
    assert entry["rows"] == ["fp32", "bf16", "fp16"]
    assert [r["dtype"] for r in entry["dtypes"]] == entry["rows"]
    assert entry["dtypes"][0]["greedy"] is None
    assert entry["dtypes"][0]["deltas"] is None
    assert entry["perplexity_text"] == {"dataset": "tinyshakespeare", "tokens": 640, "context_length": 128,
                                        "stride": 128}
    assert entry["config"]["setting"] == {"temperature": 1.0, "top_k": 0, "top_p": 1.0}


def test_nan_in_a_dtype_is_a_numerical_error_naming_it(fp32, prompts, split) -> None:
    import torch

    broken = _load("fp16")
    with torch.no_grad():
        broken.transformer.wte.weight.mul_(1e4)  # logits beyond fp16's 65,504
    config = dataclasses.replace(CONFIG, dtypes=("fp32", "fp16"))
    with pytest.raises(NumericalError, match=r"The fp16 model of the precision comparison produced NaN or inf: .*"
                                             r"drop fp16 from --dtypes to compare the others\.$"):
        compare_precision(config, models={"fp32": fp32, "fp16": broken}, load=_load, prompts=prompts,
                          ppl_tokens=split.token_ids)


@pytest.mark.parametrize(
    ("dtypes", "needle"),
    [
        (("fp32", "fp32"), "lists 'fp32' twice"),
        (("fp32", "fp8"), "Unknown dtype 'fp8'"),
        (("bf16",), "must include fp32, the reference"),
        ((), "at least one dtype"),
    ],
)
def test_bad_dtypes_are_config_errors(dtypes, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        PrecisionConfig(dtypes=dtypes, grid=GRID)


def test_a_dtype_the_device_cannot_run_is_refused_before_any_work(monkeypatch) -> None:
    import torch

    import gpt2xl.devices
    from gpt2xl.evaluation import RunOptions

    probe = gpt2xl.devices._dtype_probe
    monkeypatch.setattr(gpt2xl.devices, "_dtype_probe",
                        lambda device, dtype: "no fp16 kernels" if dtype == torch.float16 else probe(device, dtype))
    with pytest.raises(ConfigError, match=r"^--dtypes lists fp16, which cpu cannot run here; drop fp16 from --dtypes "
                                          r"\(the device check said: .*\(no fp16 kernels\).*\)\.$"):
        RunOptions(model=str(TINY_SHAKESPEARE), data_dir=SHARED_DATA, device="cpu", dtype="fp32", threads=None,
                   grid=GRID, run_dir=None, ppl_datasets=(), stride=None, ppl_batch_size=4, ppl_max_tokens=None,
                   lambada_max_examples=0, dtypes=("fp32", "fp16"))


# ------------------------------------------------------------------ the report, beside bench.json's speeds


def _bench_doc(tmp_path):
    """bench/baselines/gate-cpu-AVX512.json (our cached sampler on random:gpt2, fp32, batch 1)
    with a bf16 twin of its case, read back through the bench reader."""
    from gpt2xl_app.compare import load_bench

    doc = json.loads((REPO / "bench" / "baselines" / "gate-cpu-AVX512.json").read_text())
    twin = copy.deepcopy(doc["benchmarks"][0])
    twin["name"] = twin["name"].replace("fp32", "bf16")
    twin["extra_info"].update(dtype="bf16", decode_tokens_per_s=61.25, decode_tokens_per_s_spread=0.5)
    doc["benchmarks"].append(twin)
    (tmp_path / "bench.json").write_text(json.dumps(doc))
    return load_bench(tmp_path / "bench.json")




def test_the_report_table_puts_each_dtype_beside_its_bench_speed(entry, tmp_path) -> None:
    from gpt2xl.evaluation import EVAL_SCHEMA
    from gpt2xl.results import schema_problem
    from gpt2xl_app.eval_report import precision_lines, render_eval_section

    assert schema_problem({"precision": entry}, {"precision": EVAL_SCHEMA["precision"]}) is None
    entry = copy.deepcopy(entry)
    bf16 = entry["dtypes"][1]
    bf16["deltas"]["distinct_2"].update(difference=-0.0125, low=-0.02, high=-0.005, significant=True)
    text = "\n".join(precision_lines(entry, _bench_doc(tmp_path)))
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0] == ("| dtype | perplexity | Δ vs fp32 | greedy identical | mean first divergence | "
                        + " | ".join(m.title for m in INTERVAL_METRICS) + " | decode tok/s (bench) |")
    rows = {line.split(" | ")[0][2:]: line for line in table[1:]}
    assert set(rows) == {"fp32 (reference)", "bf16", "fp16"}
    assert rows["fp32 (reference)"].endswith("| 35.7 ± 1.4 (random:gpt2, cpu, batch 1) |")
    assert rows["bf16"].endswith("| 61.2 ± 0.5 (random:gpt2, cpu, batch 1) |")
    assert rows["fp16"].endswith("| not in bench.json |")
    assert "| -0.013 [-0.020, -0.005] * |" in rows["bf16"]  # the significance mark, beside its interval
    g = bf16["greedy"]
    assert f"| {g['identical']}/{g['prompts']} (" in rows["bf16"]
    assert f"{bf16['perplexity']:.3f} | {bf16['perplexity_delta']:+.3f} (" in rows["bf16"]
    assert "Test: paired cluster bootstrap over the same prompts and seeds" in text
    assert "decode tok/s of our KV-cached sampler (`cached`)" in text
    # without bench.json: no speed column, and the section comes with the evaluation
    section = render_eval_section({"precision": entry}, tmp_path)
    assert "### Quality cost of precision" in section
    assert "decode tok/s" not in section


# ------------------------------------------------------------------ `gpt2xl eval run --dtypes`

RUN = ["--model", str(TINY_SHAKESPEARE), "--data-dir", str(SHARED_DATA), "--ppl-datasets", "tinyshakespeare",
       "--ppl-max-tokens", "300", "--temperatures", "1", "--top-ks", "0", "--top-ps", "1", "--seeds", "3", "--num-prompts", "3",
       "--prompt-tokens", "8", "--max-new-tokens", "6", "--batch-size", "3", "--no-progress", "--no-mauve"]


def _run(monkeypatch, capsys, run_dir, *extra):
    from gpt2xl_app import cli

    monkeypatch.setattr(sys, "argv", ["gpt2xl", "eval", "run", "--run-dir", str(run_dir), *RUN, *extra])
    with pytest.raises(SystemExit) as info:
        cli.main()
    out, err = capsys.readouterr()
    assert info.value.code in (0, None), err
    return json.loads((run_dir / "eval.json").read_text()), out, err


def test_eval_run_compares_the_dtypes_and_resumes_only_the_same_comparison(monkeypatch, capsys, tmp_path) -> None:
    import gpt2xl.precision

    doc, out, _ = _run(monkeypatch, capsys, tmp_path, "--dtypes", "fp32,bf16")
    precision = doc["precision"]
    assert [r["dtype"] for r in precision["dtypes"]] == ["fp32", "bf16"]
    assert precision["perplexity_text"]["tokens"] == 300  # --ppl-max-tokens, below the comparison's own cap
    assert "precision vs fp32 (T=1, k=all, p=1" in out
    assert f"  bf16: perplexity {precision['dtypes'][1]['perplexity']:.3f} (" in out
    assert "### Quality cost of precision" in (tmp_path / "report.md").read_text()

    def tripwire(*_args, **_kwargs):
        pytest.fail("the precision comparison was computed again")

    with monkeypatch.context() as m:
        m.setattr(gpt2xl.precision, "measure", tripwire)
        again, _, err = _run(monkeypatch, capsys, tmp_path, "--dtypes", "fp32,bf16", "--resume")
    assert again["precision"] == precision
    assert "the precision comparison" in again["reused"]["parts"]
    assert "the precision comparison from the earlier" in err
    # other settings are another comparison: computed, not reused
    other, _, _ = _run(monkeypatch, capsys, tmp_path, "--dtypes", "fp32,fp16", "--resume")
    assert [r["dtype"] for r in other["precision"]["dtypes"]] == ["fp32", "fp16"]
    assert "the precision comparison" not in other["reused"]["parts"]
    # fp32 alone compares nothing
    none, out, _ = _run(monkeypatch, capsys, tmp_path, "--dtypes", "fp32")
    assert none["precision"] is None
    assert "precision vs" not in out
    assert "Quality cost of precision" not in (tmp_path / "report.md").read_text()


def test_the_grid_is_saved_before_the_comparison_and_a_rerun_resumes_it(monkeypatch, capsys, tmp_path) -> None:
    import gpt2xl.grid
    import gpt2xl.precision
    from gpt2xl_app import cli

    with monkeypatch.context() as m:
        m.setattr(gpt2xl.precision, "measure", lambda *_a, **_k: (_ for _ in ()).throw(RuntimeError("killed")))
        m.setattr(sys, "argv", ["gpt2xl", "eval", "run", "--run-dir", str(tmp_path), *RUN, "--dtypes", "fp32,bf16"])
        with pytest.raises(RuntimeError, match="killed"):
            cli.main()
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert len(saved["grid"]["cells"]) == 1
    assert saved.get("precision") is None
    capsys.readouterr()

    def tripwire(*_args, **_kwargs):
        pytest.fail("the grid was computed again")

    with monkeypatch.context() as m:
        m.setattr(gpt2xl.grid, "human_units", tripwire)
        doc, _, _ = _run(monkeypatch, capsys, tmp_path, "--dtypes", "fp32,bf16", "--resume")
    assert doc["grid"] == saved["grid"]
    assert "the grid" in doc["reused"]["parts"]
    assert [r["dtype"] for r in doc["precision"]["dtypes"]] == ["fp32", "bf16"]
