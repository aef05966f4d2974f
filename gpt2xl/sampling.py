"""Temperature / top-k / top-p sampling: small pure functions, a reference loop and a KV-cached loop.

Semantics shared by both loops (and pinned by tests):

- ``temperature == 0`` is greedy (argmax); any other temperature T > 0 samples from
  ``softmax(logits / T)``, computed as ``softmax((logits - max) / T)`` so that no finite logits
  give a NaN at any T (see :func:`logits_to_probs`). A tiny T (down to the smallest float,
  5e-324) tends to greedy, the most likely tokens sharing the mass when tied; a huge T (1e308)
  tends to uniform over the top-k candidates.
- ``top_k`` None or 0 keeps the whole vocabulary; otherwise exactly ``min(top_k, vocab)``
  candidates survive (ties at the k-th value are broken by ``torch.topk``'s order, not all kept).
- ``top_p`` None or 1 keeps every candidate; otherwise (nucleus sampling, Holtzman et al. 2020)
  only the smallest set of the most likely tokens whose probability reaches ``top_p``, after
  temperature and top-k (see :func:`logits_to_probs` for the order and the rule for ties).
- Sampling draws with ``torch.multinomial`` from a caller-owned ``torch.Generator``, one draw per
  sequence per step, finished sequences included, so the random stream does not depend on when
  sequences stop and both loops consume it identically.
- With ``stop_at_eot``, a sequence stops at ``<|endoftext|>`` (the token is not part of its output);
  the loop ends when all sequences have stopped or ``max_new_tokens`` are reached.
- The context is the last ``block_size`` tokens: longer prompts are cropped from the left
  (``GenerationOutput.prompt_tokens`` holds what was kept; callers report the crop).
- Non-finite logits stop the loop with a :class:`~gpt2xl.errors.NumericalError` naming the first
  layer that produced them (found by one more forward with hooks, see ``model.locate_nonfinite``).
  The per-step check is one reduction and one read of its result.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gpt2xl.config import EOT_TOKEN_ID
from gpt2xl.devices import synchronize
from gpt2xl.errors import ConfigError, NumericalError
from gpt2xl.model import GPT, KVCache, locate_nonfinite
from gpt2xl.static_decode import StaticDecoder
from gpt2xl.validation import check_float, check_int, check_seed

# Tokens one call may generate per sequence: beyond the context every step is a full forward, so
# a million tokens are hours even for the tiny model; larger counts are typing errors.
MAX_NEW_TOKENS = 1_000_000


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    max_new_tokens: int
    temperature: float = 1.0  # 0 means greedy
    top_k: int | None = None  # None or 0 means the whole vocabulary
    top_p: float | None = None  # None or 1 means every candidate (no nucleus cut)
    stop_at_eot: bool = True  # benchmarks turn this off so every run has the same length
    eot_id: int = EOT_TOKEN_ID

    def __post_init__(self) -> None:
        check_int("max_new_tokens", self.max_new_tokens, minimum=0, maximum=MAX_NEW_TOKENS)
        check_float("temperature", self.temperature, minimum=0, hint=" 0 means greedy decoding.")
        if self.top_k is not None:
            check_int("top_k", self.top_k, minimum=0)
        check_top_p(self.top_p)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` (multinomial needs one on the device of the probabilities);
    ConfigError for a seed ``torch.Generator`` would refuse (see ``validation.check_seed``)."""
    return torch.Generator(device=device).manual_seed(check_seed("seed", seed))


def check_top_p(top_p: object) -> float | None:
    """``top_p`` when it is None or a finite number in (0, 1]; ConfigError otherwise (NaN included:
    it would compare False against every bound and silently turn the cut off)."""
    if top_p is None:
        return None
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ConfigError(
            f"top_p must be a number > 0 and <= 1, got {top_p!r}; 0.9 keeps the most likely tokens "
            "holding 90% of the probability, 1 (or leaving it unset) keeps them all."
        )
    return float(top_p)


_FLOAT32 = torch.finfo(torch.float32)


