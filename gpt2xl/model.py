"""GPT-2, written from scratch in PyTorch.

Parameter names are GPT-2's own (``transformer.h.0.attn.c_attn.weight`` …), so a Hugging Face
checkpoint maps onto this model key for key; the only difference is that GPT-2's ``Conv1D`` stores
weights as ``[in, out]`` and ``nn.Linear`` as ``[out, in]`` (see ``weights.py``).

The forward pass optionally reads and extends a :class:`KVCache`: prefill a prompt with
``start_pos=0``, then decode one token at a time with ``start_pos`` = tokens already cached.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from gpt2xl import kernels
from gpt2xl.config import GPTConfig

StorageLayout = Literal["out_in", "in_out"]  # nn.Linear's [out, in] or GPT-2 Conv1D's [in, out]
Kernel = Literal["linear", "split", "native"]
KERNELS: dict[str, str] = {  # the vocabulary of matmul kernels, read by the tuner and the reports
    "linear": "PyTorch F.linear (MKL / oneDNN on CPU, cuBLAS on CUDA)",
    "split": "F.linear as one batched matmul over per-thread row blocks of the weight (split_linear)",
    "native": "gpt2xl's C++ few-row kernel, compiled on this machine (gpt2xl/kernels)",
}
PROJECTION_KINDS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "lm_head")
DECODE_MAX_ROWS = 8  # rows (batch x new tokens) up to which a call counts as a decode step
PREFILL_MAX_ROWS = 64  # the tuner times prefills at 16 rows; past 64 it is untimed: keep PyTorch's GEMM


@dataclass(frozen=True, kw_only=True)
class ProjectionPlan:
    """How one kind of projection is stored and which kernel runs it, by call size.

    ``decode`` runs calls of at most ``DECODE_MAX_ROWS`` rows, ``prefill`` calls of at most
    ``PREFILL_MAX_ROWS``; larger calls always run ``linear``. ``native`` needs ``out_in`` storage.
    """

    layout: StorageLayout = "out_in"
    decode: Kernel = "linear"
    prefill: Kernel = "linear"

    def __post_init__(self) -> None:
        if self.layout not in ("out_in", "in_out"):
            raise ValueError(f"unknown storage layout {self.layout!r}")
        for kernel in (self.decode, self.prefill):
            if kernel not in KERNELS:
                raise ValueError(f"unknown kernel {kernel!r}; known: {', '.join(KERNELS)}")
            if kernel == "native" and self.layout != "out_in":
                raise ValueError("the native kernel reads out_in ([out, in]) storage")

    @property
    def plain(self) -> bool:
        return self.decode == "linear" and self.prefill == "linear"


KernelPlan = dict[str, ProjectionPlan]  # projection kind -> plan
PLAIN = ProjectionPlan()


def plain_plan() -> KernelPlan:
    """PyTorch's own kernels on ``nn.Linear`` storage: what runs with autotuning off."""
    return dict.fromkeys(PROJECTION_KINDS, PLAIN)


