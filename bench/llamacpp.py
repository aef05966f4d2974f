"""llama.cpp as an outside peer, in-process through ``llama-cpp-python``, on the SAME weights as ours.

The model is exported to GGUF (:func:`gpt2xl.gguf_export.export_gguf`, cached) and loaded once;
each round then runs one fixed-length generation the way our sampler does: evaluate the prompt,
sample, feed each sampled token back (all but the last), never stop at end-of-text. Sampling is
llama.cpp's own chain (top-k -> temperature -> dist, or greedy at temperature 0), with no top-p,
min-p, typical-p or penalties, so the distribution is ours; its random stream is not.

Per token, the path is ``Llama.eval([token])`` (one ``llama_decode``; with ``logits_all=False`` it
copies no logits into Python) and ``llama_sampler_sample`` on the context's last logits (the
sampler reads them in C). The only Python work per token is a few ctypes calls.

llama-cpp-python is an optional extra (``gpt2xl[peers]``); without it, or off CPU, the runner
raises :class:`PeerUnavailable` with a one-sentence reason, which the harness turns into a skip.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpt2xl.gguf_export import export_gguf
from gpt2xl.model import GPT
from gpt2xl.sampling import decode_tokens_per_s, tokens_per_s

N_CTX_STEP = 256  # llama.cpp pads its KV cache to this multiple anyway


class PeerUnavailable(Exception):
    """The peer cannot run here (library missing or unloadable, a device it does not serve); the
    message is one sentence saying why."""


@dataclass(frozen=True, kw_only=True)
class PeerRound:
    """One fixed-length generation by the peer.

    ``prefill_s``: start (context reset) to the first sampled token, prompt evaluation included;
    ``decode_s``: the other ``len(tokens) - 1`` tokens; ``token_times_s``: when each token was
    sampled, seconds from the start.
    """

    prefill_s: float
    decode_s: float
    token_times_s: tuple[float, ...]
    tokens: tuple[int, ...]

    @property
    def decode_tokens_per_s(self) -> float:
        return decode_tokens_per_s(batch_size=1, steps=len(self.tokens), decode_s=self.decode_s)

    @property
    def tokens_per_s(self) -> float:
        return tokens_per_s(batch_size=1, steps=len(self.tokens), prefill_s=self.prefill_s, decode_s=self.decode_s)


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise PeerUnavailable("llama-cpp-python is not installed (pip install 'gpt2xl[peers]').") from None
    except (OSError, RuntimeError) as exc:  # the package is there but its shared library will not load
        raise PeerUnavailable(f"llama-cpp-python is installed but its library failed to load ({exc}).") from exc
    return llama_cpp


def peer_info(gguf_path: Path | None = None, weight_type: str | None = None) -> dict[str, object]:
    """What the report records about the peer: versions, llama.cpp's CPU feature line, the GGUF."""
    llama_cpp = _import_llama_cpp()
    info: dict[str, object] = {
        "peer": "llama.cpp",
        "llama_cpp_python": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip(),
    }
    if gguf_path is not None:
        info.update(gguf_path=str(gguf_path), gguf_type=weight_type, gguf_bytes=gguf_path.stat().st_size)
    return info