def logits_to_probs(
    logits: torch.Tensor, *, temperature: float, top_k: int | None, top_p: float | None = None
) -> torch.Tensor:
    """Next-token distribution (B, V), in fp32, from logits (B, V), for ``temperature`` > 0.

    The cuts compose in the order Hugging Face ``generate`` applies its warpers (temperature,
    then top-k, then top-p, see ``GenerationMixin._get_logits_processor``)::

        softmax(top_p(top_k(logits - max) / temperature))

    Top-k is taken before the division (dividing by T > 0 keeps the order, so the set is the
    same), where a huge temperature cannot yet have rounded distinct logits into ties. Each row's
    largest value is exactly 0 and the rest are <= 0 (or -inf), so finite logits give a valid
    distribution at any temperature, never NaN. A temperature that float32 cannot hold as a
    normal number (it would round to a subnormal, to 0 or to inf) divides in float64.

    Top-p (``top_p`` < 1) keeps the smallest set of tokens whose probability under that tempered,
    top-k distribution reaches ``top_p`` (>= p) and renormalises over it. Tokens are ranked by
    probability and one is kept when the mass ranked strictly above it is below ``top_p``, so the
    first is always kept. In exact arithmetic this is the set HF's ``TopPLogitsWarper`` keeps (it
    removes, from the least likely up, the tokens whose cumulative probability is <= 1 - p);
    summing from the most likely down keeps the rounding of a 50k-token sum out of the decision,
    so a tiny ``top_p`` keeps exactly one token.

    Ties: of the tokens tied with the last kept one, only as many are kept as the mass needs. The
    ranking follows the logits before the temperature (the same order, kept even where a huge
    temperature rounds distinct probabilities together), and equal logits rank by token id, the
    higher id first: the order HF's ascending sort leaves ties in when it keeps them in place
    (short rows on CPU); on long rows HF's unstable sort picks among ties arbitrarily, ours stays
    fixed. So of tied most likely tokens a tiny ``top_p`` keeps the highest id (greedy decoding's
    ``argmax`` takes the lowest).

    ``top_p`` None or 1 skips the cut: no work, and the same tensor as without it.
    """
    if not temperature > 0:
        raise ConfigError(f"logits_to_probs needs a temperature > 0 (0 means greedy: argmax), got {temperature!r}.")
    if top_p is not None:
        check_top_p(top_p)
    x = logits.float()
    x = x - x.amax(dim=-1, keepdim=True)  # (B, V) <= 0; -inf where the difference overflows
    candidates = None  # (B, k) ids top-k kept, when it removed any
    if top_k and top_k < x.shape[-1]:
        values, candidates = torch.topk(x, top_k, dim=-1)  # (B, k)
        x = torch.full_like(x, float("-inf")).scatter_(-1, candidates, values)  # exactly k finite
    shifted = x  # (B, V) before the division: top-p ranks by these, which no temperature rounds
    in_float32 = _FLOAT32.tiny <= temperature <= _FLOAT32.max
    x = x / temperature if in_float32 else (x.double() / temperature).float()
    if top_p is not None and top_p < 1:
        if candidates is None:
            x = _nucleus(x, shifted, top_p)
        else:  # only the k candidates can be kept: rank those, not the whole vocabulary
            ids = candidates.sort(dim=-1).values  # (B, k) in id order, as _nucleus needs
            x = x.scatter(-1, ids, _nucleus(x.gather(-1, ids), shifted.gather(-1, ids), top_p))
    return torch.softmax(x, dim=-1)


def _nucleus(x: torch.Tensor, rank_by: torch.Tensor, top_p: float) -> torch.Tensor:
    """``x`` (B, N), tempered logits of N candidates in increasing token id, with every candidate
    outside the top-``top_p`` nucleus at -inf. ``rank_by`` (B, N) orders the candidates as ``x``
    does, but before the temperature, so distinct logits never tie (-inf ranks last, mass 0)."""
    order = torch.sort(rank_by, dim=-1, stable=True).indices  # (B, N) ascending; equal values in id order
    ranked = torch.softmax(x.gather(-1, order), dim=-1).flip(-1)  # (B, N) most likely first; ties: higher id first
    mass = ranked.cumsum(dim=-1)  # (B, N) mass of the tokens ranked up to each one
    above = torch.nn.functional.pad(mass[..., :-1], (1, 0))  # (B, N) mass ranked strictly above: 0 first
    drop = above >= top_p  # (B, N) compared in float32, where a p below 1e-45 rounds to 0 ...
    drop[..., 0] = False  # ... so the most likely token is kept explicitly, as HF's min_tokens_to_keep does
    drop = drop.flip(-1)  # (B, N) in ascending order again
    return x.masked_fill(torch.zeros_like(drop).scatter_(-1, order, drop), float("-inf"))


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None,
    top_p: float | None = None,
) -> torch.Tensor:
    """One token id per row (B,) from last-position logits (B, V)."""
    if temperature == 0:
        return torch.argmax(logits, dim=-1)  # neither top-k nor top-p can remove the argmax
    probs = logits_to_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B,)


