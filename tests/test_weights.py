"""Model specs: random presets, bad directories, corrupt files, key/shape errors, the hub cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpt2xl.config import PRESETS, GPTConfig
from gpt2xl.errors import ConfigError, WeightsError
from gpt2xl.weights import load_model


def _copy_checkpoint(src, dst):
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(src / name, dst / name)
        os.chmod(dst / name, 0o644)  # ../shared is read-only; the copies are ours to edit
    return dst


def test_random_weights_are_seeded_and_labelled():
    a = load_model("random:tiny", seed=3)
    b = load_model("random:tiny", seed=3)
    c = load_model("random:tiny", seed=4)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["transformer.h.0.attn.c_attn.weight"], sc["transformer.h.0.attn.c_attn.weight"])
    assert a.source.is_random and "RANDOM" in a.source.label and a.source.seed == 3
    assert a.model.lm_head.weight is a.model.transformer.wte.weight
    w = a.model.transformer.h[0].mlp.c_fc.weight
    assert abs(w.std().item() - 0.02) < 0.005  # GPT-2's init scale


def test_presets_have_gpt2_sizes():
    assert PRESETS["gpt2"].num_parameters() == 124_439_808
    xl = PRESETS["gpt2-xl"]
    assert (xl.n_layer, xl.n_head, xl.n_embd, xl.block_size, xl.vocab_size) == (48, 25, 1600, 1024, 50257)
    assert xl.num_parameters() == 1_557_611_200
    with pytest.raises(ConfigError):
        GPTConfig(n_head=5, n_embd=64)


@pytest.mark.parametrize("spec", ["random:nope", "no-such-model", "./missing-dir/"])
def test_unknown_specs_raise_one_clear_error(spec):
    with pytest.raises((WeightsError, ConfigError)) as err:
        load_model(spec)
    assert len(str(err.value).splitlines()) == 1


def test_directory_without_config_or_weights(tmp_path, tiny_shakespeare_dir):
    with pytest.raises(WeightsError, match="no config.json"):
        load_model(str(tmp_path))
    shutil.copy(tiny_shakespeare_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(WeightsError, match="no weights"):
        load_model(str(tmp_path))


def test_corrupt_safetensors_is_reported(tmp_path, tiny_shakespeare_dir):
    ckpt = _copy_checkpoint(tiny_shakespeare_dir, tmp_path / "ckpt")
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated download
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_model(str(ckpt))


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny_shakespeare_dir):
    ckpt = _copy_checkpoint(tiny_shakespeare_dir, tmp_path / "ckpt")
    state = load_file(ckpt / "model.safetensors")
    del state["transformer.h.1.mlp.c_fc.bias"]
    state["transformer.h.1.mlp.extra"] = torch.zeros(3)
    save_file(state, ckpt / "model.safetensors")
    with pytest.raises(WeightsError) as err:
        load_model(str(ckpt))
    assert "transformer.h.1.mlp.c_fc.bias" in str(err.value) and "transformer.h.1.mlp.extra" in str(err.value)


def test_shape_mismatch_names_the_key(tmp_path, tiny_shakespeare_dir):
    ckpt = _copy_checkpoint(tiny_shakespeare_dir, tmp_path / "ckpt")
    config = json.loads((ckpt / "config.json").read_text())
    config["n_inner"] = 256  # the checkpoint's MLP is 512 wide
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError) as err:
        load_model(str(ckpt))
    message = str(err.value)
    # Counted once (not also as missing), with the first mismatch in the checkpoint's order.
    first = "transformer.h.0.mlp.c_fc.bias: checkpoint (512,), expected (256,)"
    assert f"12 keys of another shape (the first, {first})" in message
    assert "missing" not in message and "\n" not in message and len(message) < 400


def test_untied_lm_head_is_refused(tmp_path, tiny_shakespeare_dir):
    ckpt = _copy_checkpoint(tiny_shakespeare_dir, tmp_path / "ckpt")
    state = load_file(ckpt / "model.safetensors")
    state["lm_head.weight"] = state["transformer.wte.weight"] + 1.0
    save_file(state, ckpt / "model.safetensors")
    with pytest.raises(WeightsError, match="lm_head"):
        load_model(str(ckpt))


def test_other_architectures_are_refused(tmp_path, tiny_shakespeare_dir):
    ckpt = _copy_checkpoint(tiny_shakespeare_dir, tmp_path / "ckpt")
    config = json.loads((ckpt / "config.json").read_text())
    config["activation_function"] = "relu"
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="gelu_new"):
        load_model(str(ckpt))


def test_sharded_safetensors_checkpoint(tmp_path, tiny_shakespeare_dir, tiny_shakespeare):
    ckpt = tmp_path / "sharded"
    ckpt.mkdir()
    shutil.copy(tiny_shakespeare_dir / "config.json", ckpt / "config.json")
    state = load_file(tiny_shakespeare_dir / "model.safetensors")
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for name, shard_keys in shards.items():
        save_file({k: state[k] for k in shard_keys}, ckpt / name)
        weight_map.update({k: name for k in shard_keys})
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    loaded = load_model(str(ckpt))
    idx = torch.arange(10)[None]
    torch.testing.assert_close(loaded.model(idx), tiny_shakespeare.model(idx), rtol=0, atol=0)


def test_hub_name_loads_from_the_local_hf_cache_offline(tmp_path, tiny_shakespeare_dir):
    """The hub route for real: a snapshot laid out as huggingface_hub's cache, read with no network."""
    repo = tmp_path / "hub" / "models--someone--tiny-gpt2"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_shakespeare_dir / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    code = (
        "from gpt2xl.weights import load_model; lm = load_model('someone/tiny-gpt2'); "
        "print(lm.source.kind, lm.config.n_layer)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["pretrained", "4"]
