"""Static-shape decode steps: gpt-fast's recipe for CUDA graphs.

A CUDA graph replays a fixed sequence of kernels on fixed buffers, so a decode step may change
no shape and no host-side value from one token to the next. The regular cached decode does both:
it slices the cache to the filled prefix and passes the position as a Python int. A
:class:`StaticDecoder` instead keeps a zeroed cache of fixed length, passes the position as a
device tensor, and attends over every cache slot under a mask; ``torch.compile`` with
``mode="reduce-overhead"`` then captures the step into a CUDA graph and replays it, which removes
the per-kernel launch cost that dominates a batch-1 GPU decode.

The price is that attention reads all ``max_len`` slots at every step (gpt2-xl fp16 with 1024
slots: ~0.3 GB of K/V next to 3.1 GB of weights), so callers size ``max_len`` with
:func:`static_cache_len`: the needed length rounded up to ``STATIC_LEN_MULTIPLE``, so nearby
lengths share one compiled graph.

The step is plain PyTorch: on CPU it runs eagerly (or compiled without graphs) and gives the
regular path's logits; that is how it is tested on machines without a GPU. Create one decoder per
(model, batch size, length) and reuse it across ``generate`` calls: compiling, and capturing a
graph, happens on the first calls only.
"""

from __future__ import annotations

import torch

from gpt2xl.errors import ConfigError
from gpt2xl.model import GPT, KVCache
from gpt2xl.validation import check_int

STATIC_LEN_MULTIPLE = 128


def static_cache_len(needed: int, block_size: int) -> int:
    """``needed`` cache slots rounded up to ``STATIC_LEN_MULTIPLE``, at most ``block_size``."""
    check_int("needed", needed, minimum=1)
    return min(-(-needed // STATIC_LEN_MULTIPLE) * STATIC_LEN_MULTIPLE, block_size)


def _decode_step(
    model: GPT, cache: KVCache, slots: torch.Tensor, *, token: torch.Tensor, pos: torch.Tensor, pad: torch.Tensor
) -> torch.Tensor:
    """Logits (B, V) for ``token`` (B, 1) at padded column ``pos`` (1,); row b has ``pad[b]``
    left-pad columns. Every shape is fixed by (B, max_len): nothing here depends on ``pos``'s value."""
    ok = (slots[None, :] <= pos) & (slots[None, :] >= pad[:, None])  # (B, L): filled and not padding
    positions = (pos - pad)[:, None]  # (B, 1): position ids count from each row's first real token
    return model(token, cache=cache, start_pos=pos, positions=positions, attn_mask=ok[:, None, None, :])[:, -1, :]


class StaticDecoder:
    """A fixed-size zeroed KV cache plus a decode step whose shapes never change.

    ``compile``: ``None`` runs the step eagerly; ``"reduce-overhead"`` (CUDA graphs, on CUDA) or
    ``"default"`` compiles it with ``torch.compile(fullgraph=True, dynamic=False)``: a graph
    break or a shape that varies between steps is an error, not a silent slowdown.
    """

    def __init__(self, model: GPT, *, batch_size: int, max_len: int, compile: str | None = None) -> None:
        check_int("batch_size", batch_size, minimum=1)
        if compile not in (None, "default", "reduce-overhead"):
            raise ConfigError(f"compile must be None, 'default' or 'reduce-overhead', got {compile!r}.")
        self.model = model
        self.batch_size = batch_size
        self.cache = model.new_cache(batch_size=batch_size, max_len=max_len, zeroed=True)
        device = self.cache.k.device
        self.compile = compile
        slots = torch.arange(max_len, device=device)  # (L,)
        cache = self.cache

        def step(token: torch.Tensor, pos: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
            return _decode_step(model, cache, slots, token=token, pos=pos, pad=pad)

        if compile is not None:
            # The cache is written in place on every replay: its address must be part of the graph.
            torch._dynamo.mark_static_address(cache.k)
            torch._dynamo.mark_static_address(cache.v)
            step = torch.compile(step, mode=compile, fullgraph=True, dynamic=False)
        self._step = step

    @property
    def max_len(self) -> int:
        return self.cache.max_len

    def step(self, token: torch.Tensor, pos: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) of the next token after ``token`` (B, 1) written at column ``pos`` (1,).

        With CUDA graphs the returned tensor lives in the graph's output buffer: it is valid until
        the next call (sample from it first, as ``generate`` does).
        """
        if self.compile == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        return self._step(token, pos, pad)
