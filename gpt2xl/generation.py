"""One generation run as data: what ``gpt2xl generate`` prints and ``--json`` returns."""

from __future__ import annotations

import dataclasses
from typing import Any

from gpt2xl.autotune import check_mode
from gpt2xl.environment import environment_info
from gpt2xl.validation import check_int
from gpt2xl.results import SCHEMA_VERSION
from gpt2xl.sampling import SamplingConfig, generate, make_generator
from gpt2xl.tokenizer import decode, encode
from gpt2xl.weights import load_model


def run_generation(
    prompt: str,
    *,
    model: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    seed: int,
    device: str = "cpu",
    dtype: str = "fp32",
    num_samples: int = 1,
    autotune: str = "cached",
) -> dict[str, Any]:
    """Load ``model``, continue ``prompt`` ``num_samples`` times as one batch, return the result.

    Options are validated before the model is loaded, so a bad value fails in milliseconds.
    The result holds the samples (tokens, text, whether they stopped at end-of-text), timings
    (prefill, decode tokens/s, end-to-end tokens/s), the model's provenance and kernel choices
    (``autotune``: off, cached or fresh, see ``gpt2xl.autotune``), seed and environment.
    """
    cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k)
    check_int("num_samples", num_samples)
    check_mode(autotune)
    loaded = load_model(model, device=device, dtype=dtype, seed=seed, autotune=autotune)
    prompt_ids = encode(prompt)
    out = generate(loaded.model, [prompt_ids] * num_samples, cfg, generator=make_generator(seed, loaded.device))
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "generation",
        "prompt": prompt,
        "prompt_tokens": prompt_ids,
        "cropped_prompt_tokens": len(out.prompt_tokens[0]),
        "sampling": dataclasses.asdict(cfg),
        "seed": seed,
        "model": loaded.describe(),
        "samples": [
            {"tokens": toks, "text": decode(toks), "hit_eot": hit} for toks, hit in zip(out.tokens, out.hit_eot)
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
