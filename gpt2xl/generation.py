"""One generation run as data: what ``gpt2xl generate`` prints and ``--json`` returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from gpt2xl.autotune import check_mode
from gpt2xl.config import GPTConfig
from gpt2xl.devices import check_dtype_supported, resolve_device, resolve_dtype
from gpt2xl.environment import environment_info
from gpt2xl.results import SCHEMA_VERSION
from gpt2xl.sampling import SamplingConfig, generate, make_generator
from gpt2xl.tokenizer import decode, encode
from gpt2xl.validation import check_int, check_memory, check_seed, estimate_run_bytes
from gpt2xl.weights import load_model, resolve_config

# Bytes each generated token costs besides the model's own memory: its int64 in the output
# tensor, then a Python int and a list slot when the tokens are turned into lists and text.
TOKEN_BYTES = 64


@dataclass(frozen=True, kw_only=True)
class GenerationPlan:
    """A generation run's options, every one checked, and what could be known before loading."""

    prompt_ids: list[int]
    sampling: SamplingConfig
    num_samples: int
    seed: int
    device: torch.device
    dtype: torch.dtype
    autotune: str
    config: GPTConfig | None  # None for a hub model not in the local cache: known after loading

    def prompt_cropped(self, block_size: int) -> dict[str, int] | None:
        """``{"kept_tokens", "dropped_tokens"}`` when the prompt is longer than the context."""
        if len(self.prompt_ids) <= block_size:
            return None
        return {"kept_tokens": block_size, "dropped_tokens": len(self.prompt_ids) - block_size}

    def check_memory(self, config: GPTConfig, spec: str) -> None:
        """ConfigError when the weights, the KV cache and the activations of ``num_samples``
        sequences do not fit in the device's free memory (before anything is allocated)."""
        seq_len = min(max(len(self.prompt_ids), 1) + self.sampling.max_new_tokens, config.block_size)
        needed = estimate_run_bytes(
            config, batch_size=self.num_samples, seq_len=seq_len, dtype_bytes=self.dtype.itemsize
        ) + self.num_samples * self.sampling.max_new_tokens * TOKEN_BYTES
        check_memory(
            needed,
            device=str(self.device),
            what=f"Generating {self.num_samples:,} samples of {self.sampling.max_new_tokens:,} tokens with {spec}",
            hint="lower --num-samples or --max-new-tokens.",
        )


def plan_generation(
    prompt: str,
    *,
    model: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    seed: int,
    top_p: float | None = None,
    device: str = "cpu",
    dtype: str = "fp32",
    num_samples: int = 1,
    autotune: str = "cached",
) -> GenerationPlan:
    """Check every option of :func:`run_generation` against its real domain, without loading a
    model: ranges (``validation``), the seed a torch generator accepts, device and dtype, the
    model spec and its config.json (``weights.resolve_config``), the tokenized prompt, and the
    memory the run needs. Raises the first problem as a one-line GPT2XLError."""
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    check_int("num_samples", num_samples)
    check_seed("seed", seed)
    mode = check_mode(autotune)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    check_dtype_supported(torch_device, torch_dtype)
    config = resolve_config(model)
    plan = GenerationPlan(
        prompt_ids=encode(prompt),
        sampling=sampling,
        num_samples=num_samples,
        seed=seed,
        device=torch_device,
        dtype=torch_dtype,
        autotune=mode,
        config=config,
    )
    if config is not None:
        plan.check_memory(config, model)
    return plan


def run_generation(
    prompt: str,
    *,
    model: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    seed: int,
    top_p: float | None = None,
    device: str = "cpu",
    dtype: str = "fp32",
    num_samples: int = 1,
    autotune: str = "cached",
) -> dict[str, Any]:
    """Load ``model``, continue ``prompt`` ``num_samples`` times as one batch, return the result.

    Every option is checked first, by :func:`plan_generation`, so a bad value fails in
    milliseconds, before the model loads. The result holds the samples (tokens, text, whether
    they stopped at end-of-text), ``sampling`` (the SamplingConfig's fields: temperature, top_k,
    top_p, ...), ``prompt_cropped`` (None, or the tokens kept and dropped when
    the prompt is longer than the context: only its end is used), timings (prefill, decode
    tokens/s, end-to-end tokens/s), the model's provenance and kernel choices (``autotune``: off,
    cached or fresh, see ``gpt2xl.autotune``), seed and environment. Non-finite logits raise a
    NumericalError naming the layer that produced them.
    """
    plan = plan_generation(
        prompt,
        model=model,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        device=device,
        dtype=dtype,
        num_samples=num_samples,
        autotune=autotune,
    )
    loaded = load_model(model, device=device, dtype=dtype, seed=seed, autotune=plan.autotune)
    if plan.config is None:  # a hub model fetched just now: its shape is known only from here
        plan.check_memory(loaded.config, model)
    out = generate(
        loaded.model,
        [plan.prompt_ids] * num_samples,
        plan.sampling,
        generator=make_generator(seed, loaded.device),
    )
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "generation",
        "prompt": prompt,
        "prompt_tokens": plan.prompt_ids,
        "prompt_cropped": plan.prompt_cropped(loaded.config.block_size),
        "sampling": dataclasses.asdict(plan.sampling),
        "seed": seed,
        "model": loaded.describe(),
        "samples": [
            {"tokens": toks, "text": decode(toks), "hit_eot": hit}
            for toks, hit in zip(out.tokens, out.hit_eot, strict=True)
        ],
        "timings": {
            "new_tokens": out.steps * out.batch_size,
            "prefill_s": out.prefill_s,
            "decode_s": out.decode_s,
            "total_s": out.prefill_s + out.decode_s,
            "decode_tokens_per_s": out.decode_tokens_per_s,
            "tokens_per_s": out.tokens_per_s,
        },
        "environment": environment_info(),
    }
