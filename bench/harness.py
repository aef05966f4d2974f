"""The throughput harness: per-run state, one runner per sampler, rounds and case metrics.

The pytest modules in ``bench/`` are thin: they ask :class:`BenchState` for the case's model and
call :func:`measure_case` or :func:`measure_ratios`. Everything a case records goes into
``benchmark.extra_info`` (pytest-benchmark's JSON stays the file format); the run's machine facts,
bandwidth probes and roofline basis go into ``machine_info["gpt2xl"]``.

- **State**: the options, the ONE loaded model (a 6 GB gpt2-xl is freed before the next loads, and
  any HF model or llama.cpp peer built on it goes with it), and the bandwidth probes: one before
  the first case of a device, one whenever the loaded model changes, one after the last case.
- **Runners**: a zero-argument call per sampler that generates exactly ``case.new_tokens`` tokens
  and returns a :class:`Round` (prefill and decode timed apart). A sampler that cannot run a case
  here raises :class:`SamplerUnavailable` with the reason, and the case is skipped with it.
- **Validity**: a round whose prefill or decode time is zero, negative or not finite is invalid;
  a case (or a sampler of an interleaved case) with no valid round is recorded with
  ``"valid": false`` and ``invalid_reason``; nothing divides by such a time.
- **Roofline**: each case records the weight bytes/s it achieved; once every case has run,
  :func:`finalize_roofline` takes the best of every probe and every engine as each device's basis,
  so no fraction exceeds 1.
"""

from __future__ import annotations

import gc
import statistics
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
import torch

from bench.hf_baseline import build_hf_model, hf_generate_timed, hf_weight_layout
from bench.profiles import BETWEEN_PROBE_BYTES, Case, Profile
from bench.records import (
    RATIOS,
    engine_candidates,
    is_rate,
    probe_candidates,
    probe_summary,
    ratio_of,
    roofline_basis,
    roofline_fraction,
    summarize,
)
from gpt2xl.devices import (
    check_dtype_supported,
    cpu_has_native,
    cpu_name,
    device_name,
    kernel_cpu_flags,
    resolve_device,
    resolve_dtype,
)
from gpt2xl.environment import environment_info
from gpt2xl.errors import DeviceError
from gpt2xl.hardware import (
    cpu_peak_method,
    default_probe_bytes,
    measure_memory_bandwidth,
    peak_memory_bytes,
    reset_peak_memory,
)
from gpt2xl.sampling import GenerationOutput, SamplingConfig, generate, generate_reference, make_generator
from gpt2xl.static_decode import StaticDecoder, static_cache_len
from gpt2xl.weights import LoadedModel, load_model

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture
    from transformers import GPT2LMHeadModel

    from bench.llamacpp import LlamaCppRunner

TEMPERATURE = 0.8
TOP_K = 40
# llama.cpp runs the case's weights in the GGUF type of the case's dtype; "llamacpp-q8_0" in q8_0.
LLAMACPP_TYPES = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
GGUF_BYTES_PER_ELEMENT = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32}  # q8_0: 32 int8 + an f16 scale


class SamplerUnavailable(Exception):
    """This sampler cannot run this case here; the message is the skip reason."""


# --- rounds and case metrics -------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Round:
    """One timed generation: ``new_tokens`` per row for ``batch_size`` rows; decode covers the
    ``new_tokens - 1`` tokens after the first."""

    prefill_s: float
    decode_s: float
    new_tokens: int
    batch_size: int

    @property
    def invalid_reason(self) -> str | None:
        """Why no rate can be taken from this round, or None when it is valid."""
        if not is_rate(self.prefill_s):
            return f"prefill time {self.prefill_s!r} s is not positive and finite"
        if self.new_tokens < 2:
            return f"{self.new_tokens} new token(s): no decode step to time"
        if not is_rate(self.decode_s):
            return f"decode time {self.decode_s!r} s is not positive and finite"
        return None

    @property
    def valid(self) -> bool:
        return self.invalid_reason is None

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens/s after each row's first, over the batch (None for an invalid round)."""
        return self.batch_size * (self.new_tokens - 1) / self.decode_s if self.valid else None

    @property
    def tokens_per_s(self) -> float | None:
        """End-to-end tokens/s, prefill included (None for an invalid round)."""
        return self.batch_size * self.new_tokens / (self.prefill_s + self.decode_s) if self.valid else None

    def record(self) -> dict[str, Any]:
        """The round as a record for :func:`bench.records.ratio_of`."""
        return {"valid": self.valid, "prefill_s": self.prefill_s, "decode_tokens_per_s": self.decode_tokens_per_s,
                "tokens_per_s": self.tokens_per_s}