@dataclass(frozen=True, kw_only=True)
class GenerationOutput:
    """What a sampling loop produced, and how long it took.

    ``tokens[b]`` holds sequence b's new tokens, cut before its first end-of-text. ``steps`` is how
    many tokens the loop generated for every row (rows that stopped early were still computed).
    ``prefill_s`` is the time to the first sampled token; ``decode_s`` the time of the other
    ``steps - 1``; both are measured after the device finished its work.
    """

    prompt_tokens: list[list[int]]  # after cropping to the context
    tokens: list[list[int]]
    hit_eot: list[bool]
    steps: int
    prefill_s: float
    decode_s: float

    @property
    def batch_size(self) -> int:
        return len(self.tokens)

    @property
    def decode_tokens_per_s(self) -> float:
        return decode_tokens_per_s(batch_size=self.batch_size, steps=self.steps, decode_s=self.decode_s)

    @property
    def tokens_per_s(self) -> float:
        return tokens_per_s(
            batch_size=self.batch_size, steps=self.steps, prefill_s=self.prefill_s, decode_s=self.decode_s
        )


def decode_tokens_per_s(*, batch_size: int, steps: int, decode_s: float) -> float:
    """Tokens per second after the first of each row, over the whole batch (0 when none): the
    decode rate without prefill, as every sampler (ours or HF's) is reported."""
    return batch_size * (steps - 1) / decode_s if steps > 1 and decode_s > 0 else 0.0


def tokens_per_s(*, batch_size: int, steps: int, prefill_s: float, decode_s: float) -> float:
    """End-to-end tokens per second over the whole batch, prefill included."""
    total_s = prefill_s + decode_s
    return batch_size * steps / total_s if total_s > 0 else 0.0


def nonfinite_error(model: GPT, seq: torch.Tensor, pad: torch.Tensor, *, step: int) -> NumericalError:
    """The error for non-finite logits after the left-padded tokens ``seq`` (B, L), i.e. before
    new token ``step + 1``, naming where they first appear: one more forward over the same window
    with a hook on every module (``model.locate_nonfinite``)."""
    window, positions, mask = _window(seq, pad, model.config.block_size)
    found = locate_nonfinite(model, window, positions=positions, attn_mask=mask)
    head = f"Generation stopped at new token {step + 1}"
    dtype = model.transformer.wte.weight.dtype
    if found is None:
        return NumericalError(
            f"{head}: its logits hold NaN or inf, but a plain forward over the same tokens is finite; "
            "rerun with --autotune off to rule out the tuned kernels."
        )
    if found.bad_parameters:
        return NumericalError(f"{head}: {found.describe()}; the checkpoint is corrupt: download or convert it again.")
    if dtype == torch.float32:
        advice = "the activations exceed float32's range, so the weights are likely damaged: check the checkpoint."
    else:
        advice = f"the activations exceed {str(dtype).removeprefix('torch.')}'s range: run with --dtype fp32."
    return NumericalError(f"{head}: {found.describe()}; {advice}")


def _all_finite(logits: torch.Tensor) -> bool:
    """Whether every logit is finite, in one reduction: a NaN or inf anywhere makes the fp32 sum
    non-finite (finite logits would have to reach ~1e33 to overflow it). About 12x cheaper than
    ``isfinite(logits).all()`` over GPT-2's 50,257 logits on one CPU thread (9 vs 100 us)."""
    return bool(torch.isfinite(logits.sum(dtype=torch.float32)))


def _crop(prompts: Sequence[Sequence[int]], block_size: int, eot_id: int) -> list[list[int]]:
    """Keep each prompt's last ``block_size`` tokens; an empty prompt becomes ``[eot]`` (GPT-2
    begins unconditional samples with <|endoftext|>)."""
    return [list(p)[-block_size:] if len(p) else [eot_id] for p in prompts]


def _finish(
    new: torch.Tensor, prompts: list[list[int]], cfg: SamplingConfig, prefill_s: float, decode_s: float
) -> GenerationOutput:
    rows = new.tolist()
    tokens, hit = [], []
    for row in rows:
        if cfg.stop_at_eot and cfg.eot_id in row:
            tokens.append(row[: row.index(cfg.eot_id)])
            hit.append(True)
        else:
            tokens.append(row)
            hit.append(False)
    return GenerationOutput(
        prompt_tokens=prompts, tokens=tokens, hit_eot=hit, steps=new.shape[1], prefill_s=prefill_s, decode_s=decode_s
    )


