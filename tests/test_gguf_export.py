"""The GGUF export holds our exact weights, is cached by content, and llama.cpp runs it as our model.

The round-trip tests need only ``gguf`` (pure Python, a dev dependency); the llama.cpp tests skip
without ``llama-cpp-python`` (the ``peers`` extra, a compiled package).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from gpt2xl.config import EOT_TOKEN_ID, GPT2_VOCAB_SIZE
from gpt2xl.errors import ConfigError
from gpt2xl.gguf_export import GGUFContents, export_gguf, gguf_tensor_name, read_gguf, weights_sha256
from gpt2xl.weights import load_model
from tests.conftest import TINY_SHAKESPEARE

gguf = pytest.importorskip("gguf", reason="gguf is a dev dependency: pip install -e '.[dev]'")


@pytest.fixture(scope="module")
def models():
    """The models these tests use, loaded once and before any test points the cache at its
    tmp_path (loading may build and cache native kernels; exports must not touch the user's
    cache). Tests that change a model change a deep copy."""
    loaded = {
        name: load_model(spec, seed=seed, dtype=dtype, autotune="off").model
        for name, (spec, seed, dtype) in {
            "tiny0": ("random:tiny", 0, "fp32"),
            "tiny1": ("random:tiny", 1, "fp32"),
            "tiny2": ("random:tiny", 2, "fp32"),
            "tiny1-bf16": ("random:tiny", 1, "bf16"),
        }.items()
    }
    if (TINY_SHAKESPEARE / "model.safetensors").is_file():
        loaded["shakespeare"] = load_model(str(TINY_SHAKESPEARE), autotune="off").model  # fp32
    return loaded


@pytest.fixture(autouse=True)
def _cache(models, tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2XL_CACHE_DIR", str(tmp_path))
    return tmp_path


def _flip_storage(model, names=("attn.c_attn", "mlp.c_proj")) -> None:
    """Store some block projections in the other order ([in, out] <-> [out, in]), same values:
    the export must read logical [out, in] whatever the strides (the tuner may pick either)."""
    for block in model.transformer.h:
        for name in names:
            lin = block.get_submodule(name)
            w = lin.weight.detach()
            w = w.t().contiguous().t() if w.is_contiguous() else w.contiguous()
            lin.weight = torch.nn.Parameter(w, requires_grad=False)


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    """``weight_type -> (model, GGUFContents)`` for random:tiny, each file exported and read once
    (gguf's reader takes ~1 s to parse the vocabulary)."""
    model = copy.deepcopy(models["tiny1"])
    _flip_storage(model)
    done: dict[tuple[str, str], tuple[object, GGUFContents]] = {}

    def get(weight_type: str, dtype: str = "fp32"):
        if (weight_type, dtype) not in done:
            m = model if dtype == "fp32" else models[f"tiny1-{dtype}"]
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("GPT2XL_CACHE_DIR", str(tmp_path_factory.mktemp("gguf")))
                done[weight_type, dtype] = m, read_gguf(export_gguf(m, weight_type=weight_type))
        return done[weight_type, dtype]

    return get


@pytest.fixture
def llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python (the peers extra) is not installed")


def _pairs(model, tensors):
    """(GGUF name, our tensor, theirs) for every exported tensor."""
    for name, p in model.state_dict().items():
        gguf_name = gguf_tensor_name(name)
        if gguf_name is not None:
            yield gguf_name, p, tensors[gguf_name]


def test_f32_round_trip_is_exact(exported) -> None:
    model, read = exported("f32")
    assert not model.transformer.h[0].attn.c_attn.weight.is_contiguous()  # strided storage is covered
    cfg = model.config
    assert len(read.tensors) == 2 + 2 + 12 * cfg.n_layer  # embeddings, output_norm, 12 per block
    assert "output.weight" not in read.tensors  # tied: llama.cpp's gpt2 loader reuses token_embd
    assert read.tensors["blk.1.ffn_down.weight"].shape == (cfg.n_embd, cfg.mlp_width)  # nn.Linear's [out, in]
    for name, ours, theirs in _pairs(model, read.tensors):
        assert np.array_equal(theirs, ours.numpy()), name
    assert set(read.types.values()) == {"F32"}


@pytest.mark.parametrize(("weight_type", "dtype"), [("f16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_round_trip_equals_our_cast(exported, weight_type, dtype) -> None:
    model, read = exported(weight_type)
    for name, ours, theirs in _pairs(model, read.tensors):
        matrix = ours.dim() == 2 and name != "position_embd.weight"  # llama.cpp's converter keeps these F32
        assert read.types[name] == (weight_type.upper() if matrix else "F32"), name
        expected = ours.to(dtype).float() if matrix else ours
        assert np.array_equal(theirs, expected.numpy()), name


def test_bf16_model_exports_its_own_bits(exported) -> None:
    model, read = exported("bf16", "bf16")
    for name, ours, theirs in _pairs(model, read.tensors):
        assert np.array_equal(theirs, ours.float().numpy()), name


def test_q8_0_is_within_its_error_bound(exported) -> None:
    model, read = exported("q8_0")
    types = read.types
    assert types["token_embd.weight"] == "Q8_0" and types["blk.0.attn_qkv.weight"] == "Q8_0"
    assert types["position_embd.weight"] == "F32" and types["blk.0.attn_qkv.bias"] == "F32"
    for name, ours, theirs in _pairs(model, read.tensors):
        if types[name] == "F32":
            assert np.array_equal(theirs, ours.numpy()), name
            continue
        x = ours.numpy().reshape(-1, 32)  # Q8_0 blocks: 32 values, one scale d = max|x| / 127
        err = np.abs(theirs.reshape(-1, 32) - x)
        # rounding to the int8 grid costs <= d/2; d stored as fp16 (rel. error 2^-11) adds <= 127 d 2^-11
        bound = np.abs(x).max(axis=1, keepdims=True) / 127 * (0.5 + 127 * 2.0**-11) + 1e-12
        assert (err <= bound).all(), name
        assert err.max() > 0  # really quantized


def test_vocabulary_and_hyperparameters(exported) -> None:
    model, read = exported("f32")
    meta = read.metadata
    cfg = model.config
    assert meta["general.architecture"] == "gpt2"
    assert meta["gpt2.block_count"] == cfg.n_layer and meta["gpt2.context_length"] == cfg.block_size
    assert meta["gpt2.embedding_length"] == cfg.n_embd and meta["gpt2.feed_forward_length"] == cfg.mlp_width
    assert meta["gpt2.attention.head_count"] == cfg.n_head
    assert meta["gpt2.attention.layer_norm_epsilon"] == pytest.approx(cfg.layer_norm_epsilon)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.bos_token_id"] == meta["tokenizer.ggml.eos_token_id"] == EOT_TOKEN_ID
    assert meta["gpt2xl.weights_sha256"] == weights_sha256(model)
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == GPT2_VOCAB_SIZE
    assert tokens[EOT_TOKEN_ID] == "<|endoftext|>" and types[EOT_TOKEN_ID] == gguf.TokenType.CONTROL
    assert tokens[262] == "\u0120the" and types[262] == gguf.TokenType.NORMAL  # byte-level BPE strings
    merges = meta["tokenizer.ggml.merges"]
    assert len(merges) == 50000 and merges[0] == "\u0120 t"


def test_cache_reuses_by_content(models, _cache) -> None:
    model = models["tiny1"]
    path = export_gguf(model, weight_type="f32")
    mtime = path.stat().st_mtime_ns
    assert export_gguf(model, weight_type="f32") == path
    assert path.stat().st_mtime_ns == mtime  # reused, not rewritten
    assert path.parent == _cache / "gguf"
    assert export_gguf(models["tiny2"], weight_type="f32") != path
    assert export_gguf(model, weight_type="q8_0") != path
    assert not list(path.parent.glob("*.tmp"))  # temp files renamed or removed


def test_digest_ignores_storage_strides_not_values(models) -> None:
    a = models["tiny1"]
    b = copy.deepcopy(a)
    _flip_storage(b)
    assert a.transformer.h[0].attn.c_attn.weight.stride() != b.transformer.h[0].attn.c_attn.weight.stride()
    assert weights_sha256(a) == weights_sha256(b)
    with torch.no_grad():
        b.transformer.h[1].mlp.c_fc.weight[3, 5] += 1e-3
    assert weights_sha256(a) != weights_sha256(b)
    assert weights_sha256(a) != weights_sha256(models["tiny1-bf16"])


def test_bad_weight_type_is_a_config_error(models) -> None:
    with pytest.raises(ConfigError, match="q4_0"):
        export_gguf(models["tiny0"], weight_type="q4_0")


# --- llama.cpp ---------------------------------------------------------------------------------


@pytest.mark.skipif(not (TINY_SHAKESPEARE / "model.safetensors").is_file(), reason=f"{TINY_SHAKESPEARE} is absent")
def test_llamacpp_greedy_equals_ours_on_trained_weights(models, llama_cpp) -> None:
    from bench.llamacpp import make_llamacpp_runner
    from gpt2xl.sampling import SamplingConfig, generate
    from gpt2xl.tokenizer import encode

    model = models["shakespeare"]
    cfg = SamplingConfig(max_new_tokens=24, temperature=0, stop_at_eot=False)
    # threads=1: llama.cpp's OpenMP workers spin while they wait, and on a busy 2-core machine
    # (another test run beside this one) 2 threads made this test 8x slower.
    prompts = (
        "ROMEO:",
        "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\n",
        "KING HENRY:\nWhat say you, lords?",
    )
    for text in prompts:
        prompt = encode(text)
        runner = make_llamacpp_runner(
            model, prompt, new_tokens=24, temperature=0, top_k=0, seed=0, weight_type="f32", threads=1
        )
        try:
            theirs = runner()
            # First-step logits agree to ~1e-4 of their scale (measured max 2.1e-3 absolute on logits
            # of magnitude ~20), not to fp32 rounding: ggml's CPU GELU rounds its input to fp16 and
            # reads a table (GGML_GELU_FP16 in ggml-cpu/vec.h), and llama.cpp keeps K/V in f16 by
            # default. 1e-2 still sits far below the top-2 gaps (> 1) that decide these argmaxes.
            with torch.inference_mode():
                ours_logits = model(torch.tensor([prompt]), last_only=True)[0, -1].numpy()
            np.testing.assert_allclose(runner.prompt_logits(), ours_logits, atol=1e-2, rtol=0)
        finally:
            runner.close()
        ours = generate(model, [prompt], cfg).tokens[0]
        assert list(theirs.tokens) == ours, text


def test_llamacpp_round_is_fixed_length_and_timed(models, llama_cpp) -> None:
    from bench.llamacpp import make_llamacpp_runner, peer_info

    model = models["tiny0"]
    runner = make_llamacpp_runner(
        model, [1, 2, 3, 4], new_tokens=12, temperature=0.8, top_k=40, seed=0, weight_type="q8_0", threads=1
    )
    try:
        first, second = runner(), runner()
        info = runner.info()
    finally:
        runner.close()
    assert len(first.tokens) == 12 and all(0 <= t < GPT2_VOCAB_SIZE for t in first.tokens)
    assert first.prefill_s > 0 and first.decode_s > 0
    assert len(first.token_times_s) == 12 and all(b > a for a, b in zip(first.token_times_s, first.token_times_s[1:]))
    assert first.token_times_s[0] == first.prefill_s
    assert first.decode_s == pytest.approx(first.token_times_s[-1] - first.prefill_s)
    assert second.tokens == first.tokens  # a fresh sampler per round, seeded alike
    assert info["gguf_type"] == "q8_0" and info["gguf_bytes"] > 0 and info["system_info"]
    assert peer_info()["llama_cpp_python"] == llama_cpp.__version__


def test_llamacpp_refuses_batches_and_overlong_runs(models, llama_cpp) -> None:
    from bench.llamacpp import make_llamacpp_runner

    model = models["tiny0"]
    kw = dict(temperature=0.8, top_k=40, seed=0, weight_type="f32", threads=2)
    with pytest.raises(ValueError, match="batch size 1"):
        make_llamacpp_runner(model, [1, 2], new_tokens=4, batch_size=2, **kw)
    with pytest.raises(ValueError, match="prompt"):
        make_llamacpp_runner(model, [1] * 100, new_tokens=30, **kw)  # 129 > block_size 128


def test_peer_unavailable_without_llama_cpp_or_off_cpu(models, monkeypatch) -> None:
    import sys

    from bench.llamacpp import PeerUnavailable, make_llamacpp_runner

    model = models["tiny0"]
    kw = dict(new_tokens=4, temperature=0.8, top_k=40, seed=0, weight_type="f32", threads=1)
    with monkeypatch.context() as mp:
        mp.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
        with pytest.raises(PeerUnavailable, match="not installed"):
            make_llamacpp_runner(model, [1, 2], **kw)
    with pytest.raises(PeerUnavailable, match="CPU"):
        make_llamacpp_runner(copy.deepcopy(model).to("meta"), [1, 2], **kw)
