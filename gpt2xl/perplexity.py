"""Perplexity of a causal LM: sliding windows over a long text, scoring of chosen positions, LAMBADA.

Definitions (lm-evaluation-harness's, see ``lm_eval/api/metrics.py``: ``weighted_perplexity``,
``bits_per_byte``; and its ``loglikelihood_rolling`` tasks such as wikitext):

- ``token_perplexity = exp(nll_sum / tokens_scored)``: the TOKEN-weighted mean negative
  log-likelihood, summed in float64 over every scored token. Not the Hugging Face guide's
  ``exp(mean over windows of the window's mean loss)``, which weights a short last window like a
  full one; the two agree whenever all windows score the same number of tokens.
- ``bits_per_byte = nll_sum / (num_bytes * ln 2)`` and
  ``word_perplexity = exp(nll_sum / num_words)``, normalised by the bytes and words of the whole
  ORIGINAL text, so that models with different tokenisers are comparable.

Caveat: the sliding window below never scores the first token of the text (nothing predicts it)
and, with ``stride == context``, not the first token of any window either (see
:func:`window_plan`). Bits per byte and word perplexity still divide by the whole text's bytes
and words, as lm-eval does for its own (BOS-conditioned) scores; the few unscored tokens make
both slightly optimistic: for the defaults here by well under 1%.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from gpt2xl.config import EOT_TOKEN_ID
from gpt2xl.errors import ConfigError
from gpt2xl.model import GPT
from gpt2xl.tokenizer import encode
from gpt2xl.validation import check_int

ProgressHook = Callable[[int, int], None]  # (windows done, windows in all)


# --------------------------------------------------------------------------------------------
# Window plan and scoring engine
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Window:
    """Model input ``token_ids[begin:end]``; the targets at absolute positions
    ``first_scored … end-1`` are scored (each predicted from the logits one position earlier)."""

    begin: int
    end: int
    first_scored: int

    def __post_init__(self) -> None:
        if not 0 <= self.begin < self.first_scored <= self.end:
            raise ConfigError(
                f"A window needs begin < first_scored <= end, got {self.begin}, {self.first_scored}, {self.end}."
            )

    @property
    def num_scored(self) -> int:
        return self.end - self.first_scored


def window_plan(seq_len: int, *, max_length: int, stride: int) -> list[Window]:
    """The Hugging Face perplexity guide's loop, as data.

    ``for begin in range(0, seq_len, stride): end = min(begin + max_length, seq_len);
    trg_len = end - prev_end``; the labels before the last ``trg_len`` positions of the window are
    -100, and the LM shift drops the window's first label. So a window scores positions
    ``max(end - trg_len, begin + 1) … end - 1``. The loop stops once a window reaches the end.

    Consequences (exact, counted): token 0 of the text is never scored; with ``stride ==
    max_length`` the first token of EVERY window is unscored (it is only ever an input); with
    ``stride < max_length`` every token but token 0 is scored exactly once, with at least
    ``max_length - stride`` tokens of context. A window that would score nothing is dropped.
    ``stride > max_length`` is refused (it would skip tokens silently). ``seq_len < 2`` → [].
    """
    check_int("max_length", max_length)
    check_int("stride", stride)
    if stride > max_length:
        raise ConfigError(f"stride ({stride}) must not exceed the context length ({max_length}); it would skip tokens.")
    windows: list[Window] = []
    prev_end = 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        first = max(prev_end, begin + 1)
        if first < end:
            windows.append(Window(begin=begin, end=end, first_scored=first))
        prev_end = end
        if end == seq_len:
            break
    return windows


@dataclass(frozen=True, kw_only=True)
class ScoredSpan:
    """What scoring one span returned: NLL summed in float64 (nats), tokens scored, and whether
    every scored token was the model's argmax (greedy match, LAMBADA's accuracy criterion)."""

    nll_sum: float
    num_scored: int
    all_greedy: bool


def span_batches(spans: Sequence[tuple[Sequence[int], int]], *, batch_size: int) -> list[list[int]]:
    """The batches :func:`score_spans` runs ``spans`` in, as lists of span indices: sorted by
    length (stably: equal lengths keep their order), cut every ``batch_size``. A batch's shape
    decides which kernel runs and how its sums round, so a caller that spreads the batches over
    workers (:mod:`gpt2xl.distributed`) sends exactly these to get exactly the same scores."""
    check_int("batch_size", batch_size)
    order = sorted(range(len(spans)), key=lambda i: len(spans[i][0]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def score_spans(
    model: GPT,
    spans: Sequence[tuple[Sequence[int], int]],
    *,
    batch_size: int,
    progress: bool | ProgressHook = False,
    progress_desc: str = "scoring",
) -> list[ScoredSpan]:
    """Score ``spans``: each is ``(token_ids, first_scored)`` with ``2 <= len(token_ids) <=
    block_size + 1`` and ``1 <= first_scored < len(token_ids)``; the targets
    ``token_ids[first_scored:]`` are scored from the logits one position earlier. The model is fed
    ``token_ids[:-1]`` (the last token is only ever a target). Returns one ScoredSpan per span,
    in order.

    Spans are sorted by length and batched; shorter rows are RIGHT-padded, which cannot change
    their logits (causal attention never looks right), only the matmul shapes. Equal-length spans
    (sliding windows) need no padding at all. Log-softmax is taken in float32 over the scored rows
    only, and sums are accumulated in float64.

    ``progress``: False, True (a tqdm bar on stderr), or a callback ``(done, total)`` in spans.
    """
    check_int("batch_size", batch_size)
    block_size = model.config.block_size
    for ids, first in spans:
        if not 1 <= first < len(ids) <= block_size + 1:
            raise ConfigError(
                f"A span must hold 2..{block_size + 1} tokens with 1 <= first_scored < its length, "
                f"got {len(ids)} tokens and first_scored {first}."
            )
    device = model.transformer.wte.weight.device
    results: list[ScoredSpan | None] = [None] * len(spans)
    bar = tqdm(total=len(spans), desc=progress_desc, unit="span", disable=progress is not True, leave=False)
    done = 0
    with torch.inference_mode():
        for chunk in span_batches(spans, batch_size=batch_size):
            width = max(len(spans[i][0]) for i in chunk)
            rows = [list(spans[i][0]) + [0] * (width - len(spans[i][0])) for i in chunk]
            ids_t = torch.tensor(rows, dtype=torch.long, device=device)  # (B, T + 1)
            logits = model(ids_t[:, :-1])  # (B, T, V): position j predicts token j + 1
            for row, i in enumerate(chunk):
                ids, first = spans[i]
                pred = logits[row, first - 1 : len(ids) - 1].float()  # (n, V) predicts ids[first:]
                target = ids_t[row, first : len(ids)]  # (n,)
                nll = F.cross_entropy(pred, target, reduction="none")  # (n,)
                greedy = bool((pred.argmax(dim=-1) == target).all())
                results[i] = ScoredSpan(
                    nll_sum=float(nll.double().sum()), num_scored=int(target.numel()), all_greedy=greedy
                )
            del logits
            done += len(chunk)
            bar.update(len(chunk))
            if callable(progress):
                progress(done, len(spans))
    bar.close()
    return [r for r in results if r is not None]


class SpanScorer(Protocol):
    """:func:`score_spans` without the model: scores spans on a model held elsewhere (Ray workers)."""

    def __call__(
        self,
        spans: Sequence[tuple[Sequence[int], int]],
        *,
        batch_size: int,
        progress: bool | ProgressHook = False,
        progress_desc: str = "scoring",
    ) -> list[ScoredSpan]: ...


# --------------------------------------------------------------------------------------------
# Sliding-window perplexity
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NLLResult:
    """Summed negative log-likelihood (nats, float64) of ``tokens_scored`` tokens of a text of
    ``num_tokens`` tokens, scored in ``num_windows`` windows of ``context_length`` tokens moved by
    ``stride``."""

    nll_sum: float
    tokens_scored: int
    num_tokens: int
    num_windows: int
    context_length: int
    stride: int

    def __post_init__(self) -> None:
        if not math.isfinite(self.nll_sum) or self.nll_sum < 0:
            raise ConfigError(f"NLLResult.nll_sum must be finite and >= 0, got {self.nll_sum!r}.")
        if not 0 <= self.tokens_scored <= self.num_tokens:
            raise ConfigError(
                f"NLLResult needs 0 <= tokens_scored <= num_tokens, got {self.tokens_scored}, {self.num_tokens}."
            )

    @property
    def mean_nll(self) -> float:
        if self.tokens_scored == 0:
            raise ConfigError("No token was scored (the text has fewer than 2 tokens); there is no mean NLL.")
        return self.nll_sum / self.tokens_scored


def sliding_window_nll(
    model: GPT,
    token_ids: Sequence[int],
    *,
    stride: int | None = None,
    batch_size: int = 8,
    progress: bool | ProgressHook = False,
    scorer: SpanScorer | None = None,
) -> NLLResult:
    """NLL of ``token_ids`` under ``model`` with the HF guide's sliding window
    (:func:`window_plan`; window = the model's context, ``stride`` None = the context).

    Windows are independent, so they are batched (all but the last have the same length).
    Memory: a batch holds ``batch_size x context x vocab`` float logits (8 x 1024 x 50257 x 4
    bytes = 1.6 GB for GPT-2); lower ``batch_size`` on small devices. A text of fewer than 2
    tokens scores nothing (tokens_scored 0).

    ``scorer``: what scores the windows instead of :func:`score_spans` on ``model`` in this
    process (e.g. Ray workers holding the same model, :meth:`gpt2xl.distributed.WorkerPool.score_spans`);
    it must score the same batches (:func:`span_batches`). The reduction is :func:`windows_nll` either way.
    """
    max_length = model.config.block_size
    stride = max_length if stride is None else stride
    ids = list(token_ids)
    plan = window_plan(len(ids), max_length=max_length, stride=stride)
    spans = window_spans(ids, plan)
    if scorer is None:
        scored = score_spans(model, spans, batch_size=batch_size, progress=progress, progress_desc="perplexity")
    else:
        scored = scorer(spans, batch_size=batch_size, progress=progress, progress_desc="perplexity")
    return windows_nll(plan, scored, num_tokens=len(ids), context_length=max_length, stride=stride)


def window_spans(token_ids: Sequence[int], plan: Sequence[Window]) -> list[tuple[list[int], int]]:
    """The spans :func:`score_spans` scores for ``plan`` over ``token_ids``: each window's tokens
    and the offset of its first scored token."""
    ids = list(token_ids)
    return [(ids[w.begin : w.end], w.first_scored - w.begin) for w in plan]


def windows_nll(
    plan: Sequence[Window], scored: Sequence[ScoredSpan], *, num_tokens: int, context_length: int, stride: int
) -> NLLResult:
    """The reduction of the windows' scores (one per window of ``plan``, in plan order) into one
    NLL: the float64 sums added by ``math.fsum``, which rounds the exact sum once, so the result
    does not depend on the order or the process the windows were scored in; every path (one
    process, Ray workers) reduces through here."""
    if len(scored) != len(plan):
        raise ConfigError(f"{len(plan)} windows but {len(scored)} window scores.")
    return NLLResult(
        nll_sum=math.fsum(s.nll_sum for s in scored),
        tokens_scored=sum(s.num_scored for s in scored),
        num_tokens=num_tokens,
        num_windows=len(plan),
        context_length=context_length,
        stride=stride,
    )


@dataclass(frozen=True, kw_only=True)
class PerplexityReport:
    """lm-eval's three normalisations of one NLL (see the module docstring)."""

    nll_sum: float
    tokens_scored: int
    num_words: int
    num_bytes: int
    token_perplexity: float
    bits_per_byte: float
    word_perplexity: float

    def to_dict(self) -> dict[str, float | int]:
        return {
            "token_perplexity": self.token_perplexity,
            "bits_per_byte": self.bits_per_byte,
            "word_perplexity": self.word_perplexity,
            "nll_sum_nats": self.nll_sum,
            "mean_nll_nats": self.nll_sum / self.tokens_scored,
            "tokens_scored": self.tokens_scored,
            "num_words": self.num_words,
            "num_bytes": self.num_bytes,
        }


def perplexity_report(nll: NLLResult, *, num_words: int, num_bytes: int) -> PerplexityReport:
    """Token perplexity, bits per byte and word perplexity of ``nll``; ``num_words`` and
    ``num_bytes`` describe the same (whole) text. Raises ConfigError when nothing was scored or a
    count is not positive."""
    check_int("num_words", num_words)
    check_int("num_bytes", num_bytes)
    return PerplexityReport(
        nll_sum=nll.nll_sum,
        tokens_scored=nll.tokens_scored,
        num_words=num_words,
        num_bytes=num_bytes,
        token_perplexity=math.exp(nll.mean_nll),
        bits_per_byte=nll.nll_sum / (num_bytes * math.log(2)),
        word_perplexity=math.exp(nll.nll_sum / num_words),
    )


# --------------------------------------------------------------------------------------------
# LAMBADA
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LambadaResult:
    """``accuracy``: fraction of examples whose target tokens are ALL the greedy argmax (lm-eval's
    ``is_greedy``). ``perplexity``: lm-eval's ``perplexity`` aggregation,
    ``exp(-mean over examples of log p(target | context))``, i.e. per EXAMPLE (the target's
    log-likelihood summed over its tokens), not per token. ``token_perplexity`` is the per-token
    variant, for reference. ``num_cropped``: contexts left-cropped to fit the model's context."""

    accuracy: float
    perplexity: float
    token_perplexity: float
    num_examples: int
    target_tokens: int
    num_cropped: int

    def to_dict(self) -> dict[str, float | int]:
        return {
            "accuracy": self.accuracy,
            "perplexity": self.perplexity,
            "token_perplexity": self.token_perplexity,
            "num_examples": self.num_examples,
            "target_tokens": self.target_tokens,
            "num_cropped": self.num_cropped,
        }


def encode_pair(context: str, target: str) -> tuple[list[int], list[int]]:
    """lm-eval's ``_encode_pair``: trailing spaces of the context move to the target, the whole
    string is encoded, and the target's tokens are those after the context's own encoding."""
    n_spaces = len(context) - len(context.rstrip(" "))
    if n_spaces:
        context, target = context[:-n_spaces], context[-n_spaces:] + target
    whole = encode(context + target)
    context_ids = encode(context)
    return context_ids, whole[len(context_ids) :]


class ContextTarget(Protocol):
    """A LAMBADA item as :func:`lambada_eval` reads it (``gpt2xl.data.LambadaExample``)."""

    @property
    def context(self) -> str: ...

    @property
    def target(self) -> str: ...


def lambada_eval(
    model: GPT,
    examples: Sequence[ContextTarget],
    *,
    batch_size: int = 16,
    progress: bool | ProgressHook = False,
) -> LambadaResult:
    """LAMBADA last-word accuracy and perplexity (see :class:`LambadaResult`).

    ``examples``: objects with ``.context`` and ``.target`` strings (``gpt2xl.data.LambadaExample``).
    The model input is ``(context + target)[:-1]``, left-cropped to the model's context (so a long
    context loses its beginning). An empty context is conditioned on ``<|endoftext|>``, as
    lm-eval does for loglikelihood requests. Raises ConfigError for no examples, an empty target,
    or a target longer than the context window.
    """
    if not examples:
        raise ConfigError("lambada_eval needs at least one example.")
    block_size = model.config.block_size
    spans: list[tuple[list[int], int]] = []
    cropped = 0
    for ex in examples:
        context_ids, target_ids = encode_pair(ex.context, ex.target)
        if not target_ids:
            raise ConfigError(f"A LAMBADA target encodes to no tokens: {ex.target!r}.")
        if len(target_ids) > block_size:
            raise ConfigError(f"A LAMBADA target of {len(target_ids)} tokens exceeds the context of {block_size}.")
        context_ids = context_ids or [EOT_TOKEN_ID]
        full = context_ids + target_ids
        # The last token is only a target, so block_size + 1 tokens fit (see score_spans).
        ids = full[-(block_size + 1) :]
        cropped += len(ids) < len(full)
        spans.append((ids, len(ids) - len(target_ids)))
    scored = score_spans(model, spans, batch_size=batch_size, progress=progress, progress_desc="lambada")
    loglik = [-s.nll_sum for s in scored]
    total_tokens = sum(s.num_scored for s in scored)
    return LambadaResult(
        accuracy=sum(s.all_greedy for s in scored) / len(scored),
        perplexity=math.exp(-math.fsum(loglik) / len(loglik)),
        token_perplexity=math.exp(-math.fsum(loglik) / total_tokens),
        num_examples=len(scored),
        target_tokens=total_tokens,
        num_cropped=cropped,
    )