@torch.inference_mode()
def generate_reference(
    model: GPT, prompts: Sequence[Sequence[int]], cfg: SamplingConfig, *, generator: torch.Generator | None = None
) -> GenerationOutput:
    """The textbook loop (Raschka, *Build a Large Language Model (From Scratch)*, ch. 5): every
    step re-runs the model on the cropped context and samples from the last position. No cache,
    so step t costs a forward over min(T + t, block_size) tokens. Kept as the baseline.

    All prompts must have the same length (the book's loop takes one tensor).
    """
    block_size = model.config.block_size
    cropped = _crop(prompts, block_size, cfg.eot_id)
    if len({len(p) for p in cropped}) != 1:
        raise ConfigError("The reference sampler takes prompts of equal length; use generate() for ragged batches.")
    device = model.transformer.wte.weight.device
    idx = torch.tensor(cropped, device=device)  # (B, T)
    B = idx.shape[0]
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    synchronize(device)
    t0 = time.perf_counter()
    t_first = t0
    for step in range(cfg.max_new_tokens):
        logits = model(idx[:, -block_size:])[:, -1, :]  # (B, V)
        if not _all_finite(logits):
            raise nonfinite_error(model, idx, torch.zeros(B, dtype=torch.long, device=device), step=step)
        next_id = sample_next(
            logits, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, generator=generator
        )  # (B,)
        if cfg.stop_at_eot:
            next_id = torch.where(finished, cfg.eot_id, next_id)
            finished |= next_id == cfg.eot_id
        idx = torch.cat([idx, next_id[:, None]], dim=1)  # (B, T + step + 1)
        if step == 0:
            synchronize(device)
            t_first = time.perf_counter()
        if cfg.stop_at_eot and bool(finished.all()):
            break
    synchronize(device)
    t_end = time.perf_counter()
    return _finish(idx[:, len(cropped[0]) :], cropped, cfg, t_first - t0, t_end - t_first)


