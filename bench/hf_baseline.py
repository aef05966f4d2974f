"""The outside baseline: Hugging Face ``GPT2LMHeadModel.generate`` on the SAME weights as ours.

HF runs as it would from its own checkpoint: GPT-2's ``Conv1D`` weights stored contiguous
``[in, out]`` (its native layout). The HF model is built on the meta device and its parameters are
then *assigned* our tensors, shared wherever the storage already matches: embeddings, LayerNorms,
biases, the tied lm_head, and every projection the autotuner stored ``[in, out]`` (where
``our.weight.t()`` IS a contiguous ``[in, out]`` tensor). Projections we store ``[out, in]``
(``nn.Linear``'s) are copied for HF into ``[in, out]``, i.e. what ``GPT2LMHeadModel.from_pretrained``
would hold: handing HF transposed views of OUR layout would credit our layout choice to the
baseline. ``native=False`` does that, for studying layouts. The layout HF ran with is recorded in
every case (``hf_weight_layout``).

HF's ``Conv1D`` runs its own ``addmm``; our tuned decode kernels are never lent to it.

Timing: prefill and decode come from per-token timestamps inside ONE ``generate`` call
(:class:`TokenTimes`), as optimum-benchmark's latency tracker takes them. Subtracting a separate
``max_new_tokens=1`` call from a full one, as this module once did, came out 0 on a loaded machine.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from gpt2xl.config import EOT_TOKEN_ID
from gpt2xl.devices import synchronize
from gpt2xl.errors import ConfigError
from gpt2xl.model import GPT

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def build_hf_model(model: GPT, *, native: bool = True) -> GPT2LMHeadModel:
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
    with torch.device("meta"):  # no storage allocated
        # The ignore: transformers declares ``to`` with ``@wraps(nn.Module.to)``, a type that
        # hides the bound method's ``self`` from mypy (``to`` is then checked as unbound).
        hf = GPT2LMHeadModel(hf_config).to(ref.dtype)  # type: ignore[arg-type]
    state = {}
    for key, param in model.state_dict(keep_vars=True).items():
        value = param.detach()
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


def hf_weight_layout(hf: GPT2LMHeadModel) -> str:
    """``in_out`` when HF's Conv1D weights are contiguous ``[in, out]`` (its native layout),
    ``out_in`` when they are transposed views of ``[out, in]`` storage."""
    w = hf.get_parameter("transformer.h.0.attn.c_attn.weight")
    return "in_out" if w.is_contiguous() else "out_in"


class TokenTimes(LogitsProcessor):
    """Records ``time.perf_counter()`` each time ``generate`` asks for the next token's scores,
    scores unchanged (optimum-benchmark's per-token latency tracker). Call 0 comes right after the
    prefill forward, call i after the forward of token i - 1. Synchronizes CUDA first, so a
    timestamp is taken after the forward's kernels finished."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []

    def __call__(self, _input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        synchronize(self.device)
        self.times.append(time.perf_counter())
        return scores


@dataclass(frozen=True, kw_only=True)
class HFTiming:
    """One fixed-length ``generate`` call, timed from inside: ``prefill_s`` = first token
    timestamp − start; ``decode_s`` = end − first timestamp, over the ``new_tokens − 1`` tokens after
    the first; ``token_times_s`` = each timestamp − start. A timing that cannot be split (no
    timestamp) has ``prefill_s`` and ``decode_s`` NaN; the harness treats the round as invalid."""

    batch_size: int
    new_tokens: int
    prefill_s: float
    decode_s: float
    total_s: float
    token_times_s: tuple[float, ...]
    tokens: list[list[int]]


def _hf_call(hf: GPT2LMHeadModel, input_ids: torch.Tensor, *, new_tokens: int, temperature: float,
             top_k: int | None, tracker: TokenTimes) -> torch.Tensor:
    kwargs: dict[str, Any] = {"do_sample": False}
    if temperature > 0:
        kwargs = {"do_sample": True, "temperature": temperature, "top_k": top_k or 0, "top_p": 1.0}
    return hf.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,  # end-of-text cannot cut a benchmark short
        pad_token_id=EOT_TOKEN_ID,
        logits_processor=LogitsProcessorList([tracker]),
        **kwargs,
    )


@torch.inference_mode()
def hf_generate_timed(
    hf: GPT2LMHeadModel,
    prompts: list[list[int]],
    *,
    new_tokens: int,
    temperature: float = 0.8,
    top_k: int | None = 40,
    seed: int = 0,
) -> HFTiming:
    """Run HF ``generate`` once for exactly ``new_tokens`` tokens per row, with prefill and decode
    split by per-token timestamps taken inside that one call.

    Prompts must share one length (no padding, so HF and our loop compute the same shapes).
    """
    if new_tokens < 1:
        raise ConfigError(f"new_tokens must be >= 1, got {new_tokens}.")
    if len({len(p) for p in prompts}) != 1:
        raise ConfigError("hf_generate_timed takes prompts of equal length.")
    device = hf.transformer.wte.weight.device
    input_ids = torch.tensor(prompts, device=device)  # (B, T)
    tracker = TokenTimes(device)
    torch.manual_seed(seed)  # HF samples from the global generator
    synchronize(device)
    t0 = time.perf_counter()
    out = _hf_call(hf, input_ids, new_tokens=new_tokens, temperature=temperature, top_k=top_k, tracker=tracker)
    synchronize(device)
    end = time.perf_counter()
    new = out[:, input_ids.shape[1] :]
    first = tracker.times[0] if tracker.times else math.nan
    return HFTiming(
        batch_size=len(prompts),
        new_tokens=int(new.shape[1]),
        prefill_s=first - t0,
        decode_s=end - first,
        total_s=end - t0,
        token_times_s=tuple(t - t0 for t in tracker.times),
        tokens=new.tolist(),
    )