def sampler_record(rounds: list[Round], *, weight_bytes: int, batch_size: int) -> dict[str, Any]:
    """Medians and spreads over the valid rounds, the raw per-round values, and the weight bytes/s
    the decode achieved; ``valid: False`` with ``invalid_reason`` when no round is valid."""
    good = [r for r in rounds if r.valid]
    bad = [r.invalid_reason for r in rounds if not r.valid]
    rec: dict[str, Any] = {"rounds": len(good), "rounds_invalid": bad, "weight_bytes": weight_bytes}
    # A valid round has both rates; summarize() gives None exactly when there is no valid round.
    decode_rates = [rate for r in good if (rate := r.decode_tokens_per_s) is not None]
    e2e_rates = [rate for r in good if (rate := r.tokens_per_s) is not None]
    prefill = summarize([r.prefill_s for r in good])
    decode = summarize(decode_rates)
    e2e = summarize(e2e_rates)
    if prefill is None or decode is None or e2e is None:
        why = bad[0] if bad else "no timed round"
        rec.update(valid=False, invalid_reason=f"no valid round of {len(rounds)}: {why}", spread_kind=None,
                   prefill_s=None, prefill_s_spread=None, decode_s=None, decode_s_per_token=None,
                   decode_tokens_per_s=None, decode_tokens_per_s_spread=None, tokens_per_s=None,
                   tokens_per_s_spread=None, rounds_prefill_s=[], rounds_decode_tokens_per_s=[],
                   rounds_tokens_per_s=[], achieved_bytes_per_s=None)
        return rec
    decode_s = statistics.median(r.decode_s for r in good)
    rec.update(
        valid=True,
        invalid_reason=None,
        spread_kind=decode.kind,  # the same for every metric: it depends on the number of rounds
        prefill_s=prefill.median,
        prefill_s_spread=prefill.spread,
        decode_s=decode_s,
        decode_s_per_token=decode_s / (good[0].new_tokens - 1),
        decode_tokens_per_s=decode.median,
        decode_tokens_per_s_spread=decode.spread,
        tokens_per_s=e2e.median,
        tokens_per_s_spread=e2e.spread,
        rounds_prefill_s=[r.prefill_s for r in good],
        rounds_decode_tokens_per_s=decode_rates,
        rounds_tokens_per_s=e2e_rates,
        # Every decode step streams all weights once for the whole batch, so bandwidth scales
        # with steps/s (tokens/s / batch), not with tokens/s.
        achieved_bytes_per_s=weight_bytes * decode.median / batch_size,
    )
    return rec


def paired_ratios(timed: dict[str, list[Round]]) -> tuple[dict[str, float], dict[str, str]]:
    """Each ratio of :data:`bench.records.RATIOS` whose two samplers ran: the median over rounds
    of the per-round ratio (round i of one against round i of the other), over the rounds where
    both were valid. Returns (ratios, {name: why missing})."""
    ratios: dict[str, float] = {}
    missing: dict[str, str] = {}
    for name, d in RATIOS.items():
        if d.numerator not in timed or d.denominator not in timed:
            continue
        # Interleaved: every round ran every sampler once, so the lists pair up one to one.
        pairs = zip(timed[d.numerator], timed[d.denominator], strict=True)
        values = [v for a, b in pairs if (v := ratio_of(name, a.record(), b.record())) is not None]
        if values:
            ratios[name] = statistics.median(values)
        else:
            missing[name] = f"no round in which both {d.numerator} and {d.denominator} had valid timings"
    return ratios, missing