class LlamaCppRunner:
    """A loaded GGUF and the settings of one benchmark case; call it for one :class:`PeerRound`.
    Holds the model's weights a second time (memory-mapped): :meth:`close` frees them."""

    def __init__(
        self,
        llama_cpp: Any,
        path: Path,
        prompt: list[int],
        *,
        block_size: int,
        new_tokens: int,
        temperature: float,
        top_k: int,
        seed: int,
        weight_type: str,
        threads: int,
    ) -> None:
        self._lib = llama_cpp
        self.path = path
        self.weight_type = weight_type
        self.prompt = list(prompt)
        self.new_tokens = new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.seed = seed
        n_ctx = min(block_size, (len(prompt) + new_tokens + N_CTX_STEP - 1) // N_CTX_STEP * N_CTX_STEP)
        self.llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=n_ctx,  # the whole prompt in one decode call, as our prefill
            n_ubatch=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=False,  # eval() then copies no logits into Python
            verbose=False,
            seed=seed,
            use_mmap=True,
        )
        self.n_vocab = self.llm.n_vocab()

    def _sampler(self) -> Any:
        """A fresh chain, so every round draws the same random stream from ``seed``."""
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if self.temperature == 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        else:
            if self.top_k:  # 0 = whole vocabulary, as ours; llama.cpp's top-k(0) is a no-op too
                lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(self.top_k))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(self.temperature))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(self.seed))
        return chain

    def __call__(self) -> PeerRound:
        if self.llm is None:
            raise RuntimeError("this runner was closed")
        lib, llm, ctx = self._lib, self.llm, self.llm.ctx
        chain = self._sampler()
        tokens: list[int] = []
        stamps: list[float] = []
        try:
            t0 = time.perf_counter()
            llm.reset()  # n_tokens = 0; the next eval() drops the KV cache from position 0
            llm.eval(self.prompt)
            while True:
                tokens.append(lib.llama_sampler_sample(chain, ctx, -1))
                stamps.append(time.perf_counter() - t0)
                if len(tokens) == self.new_tokens:
                    break
                llm.eval(tokens[-1:])
        finally:
            lib.llama_sampler_free(chain)
        return PeerRound(
            prefill_s=stamps[0],
            decode_s=stamps[-1] - stamps[0],
            token_times_s=tuple(stamps),
            tokens=tuple(tokens),
        )

    def prompt_logits(self) -> np.ndarray:
        """Logits (V,) after the prompt, copied out of the context: for parity checks, not timed."""
        self.llm.reset()
        self.llm.eval(self.prompt)
        row = self._lib.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(row, shape=(self.n_vocab,)).copy()

    def info(self) -> dict[str, object]:
        return peer_info(self.path, self.weight_type)

    def close(self) -> None:
        """Free the llama.cpp model and context (the runner cannot be called afterwards)."""
        if self.llm is not None:
            self.llm.close()
            self.llm = None


def make_llamacpp_runner(
    model: GPT,
    prompt: list[int],
    *,
    new_tokens: int,
    temperature: float,
    top_k: int,
    seed: int,
    weight_type: str,
    threads: int,
    batch_size: int = 1,
) -> LlamaCppRunner:
    """Export ``model`` (cached), load it into llama.cpp once, and return a runner whose call is
    one fixed-length round of ``new_tokens`` tokens after ``prompt``.

    Raises PeerUnavailable (no llama-cpp-python, model not on CPU) and ValueError for what this
    peer does not run: batches (llama-cpp-python's ``Llama`` drives one sequence) and generations
    longer than the context (llama.cpp cannot crop positions as our loop does).
    """
    if batch_size != 1:
        raise ValueError(f"the llama.cpp peer runs batch size 1 only, got {batch_size}")
    device = model.transformer.wte.weight.device
    if device.type != "cpu":
        raise PeerUnavailable(f"the llama.cpp peer runs on CPU, and this case runs on {device.type}.")
    llama_cpp = _import_llama_cpp()
    block_size = model.config.block_size
    if not prompt or new_tokens < 1 or len(prompt) + new_tokens - 1 > block_size:
        raise ValueError(
            f"llama.cpp needs 1 <= prompt ({len(prompt)}) and prompt + new_tokens - 1 <= {block_size}, "
            f"got new_tokens={new_tokens}"
        )
    path = export_gguf(model, weight_type=weight_type)
    return LlamaCppRunner(
        llama_cpp,
        path,
        prompt,
        block_size=block_size,
        new_tokens=new_tokens,
        temperature=temperature,
        top_k=top_k,
        seed=seed,
        weight_type=weight_type,
        threads=threads,
    )
