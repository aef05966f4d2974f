"""Our GPT-2 against transformers' GPT2LMHeadModel on identical weights.

Checkpoints are written locally with ``save_pretrained`` (random HF models of several shapes,
including XL's width and head count) and read from ``../shared/models`` (a trained model, in
today's layout and in the legacy hub layout). Tolerances: fp32 max |logit diff| <= 1e-4 and
20 greedy tokens identical (minGPT's parity levels).
"""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gpt2xl.sampling import SamplingConfig, generate, generate_reference
from gpt2xl.weights import load_model

from .conftest import TINY_SHAKESPEARE, TINY_SHAKESPEARE_LEGACY

SHAPES = {
    # name: (n_layer, n_head, n_embd, n_positions, n_inner)
    "tiny": (2, 4, 64, 64, None),
    "odd": (3, 3, 96, 40, 200),  # non-default MLP width, short context
    "xl-width": (2, 25, 1600, 128, None),  # gpt2-xl's width and heads (head size 64), 2 layers
}


def _save_hf_checkpoint(tmp_path, name: str, *, safe: bool = True):
    n_layer, n_head, n_embd, n_positions, n_inner = SHAPES[name]
    torch.manual_seed(1234)
    config = GPT2Config(
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions, n_inner=n_inner, vocab_size=50257
    )
    hf = GPT2LMHeadModel(config).eval()
    # HF zero-initialises biases and sets LayerNorms to 1/0: perturb them so a mix-up would show.
    with torch.no_grad():
        for pname, p in hf.named_parameters():
            if pname.endswith("bias") or ".ln_" in pname:
                p.add_(torch.randn_like(p) * 0.05)
    # Function-scoped: the xl-width checkpoint is half a GB, removed as soon as its test passes.
    path = tmp_path / f"hf-{name}-{'st' if safe else 'bin'}"
    hf.save_pretrained(path)
    if not safe:  # transformers 5 writes safetensors only; write the legacy pickle format by hand
        (path / "model.safetensors").unlink()
        torch.save(hf.state_dict(), path / "pytorch_model.bin")
    return hf, path


def _check_parity(hf: GPT2LMHeadModel, path, *, block_size: int) -> None:
    ours = load_model(str(path))
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 50257, (2, min(block_size, 37)), generator=g)  # (B, T)
    with torch.no_grad():
        want = hf(idx).logits
        got = ours.model(idx)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-4

    prompt = idx[:1, :5]
    n = min(20, block_size - prompt.shape[1])
    hf_tokens = hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=50256)
    cfg = SamplingConfig(max_new_tokens=n, temperature=0.0, stop_at_eot=False)
    ours_tokens = generate(ours.model, prompt.tolist(), cfg).tokens[0]
    assert ours_tokens == hf_tokens[0, prompt.shape[1] :].tolist()


@pytest.mark.parametrize("name", list(SHAPES))
def test_logits_and_greedy_match_transformers(tmp_path, name):
    hf, path = _save_hf_checkpoint(tmp_path, name)
    _check_parity(hf, path, block_size=SHAPES[name][3])


def test_pytorch_model_bin_checkpoint_loads_with_weights_only(tmp_path):
    hf, path = _save_hf_checkpoint(tmp_path, "tiny", safe=False)
    assert (path / "pytorch_model.bin").is_file() and not (path / "model.safetensors").exists()
    _check_parity(hf, path, block_size=SHAPES["tiny"][3])


@pytest.mark.parametrize("folder", [TINY_SHAKESPEARE, TINY_SHAKESPEARE_LEGACY], ids=["today", "legacy"])
def test_shared_trained_checkpoint_matches_transformers(folder):
    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    _check_parity(hf, folder, block_size=128)


@pytest.mark.parametrize("layout", ["in_out", "out_in"])
def test_weight_layout_does_not_change_logits(tiny_shakespeare_dir, layout):
    ref = load_model(str(tiny_shakespeare_dir), autotune="off")
    other = load_model(str(tiny_shakespeare_dir), layout=layout)
    assert other.layout == layout
    idx = torch.arange(100, 164)[None]  # (1, 64)
    with torch.no_grad():
        torch.testing.assert_close(other.model(idx), ref.model(idx), rtol=0, atol=2e-5)