# --- state: options, the one loaded model, probes ------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Options:
    profile: Profile
    model: str
    devices: tuple[str, ...]
    dtypes: tuple[str, ...] | None
    probe_bytes: int | None
    seed: int
    autotune: str = "cached"


@dataclass
class ModelEntry:
    """The loaded model of the current cases, and what was built on it (freed with it)."""

    key: tuple[str, str, str]  # (spec, device, dtype)
    loaded: LoadedModel
    load_s: float
    logits_finite: bool
    kernels: dict[str, Any] | None = None  # loaded.tuning.to_dict(): the autotuned plan
    hf: GPT2LMHeadModel | None = None  # transformers model sharing the weights, built on first use
    hf_layout: str | None = None  # the Conv1D layout HF ran with (kept when ``hf`` is dropped)
    peer: tuple[tuple[object, ...], LlamaCppRunner] | None = None  # (key, llama.cpp runner): one at a time

    def drop_peer(self) -> None:
        """Close and forget the llama.cpp runner (it may map gigabytes of GGUF)."""
        if self.peer is not None:
            runner = self.peer[1]
            self.peer = None
            runner.close()
            gc.collect()


def peers_info() -> dict[str, Any]:
    """What each peer engine is (version, build), or why it is unavailable."""
    try:
        from bench.llamacpp import PeerUnavailable, peer_info
    except ImportError as exc:
        return {"llamacpp": {"available": False, "reason": f"bench.llamacpp is not importable ({exc})"}}
    try:
        return {"llamacpp": {"available": True, **peer_info()}}
    except PeerUnavailable as exc:
        return {"llamacpp": {"available": False, "reason": str(exc)}}


