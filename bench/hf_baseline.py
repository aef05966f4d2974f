"""The outside baseline: Hugging Face ``GPT2LMHeadModel.generate`` on the SAME weights as ours.

HF runs as it would from its own checkpoint: GPT-2's ``Conv1D`` weights stored contiguous
``[in, out]`` (its native layout). The HF model is built on the meta device and its parameters are
then *assigned* our tensors, shared wherever the storage already matches:

- fp32 on CPU: our preferred layout is ``mixed``: every projection but ``mlp.c_proj`` is stored
  ``[in, out]``, where ``our.weight.t()`` IS a contiguous ``[in, out]`` tensor that HF shares;
  only ``mlp.c_proj`` (a third of the block weights) is copied for HF.
- bf16/fp16: our layout is ``out_in`` (``nn.Linear``'s, which bf16 matmuls stream ~1.4x faster on
  CPU); HF gets contiguous ``[in, out]`` copies of the Conv1D weights, i.e. what
  ``GPT2LMHeadModel.from_pretrained`` would hold. Handing HF transposed views of OUR layout
  instead would credit our layout choice to the baseline. ``native=False`` does that, for
  studying layouts. The layout HF ran with is recorded in every case (``hf_weight_layout``).

HF's ``Conv1D`` runs its own ``addmm``; our split decode matmuls (``model.split_linear``) are
our kernels and are never lent to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from gpt2xl.config import EOT_TOKEN_ID
from gpt2xl.devices import synchronize
from gpt2xl.errors import ConfigError
from gpt2xl.model import GPT
from gpt2xl.sampling import decode_tokens_per_s

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def build_hf_model(model: GPT, *, native: bool = True):
    """A ``transformers.GPT2LMHeadModel`` (eval mode, SDPA attention) on ``model``'s weights.

    Embeddings, LayerNorms, biases and the tied lm_head always share storage with ``model``;
    Conv1D weights share it too when they are already contiguous ``[in, out]``, and are copied
    into that layout otherwise (unless ``native=False``: then HF gets transposed views)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = model.config
    ref = model.transformer.wte.weight
    hf_config = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=cfg.n_inner,
        layer_norm_epsilon=cfg.layer_norm_epsilon,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=EOT_TOKEN_ID,
        eos_token_id=EOT_TOKEN_ID,
        pad_token_id=EOT_TOKEN_ID,
        tie_word_embeddings=True,
    )
    hf_config._attn_implementation = "sdpa"  # the kernel our model uses too
    with torch.device("meta"):
        hf = GPT2LMHeadModel(hf_config).to(ref.dtype)  # no storage allocated
    state = {}
    for key, value in model.state_dict(keep_vars=True).items():
        value = value.detach()
        if key.endswith(CONV1D_SUFFIXES):
            value = value.t()  # [in, out]
            if native and not value.is_contiguous():
                value = value.contiguous()
        state[key] = value
    hf.load_state_dict(state, strict=True, assign=True)
    hf.tie_weights()
    if hf.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr():
        raise RuntimeError("HF lm_head does not share our tied embedding; the baseline would hold a copy")
    hf.eval().requires_grad_(False)
    return hf


def hf_weight_layout(hf) -> str:
    """``in_out`` when HF's Conv1D weights are contiguous ``[in, out]`` (its native layout),
    ``out_in`` when they are transposed views of ``[out, in]`` storage."""
    w = hf.transformer.h[0].attn.c_attn.weight
    return "in_out" if w.is_contiguous() else "out_in"


@dataclass(frozen=True, kw_only=True)
class HFTiming:
    """One fixed-length ``generate`` call, split optimum-benchmark's way.

    ``prefill_s`` is a separate ``max_new_tokens=1`` call; ``decode_s`` = total − prefill, over the
    ``new_tokens − 1`` tokens after the first.
    """

    batch_size: int
    new_tokens: int
    prefill_s: float
    total_s: float
    tokens: list[list[int]]

    @property
    def decode_s(self) -> float:
        return max(self.total_s - self.prefill_s, 0.0)

    @property
    def decode_tokens_per_s(self) -> float:
        return decode_tokens_per_s(batch_size=self.batch_size, steps=self.new_tokens, decode_s=self.decode_s)

    @property
    def tokens_per_s(self) -> float:
        return self.batch_size * self.new_tokens / self.total_s if self.total_s > 0 else 0.0  # one call, end to end


def _hf_call(hf, input_ids: torch.Tensor, *, new_tokens: int, temperature: float, top_k: int | None) -> torch.Tensor:
    sampling = temperature > 0
    kwargs = dict(do_sample=True, temperature=temperature, top_k=top_k or 0, top_p=1.0) if sampling else dict(do_sample=False)
    return hf.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,  # end-of-text cannot cut a benchmark short
        pad_token_id=EOT_TOKEN_ID,
        **kwargs,
    )


@torch.inference_mode()
def hf_generate_timed(
    hf, prompts: list[list[int]], *, new_tokens: int, temperature: float = 0.8, top_k: int | None = 40, seed: int = 0
) -> HFTiming:
    """Run HF ``generate`` for exactly ``new_tokens`` tokens per row, timing prefill separately.

    Prompts must share one length (no padding, so HF and our loop compute the same shapes).
    """
    if new_tokens < 1:
        raise ConfigError(f"new_tokens must be >= 1, got {new_tokens}.")
    if len({len(p) for p in prompts}) != 1:
        raise ConfigError("hf_generate_timed takes prompts of equal length.")
    device = hf.transformer.wte.weight.device
    input_ids = torch.tensor(prompts, device=device)  # (B, T)
    torch.manual_seed(seed)  # HF samples from the global generator
    synchronize(device)
    t0 = time.perf_counter()
    _hf_call(hf, input_ids, new_tokens=1, temperature=temperature, top_k=top_k)
    synchronize(device)
    t1 = time.perf_counter()
    out = _hf_call(hf, input_ids, new_tokens=new_tokens, temperature=temperature, top_k=top_k)
    synchronize(device)
    t2 = time.perf_counter()
    new = out[:, input_ids.shape[1] :]
    return HFTiming(
        batch_size=len(prompts), new_tokens=int(new.shape[1]), prefill_s=t1 - t0, total_s=t2 - t1, tokens=new.tolist()
    )