@pytest.mark.parametrize("rows", [1, 16])
def test_tuned_kernels_match_plain_pytorch(tiny_shakespeare_dir, rows):
    """Whatever the tuner picked here (native, split or linear kernels, either layout) computes
    the logits PyTorch's own kernels compute, for a decode step and a prefill; and the same
    model with its kernels switched off is plain PyTorch again."""
    tuned = load_model(str(tiny_shakespeare_dir))
    plain = load_model(str(tiny_shakespeare_dir), autotune="off")
    idx = torch.arange(500, 500 + rows)[None]  # (1, rows)
    with torch.no_grad():
        torch.testing.assert_close(tuned.model(idx), plain.model(idx), rtol=0, atol=2e-5)
        with tuned.model.kernels_off():
            assert all(not p.kernels_enabled for p in tuned.model.projections())
            torch.testing.assert_close(tuned.model(idx), plain.model(idx), rtol=0, atol=2e-5)
    assert all(p.kernels_enabled for p in tuned.model.projections())


def test_kv_cache_logits_equal_full_forward_at_every_position(tiny_shakespeare):
    model = tiny_shakespeare.model
    idx = torch.randint(0, 50257, (3, 128), generator=torch.Generator().manual_seed(1))  # (B, T) = whole context
    with torch.no_grad():
        full = model(idx)  # (B, T, V)
        cache = model.new_cache(batch_size=3, max_len=128)
        parts = [model(idx[:, :40], cache=cache)]  # prefill
        parts.append(model(idx[:, 40:45], cache=cache, start_pos=40))  # a chunk on a non-empty cache
        parts += [model(idx[:, t : t + 1], cache=cache, start_pos=t) for t in range(45, 128)]  # decode
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-4)


def test_fp16_and_bf16_forward_stay_finite_and_close(tiny_shakespeare_dir):
    idx = torch.arange(200, 328)[None]  # (1, 128): a full context, the longest masked rows
    ref = load_model(str(tiny_shakespeare_dir)).model(idx)
    for dtype in ("fp16", "bf16"):
        logits = load_model(str(tiny_shakespeare_dir), dtype=dtype).model(idx).float()
        assert torch.isfinite(logits).all(), dtype
        # Low precision moves logits a little; the ranking of the top token should mostly survive.
        agree = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
        assert agree > 0.9, (dtype, agree)


def test_reference_and_cached_agree_on_transformers_checkpoint(tmp_path):
    hf, path = _save_hf_checkpoint(tmp_path, "odd")
    ours = load_model(str(path)).model
    prompt = [[11, 22, 33, 44]] * 2
    cfg = SamplingConfig(max_new_tokens=60, temperature=0.9, top_k=50, stop_at_eot=False)  # runs past the 40 context
    a = generate_reference(ours, prompt, cfg, generator=torch.Generator().manual_seed(5))
    b = generate(ours, prompt, cfg, generator=torch.Generator().manual_seed(5))
    assert a.tokens == b.tokens and a.steps == b.steps == 60


@pytest.mark.parametrize("text", ["ROMEO:", "First Citizen:\nBefore we proceed any further, hear me speak."])
def test_bf16_greedy_tokens_match_transformers_bf16(tiny_shakespeare_dir, text):
    """In bf16, with whatever kernels the tuner picked here, greedy decoding gives HF bf16's
    tokens on the trained checkpoint (the issue's bar for low precision: same tokens, not logits)."""
    from gpt2xl.tokenizer import encode

    hf = GPT2LMHeadModel.from_pretrained(tiny_shakespeare_dir, dtype=torch.bfloat16).eval()
    ours = load_model(str(tiny_shakespeare_dir), dtype="bf16")
    prompt = encode(text)
    n = 32
    want = hf.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=50256)
    got = generate(ours.model, [prompt], SamplingConfig(max_new_tokens=n, temperature=0.0, stop_at_eot=False))
    assert got.tokens[0] == want[0, len(prompt):].tolist()