class BenchState:
    """Per-run state: options, the bandwidth probes and the single loaded model."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.profile = options.profile
        self.seed = options.seed
        self.probes: list[dict[str, Any]] = []  # BandwidthProbe.to_dict() + "label", in order
        self.entry: ModelEntry | None = None
        self.weights: dict[str, dict[str, object]] = {}  # "spec device dtype" -> LoadedModel.provenance()
        self._finished = False

    def probe(self, device: torch.device, label: str) -> dict[str, Any]:
        """Measure ``device``'s bandwidth now (call with no model in memory where possible: the
        probe's two buffers plus a 6 GB model would crowd a small machine). The first and last
        probes of a device use the full buffer; those between models a cheaper one."""
        full = self.options.probe_bytes if device.type == "cpu" else None
        first = not any(p["device"].split(":")[0] == device.type for p in self.probes)
        nbytes = full if first or label == "end" else min(full or default_probe_bytes(device), BETWEEN_PROBE_BYTES)
        record = {"label": label, **measure_memory_bandwidth(device=device, nbytes=nbytes).to_dict()}
        self.probes.append(record)
        return record

    def free(self) -> None:
        if self.entry is not None:
            self.entry.drop_peer()
            self.entry = None
            gc.collect()  # drop the old weights (and HF / llama.cpp models on them) before the next load

    def model_for(self, case: Case) -> ModelEntry:
        """The loaded model for ``case`` (after freeing the previous one and probing the bandwidth,
        when the model changes). Skips the test, with the reason, when the device or dtype cannot
        run here."""
        spec = case.model or self.options.model
        try:
            device = resolve_device(case.device)
            dtype = resolve_dtype(case.dtype)
            check_dtype_supported(device, dtype)
        except DeviceError as exc:
            pytest.skip(str(exc))
        if (
            self.profile.skip_emulated_cpu_dtypes
            and self.options.dtypes is None
            and device.type == "cpu"
            and not cpu_has_native(dtype)
        ):
            pytest.skip(
                f"this CPU ({cpu_name()}) has no native {case.dtype} matmul instructions: torch emulates "
                f"{case.dtype}, which runs slower than fp32; measure it anyway with --dtype {case.dtype}"
            )
        key = (spec, case.device, case.dtype)
        if self.entry is None or self.entry.key != key:
            self.free()
            seen = any(p["device"].split(":")[0] == device.type for p in self.probes)
            self.probe(device, f"{'between' if seen else 'start'}, before {spec} {case.device} {case.dtype}")
            self.entry = self._load(key)
            self.weights[" ".join(key)] = self.entry.loaded.provenance()
        return self.entry

    def _load(self, key: tuple[str, str, str]) -> ModelEntry:
        spec, device, dtype = key
        t0 = time.perf_counter()
        loaded = load_model(spec, device=device, dtype=dtype, seed=self.seed, autotune=self.options.autotune)
        load_s = time.perf_counter() - t0
        # One untimed forward: first-call kernel setup, and the fp16/bf16 overflow check.
        with torch.inference_mode():
            g = torch.Generator().manual_seed(self.seed)
            prompt = torch.randint(0, loaded.config.vocab_size, (1, 16), generator=g)
            logits = loaded.model(prompt.to(loaded.device))
        return ModelEntry(key=key, loaded=loaded, load_s=load_s, logits_finite=bool(torch.isfinite(logits).all()),
                          kernels=loaded.tuning.to_dict())

    def finish(self) -> None:
        """The closing probes, once every model is freed (a neighbour's load in the middle of the
        run would otherwise go unrecorded). Every run probes the CPU at least once."""
        if self._finished:
            return
        self._finished = True
        self.free()
        devices = {p["device"].split(":")[0] for p in self.probes} | {"cpu"}
        for name in sorted(devices):
            self.probe(torch.device(name), "end")

    def machine_info(self) -> dict[str, Any]:
        return {
            "environment": environment_info(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_flags": kernel_cpu_flags(),
            "cpu_native": {"bf16": cpu_has_native(torch.bfloat16), "fp16": cpu_has_native(torch.float16)},
            "bandwidth_probes": self.probes,
            "bandwidth_summary": probe_summary(self.probes),
            "peers": peers_info(),
            "autotune": self.options.autotune,
            "peak_memory_method": {"cpu": cpu_peak_method(), "cuda": "torch.cuda.max_memory_allocated after a reset"},
            "profile": self.profile.name,
            "profile_description": self.profile.description,
            "model": self.options.model,
            "weights": self.weights,
            "seed": self.seed,
        }


def finalize_roofline(doc: dict[str, Any]) -> None:
    """Once the run is over: each device's roofline basis (the best of every probe and every
    engine's achieved rate in ``doc``, with its source) into ``machine_info["gpt2xl"]``, and each
    case's (and interleaved sampler's) ``roofline_fraction`` against it. Idempotent."""
    g = doc.setdefault("machine_info", {}).setdefault("gpt2xl", {})
    infos = [b.get("extra_info") or {} for b in doc.get("benchmarks", [])]
    basis = roofline_basis([*probe_candidates(g.get("bandwidth_probes") or []), *engine_candidates(infos)])
    g["roofline_basis"] = basis
    for info in infos:
        device = info.get("device")
        value = basis[device].get("bytes_per_s") if isinstance(device, str) and device in basis else None
        info["roofline_basis_bytes_per_s"] = value
        for rec in (info, *(info.get("samplers") or {}).values()):
            rec["roofline_fraction"] = roofline_fraction(rec.get("achieved_bytes_per_s"), value)


# --- runners -------------------------------------------------------------------------------------

Runner = Callable[[], Round]


def make_prompts(case: Case, *, vocab_size: int, seed: int) -> list[list[int]]:
    """Random token ids (throughput does not depend on which tokens), same length every row."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (case.batch_size, case.prompt_len), generator=g).tolist()


def _checked(sampler: str, case: Case, r: Round) -> Round:
    if r.new_tokens != case.new_tokens:
        raise RuntimeError(f"{sampler} produced {r.new_tokens} tokens, expected {case.new_tokens}")
    return r


def _ours(entry: ModelEntry, case: Case, seed: int, *, sampler: str,
          loop: Callable[..., GenerationOutput] = generate, plain: bool = False,
          static: StaticDecoder | None = None) -> Runner:
    loaded = entry.loaded
    prompts = make_prompts(case, vocab_size=loaded.config.vocab_size, seed=seed)
    cfg = SamplingConfig(max_new_tokens=case.new_tokens, temperature=TEMPERATURE, top_k=TOP_K, stop_at_eot=False)
    options = {"static": static} if static is not None else {}

    def run() -> Round:
        with loaded.model.kernels_off() if plain else nullcontext():
            out = loop(loaded.model, prompts, cfg, generator=make_generator(seed, loaded.device), **options)
        return _checked(sampler, case, Round(prefill_s=out.prefill_s, decode_s=out.decode_s, new_tokens=out.steps,
                                             batch_size=out.batch_size))

    return run


