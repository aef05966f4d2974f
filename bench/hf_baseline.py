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

Two ways HF runs (:class:`HFMode`), one per sampler:

- ``hf`` (:data:`HF_EAGER`): ``generate`` as most users call it: HF's default ``DynamicCache``,
  no compile.
- ``hf-compiled`` (:data:`HF_COMPILED`), the fair GPU peer of our ``compiled`` sampler (gpt-fast's
  and HF's own recipe): ``cache_implementation="static"``, a ``StaticCache`` of ``prompt + new``
  slots allocated up front, with which ``generate`` compiles its DECODING forward itself on CUDA
  (transformers 5: ``_valid_auto_compile_criteria`` = CUDA + a compileable cache + not
  ``disable_compile``; ``get_compiled_call`` keeps one ``torch.compile(model.__call__)`` per model
  and config, reused by every later call). The prefill stays eager. Compiled with HF's DEFAULT
  ``CompileConfig``, passed explicitly so that it is recorded and the same on every transformers
  release: ``backend="inductor"``, ``mode="reduce-overhead"`` (CUDA graphs: each decode step is
  replayed as one graph, as our ``compiled`` sampler's is), ``fullgraph=False`` (a graph break
  splits the graph instead of failing; the harness records how many breaks there were) and
  ``dynamic=None`` (the first compile is static; a later batch size recompiles once with the
  batch dimension dynamic). Compile and capture happen in the first calls, so the harness gives
  this sampler warm-up rounds and refuses a timed round during which a graph compiled.

HF compiles off CUDA only when told to (``CompileConfig._compile_all_devices``): that takes
``HFMode(compile_all_devices=True)``, an explicit argument meant for one slow test, never a
benchmark (the bench measures ``hf-compiled`` on CUDA only). With ``compile=False`` the static
cache runs eagerly (``disable_compile=True``): the same path minus compile, which is how its
tokens are checked on a CPU.
"""

from __future__ import annotations

import itertools
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
    from transformers import CompileConfig, GPT2LMHeadModel

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


# torch.compile modes HFMode accepts: "reduce-overhead" (CUDA graphs, HF's default) and "default"
# (inductor without graphs: what a compile on the CPU can run).
COMPILE_MODES = ("reduce-overhead", "default")


@dataclass(frozen=True, kw_only=True)
class HFMode:
    """How HF ``generate`` runs (see the module docstring): its KV cache and whether it compiles.

    ``static_cache``: ``cache_implementation="static"`` instead of HF's default dynamic cache.
    ``compile``: let ``generate`` compile its decoding forward (static cache only) with
    :meth:`compile_config`; False with a static cache passes ``disable_compile=True``.
    ``compile_all_devices``: compile on a device other than CUDA too (HF's test switch; one slow
    test uses it, the bench never does)."""

    static_cache: bool = False
    compile: bool = False
    compile_mode: str = "reduce-overhead"
    compile_all_devices: bool = False

    def __post_init__(self) -> None:
        if self.compile and not self.static_cache:
            raise ConfigError("HF generate compiles its decoding forward only with a static cache; "
                              "set static_cache=True or compile=False.")
        if self.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}.")
        if self.compile_all_devices and not self.compile:
            raise ConfigError("compile_all_devices only applies with compile=True.")

    def compile_config(self) -> CompileConfig | None:
        """HF's default ``CompileConfig``, every field spelled out (so the record and the behaviour
        do not move with a transformers release), in ``compile_mode``; None without compile."""
        if not self.compile:
            return None
        from transformers import CompileConfig

        config = CompileConfig(fullgraph=False, dynamic=None, backend="inductor", mode=self.compile_mode)
        if self.compile_all_devices:
            # HF's own switch for compiling off CUDA (for tests); the ignore: transformers declares
            # the class attribute as None, its "off" value, with no annotation for "on".
            config._compile_all_devices = True  # type: ignore[assignment]
        return config

    def generate_kwargs(self, device: torch.device) -> dict[str, Any]:
        """The ``generate`` keyword arguments of this mode on ``device``. ConfigError when it
        would compile on a device HF does not compile on by default, without compile_all_devices
        (HF would silently run eagerly, and the record would claim a compile)."""
        if not self.static_cache:
            return {}
        if not self.compile:
            return {"cache_implementation": "static", "disable_compile": True}
        if device.type != "cuda" and not self.compile_all_devices:
            raise ConfigError(f"HF generate compiles its decoding forward on CUDA only, not on {device.type}; "
                              "pass HFMode(compile_all_devices=True) to force it (a test), or run on CUDA.")
        return {"cache_implementation": "static", "compile_config": self.compile_config()}

    def record(self) -> dict[str, Any]:
        """What a bench case records about the HF run (``hf_generate``)."""
        config = self.compile_config()
        return {
            "cache": "static" if self.static_cache else "dynamic",
            "compiled": self.compile,
            "compile_config": None if config is None else config.to_dict(),
            "compile_all_devices": self.compile_all_devices,
            "attn_implementation": "sdpa",
        }


HF_EAGER = HFMode()  # sampler "hf"
HF_COMPILED = HFMode(static_cache=True, compile=True)  # sampler "hf-compiled" (CUDA)


class TokenTimes(LogitsProcessor):
    """Records ``time.perf_counter()`` each time ``generate`` asks for the next token's scores,
    scores unchanged (optimum-benchmark's per-token latency tracker). Call 0 comes right after the
    prefill forward, call i after the forward of token i - 1. Synchronizes CUDA first, so a
    timestamp is taken after the forward's kernels finished.

    It also checks, without a synchronization, that every score it sees is finite
    (:attr:`all_finite`), as our samplers check their logits at every step and as cheaply: a
    running fp32 sum of the scores, in which a NaN or an inf anywhere stays NaN or inf, read once
    at the end. That adds one small reduction per kept span to the peer's timed steps, the same
    kind of work our loop does (an isfinite pass over the vocabulary cost ~10x more on one CPU
    thread). Its scores are the model's logits after HF's default processors, which run before any
    custom one: with ``min_new_tokens`` they set ``masked_ids`` (end-of-text) to -inf by design, so
    those columns are left out of the sum."""

    def __init__(self, device: torch.device, *, masked_ids: tuple[int, ...] = (EOT_TOKEN_ID,)) -> None:
        self.device = device
        self.times: list[float] = []
        self.masked_ids = masked_ids
        self._kept: list[slice] | None = None  # the column spans between masked_ids, found once
        self._sum: torch.Tensor | None = None  # running fp32 sum of the kept scores, on the device

    def __call__(self, _input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        synchronize(self.device)
        self.times.append(time.perf_counter())
        if self._kept is None:
            edges = [-1, *sorted(set(self.masked_ids)), scores.shape[-1]]
            self._kept = [slice(a + 1, b) for a, b in itertools.pairwise(edges) if b > a + 1]
        for kept in self._kept:
            part = scores[:, kept].sum(dtype=torch.float32)
            self._sum = part if self._sum is None else self._sum + part
        return scores

    @property
    def all_finite(self) -> bool | None:
        """Whether every step's scores were finite (None before the first step)."""
        return None if self._sum is None else bool(torch.isfinite(self._sum))


@dataclass(frozen=True, kw_only=True)
class HFTiming:
    """One fixed-length ``generate`` call, timed from inside: ``prefill_s`` = first token
    timestamp − start; ``decode_s`` = end − first timestamp, over the ``new_tokens − 1`` tokens after
    the first; ``token_times_s`` = each timestamp − start. A timing that cannot be split (no
    timestamp) has ``prefill_s`` and ``decode_s`` NaN; the harness treats the round as invalid.
    ``logits_finite``: every step's scores were finite (:class:`TokenTimes`)."""

    batch_size: int
    new_tokens: int
    prefill_s: float
    decode_s: float
    total_s: float
    token_times_s: tuple[float, ...]
    tokens: list[list[int]]
    logits_finite: bool | None = None

    @property
    def step_s(self) -> tuple[float, ...]:
        """Each decode step's duration: the gaps between consecutive token timestamps."""
        return tuple(b - a for a, b in itertools.pairwise(self.token_times_s))


def _hf_call(hf: GPT2LMHeadModel, input_ids: torch.Tensor, *, new_tokens: int, temperature: float,
             top_k: int | None, tracker: TokenTimes, mode: HFMode) -> torch.Tensor:
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
        **mode.generate_kwargs(input_ids.device),
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
    mode: HFMode = HF_EAGER,
) -> HFTiming:
    """Run HF ``generate`` once, in ``mode``, for exactly ``new_tokens`` tokens per row, with
    prefill and decode split by per-token timestamps taken inside that one call.

    Prompts must share one length (no padding, so HF and our loop compute the same shapes).
    """
    if new_tokens < 1:
        raise ConfigError(f"new_tokens must be >= 1, got {new_tokens}.")
    if len({len(p) for p in prompts}) != 1:
        raise ConfigError("hf_generate_timed takes prompts of equal length.")
    device = hf.transformer.wte.weight.device
    input_ids = torch.tensor(prompts, device=device)  # (B, T)
    mode.generate_kwargs(device)  # a mode that cannot run here fails before anything runs
    tracker = TokenTimes(device)
    torch.manual_seed(seed)  # HF samples from the global generator
    synchronize(device)
    t0 = time.perf_counter()
    out = _hf_call(hf, input_ids, new_tokens=new_tokens, temperature=temperature, top_k=top_k, tracker=tracker,
                   mode=mode)
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
        logits_finite=tracker.all_finite,
    )