def split_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, splits: int) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` as one batched matmul over ``splits`` contiguous row blocks
    of the weight's storage, so that each of ``splits`` threads streams its own block.

    Why: for a few rows (a decode step) PyTorch's CPU fp32 matmul can run MKL's matrix-vector
    kernel on one thread; a batched matmul is spread over threads, one matrix each. The blocks
    are views (no copy):

    - ``[out, in]`` storage (``nn.Linear``): blocks of output rows. When ``out`` is not divisible
      (the 50257-word ``lm_head``), equal blocks overlap by a few rows; each output is kept once.
    - ``[in, out]`` storage (GPT-2's ``Conv1D``): blocks of input rows (split-K), whose partial
      products are summed; needs ``in % splits == 0``.

    Results differ from ``F.linear`` only by rounding (summation order). ``splits < 2``, any
    other storage, or an indivisible split-K falls back to ``F.linear``.
    """
    out_features, in_features = weight.shape
    if splits < 2:
        return F.linear(x, weight, bias)
    lead = x.shape[:-1]
    rows = x.reshape(-1, in_features)  # (R, in)
    R = rows.shape[0]
    if weight.is_contiguous() and splits <= out_features:
        block = -(-out_features // splits)
        step = (out_features - block) // (splits - 1)
        block = out_features - step * (splits - 1)  # the last block ends exactly at out_features
        wn = weight.as_strided(
            (splits, block, in_features), (step * in_features, in_features, 1), weight.storage_offset()
        )
        y = torch.bmm(rows.expand(splits, R, in_features), wn.transpose(1, 2))  # (S, R, block)
        y = torch.cat([*(y[i, :, :step] for i in range(splits - 1)), y[-1]], dim=1)  # (R, out)
    elif weight.t().is_contiguous() and in_features % splits == 0:
        xk = rows.view(R, splits, in_features // splits).transpose(0, 1)  # (S, R, in/S)
        wk = weight.t().unflatten(0, (splits, in_features // splits))  # (S, in/S, out)
        y = torch.bmm(xk, wk).sum(0)  # (R, out)
    else:
        return F.linear(x, weight, bias)
    if bias is not None:
        y = y.add_(bias)
    return y.view(*lead, out_features)


def run_kernel(kernel: Kernel, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` computed by ``kernel`` (the tuner times exactly this call)."""
    if kernel == "native":
        return kernels.linear_small(x, weight, bias)
    if kernel == "split":
        return split_linear(x, weight, bias, splits=torch.get_num_threads())
    return F.linear(x, weight, bias)


class Projection(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) whose few-row calls can run another
    kernel: ``decode_kernel`` up to ``DECODE_MAX_ROWS`` rows, ``prefill_kernel`` up to
    ``PREFILL_MAX_ROWS``. Both are ``linear`` until :meth:`GPT.apply_kernel_plan` sets them;
    under ``torch.compile`` or :meth:`GPT.kernels_off` everything runs ``F.linear``."""

    decode_kernel: Kernel = "linear"
    prefill_kernel: Kernel = "linear"
    kernels_enabled: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernels_enabled and not torch.compiler.is_compiling():
            rows = x.numel() // self.in_features
            if rows <= DECODE_MAX_ROWS:
                return run_kernel(self.decode_kernel, x, self.weight, self.bias)
            if rows <= PREFILL_MAX_ROWS:
                return run_kernel(self.prefill_kernel, x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


@dataclass
class KVCache:
    """Keys and values of every layer for a batch, preallocated to ``max_len`` positions.

    ``k``/``v`` are ``(n_layer, B, n_head, max_len, head_size)``. Layer ``i`` writes positions
    ``[start, start + T)`` and attends to ``[0, start + T)``: only the filled prefix is read, so a
    decode step costs what the sequence so far costs, not what ``max_len`` costs.

    With ``start`` given as a tensor (static mode, for CUDA graphs / ``torch.compile``), shapes
    never depend on the position: the write is an ``index_copy_`` and attention reads all
    ``max_len`` positions under a mask the caller supplies. Such a cache must be created
    ``zeroed``: masked-out garbage would still reach the output as ``0 * NaN``.
    """

    k: torch.Tensor
    v: torch.Tensor

    @classmethod
    def empty(
        cls,
        config: GPTConfig,
        *,
        batch_size: int,
        max_len: int,
        device: torch.device,
        dtype: torch.dtype,
        zeroed: bool = False,
    ) -> KVCache:
        if not 0 < max_len <= config.block_size:
            raise ValueError(f"KV cache length must be in [1, {config.block_size}], got {max_len}")
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.head_size)
        alloc = torch.zeros if zeroed else torch.empty
        return cls(k=alloc(shape, device=device, dtype=dtype), v=alloc(shape, device=device, dtype=dtype))

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def update(
        self, layer: int, start: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``/``v`` (B, nh, T, hs) at ``[start, start+T)``; return the keys and values of
        ``[0, start+T)`` as views (B, nh, start+T, hs), or, when ``start`` is a (1,) tensor (static
        mode), all ``max_len`` positions (B, nh, max_len, hs)."""
        if isinstance(start, torch.Tensor):
            where = start + torch.arange(k.shape[2], device=start.device)  # (T,)
            self.k[layer].index_copy_(2, where, k)
            self.v[layer].index_copy_(2, where, v)
            return self.k[layer], self.v[layer]
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; asked to write up to {end}")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.c_attn = Projection(config.n_embd, 3 * config.n_embd)  # q, k, v for all heads at once
        self.c_proj = Projection(config.n_embd, config.n_embd)

    def forward(
        self,
        x: torch.Tensor,
        *,
        layer: int,
        cache: KVCache | None,
        start_pos: int | torch.Tensor,
        attn_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(layer, start_pos, k, v)  # (B, nh, S, hs), S = start_pos + T
        S = k.shape[2]
        # Boolean masks and is_causal let SDPA mask with -inf internally: GPT-2's own "add a large
        # negative" masking overflows in fp16.
        if attn_mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, nh, T, hs)
        elif T == 1 and q.dtype == torch.bfloat16 and q.device.type == "cpu":
            # One query in bf16: CPU SDPA takes ~4x its fp32 time here (61 vs 15 us per call,
            # measured); the fp32 attention over the same bf16 values is as exact, rounded once.
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
        elif T == 1:
            y = F.scaled_dot_product_attention(q, k, v)  # one new token sees every cached position
        elif S == T:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # a chunk appended to a non-empty cache: causal with an offset
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = Projection(config.n_embd, config.mlp_width)
        self.c_proj = Projection(config.mlp_width, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # GPT-2's "gelu_new"


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        *,
        layer: int,
        cache: KVCache | None,
        start_pos: int | torch.Tensor,
        attn_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), layer=layer, cache=cache, start_pos=start_pos, attn_mask=attn_mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """GPT-2's ``transformer`` submodule: embeddings, blocks, final LayerNorm. A module of its own
    (not an ``nn.ModuleDict``) so that its parts have types; the parameter names are the same."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    @property
    def blocks(self) -> list[Block]:
        return cast("list[Block]", list(self.h))


class GPT(nn.Module):
    """GPT-2 language model. ``lm_head`` shares its weight with ``transformer.wte``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = Transformer(config)
        self.lm_head = Projection(config.n_embd, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Point ``lm_head.weight`` at ``wte.weight`` (again, after weights were replaced)."""
        self.lm_head.weight = self.transformer.wte.weight

    def forward(
        self,
        idx: torch.Tensor,
        *,
        cache: KVCache | None = None,
        start_pos: int | torch.Tensor = 0,
        positions: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits for token ids ``idx`` (B, T).

        - ``cache``/``start_pos``: the tokens sit at positions ``start_pos … start_pos+T-1`` and
          attend to everything the cache holds before them; without a cache ``start_pos`` must be 0.
        - ``positions`` (B, T): explicit position ids, for left-padded batches whose rows start at
          different offsets; defaults to ``start_pos + arange(T)`` for every row.
        - ``attn_mask`` (B, 1, T, S), bool, True = may attend: needed only with padding.
        - static mode (``start_pos`` a (1,) long tensor, for CUDA graphs): shapes do not depend on
          the position; ``positions`` and an ``attn_mask`` over all ``cache.max_len`` keys are
          required, and the context bound is the caller's to keep (see ``static_decode``).
        - ``last_only``: return logits of the last position only, (B, 1, V): a prefill that only
          samples the next token need not pay for T x vocab logits.
        Returns (B, T, V) logits, or (B, 1, V) with ``last_only``.
        """
        T = idx.shape[1]
        if isinstance(start_pos, torch.Tensor):
            if cache is None or positions is None or attn_mask is None:
                raise ValueError("static mode (a tensor start_pos) needs a cache, positions and attn_mask")
        elif cache is None and start_pos != 0:
            raise ValueError("start_pos is only meaningful with a KV cache")
        elif start_pos + T > self.config.block_size:
            raise ValueError(
                f"sequence of {start_pos + T} tokens exceeds the context of {self.config.block_size}; crop it first"
            )
        if positions is None and not isinstance(start_pos, torch.Tensor):  # static mode passes its own
            positions = torch.arange(start_pos, start_pos + T, device=idx.device)  # (T,)
        x = self.transformer.wte(idx) + self.transformer.wpe(positions)  # (B, T, C)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, layer=layer, cache=cache, start_pos=start_pos, attn_mask=attn_mask)
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C)
        x = self.transformer.ln_f(x)
        return self.lm_head(x)  # (B, T, V)

    def new_cache(self, *, batch_size: int, max_len: int, zeroed: bool = False) -> KVCache:
        """An empty KV cache for this model's shape, device and dtype (``zeroed`` for static mode)."""
        ref = self.transformer.wte.weight
        return KVCache.empty(
            self.config, batch_size=batch_size, max_len=max_len, device=ref.device, dtype=ref.dtype, zeroed=zeroed
        )

    def projections(self) -> list[Projection]:
        """Every matmul with weights: the block projections and the (tied) ``lm_head``."""
        return [*self.linear_layers(), self.lm_head]

    def projections_by_kind(self) -> dict[str, list[Projection]]:
        """``PROJECTION_KINDS`` -> the projections of that kind (one per block; one lm_head)."""
        blocks = self.transformer.blocks
        return {
            "attn.c_attn": [b.attn.c_attn for b in blocks],
            "attn.c_proj": [b.attn.c_proj for b in blocks],
            "mlp.c_fc": [b.mlp.c_fc for b in blocks],
            "mlp.c_proj": [b.mlp.c_proj for b in blocks],
            "lm_head": [self.lm_head],
        }

    def linear_layers(self) -> list[Projection]:
        """The four GPT-2 ``Conv1D`` projections of every block (not the tied lm_head)."""
        return [
            m
            for block in self.transformer.blocks
            for m in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj)
        ]

    def apply_kernel_plan(self, plan: KernelPlan) -> None:
        """Store every projection kind as ``plan`` says (re-laying out weights that differ) and
        route its few-row calls to the planned kernels.

        The logical shape stays ``[out, in]`` (``nn.Linear``'s), so state dicts and logits are
        unchanged; only the strides differ, and with them which kernel streams the weights. The
        tied ``lm_head`` shares the embedding's ``[vocab, C]`` storage and stays ``out_in``.
        """
        missing = set(PROJECTION_KINDS) - set(plan)
        if missing:
            raise ValueError(f"kernel plan lacks {', '.join(sorted(missing))}")
        if plan["lm_head"].layout != "out_in":
            raise ValueError("lm_head shares the embedding's storage and must stay out_in")
        for kind, projs in self.projections_by_kind().items():
            p = plan[kind]
            for proj in projs:
                if kind != "lm_head" and _storage_of(proj.weight) != p.layout:
                    w = proj.weight.detach()
                    w = w.t().contiguous().t() if p.layout == "in_out" else w.contiguous()
                    proj.weight = nn.Parameter(w, requires_grad=False)
                proj.decode_kernel, proj.prefill_kernel = p.decode, p.prefill

    def kernel_plan(self) -> KernelPlan:
        """The plan the projections run now (read back from them)."""
        out = {}
        for kind, projs in self.projections_by_kind().items():
            p = projs[0]
            out[kind] = ProjectionPlan(layout=_storage_of(p.weight), decode=p.decode_kernel, prefill=p.prefill_kernel)
        return out

    def kernels_active(self) -> bool:
        """Whether any projection runs a kernel other than ``F.linear``."""
        return any(not p.plain for p in self.kernel_plan().values())

    @contextmanager
    def kernels_off(self) -> Iterator[None]:
        """Run every projection through plain ``F.linear`` on its current storage, for as long as
        the block lasts: the tuned kernels measured against themselves switched off."""
        projs = self.projections()
        before = [p.kernels_enabled for p in projs]
        for p in projs:
            p.kernels_enabled = False
        try:
            yield
        finally:
            for p, enabled in zip(projs, before, strict=True):
                p.kernels_enabled = enabled

    def weight_bytes(self) -> int:
        """Bytes of parameters one forward pass reads (the tied matrix counted once)."""
        seen: set[int] = set()
        total = 0
        for p in self.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel() * p.element_size()
        return total


@dataclass(frozen=True, kw_only=True)
class NonFinite:
    """Where a forward pass first produced NaN or inf (see :func:`locate_nonfinite`)."""

    module: str  # as in the parameter names, without "transformer.": "h.3.mlp.c_fc", "lm_head"
    value: Literal["NaN", "inf"]  # NaN wherever some value is NaN, else inf
    from_input: bool  # its input already held it: made by an op between modules (SDPA, GELU, a sum)
    bad_parameters: tuple[str, ...]  # the module's own parameters that hold NaN or inf

    def describe(self) -> str:
        if self.from_input:
            return (
                f"{self.value} first appears in the input of {self.module} "
                "(made by the attention, GELU or residual sum before it)"
            )
        if not self.bad_parameters:
            return f"{self.module} produced {self.value}"
        verb = "holds" if len(self.bad_parameters) == 1 else "hold"
        return f"{self.module} produced {self.value} (its {' and '.join(self.bad_parameters)} {verb} NaN or inf)"


@torch.inference_mode()
def locate_nonfinite(model: GPT, idx: torch.Tensor, **forward_kwargs: Any) -> NonFinite | None:
    """Run ``model(idx, **forward_kwargs)`` once more with a hook on every leaf module and return
    the first module, in execution order, whose output holds NaN or inf (None when the whole
    forward is finite). For diagnosis only, after a step's logits were found non-finite: the
    hooks cost a reduction per module."""
    found: list[NonFinite] = []

    def hook(name: str) -> Any:
        def check(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if found or not isinstance(output, torch.Tensor) or bool(torch.isfinite(output).all()):
                return
            inputs = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
            bad_inputs = [a for a in inputs if not bool(torch.isfinite(a).all())]
            culprit = bad_inputs or [output]
            found.append(NonFinite(
                module=name,
                value="NaN" if any(bool(torch.isnan(t).any()) for t in culprit) else "inf",
                from_input=bool(bad_inputs),
                bad_parameters=tuple(
                    n for n, p in module.named_parameters(recurse=False) if not bool(torch.isfinite(p).all())
                ),
            ))
        return check

    leaves = [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook(n.removeprefix("transformer."))) for n, m in leaves]
    try:
        model(idx, **forward_kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


def _storage_of(weight: torch.Tensor) -> StorageLayout:
    return "out_in" if weight.is_contiguous() else "in_out"


def init_random_(model: GPT, *, seed: int, std: float = 0.02, pool_size: int = (1 << 20) + 7) -> None:
    """Fill ``model`` with GPT-2's initialisation statistics, fast.

    Weights ~ N(0, 0.02), residual projections ~ N(0, 0.02 / sqrt(2 * n_layer)) (GPT-2 paper),
    biases 0, LayerNorms 1 / 0. Values are copied from one seeded pool of ``pool_size`` normals,
    each tensor starting at its own seeded offset: a full ``normal_`` over 1.5B parameters takes
    ~8 s on 2 cores, tiled copies ~1 s. Throughput does not depend on weight values; statistical
    quality of these weights is irrelevant, and they are always labelled random.
    """
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(pool_size, generator=g).to(model.transformer.wte.weight.device)
    proj_std = std / math.sqrt(2 * model.config.n_layer)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.zero_()
            elif ".ln_" in name:  # ln_1, ln_2, ln_f weights
                p.fill_(1.0)
            else:
                scale = proj_std if name.endswith("c_proj.weight") else std
                _fill_from_pool_(p, pool, scale=scale, offset=int(torch.randint(pool_size, (1,), generator=g)))


def _fill_from_pool_(p: torch.Tensor, pool: torch.Tensor, *, scale: float, offset: int) -> None:
    flat = p.view(-1) if p.is_contiguous() else p.t().view(-1)  # an in_out weight is contiguous transposed
    n = flat.numel()
    pos = 0
    start = offset
    while pos < n:
        take = min(n - pos, pool.numel() - start)
        flat[pos : pos + take].copy_(pool[start : start + take]).mul_(scale)
        pos += take
        start = 0