def reference_runner(entry: ModelEntry, case: Case, seed: int) -> Runner:
    return _ours(entry, case, seed, sampler="reference", loop=generate_reference)


def cached_runner(entry: ModelEntry, case: Case, seed: int) -> Runner:
    return _ours(entry, case, seed, sampler="cached")


def cached_plain_runner(entry: ModelEntry, case: Case, seed: int) -> Runner:
    """Ours with every projection on plain ``F.linear`` over the same storage (``kernels_off``)."""
    if not entry.loaded.model.kernels_active():
        raise SamplerUnavailable(f"the tuned kernel plan for {case.device} {case.dtype} with {torch.get_num_threads()} "
                                 "thread(s) is already plain F.linear: cached-plain would repeat the cached case")
    return _ours(entry, case, seed, sampler="cached-plain", plain=True)


def compiled_runner(entry: ModelEntry, case: Case, seed: int) -> Runner:
    """One decoder for every round: compiling and graph capture happen once."""
    loaded = entry.loaded
    if loaded.device.type != "cuda":
        raise SamplerUnavailable("the compiled sampler is measured on CUDA only")
    max_len = static_cache_len(case.prompt_len + case.new_tokens - 1, loaded.config.block_size)
    static = StaticDecoder(loaded.model, batch_size=case.batch_size, max_len=max_len, compile="reduce-overhead")
    return _ours(entry, case, seed, sampler="compiled", static=static)


def hf_runner(entry: ModelEntry, case: Case, seed: int) -> Runner:
    if entry.hf is None:
        entry.hf = build_hf_model(entry.loaded.model)
        entry.hf_layout = hf_weight_layout(entry.hf)
    hf = entry.hf
    prompts = make_prompts(case, vocab_size=entry.loaded.config.vocab_size, seed=seed)

    def run() -> Round:
        t = hf_generate_timed(hf, prompts, new_tokens=case.new_tokens, temperature=TEMPERATURE, top_k=TOP_K, seed=seed)
        return _checked("hf", case, Round(prefill_s=t.prefill_s, decode_s=t.decode_s, new_tokens=t.new_tokens,
                                          batch_size=t.batch_size))

    return run


def llamacpp_weight_type(sampler: str, dtype: str) -> str:
    return "q8_0" if sampler == "llamacpp-q8_0" else LLAMACPP_TYPES[dtype]


def llamacpp_runner(entry: ModelEntry, case: Case, seed: int, *, sampler: str = "llamacpp") -> Runner:
    """llama.cpp on the case's weights (``bench.llamacpp``), batch 1 on the CPU. The peer model is
    kept on ``entry`` (one at a time), so it is dropped with the case's model."""
    if case.device != "cpu":
        raise SamplerUnavailable("llama.cpp is measured on the CPU only")
    if case.batch_size != 1:
        raise SamplerUnavailable(
            f"llama.cpp runs batch 1 only in this harness; batch {case.batch_size} is not measured"
        )
    try:
        from bench.llamacpp import PeerUnavailable, make_llamacpp_runner
    except ImportError as exc:
        raise SamplerUnavailable(f"the llama.cpp peer is not available in this build (bench.llamacpp: {exc})") from None
    weight_type = llamacpp_weight_type(sampler, case.dtype)
    prompt = make_prompts(case, vocab_size=entry.loaded.config.vocab_size, seed=seed)[0]
    key = (weight_type, tuple(prompt), case.new_tokens, seed, torch.get_num_threads())
    if entry.peer is None or entry.peer[0] != key:
        # A peer maps gigabytes: drop the previous one, and HF's weight copies (an interleaved run's
        # HF runner keeps its own reference), before loading it.
        entry.hf = None
        entry.drop_peer()
        try:
            runner = make_llamacpp_runner(
                entry.loaded.model, prompt, new_tokens=case.new_tokens, temperature=TEMPERATURE, top_k=TOP_K,
                seed=seed, weight_type=weight_type, threads=torch.get_num_threads(),
            )
        except PeerUnavailable as exc:
            raise SamplerUnavailable(f"llama.cpp ({weight_type}): {exc}") from None
        entry.peer = (key, runner)
    peer = entry.peer[1]

    def run() -> Round:
        r = peer()
        return _checked(sampler, case, Round(prefill_s=r.prefill_s, decode_s=r.decode_s, new_tokens=len(r.tokens),
                                             batch_size=1))

    return run