def _window(
    seq: torch.Tensor, pad: torch.Tensor, block_size: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Inputs for a full forward over the last ``block_size`` columns of a left-padded batch.

    ``seq`` (B, L) holds ``pad[b]`` pad columns then real tokens. Returns the window (B, W), per-row
    positions (B, W) that start at 0 on each row's first real token, and a (B, 1, W, W) boolean mask
    (causal, pad keys hidden). Without padding in the window, positions and mask are None.
    """
    shift = max(seq.shape[1] - block_size, 0)
    window = seq[:, shift:]  # (B, W)
    pad_w = (pad - shift).clamp(min=0)  # (B,) pad columns left inside the window
    if not bool(pad_w.any()):
        return window, None, None
    W = window.shape[1]
    cols = torch.arange(W, device=seq.device)  # (W,)
    positions = (cols[None, :] - pad_w[:, None]).clamp(min=0)  # (B, W)
    key_ok = cols[None, :] >= pad_w[:, None]  # (B, W)
    causal = torch.ones(W, W, dtype=torch.bool, device=seq.device).tril()  # (W, W)
    # A pad query may see itself, so no softmax row is empty (an all-masked row is NaN).
    mask = causal[None] & (key_ok[:, None, :] | torch.eye(W, dtype=torch.bool, device=seq.device)[None])
    return window, positions, mask[:, None]  # (B, 1, W, W)


def prefill(model: GPT, seq: torch.Tensor, pad: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
    """Logits (B, V) of the token after each left-padded prompt in ``seq`` (B, T); fills ``cache``.
    Only the last ``block_size`` columns are run; only the last position's logits are computed."""
    window, positions, mask = _window(seq, pad, model.config.block_size)
    return model(window, cache=cache, positions=positions, attn_mask=mask, last_only=True)[:, -1, :]


def decode_one_token(
    model: GPT, token: torch.Tensor, *, cache: KVCache, pos: int, pad: torch.Tensor, key_ok: torch.Tensor | None
) -> torch.Tensor:
    """Logits (B, V) after ``token`` (B, 1), written at padded column ``pos`` of ``cache``.
    ``key_ok`` (B, S) marks real (non-pad) columns; None when no row is padded."""
    positions = (pos - pad)[:, None] if key_ok is not None else None  # (B, 1): ids from each row's first token
    mask = key_ok[:, None, None, : pos + 1] if key_ok is not None else None  # (B, 1, 1, pos+1)
    return model(token, cache=cache, start_pos=pos, positions=positions, attn_mask=mask)[:, -1, :]


def rewindow(model: GPT, seq: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """Past the context a cache cannot shift positions: logits (B, V) from a full forward over the
    last ``block_size`` columns of ``seq`` (B, L), exactly as the reference loop computes them."""
    return prefill(model, seq, pad, cache=None)


def _check_static(static: StaticDecoder, model: GPT, batch_size: int, cache_len: int) -> None:
    if static.model is not model:
        raise ConfigError("This StaticDecoder was built for another model; build one for this model.")
    if static.batch_size != batch_size or static.max_len < cache_len:
        raise ConfigError(
            f"This StaticDecoder holds {static.batch_size} rows x {static.max_len} cache slots; this call needs "
            f"{batch_size} rows and at least {cache_len} slots (size it with static_cache_len)."
        )


@torch.inference_mode()
def generate(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    cfg: SamplingConfig,
    *,
    generator: torch.Generator | None = None,
    static: StaticDecoder | None = None,
) -> GenerationOutput:
    """KV-cached sampling for a batch of prompts of any lengths (left-padded internally).

    :func:`prefill` runs the prompts once and fills the cache; each later step is one
    :func:`decode_one_token` per row. Once a row's sequence would exceed the context, the cache
    cannot shift positions, so from then on each step is a :func:`rewindow` over the last
    ``block_size`` tokens, exactly as the reference loop does: outputs are identical to
    ``generate_reference`` for the same generator state.

    ``static``: decode through a :class:`~gpt2xl.static_decode.StaticDecoder` (fixed shapes, for
    CUDA graphs) built for this batch size and at least ``prompt + max_new_tokens - 1`` slots of
    cache (``static_cache_len``); the tokens are the same as without it.
    """
    block_size = model.config.block_size
    cropped = _crop(prompts, block_size, cfg.eot_id)
    device = model.transformer.wte.weight.device
    B = len(cropped)
    T = max(len(p) for p in cropped)
    pad = torch.tensor([T - len(p) for p in cropped], device=device)  # (B,)
    seq = torch.tensor([[cfg.eot_id] * (T - len(p)) + p for p in cropped], device=device)  # (B, T)
    new = torch.empty(B, cfg.max_new_tokens, dtype=torch.long, device=device)  # (B, N)
    if cfg.max_new_tokens == 0:
        return _finish(new, cropped, cfg, 0.0, 0.0)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    cache_len = min(T + cfg.max_new_tokens - 1, block_size)  # the last sampled token is never fed back
    if static is None:
        cache: KVCache | None = model.new_cache(batch_size=B, max_len=cache_len)
    else:
        _check_static(static, model, B, cache_len)
        cache = static.cache
        static_pos = torch.full((1,), T, dtype=torch.long, device=device)  # (1,): tracks pos below
    key_ok = torch.arange(cache_len, device=device)[None, :] >= pad[:, None] if bool(pad.any()) else None  # (B, S)

    synchronize(device)
    t0 = time.perf_counter()
    logits = prefill(model, seq, pad, cache)
    t_first = t0
    step = 0
    while True:
        if not _all_finite(logits):
            raise nonfinite_error(model, torch.cat([seq, new[:, :step]], dim=1), pad, step=step)
        next_id = sample_next(
            logits, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, generator=generator
        )  # (B,)
        if cfg.stop_at_eot:
            next_id = torch.where(finished, cfg.eot_id, next_id)
            finished |= next_id == cfg.eot_id
        new[:, step] = next_id
        step += 1
        if step == 1:
            synchronize(device)
            t_first = time.perf_counter()
        if step == cfg.max_new_tokens or (cfg.stop_at_eot and bool(finished.all())):
            break
        pos = T + step - 1  # column of next_id in the padded sequence
        if cache is not None and pos < block_size and static is not None:
            logits = static.step(next_id[:, None], static_pos, pad)  # (B, V)
            static_pos += 1
        elif cache is not None and pos < block_size:
            logits = decode_one_token(model, next_id[:, None], cache=cache, pos=pos, pad=pad, key_ok=key_ok)
        else:
            cache = None
            logits = rewindow(model, torch.cat([seq, new[:, :step]], dim=1), pad)  # (B, T + step) in
    synchronize(device)
    t_end = time.perf_counter()
    return _finish(new[:, :step], cropped, cfg, t_first - t0, t_end - t_first)
