"""`gpt2xl generate` against bad and extreme input: one `error:` line and exit 2, before any work.

One test (or a few) per class of problem found by trying the command as an adversarial user:
numeric extremes, malformed checkpoint configs, unreadable files, shape mismatches and refused
pickles, shard paths escaping the checkpoint, non-finite logits, cropped prompts, runs too large
for memory, hub look-ups offline, and click's own usage errors. Where the exit status and stderr
matter the real CLI runs in a subprocess; the pure functions are tested directly.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from gpt2xl.errors import ConfigError, NumericalError, WeightsError
from gpt2xl.model import GPT, locate_nonfinite
from gpt2xl.sampling import SamplingConfig, generate, generate_reference, logits_to_probs, make_generator, sample_next
from gpt2xl.weights import load_model

from .conftest import TINY_SHAKESPEARE

NO_MODEL = "/nonexistent/gpt2xl-model"  # an option error must be reported before this is looked at


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpt2xl_app.cli", *args],
        capture_output=True, text=True, check=False, timeout=180, env={**os.environ, **(env or {})},
    )


def error_line(out: subprocess.CompletedProcess[str]) -> str:
    """The one `error:` line of a run that failed as a user error should (exit 2, no traceback)."""
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return lines[0]


def copy_checkpoint(dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(TINY_SHAKESPEARE / name, dst / name)
        os.chmod(dst / name, 0o644)  # ../shared is read-only; the copies are ours to edit
    return dst


def edit_config(ckpt: Path, doc: object) -> None:
    (ckpt / "config.json").write_text(json.dumps(doc))


# --- 1. numeric extremes --------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [5e-324, 1e-310, 1e-45, 1e-40, 1e-30])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_tiny_temperatures_give_the_greedy_distribution(temperature, dtype):
    logits = torch.randn(3, 50257, generator=torch.Generator().manual_seed(0)).to(dtype)
    probs = logits_to_probs(logits, temperature=temperature, top_k=None)
    assert torch.isfinite(probs).all()
    expected = torch.nn.functional.one_hot(logits.float().argmax(-1), 50257).float()
    assert torch.equal(probs, expected)
    drawn = sample_next(logits, temperature=temperature, top_k=40, generator=make_generator(1))
    assert torch.equal(drawn, logits.float().argmax(-1))


def test_tiny_temperature_shares_the_mass_between_tied_maxima_and_huge_is_uniform():
    logits = torch.tensor([[1.0, 7.0, 7.0, -3.0]])
    tied = torch.tensor([[0, 0.5, 0.5, 0]])
    torch.testing.assert_close(logits_to_probs(logits, temperature=5e-324, top_k=None), tied)
    torch.testing.assert_close(logits_to_probs(logits, temperature=1e308, top_k=None), torch.full((1, 4), 0.25))
    # top-k picks by the logits, before a huge temperature rounds them all to ties
    torch.testing.assert_close(logits_to_probs(logits, temperature=1e308, top_k=2), tied)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    logits=st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=1, max_size=12),
    temperature=st.floats(min_value=5e-324, allow_nan=False, allow_infinity=False),
    top_k=st.one_of(st.none(), st.integers(min_value=0, max_value=20)),
)
def test_finite_logits_never_give_nan_probabilities(logits, temperature, top_k):
    probs = logits_to_probs(torch.tensor([logits]), temperature=temperature, top_k=top_k)
    assert torch.isfinite(probs).all() and (probs >= 0).all()
    assert abs(probs.sum().item() - 1.0) < 1e-5
    assert probs[0, torch.tensor(logits).argmax()] > 0  # the most likely token always stays possible


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    logits=st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=1, max_size=12),
    temperature=st.floats(min_value=5e-324, allow_nan=False, allow_infinity=False),
    top_k=st.one_of(st.none(), st.integers(min_value=0, max_value=20)),
    top_p=st.floats(min_value=5e-324, max_value=1.0),  # down to p that float32 rounds to 0
)
def test_finite_logits_never_give_nan_probabilities_with_top_p(logits, temperature, top_k, top_p):
    row = torch.tensor([logits])
    probs = logits_to_probs(row, temperature=temperature, top_k=top_k, top_p=top_p)
    assert torch.isfinite(probs).all() and (probs >= 0).all()
    assert abs(probs.sum().item() - 1.0) < 1e-5
    assert (probs[row == row.max()] > 0).any()  # one of the most likely tokens always stays possible


def test_extreme_temperatures_run_end_to_end_and_tiny_equals_greedy():
    from gpt2xl.generation import run_generation

    def tokens(temperature: float) -> list[list[int]]:
        result = run_generation(
            "Hello", model="random:tiny", max_new_tokens=6, temperature=temperature, top_k=None, seed=3,
            num_samples=2, autotune="off",
        )
        return [s["tokens"] for s in result["samples"]]

    assert tokens(5e-324) == tokens(1e-45) == tokens(0.0)
    assert all(len(row) <= 6 for row in tokens(1e308))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--seed", str(2**64)], "seed must be an integer >= 0 and <= 9,223,372,036,854,775,807, got 1844674407370955"),
        (["--seed", "-1"], "seed must be an integer >= 0"),
        (["--temperature", "-1e-310"], "temperature must be a finite number >= 0"),
        (["--max-new-tokens", str(10**11)], "max_new_tokens must be an integer >= 0 and <= 1,000,000"),
        (["--top-k", "-1"], "top_k must be an integer >= 0"),
        (["--top-p", "0"], "top_p must be a number > 0 and <= 1, got 0.0;"),
        (["--top-p", "-1"], "top_p must be a number > 0 and <= 1, got -1.0;"),
        (["--top-p", "1.5"], "top_p must be a number > 0 and <= 1, got 1.5;"),
        (["--top-p", "nan"], "top_p must be a number > 0 and <= 1, got nan;"),
        (["--top-p", "inf"], "top_p must be a number > 0 and <= 1, got inf;"),
        (["--num-samples", "0"], "num_samples must be an integer >= 1"),
    ],
)
def test_out_of_range_options_fail_before_the_model_is_looked_at(args, needle):
    line = error_line(run_cli("generate", "x", "--model", NO_MODEL, *args))
    assert needle in line


def test_library_seeds_and_token_ids_outside_their_domain_are_user_errors():
    from gpt2xl.errors import TokenizerError
    from gpt2xl.tokenizer import decode

    for seed in (-1, 2**64, 1.5):
        with pytest.raises(ConfigError, match="seed must be an integer >= 0"):
            make_generator(seed)  # type: ignore[arg-type]
    with pytest.raises(TokenizerError, match="Token id 50300 is outside GPT-2's vocabulary of 50257 tokens"):
        decode([1, 50300])


# --- 2. malformed checkpoint config.json and unreadable files ---------------------------------


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ([1, 2], "holds a JSON array, not an object"),
        ("gpt2", "holds a JSON string, not an object"),
        (None, "holds a JSON null, not an object"),
        (12, "holds a JSON number, not an object"),
        ({"n_layer": "x"}, "field 'n_layer' must be an integer in [1, 2,147,483,647], got 'x'."),
        ({"n_layer": 1.5}, "field 'n_layer' must be an integer in [1, 2,147,483,647], got 1.5."),
        ({"n_layer": True}, "field 'n_layer' must be an integer in [1, 2,147,483,647], got True."),
        ({"n_layer": -3}, "field 'n_layer' must be an integer in [1, 2,147,483,647], got -3."),
        ({"n_layer": None}, "field 'n_layer' must be an integer in [1, 2,147,483,647], got None."),
        ({"n_layer": 10**30}, "field 'n_layer' must be an integer in [1, 2,147,483,647]"),
        ({"n_embd": None}, "field 'n_embd' must be an integer"),
        ({"n_positions": "1024"}, "field 'n_positions' must be an integer"),
        ({"vocab_size": 100}, "field 'vocab_size' is 100, fewer than the 50257 tokens"),
        ({"layer_norm_epsilon": "tiny"}, "field 'layer_norm_epsilon' must be a finite number > 0"),
        ({"n_embd": 130}, "field 'n_embd' (130) must be divisible by 'n_head' (4)"),
        ({"n_embd": "drop"}, "lacks the field 'n_embd' that a GPT-2 config needs"),
    ],
)
def test_malformed_config_json_names_the_file_and_field(tmp_path, doc, needle):
    ckpt = copy_checkpoint(tmp_path / "ckpt")
    if isinstance(doc, dict):
        base = json.loads((ckpt / "config.json").read_text())
        for field, value in doc.items():
            if value == "drop":
                del base[field]
            else:
                base[field] = value
        doc = base
    edit_config(ckpt, doc)
    with pytest.raises(ConfigError) as err:
        load_model(str(ckpt), autotune="off")
    message = str(err.value)
    assert message.startswith(str(ckpt / "config.json")) and needle in message and "\n" not in message


def test_malformed_config_json_through_the_cli(tmp_path):
    ckpt = copy_checkpoint(tmp_path / "ckpt")
    edit_config(ckpt, [1, 2])
    line = error_line(run_cli("generate", "x", "--model", str(ckpt)))
    assert line == (
        f"error: {ckpt / 'config.json'} holds a JSON array, not an object of GPT-2 settings; "
        "pass a Hugging Face GPT-2 checkpoint directory."
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permission bits")
def test_unreadable_config_says_permission_not_missing(tmp_path):
    ckpt = copy_checkpoint(tmp_path / "ckpt")
    os.chmod(ckpt / "config.json", 0)
    line = error_line(run_cli("generate", "x", "--model", str(ckpt)))
    assert "permission denied" in line and "no config.json" not in line


def test_a_permission_error_is_reported_as_such(tmp_path, monkeypatch):
    """What the test above checks, under root too: the OSError that reading raises is named."""
    ckpt = copy_checkpoint(tmp_path / "ckpt")
    real_open = open

    def deny_weights(path, *args, **kwargs):
        if str(path).endswith("model.safetensors"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", deny_weights)
    with pytest.raises(WeightsError, match="permission denied; make it readable") as err:
        load_model(str(ckpt), autotune="off")
    assert "No such file" not in str(err.value)


@pytest.mark.parametrize("damage", ["directory", "empty", "truncated"])
def test_weight_file_that_is_a_directory_empty_or_truncated(tmp_path, damage):
    ckpt = copy_checkpoint(tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.unlink()
    if damage == "directory":
        weights.mkdir()
    else:
        weights.write_bytes(b"" if damage == "empty" else data[: len(data) // 3])
    with pytest.raises(WeightsError) as err:
        load_model(str(ckpt), autotune="off")
    message = str(err.value)
    assert "\n" not in message
    expected = "is a directory, not a weights file" if damage == "directory" else "is not a readable safetensors file"
    assert expected in message


# --- 3. shape mismatch and refused pickles -----------------------------------------------------


def test_shape_mismatch_is_one_short_line(tmp_path):
    ckpt = copy_checkpoint(tmp_path / "ckpt")
    config = json.loads((ckpt / "config.json").read_text())
    edit_config(ckpt, {**config, "n_layer": 2})  # the checkpoint holds 4 layers
    line = error_line(run_cli("generate", "x", "--model", str(ckpt)))
    assert len(line) < 400
    assert "24 unexpected keys (transformer.h.2.attn.c_attn.bias, " in line and "and 21 more" in line
    assert line.count("transformer.h.2.attn.c_attn.bias") == 1


def test_pickle_with_objects_is_refused_for_safety(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(TINY_SHAKESPEARE / "config.json", ckpt / "config.json")
    torch.save({"transformer.wte.weight": torch.zeros(2), "extra": Path("/")}, ckpt / "pytorch_model.bin")
    line = error_line(run_cli("generate", "x", "--model", str(ckpt)))
    assert "holds non-tensor Python objects" in line and "refused for safety" in line
    assert "weights_only" not in line


# --- 4. sharded checkpoints ----------------------------------------------------------------------


def _sharded(tmp_path: Path, shard_name: str) -> Path:
    ckpt = tmp_path / "sharded"
    ckpt.mkdir()
    shutil.copy(TINY_SHAKESPEARE / "config.json", ckpt / "config.json")
    keys = load_file(TINY_SHAKESPEARE / "model.safetensors")
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": dict.fromkeys(keys, shard_name)}))
    return ckpt


@pytest.mark.parametrize("where", ["absolute", "parent", "symlink"])
def test_shards_outside_the_checkpoint_are_refused(tmp_path, where):
    outside = tmp_path / "outside.safetensors"
    shutil.copy(TINY_SHAKESPEARE / "model.safetensors", outside)
    name = {"absolute": str(outside), "parent": "../outside.safetensors", "symlink": "model-1.safetensors"}[where]
    ckpt = _sharded(tmp_path, name)
    if where == "symlink":
        (ckpt / "model-1.safetensors").symlink_to(outside)
    with pytest.raises(WeightsError) as err:
        load_model(str(ckpt), autotune="off")
    assert f"names the shard {name!r}, which lies outside the checkpoint directory" in str(err.value)


def test_shards_linked_into_the_hf_cache_blob_store_still_load(tmp_path):
    repo = tmp_path / "hub" / "models--someone--sharded"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots").mkdir()
    shutil.copy(TINY_SHAKESPEARE / "model.safetensors", repo / "blobs" / "0123abcd")
    snapshot = _sharded(tmp_path, "model-1.safetensors").rename(repo / "snapshots" / "c0ffee")
    (snapshot / "model-1.safetensors").symlink_to("../../blobs/0123abcd")
    assert load_model(str(snapshot), autotune="off").config.n_layer == 4


def test_shard_outside_the_checkpoint_through_the_cli(tmp_path):
    ckpt = _sharded(tmp_path, "/etc/hostname")
    assert "refused: shard files must sit inside the checkpoint directory" in error_line(
        run_cli("generate", "x", "--model", str(ckpt))
    )


@pytest.mark.parametrize(
    ("index", "needle"),
    [
        ("{not json", "is not valid JSON"),
        ("[]", 'needs a non-empty "weight_map" object'),
        ('{"weight_map": {}}', 'needs a non-empty "weight_map" object'),
        ('{"weight_map": {"a": 3}}', "maps a tensor to 3, not a shard file name"),
    ],
)
def test_malformed_index_json(tmp_path, index, needle):
    ckpt = _sharded(tmp_path, "model-1.safetensors")
    (ckpt / "model.safetensors.index.json").write_text(index)
    with pytest.raises(WeightsError) as err:
        load_model(str(ckpt), autotune="off")
    assert needle in str(err.value) and "\n" not in str(err.value)


# --- 5. non-finite logits ------------------------------------------------------------------------


def _poisoned(module: str, value: float) -> GPT:
    model = load_model("random:tiny", autotune="off").model
    with torch.no_grad():
        model.get_submodule(f"transformer.{module}").weight[0, 0] = value
    return model


def test_the_first_nan_layer_is_named():
    model = _poisoned("h.1.attn.c_proj", float("nan"))
    found = locate_nonfinite(model, torch.tensor([[1, 2, 3]]))
    assert found is not None and found.module == "h.1.attn.c_proj" and found.value == "NaN"
    assert found.bad_parameters == ("weight",) and not found.from_input
    assert found.describe() == "h.1.attn.c_proj produced NaN (its weight holds NaN or inf)"
    assert locate_nonfinite(load_model("random:tiny", autotune="off").model, torch.tensor([[1, 2, 3]])) is None


def test_nan_made_between_modules_names_the_module_it_reaches():
    model = load_model("random:tiny", autotune="off").model
    with torch.no_grad():  # finite weights whose q . k overflows: the attention's softmax makes NaN
        model.transformer.h[0].attn.c_attn.bias.fill_(3e38)
    found = locate_nonfinite(model, torch.tensor([[1, 2, 3]]))
    assert found is not None and found.module == "h.0.attn.c_proj" and found.from_input and not found.bad_parameters
    assert found.describe() == (
        "NaN first appears in the input of h.0.attn.c_proj (made by the attention, GELU or residual sum before it)"
    )
    with pytest.raises(NumericalError, match="the activations exceed float32's range"):
        generate(model, [[1, 2, 3]], SamplingConfig(max_new_tokens=2, temperature=0))


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_both_loops_stop_at_nan_logits_with_the_same_error(temperature):
    model = _poisoned("h.1.mlp.c_proj", float("nan"))
    cfg = SamplingConfig(max_new_tokens=4, temperature=temperature)
    errors = []
    for loop in (generate, generate_reference):
        with pytest.raises(NumericalError) as err:
            loop(model, [[5, 6, 7]], cfg, generator=make_generator(0))
        errors.append(str(err.value))
    assert errors[0] == errors[1]
    assert errors[0].startswith("Generation stopped at new token 1: h.1.mlp.c_proj produced NaN")


def test_nan_weights_stop_the_cli_instead_of_printing_garbage(tmp_path):
    ckpt = copy_checkpoint(tmp_path / "ckpt")
    state = load_file(ckpt / "model.safetensors")
    state["transformer.h.2.mlp.c_fc.weight"][3, 4] = float("nan")
    save_file(state, ckpt / "model.safetensors")
    out = run_cli("generate", "ROMEO:", "--model", str(ckpt), "--temperature", "0", "--max-new-tokens", "5")
    assert error_line(out) == (
        "error: Generation stopped at new token 1: h.2.mlp.c_fc produced NaN (its weight holds NaN or inf); "
        "the checkpoint is corrupt: download or convert it again."
    )
    assert out.stdout == ""


# --- 6. a prompt longer than the context ---------------------------------------------------------


def test_cropped_prompt_is_reported_on_stderr_and_in_json():
    from gpt2xl.tokenizer import encode

    prompt = "To be, or not to be, that is the question. " * 20
    n = len(encode(prompt))
    assert n > 128  # the tiny model's context
    out = run_cli("generate", prompt, "--model", str(TINY_SHAKESPEARE), "--max-new-tokens", "2", "--json")
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"warning: the prompt has {n} tokens but the model's context holds 128; its first {n - 128} tokens were dropped."
    ]
    doc = json.loads(out.stdout)
    assert doc["prompt_cropped"] == {"kept_tokens": 128, "dropped_tokens": n - 128}
    assert len(doc["prompt_tokens"]) == n


def test_short_prompt_is_not_reported_as_cropped():
    from gpt2xl.generation import run_generation

    result = run_generation(
        "Hi", model="random:tiny", max_new_tokens=1, temperature=0, top_k=None, seed=0, autotune="off"
    )
    assert result["prompt_cropped"] is None


# --- 7. memory -----------------------------------------------------------------------------------


def test_sample_count_too_large_for_memory_is_refused_before_loading():
    line = error_line(run_cli("generate", "x", "--model", "random:gpt2-xl", "--num-samples", str(10**7)))
    assert line.startswith("error: Generating 10,000,000 samples of 50 tokens with random:gpt2-xl needs about ")
    assert line.endswith("available; lower --num-samples or --max-new-tokens.")


# --- 8. hub look-ups offline ---------------------------------------------------------------------


@pytest.mark.parametrize("offline", [False, True])
def test_hub_lookup_offline_fails_fast_with_one_line(tmp_path, offline):
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_ENDPOINT": "https://hub.invalid"}  # .invalid never resolves
    env = {k: v for k, v in {**os.environ, **env}.items() if k != "HF_HUB_OFFLINE"}
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    out = subprocess.run(
        [sys.executable, "-m", "gpt2xl_app.cli", "generate", "x", "--model", "someone/model"],
        capture_output=True, text=True, check=False, timeout=60, env=env,
    )
    line = error_line(out)
    assert line.startswith("error: Cannot load 'someone/model': not in the local Hugging Face cache")
    assert ("HF_HUB_OFFLINE is set" if offline else "https://hub.invalid is unreachable (offline)") in line
    # The look-up alone, timed in a fresh process: the probe gives up after 1.5 s, no retries.
    probe = (
        "import time; from gpt2xl.errors import WeightsError; from gpt2xl.weights import load_model\n"
        "t = time.perf_counter()\n"
        "try:\n    load_model('gpt2-xl', autotune='off')\nexcept WeightsError:\n    print(time.perf_counter() - t)"
    )
    timed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=60, env=env
    )
    assert timed.returncode == 0 and timed.stderr == "", timed.stderr
    assert float(timed.stdout) < 3.0


# --- 9. usage errors and internal bugs -----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["generate", "x", "--temperature", "abc"], "Invalid value for '--temperature'"),
        (["generate", "x", "--bogus"], "No such option: --bogus"),
        (["generate"], "Missing argument"),
    ],
)
def test_usage_errors_are_one_line(args, needle):
    line = error_line(run_cli(*args))
    assert needle in line and line.endswith("generate --help`.")


def test_internal_bugs_keep_their_traceback():
    code = (
        "import sys, gpt2xl.generation as g, gpt2xl_app.cli as cli\n"
        "def bug(*args, **kwargs):\n    raise ZeroDivisionError('a bug')\n"
        "g.run_generation = bug\n"
        "sys.argv = ['gpt2xl', 'generate', 'x', '--model', 'random:tiny']\n"
        "cli.main()"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120)
    assert out.returncode == 1
    assert "Traceback" in out.stderr and "ZeroDivisionError: a bug" in out.stderr and "error:" not in out.stderr