def llamacpp_q8_runner(entry: ModelEntry, case: Case, seed: int) -> Runner:
    return llamacpp_runner(entry, case, seed, sampler="llamacpp-q8_0")


RUNNERS: dict[str, Callable[[ModelEntry, Case, int], Runner]] = {
    "reference": reference_runner,
    "cached": cached_runner,
    "cached-plain": cached_plain_runner,
    "compiled": compiled_runner,
    "hf": hf_runner,
    "llamacpp": llamacpp_runner,
    "llamacpp-q8_0": llamacpp_q8_runner,
}


def make_runner(entry: ModelEntry, case: Case, *, seed: int, sampler: str | None = None) -> Runner:
    """A zero-argument call that generates exactly ``case.new_tokens`` tokens with ``sampler``
    (default: the case's). Raises SamplerUnavailable with the reason when it cannot run here."""
    return RUNNERS[sampler or case.sampler](entry, case, seed)


def weight_bytes_of(entry: ModelEntry, sampler: str, case: Case) -> tuple[int, str]:
    """Bytes one decode step of ``sampler`` reads, and where the number comes from. Ours and HF
    read our parameters; llama.cpp its GGUF tensors (the runner's ``weight_bytes`` when it has
    one, else our element count x the GGUF type's bytes per element)."""
    ours = entry.loaded.model.weight_bytes()
    if not sampler.startswith("llamacpp"):
        return ours, "our model's parameters"
    info = peer_case_info(entry)
    if is_rate(info.get("gguf_bytes")):
        return int(info["gguf_bytes"]), f"the {info.get('gguf_type', '')} GGUF file llama.cpp mapped"
    weight_type = llamacpp_weight_type(sampler, case.dtype)
    elements = ours // torch.empty((), dtype=entry.loaded.dtype).element_size()
    per = GGUF_BYTES_PER_ELEMENT.get(weight_type, 4.0)
    return int(elements * per), f"estimated: {elements} elements x {per:g} B ({weight_type})"


def peer_case_info(entry: ModelEntry) -> dict[str, Any]:
    """The current llama.cpp runner's own record (GGUF path, type and bytes, versions), or {}."""
    return dict(entry.peer[1].info()) if entry.peer is not None else {}


def _identity(state: BenchState, entry: ModelEntry, case: Case) -> dict[str, Any]:
    loaded = entry.loaded
    return {
        "model": entry.key[0],
        "weights_label": loaded.source.label,
        "weights_random": loaded.source.is_random,
        "device": case.device,
        "device_name": device_name(loaded.device),
        "dtype": case.dtype,
        "batch_size": case.batch_size,
        "prompt_len": case.prompt_len,
        "new_tokens": case.new_tokens,
        "temperature": TEMPERATURE,
        "top_k": TOP_K,
        "weight_layout": getattr(loaded, "layout", None),
        "autotune": state.options.autotune,
        "kernels": entry.kernels,
        "tuning_s": (entry.kernels or {}).get("tuning_s"),
        "logits_finite": entry.logits_finite,
        "load_s": entry.load_s,
        "threads": torch.get_num_threads(),
    }


def case_metrics(entry: ModelEntry, case: Case, sampler: str, rounds: list[Round]) -> dict[str, Any]:
    """One sampler's record for ``case`` (see :func:`sampler_record`), with its weight bytes,
    whether it ran our tuned kernels, and the layout HF ran with."""
    weight_bytes, source = weight_bytes_of(entry, sampler, case)
    rec = sampler_record(rounds, weight_bytes=weight_bytes, batch_size=case.batch_size)
    rec["weight_bytes_source"] = source
    rec["kernels_used"] = sampler in ("reference", "cached", "compiled") and entry.kernels is not None
    rec["hf_weight_layout"] = entry.hf_layout if sampler == "hf" else None
    if sampler.startswith("llamacpp"):
        rec["gguf_type"] = llamacpp_weight_type(sampler, case.dtype)
        rec["peer"] = peer_case_info(entry)
    return rec


def _require_finite(entry: ModelEntry, case: Case) -> None:
    if not entry.logits_finite:
        pytest.fail(f"{case.dtype} logits of {entry.key[0]} on {case.device} contain NaN/inf")


def _warn_invalid(entry: ModelEntry, case: Case, sampler: str, rec: dict[str, Any]) -> None:
    if not rec["valid"]:
        warnings.warn(f"{case.id(entry.key[0])} {sampler}: invalid ({rec['invalid_reason']})", stacklevel=3)


def measure_case(benchmark: BenchmarkFixture, state: BenchState, case: Case, *, rounds: int, warmup_rounds: int,
                 kind: str = "throughput") -> dict[str, Any]:
    """Load (or reuse) the model, time ``case`` with pytest-benchmark, record its metrics."""
    entry = state.model_for(case)
    _require_finite(entry, case)
    try:
        run = make_runner(entry, case, seed=state.seed)
    except SamplerUnavailable as exc:
        pytest.skip(str(exc))
    done: list[Round] = []
    benchmark.group = f"{entry.key[0]} {case.device} {case.dtype}"
    reset_peak_memory(entry.loaded.device)
    benchmark.pedantic(lambda: done.append(run()), rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
    peak = peak_memory_bytes(entry.loaded.device)
    metrics = {"kind": kind, "sampler": case.sampler, **_identity(state, entry, case),
               **case_metrics(entry, case, case.sampler, done[warmup_rounds:]), "peak_memory_bytes": peak}
    benchmark.extra_info.update(metrics)
    _warn_invalid(entry, case, case.sampler, metrics)
    return metrics


def ratio_samplers(profile: Profile, case: Case) -> list[str]:
    """The samplers an interleaved run takes in turn, in order (those that cannot run are left out
    with their reason)."""
    return [*profile.ratio_samplers, *(["compiled"] if case.device == "cuda" else [])]


def measure_ratios(benchmark: BenchmarkFixture, state: BenchState, case: Case) -> dict[str, Any]:
    """Every available sampler in turn within every round, so a neighbour's load hits them alike:
    the paired per-round ratios are what a gate on a shared machine can rely on. The case's
    top-level metrics are the cached sampler's; ``samplers`` holds each one's record."""
    entry = state.model_for(case)
    _require_finite(entry, case)
    runners: dict[str, Runner] = {}
    skipped: dict[str, str] = {}
    for sampler in ratio_samplers(state.profile, case):
        try:
            runners[sampler] = make_runner(entry, case, seed=state.seed, sampler=sampler)
        except SamplerUnavailable as exc:
            skipped[sampler] = str(exc)
    done: dict[str, list[Round]] = {s: [] for s in runners}

    def one_round() -> None:
        for sampler, run in runners.items():
            done[sampler].append(run())

    benchmark.group = f"{entry.key[0]} {case.device} {case.dtype} ratios"
    reset_peak_memory(entry.loaded.device)
    warmup = 1
    benchmark.pedantic(one_round, rounds=state.profile.ratio_rounds, warmup_rounds=warmup, iterations=1)
    peak = peak_memory_bytes(entry.loaded.device)
    timed = {s: rounds[warmup:] for s, rounds in done.items()}
    ratios, missing = paired_ratios(timed)
    samplers = {s: case_metrics(entry, case, s, rs) for s, rs in timed.items()}
    metrics = {"kind": "ratios", "sampler": "cached", **_identity(state, entry, case), **samplers["cached"],
               "peak_memory_bytes": peak, "samplers": samplers, "samplers_skipped": skipped, "ratios": ratios,
               "ratios_missing": missing}
    benchmark.extra_info.update(metrics)
    for sampler, rec in samplers.items():
        _warn_invalid(entry, case, sampler, rec)
    return metrics
